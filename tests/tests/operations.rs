//! The agent on an operator's worst day: a lost state, wrapped-around ids, refused requests,
//! kill -9, removed cgroups, full maps, upgrades, detached programs, churn. Every test that
//! stops or confuses the agent runs a forbidden-bind loop (a process in a container cgroup,
//! without CAP_NET_ADMIN & co, binding an address it does not own as fast as it can) and
//! counts the binds that succeeded: any is a bypass.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use netiso_testkit::{
    bpf, netiso_bin, probe_as, probe_last, wait_until, As, BindLoop, CliOutput, World,
};
use netiso_user::api::AddContainer;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// An address on the namespace's `lo` that no container owns in these tests.
const FOREIGN: &str = "192.0.2.20:7000";

#[track_caller]
fn assert_no_bypass(loop_result: (u64, u64), what: &str) {
    let (tries, ok) = loop_result;
    assert!(tries > 0, "{what}: the bind loop never ran");
    assert_eq!(ok, 0, "{what}: {ok} of {tries} forbidden binds succeeded");
    eprintln!("{what}: {tries} forbidden binds tried, none succeeded");
}

/// A forbidden bind from `cg`, as an attacker: true when refused.
fn refused(w: &World, cg: &Path) -> bool {
    let s = probe_as(
        &w.ns,
        cg,
        &["socket tcp4", &format!("bind {FOREIGN}")],
        As::Attacker,
    )
    .pop()
    .unwrap();
    !s.ok
}

/// Runs `netiso agent` with this agent's paths (and `extra`) to completion.
fn agent_once(w: &World, extra: &[&str], timeout: Duration) -> CliOutput {
    let mut child = Command::new(netiso_bin())
        .args(w.agent.args())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting agent");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "agent still running after {timeout:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap().into()
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p).unwrap().ino()
}

fn level(p: &Path) -> u32 {
    let mount = netiso_testkit::cgroup2_mount().unwrap();
    p.strip_prefix(mount).unwrap().components().count() as u32
}

/// (name, id, cgroup, ips, loopback, mode, isolated) of a container.
type Row = (String, u32, PathBuf, Vec<String>, String, String, bool);

/// Every container as a [`Row`].
fn registry(w: &World) -> Vec<Row> {
    w.agent
        .client()
        .containers()
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.name,
                c.id,
                c.cgroup,
                c.ips.iter().map(ToString::to_string).collect(),
                c.loopback.to_string(),
                c.mode.to_string(),
                c.isolated,
            )
        })
        .collect()
}

