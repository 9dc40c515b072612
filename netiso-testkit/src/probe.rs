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

use crate::{probe_bin, Netns};

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

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
