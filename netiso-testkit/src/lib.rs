//! What netiso's privileged tests, the benchmark and the demo share.
//!
//! Every test builds its own world and tears it down on drop, also when it fails: a network
//! namespace ([`Netns`]), a cgroup subtree ([`CgroupTree`]) and an agent ([`Agent`]) attached
//! at that subtree with its own pins, state and socket. Nothing is attached at the machine's
//! root cgroup and no traffic leaves the test's namespace. [`probe`] runs socket operations
//! inside a namespace and cgroup, [`craft`] builds frames, [`bpf`] runs the agent's programs
//! on them, [`runtimes`] drives Podman and Docker inside a test's world, and
//! [`privileged_tests!`] is the `main` of every integration test file.
mod agent;
pub mod bpf;
mod cgroups;
pub mod craft;
mod loops;
mod netns;
mod probe;
pub mod rawhttp;
mod runner;
pub mod runtimes;
mod world;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub use agent::{Agent, CliOutput};
pub use cgroups::CgroupTree;
pub use loops::BindLoop;
pub use netns::Netns;
pub use probe::{probe, probe_as, probe_last, served, As, Background, Step};
pub use runner::{missing_privilege, run_privileged};
pub use world::World;

/// Probe flags (before the steps) that make the probe run as the threat model's attacker: root
/// as a container runtime leaves it, without CAP_NET_ADMIN, NET_RAW, SYS_ADMIN, BPF and PERFMON
/// (and with every other capability, the strongest such process).
pub const NO_CAPS: [&str; 2] = ["--caps", "container"];
/// Probe flags that make it run as an unprivileged user (nobody).
pub const NOBODY: [&str; 2] = ["--uid", "65534"];

/// `flags` followed by `steps`, for a probe call.
pub fn with<'a>(flags: [&'a str; 2], steps: &[&'a str]) -> Vec<&'a str> {
    flags.iter().chain(steps).copied().collect()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(tag: &str) -> String {
    format!(
        "nt-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The cgroup v2 mount point (where tests make their subtrees).
pub fn cgroup2_mount() -> Option<PathBuf> {
    netiso_user::cgroup::mount_point().ok()
}

/// Directory holding the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("NETISO_BIN_DIR") {
        return d.into();
    }
    // target/debug/deps/<test-binary> -> target/debug
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_owned()
    } else {
        dir.to_owned()
    }
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

/// Runs `cmd` (stdin: /dev/null) to completion and returns its exit code and output, whatever
/// the code; panics only when it cannot be started.
pub fn output(cmd: &mut Command) -> CliOutput {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
        .into()
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

/// Tears a cgroup subtree down (kill, wait, remove): `netiso_user::cgroup::destroy`, the
/// one copy, with errors ignored for use in `Drop`.
pub fn destroy_cgroup(path: &Path, timeout: Duration) {
    if let Err(e) = netiso_user::cgroup::destroy(path, timeout) {
        eprintln!("warning: tearing down {}: {e}", path.display());
    }
}
