//! Harness for netiso's privileged integration tests.
//!
//! Every test builds its own world and tears it down on drop, also when it fails: a network
//! namespace ([`Netns`]), a cgroup subtree ([`CgroupTree`]) and an agent ([`Agent`]) attached
//! at that subtree with its own pins, state and socket. Nothing is attached at the machine's
//! root cgroup and no traffic leaves the test's namespace.
use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;

pub use netiso_common::bpf;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(tag: &str) -> String {
    format!(
        "nt-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// True when the privileged tests can run. Without root or cgroup v2: a failure under CI
/// (`CI=true`), a loud skip elsewhere.
pub fn privileged() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if cgroup2_mount().is_none() {
        Some("no cgroup v2 mount")
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("no `ip` (iproute2)")
    } else {
        None
    };
    match why {
        None => true,
        Some(w) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("privileged test cannot run under CI: {w}")
        }
        Some(w) => {
            eprintln!("SKIPPED: privileged test needs root, cgroup v2 and iproute2 ({w})");
            false
        }
    }
}

pub use netiso_common::host::cgroup2_mount;

/// Directory holding the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("NETISO_BIN_DIR") {
        return d.into();
    }
    // target/debug/deps/<test-binary> -> target/debug
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

pub fn netiso_bin() -> PathBuf {
    let p = bin_dir().join("netiso");
    assert!(
        p.exists(),
        "{} not built: run `cargo xtask test` (or `cargo build -p netiso-user`) first",
        p.display()
    );
    p
}

