//! The cost section: what netiso costs in CPU, measured by the kernel's own accounting.
//!
//! - The workload's CPU: `usage_usec` from the `cpu.stat` of the cgroups its client and its
//!   server run in (dedicated leaf cgroups, or the containers' own), read by the client at the
//!   edges of the measured window, so process start-up and connection set-up do not count.
//! - netiso's share of it: `run_time_ns` and `run_cnt` of every program the agent pinned under
//!   `<bpffs>/progs/` (whatever programs there are: new ones are picked up by themselves), read
//!   over the same window. The kernel keeps these only while run-time statistics are enabled;
//!   this module enables them with `BPF_ENABLE_STATS`, a descriptor the kernel counts as one
//!   more user of the statistics and releases when it is closed (also when the bench dies on
//!   Ctrl-C, on an error or on SIGKILL), and only around the cells that read them. The sysctl
//!   `kernel.bpf_stats_enabled` is never written, so its value cannot be left changed, and a
//!   second bench running at the same time cannot switch the statistics off under this one.
//! - Timing the programs costs something itself (two clock reads per run), so the paths are
//!   compared in cells with statistics off, and the program breakdown comes from extra cells
//!   with statistics on ("+ bpf_stats"); the difference between the two netiso cells is
//!   reported as the measurement's own overhead.
//! - The clock reads are also inside every program's `run_time_ns`. In the timed cells the
//!   bench's own no-op program (`floor`) runs on the client's and the server's ingress and is
//!   timed the same way; its ns/run, cell by cell, is subtracted from netiso's figures to give
//!   them "net of timing" (the targets on programs are judged on those).
//! - Many short rounds, interleaved (every path once per round and workload, the order rotated
//!   each round). CPU per transaction of a path is compared with host and veth+bridge by the
//!   ratio within each round (paired), and reported as the mean of those ratios with a 95%
//!   Student t-interval; the other figures are means over rounds with the same interval.
use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    os::{fd::OwnedFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use nix::{
    sched::{sched_setaffinity, CpuSet},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use crate::{
    env::{self, Ctr, PathKind, World},
    floor::{self, Floor},
    load::{ClientResult, Workload},
    sys::{ip_batch, sh},
};

// ---------------------------------------------------------------------------------------------
// The client side: snapshots at the edges of the measured window.

/// What the load generator's client reads at the edges of its measured window.
#[derive(Args, Debug, Clone, Default)]
pub struct ProbeArgs {
    /// cgroup directories whose `cpu.stat` usage_usec is read at the start and end of the
    /// measured window (the cost section passes the client's and the server's).
    #[arg(long, value_delimiter = ',')]
    pub cpu_cgroups: Vec<PathBuf>,
    /// Directories of pinned programs (the agent's `<bpffs>/progs` and the bench's timing
    /// floor) whose run_time_ns and run_cnt are read at the start and end of the window.
    #[arg(long, value_delimiter = ',')]
    pub bpf_progs: Vec<PathBuf>,
}

/// A program's statistics at one instant.
#[derive(Clone, Debug)]
pub(crate) struct ProgStat {
    pub(crate) id: u32,
    pub(crate) kind: String,
    pub(crate) run_time_ns: u64,
    pub(crate) run_cnt: u64,
}

/// The counters at one edge of the window.
struct Snap {
    progs: BTreeMap<String, ProgStat>,
    lo_packets: u64,
    other_packets: u64,
    ksoftirqd_ns: u64,
    cpu_usec: Vec<u64>,
    at: Instant,
}

/// One program's activity over a window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProgDelta {
    pub name: String,
    /// Program type without the `BPF_PROG_TYPE_` prefix, e.g. `cgroup_skb`.
    pub kind: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// What happened between the two snapshots of a client run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Window {
    pub secs: f64,
    /// Completed transactions (stream: 1).
    pub ops: u64,
    /// Bytes the server confirmed (stream only).
    pub bytes: u64,
    /// usage_usec delta of each `--cpu-cgroups` entry, in order.
    pub cpu_usec: Vec<u64>,
    /// Packets received on `lo` of the client's network namespace.
    pub lo_packets: u64,
    /// Packets received on every other interface of that namespace.
    pub other_packets: u64,
    /// CPU time of the kernel's softirq threads (machine-wide, all tenants).
    pub ksoftirqd_usec: u64,
    /// Every pinned program (also those that did not run).
    pub progs: Vec<ProgDelta>,
}

/// Snapshots taken around a client's measured window. Start is taken before the flows are
/// released and finish after they are joined, with the CPU counters read innermost, so the
/// probe's own reads stay outside the CPU window.
pub struct Probe {
    cgroups: Vec<PathBuf>,
    pins: Vec<(String, PathBuf)>,
    softirqd: Vec<PathBuf>,
    start: Snap,
}

impl Probe {
    /// None when no cgroup to measure was given (the main matrix and scale cells).
    pub fn start(a: &ProbeArgs) -> Result<Option<Probe>> {
        if a.cpu_cgroups.is_empty() {
            return Ok(None);
        }
        let mut pins = Vec::new();
        for dir in &a.bpf_progs {
            pins.extend(list_pins(dir)?);
        }
        let mut names: Vec<&str> = pins.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(&[name, _]) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("two pinned programs named {name} in {:?}", a.bpf_progs);
        }
        let softirqd = ksoftirqd_threads();
        let start = snap(&a.cpu_cgroups, &pins, &softirqd, true)?;
        Ok(Some(Probe {
            cgroups: a.cpu_cgroups.clone(),
            pins,
            softirqd,
            start,
        }))
    }

    pub fn finish(self, ops: u64, bytes: u64) -> Result<Window> {
        let end = snap(&self.cgroups, &self.pins, &self.softirqd, false)?;
        let s = &self.start;
        let mut progs = Vec::new();
        for (name, b) in &end.progs {
            let Some(a) = s.progs.get(name) else { continue };
            if a.id != b.id {
                bail!("program {name} was replaced during the window (id {} -> {}): was the agent restarted?", a.id, b.id);
            }
            progs.push(ProgDelta {
                name: name.clone(),
                kind: b.kind.clone(),
                run_time_ns: b.run_time_ns.saturating_sub(a.run_time_ns),
                run_cnt: b.run_cnt.saturating_sub(a.run_cnt),
            });
        }
        Ok(Window {
            secs: end.at.duration_since(s.at).as_secs_f64(),
            ops,
            bytes,
            cpu_usec: end
                .cpu_usec
                .iter()
                .zip(&s.cpu_usec)
                .map(|(b, a)| b.saturating_sub(*a))
                .collect(),
            lo_packets: end.lo_packets.saturating_sub(s.lo_packets),
            other_packets: end.other_packets.saturating_sub(s.other_packets),
            ksoftirqd_usec: end.ksoftirqd_ns.saturating_sub(s.ksoftirqd_ns) / 1000,
            progs,
        })
    }
}

/// At the start the CPU counters are read last, at the end first: the other reads (bpf
/// syscalls, /proc) stay outside the CPU window, while nothing of the workload runs between
/// them (its flows wait at the barrier, or have ended).
fn snap(
    cgroups: &[PathBuf],
    pins: &[(String, PathBuf)],
    sirq: &[PathBuf],
    start: bool,
) -> Result<Snap> {
    let read_cpu = || -> Result<(Vec<u64>, Instant)> {
        let v = cgroups
            .iter()
            .map(|c| usage_usec(c))
            .collect::<Result<Vec<_>>>()?;
        Ok((v, Instant::now()))
    };
    let mut cpu = None;
    if !start {
        cpu = Some(read_cpu()?);
    }
    let progs = read_progs(pins)?;
    let (lo_packets, other_packets) = netdev_rx_packets()?;
    let ksoftirqd_ns = ksoftirqd_ns(sirq);
    if start {
        cpu = Some(read_cpu()?);
    }
    let (cpu_usec, at) = cpu.expect("read above");
    Ok(Snap {
        progs,
        lo_packets,
        other_packets,
        ksoftirqd_ns,
        cpu_usec,
        at,
    })
}

/// `usage_usec` of a cgroup v2 directory (present without the cpu controller).
pub fn usage_usec(cg: &Path) -> Result<u64> {
    let p = cg.join("cpu.stat");
    let t = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    t.lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        .with_context(|| format!("no usage_usec in {}", p.display()))
}

