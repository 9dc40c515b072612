//! `netiso-bench run`: the schedule (interleaved paths), the measurements and their checks.
use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::{
    cost, cost_report,
    env::{self, Ctr, PathKind, World},
    load::{ClientResult, Workload},
    registration, report, sys, tc_cost, unix_cost,
};

#[derive(Args, Debug, Clone, Serialize)]
#[expect(clippy::struct_excessive_bools, reason = "command-line flags")]
pub struct Opts {
    /// Small and fast (about a minute): one repetition, short cells, scales 1 and 20, a short
    /// cost section.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each cell (default 5, quick 1).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Length of one main-matrix cell in ms (default 2000, quick 300).
    #[arg(long)]
    pub duration_ms: Option<u64>,
    /// Length of one scale cell in ms (default 1000, quick 250).
    #[arg(long)]
    pub scale_duration_ms: Option<u64>,
    /// Container counts for all paths (default 1,100,1000; quick 1,20).
    #[arg(long, value_delimiter = ',')]
    pub scales: Option<Vec<usize>>,
    /// Extra container counts for netiso only (default 10000; quick none). 0 disables.
    #[arg(long, value_delimiter = ',')]
    pub netiso_scales: Option<Vec<usize>>,
    /// Containers that get a server in a scale group (traffic is spread over them).
    #[arg(long)]
    pub spread: Option<usize>,
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The netiso binary (default: `netiso` next to this binary).
    #[arg(long, env = "NETISO_BIN")]
    pub netiso_bin: Option<PathBuf>,
    /// Skip the iperf3/sockperf cross-check even when they are installed.
    #[arg(long)]
    pub no_crosscheck: bool,
    /// Containers registered one by one for the registration series (default 50000, quick
    /// 2000). 0 disables.
    #[arg(long)]
    pub registrations: Option<usize>,
    /// Cost section: interleaved rounds, each running every path once per workload
    /// (default 40, quick 5; at least 2).
    #[arg(long)]
    pub cost_rounds: Option<usize>,
    /// Cost section: length of one cell in ms (default 500, quick 200).
    #[arg(long)]
    pub cost_ms: Option<u64>,
    /// Run only the cost section: writes cost.json, cost_table.txt and cost_*.svg (a full
    /// run's results.json and table.txt in --out are left as they are).
    #[arg(long)]
    pub cost_only: bool,
    /// Cost section: let the scheduler place client and server instead of pinning both to
    /// one CPU per round (on a VM, cross-vCPU wake-ups then dominate and vary; see README).
    #[arg(long)]
    pub cost_unpinned: bool,
    /// Cost section: register this many idle enforcing containers first (the issue's "at
    /// 10 000 containers"; registration takes about 15 ms each).
    #[arg(long, default_value_t = 0)]
    pub cost_containers: usize,
}

struct Plan {
    quick: bool,
    reps: usize,
    dur: u64,
    scale_dur: u64,
    scales: Vec<usize>,
    netiso_scales: Vec<usize>,
    spread: usize,
    registrations: usize,
}

impl Opts {
    fn plan(&self) -> Plan {
        let q = self.quick;
        Plan {
            quick: q,
            reps: self.reps.unwrap_or(if q { 1 } else { 5 }).max(1),
            dur: self.duration_ms.unwrap_or(if q { 300 } else { 2000 }),
            scale_dur: self.scale_duration_ms.unwrap_or(if q { 250 } else { 1000 }),
            scales: self
                .scales
                .clone()
                .unwrap_or(if q { vec![1, 20] } else { vec![1, 100, 1000] }),
            netiso_scales: self
                .netiso_scales
                .clone()
                .unwrap_or(if q { vec![] } else { vec![10000] })
                .into_iter()
                .filter(|&n| n > 0)
                .collect(),
            spread: self.spread.unwrap_or(if q { 4 } else { 16 }).max(1),
            registrations: self.registrations.unwrap_or(if q { 2000 } else { 50_000 }),
        }
    }
}

