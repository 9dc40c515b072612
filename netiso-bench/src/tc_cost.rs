//! What the per-interface TC programs cost per packet, measured in the kernel: the programs the
//! agent attached to the bench namespace's `lo` (and pinned under `progs/`) are run with
//! BPF_PROG_TEST_RUN (`repeat`
//! times per sample, the kernel's average), next to a no-op TC program as the baseline. The
//! difference is netiso's cost for that kind of packet, without any load generator noise.
use std::{fmt::Write as _, fs, path::Path, thread};

use anyhow::{Context, Result};
use netiso_testkit::{
    bpf,
    craft::{Packet, Transport, ACK, SYN},
};
use serde::Serialize;

use crate::env::World;

const A: &str = "203.0.113.200";
const B: &str = "203.0.113.201"; // isolated
const STRAY: &str = "198.51.100.250";

#[derive(Serialize)]
pub struct Case {
    #[serde(rename = "case")]
    pub name: &'static str,
    pub verdict: i32,
    /// Median [min, max] of the samples, ns per packet.
    pub ns: [u32; 3],
    /// Median minus the no-op program's median.
    pub over_noop_ns: i64,
}

#[derive(Serialize)]
pub struct TcCost {
    pub containers: usize,
    pub repeat: u32,
    pub samples: usize,
    pub cases: Vec<Case>,
}

/// Registers `extra` containers plus the cases' two, attaches the TC programs to `lo` and
/// measures.
pub fn measure(w: &World, extra: usize, repeat: u32, samples: usize) -> Result<TcCost> {
    w.register("tc-a", &[A], false, None)?;
    w.register("tc-b", &[B], true, None)?;
    for i in 0..extra {
        let ip = format!("2001:db8:e::{:x}", i + 1);
        w.register(&format!("tc-x{i}"), &[&ip], false, None)?;
    }
    w.api
        .add_iface("lo")
        .context("attaching the TC programs to lo")?;
    let progs = Path::new("/sys/fs/bpf").join(&w.id).join("progs");
    let ingress = bpf::tc_program(&progs.join("tc_ingress"))?;
    let egress = bpf::tc_program(&progs.join("tc_egress"))?;
    let noop = bpf::noop_tc().context("loading the no-op baseline program")?;
    let ack = |s, d| Packet::new(s, d, Transport::Tcp { flags: ACK }).build();
    let cases = [
        ("no-op TC program (baseline)", &noop, ack(STRAY, A)),
        ("ingress, no container involved", &ingress, ack(A, STRAY)),
        ("ingress, attributed (TCP ACK)", &ingress, ack(STRAY, A)),
        (
            "ingress, container to isolated, SYN: dropped + event",
            &ingress,
            Packet::new(A, B, Transport::Tcp { flags: SYN }).build(),
        ),
        (
            "ingress, container to isolated, UDP: socket lookup",
            &ingress,
            Packet::new(
                A,
                B,
                Transport::Udp {
                    sport: 4000,
                    dport: 53,
                },
            )
            .build(),
        ),
        (
            "egress, host socket, no container",
            &egress,
            ack(STRAY, STRAY),
        ),
        ("egress, host socket, attributed", &egress, ack(A, STRAY)),
    ];
    // In the bench namespace, so the UDP lookup searches the right sockets.
    let ns = World::ns_path(&w.hostns);
    let results = thread::scope(|s| {
        s.spawn(|| -> Result<Vec<(i32, Vec<u32>)>> {
            let f = fs::File::open(&ns)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let mut out: Vec<(i32, Vec<u32>)> = vec![(0, Vec::new()); cases.len()];
            // Interleaved: every case once per round.
            for _ in 0..samples {
                for (i, (_, prog, frame)) in cases.iter().enumerate() {
                    let (verdict, took) = bpf::test_run(prog, frame, repeat)?;
                    out[i].0 = verdict;
                    out[i].1.push(took.as_nanos() as u32);
                }
            }
            Ok(out)
        })
        .join()
        .expect("measuring thread")
    })?;
    let mut cost = TcCost {
        containers: extra + 2,
        repeat,
        samples,
        cases: Vec::new(),
    };
    let mut base = 0i64;
    for ((name, _, _), (verdict, mut ns)) in cases.iter().zip(results) {
        ns.sort_unstable();
        let median = ns[ns.len() / 2];
        if cost.cases.is_empty() {
            base = i64::from(median);
        }
        cost.cases.push(Case {
            name,
            verdict,
            ns: [median, ns[0], ns[ns.len() - 1]],
            over_noop_ns: i64::from(median) - base,
        });
    }
    Ok(cost)
}

pub fn table(c: &TcCost) -> String {
    let mut t = format!(
        "TC programs, ns per packet (BPF_PROG_TEST_RUN x{}, {} samples, {} containers registered)\n",
        c.repeat, c.samples, c.containers
    );
    let _ = writeln!(
        t,
        "{:<56} {:>7} {:>8} {:>15} {:>9}",
        "case", "verdict", "median", "[min..max]", "vs no-op"
    );
    for x in &c.cases {
        let _ = writeln!(
            t,
            "{:<56} {:>7} {:>8} {:>15} {:>+9}",
            x.name,
            x.verdict,
            x.ns[0],
            format!("[{}..{}]", x.ns[1], x.ns[2]),
            x.over_noop_ns
        );
    }
    t
}