/// The pins in a directory (the agent's `progs/`, the floor's): program name -> path.
fn list_pins(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut v: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .with_context(|| format!("listing the pinned programs in {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    ensure!(!v.is_empty(), "no pinned programs in {}", dir.display());
    Ok(v)
}

fn read_progs(pins: &[(String, PathBuf)]) -> Result<BTreeMap<String, ProgStat>> {
    pins.iter()
        .map(|(name, p)| Ok((name.clone(), prog_stat(p)?)))
        .collect()
}

/// The statistics of the program pinned at `pin`, now.
pub(crate) fn prog_stat(pin: &Path) -> Result<ProgStat> {
    let i = aya::programs::ProgramInfo::from_pin(pin)
        .with_context(|| format!("reading the program pinned at {}", pin.display()))?;
    let kind = format!("{:?}", i.program_type());
    let kind = kind
        .strip_prefix("BPF_PROG_TYPE_")
        .unwrap_or(&kind)
        .to_lowercase();
    Ok(ProgStat {
        id: i.id(),
        kind,
        run_time_ns: i.run_time().as_nanos() as u64,
        run_cnt: i.run_count(),
    })
}

/// rx packets on `lo` and on every other interface of the caller's network namespace
/// (`/proc/self/net` follows the namespace the process entered).
fn netdev_rx_packets() -> Result<(u64, u64)> {
    let t = fs::read_to_string("/proc/self/net/dev").context("reading /proc/self/net/dev")?;
    let (mut lo, mut other) = (0, 0);
    for l in t.lines().skip(2) {
        let Some((name, rest)) = l.split_once(':') else {
            continue;
        };
        let rx: u64 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if name.trim() == "lo" {
            lo += rx;
        } else {
            other += rx;
        }
    }
    Ok((lo, other))
}

/// `/proc/<pid>/schedstat` of the kernel's per-CPU softirq threads.
fn ksoftirqd_threads() -> Vec<PathBuf> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .map(|e| e.path().join("schedstat"))
        .collect()
}

fn ksoftirqd_ns(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| {
            fs::read_to_string(f)
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The orchestrator side: the paths, the rounds, the statistics switch.

/// The rows of the cost section. The first four are the paths compared with each other, with
/// run-time statistics off; the last two are measured with them on, for the program breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum CostPath {
    /// A namespace of its own with no netiso at all: the bare host.
    Host,
    /// Client and server each in an enforcing netiso container, one namespace.
    Netiso,
    VethBridge,
    VethRouted,
    /// Netiso again, with the programs' run-time statistics on.
    NetisoStats,
    /// Client and server under the agent's cgroup root in no container, statistics on.
    NoContainerStats,
}

impl CostPath {
    pub const ALL: [CostPath; 6] = [
        CostPath::Host,
        CostPath::Netiso,
        CostPath::VethBridge,
        CostPath::VethRouted,
        CostPath::NetisoStats,
        CostPath::NoContainerStats,
    ];
    pub fn label(self) -> &'static str {
        match self {
            CostPath::Host => "host",
            CostPath::Netiso => "netiso",
            CostPath::VethBridge => "veth+bridge",
            CostPath::VethRouted => "veth routed",
            CostPath::NetisoStats => "netiso + bpf_stats",
            CostPath::NoContainerStats => "no container + bpf_stats",
        }
    }
    pub fn stats(self) -> bool {
        matches!(self, CostPath::NetisoStats | CostPath::NoContainerStats)
    }
    /// Client and server share one namespace and talk over `lo`.
    pub fn on_lo(self) -> bool {
        !matches!(self, CostPath::VethBridge | CostPath::VethRouted)
    }
    /// The rows that break netiso's time down by program.
    pub fn breakdown_label(self) -> &'static str {
        match self {
            CostPath::NoContainerStats => "no container",
            _ => "netiso",
        }
    }
}

/// The workloads of the cost section (one flow each).
pub const WORKLOADS: [Workload; 4] = [
    Workload::Stream,
    Workload::Rr,
    Workload::Crr,
    Workload::UdpRr,
];

/// What one transaction is for a workload: the stream counts megabytes (10^6 bytes).
pub fn op_unit(wl: Workload) -> &'static str {
    match wl {
        Workload::Stream => "MB",
        Workload::Crr => "connection",
        Workload::Rr | Workload::UdpRr => "transaction",
    }
}

/// Enables run-time statistics of BPF programs: on while the returned descriptor is held.
pub(crate) fn enable_run_time_stats() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| {
        anyhow::anyhow!(
            "enabling BPF run-time statistics (BPF_ENABLE_STATS, needs CAP_SYS_ADMIN and Linux 5.8+): {e}"
        )
    })
}

/// The share of the workload's CPU netiso's programs may take (target, %).
pub fn share_limit(wl: Workload) -> f64 {
    if matches!(wl, Workload::Stream | Workload::Rr) {
        1.0
    } else {
        2.0
    }
}

fn sysctl_stats() -> Option<u32> {
    fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// One path's endpoints.
struct Rig {
    client_ns: String,
    client_cgroup: PathBuf,
    server_cgroup: PathBuf,
    server_pid: u32,
    target: IpAddr,
}

/// Pins every thread of process `pid` to `cpu` (threads it creates later inherit it).
fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    let dir = format!("/proc/{pid}/task");
    for e in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let tid: i32 = e?.file_name().to_string_lossy().parse()?;
        // A thread may end in between (a closed connection's).
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e).with_context(|| format!("pinning thread {tid} to CPU {cpu}")),
        }
    }
    Ok(())
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0))?;
    let v: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect();
    ensure!(!v.is_empty(), "no CPU in this process's affinity mask");
    Ok(v)
}

/// One client run of one path in one round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub round: usize,
    pub workload: Workload,
    pub path: CostPath,
    /// Run-time statistics were enabled by this bench for this cell.
    pub stats_on: bool,
    /// The CPU client and server were pinned to (None: the scheduler placed them).
    pub cpu: Option<usize>,
    pub secs: f64,
    /// Transactions, connections, or MB for the stream.
    pub ops: f64,
    pub client_usec: u64,
    pub server_usec: u64,
    pub lo_packets: u64,
    pub other_packets: u64,
    pub ksoftirqd_usec: u64,
    /// netiso's programs that ran (run_cnt > 0) in the window.
    pub progs: Vec<ProgDelta>,
    /// The bench's timing floor (`timing-floor`), when it ran: attached to the ingress of
    /// client and server in the timed cells only, never counted as netiso's.
    #[serde(default)]
    pub floor: Option<ProgDelta>,
    pub route_ok: bool,
    pub route_why: String,
}

impl Cell {
    /// Client + server CPU as measured (it includes the floor's runs).
    pub fn cpu_usec(&self) -> u64 {
        self.client_usec + self.server_usec
    }
    /// The workload's CPU in ns: the measured CPU less the floor's own time (the floor is the
    /// bench's instrument, not part of the workload).
    pub fn workload_ns(&self) -> f64 {
        let floor = self.floor.as_ref().map_or(0, |f| f.run_time_ns);
        (self.cpu_usec() * 1000).saturating_sub(floor) as f64
    }
    /// netiso's time (raw: as the kernel timed it).
    pub fn prog_ns(&self) -> u64 {
        self.progs.iter().map(|p| p.run_time_ns).sum()
    }
    /// Runs of netiso's programs.
    pub fn prog_runs(&self) -> u64 {
        self.progs.iter().map(|p| p.run_cnt).sum()
    }
    /// The floor's ns per run in this cell (NaN when it did not run).
    pub fn floor_ns_per_run(&self) -> f64 {
        self.floor
            .as_ref()
            .filter(|f| f.run_cnt > 0)
            .map_or(f64::NAN, |f| f.run_time_ns as f64 / f.run_cnt as f64)
    }
    /// What timing netiso's programs added in this cell: the floor's ns per run for each of
    /// their runs (NaN without a floor).
    pub fn timing_ns(&self) -> f64 {
        self.floor_ns_per_run() * self.prog_runs() as f64
    }
    /// netiso's time net of timing.
    pub fn prog_ns_net(&self) -> f64 {
        self.prog_ns() as f64 - self.timing_ns()
    }
    /// The workload's CPU net of timing netiso's programs.
    pub fn workload_ns_net(&self) -> f64 {
        self.workload_ns() - self.timing_ns()
    }
}