/// Item 1. Contract: an agent that finds registrations in the pinned maps and no state
/// (state directory gone, emptied, or its state file a dangling link) never drops
/// enforcement: it rebuilds the registry from the pins (ids, cgroups, addresses, modes,
/// rules; names are invented), says so loudly, and a forbidden-bind loop running through the
/// restart never succeeds. A store that is itself a dangling link is refused, naming both
/// places, and the pins keep enforcing.
fn lost_state_is_recovered_from_the_pins() {
    for how in [
        "no state directory",
        "empty state directory",
        "dangling state file",
    ] {
        let mut w = World::new("o-lost");
        let a = w.container("a", &["192.0.2.10", "2001:db8::10"], &[]);
        let _b = w.container("b", &["192.0.2.11"], &["--isolated", "--mode", "audit"]);
        w.agent.cli(&["policy", "allow", "a", "b"]).ok();
        let before = registry(&w);
        let bind_loop = BindLoop::start(&w.ns, &a, FOREIGN);
        w.agent.stop(Signal::SIGKILL);
        let dir = &w.agent.state_dir;
        match how {
            "no state directory" => fs::remove_dir_all(dir).unwrap(),
            "empty state directory" => {
                for e in fs::read_dir(dir).unwrap() {
                    fs::remove_file(e.unwrap().path()).unwrap();
                }
            }
            _ => {
                for e in fs::read_dir(dir).unwrap() {
                    fs::remove_file(e.unwrap().path()).unwrap();
                }
                std::os::unix::fs::symlink(dir.join("nowhere.json"), dir.join("state.json"))
                    .unwrap();
            }
        }
        let log_len = w.agent.log_text().len();
        w.agent.start();
        // Enforcement holds after the restart too (the loop keeps running meanwhile).
        assert!(refused(&w, &a), "{how}: a forbidden bind got through");
        assert_no_bypass(bind_loop.stop(), how);
        let log = w.agent.log_text()[log_len..].to_owned();
        assert!(
            log.contains("RECOVERED 2 container(s)"),
            "{how}: recovery not said loudly:\n{log}"
        );
        let after = registry(&w);
        assert_eq!(after.len(), 2, "{how}: {after:?}");
        for (old, new) in before.iter().zip(&after) {
            assert_eq!(
                new.0,
                format!("recovered-{}", old.1),
                "{how}: invented name"
            );
            assert_eq!(
                (&new.1, &new.2, &new.3, &new.4, &new.5, &new.6),
                (&old.1, &old.2, &old.3, &old.4, &old.5, &old.6),
                "{how}: id, cgroup, addresses, loopback, mode, isolation"
            );
        }
        let rules = w.agent.client().rules().unwrap();
        assert_eq!(rules.len(), 1, "{how}: {rules:?}");
        assert_eq!(rules[0].from, format!("recovered-{}", before[0].1));
        // The recovered registry is in the store now: the next start finds it there.
        w.agent.stop(Signal::SIGTERM);
        w.agent.start();
        assert_eq!(registry(&w), after, "{how}: after a second restart");
    }

    // A store that is a dangling symbolic link: refused, both places named, pins enforcing.
    let mut w = World::new("o-link");
    let a = w.container("a", &["192.0.2.10"], &[]);
    w.agent.stop(Signal::SIGKILL);
    let db = w.agent.state_dir.join("netiso.db");
    for e in fs::read_dir(&w.agent.state_dir).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    std::os::unix::fs::symlink("/nonexistent/netiso.db", &db).unwrap();
    let out = agent_once(&w, &[], Duration::from_secs(30));
    assert_eq!(out.code, 1, "{out:?}");
    let state = w.agent.state_dir.display().to_string();
    let pins = w.agent.bpffs.display().to_string();
    assert!(
        out.stderr.contains("symbolic link")
            && out.stderr.contains(&state)
            && out.stderr.contains(&pins),
        "unclear: {}",
        out.stderr
    );
    assert!(refused(&w, &a), "the pins stopped enforcing");
    fs::remove_file(&db).unwrap();
    w.agent.start();
}

