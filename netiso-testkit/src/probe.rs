//! Running netiso-probe, the socket prober, inside a test's namespace and cgroup.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::{probe_bin, Netns, World};

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
    /// Asserts the step succeeded.
    #[track_caller]
    pub fn done(&self) {
        assert!(self.ok, "step {} failed with {:?}", self.op, self.errno);
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

/// How a probe runs: as root (the default), or as a container process under the threat
/// model, without CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_BPF and CAP_PERFMON
/// (`Attacker`), or as a non-root uid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum As {
    Root,
    Attacker,
    Uid(u32),
}

fn probe_cmd(ns: &Netns, cgroup: &Path, steps: &[&str], who: As) -> Command {
    let mut cmd = Command::new(probe_bin());
    cmd.arg("--netns")
        .arg(ns.path())
        .arg("--cgroup")
        .arg(cgroup);
    match who {
        As::Root => {}
        As::Attacker => {
            cmd.args(["--caps", "container"]);
        }
        As::Uid(uid) => {
            cmd.arg("--uid").arg(uid.to_string());
        }
    }
    cmd.args(steps);
    cmd
}

/// Runs netiso-probe to completion in `ns` and `cgroup`, returning its steps.
pub fn probe(ns: &Netns, cgroup: &Path, steps: &[&str]) -> Vec<Step> {
    probe_as(ns, cgroup, steps, As::Root)
}

/// Like [`probe`], run as `who`.
pub fn probe_as(ns: &Netns, cgroup: &Path, steps: &[&str], who: As) -> Vec<Step> {
    let out = probe_cmd(ns, cgroup, steps, who)
        .stdin(Stdio::null())
        .output()
        .expect("probe");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_steps(String::from_utf8_lossy(&out.stdout).lines())
}

/// Parses netiso-probe's output lines, one JSON step each; panics on any other line.
pub(crate) fn parse_steps<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<Step> {
    lines
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
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Step>,
}

impl Background {
    pub fn spawn(ns: &Netns, cgroup: &Path, steps: &[&str]) -> Background {
        Background::spawn_as(ns, cgroup, steps, As::Root)
    }

    /// Like [`Background::spawn`], run as `who`.
    pub fn spawn_as(ns: &Netns, cgroup: &Path, steps: &[&str], who: As) -> Background {
        let mut child = probe_cmd(ns, cgroup, steps, who)
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
            stdin,
            lines,
        }
    }

    /// The probe's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("timed out waiting for background step {op}")
                }
            }
        }
    }
}

impl Background {
    /// Lets a probe waiting at a `pause` step go on.
    pub fn resume(&mut self) {
        use std::io::Write;
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"\n");
            let _ = stdin.flush();
        }
    }

    /// Waits (up to 20 s) for the next step, whatever it is.
    #[track_caller]
    pub fn next(&self) -> Step {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("timed out waiting for a background step"))
    }

    /// Closes the probe's stdin (ends `wait` and `bind-loop`) and returns the steps it
    /// printed from then on, once it has exited.
    pub fn finish(mut self) -> Vec<Step> {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(s) => out.push(s),
                Err(mpsc::RecvTimeoutError::Disconnected) => return out,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    assert!(Instant::now() < deadline, "background probe did not finish");
                }
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

/// What a client outside every container (the test's unregistered cgroup) receives from
/// ADDR over TCP: the server's text, or "error ERRNO" of the failed step.
pub fn served(w: &World, addr: &str) -> String {
    let last = probe_last(
        &w.ns,
        &w.host_cgroup(),
        &["socket tcp4", &format!("connect {addr}"), "recv"],
    );
    if last.ok {
        last.value.unwrap_or_default()
    } else {
        format!("error {}", last.errno.unwrap_or_default())
    }
}