/// Which way a cell's packets went, from the host namespace's interface counters.
#[derive(Clone, Debug, Serialize)]
pub struct Route {
    /// Packets received on `lo` of the host namespace.
    pub lo_packets: u64,
    /// rx+tx packets on the host-side veths of the targeted containers.
    pub target_veth_packets: u64,
    /// rx+tx packets on every other interface of the path's host namespace (other veths, the bridge).
    pub other_packets: u64,
    pub ok: bool,
    pub why: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub section: &'static str,
    pub scale: usize,
    pub path: PathKind,
    pub workload: Workload,
    pub flows: usize,
    pub rep: usize,
    pub unit: &'static str,
    #[serde(flatten)]
    pub result: ClientResult,
    pub route: Route,
}

#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    pub path: PathKind,
    pub scale: usize,
    /// Wall time to create each container (cgroup + network plumbing or registration), ms.
    pub per_container_ms: Vec<f64>,
    pub total_s: f64,
    /// Kernel memory delta (see `memory_metric`) over the whole group divided by its size, KiB.
    pub kernel_kib_per_container: f64,
    /// netiso only: growth of the agent's BPF map memlock over the group, KiB per container.
    pub bpf_map_kib_per_container: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cross {
    pub tool: &'static str,
    pub path: PathKind,
    pub metric: &'static str,
    pub value: f64,
    pub unit: &'static str,
}

#[derive(Serialize)]
pub struct Output {
    pub meta: serde_json::Value,
    pub samples: Vec<Sample>,
    pub setup: Vec<Setup>,
    pub crosscheck: Vec<Cross>,
    pub route_failures: usize,
}

const MAIN_WORKLOADS: [(Workload, usize); 5] = [
    (Workload::Stream, 1),
    (Workload::Stream, 4),
    (Workload::Rr, 1),
    (Workload::Crr, 1),
    (Workload::UdpRr, 1),
];
const SCALE_WORKLOADS: [(Workload, usize); 4] = [
    (Workload::Stream, 4),
    (Workload::Rr, 1),
    (Workload::Crr, 1),
    (Workload::UdpRr, 1),
];

pub fn run(o: Opts) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the benchmark creates namespaces, cgroups and attaches eBPF programs: run it as root"
        );
    }
    let netiso_bin = match &o.netiso_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("netiso"),
    };
    if !netiso_bin.exists() {
        bail!(
            "{} not found: build netiso-user or pass --netiso-bin / NETISO_BIN",
            netiso_bin.display()
        );
    }
    ctrlc::set_handler(env::interrupted)?;
    let plan = o.plan();
    fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let started = Instant::now();
    let world = World::new(netiso_bin)?;
    if o.cost_only {
        let cost = cost::measure(&world, &cost::Plan::new(&o));
        drop(world);
        return cost_report::write_only(&cost?, &o.out, started);
    }
    let r = measure(&o, &plan, &world);
    let cost = r
        .as_ref()
        .ok()
        .map(|_| cost::measure(&world, &cost::Plan::new(&o)));
    let tc = cost.as_ref().and_then(|c| c.as_ref().ok()).map(|_| {
        let (extra, repeat, samples) = if plan.quick {
            (10, 20_000, 3)
        } else {
            (1000, 200_000, 7)
        };
        tc_cost::measure(&world, extra, repeat, samples)
    });
    let unix = tc.as_ref().and_then(|t| t.as_ref().ok()).map(|_| {
        let (rounds, connects) = if plan.quick { (3, 2_000) } else { (15, 20_000) };
        unix_cost::measure(&world, rounds, connects)
    });
    // Last, as it leaves tens of thousands of containers registered.
    let registration = match (&r, plan.registrations) {
        (Ok(_), n) if n > 0 => {
            let pb = progress(0);
            let reg = registration::measure(&world, n, &pb);
            pb.finish_and_clear();
            Some(reg)
        }
        _ => None,
    };
    drop(world);
    let out = r?;
    let cost = cost.expect("measured after the matrix")?;
    let tc = tc.expect("measured after the cost section")?;
    let tc_table = tc_cost::table(&tc);
    fs::write(o.out.join("tc_cost.txt"), &tc_table)?;
    fs::write(
        o.out.join("tc_cost.json"),
        serde_json::to_string_pretty(&tc)?,
    )?;
    let unix = unix.expect("measured after the TC programs")?;
    let unix_table = unix_cost::table(&unix);
    fs::write(o.out.join("unix_cost.txt"), &unix_table)?;
    fs::write(
        o.out.join("unix_cost.json"),
        serde_json::to_string_pretty(&unix)?,
    )?;
    let registration = registration.transpose()?;
    let reg_table = registration.as_ref().map(registration::table);
    if let (Some(r), Some(t)) = (&registration, &reg_table) {
        fs::write(o.out.join("registration.txt"), t)?;
        fs::write(
            o.out.join("registration.json"),
            serde_json::to_string_pretty(r)?,
        )?;
    }
    // The cost section goes to cost.json and, the same value, under "cost" in results.json.
    let cost_json = serde_json::to_value(&cost)?;
    fs::write(
        o.out.join("cost.json"),
        serde_json::to_string_pretty(&cost_json)?,
    )?;
    let json = o.out.join("results.json");
    let mut results = serde_json::to_value(&out)?;
    results["cost"] = cost_json;
    fs::write(&json, serde_json::to_string_pretty(&results)?)?;
    let cost_table = cost_report::table(&cost);
    fs::write(o.out.join("cost_table.txt"), &cost_table)?;
    let table = report::table(&out) + &cost_table;
    fs::write(o.out.join("table.txt"), &table)?;
    let mut charts = report::charts(&out, &o.out)?;
    charts.extend(cost_report::charts(&cost, &o.out)?);
    println!("{table}");
    println!("{tc_table}");
    println!("{unix_table}");
    if let Some(t) = &reg_table {
        println!("{t}");
    }
    println!(
        "netiso-bench: done in {:.0} s; {} samples, {} route check failures\n  {}\n  {}\n  {}",
        started.elapsed().as_secs_f64(),
        out.samples.len(),
        out.route_failures,
        json.display(),
        o.out.join("table.txt").display(),
        charts
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    if cost.route_failures > 0 {
        bail!(
            "{} cost-section cells did not take their expected route (see route_why in {})",
            cost.route_failures,
            o.out.join("cost.json").display()
        );
    }
    if out.route_failures > 0 {
        bail!(
            "{} cells did not take their expected route (see route.why in {})",
            out.route_failures,
            json.display()
        );
    }
    Ok(())
}