pub struct Plan {
    pub rounds: usize,
    pub cell_ms: u64,
    /// Client and server on one CPU per round (see `measure`).
    pub pin: bool,
    /// Containers registered (and idle) besides the section's own.
    pub idle_containers: usize,
}

impl Plan {
    /// Full: 40 rounds of 500 ms (6 paths x 4 workloads: about 8.5 minutes); quick: 5 rounds
    /// of 200 ms (about 25 s). Cells of one round turned out nearly independent (pairing
    /// removes little), so at equal time more, shorter rounds narrow the intervals more than
    /// longer cells: 12 rounds of 1 s gave ratio intervals of +-4..12%, 12 of 250 ms +-5..16%.
    pub fn new(o: &crate::bench::Opts) -> Plan {
        Plan {
            rounds: o.cost_rounds.unwrap_or(if o.quick { 5 } else { 40 }),
            cell_ms: o.cost_ms.unwrap_or(if o.quick { 200 } else { 500 }),
            pin: !o.cost_unpinned,
            idle_containers: o.cost_containers,
        }
    }
}

/// Measures the cost section: builds its endpoints, runs the rounds, removes the endpoints.
///
/// Unless `plan.pin` is off, each round pins the client and every server thread to one CPU
/// (the next allowed CPU each round). On a virtual machine a wake-up that crosses to another
/// vCPU is an IPI the hypervisor delivers, and the guest charges that time to the running
/// task: here a 1-byte TCP round trip cost about 7 us of CPU with both ends on one vCPU and
/// 60-80 us with them on two, so whether the scheduler happened to split them decided a
/// cell, not the path. On one CPU every path pays the same placement.
pub fn measure(w: &World, plan: &Plan) -> Result<CostReport> {
    ensure!(
        plan.rounds >= 2,
        "the cost section needs at least 2 rounds for an interval"
    );
    let before = sysctl_stats();
    let mut ctrs = Vec::new();
    let r = (|| {
        let rigs = build(w, &mut ctrs)?;
        register_idle(w, plan.idle_containers, &mut ctrs)?;
        let status = w.api.status().context("asking the agent for its status")?;
        ensure!(status.enabled, "netiso is disabled in the bench's agent");
        // Removed (with its pin directory) when this closure ends, also on an error.
        let floor = Floor::load(&Path::new("/sys/fs/bpf").join(format!("{}-floor", w.id)))?;
        let (cells, programs) = run_rounds(w, plan, &rigs, &floor)?;
        Ok((cells, programs, status, floor.pin()))
    })();
    w.destroy(ctrs);
    let (cells, programs, status, floor_pin) = r?;
    let after = sysctl_stats();
    let mut report = summarize(plan, cells, programs, before, after);
    report.registered_containers = status.containers;
    report.attached = status.programs;
    report.floor = Some(FloorInfo {
        pin: floor_pin.display().to_string(),
        program: "r0 = 1; exit (cgroup_skb, loaded with BPF_PROG_LOAD), linked to the ingress of the client's and the server's cgroup around each timed cell".into(),
    });
    Ok(report)
}

