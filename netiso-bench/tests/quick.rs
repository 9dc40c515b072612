//! Smoke test: `netiso-bench run --quick` end to end, as a subprocess.
//!
//! The bench builds its own world (a "host" network namespace for the client, one namespace per
//! veth container, a cgroup subtree with the agent attached at its `netiso` child, pins under
//! /sys/fs/bpf/nbench-PID) and removes it on exit and on SIGINT. This test checks that the
//! figures are sane, that each path took its route (interface counters: the veth paths crossed
//! their veths, netiso and host did not) and that nothing was left behind.
use std::{
    fs,
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The bench process; interrupted (it then cleans up) and reaped on drop.
struct Bench(Option<Child>);

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if matches!(c.try_wait(), Ok(None)) {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                let deadline = Instant::now() + Duration::from_secs(30);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// A temporary output directory, removed on drop.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn cgroup2_mount() -> PathBuf {
    netiso_testkit::cgroup2_mount().expect("cgroup v2 mount")
}

/// `kernel.bpf_stats_enabled` now.
fn bpf_stats_sysctl() -> String {
    fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A finished bench run.
struct Run {
    out: TmpDir,
    /// Every value of `kernel.bpf_stats_enabled` seen before, during (every 50 ms) and after
    /// the run.
    sysctl_seen: Vec<String>,
}

/// Runs `netiso-bench run <args> --out DIR` to its end and checks it succeeded.
fn run_bench(name: &str, args: &[&str]) -> Run {
    let out =
        TmpDir(std::env::temp_dir().join(format!("netiso-bench-{name}-{}", std::process::id())));
    let mut sysctl_seen = vec![bpf_stats_sysctl()];
    let child = Command::new(env!("CARGO_BIN_EXE_netiso-bench"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(&out.0)
        .arg("--netiso-bin")
        .arg(netiso_testkit::netiso_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting netiso-bench");
    let pid = child.id();
    let mut bench = Bench(Some(child));
    // Collect output in the background so a full pipe never blocks the bench.
    let c = bench.0.as_mut().unwrap();
    let mut so = c.stdout.take().unwrap();
    let mut se = c.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    // Generous for a loaded 2-core machine and a debug build; a normal run takes ~50 s.
    let deadline = Instant::now() + Duration::from_mins(5);
    let status = loop {
        if let Some(st) = bench.0.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "netiso-bench {args:?} did not finish within 300 s"
        );
        let v = bpf_stats_sysctl();
        if sysctl_seen.last() != Some(&v) {
            sysctl_seen.push(v);
        }
        thread::sleep(Duration::from_millis(50));
    };
    drop(bench);
    let v = bpf_stats_sysctl();
    if sysctl_seen.last() != Some(&v) {
        sysctl_seen.push(v);
    }
    let stdout = t_out.join().unwrap();
    let stderr = t_err.join().unwrap();
    assert!(
        status.success(),
        "netiso-bench {args:?} failed ({status}):\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");

    // Nothing left behind: namespaces, cgroups and pins carry nbench-PID.
    let tag = format!("nbench-{pid}");
    let left: Vec<String> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .chain(fs::read_dir(cgroup2_mount()).into_iter().flatten())
        .chain(fs::read_dir("/sys/fs/bpf").into_iter().flatten())
        .flatten()
        .map(|e| e.path().display().to_string())
        .filter(|p| p.contains(&tag))
        .collect();
    assert!(left.is_empty(), "the bench left {left:?} behind");
    Run { out, sysctl_seen }
}

fn quick_bench_is_sane_and_takes_the_right_routes() {
    let run = run_bench("quick", &["--quick", "--no-crosscheck"]);
    let out = &run.out;

    let v: Value =
        serde_json::from_str(&fs::read_to_string(out.0.join("results.json")).unwrap()).unwrap();
    let samples = v["samples"].as_array().unwrap();
    assert!(!samples.is_empty());
    for s in samples {
        let val = s["value"].as_f64().unwrap_or(f64::NAN);
        assert!(val.is_finite() && val > 0.0, "bad figure in {s}");
        for k in ["p50_us", "p99_us"] {
            if let Some(x) = s[k].as_f64() {
                assert!(x.is_finite() && x > 0.0, "bad {k} in {s}");
            }
        }
        if s["workload"] != "stream" {
            assert!(s["p50_us"].as_f64().is_some(), "no latency in {s}");
        }
        let r = &s["route"];
        assert_eq!(r["ok"], true, "route check failed: {s}");
        let path = s["path"].as_str().unwrap();
        let lo = r["lo_packets"].as_u64().unwrap();
        let veth = r["target_veth_packets"].as_u64().unwrap();
        let other = r["other_packets"].as_u64().unwrap();
        match path {
            "veth_bridge" | "veth_routed" => {
                assert!(veth > 10 * lo.max(1), "{path} did not cross its veth: {s}");
            }
            "host" | "netiso" => assert!(lo > 10 * (veth + other).max(1), "{path} left lo: {s}"),
            p => panic!("unknown path {p}"),
        }
    }
    // Every path measured every main workload; the scale section and setup figures exist.
    for path in ["host", "netiso", "veth_bridge", "veth_routed"] {
        for (wl, flows) in [
            ("stream", 1),
            ("stream", 4),
            ("rr", 1),
            ("crr", 1),
            ("udp_rr", 1),
        ] {
            assert!(
                samples.iter().any(|s| s["section"] == "main"
                    && s["path"] == path
                    && s["workload"] == wl
                    && s["flows"] == flows),
                "no main sample for {path} {wl} x{flows}"
            );
        }
        assert!(
            samples
                .iter()
                .any(|s| s["section"] == "scale" && s["path"] == path),
            "no scale sample for {path}"
        );
    }
    for s in v["setup"].as_array().unwrap() {
        let ms = s["per_container_ms"].as_array().unwrap();
        assert!(
            !ms.is_empty()
                && ms
                    .iter()
                    .all(|x| x.as_f64().is_some_and(|x| x.is_finite() && x > 0.0)),
            "{s}"
        );
        assert!(
            s["kernel_kib_per_container"]
                .as_f64()
                .is_some_and(f64::is_finite),
            "{s}"
        );
    }
    for chart in [
        "throughput.svg",
        "latency.svg",
        "rates.svg",
        "scale_setup.svg",
        "scale_rr.svg",
    ] {
        let svg = fs::read_to_string(out.0.join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart} is not an SVG"
        );
    }
    assert_eq!(v["route_failures"], 0);
    // The registration series: every registration timed, and the report compares them.
    let reg: Value =
        serde_json::from_str(&fs::read_to_string(out.0.join("registration.json")).unwrap())
            .unwrap();
    let ms = reg["per_container_ms"].as_array().unwrap();
    assert_eq!(ms.len(), 2000, "registrations timed");
    assert!(ms
        .iter()
        .all(|x| x.as_f64().is_some_and(|x| x.is_finite() && x > 0.0)));
    assert!(reg["batch_ms"].as_f64().is_some_and(|x| x > 0.0), "{reg}");
    let text = fs::read_to_string(out.0.join("registration.txt")).unwrap();
    assert!(
        text.contains("ratio") && text.contains("one batch of 2000"),
        "{text}"
    );

    // The cost section: in results.json and, the same, in cost.json.
    let cost: Value =
        serde_json::from_str(&fs::read_to_string(out.0.join("cost.json")).unwrap()).unwrap();
    assert_eq!(
        v["cost"], cost,
        "results.json's cost differs from cost.json"
    );
    let table = fs::read_to_string(out.0.join("table.txt")).unwrap();
    let cost_table = fs::read_to_string(out.0.join("cost_table.txt")).unwrap();
    assert!(
        table.ends_with(&cost_table),
        "table.txt does not end with the cost section"
    );
    check_cost(&out.0, &cost, &run.sysctl_seen, 5);

    // The abstract-unix program: runs once per connect where attached, never elsewhere.
    let unix: Value =
        serde_json::from_str(&fs::read_to_string(out.0.join("unix_cost.json")).unwrap()).unwrap();
    let cases = unix["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5, "{unix}");
    for (i, c) in cases.iter().enumerate() {
        let runs = c["runs_per_connect"].as_f64().unwrap();
        let want = if i < 2 { 0.0 } else { 1.0 };
        assert!((runs - want).abs() < 1e-9, "runs per connect: {c}");
        let cpu = c["cpu_ns"][0].as_f64().unwrap();
        assert!(cpu.is_finite() && cpu > 0.0, "{c}");
        assert_eq!(c["prog_ns_per_run"].is_null(), i < 2, "{c}");
    }
    assert_eq!(cases[3]["refused"], true);
    let text = fs::read_to_string(out.0.join("unix_cost.txt")).unwrap();
    assert!(text.contains("connect_unix"), "{text}");
}

/// `--cost-only` measures the cost section alone, with its options.
fn cost_only_run_writes_the_cost_section() {
    let run = run_bench(
        "cost",
        &[
            "--cost-only",
            "--cost-rounds",
            "2",
            "--cost-ms",
            "100",
            "--cost-containers",
            "20",
        ],
    );
    let cost: Value =
        serde_json::from_str(&fs::read_to_string(run.out.0.join("cost.json")).unwrap()).unwrap();
    assert_eq!(cost["cell_ms"], 100);
    // The agent had the 20 idle containers and the section's own two.
    assert_eq!(cost["idle_containers"], 20);
    assert_eq!(cost["registered_containers"], 22);
    check_cost(&run.out.0, &cost, &run.sysctl_seen, 2);
    // Only the cost section ran.
    assert!(!run.out.0.join("results.json").exists());
    assert!(!run.out.0.join("table.txt").exists());
    assert!(!run.out.0.join("throughput.svg").exists());
}

/// An interval: finite, and it contains its point estimate.
fn est(e: &Value, what: &str) -> (f64, f64, f64) {
    let (m, lo, hi) = (
        e["mean"].as_f64().unwrap_or(f64::NAN),
        e["lo"].as_f64().unwrap_or(f64::NAN),
        e["hi"].as_f64().unwrap_or(f64::NAN),
    );
    assert!(
        m.is_finite() && lo.is_finite() && hi.is_finite() && lo <= m && m <= hi,
        "{what}: bad interval {e}"
    );
    (m, lo, hi)
}

const COST_PATHS: [&str; 6] = [
    "host",
    "netiso",
    "veth_bridge",
    "veth_routed",
    "netiso_stats",
    "no_container_stats",
];
const COST_WORKLOADS: [&str; 4] = ["stream", "rr", "crr", "udp_rr"];

/// The cost section is present and sane.
fn check_cost(dir: &std::path::Path, c: &Value, sysctl_seen: &[String], rounds: usize) {
    let table = fs::read_to_string(dir.join("cost_table.txt")).unwrap();
    for want in [
        "Cost: netiso's CPU",
        "Targets of issue 11",
        "timing the programs costs",
        "net of timing",
        "timing floor (netiso, the bench's no-op program)",
        "ns/run over the floor",
    ] {
        assert!(table.contains(want), "no {want:?} in table.txt");
    }
    for chart in ["cost_share.svg", "cost_cpu.svg"] {
        let svg = fs::read_to_string(dir.join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart} is not an SVG"
        );
    }
    assert_eq!(c["rounds"], rounds);
    assert!(
        !c["attached"].as_array().unwrap().is_empty(),
        "no attached programs reported"
    );
    assert_eq!(c["route_failures"], 0);

    // bpf_stats: switched on by a descriptor, never through the sysctl. When nothing else
    // wrote the sysctl during the run (another bench on a shared machine may), the value is
    // the same before, during and after, and so are the bench's own readings.
    assert_eq!(c["stats"]["mechanism"], "BPF_ENABLE_STATS");
    if let [only] = sysctl_seen {
        let v: u64 = only.parse().unwrap();
        assert_eq!(c["stats"]["sysctl_before"], v, "{sysctl_seen:?}");
        assert_eq!(c["stats"]["sysctl_after"], v, "{sysctl_seen:?}");
    } else {
        eprintln!(
            "note: kernel.bpf_stats_enabled changed during the run ({sysctl_seen:?}): another \
             process writes it; the bench only holds a BPF_ENABLE_STATS descriptor"
        );
    }

    let cells = c["cells"].as_array().unwrap();
    assert_eq!(
        cells.len(),
        rounds * 6 * 4,
        "one cell per round, path and workload"
    );
    for cell in cells {
        let path = cell["path"].as_str().unwrap();
        assert!(COST_PATHS.contains(&path), "{cell}");
        assert!(
            COST_WORKLOADS.contains(&cell["workload"].as_str().unwrap()),
            "{cell}"
        );
        assert_eq!(cell["route_ok"], true, "{cell}");
        for k in ["ops", "secs"] {
            let x = cell[k].as_f64().unwrap_or(f64::NAN);
            assert!(x.is_finite() && x > 0.0, "{k} in {cell}");
        }
        for k in ["client_usec", "server_usec"] {
            assert!(cell[k].as_u64().unwrap_or(0) > 0, "{k} in {cell}");
        }
        assert_eq!(cell["stats_on"], path.ends_with("_stats"), "{cell}");
        let progs = cell["progs"].as_array().unwrap();
        // The timing floor ran, and was timed, on every timed cell and on no other; it is
        // never listed among netiso's programs.
        let floor = &cell["floor"];
        if path.ends_with("_stats") {
            assert_eq!(floor["name"], "timing-floor", "{cell}");
            assert!(
                floor["run_cnt"].as_u64().unwrap() > 0
                    && floor["run_time_ns"].as_u64().unwrap() > 0,
                "the floor did not run: {cell}"
            );
        } else {
            assert!(floor.is_null(), "the floor ran in an untimed cell: {cell}");
        }
        assert!(
            progs.iter().all(|p| p["name"] != "timing-floor"),
            "the floor counted as netiso's: {cell}"
        );
        match path {
            // The baselines: no netiso program may run for them.
            "host" | "veth_bridge" | "veth_routed" => {
                assert!(progs.is_empty(), "netiso programs ran on {path}: {cell}");
            }
            // Timed by this bench: whatever ran was counted and timed.
            "netiso_stats" | "no_container_stats" => {
                for p in progs {
                    assert!(
                        p["run_cnt"].as_u64().unwrap() > 0
                            && p["run_time_ns"].as_u64().unwrap() > 0,
                        "{p} in {cell}"
                    );
                }
            }
            _ => {}
        }
        // A container's connections are always seen by some program.
        if path == "netiso_stats" && cell["workload"] == "crr" {
            assert!(
                !progs.is_empty(),
                "no netiso program ran for containers: {cell}"
            );
        }
    }

    let wls = c["workloads"].as_array().unwrap();
    assert_eq!(wls.len(), 4);
    for w in wls {
        let name = w["workload"].as_str().unwrap();
        let paths = w["paths"].as_array().unwrap();
        assert_eq!(paths.len(), 6, "{name}");
        for p in paths {
            let what = format!("{name} {}", p["path"]);
            let (m, _, _) = est(&p["cpu_us_per_op"], &what);
            assert!(m > 0.0, "{what}");
            for (k, base) in [("vs_host", "host"), ("vs_bridge", "veth_bridge")] {
                if p["path"] == base {
                    assert!(p[k].is_null(), "{what} {k}");
                } else {
                    let (m, _, _) = est(&p[k], &format!("{what} {k}"));
                    assert!(m > 0.0, "{what} {k}");
                }
            }
        }
        est(&w["stats_overhead"], &format!("{name} stats overhead"));
        let rows = w["breakdown"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{name}: netiso and no-container rows");
        for b in rows {
            let what = format!("{name} {}", b["path"]);
            let (share, _, _) = est(&b["share_pct"], &what);
            assert!((0.0..=100.0).contains(&share), "{what}: share {share}");
            let (ns, _, _) = est(&b["ns_per_op"], &what);
            assert!(ns >= 0.0, "{what}");
            est(&b["ns_per_packet"], &what);
            assert!(b["packets_per_op"].as_f64().unwrap() > 0.0, "{what}");
            for p in b["programs"].as_array().unwrap() {
                assert!(p["runs"].as_u64().unwrap() > 0, "{what}: {p}");
                let pooled = p["ns_per_run_pooled"].as_f64().unwrap();
                assert!(pooled.is_finite() && pooled > 0.0, "{what}: {p}");
                if !p["ns_per_run"].is_null() {
                    est(&p["ns_per_run"], &format!("{what} {}", p["name"]));
                }
            }
        }
        for b in rows {
            check_net(name, b, cells);
        }
        // Containers' connections cost netiso something.
        if name == "crr" {
            assert!(
                rows[0]["ns_per_op"]["mean"].as_f64().unwrap() > 0.0,
                "{name}: netiso's programs took no time"
            );
        }
    }
    // The floor's pin directory is gone.
    let pin = PathBuf::from(c["floor"]["pin"].as_str().unwrap());
    let dir = pin.parent().unwrap();
    assert!(
        dir.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("-floor"),
        "{}",
        pin.display()
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    // The per-run, no-container and share targets are judged on the net figures.
    let targets = c["targets"].as_array().unwrap();
    let rows: Vec<&Value> = wls
        .iter()
        .flat_map(|w| w["breakdown"].as_array().unwrap())
        .collect();
    let of = |path: &'static str| rows.iter().filter(move |b| b["path"] == path);
    for t in targets {
        let name = t["target"].as_str().unwrap();
        if t["measured"].is_null() || t["scope"].as_str().unwrap().contains("no per-packet") {
            continue;
        }
        let from = |vals: Vec<&Value>| {
            assert!(
                vals.contains(&&t["measured"]),
                "{t} is not judged on a net figure"
            );
        };
        if name.contains("per run") {
            assert!(name.contains("over the timing floor"), "{t}");
            from(
                of("netiso_stats")
                    .flat_map(|b| b["programs"].as_array().unwrap())
                    .map(|p| &p["ns_per_run_net"])
                    .collect(),
            );
        } else if name.contains("no container") {
            assert!(name.contains("net of timing"), "{t}");
            from(
                of("no_container_stats")
                    .map(|b| &b["ns_per_packet_net"])
                    .collect(),
            );
        } else if name.contains("share") {
            assert!(name.contains("net of timing"), "{t}");
            from(of("netiso_stats").map(|b| &b["share_net_pct"]).collect());
        }
    }
    // Every verdict follows from its interval.
    assert!(targets.len() >= 4 * 4, "{} targets", targets.len());
    for t in targets {
        let Some(m) = t["measured"].as_object() else {
            continue;
        };
        let (lo, hi) = (m["lo"].as_f64().unwrap(), m["hi"].as_f64().unwrap());
        let limit = t["limit"].as_f64().unwrap();
        let strict = t["target"].as_str().unwrap().contains("below");
        let within = |x: f64| if strict { x < limit } else { x <= limit };
        let want = if within(hi) {
            "met"
        } else if !within(lo) {
            "missed"
        } else {
            "cannot_tell"
        };
        assert_eq!(t["verdict"], want, "{t}");
    }
}

/// Mean of the finite values.
fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.filter(|x| x.is_finite()).collect();
    v.iter().sum::<f64>() / v.len() as f64
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0),
        "{what}: {a} != {b}"
    );
}

/// Every net figure of a breakdown row is its raw figure less the floor, cell by cell: the
/// floor's ns/run (in that cell) for each run of netiso's programs, or for a program's ns/run.
fn check_net(wl: &str, b: &Value, cells: &[Value]) {
    let path = b["path"].as_str().unwrap();
    let mine: Vec<&Value> = cells
        .iter()
        .filter(|c| c["workload"] == wl && c["path"] == path)
        .collect();
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap() as f64;
    let floor_per_run = |c: &Value| u(&c["floor"], "run_time_ns") / u(&c["floor"], "run_cnt");
    let progs = |c: &Value| c["progs"].as_array().unwrap().clone();
    let prog_ns = |c: &Value| progs(c).iter().map(|p| u(p, "run_time_ns")).sum::<f64>();
    let timing =
        |c: &Value| floor_per_run(c) * progs(c).iter().map(|p| u(p, "run_cnt")).sum::<f64>();
    // The workload's CPU: measured, less the floor's own time.
    let cpu = |c: &Value| {
        (u(c, "client_usec") + u(c, "server_usec")) * 1000.0 - u(&c["floor"], "run_time_ns")
    };
    let ops = |c: &Value| c["ops"].as_f64().unwrap();
    let pkts = |c: &Value| u(c, "lo_packets");
    let what = format!("{wl} {path}");
    let (floor, _, _) = est(&b["floor"]["ns_per_run"], &format!("{what} floor"));
    assert!(floor > 0.0, "{what}: floor {floor} ns/run");
    close(floor, mean(mine.iter().map(|c| floor_per_run(c))), &what);
    for (raw, net, per) in [
        ("ns_per_op", "ns_per_op_net", &ops as &dyn Fn(&Value) -> f64),
        ("ns_per_packet", "ns_per_packet_net", &pkts),
    ] {
        close(
            b[raw]["mean"].as_f64().unwrap(),
            mean(mine.iter().map(|c| prog_ns(c) / per(c))),
            &format!("{what} {raw}"),
        );
        let (n, _, _) = est(&b[net], &format!("{what} {net}"));
        close(
            n,
            mean(mine.iter().map(|c| (prog_ns(c) - timing(c)) / per(c))),
            &format!("{what} {net}"),
        );
        close(
            n,
            b[raw]["mean"].as_f64().unwrap() - mean(mine.iter().map(|c| timing(c) / per(c))),
            &format!("{what} {net}"),
        );
    }
    let (share, _, _) = est(&b["share_net_pct"], &format!("{what} net share"));
    close(
        share,
        mean(
            mine.iter()
                .map(|c| 100.0 * (prog_ns(c) - timing(c)) / (cpu(c) - timing(c))),
        ),
        &format!("{what} net share"),
    );
    close(
        b["share_pct"]["mean"].as_f64().unwrap(),
        mean(mine.iter().map(|c| 100.0 * prog_ns(c) / cpu(c))),
        &format!("{what} share"),
    );
    for p in b["programs"].as_array().unwrap() {
        if p["ns_per_run_net"].is_null() {
            assert!(p["ns_per_run"].is_null(), "{what}: {p} has no net ns/run");
            continue;
        }
        let name = &p["name"];
        let ran: Vec<(f64, f64)> = mine
            .iter()
            .filter_map(|c| {
                let d = progs(c).into_iter().find(|x| &x["name"] == name)?;
                Some((u(&d, "run_time_ns") / u(&d, "run_cnt"), floor_per_run(c)))
            })
            .collect();
        let w = format!("{what} {name}");
        let (net, _, _) = est(&p["ns_per_run_net"], &w);
        close(net, mean(ran.iter().map(|(r, f)| r - f)), &w);
        close(
            net,
            p["ns_per_run"]["mean"].as_f64().unwrap() - mean(ran.iter().map(|x| x.1)),
            &w,
        );
    }
}

netiso_testkit::privileged_tests![
    quick_bench_is_sane_and_takes_the_right_routes,
    cost_only_run_writes_the_cost_section
];
