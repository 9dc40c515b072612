//! Prometheus metrics (OpenMetrics text), rendered at each scrape from the service and the
//! kernel's counters with `prometheus-client`: `GET /metrics` on the API socket and on
//! `--metrics-addr`.
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use super::service::Service;
use crate::datapath::LinkState;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    r.register(name, help, g);
}

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    r.register(name, help, c);
}

/// The metrics text.
pub fn render(s: &mut Service) -> String {
    let mut r = Registry::default();
    gauge(&mut r, "netiso_up", "1 while the agent runs", 1);
    r.register(
        "netiso_build",
        "The agent's version",
        Info::new(labels(&[("version", env!("CARGO_PKG_VERSION"))])),
    );
    let reg = s.registry();
    gauge(
        &mut r,
        "netiso_containers",
        "Registered containers",
        reg.len() as i64,
    );
    gauge(
        &mut r,
        "netiso_addresses",
        "Owned addresses, all containers together",
        reg.address_count() as i64,
    );
    gauge(
        &mut r,
        "netiso_rules",
        "Policy rules between containers",
        reg.rule_count() as i64,
    );
    gauge(
        &mut r,
        "netiso_enabled",
        "1 while netiso enforces, 0 after `netiso disable`",
        i64::from(reg.enabled),
    );
    let limits = s.effective_limits();
    let capacity = Family::<Labels, Gauge>::default();
    for (what, v) in [
        ("containers", limits.containers),
        ("addresses", limits.addresses),
        ("addresses_per_container", limits.addresses_per_container),
    ] {
        capacity
            .get_or_create(&labels(&[("resource", what)]))
            .set(i64::from(v));
    }
    r.register(
        "netiso_capacity",
        "Limits in force (--max-*, capped by the pinned maps' capacity)",
        capacity,
    );
    let used = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (what, n, of) in [
        ("containers", reg.len(), limits.containers),
        ("addresses", reg.address_count(), limits.addresses),
    ] {
        used.get_or_create(&labels(&[("resource", what)]))
            .set(n as f64 / f64::from(of.max(1)));
    }
    r.register(
        "netiso_capacity_used_ratio",
        "Share of the capacity in use",
        used,
    );
    let events_dropped = s.datapath().events_dropped();
    counter(
        &mut r,
        "netiso_events_dropped",
        "Events the programs could not hand to the agent (ring buffer full)",
        events_dropped,
    );
    let stats = s.stats.clone();
    counter(
        &mut r,
        "netiso_cgroups_released",
        "Containers released because their cgroup was removed",
        stats.released,
    );
    counter(
        &mut r,
        "netiso_sockets_destroyed",
        "Sockets destroyed because their address left their container",
        stats.sockets_destroyed,
    );
    let attached = Family::<Labels, Gauge>::default();
    for (p, state) in &stats.links {
        attached
            .get_or_create(&labels(&[("program", p)]))
            .set(i64::from(*state != LinkState::Broken));
    }
    r.register(
        "netiso_program_attached",
        "1 when the program was attached at the last check (every check repairs what is not)",
        attached,
    );
    let reattached = Family::<Labels, Counter>::default();
    for (p, _) in &stats.links {
        reattached
            .get_or_create(&labels(&[("program", p)]))
            .inc_by(stats.reattached.get(p).copied().unwrap_or(0));
    }
    r.register(
        "netiso_program_reattachments",
        "Times the periodic check found a program detached and attached it again",
        reattached,
    );
    // Per-container counters, one family per kernel counter.
    let families: Vec<Family<Labels, Counter>> = netiso_common::counter::NAMES
        .iter()
        .map(|_| Family::default())
        .collect();
    let ids: Vec<(u32, u64, String)> = s
        .registry()
        .iter()
        .map(|c| (c.id, c.cgroup_id, c.name.clone()))
        .collect();
    for (id, cgroup_id, name) in ids {
        let Ok(values) = s
            .datapath()
            .counters(netiso_common::ContainerId(id), cgroup_id)
        else {
            continue;
        };
        let l = labels(&[("container", &name)]);
        // A series appears with its first count (as a labelled counter does): at tens of
        // thousands of containers, mostly idle, this keeps a scrape small.
        for (f, v) in families.iter().zip(values) {
            if v > 0 {
                f.get_or_create(&l).inc_by(v);
            }
        }
    }
    for (name, f) in netiso_common::counter::NAMES.iter().zip(families) {
        r.register(
            format!("netiso_container_{name}"),
            format!("Per container: {}", name.replace('_', " ")),
            f,
        );
    }
    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String");
    out
}