/// Registers `n` enforcing containers nobody runs in, so the rounds measure netiso with a
/// registry of that size (IPv6 addresses, group 99 of `addr_for`).
fn register_idle(w: &World, n: usize, ctrs: &mut Vec<Ctr>) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let pb = crate::bench::progress(n as u64);
    pb.set_message(format!("cost: registering {n} idle containers"));
    for i in 0..n {
        ctrs.push(w.create(PathKind::Netiso, 99, i)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(())
}

fn run_rounds(
    w: &World,
    plan: &Plan,
    rigs: &BTreeMap<CostPath, Rig>,
    floor: &Floor,
) -> Result<(Vec<Cell>, Vec<ProgMeta>)> {
    let progs_dir = Path::new("/sys/fs/bpf").join(&w.id).join("progs");
    let programs: Vec<ProgMeta> = read_progs(&list_pins(&progs_dir)?)?
        .into_iter()
        .map(|(name, s)| ProgMeta { name, kind: s.kind })
        .collect();
    let cpus = allowed_cpus()?;
    let total = plan.rounds * WORKLOADS.len() * CostPath::ALL.len();
    let pb = crate::bench::progress(total as u64);
    let mut cells = Vec::with_capacity(total);
    for round in 0..plan.rounds {
        let cpu = plan.pin.then(|| cpus[round % cpus.len()]);
        if let Some(cpu) = cpu {
            for r in rigs.values() {
                pin_process(r.server_pid, cpu)?;
            }
        }
        for wl in WORKLOADS {
            // Rotated each round so no path always follows the same neighbour.
            for k in 0..CostPath::ALL.len() {
                let path = CostPath::ALL[(k + round) % CostPath::ALL.len()];
                pb.set_message(format!("cost round {} {} {wl:?}", round + 1, path.label()));
                let rig = &rigs[&rig_of(path)];
                // The floor runs on the timed cells' packets only: the rows compared with
                // statistics off stay without it.
                let links = if path.stats() {
                    floor.attach(&[&rig.client_cgroup, &rig.server_cgroup])?
                } else {
                    Vec::new()
                };
                let stats = if path.stats() {
                    Some(enable_run_time_stats()?)
                } else {
                    None
                };
                let c = cell(
                    w,
                    rig,
                    path,
                    wl,
                    round,
                    plan.cell_ms,
                    &[&progs_dir, floor.dir()],
                    cpu,
                );
                drop(stats);
                drop(links);
                cells.push(c?);
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();
    Ok((cells, programs))
}

/// The endpoints a path uses (the "+ bpf_stats" netiso cells reuse netiso's).
fn rig_of(p: CostPath) -> CostPath {
    match p {
        CostPath::NetisoStats => CostPath::Netiso,
        p => p,
    }
}

fn server_pid(c: &Ctr) -> u32 {
    c.server.as_ref().map_or(0, std::process::Child::id)
}

/// A cgroup (and optionally a namespace) to run one endpoint in, removed by `World::destroy`.
fn endpoint(
    kind: PathKind,
    name: &str,
    cgroup: PathBuf,
    netns: Option<String>,
    addr: &str,
) -> Result<Ctr> {
    fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
    Ok(Ctr {
        kind,
        name: name.into(),
        cgroup,
        netns,
        addr: addr.parse()?,
        ifname: None,
        server: None,
    })
}

/// Builds every path's client and server; every created thing goes into `ctrs` at once, so
/// the caller removes it even when a later step fails.
fn build(w: &World, ctrs: &mut Vec<Ctr>) -> Result<BTreeMap<CostPath, Rig>> {
    let cost = w.top.join("cost");
    fs::create_dir_all(&cost).with_context(|| format!("creating {}", cost.display()))?;
    let mut rigs = BTreeMap::new();

    // host: a namespace of its own, where no netiso program is attached (the agent's
    // namespace has its socket-lookup program), cgroups outside the agent's root.
    let bare = format!("{}-bare", w.id);
    env::track_netns(&bare);
    sh(Command::new("ip").args(["netns", "add", &bare]))?;
    ctrs.push(endpoint(
        PathKind::Host,
        "cost-host-client",
        cost.join("host-client"),
        None,
        env::V4_HOST,
    )?);
    ctrs.push(endpoint(
        PathKind::Host,
        "cost-host-server",
        cost.join("host-server"),
        Some(bare.clone()),
        env::V4_HOST,
    )?);
    ip_batch(
        Some(&bare),
        &format!("link set lo up\naddr add {}/32 dev lo\n", env::V4_HOST),
    )?;
    sh(Command::new("ip").args([
        "netns",
        "exec",
        &bare,
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=10000 65000",
    ]))?;
    let srv = ctrs.last_mut().unwrap();
    w.start_server(srv)?;
    rigs.insert(
        CostPath::Host,
        Rig {
            client_ns: bare.clone(),
            client_cgroup: cost.join("host-client"),
            server_cgroup: srv.cgroup.clone(),
            server_pid: server_pid(srv),
            target: srv.addr,
        },
    );

    // netiso: server and client each in an enforcing container (how the issue measured it).
    ctrs.push(w.create(PathKind::Netiso, 0, 1)?);
    let srv = ctrs.last_mut().unwrap();
    w.start_server(srv)?;
    let (server_cgroup, target, pid) = (srv.cgroup.clone(), srv.addr, server_pid(srv));
    ctrs.push(w.create(PathKind::Netiso, 0, 2)?);
    rigs.insert(
        CostPath::Netiso,
        Rig {
            client_ns: w.hostns.clone(),
            client_cgroup: ctrs.last().unwrap().cgroup.clone(),
            server_cgroup,
            server_pid: pid,
            target,
        },
    );

    // no container: under the agent's cgroup root, registered nowhere, the agent's namespace.
    let free = "203.0.113.12";
    ip_batch(Some(&w.hostns), &format!("addr add {free}/32 dev lo\n"))?;
    ctrs.push(endpoint(
        PathKind::Host,
        "cost-free-client",
        w.netiso_root.join("cost-free-client"),
        None,
        free,
    )?);
    ctrs.push(endpoint(
        PathKind::Host,
        "cost-free-server",
        w.netiso_root.join("cost-free-server"),
        None,
        free,
    )?);
    let srv = ctrs.last_mut().unwrap();
    w.start_server(srv)?;
    rigs.insert(
        CostPath::NoContainerStats,
        Rig {
            client_ns: w.hostns.clone(),
            client_cgroup: w.netiso_root.join("cost-free-client"),
            server_cgroup: srv.cgroup.clone(),
            server_pid: server_pid(srv),
            target: srv.addr,
        },
    );

    // The veth paths: a server namespace behind a veth, the client in the path's host
    // namespace in a leaf cgroup of its own.
    for (path, kind, name) in [
        (CostPath::VethBridge, PathKind::VethBridge, "bridge"),
        (CostPath::VethRouted, PathKind::VethRouted, "routed"),
    ] {
        ctrs.push(w.create(kind, 0, 1)?);
        let srv = ctrs.last_mut().unwrap();
        w.start_server(srv)?;
        let (server_cgroup, target, pid) = (srv.cgroup.clone(), srv.addr, server_pid(srv));
        let cg = cost.join(format!("{name}-client"));
        ctrs.push(endpoint(
            PathKind::Host,
            &format!("cost-{name}-client"),
            cg.clone(),
            None,
            env::V4_HOST,
        )?);
        rigs.insert(
            path,
            Rig {
                client_ns: w.client_ns(kind).to_owned(),
                client_cgroup: cg,
                server_cgroup,
                server_pid: pid,
                target,
            },
        );
    }
    Ok(rigs)
}

#[expect(clippy::too_many_arguments, reason = "one cell's whole description")]
fn cell(
    w: &World,
    rig: &Rig,
    path: CostPath,
    wl: Workload,
    round: usize,
    ms: u64,
    prog_dirs: &[&Path],
    cpu: Option<usize>,
) -> Result<Cell> {
    let mut cmd = Command::new(&w.me);
    if let Some(cpu) = cpu {
        let mut set = CpuSet::new();
        set.set(cpu)?;
        // SAFETY: sched_setaffinity is a plain syscall, async-signal-safe; the client and the
        // threads it starts inherit the mask.
        unsafe {
            cmd.pre_exec(move || {
                sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
            });
        }
    }
    let out = cmd
        .arg("client")
        .arg("--netns")
        .arg(World::ns_path(&rig.client_ns))
        .arg("--cgroup")
        .arg(&rig.client_cgroup)
        .args([
            "--workload",
            clap::ValueEnum::to_possible_value(&wl).unwrap().get_name(),
        ])
        .args(["--targets", &rig.target.to_string()])
        .args(["--flows", "1", "--duration-ms", &ms.to_string()])
        .arg("--cpu-cgroups")
        .arg(format!(
            "{},{}",
            rig.client_cgroup.display(),
            rig.server_cgroup.display()
        ))
        .arg("--bpf-progs")
        .arg(
            prog_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "cost section: client {wl:?} on {} (target {}) failed: {}",
            path.label(),
            rig.target,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let r: ClientResult = serde_json::from_slice(&out.stdout).context("parsing client output")?;
    let win = r
        .window
        .context("the client reported no measurement window")?;
    let mut c = cell_from(round, wl, path, &win);
    c.cpu = cpu;
    Ok(c)
}

/// A cell from a client's window, with its route check: the lo paths must show at least one
/// packet per transaction on `lo` and (almost) none elsewhere, the veth paths the reverse.
pub fn cell_from(round: usize, wl: Workload, path: CostPath, win: &Window) -> Cell {
    let ops = if wl == Workload::Stream {
        win.bytes as f64 / 1e6
    } else {
        win.ops as f64
    };
    let expect = if wl == Workload::Stream {
        100
    } else {
        win.ops.max(1)
    };
    let (on, off) = if path.on_lo() {
        (win.lo_packets, win.other_packets)
    } else {
        (win.other_packets, win.lo_packets)
    };
    let (where_, elsewhere) = if path.on_lo() {
        ("lo", "other interfaces")
    } else {
        ("the veth/bridge interfaces", "lo")
    };
    let mut why = format!("{on} packets on {where_}, {off} on {elsewhere}");
    let mut ok = on >= expect && off <= 50 + on / 10;
    if ops <= 0.0 || win.cpu_usec.len() != 2 || win.cpu_usec.contains(&0) {
        ok = false;
        why = format!("no work measured: {ops} ops, cpu {:?} usec", win.cpu_usec);
    }
    let cpu = |i: usize| win.cpu_usec.get(i).copied().unwrap_or(0);
    let (floor, progs): (Vec<&ProgDelta>, Vec<&ProgDelta>) = win
        .progs
        .iter()
        .filter(|p| p.run_cnt > 0)
        .partition(|p| p.name == floor::NAME);
    Cell {
        round,
        workload: wl,
        path,
        stats_on: path.stats(),
        cpu: None,
        secs: win.secs,
        ops,
        client_usec: cpu(0),
        server_usec: cpu(1),
        lo_packets: win.lo_packets,
        other_packets: win.other_packets,
        ksoftirqd_usec: win.ksoftirqd_usec,
        progs: progs.into_iter().cloned().collect(),
        floor: floor.first().copied().cloned(),
        route_ok: ok,
        route_why: why,
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// A mean over rounds with its 95% confidence interval (Student t, n - 1 degrees of freedom).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Est {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    /// Rounds it is computed from.
    pub n: usize,
}

/// Two-sided 97.5% quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        _ => {
            // Cornish-Fisher expansion around the normal quantile; exact to 1e-4 from df 30.
            let z: f64 = 1.959_964;
            let d = df as f64;
            let g1 = (z.powi(3) + z) / 4.0;
            let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
            let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
            z + g1 / d + g2 / d.powi(2) + g3 / d.powi(3)
        }
    }
}

/// Mean and 95% t-interval of the finite values; None with fewer than two.
pub fn estimate(xs: &[f64]) -> Option<Est> {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n < 2 {
        return None;
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t975(n - 1) * (var / n as f64).sqrt();
    Some(Est {
        mean,
        lo: mean - half,
        hi: mean + half,
        n,
    })
}

/// What an interval says about "at most `limit`" (or "below", when `strict`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The whole interval is within the limit.
    Met,
    /// The whole interval is beyond it.
    Missed,
    /// The interval straddles it.
    CannotTell,
}

impl Verdict {
    pub fn of(e: &Est, limit: f64, strict: bool) -> Verdict {
        let within = |x: f64| if strict { x < limit } else { x <= limit };
        if within(e.hi) {
            Verdict::Met
        } else if !within(e.lo) {
            Verdict::Missed
        } else {
            Verdict::CannotTell
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met (interval confirms)",
            Verdict::Missed => "missed (interval refutes)",
            Verdict::CannotTell => "cannot tell (interval straddles the limit)",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgMeta {
    pub name: String,
    pub kind: String,
}

/// CPU per transaction of one path, and its paired ratios.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PathCost {
    pub path: CostPath,
    /// Client + server CPU per transaction (or per MB), microseconds.
    pub cpu_us_per_op: Est,
    /// Mean of the per-round ratios to host, and to veth+bridge.
    pub vs_host: Option<Est>,
    pub vs_bridge: Option<Est>,
}

/// One program in a breakdown row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgCost {
    pub name: String,
    pub kind: String,
    /// Total over the rounds.
    pub runs: u64,
    pub run_time_ns: u64,
    pub runs_per_op: f64,
    /// Raw: per round run_time_ns / run_cnt (rounds where it ran); the mean's interval.
    pub ns_per_run: Option<Est>,
    /// Pooled: total run_time_ns / total runs.
    pub ns_per_run_pooled: f64,
    /// Over the timing floor: per round, ns/run minus the floor's ns/run in the same cell
    /// (paired); the mean's interval. None for the floor itself.
    pub ns_per_run_net: Option<Est>,
    /// Pooled: (run_time_ns minus the floor's ns/run for each run) / runs, over the rounds
    /// with a floor.
    pub ns_per_run_net_pooled: Option<f64>,
}

/// netiso's own time in one setting (both in containers, or in no container). Raw figures
/// are as the kernel timed the programs; "net" ones subtract, cell by cell, the timing floor's
/// ns/run for every run of netiso's programs (`Cell::prog_ns_net`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Breakdown {
    pub path: CostPath,
    /// ns of netiso's programs per transaction (or per MB), raw.
    pub ns_per_op: Est,
    /// netiso's programs' time as a share of the workload's CPU, percent, raw.
    pub share_pct: Est,
    /// ns of netiso's programs per packet on `lo`, raw.
    pub ns_per_packet: Est,
    /// The same three net of timing; the share's denominator is the workload's CPU net of
    /// timing too.
    pub ns_per_op_net: Option<Est>,
    pub share_net_pct: Option<Est>,
    pub ns_per_packet_net: Option<Est>,
    pub packets_per_op: f64,
    pub programs: Vec<ProgCost>,
    /// The bench's timing floor in the same cells (its ns/run is what timing adds to a run).
    pub floor: Option<ProgCost>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadCost {
    pub workload: Workload,
    pub unit: String,
    pub paths: Vec<PathCost>,
    pub breakdown: Vec<Breakdown>,
    /// Paired ratio of netiso with statistics on to netiso with them off: what timing the
    /// programs costs.
    pub stats_overhead: Option<Est>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetCheck {
    pub target: String,
    pub scope: String,
    pub limit: f64,
    pub unit: String,
    pub measured: Option<Est>,
    pub verdict: Option<Verdict>,
    pub note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatsInfo {
    pub mechanism: String,
    /// `kernel.bpf_stats_enabled` before and after the section (never written by the bench).
    pub sysctl_before: Option<u32>,
    pub sysctl_after: Option<u32>,
    /// Cells with statistics off in which netiso's programs were timed all the same: another
    /// process on the machine held the statistics on (their CPU includes the timing).
    pub off_cells_timed_anyway: usize,
}

/// The bench's timing floor (see `floor`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FloorInfo {
    /// Where it was pinned during the section (removed at its end).
    pub pin: String,
    pub program: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CostReport {
    pub method: BTreeMap<String, String>,
    pub rounds: usize,
    pub cell_ms: u64,
    /// Idle containers registered besides the section's own two.
    pub idle_containers: usize,
    /// Containers the agent had registered during the rounds (`GET /v1/status`).
    pub registered_containers: usize,
    /// The programs the agent reported attached (`GET /v1/status`).
    pub attached: Vec<String>,
    pub stats: StatsInfo,
    /// The timing floor the net figures are measured against.
    pub floor: Option<FloorInfo>,
    pub programs: Vec<ProgMeta>,
    pub workloads: Vec<WorkloadCost>,
    pub targets: Vec<TargetCheck>,
    /// CPU time of the softirq threads over the section, in percent of the workloads' CPU
    /// (machine-wide: not part of any row; large values would mean rows miss work).
    pub ksoftirqd_pct: Option<f64>,
    pub route_failures: usize,
    pub cells: Vec<Cell>,
}

/// Per-round values of `f` for one path and workload, indexed by round.
fn by_round(
    cells: &[Cell],
    path: CostPath,
    wl: Workload,
    f: impl Fn(&Cell) -> f64,
) -> BTreeMap<usize, f64> {
    cells
        .iter()
        .filter(|c| c.path == path && c.workload == wl)
        .map(|c| (c.round, f(c)))
        .collect()
}

/// The workload's CPU per transaction, microseconds (the floor's own time left out).
fn cpu_per_op(c: &Cell) -> f64 {
    c.workload_ns() / 1000.0 / c.ops
}

/// Per-round `f(a, b)` over the rounds both have, and the t-interval of its mean.
fn paired_with(
    a: &BTreeMap<usize, f64>,
    b: &BTreeMap<usize, f64>,
    f: impl Fn(f64, f64) -> f64,
) -> Option<Est> {
    let r: Vec<f64> = a
        .iter()
        .filter_map(|(k, x)| Some(f(*x, *b.get(k)?)))
        .collect();
    estimate(&r)
}

/// Mean of the per-round ratios a/b, pairing the rounds both have.
fn paired(a: &BTreeMap<usize, f64>, b: &BTreeMap<usize, f64>) -> Option<Est> {
    paired_with(a, b, |x, y| x / y)
}

/// Mean of the per-round differences a - b, pairing the rounds both have.
fn paired_diff(a: &BTreeMap<usize, f64>, b: &BTreeMap<usize, f64>) -> Option<Est> {
    paired_with(a, b, |x, y| x - y)
}

/// The programs of `deltas` (a program's activity in one round) summed over the rounds; the
/// per-run figures net of the floor whose ns/run per round is `floor`.
fn prog_costs<'a>(
    deltas: impl Iterator<Item = (usize, &'a ProgDelta)>,
    floor: &BTreeMap<usize, f64>,
    ops: f64,
) -> Vec<ProgCost> {
    #[derive(Default)]
    struct Acc {
        kind: String,
        runs: u64,
        ns: u64,
        per_run: BTreeMap<usize, f64>,
        net_ns: f64,
        net_runs: u64,
    }
    let mut progs: BTreeMap<&str, Acc> = BTreeMap::new();
    for (round, p) in deltas {
        let a = progs.entry(&p.name).or_default();
        a.kind.clone_from(&p.kind);
        a.runs += p.run_cnt;
        a.ns += p.run_time_ns;
        a.per_run
            .insert(round, p.run_time_ns as f64 / p.run_cnt as f64);
        if let Some(f) = floor.get(&round).filter(|f| f.is_finite()) {
            a.net_ns += p.run_time_ns as f64 - f * p.run_cnt as f64;
            a.net_runs += p.run_cnt;
        }
    }
    let mut v: Vec<ProgCost> = progs
        .into_iter()
        .map(|(name, a)| ProgCost {
            name: name.to_owned(),
            kind: a.kind,
            runs: a.runs,
            run_time_ns: a.ns,
            runs_per_op: a.runs as f64 / ops,
            ns_per_run: estimate(&a.per_run.values().copied().collect::<Vec<_>>()),
            ns_per_run_pooled: a.ns as f64 / a.runs as f64,
            ns_per_run_net: paired_diff(&a.per_run, floor),
            ns_per_run_net_pooled: (a.net_runs > 0).then(|| a.net_ns / a.net_runs as f64),
        })
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.run_time_ns));
    v
}

fn breakdown(cells: &[Cell], path: CostPath, wl: Workload) -> Option<Breakdown> {
    let mine: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.path == path && c.workload == wl)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let vals = |f: &dyn Fn(&Cell) -> f64| estimate(&mine.iter().map(|c| f(c)).collect::<Vec<_>>());
    let ops: f64 = mine.iter().map(|c| c.ops).sum();
    let packets: u64 = mine.iter().map(|c| c.lo_packets).sum();
    let floor = by_round(cells, path, wl, Cell::floor_ns_per_run);
    let programs = prog_costs(
        mine.iter()
            .flat_map(|c| c.progs.iter().map(|p| (c.round, p))),
        &floor,
        ops,
    );
    let floor_cost = prog_costs(
        mine.iter()
            .filter_map(|c| Some((c.round, c.floor.as_ref()?))),
        &BTreeMap::new(),
        ops,
    )
    .pop();
    Some(Breakdown {
        path,
        ns_per_op: vals(&|c| c.prog_ns() as f64 / c.ops)?,
        share_pct: vals(&|c| 100.0 * c.prog_ns() as f64 / c.workload_ns())?,
        ns_per_packet: vals(&|c| c.prog_ns() as f64 / c.lo_packets as f64)?,
        ns_per_op_net: vals(&|c| c.prog_ns_net() / c.ops),
        share_net_pct: vals(&|c| 100.0 * c.prog_ns_net() / c.workload_ns_net()),
        ns_per_packet_net: vals(&|c| c.prog_ns_net() / c.lo_packets as f64),
        packets_per_op: packets as f64 / ops,
        programs,
        floor: floor_cost,
    })
}

/// Per-packet programs: those that run for every packet (cgroup_skb, TC).
pub fn per_packet(kind: &str) -> bool {
    matches!(kind, "cgroup_skb" | "sched_cls" | "sched_act")
}

pub fn wl_name(wl: Workload) -> &'static str {
    match wl {
        Workload::Stream => "TCP stream",
        Workload::Rr => "TCP request/response 1 B",
        Workload::Crr => "TCP connect/request/close",
        Workload::UdpRr => "UDP request/response 1 B",
    }
}

/// The figures and the targets of issue 11 from the cells.
pub fn summarize(
    plan: &Plan,
    cells: Vec<Cell>,
    programs: Vec<ProgMeta>,
    sysctl_before: Option<u32>,
    sysctl_after: Option<u32>,
) -> CostReport {
    let mut workloads = Vec::new();
    let mut targets = Vec::new();
    for wl in WORKLOADS {
        let host = by_round(&cells, CostPath::Host, wl, cpu_per_op);
        let bridge = by_round(&cells, CostPath::VethBridge, wl, cpu_per_op);
        let paths: Vec<PathCost> = CostPath::ALL
            .into_iter()
            .filter_map(|p| {
                let mine = by_round(&cells, p, wl, cpu_per_op);
                Some(PathCost {
                    path: p,
                    cpu_us_per_op: estimate(&mine.values().copied().collect::<Vec<_>>())?,
                    vs_host: (p != CostPath::Host)
                        .then(|| paired(&mine, &host))
                        .flatten(),
                    vs_bridge: (p != CostPath::VethBridge)
                        .then(|| paired(&mine, &bridge))
                        .flatten(),
                })
            })
            .collect();
        let breakdown: Vec<Breakdown> = [CostPath::NetisoStats, CostPath::NoContainerStats]
            .into_iter()
            .filter_map(|p| breakdown(&cells, p, wl))
            .collect();
        let stats_overhead = paired(
            &by_round(&cells, CostPath::NetisoStats, wl, cpu_per_op),
            &by_round(&cells, CostPath::Netiso, wl, cpu_per_op),
        );
        targets.extend(workload_targets(wl, &paths, &breakdown));
        workloads.push(WorkloadCost {
            workload: wl,
            unit: op_unit(wl).into(),
            paths,
            breakdown,
            stats_overhead,
        });
    }
    let cpu: u64 = cells.iter().map(Cell::cpu_usec).sum();
    let sirq: u64 = cells.iter().map(|c| c.ksoftirqd_usec).sum();
    let off_cells_timed_anyway = cells
        .iter()
        .filter(|c| !c.stats_on && c.progs.iter().any(|p| p.run_time_ns > 0))
        .count();
    let method: BTreeMap<String, String> = [
        ("cpu", "usage_usec of the cpu.stat of the client's and the server's cgroup (every process of the workload is in one of them), read by the client at the edges of its measured window"),
        ("netiso_time", "run_time_ns and run_cnt of every program pinned under the agent's <bpffs>/progs, read over the same window"),
        ("floor", "the timing floor: a no-op cgroup_skb program of the bench (r0 = 1; exit), linked to the ingress of the client's and the server's cgroup in the timed cells and read like netiso's programs; its ns/run is what timing adds to any program's run (two sched_clock() reads around the run in __bpf_prog_run, the common run path); never counted as netiso's; its own time is left out of the workload's CPU"),
        ("net", "net of timing: per cell, netiso's time minus the floor's ns/run x the runs of netiso's programs; the net share divides by the workload's CPU less the same amount; a program's ns/run over the floor is the per-cell difference (paired) with the t-interval over rounds"),
        ("bpf_stats", "enabled with BPF_ENABLE_STATS (a descriptor, released on close or exit) only around the '+ bpf_stats' cells; kernel.bpf_stats_enabled is never written"),
        ("paths", "host: own namespace, no netiso; netiso: client and server each in an enforcing container; veth+bridge, veth routed: server behind a veth; no container: client and server under the agent's cgroup root in no container"),
        ("rounds", "every path once per round and workload, order rotated each round"),
        ("placement", if plan.pin { "client and every server thread pinned to one CPU per round, the next CPU each round (on a VM a cross-vCPU wake-up is charged to the running task and varies with the host's load)" } else { "client and server placed by the scheduler (--cost-unpinned)" }),
        ("interval", "95% Student t-interval of the mean over rounds; ratios are the mean of the per-round (paired) ratios"),
        ("unit", "stream: per MB (10^6 bytes); crr: per connection; rr, udp_rr: per transaction"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    CostReport {
        method,
        rounds: plan.rounds,
        cell_ms: plan.cell_ms,
        idle_containers: plan.idle_containers,
        registered_containers: 0,
        attached: Vec::new(),
        stats: StatsInfo {
            mechanism: "BPF_ENABLE_STATS".into(),
            sysctl_before,
            sysctl_after,
            off_cells_timed_anyway,
        },
        floor: None,
        programs,
        workloads,
        targets,
        ksoftirqd_pct: (cpu > 0).then(|| 100.0 * sirq as f64 / cpu as f64),
        route_failures: cells.iter().filter(|c| !c.route_ok).count(),
        cells,
    }
}

fn target(
    t: &str,
    scope: String,
    limit: f64,
    unit: &str,
    e: Option<Est>,
    strict: bool,
    note: &str,
) -> TargetCheck {
    TargetCheck {
        target: t.into(),
        scope,
        limit,
        unit: unit.into(),
        verdict: e.map(|e| Verdict::of(&e, limit, strict)),
        measured: e,
        note: note.into(),
    }
}

fn workload_targets(wl: Workload, paths: &[PathCost], bd: &[Breakdown]) -> Vec<TargetCheck> {
    let name = wl_name(wl);
    let mut v = Vec::new();
    let netiso = bd.iter().find(|b| b.path == CostPath::NetisoStats);
    let free = bd.iter().find(|b| b.path == CostPath::NoContainerStats);
    let limit = share_limit(wl);
    v.push(target(
        "netiso's programs take at most this share of the workload's CPU (net of timing)",
        name.into(),
        limit,
        "%",
        netiso.and_then(|b| b.share_net_pct),
        false,
        "client and server each in an enforcing container, statistics on; netiso's time and the workload's CPU less the timing floor's ns/run for each run of netiso's programs",
    ));
    if matches!(wl, Workload::Stream | Workload::Rr) {
        if let Some(b) = netiso {
            let pp: Vec<&ProgCost> = b.programs.iter().filter(|p| per_packet(&p.kind)).collect();
            if pp.is_empty() {
                v.push(target(
                    "a per-packet program costs at most this per run on established flows (over the timing floor)",
                    format!("{name}: no per-packet program ran"),
                    50.0,
                    "ns",
                    Some(Est {
                        mean: 0.0,
                        lo: 0.0,
                        hi: 0.0,
                        n: b.ns_per_op.n,
                    }),
                    false,
                    "nothing runs per packet",
                ));
            }
            for p in pp {
                v.push(target(
                    "a per-packet program costs at most this per run on established flows (over the timing floor)",
                    format!("{name}: {}", p.name),
                    50.0,
                    "ns",
                    p.ns_per_run_net,
                    false,
                    "mean over rounds of run_time_ns / run_cnt minus the timing floor's ns/run in the same cell",
                ));
            }
        }
    }
    v.push(target(
        "processes in no container pay at most this per packet (net of timing)",
        name.into(),
        20.0,
        "ns",
        free.and_then(|b| b.ns_per_packet_net),
        false,
        "all of netiso's programs' time less the timing floor's ns/run for each of their runs, / packets on lo; client and server under the root in no container",
    ));
    let np = paths.iter().find(|p| p.path == CostPath::Netiso);
    v.push(target(
        "CPU per transaction at most this times the host's",
        name.into(),
        1.01,
        "x",
        np.and_then(|p| p.vs_host),
        false,
        "netiso (both in containers, statistics off) / host, paired rounds",
    ));
    v.push(target(
        "CPU per transaction below veth+bridge's",
        name.into(),
        1.0,
        "x",
        np.and_then(|p| p.vs_bridge),
        true,
        "netiso / veth+bridge, paired rounds",
    ));
    v
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        assert!((t975(1) - 12.706).abs() < 1e-3);
        assert!((t975(4) - 2.776).abs() < 1e-3);
        assert!((t975(29) - 2.045).abs() < 1e-3);
        // The expansion agrees with the table where they meet, and with published values.
        let cf30 = {
            let z: f64 = 1.959_964;
            let d = 30.0;
            z + (z.powi(3) + z) / 4.0 / d
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0 / (d * d)
                + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z)
                    / 384.0
                    / (d * d * d)
        };
        assert!((cf30 - t975(30)).abs() < 2e-4, "{cf30}");
        assert!((t975(60) - 2.0003).abs() < 2e-4, "{}", t975(60));
        assert!((t975(120) - 1.9799).abs() < 2e-4, "{}", t975(120));
        assert!((t975(100_000) - 1.96).abs() < 1e-3);
        assert!(t975(0).is_infinite());
    }

    #[test]
    fn estimate_is_a_t_interval() {
        assert_eq!(estimate(&[1.0]), None);
        assert_eq!(estimate(&[f64::NAN, 2.0]), None);
        // mean 2, sd 1, n 3: half width = 4.3027 / sqrt(3).
        let e = estimate(&[1.0, 2.0, 3.0]).unwrap();
        assert!((e.mean - 2.0).abs() < 1e-12);
        assert!((e.hi - e.mean - 4.3027 / 3f64.sqrt()).abs() < 1e-4);
        assert!((e.mean - e.lo - 4.3027 / 3f64.sqrt()).abs() < 1e-4);
        assert_eq!(e.n, 3);
        let flat = estimate(&[5.0; 4]).unwrap();
        assert_eq!((flat.lo, flat.mean, flat.hi), (5.0, 5.0, 5.0));
    }

    #[test]
    fn verdicts_follow_the_interval() {
        let e = |lo, hi| Est {
            mean: f64::midpoint(lo, hi),
            lo,
            hi,
            n: 5,
        };
        assert_eq!(Verdict::of(&e(0.99, 1.005), 1.01, false), Verdict::Met);
        assert_eq!(Verdict::of(&e(1.02, 1.04), 1.01, false), Verdict::Missed);
        assert_eq!(Verdict::of(&e(1.0, 1.02), 1.01, false), Verdict::CannotTell);
        // "Below": touching the limit is not below.
        assert_eq!(Verdict::of(&e(0.9, 1.0), 1.0, true), Verdict::CannotTell);
        assert_eq!(Verdict::of(&e(1.0, 1.1), 1.0, true), Verdict::Missed);
        assert_eq!(Verdict::of(&e(0.9, 0.99), 1.0, true), Verdict::Met);
    }

    fn prog(name: &str, kind: &str, ns: u64, cnt: u64) -> ProgDelta {
        ProgDelta {
            name: name.into(),
            kind: kind.into(),
            run_time_ns: ns,
            run_cnt: cnt,
        }
    }

    /// Synthetic rounds: host costs 10 µs a transaction, netiso 10.5 (+ noise), bridge 11.
    /// In the timed rows the floor costs 60, 61 or 62 ns a run (by round), and so much more
    /// every program: netiso's ingress and egress 240 ns over the floor, the no-container
    /// ingress 15.
    pub(crate) fn cells(rounds: usize) -> Vec<Cell> {
        let mut v = Vec::new();
        for round in 0..rounds {
            let wobble = 1.0 + 0.01 * ((round % 3) as f64 - 1.0);
            let shift = (round % 3) as u64;
            for wl in WORKLOADS {
                for path in CostPath::ALL {
                    let per_op = match path {
                        CostPath::Host => 10.0,
                        CostPath::Netiso => 10.5,
                        CostPath::VethBridge => 11.0,
                        CostPath::VethRouted => 10.8,
                        CostPath::NetisoStats => 10.7,
                        CostPath::NoContainerStats => 10.1,
                    } * if path == CostPath::Host { 1.0 } else { wobble };
                    let ops = 1000u64;
                    let floor_ns = 60 + shift;
                    let mut progs = match path {
                        // 4 packets a transaction at 300 ns (+ the floor's shift), a
                        // connect4 at 1 µs.
                        CostPath::NetisoStats => vec![
                            prog("ingress", "cgroup_skb", 2 * ops * (300 + shift), 2 * ops),
                            prog("egress", "cgroup_skb", 2 * ops * (300 + shift), 2 * ops),
                            prog("connect4", "cgroup_sock_addr", 1000, 1),
                        ],
                        CostPath::NoContainerStats => vec![prog(
                            "ingress",
                            "cgroup_skb",
                            4 * ops * (floor_ns + 15),
                            4 * ops,
                        )],
                        _ => Vec::new(),
                    };
                    // The floor on the 2 ingress packets of a transaction; its time is
                    // in the measured CPU.
                    let mut cpu = (per_op * ops as f64) as u64;
                    if path.stats() {
                        progs.push(prog(floor::NAME, "cgroup_skb", 2 * ops * floor_ns, 2 * ops));
                        cpu += 2 * ops * floor_ns / 1000;
                    }
                    let win = Window {
                        secs: 1.0,
                        ops,
                        bytes: ops * 1_000_000,
                        cpu_usec: vec![cpu / 2, cpu - cpu / 2],
                        lo_packets: if path.on_lo() { 4 * ops } else { 2 },
                        other_packets: if path.on_lo() { 0 } else { 4 * ops },
                        ksoftirqd_usec: 10,
                        progs,
                    };
                    v.push(cell_from(round, wl, path, &win));
                }
            }
        }
        v
    }

    #[test]
    fn summary_of_synthetic_rounds() {
        let plan = Plan {
            rounds: 6,
            cell_ms: 100,
            pin: true,
            idle_containers: 0,
        };
        let r = summarize(&plan, cells(6), Vec::new(), Some(0), Some(0));
        assert_eq!(r.route_failures, 0);
        assert_eq!(r.stats.off_cells_timed_anyway, 0);
        let rr = r
            .workloads
            .iter()
            .find(|w| w.workload == Workload::Rr)
            .unwrap();
        let p = |k| rr.paths.iter().find(|p| p.path == k).unwrap();
        let host = p(CostPath::Host);
        assert!((host.cpu_us_per_op.mean - 10.0).abs() < 0.01);
        assert!(host.vs_host.is_none());
        let n = p(CostPath::Netiso);
        let vh = n.vs_host.unwrap();
        assert!((vh.mean - 1.05).abs() < 0.001, "{vh:?}");
        assert!(vh.lo < vh.mean && vh.mean < vh.hi);
        assert!((n.vs_bridge.unwrap().mean - 10.5 / 11.0).abs() < 0.001);
        let b = &rr.breakdown[0];
        assert_eq!(b.path, CostPath::NetisoStats);
        // Raw: 4 x 301 ns (mean) of packet programs + 1 ns of connect4 per transaction.
        assert!(
            (b.ns_per_op.mean - 1205.0).abs() < 0.01,
            "{:?}",
            b.ns_per_op
        );
        assert!((b.packets_per_op - 4.0).abs() < 1e-9);
        assert!((b.ns_per_packet.mean - 1205.0 / 4.0).abs() < 0.01);
        // 1205 ns of about 10.7 µs (the floor's own time is not the workload's).
        assert!(
            (b.share_pct.mean - 100.0 * 1205.0 / 10_700.0).abs() < 0.2,
            "{:?}",
            b.share_pct
        );
        // Net: each of the 4.001 runs a transaction less the floor's 60..62 ns.
        let net = b.ns_per_op_net.unwrap();
        assert!((net.mean - (961.0 - 0.061)).abs() < 0.01, "{net:?}");
        assert!((b.ns_per_packet_net.unwrap().mean - net.mean / 4.0).abs() < 0.01);
        // ... of the workload's CPU less the timing of those runs.
        let share = b.share_net_pct.unwrap();
        assert!(
            (share.mean - 100.0 * 961.0 / (10_700.0 - 4.0 * 61.0)).abs() < 0.2,
            "{share:?}"
        );
        let fl = b.floor.as_ref().unwrap();
        assert_eq!(fl.name, floor::NAME);
        assert!((fl.ns_per_run.unwrap().mean - 61.0).abs() < 1e-9);
        assert!((fl.runs_per_op - 2.0).abs() < 1e-9);
        assert!(fl.ns_per_run_net.is_none());
        // The floor is in no sum of netiso's programs.
        assert!(b.programs.iter().all(|p| p.name != floor::NAME));
        let ing = b.programs.iter().find(|x| x.name == "ingress").unwrap();
        assert_eq!(ing.runs, 6 * 2000);
        let raw = ing.ns_per_run.unwrap();
        assert!((raw.mean - 301.0).abs() < 1e-9);
        assert!(raw.hi - raw.lo > 1.0, "{raw:?}");
        // Paired with the floor of the same cell the shift cancels: 240 exactly.
        let over = ing.ns_per_run_net.unwrap();
        assert!(
            (over.mean - 240.0).abs() < 1e-9 && over.hi - over.lo < 1e-9,
            "{over:?}"
        );
        assert!((ing.ns_per_run_net_pooled.unwrap() - 240.0).abs() < 1e-9);
        assert!((ing.runs_per_op - 2.0).abs() < 1e-9);
        let c4 = b.programs.iter().find(|x| x.name == "connect4").unwrap();
        assert!((c4.ns_per_run_net.unwrap().mean - 939.0).abs() < 1e-9);
        // The most expensive program first.
        assert!(b.programs[0].run_time_ns >= b.programs[b.programs.len() - 1].run_time_ns);
        let free = &rr.breakdown[1];
        assert!((free.ns_per_packet.mean - 76.0).abs() < 1e-9);
        assert!((free.ns_per_packet_net.unwrap().mean - 15.0).abs() < 1e-9);
        let oh = rr.stats_overhead.unwrap();
        assert!((oh.mean - 10.7 / 10.5).abs() < 0.001);
        // Targets, net of timing: share 9% > 1% missed; 240 ns per run missed; 15 ns per
        // packet met (raw, 76, it would be missed); 1.05x host missed; below bridge met.
        let t = |what: &str, scope: &str| {
            r.targets
                .iter()
                .find(|t| t.target.contains(what) && t.scope.starts_with(scope))
                .unwrap_or_else(|| panic!("{what} {scope}"))
                .verdict
                .unwrap()
        };
        let rrn = wl_name(Workload::Rr);
        assert_eq!(t("share", rrn), Verdict::Missed);
        assert_eq!(t("per run", &format!("{rrn}: ingress")), Verdict::Missed);
        assert_eq!(t("no container", rrn), Verdict::Met);
        assert_eq!(t("times the host", rrn), Verdict::Missed);
        assert_eq!(t("below veth", rrn), Verdict::Met);
        // Only the established-flow workloads get the per-run target.
        assert!(!r
            .targets
            .iter()
            .any(|t| t.target.contains("per run") && t.scope.starts_with(wl_name(Workload::Crr))));
        assert!(r.ksoftirqd_pct.unwrap() > 0.0);
    }

    #[test]
    fn paired_differences_pair_the_rounds() {
        let m = |v: &[(usize, f64)]| v.iter().copied().collect::<BTreeMap<_, _>>();
        // Round 3 has no partner; the differences are 9, 9, 9 although both series vary.
        let a = m(&[(0, 10.0), (1, 20.0), (2, 30.0)]);
        let b = m(&[(0, 1.0), (1, 11.0), (2, 21.0), (3, 5.0)]);
        let d = paired_diff(&a, &b).unwrap();
        assert_eq!((d.mean, d.lo, d.hi, d.n), (9.0, 9.0, 9.0, 3));
        // A NaN (the floor did not run) drops that round.
        let b = m(&[(0, 1.0), (1, f64::NAN), (2, 20.0)]);
        let d = paired_diff(&a, &b).unwrap();
        assert_eq!(d.n, 2);
        assert!((d.mean - 9.5).abs() < 1e-12);
        // Same pairing as the ratios: a t-interval of the per-round values.
        let d = paired_diff(
            &m(&[(0, 3.0), (1, 5.0), (2, 7.0)]),
            &m(&[(0, 1.0), (1, 2.0), (2, 3.0)]),
        );
        assert_eq!(d, estimate(&[2.0, 3.0, 4.0]));
        assert!((paired(&a, &m(&[(0, 5.0), (1, 10.0)])).unwrap().mean - 2.0).abs() < 1e-12);
        assert_eq!(paired_diff(&a, &m(&[(0, 1.0)])), None);
    }

    #[test]
    fn net_figures_subtract_the_floor_cell_by_cell() {
        let mut win = Window {
            secs: 1.0,
            ops: 100,
            bytes: 0,
            cpu_usec: vec![600, 400],
            lo_packets: 400,
            other_packets: 0,
            ksoftirqd_usec: 0,
            progs: vec![
                prog("ingress", "cgroup_skb", 200 * 150, 200),
                prog("guard", "cgroup_skb", 200 * 62, 200),
                prog(floor::NAME, "cgroup_skb", 200 * 60, 200),
            ],
        };
        let c = cell_from(0, Workload::Rr, CostPath::NetisoStats, &win);
        assert!(c.route_ok, "{}", c.route_why);
        // The floor is the cell's, not netiso's.
        assert_eq!(c.floor.as_ref().unwrap().name, floor::NAME);
        assert_eq!(c.progs.len(), 2);
        assert_eq!(c.prog_ns(), 200 * 212);
        assert_eq!(c.prog_runs(), 400);
        assert!((c.floor_ns_per_run() - 60.0).abs() < 1e-12);
        assert!((c.timing_ns() - 400.0 * 60.0).abs() < 1e-9);
        assert!((c.prog_ns_net() - (200.0 * 212.0 - 400.0 * 60.0)).abs() < 1e-9);
        // 1 ms measured, of which the floor's 12 µs are not the workload's.
        assert!((c.workload_ns() - (1_000_000.0 - 12_000.0)).abs() < 1e-9);
        assert!((c.workload_ns_net() - (988_000.0 - 24_000.0)).abs() < 1e-9);
        // Without a floor there is no net figure, and the raw ones are unchanged.
        win.progs.pop();
        let c = cell_from(0, Workload::Rr, CostPath::NetisoStats, &win);
        assert!(c.floor.is_none() && c.prog_ns_net().is_nan());
        assert!((c.workload_ns() - 1_000_000.0).abs() < 1e-9);
        let cells: Vec<Cell> = (0..3)
            .map(|r| cell_from(r, Workload::Rr, CostPath::NetisoStats, &win))
            .collect();
        let b = breakdown(&cells, CostPath::NetisoStats, Workload::Rr).unwrap();
        assert!(b.ns_per_op_net.is_none() && b.share_net_pct.is_none() && b.floor.is_none());
        assert!(b.programs.iter().all(|p| p.ns_per_run_net.is_none()));
        assert!((b.ns_per_op.mean - 424.0).abs() < 1e-9);
    }

    #[test]
    fn route_checks_and_timed_off_cells() {
        let mut win = Window {
            secs: 1.0,
            ops: 100,
            bytes: 0,
            cpu_usec: vec![10, 10],
            lo_packets: 5,
            other_packets: 0,
            ksoftirqd_usec: 0,
            progs: vec![
                prog("egress", "cgroup_skb", 100, 1),
                prog("bind4", "cgroup_sock_addr", 0, 0),
            ],
        };
        // Too few packets on lo for 100 transactions.
        let c = cell_from(0, Workload::Rr, CostPath::Netiso, &win);
        assert!(!c.route_ok, "{}", c.route_why);
        // Programs that did not run are dropped from the cell.
        assert_eq!(c.progs.len(), 1);
        win.lo_packets = 400;
        assert!(cell_from(0, Workload::Rr, CostPath::Netiso, &win).route_ok);
        // A veth path whose packets stayed on lo.
        assert!(!cell_from(0, Workload::Rr, CostPath::VethBridge, &win).route_ok);
        // No CPU measured on one side.
        win.cpu_usec = vec![10, 0];
        assert!(!cell_from(0, Workload::Rr, CostPath::Netiso, &win).route_ok);
        // A statistics-off cell in which programs were timed is counted.
        win.cpu_usec = vec![10, 10];
        let mut v = cells(2);
        v.push(cell_from(2, Workload::Rr, CostPath::Netiso, &win));
        let r = summarize(
            &Plan {
                rounds: 2,
                cell_ms: 1,
                pin: true,
                idle_containers: 0,
            },
            v,
            Vec::new(),
            None,
            None,
        );
        assert_eq!(r.stats.off_cells_timed_anyway, 1);
    }
}
