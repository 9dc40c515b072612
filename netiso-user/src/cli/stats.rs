//! `netiso stats`: traffic and refusals per container.
use super::{output, CmdResult};
use crate::{api::ContainerInfo, client::Client};

pub fn run(client: &Client, json: bool) -> CmdResult {
    let list: Vec<ContainerInfo> = client.get("/v1/containers")?;
    if json {
        let stats: Vec<_> = list
            .iter()
            .map(|c| serde_json::json!({ "name": c.name, "counters": c.counters }))
            .collect();
        output::json(&stats);
        return Ok(0);
    }
    let get = |c: &ContainerInfo, k: &str| c.counters.get(k).copied().unwrap_or(0);
    let refused = |c: &ContainerInfo| -> u64 {
        c.counters
            .iter()
            .filter(|(k, _)| k.ends_with("_refused"))
            .map(|(_, v)| v)
            .sum()
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                get(c, "rx_packets").to_string(),
                get(c, "rx_bytes").to_string(),
                get(c, "tx_packets").to_string(),
                get(c, "tx_bytes").to_string(),
                get(c, "ingress_dropped").to_string(),
                get(c, "egress_dropped").to_string(),
                refused(c).to_string(),
                get(c, "audited").to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME", "RX_PKTS", "RX_BYTES", "TX_PKTS", "TX_BYTES", "RX_DROP", "TX_DROP", "REFUSED",
            "AUDITED",
        ],
        &rows,
    );
    Ok(0)
}