pub(crate) fn progress(total: u64) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} cells, eta {eta} {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb
}

fn measure(o: &Opts, plan: &Plan, w: &World) -> Result<Output> {
    let cells = plan.reps * MAIN_WORKLOADS.len() * 4
        + plan.scales.len() * plan.reps * SCALE_WORKLOADS.len() * 4
        + plan.netiso_scales.len() * plan.reps * SCALE_WORKLOADS.len() * 2;
    let pb = progress(cells as u64);
    let mut samples = Vec::new();
    let mut setup = Vec::new();

    // Main matrix: one container per path, IPv4, every workload, interleaved A B C D A B C D.
    pb.set_message("main: creating one container per path");
    let mut main = Vec::new();
    for k in PathKind::ALL {
        let mut c = w.create(k, 0, 0)?;
        w.start_server(&mut c)?;
        main.push(c);
    }
    for rep in 0..plan.reps {
        for (wl, flows) in MAIN_WORKLOADS {
            for c in &main {
                pb.set_message(format!("main {} {:?}x{flows}", c.kind.label(), wl));
                let s = cell(
                    w,
                    "main",
                    1,
                    rep,
                    wl,
                    flows,
                    std::slice::from_ref(c),
                    plan.dur,
                )?;
                samples.push(s);
                pb.inc(1);
            }
        }
    }
    let mut crosscheck = Vec::new();
    if !o.no_crosscheck && have("iperf3") && have("sockperf") {
        pb.set_message("cross-check with iperf3 and sockperf");
        crosscheck = pb.suspend(|| crosscheck_tools(w, &main, plan.dur));
    } else if !o.no_crosscheck {
        pb.println("netiso-bench: iperf3/sockperf not installed, skipping the cross-check");
    }
    w.destroy(main);

    // Scale groups.
    let groups: Vec<(usize, Vec<PathKind>)> = plan
        .scales
        .iter()
        .map(|&n| {
            (
                n,
                vec![
                    PathKind::Host,
                    PathKind::Netiso,
                    PathKind::VethBridge,
                    PathKind::VethRouted,
                ],
            )
        })
        .chain(
            plan.netiso_scales
                .iter()
                .map(|&n| (n, vec![PathKind::Host, PathKind::Netiso])),
        )
        .collect();
    for (gi, (n, kinds)) in groups.into_iter().enumerate() {
        let g = gi + 1;
        let mut all: HashMap<PathKind, Vec<Ctr>> = HashMap::new();
        let r = (|| -> Result<()> {
            for &k in &kinds {
                if k == PathKind::Host {
                    continue;
                }
                settle(Duration::from_secs(if plan.quick { 3 } else { 30 }));
                let mem0 = sys::kernel_mem_kib();
                let map0 = w.agent_map_kib();
                let t0 = Instant::now();
                let mut times = Vec::with_capacity(n);
                let v = all.entry(k).or_default();
                for i in 0..n {
                    if i % 50 == 0 {
                        pb.set_message(format!(
                            "scale {n}: creating {} containers ({i}/{n})",
                            k.label()
                        ));
                    }
                    let t = Instant::now();
                    v.push(w.create(k, g, i)?);
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                let total_s = t0.elapsed().as_secs_f64();
                let mem1 = sys::kernel_mem_kib();
                let map1 = w.agent_map_kib();
                setup.push(Setup {
                    path: k,
                    scale: n,
                    per_container_ms: times,
                    total_s,
                    kernel_kib_per_container: (mem1 as f64 - mem0 as f64) / n as f64,
                    bpf_map_kib_per_container: (k == PathKind::Netiso)
                        .then(|| (map1 as f64 - map0 as f64) / n as f64),
                });
            }
            // Servers in `spread` containers spaced evenly over each group.
            let k_srv = plan.spread.min(n);
            pb.set_message(format!("scale {n}: starting servers"));
            for &k in &kinds {
                if k == PathKind::Host {
                    let v = all.entry(k).or_default();
                    for i in 0..k_srv {
                        v.push(w.create(k, g, i * n / k_srv)?);
                    }
                    for c in v.iter_mut() {
                        w.start_server(c)?;
                    }
                } else {
                    let v = all.get_mut(&k).unwrap();
                    for j in 0..k_srv {
                        w.start_server(&mut v[j * n / k_srv])?;
                    }
                }
            }
            for rep in 0..plan.reps {
                for (wl, flows) in SCALE_WORKLOADS {
                    for &k in &kinds {
                        pb.set_message(format!("scale {n} {} {:?}x{flows}", k.label(), wl));
                        let targets: Vec<&Ctr> =
                            all[&k].iter().filter(|c| c.server.is_some()).collect();
                        let targets: Vec<Ctr> = targets.iter().map(|c| shallow(c)).collect();
                        samples.push(cell(
                            w,
                            "scale",
                            n,
                            rep,
                            wl,
                            flows,
                            &targets,
                            plan.scale_dur,
                        )?);
                        pb.inc(1);
                    }
                }
            }
            Ok(())
        })();
        pb.set_message(format!("scale {n}: removing containers"));
        for (_, v) in all.drain() {
            w.destroy(v);
        }
        r?;
    }
    pb.finish_and_clear();
    let route_failures = samples.iter().filter(|s| !s.route.ok).count();
    let meta = serde_json::json!({
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "opts": o,
        "reps": plan.reps,
        "duration_ms": plan.dur,
        "scale_duration_ms": plan.scale_dur,
        "scales": plan.scales,
        "netiso_scales": plan.netiso_scales,
        "spread": plan.spread,
        "memory_metric": "delta of /proc/meminfo Slab+Percpu+KernelStack+PageTables+VmallocUsed over creating a group, divided by its size (machine-wide: other activity adds noise)",
        "namespaces": "host and netiso: client and servers share one namespace (traffic over lo); veth+bridge and veth routed: each has its own host namespace holding the client and the host ends of the veths, each server in its own namespace",
        "addresses": "main matrix IPv4 (host 203.0.113.10, netiso 203.0.113.20, bridge 192.0.2.0/24, routed 198.51.100.0/24); scale groups IPv6 in 2001:db8::/32",
        "setup_time": "cgroup mkdir plus: netiso = POST /v1/containers to the agent over its Unix socket (address pre-routed to lo); veth = ip netns add + 2 ip -batch calls (veth pair, bridge/route, address, default route)",
    });
    Ok(Output {
        meta,
        samples,
        setup,
        crosscheck,
        route_failures,
    })
}

/// A copy of the fields a cell needs (no server handle).
fn shallow(c: &Ctr) -> Ctr {
    Ctr {
        kind: c.kind,
        name: c.name.clone(),
        cgroup: c.cgroup.clone(),
        netns: c.netns.clone(),
        addr: c.addr,
        ifname: c.ifname.clone(),
        server: None,
    }
}

/// Waits (up to `max`) until kernel memory stops moving, so that deferred frees of an earlier
/// group do not count against the next one.
fn settle(max: Duration) {
    let deadline = Instant::now() + max;
    let mut last = sys::kernel_mem_kib();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        let now = sys::kernel_mem_kib();
        if now.abs_diff(last) < 256 {
            return;
        }
        last = now;
    }
}