pub fn probe_bin() -> PathBuf {
    bin_dir().join("netiso-probe")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A network namespace with `lo` up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n NS ARGS...`, asserting success.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Adds an address (with prefix) to `lo`.
    pub fn add_addr(&self, cidr: &str) {
        let extra: &[&str] = if cidr.contains(':') { &["nodad"] } else { &[] };
        let mut args = vec!["addr", "add", cidr, "dev", "lo"];
        args.extend_from_slice(extra);
        self.ip(&args);
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A cgroup subtree below the cgroup2 mount; processes are killed and the tree removed on drop.
pub struct CgroupTree {
    pub root: PathBuf,
}

impl CgroupTree {
    pub fn new(tag: &str) -> CgroupTree {
        let root = cgroup2_mount().expect("cgroup2").join(unique(tag));
        fs::create_dir(&root).expect("creating test cgroup");
        CgroupTree { root }
    }

    /// Creates (if needed) and returns a child cgroup, `rel` may contain '/'.
    pub fn child(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).expect("creating child cgroup");
        p
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        netiso_common::host::destroy_cgroup(&self.root, Duration::from_secs(10));
    }
}

/// Result of one `netiso` CLI call.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "netiso failed: {}{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A `netiso agent` attached at a test cgroup with its own pins, state and socket.
pub struct Agent {
    pub cgroup_root: PathBuf,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// The network namespace the agent runs in (its interfaces are the ones `--iface` and
    /// `netiso iface` see); None: the caller's.
    pub netns: Option<String>,
}

impl Agent {
    pub fn new(cgroups: &CgroupTree) -> Agent {
        Agent::with_netns(cgroups, None)
    }

    /// An agent running inside `netns` (a /run/netns path): required for any test that
    /// attaches the TC programs, so they only ever see the test's interfaces.
    pub fn with_netns(cgroups: &CgroupTree, netns: Option<String>) -> Agent {
        let id = unique("agent");
        let tmp = std::env::temp_dir().join(&id);
        fs::create_dir_all(&tmp).unwrap();
        let mut a = Agent {
            cgroup_root: cgroups.root.clone(),
            bpffs: PathBuf::from("/sys/fs/bpf").join(&id),
            state_dir: tmp.join("state"),
            socket: tmp.join("netiso.sock"),
            child: None,
            log: tmp.join("agent.log"),
            netns,
        };
        a.start();
        a
    }

    pub fn args(&self) -> Vec<String> {
        vec![
            "agent".into(),
            "--cgroup-root".into(),
            self.cgroup_root.display().to_string(),
            "--bpffs".into(),
            self.bpffs.display().to_string(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
        ]
    }

    /// Starts the agent process and waits until its API answers.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Like [`Agent::start`], with extra `netiso agent` arguments (e.g. `--iface IFACE`) for
    /// this run only.
    pub fn start_with(&mut self, extra: &[&str]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(netiso_bin());
        cmd.args(self.args())
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(ns) = &self.netns {
            // setns rather than `ip netns exec`, which remounts /sys and hides bpffs.
            let f = fs::File::open(ns).unwrap_or_else(|e| panic!("opening {ns}: {e}"));
            use std::os::unix::process::CommandExt;
            // SAFETY: only setns(2) runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        self.child = Some(cmd.spawn().expect("starting agent"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.cli(&["status"]).code != 0 {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("agent exited with {st}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not come up:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the agent with `signal` and waits for it to exit.
    pub fn stop(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), signal);
            let _ = c.wait();
        }
    }

    /// Runs the CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let out = Command::new(netiso_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running netiso");
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Registers `cgroup` as container `name` owning `ips`, plus extra flags.
    pub fn add(&self, name: &str, cgroup: &Path, ips: &[&str], extra: &[&str]) {
        let cg = cgroup.display().to_string();
        let mut args = vec!["container", "add", name, "--cgroup", &cg];
        for ip in ips {
            args.extend(["--ip", ip]);
        }
        args.extend_from_slice(extra);
        self.cli(&args).ok();
    }

    /// Sum of a container's counter.
    pub fn counter(&self, name: &str, counter: &str) -> u64 {
        let v = self.cli(&["--json", "container", "show", name]).ok().json();
        v["counters"][counter].as_u64().expect("counter")
    }

    /// `netiso agent --cleanup` with this agent's paths.
    pub fn cleanup(&self) -> CliOutput {
        let mut args = self.args();
        args.push("--cleanup".into());
        let out = Command::new(netiso_bin())
            .args(&args)
            .output()
            .expect("cleanup");
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGKILL);
        let _ = self.cleanup();
        let _ = fs::remove_dir_all(self.socket.parent().unwrap());
    }
}

/// One step's result as printed by netiso-probe.
#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    pub op: String,
    pub ok: bool,
    pub value: Option<String>,
    pub errno: Option<String>,
}

impl Step {
    /// The step's value (an address), asserting it succeeded.
    #[track_caller]
    pub fn addr(&self) -> &str {
        assert!(self.ok, "step {} failed with {:?}", self.op, self.errno);
        self.value.as_deref().expect("step has a value")
    }
    /// The errno name, asserting the step failed.
    #[track_caller]
    pub fn err(&self) -> &str {
        assert!(
            !self.ok,
            "step {} unexpectedly succeeded: {:?}",
            self.op, self.value
        );
        self.errno.as_deref().unwrap()
    }
}

fn probe_cmd(ns: &Netns, cgroup: &Path, steps: &[&str]) -> Command {
    let mut cmd = Command::new(probe_bin());
    cmd.arg("--netns")
        .arg(ns.path())
        .arg("--cgroup")
        .arg(cgroup)
        .args(steps);
    cmd
}

/// Runs netiso-probe to completion in `ns` and `cgroup`, returning its steps.
pub fn probe(ns: &Netns, cgroup: &Path, steps: &[&str]) -> Vec<Step> {
    let out = probe_cmd(ns, cgroup, steps)
        .stdin(Stdio::null())
        .output()
        .expect("probe");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad probe line {l:?}: {e}")))
        .collect()
}

/// Runs a probe and returns its last step (the one that failed, or the final one).
pub fn probe_last(ns: &Netns, cgroup: &Path, steps: &[&str]) -> Step {
    probe(ns, cgroup, steps)
        .pop()
        .expect("probe printed nothing")
}

/// A probe running in the background (a server); killed on drop.
pub struct Background {
    child: Child,
    _stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Step>,
}

impl Background {
    pub fn spawn(ns: &Netns, cgroup: &Path, steps: &[&str]) -> Background {
        let mut child = probe_cmd(ns, cgroup, steps)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("probe");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(s) = serde_json::from_str::<Step>(&l) {
                    let _ = tx.send(s);
                }
            }
        });
        let stdin = child.stdin.take();
        Background {
            child,
            _stdin: stdin,
            lines,
        }
    }

    /// Waits (up to 20 s) for the next step named `op` and returns it.
    #[track_caller]
    pub fn wait_for(&self, op: &str) -> Step {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(s) if s.op == op => return s,
                Ok(s) if !s.ok => panic!("background probe failed at {}: {:?}", s.op, s.errno),
                Ok(_) => continue,
                Err(_) => panic!("timed out waiting for background step {op}"),
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test world: namespace with documentation-range addresses on `lo`, cgroup subtree and agent.
pub struct World {
    pub ns: Netns,
    pub agent: Agent,
    pub cgroups: CgroupTree,
}

impl World {
    /// Namespace with 192.0.2.10/.11/.20 and 2001:db8::10/::11/::20 on lo.
    pub fn new(tag: &str) -> World {
        let ns = Netns::new(tag);
        for a in [
            "192.0.2.10/32",
            "192.0.2.11/32",
            "192.0.2.20/32",
            "198.51.100.1/32",
        ] {
            ns.add_addr(a);
        }
        for a in [
            "2001:db8::10/128",
            "2001:db8::11/128",
            "2001:db8::20/128",
            "2001:db8:1::1/128",
        ] {
            ns.add_addr(a);
        }
        let cgroups = CgroupTree::new(tag);
        let agent = Agent::with_netns(&cgroups, Some(ns.path()));
        World { ns, agent, cgroups }
    }

    /// A container cgroup registered with `ips` (and extra `container add` flags).
    pub fn container(&self, name: &str, ips: &[&str], extra: &[&str]) -> PathBuf {
        let cg = self.cgroups.child(name);
        self.agent.add(name, &cg, ips, extra);
        cg
    }

    /// An unregistered cgroup inside the test subtree (the hooks run there and must pass).
    pub fn host_cgroup(&self) -> PathBuf {
        self.cgroups.child("host")
    }
}

impl Netns {
    /// Connects this namespace to `peer` with a veth pair: `name` here with `addrs`, `peer_name`
    /// there with `peer_addrs` (CIDR; IPv6 ones `nodad`), both up. Deleting either namespace
    /// (or either end) deletes the pair.
    pub fn veth(
        &self,
        name: &str,
        addrs: &[&str],
        peer: &Netns,
        peer_name: &str,
        peer_addrs: &[&str],
    ) {
        self.ip(&[
            "link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", &peer.name,
        ]);
        for (ns, dev, addrs) in [(self, name, addrs), (peer, peer_name, peer_addrs)] {
            for a in addrs {
                let mut args = vec!["addr", "add", a, "dev", dev];
                if a.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args);
            }
            ns.ip(&["link", "set", dev, "up"]);
        }
    }

    /// The index of interface `name` in this namespace.
    pub fn ifindex(&self, name: &str) -> u32 {
        let out =
            run(Command::new("ip").args(["-n", &self.name, "-o", "link", "show", "dev", name]));
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex in {text:?}"))
    }
}
