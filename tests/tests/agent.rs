//! Agent lifecycle: restarts (SIGTERM, SIGKILL) keep enforcing and adopt the pins and the
//! state, one agent per set of pins, `--cleanup`, the config file, and `disable` persisting.
use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use netiso_testkit::{netiso_bin, probe_last, unique, wait_until, CgroupTree, CliOutput, World};
use nix::sys::signal::Signal;

/// A bind to an address the container does not own: refused while netiso enforces.
const FOREIGN_BIND: &[&str] = &["socket tcp4", "bind 192.0.2.20:7000"];

fn foreign_bind_refused(w: &World, cg: &Path) -> bool {
    let s = probe_last(&w.ns, cg, FOREIGN_BIND);
    if s.ok {
        assert_eq!(s.value.as_deref(), Some("192.0.2.20:7000"), "{s:?}");
        false
    } else {
        assert_eq!(s.errno.as_deref(), Some("EADDRNOTAVAIL"), "{s:?}");
        true
    }
}

#[track_caller]
fn assert_refused(w: &World, cg: &Path) {
    assert_eq!(probe_last(&w.ns, cg, FOREIGN_BIND).err(), "EADDRNOTAVAIL");
}

#[track_caller]
fn assert_allowed(w: &World, cg: &Path) {
    assert_eq!(
        probe_last(&w.ns, cg, FOREIGN_BIND).addr(),
        "192.0.2.20:7000"
    );
}