fn counters(ns: &str) -> Result<HashMap<String, (u64, u64)>> {
    Ok(sys::link_counters(ns)?
        .into_iter()
        .map(|(n, rx, tx)| (n, (rx, tx)))
        .collect())
}

#[allow(clippy::too_many_arguments)]
fn cell(
    w: &World,
    section: &'static str,
    scale: usize,
    rep: usize,
    wl: Workload,
    flows: usize,
    targets: &[Ctr],
    dur: u64,
) -> Result<Sample> {
    let kind = targets[0].kind;
    let addrs: Vec<String> = targets.iter().map(|c| c.addr.to_string()).collect();
    let ns = w.client_ns(kind);
    let before = counters(ns)?;
    let out = Command::new(&w.me)
        .arg("client")
        .arg("--netns")
        .arg(World::ns_path(ns))
        .arg("--cgroup")
        .arg(&w.client_cgroup)
        .args([
            "--workload",
            clap::ValueEnum::to_possible_value(&wl).unwrap().get_name(),
        ])
        .args(["--targets", &addrs.join(",")])
        .args([
            "--flows",
            &flows.to_string(),
            "--duration-ms",
            &dur.to_string(),
        ])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "client {wl:?} on {} (targets {}) failed: {}",
            kind.label(),
            addrs.join(","),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let after = counters(ns)?;
    let result: ClientResult =
        serde_json::from_slice(&out.stdout).context("parsing client output")?;
    let delta = |name: &str| -> u64 {
        let a = after.get(name).copied().unwrap_or_default();
        let b = before.get(name).copied().unwrap_or_default();
        a.0.saturating_sub(b.0) + a.1.saturating_sub(b.1)
    };
    let lo_packets = {
        let a = after.get("lo").map(|x| x.0).unwrap_or_default();
        let b = before.get("lo").map(|x| x.0).unwrap_or_default();
        a.saturating_sub(b)
    };
    let target_ifs: Vec<&str> = targets.iter().filter_map(|c| c.ifname.as_deref()).collect();
    let target_veth_packets: u64 = target_ifs.iter().map(|n| delta(n)).sum();
    let other_packets: u64 = after
        .keys()
        .filter(|n| *n != "lo" && !target_ifs.contains(&n.as_str()))
        .map(|n| delta(n))
        .sum();
    // Each transaction is at least one packet each way; a stream is many. The other side's
    // interfaces may carry a little IPv6 control traffic (MLD, ND after link-up), hence the
    // slack of 50 packets plus 10 %: a path that really crossed them shows at least `expect`.
    let expect = if wl == Workload::Stream {
        100
    } else {
        result.ops
    };
    let (ok, why) = if kind.is_veth() {
        if target_veth_packets < expect {
            (false, format!("only {target_veth_packets} packets crossed the target veths, expected >= {expect}"))
        } else if lo_packets > 50 + target_veth_packets / 10 {
            (false, format!("{lo_packets} packets on lo for a veth path"))
        } else {
            (
                true,
                format!("{target_veth_packets} packets on the target veths, {lo_packets} on lo"),
            )
        }
    } else if lo_packets < expect {
        (
            false,
            format!("only {lo_packets} packets on lo, expected >= {expect}"),
        )
    } else if other_packets + target_veth_packets > 50 + lo_packets / 10 {
        (
            false,
            format!("{other_packets} packets crossed veth/bridge interfaces on a lo path"),
        )
    } else {
        (
            true,
            format!("{lo_packets} packets on lo, {other_packets} on veth/bridge"),
        )
    };
    let ok = ok && result.value.is_finite() && result.value > 0.0;
    Ok(Sample {
        section,
        scale,
        path: kind,
        workload: wl,
        flows,
        rep,
        unit: wl.unit(),
        result,
        route: Route {
            lo_packets,
            target_veth_packets,
            other_packets,
            ok,
            why,
        },
    })
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs `cmd` inside the container's namespace and cgroup via `netiso-bench exec`.
fn exec_in(w: &World, netns: &str, cgroup: &std::path::Path, cmd: &[&str]) -> Command {
    let mut c = Command::new(&w.me);
    c.arg("exec")
        .arg("--netns")
        .arg(World::ns_path(netns))
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--")
        .args(cmd);
    c
}

/// One row per path measured with iperf3 (TCP stream) and sockperf (TCP ping-pong).
fn crosscheck_tools(w: &World, main: &[Ctr], dur: u64) -> Vec<Cross> {
    let mut out = Vec::new();
    let secs = (dur / 1000).max(1).to_string();
    for c in main {
        let ns = c.netns.clone().unwrap_or_else(|| w.hostns.clone());
        let addr = c.addr.to_string();
        let r = (|| -> Result<()> {
            let mut srv = exec_in(
                w,
                &ns,
                &c.cgroup,
                &["iperf3", "-s", "-B", &addr, "-p", "5301"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
            let res = retry_json(|| {
                exec_in(
                    w,
                    w.client_ns(c.kind),
                    &w.client_cgroup,
                    &["iperf3", "-c", &addr, "-p", "5301", "-t", &secs, "-J"],
                )
                .stderr(Stdio::null())
                .output()
            });
            let _ = srv.kill();
            let _ = srv.wait();
            let v = res?;
            let bps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 JSON")?;
            out.push(Cross {
                tool: "iperf3",
                path: c.kind,
                metric: "tcp stream",
                value: bps / 1e9,
                unit: "Gbit/s",
            });
            let mut srv = exec_in(
                w,
                &ns,
                &c.cgroup,
                &["sockperf", "sr", "--tcp", "-i", &addr, "-p", "5302"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
            let mut text = String::new();
            for _ in 0..50 {
                let o = exec_in(
                    w,
                    w.client_ns(c.kind),
                    &w.client_cgroup,
                    &[
                        "sockperf", "pp", "--tcp", "-i", &addr, "-p", "5302", "-t", &secs,
                    ],
                )
                .stderr(Stdio::null())
                .output()?;
                text = String::from_utf8_lossy(&o.stdout).into_owned();
                if o.status.success() && text.contains("avg-latency") {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = srv.kill();
            let _ = srv.wait();
            for (key, metric) in [
                ("percentile 50.000", "tcp ping-pong p50 (one-way)"),
                ("percentile 99.000", "tcp ping-pong p99 (one-way)"),
            ] {
                if let Some(v) = text
                    .lines()
                    .find(|l| l.contains(key))
                    .and_then(|l| l.rsplit('=').next())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                {
                    out.push(Cross {
                        tool: "sockperf",
                        path: c.kind,
                        metric,
                        value: v,
                        unit: "us",
                    });
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!(
                "netiso-bench: cross-check on {} failed: {e:#}",
                c.kind.label()
            );
        }
    }
    out
}

/// Retries a JSON-printing client until its server answers (up to ~5 s).
fn retry_json(
    mut f: impl FnMut() -> std::io::Result<std::process::Output>,
) -> Result<serde_json::Value> {
    let mut last = String::new();
    for _ in 0..50 {
        let o = f()?;
        // iperf3 may exit 0 with an "error" and no result when it raced its server's start.
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
            if o.status.success() && v["end"]["sum_received"]["bits_per_second"].is_number() {
                return Ok(v);
            }
            v["error"]
                .as_str()
                .unwrap_or("no result")
                .clone_into(&mut last);
        } else {
            last = String::from_utf8_lossy(&o.stdout)
                .chars()
                .take(300)
                .collect();
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("tool failed: {last}")
}