/// Item 2. Contract: private loopback addresses are allocated, never derived from the id, so
/// two live containers never share one, also once ids pass 2^23 (what a long churn reaches):
/// a state written by an older netiso with such a collision is repaired on load, and a new
/// registration gets an unused one. A container never reaches another's 127.0.0.1 listener.
fn private_loopbacks_never_collide() {
    let mut w = World::new("o-lo");
    w.agent.stop(Signal::SIGTERM);
    assert_eq!(w.agent.cleanup().code, 0);
    let old = w.cgroups.child("old");
    let twin = w.cgroups.child("twin");
    let spec = |cg: &Path, id: u32, ip: &str| {
        json!({
            "id": id, "cgroup": cg, "cgroup_id": inode(cg), "cgroup_level": level(cg),
            "ips": [ip], "mode": "enforce", "allow_raw": false, "isolated": false
        })
    };
    // As an older netiso left it after 2^23 registrations: ids 1 and 2^23 + 1, whose
    // loopbacks (127.128.0.0 + (id & 0x7fffff)) were the same.
    let state = json!({
        "version": 1, "enabled": true, "cgroup_root": w.agent.cgroup_root,
        "next_id": 0x80_0002u32,
        "containers": {"old": spec(&old, 1, "192.0.2.10"), "twin": spec(&twin, 0x80_0001, "192.0.2.11")},
        "rules": [], "ifaces": []
    });
    fs::create_dir_all(&w.agent.state_dir).unwrap();
    fs::write(
        w.agent.state_dir.join("state.json"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    w.agent.start();
    let fresh = w.container("fresh", &["192.0.2.20"], &[]);
    w.agent.cli(&["policy", "deny", "fresh", "old"]).ok();
    let cs = w.agent.client().containers().unwrap();
    let lo: BTreeSet<String> = cs.iter().map(|c| c.loopback.to_string()).collect();
    assert_eq!(lo.len(), 3, "loopbacks shared: {cs:?}");
    let server = netiso_testkit::Background::spawn(
        &w.ns,
        &old,
        &["socket tcp4", "bind 127.0.0.1:8000", "listen", "serve old"],
    );
    server.wait_for("serving");
    // Its own listener answers; the others' 127.0.0.1 is their own loopback, with nothing.
    assert_eq!(
        probe_last(
            &w.ns,
            &old,
            &["socket tcp4", "connect 127.0.0.1:8000", "recv"]
        )
        .addr(),
        "old"
    );
    for cg in [&twin, &fresh] {
        let s = probe_as(
            &w.ns,
            cg,
            &["socket tcp4", "connect 127.0.0.1:8000", "recv"],
            As::Attacker,
        );
        let last = s.last().unwrap();
        assert!(
            !last.ok && last.op == "connect",
            "{} reached another container's loopback listener: {s:?}",
            cg.display()
        );
    }
}

/// Item 3. Contract: a refused request never enforces less, not even for a moment: with the
/// store refusing every write, or the kernel refusing a step, hundreds of refused `rm`,
/// `ip rm` and `mode audit` requests let no forbidden bind of the container through, and
/// change nothing.
fn refused_requests_never_enforce_less() {
    for failpoints in [
        "state.save",
        "datapath.unregister,datapath.register,datapath.revoke",
    ] {
        let mut w = World::new("o-refuse");
        let a = w.container("a", &["192.0.2.10", "192.0.2.11"], &[]);
        w.agent.stop(Signal::SIGTERM);
        w.agent
            .start_with_env(&[], &[("NETISO_FAILPOINTS", failpoints)]);
        let before = w.agent.state();
        let bind_loop = BindLoop::start(&w.ns, &a, FOREIGN);
        let c = w.agent.client();
        for _ in 0..200 {
            assert!(c.remove_container("a").is_err(), "{failpoints}: rm applied");
            assert!(
                c.remove_ip("a", "192.0.2.11".parse().unwrap()).is_err(),
                "{failpoints}: ip rm applied"
            );
            assert!(
                c.set_mode("a", netiso_user::api::Mode::Audit).is_err(),
                "{failpoints}: mode applied"
            );
        }
        assert_no_bypass(bind_loop.stop(), failpoints);
        assert_eq!(w.agent.state(), before, "{failpoints}: the store changed");
        assert!(refused(&w, &a));
    }
}

/// Contract: kill -9 at any moment, also in the middle of registrations and removals, never
/// lets a forbidden bind through, and leaves no half-registered container: after each
/// restart what is listed is exactly what the kernel enforces.
fn kill_9_never_lets_a_forbidden_bind_through() {
    let mut w = World::new("o-kill9");
    let a = w.container("a", &["192.0.2.10"], &[]);
    let bind_loop = BindLoop::start(&w.ns, &a, FOREIGN);
    let churn = w.cgroups.child("churn");
    for round in 0..6 {
        let client_socket = w.agent.socket.clone();
        let cg = churn.clone();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = done.clone();
        let worker = thread::spawn(move || {
            let c = netiso_user::client::Client::new(&client_socket);
            let mut calls = 0u32;
            loop {
                let req = AddContainer {
                    name: "churn".into(),
                    cgroup: Some(cg.clone()),
                    pid: None,
                    ips: vec!["192.0.2.11".parse().unwrap()],
                    mode: netiso_user::api::Mode::Enforce,
                    allow_raw: false,
                    isolated: false,
                    abstract_unix: None,
                };
                if c.add_container(&req).is_err() && c.status().is_err() {
                    return calls;
                }
                if c.remove_container("churn").is_err() && c.status().is_err() {
                    return calls;
                }
                calls += 1;
                counter.store(calls, std::sync::atomic::Ordering::SeqCst);
            }
        });
        // Kill it once the churn is under way, a little later each round.
        let target = 3 + 4 * round;
        wait_until("the churn to get going", Duration::from_secs(30), || {
            done.load(std::sync::atomic::Ordering::SeqCst) >= target
        });
        w.agent.stop(Signal::SIGKILL);
        let calls = worker.join().unwrap();
        w.agent.start();
        let listed = w.agent.client().containers().unwrap();
        let names: Vec<&str> = listed.iter().map(|c| c.name.as_str()).collect();
        assert!(names.contains(&"a"), "round {round}: {names:?}");
        // Listed means confined, unlisted means free: never in between.
        let churn_listed = names.contains(&"churn");
        assert_eq!(
            refused(&w, &churn),
            churn_listed,
            "round {round} (after {calls} cycles): listed {churn_listed} but the kernel disagrees"
        );
        if churn_listed {
            w.agent.client().remove_container("churn").unwrap();
        }
    }
    assert_no_bypass(bind_loop.stop(), "kill -9 during churn");
}

/// Item 4. Contract: a registered cgroup that is removed is noticed at once (watched, not
/// polled) and released: its registration and addresses go; a cgroup made again at the same
/// path is a different cgroup (matched by id) and inherits nothing, neither now nor after a
/// restart. One removed while the agent is down is released when it starts.
fn removed_cgroup_is_released_at_once() {
    let mut w = World::new("o-rmdir");
    let web = w.container("web", &["192.0.2.10"], &[]);
    let _other = w.container("other", &["192.0.2.11"], &[]);
    fs::remove_dir(&web).unwrap();
    let t = Instant::now();
    wait_until(
        "the removed cgroup's container to be released",
        Duration::from_secs(10),
        || w.agent.client().container("web").is_err(),
    );
    eprintln!("released {:?} after the rmdir", t.elapsed());
    assert!(w.agent.log_text().contains("container web released"));
    // Its address is free again.
    w.agent
        .cli(&["container", "ip", "add", "other", "192.0.2.10"])
        .ok();
    // The same path again: not registered, not confined.
    fs::create_dir(&web).unwrap();
    assert!(
        !refused(&w, &web),
        "a new cgroup at the old path is confined"
    );
    w.agent.stop(Signal::SIGTERM);
    w.agent.start();
    assert!(w.agent.client().container("web").is_err());
    assert!(!refused(&w, &web), "inherited after a restart");

    // Removed (and made again) while the agent is down.
    let gone = w.container("gone", &["192.0.2.20"], &[]);
    assert!(w.agent.client().container("gone").is_ok());
    w.agent.stop(Signal::SIGKILL);
    fs::remove_dir(&gone).unwrap();
    fs::create_dir(&gone).unwrap();
    let log_len = w.agent.log_text().len();
    w.agent.start();
    assert!(w.agent.client().container("gone").is_err());
    assert!(w.agent.log_text()[log_len..].contains("container gone released"));
    // 192.0.2.20 is owned by nobody: a process in the new cgroup binds it freely.
    assert!(!refused(&w, &gone));
}

/// Item 7. Contract: capacity is configurable (--max-containers, --max-addresses,
/// --max-addresses-per-container); a request beyond a limit is answered 507 with a message
/// naming the limit, and nothing of it is registered (a batch included). Pinned maps keep
/// the capacity they were made with: a later agent asking for more says so and holds to it.
fn capacity_limits_are_clear_and_register_nothing() {
    let mut w = World::new("o-cap");
    w.agent.stop(Signal::SIGTERM);
    assert_eq!(w.agent.cleanup().code, 0);
    w.agent.start_with(&[
        "--max-containers",
        "3",
        "--max-addresses",
        "4",
        "--max-addresses-per-container",
        "2",
    ]);
    fn add(w: &World, name: &str, ips: &[&str]) -> CliOutput {
        let cg = w.cgroups.child(name);
        let mut args = vec!["container", "add", name, "--cgroup"];
        let cgs = cg.display().to_string();
        args.push(&cgs);
        for ip in ips {
            args.extend(["--ip", ip]);
        }
        w.agent.cli(&args)
    }
    let full = |out: CliOutput, needle: &str| {
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
        assert!(out.stderr.contains("nothing was changed"), "{}", out.stderr);
    };
    full(
        add(&w, "big", &["192.0.2.10", "192.0.2.11", "192.0.2.20"]),
        "--max-addresses-per-container 2",
    );
    add(&w, "a", &["192.0.2.10", "2001:db8::10"]).ok();
    add(&w, "b", &["192.0.2.11"]).ok();
    full(
        add(&w, "c", &["198.51.100.1", "2001:db8::11"]),
        "--max-addresses",
    );
    add(&w, "c", &["198.51.100.1"]).ok();
    full(add(&w, "d", &["2001:db8::20"]), "--max-containers");
    // Nothing of the refused ones is registered or enforced.
    assert_eq!(w.agent.client().containers().unwrap().len(), 3);
    assert!(!refused(&w, &w.cgroups.child("d")));
    // Status and metrics show the limits.
    let cap = w.agent.client().status().unwrap().capacity.unwrap();
    assert_eq!(
        (cap.containers, cap.addresses, cap.addresses_used),
        (3, 4, 4)
    );
    // A batch that does not fit registers none of its members.
    w.agent.client().remove_container("c").unwrap();
    let batch: Vec<AddContainer> = ["e", "f"]
        .iter()
        .enumerate()
        .map(|(i, n)| AddContainer {
            name: (*n).into(),
            cgroup: Some(w.cgroups.child(n)),
            pid: None,
            ips: vec![format!("198.51.100.{}", 10 + i).parse().unwrap()],
            mode: netiso_user::api::Mode::Enforce,
            allow_raw: false,
            isolated: false,
            abstract_unix: None,
        })
        .collect();
    let e = w.agent.client().add_containers(&batch).unwrap_err();
    assert!(e.to_string().contains("--max-containers"), "{e}");
    assert_eq!(w.agent.client().containers().unwrap().len(), 2);

    // New flags, same pins: the maps keep their capacity, and the agent says so.
    w.agent.stop(Signal::SIGTERM);
    let log_len = w.agent.log_text().len();
    w.agent.start_with(&["--max-containers", "10"]);
    assert!(
        w.agent.log_text()[log_len..].contains("their capacity stays"),
        "{}",
        w.agent.log_text()
    );
    assert_eq!(
        w.agent
            .client()
            .status()
            .unwrap()
            .capacity
            .unwrap()
            .containers,
        3
    );
    add(&w, "c", &["198.51.100.1"]).ok();
    full(add(&w, "d", &["198.51.100.2"]), "--max-containers");
}

/// Upgrades are stop-then-start on the same pins (the lock forbids two agents). Contract:
/// ten swaps under a forbidden-bind loop let no bind through, and the registry, ids and
/// counters are the same after them. The API's absence per swap is printed.
fn upgrade_is_stop_then_start_without_a_gap() {
    let mut w = World::new("o-upgrade");
    let a = w.container("a", &["192.0.2.10"], &[]);
    let before = registry(&w);
    let bind_loop = BindLoop::start(&w.ns, &a, FOREIGN);
    let mut gaps = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        w.agent.stop(Signal::SIGTERM);
        w.agent.start();
        gaps.push(t.elapsed());
    }
    assert_no_bypass(bind_loop.stop(), "10 upgrades");
    assert_eq!(registry(&w), before);
    gaps.sort();
    eprintln!(
        "API unavailable per stop-then-start: median {:?}, max {:?}",
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );
}

/// Contract: the agent checks its programs' attachments periodically; one found detached is
/// reported loudly, re-attached, and counted in the metrics.
fn detached_programs_are_reattached_and_counted() {
    let mut w = World::new("o-links");
    w.agent.stop(Signal::SIGTERM);
    w.agent.start_with(&["--check-interval", "1"]);
    let a = w.container("a", &["192.0.2.10"], &[]);
    assert!(refused(&w, &a));
    // Removing a pin drops the last reference to its link: the program is detached. bind4 is
    // attached to each container's cgroup, guard at the root.
    let cgroup_id = w.agent.client().container("a").unwrap().cgroup_id;
    let pin = w.agent.bpffs.join(format!("links/cg-bind4@{cgroup_id}"));
    fs::remove_file(&pin).unwrap();
    fs::remove_file(w.agent.bpffs.join("links/guard")).unwrap();
    wait_until("bind4 to be re-attached", Duration::from_secs(20), || {
        refused(&w, &a)
    });
    wait_until("the log to say so", Duration::from_secs(5), || {
        w.agent
            .log_text()
            .contains("program bind4 was not attached")
    });
    let m = w.agent.client().metrics().unwrap();
    assert!(
        m.contains("netiso_program_reattachments_total{program=\"bind4\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("netiso_program_attached{program=\"bind4\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("netiso_program_reattachments_total{program=\"guard\"} 1"),
        "{m}"
    );
    assert!(pin.exists() && w.agent.bpffs.join("links/guard").exists());
}

/// GET on `addr` from inside the namespace `ns` (a thread that joins it), raw HTTP/1.1:
/// (status, body).
fn http_get_in(ns: &netiso_testkit::Netns, addr: &str, path: &str) -> (u16, String) {
    let ns = ns.path();
    let (addr, path) = (addr.to_owned(), path.to_owned());
    thread::spawn(move || {
        use std::io::{Read, Write};
        let f = fs::File::open(&ns).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .join()
    .unwrap()
}

/// Contract: Prometheus metrics on the API socket and on --metrics-addr: agent up and build
/// information, containers, addresses and capacity, per-container counters, events dropped,
/// the programs attached. The TCP listener serves nothing else (JSON 404).
fn metrics_are_served() {
    let mut w = World::new("o-metrics");
    w.agent.stop(Signal::SIGTERM);
    w.agent.start_with(&["--metrics-addr", "127.0.0.1:9464"]);
    let a = w.container("a", &["192.0.2.10", "2001:db8::10"], &[]);
    assert!(refused(&w, &a));
    assert!(refused(&w, &a));
    let refusals = w.agent.counter("a", "bind_refused");
    let m = w.agent.client().metrics().unwrap();
    for needle in [
        "netiso_up 1".to_owned(),
        format!(
            "netiso_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "netiso_containers 1".into(),
        "netiso_addresses 2".into(),
        "netiso_capacity{resource=\"containers\"} 65536".into(),
        format!("netiso_container_bind_refused_total{{container=\"a\"}} {refusals}"),
        "netiso_events_dropped_total ".into(),
        "netiso_program_attached{program=\"connect6\"} 1".into(),
        "# EOF".into(),
    ] {
        assert!(m.contains(&needle), "metrics lack {needle:?}:\n{m}");
    }
    let (status, body) = http_get_in(&w.ns, "127.0.0.1:9464", "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("netiso_containers 1"), "{body}");
    let (status, body) = http_get_in(&w.ns, "127.0.0.1:9464", "/v1/status");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
}

fn agent_numbers(pid: u32) -> (usize, u64) {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    (fds, rss)
}

fn map_entries(bpffs: &Path) -> Vec<(String, usize)> {
    [
        "CONTAINERS",
        "IDS",
        "OWNED4",
        "OWNED6",
        "POLICY",
        "COUNTERS",
    ]
    .iter()
    .map(|m| {
        let n = bpf::count_entries(&bpffs.join("maps").join(m))
            .unwrap_or_else(|e| panic!("counting {m}: {e}"));
        ((*m).to_owned(), n)
    })
    .collect()
}

fn count_files(dir: &Path) -> usize {
    walkdir(dir).len()
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walkdir(&e.path()));
        }
    }
    out
}

/// Contract: thousands of add/rm cycles (with addresses granted, revoked and rules set on
/// the way) leak nothing: the same map entries, pins and cgroups as before, and the agent's
/// descriptors and memory do not grow.
fn churn_leaks_nothing() {
    let w = World::new("o-churn");
    let _a = w.container("a", &["192.0.2.10"], &[]);
    let c = w.agent.client();
    let cgs: Vec<PathBuf> = (0..4).map(|i| w.cgroups.child(&format!("c{i}"))).collect();
    let cycles = |n: usize| {
        for i in 0..n {
            let k = i % cgs.len();
            let name = format!("c{k}");
            c.add_container(&AddContainer {
                name: name.clone(),
                cgroup: Some(cgs[k].clone()),
                pid: None,
                ips: vec![
                    format!("198.51.100.{}", 10 + k).parse().unwrap(),
                    format!("2001:db8:2::{}", 10 + k).parse().unwrap(),
                ],
                mode: netiso_user::api::Mode::Enforce,
                allow_raw: false,
                isolated: i % 2 == 0,
                abstract_unix: None,
            })
            .unwrap();
            if i % 5 == 0 {
                let ip = format!("203.0.113.{}", 10 + k).parse().unwrap();
                c.add_ip(&name, ip).unwrap();
                c.set_rule(&netiso_user::api::PolicyRule {
                    from: name.clone(),
                    to: "a".into(),
                    action: netiso_user::api::PolicyAction::Deny,
                })
                .unwrap();
                c.remove_ip(&name, ip).unwrap();
            }
            c.remove_container(&name).unwrap();
        }
    };
    cycles(200);
    let pid = w.agent.pid().unwrap();
    let (fds0, rss0) = agent_numbers(pid);
    let maps0 = map_entries(&w.agent.bpffs);
    let pins0 = count_files(&w.agent.bpffs);
    let cg0 = count_files(&w.cgroups.root);
    let t = Instant::now();
    cycles(2000);
    eprintln!("2000 add/rm cycles in {:?}", t.elapsed());
    let (fds1, rss1) = agent_numbers(pid);
    assert_eq!(map_entries(&w.agent.bpffs), maps0, "map entries leaked");
    assert_eq!(count_files(&w.agent.bpffs), pins0, "pins leaked");
    assert_eq!(count_files(&w.cgroups.root), cg0, "cgroups leaked");
    assert!(fds1 <= fds0 + 2, "descriptors grew from {fds0} to {fds1}");
    assert!(
        rss1 <= rss0 + 8 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
    eprintln!("agent: {fds0} -> {fds1} descriptors, RSS {rss0} -> {rss1} KiB");
}

/// Contract: POST /v1/containers takes a batch: all of it is registered, or (one member
/// clashing) none of it.
fn batch_registration_is_all_or_nothing() {
    let w = World::new("o-batch");
    let _a = w.container("a", &["192.0.2.10"], &[]);
    let req = |i: usize, ip: String| AddContainer {
        name: format!("b{i}"),
        cgroup: Some(w.cgroups.child(&format!("b{i}"))),
        pid: None,
        ips: vec![ip.parse().unwrap()],
        mode: netiso_user::api::Mode::Enforce,
        allow_raw: false,
        isolated: false,
        abstract_unix: None,
    };
    let mut bad: Vec<AddContainer> = (0..3).map(|i| req(i, format!("2001:db8:5::{i}"))).collect();
    bad.push(req(3, "192.0.2.10".into()));
    let e = w.agent.client().add_containers(&bad).unwrap_err();
    assert!(
        e.to_string().contains("batch entry 4") && e.to_string().contains("192.0.2.10"),
        "{e}"
    );
    assert_eq!(w.agent.client().containers().unwrap().len(), 1);
    assert!(
        !refused(&w, &w.cgroups.child("b0")),
        "a refused batch member is enforced"
    );
    let good: Vec<AddContainer> = (0..300)
        .map(|i| req(i, format!("2001:db8:5::{i:x}")))
        .collect();
    let t = Instant::now();
    let added = w.agent.client().add_containers(&good).unwrap();
    eprintln!("a batch of 300 registered in {:?}", t.elapsed());
    assert_eq!(added.len(), 300);
    assert_eq!(w.agent.client().containers().unwrap().len(), 301);
    assert!(refused(&w, &w.cgroups.child("b299")));
    let ids: BTreeSet<u32> = added.iter().map(|c| c.id).collect();
    let lo: BTreeSet<String> = added.iter().map(|c| c.loopback.to_string()).collect();
    assert_eq!((ids.len(), lo.len()), (300, 300));
    let _: Value = w.agent.state().unwrap();
}

netiso_testkit::privileged_tests![
    lost_state_is_recovered_from_the_pins,
    private_loopbacks_never_collide,
    refused_requests_never_enforce_less,
    kill_9_never_lets_a_forbidden_bind_through,
    removed_cgroup_is_released_at_once,
    capacity_limits_are_clear_and_register_nothing,
    upgrade_is_stop_then_start_without_a_gap,
    detached_programs_are_reattached_and_counted,
    metrics_are_served,
    churn_leaks_nothing,
    batch_registration_is_all_or_nothing,
];
