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

fn quick_bench_is_sane_and_takes_the_right_routes() {
    let out =
        TmpDir(std::env::temp_dir().join(format!("netiso-bench-quick-{}", std::process::id())));
    let child = Command::new(env!("CARGO_BIN_EXE_netiso-bench"))
        .args(["run", "--quick", "--no-crosscheck", "--out"])
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
    // Generous for a loaded 2-core machine and a debug build; a normal run takes ~20 s.
    let deadline = Instant::now() + Duration::from_mins(4);
    let status = loop {
        if let Some(st) = bench.0.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "netiso-bench --quick did not finish within 240 s"
        );
        thread::sleep(Duration::from_millis(50));
    };
    drop(bench);
    let stdout = t_out.join().unwrap();
    let stderr = t_err.join().unwrap();
    assert!(
        status.success(),
        "netiso-bench failed ({status}):\n{stdout}\n{stderr}"
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
}

netiso_testkit::privileged_tests![quick_bench_is_sane_and_takes_the_right_routes];
