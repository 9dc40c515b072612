//! `netiso stats`: traffic and refusals per container. RX/TX count what the container's
//! sockets received and sent (cgroup_skb); IF_RX/IF_TX what the TC programs attributed to it
//! by address on the interfaces given with `--iface` / `netiso iface add`.
use super::{output, CmdResult};
use crate::{api::ContainerInfo, client::Client};

pub fn run(client: &Client, json: bool) -> CmdResult {
    let list: Vec<ContainerInfo> = client.containers()?;
    if json {
        let stats: Vec<_> = list
            .iter()
            .map(|c| serde_json::json!({ "name": c.name, "counters": c.counters }))
            .collect();
        output::json(&stats);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.counter("rx_packets").to_string(),
                c.counter("rx_bytes").to_string(),
                c.counter("tx_packets").to_string(),
                c.counter("tx_bytes").to_string(),
                c.counter("iface_rx_packets").to_string(),
                c.counter("iface_rx_bytes").to_string(),
                c.counter("iface_tx_packets").to_string(),
                c.counter("iface_tx_bytes").to_string(),
                c.dropped().to_string(),
                c.refused().to_string(),
                c.counter("audited").to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "RX_PKTS",
            "RX_BYTES",
            "TX_PKTS",
            "TX_BYTES",
            "IF_RX_PKTS",
            "IF_RX_BYTES",
            "IF_TX_PKTS",
            "IF_TX_BYTES",
            "DROPPED",
            "REFUSED",
            "AUDITED",
        ],
        &rows,
    );
    Ok(0)
}