/// `container ls --json` as (name, id) pairs.
fn listed(w: &World) -> Vec<(String, u64)> {
    let v = w.agent.cli(&["--json", "container", "ls"]).ok().json();
    v.as_array()
        .expect("ls --json is an array")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["id"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The registry in the agent's state store, as JSON (containers by name).
fn state_json(dir: &Path) -> serde_json::Value {
    let mut v = netiso_user::store::Store::dump(dir)
        .unwrap_or_else(|e| panic!("reading the store in {}: {e}", dir.display()))
        .unwrap_or_else(|| panic!("no state in {}", dir.display()));
    let by_name: serde_json::Map<String, serde_json::Value> = v["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), c.clone()))
        .collect();
    v["containers"] = serde_json::Value::Object(by_name);
    v
}

/// Runs `cmd` to completion with stdout/stderr captured; kills it and fails after `timeout`.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CliOutput {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still running after {timeout:?}; killed it. stderr so far: {}",
                err.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Contract: an agent stopped with SIGTERM leaves its pins enforcing; the restarted agent
/// adopts the pins and the state (same container, same id) and keeps enforcing.
fn restart_after_sigterm_keeps_enforcing_and_adopts_state() {
    let mut w = World::new("a-term");
    let cg = w.container("web", &["192.0.2.10"], &[]);
    assert_refused(&w, &cg);
    let before = listed(&w);
    assert_eq!(before.len(), 1);
    let refused_before = w.agent.counter("web", "bind_refused");

    w.agent.stop(Signal::SIGTERM);
    assert!(
        w.agent
            .log_text()
            .contains("pinned programs keep enforcing"),
        "graceful stop not logged:\n{}",
        w.agent.log_text()
    );
    assert!(
        !w.agent.socket.exists(),
        "a gracefully stopped agent removes its socket"
    );
    assert_ne!(w.agent.cli(&["status"]).code, 0, "the agent is down");
    // While the agent is down the pinned programs still refuse, and still count.
    assert_refused(&w, &cg);
    // The wildcard rewrite (needs the maps, not only the programs) works as well.
    assert_eq!(
        probe_last(&w.ns, &cg, &["socket tcp4", "bind 0.0.0.0:7001"]).addr(),
        "192.0.2.10:7001"
    );

    w.agent.start();
    assert_eq!(
        listed(&w),
        before,
        "same containers with the same ids after restart"
    );
    assert_eq!(
        w.agent.counter("web", "bind_refused"),
        refused_before + 1,
        "refusal while down was counted"
    );
    assert_refused(&w, &cg);
}

/// Contract: kill -9 never opens a gap either; the new agent adopts the pinned links and maps,
/// so changes made after the restart take effect in the kernel.
fn restart_after_sigkill_adopts_pins_and_accepts_changes() {
    let mut w = World::new("a-kill");
    let cg = w.container("web", &["192.0.2.10"], &[]);
    assert_refused(&w, &cg);
    let before = listed(&w);

    w.agent.stop(Signal::SIGKILL);
    assert!(
        w.agent.socket.exists(),
        "a killed agent leaves a stale socket behind"
    );
    assert_ne!(w.agent.cli(&["status"]).code, 0, "the agent is down");
    assert_refused(&w, &cg);

    let log_before = w.agent.log_text().len();
    w.agent.start(); // must cope with the stale socket
    let new_log = w.agent.log_text()[log_before..].to_owned();
    assert!(
        new_log.contains("adopted the pinned link"),
        "restart did not adopt the pins:\n{new_log}"
    );
    assert!(
        !new_log.contains("attached "),
        "restart attached new links instead of adopting:\n{new_log}"
    );
    assert_eq!(listed(&w), before);
    assert_refused(&w, &cg);

    // A change after the restart reaches the (adopted) maps.
    w.agent
        .cli(&["container", "ip", "add", "web", "192.0.2.11"])
        .ok();
    assert_eq!(
        probe_last(&w.ns, &cg, &["socket tcp4", "bind 192.0.2.11:7000"]).addr(),
        "192.0.2.11:7000"
    );
    assert_refused(&w, &cg);
    // And one more restart still knows about it.
    w.agent.stop(Signal::SIGKILL);
    w.agent.start();
    let ips = w
        .agent
        .cli(&["--json", "container", "show", "web"])
        .ok()
        .json()["ips"]
        .clone();
    assert_eq!(ips, serde_json::json!(["192.0.2.10", "192.0.2.11"]));
}

/// Contract: the state file holds the registrations while the agent is down, and the restarted
/// agent reuses the pinned maps: counters survive the restart.
fn state_file_and_counters_survive_restart() {
    let mut w = World::new("a-state");
    let cg = w.container(
        "web",
        &["192.0.2.10", "2001:db8::10"],
        &["--mode", "enforce"],
    );
    assert_refused(&w, &cg);
    assert_refused(&w, &cg);
    let refused = w.agent.counter("web", "bind_refused");
    assert!(refused >= 2, "bind_refused = {refused}");
    let id = listed(&w)[0].1;

    w.agent.stop(Signal::SIGTERM);
    let st = state_json(&w.agent.state_dir);
    let web = &st["containers"]["web"];
    assert!(web.is_object(), "the store lacks container web: {st}");
    assert_eq!(web["id"].as_u64(), Some(id));
    assert_eq!(
        web["ips"],
        serde_json::json!(["192.0.2.10", "2001:db8::10"])
    );
    assert_eq!(Path::new(web["cgroup"].as_str().unwrap()), cg);
    assert_eq!(st["enabled"], serde_json::json!(true));

    w.agent.start();
    assert!(
        w.agent.log_text().contains("adopted state: 1 container(s)"),
        "{}",
        w.agent.log_text()
    );
    assert_eq!(
        w.agent.counter("web", "bind_refused"),
        refused,
        "counters survive the restart"
    );
    assert_refused(&w, &cg);
    assert_eq!(w.agent.counter("web", "bind_refused"), refused + 1);
}

/// Contract: one agent per set of pins: a second agent on the same bpffs refuses to start
/// (quickly, with a clear message) and does not disturb the first.
fn second_agent_on_same_pins_refuses_to_start() {
    let w = World::new("a-second");
    let cg = w.container("web", &["192.0.2.10"], &[]);
    let tmp = std::env::temp_dir().join(unique("second"));
    fs::create_dir_all(&tmp).unwrap();
    let out = run_with_timeout(
        Command::new(netiso_bin())
            .arg("--socket")
            .arg(tmp.join("other.sock"))
            .arg("agent")
            .arg("--cgroup-root")
            .arg(&w.agent.cgroup_root)
            .arg("--bpffs")
            .arg(&w.agent.bpffs)
            .arg("--state-dir")
            .arg(tmp.join("state")),
        Duration::from_secs(20),
    );
    let _ = fs::remove_dir_all(&tmp);
    assert_ne!(out.code, 0, "second agent started: {out:?}");
    assert!(
        out.stderr.contains("another netiso agent"),
        "unclear message: {}",
        out.stderr
    );
    // The first agent is unaffected.
    assert_eq!(listed(&w).len(), 1);
    assert_refused(&w, &cg);
    w.agent
        .cli(&["container", "ip", "add", "web", "192.0.2.11"])
        .ok();
    assert_eq!(
        probe_last(&w.ns, &cg, &["socket tcp4", "bind 192.0.2.11:7000"]).addr(),
        "192.0.2.11:7000"
    );
}

/// Contract: `agent --cleanup` refuses while the agent runs (changing nothing); once the agent
/// is stopped it detaches everything and removes the pins and the state.
fn cleanup_refused_while_running_then_detaches_everything() {
    let mut w = World::new("a-clean");
    let cg = w.container("web", &["192.0.2.10"], &[]);
    let state_file = w.agent.state_dir.join("netiso.db");
    let before = listed(&w);

    let out = w.agent.cleanup();
    assert_ne!(out.code, 0, "cleanup ran next to a live agent: {out:?}");
    assert!(
        out.stderr.contains("stop it first"),
        "unclear message: {}",
        out.stderr
    );
    assert!(w.agent.bpffs.join("links").exists() && w.agent.bpffs.join("maps").exists());
    assert!(state_file.exists());
    assert!(w.agent.socket.exists());
    assert_eq!(listed(&w), before);
    assert_refused(&w, &cg);

    w.agent.stop(Signal::SIGTERM);
    let out = w.agent.cleanup();
    assert_eq!(out.code, 0, "cleanup failed: {out:?}");
    assert!(
        !w.agent.bpffs.exists(),
        "{} still exists",
        w.agent.bpffs.display()
    );
    assert!(
        !state_file.exists(),
        "{} still exists",
        state_file.display()
    );
    // Unpinning the last reference detaches a link; the kernel may finish that asynchronously.
    wait_until(
        "the programs to be detached",
        Duration::from_secs(20),
        || !foreign_bind_refused(&w, &cg),
    );
    assert_allowed(&w, &cg);
    // A second cleanup has nothing left to do and still succeeds.
    assert_eq!(w.agent.cleanup().code, 0);
}

/// Stops a manually started agent and cleans up after it, also when the test fails.
struct ConfigAgent {
    child: Option<Child>,
    config: PathBuf,
    tmp: PathBuf,
}

impl Drop for ConfigAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(netiso_bin())
            .env_remove("NETISO_SOCKET")
            .args(["agent", "--cleanup", "--config"])
            .arg(&self.config)
            .output();
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// Contract: `agent --config FILE` takes cgroup-root, bpffs, state-dir and socket from the TOML
/// file; an unknown key is an error naming the file.
fn agent_reads_config_file_and_rejects_unknown_keys() {
    let cgroups = CgroupTree::new("a-conf");
    let id = unique("conf");
    let tmp = std::env::temp_dir().join(&id);
    fs::create_dir_all(&tmp).unwrap();
    let bpffs = PathBuf::from("/sys/fs/bpf").join(&id);
    let state_dir = tmp.join("state");
    let socket = tmp.join("api.sock");
    let config = tmp.join("netiso.toml");
    fs::write(
        &config,
        format!(
            "# netiso agent settings\ncgroup-root = {:?}\nbpffs = {:?}\nstate-dir = {:?}\nsocket = {:?}\n",
            cgroups.root.display().to_string(),
            bpffs.display().to_string(),
            state_dir.display().to_string(),
            socket.display().to_string(),
        ),
    )
    .unwrap();
    let mut guard = ConfigAgent {
        child: None,
        config: config.clone(),
        tmp: tmp.clone(),
    };
    let log = fs::File::create(tmp.join("agent.log")).unwrap();
    guard.child = Some(
        Command::new(netiso_bin())
            // The socket comes from the config file, not from the environment.
            .env_remove("NETISO_SOCKET")
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting agent"),
    );
    let status = |json: bool| {
        let mut c = Command::new(netiso_bin());
        c.arg("--socket").arg(&socket).arg("status");
        if json {
            c.arg("--json");
        }
        c.stdin(Stdio::null()).output().expect("running netiso")
    };
    let agent_log = || fs::read_to_string(tmp.join("agent.log")).unwrap_or_default();
    wait_until(
        "the configured agent to answer on its socket",
        Duration::from_secs(30),
        || {
            if let Ok(Some(st)) = guard.child.as_mut().unwrap().try_wait() {
                panic!("agent exited with {st}:\n{}", agent_log());
            }
            status(false).status.success()
        },
    );
    let out = status(true);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(Path::new(v["cgroup_root"].as_str().unwrap()), cgroups.root);
    assert_eq!(Path::new(v["bpffs"].as_str().unwrap()), bpffs);
    assert_eq!(Path::new(v["state_dir"].as_str().unwrap()), state_dir);
    assert!(
        bpffs.join("links").exists(),
        "pins not under the configured bpffs"
    );
    assert!(
        state_dir.join("netiso.db").exists(),
        "state not in the configured state dir"
    );

    // An unknown key: exit 1, the message names the file, and no agent starts.
    let bad = tmp.join("bad.toml");
    fs::write(
        &bad,
        format!(
            "socket = {:?}\nbogus-key = 1\n",
            tmp.join("bad.sock").display().to_string()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new(netiso_bin())
            .env_remove("NETISO_SOCKET")
            .arg("agent")
            .arg("--config")
            .arg(&bad),
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&bad.display().to_string()),
        "message does not name the file: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("bogus-key"),
        "message does not name the key: {}",
        out.stderr
    );
    assert!(!tmp.join("bad.sock").exists());
    drop(guard);
    assert!(
        !bpffs.exists(),
        "cleanup via the config file left {}",
        bpffs.display()
    );
}

/// Contract: `disable` is persisted: it survives a restart (hooks pass), and `enable` after the
/// restart enforces again.
fn disable_survives_restart() {
    let mut w = World::new("a-disable");
    let cg = w.container("web", &["192.0.2.10"], &[]);
    assert_refused(&w, &cg);
    let v = w.agent.cli(&["--json", "disable"]).ok().json();
    assert_eq!(v["enabled"], serde_json::json!(false));
    assert_allowed(&w, &cg);

    w.agent.stop(Signal::SIGTERM);
    assert_eq!(
        state_json(&w.agent.state_dir)["enabled"],
        serde_json::json!(false)
    );
    assert_allowed(&w, &cg);
    w.agent.start();
    let v = w.agent.cli(&["--json", "status"]).ok().json();
    assert_eq!(v["enabled"], serde_json::json!(false), "{v}");
    assert_allowed(&w, &cg);

    let v = w.agent.cli(&["--json", "enable"]).ok().json();
    assert_eq!(v["enabled"], serde_json::json!(true));
    assert_refused(&w, &cg);
    assert_eq!(
        state_json(&w.agent.state_dir)["enabled"],
        serde_json::json!(true)
    );
}

/// Runs `netiso agent --cleanup` for a stray set of pins, also when the test fails.
struct StrayPins {
    bpffs: PathBuf,
    cgroup_root: PathBuf,
    tmp: PathBuf,
}

impl StrayPins {
    /// `netiso agent` on these pins with `socket` and `state_dir`.
    fn agent(&self, socket: &Path, state_dir: &Path) -> Command {
        let mut cmd = Command::new(netiso_bin());
        cmd.env_remove("NETISO_SOCKET")
            .arg("--socket")
            .arg(socket)
            .arg("agent")
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--state-dir")
            .arg(state_dir);
        cmd
    }
}

impl Drop for StrayPins {
    fn drop(&mut self) {
        let _ = self
            .agent(&self.tmp.join("none.sock"), &self.tmp.join("none"))
            .arg("--cleanup")
            .output();
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// Contract: an agent that fails to start leaves nothing attached: the API socket is bound
/// before the datapath is touched, so an agent refused because the socket is in use cannot
/// leave an orphaned datapath enforcing stale policy.
fn failed_agent_start_leaves_nothing_attached() {
    let w = World::new("a-orphan");
    let cg = w.container("web", &["192.0.2.10"], &[]);
    let stray = StrayPins {
        bpffs: PathBuf::from("/sys/fs/bpf").join(unique("orphan")),
        cgroup_root: w.agent.cgroup_root.clone(),
        tmp: std::env::temp_dir().join(unique("orphan")),
    };
    // Same socket (in use) and state dir, other pins: must fail and leave nothing.
    let out = run_with_timeout(
        &mut stray.agent(&w.agent.socket, &w.agent.state_dir),
        Duration::from_secs(20),
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("another agent already serves"),
        "{}",
        out.stderr
    );
    w.agent.cli(&["container", "rm", "web"]).ok();
    wait_until(
        "the removed container's policy to be gone",
        Duration::from_secs(5),
        || !foreign_bind_refused(&w, &cg),
    );
    assert!(
        !stray.bpffs.join("links").exists(),
        "the failed agent left pinned links"
    );
}

/// Contract: pins whose maps have another layout (left by another netiso version) are not
/// reused: the agent refuses to start, says what to do, and attaches nothing; after
/// `--cleanup` it starts.
fn pins_of_another_layout_are_refused_with_advice() {
    let w = World::new("a-layout");
    let stray = StrayPins {
        bpffs: PathBuf::from("/sys/fs/bpf").join(unique("layout")),
        cgroup_root: w.agent.cgroup_root.clone(),
        tmp: std::env::temp_dir().join(unique("layout")),
    };
    fs::create_dir_all(stray.bpffs.join("maps")).unwrap();
    // COUNTERS as an older netiso made it: 20 counters instead of today's.
    netiso_testkit::bpf::create_pinned_map(&stray.bpffs.join("maps/COUNTERS"), 5, 4, 160, 16)
        .expect("creating a stand-in pinned map");
    let agent = |extra: &[&str]| {
        run_with_timeout(
            stray
                .agent(&stray.tmp.join("s.sock"), &stray.tmp.join("state"))
                .args(extra),
            Duration::from_secs(20),
        )
    };
    let out = agent(&[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("COUNTERS")
            && out.stderr.contains("another netiso version")
            && out.stderr.contains("--cleanup"),
        "{}",
        out.stderr
    );
    let links = fs::read_dir(stray.bpffs.join("links")).map_or(0, Iterator::count);
    assert_eq!(links, 0, "a refused agent attached programs");
    assert_eq!(agent(&["--cleanup"]).code, 0);
    assert!(!stray.bpffs.exists());
}

/// A `container rm` or `ip rm` that fails part way changes nothing: the state cannot be saved,
/// or the kernel refuses a step after earlier ones were applied (failpoints). The answer is
/// an error, the state file is unchanged, and the kernel still enforces the registration:
/// foreign binds are refused and the address that was to be revoked still works.
fn failed_removals_change_nothing() {
    // failpoint, and whether `ip rm` fails under it too
    for (failpoint, ip_rm_fails) in [
        ("state.save", true),
        ("datapath.unregister", false),
        ("datapath.revoke", true),
    ] {
        let mut w = World::new("fail");
        let web = w.container("web", &["192.0.2.10", "192.0.2.11"], &[]);
        w.agent.stop(Signal::SIGTERM);
        w.agent
            .start_with_env(&[], &[("NETISO_FAILPOINTS", failpoint)]);
        assert!(
            w.agent.log_text().contains("will fail on purpose"),
            "the agent must warn that failpoints are set"
        );
        let before = state_json(&w.agent.state_dir);
        let check = |what: &str| {
            assert_eq!(
                state_json(&w.agent.state_dir),
                before,
                "{failpoint}, {what}: state"
            );
            assert_eq!(listed(&w).len(), 1, "{failpoint}, {what}: registry");
            assert_refused(&w, &web);
            let own = probe_last(&w.ns, &web, &["socket tcp4", "bind 192.0.2.11:7001"]);
            assert_eq!(
                own.addr(),
                "192.0.2.11:7001",
                "{failpoint}, {what}: owned address"
            );
        };
        let rm = w.agent.cli(&["container", "rm", "web"]);
        assert_eq!(rm.code, 1, "{failpoint}: container rm must fail: {rm:?}");
        assert!(rm.stderr.contains("nothing was changed"), "{rm:?}");
        check("container rm");
        let ip_rm = w.agent.cli(&["container", "ip", "rm", "web", "192.0.2.11"]);
        if ip_rm_fails {
            assert_eq!(ip_rm.code, 1, "{failpoint}: ip rm must fail: {ip_rm:?}");
            assert!(ip_rm.stderr.contains("nothing was changed"), "{ip_rm:?}");
            check("ip rm");
        } else {
            assert_eq!(ip_rm.code, 0, "{failpoint}: ip rm must succeed: {ip_rm:?}");
        }
    }
}

netiso_testkit::privileged_tests![
    failed_removals_change_nothing,
    restart_after_sigterm_keeps_enforcing_and_adopts_state,
    restart_after_sigkill_adopts_pins_and_accepts_changes,
    state_file_and_counters_survive_restart,
    second_agent_on_same_pins_refuses_to_start,
    cleanup_refused_while_running_then_detaches_everything,
    agent_reads_config_file_and_rejects_unknown_keys,
    disable_survives_restart,
    failed_agent_start_leaves_nothing_attached,
    pins_of_another_layout_are_refused_with_advice,
];
