//! A `netiso agent` per test: its own pins, state and socket, attached at the test's cgroup
//! subtree, running in the test's network namespace.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use netiso_user::client::Client;

use crate::{netiso_bin, unique, CgroupTree};

/// Result of one `netiso` CLI call.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A finished process's exit code (-1 when killed by a signal) and output (lossily decoded).
impl From<Output> for CliOutput {
    fn from(out: Output) -> CliOutput {
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl CliOutput {
    /// The probe steps among the lines printed (a container running netiso-probe prints one
    /// JSON line per step).
    #[track_caller]
    pub fn steps(&self) -> Vec<crate::Step> {
        crate::probe::parse_steps(self.stdout.lines().filter(|l| l.starts_with('{')))
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
    #[track_caller]
    #[expect(
        clippy::return_self_not_must_use,
        reason = "an assertion; the result is there for chaining, not to be used"
    )]
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
    /// The umask the agent starts with (None: the test's).
    pub umask: Option<u32>,
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
            umask: None,
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
        self.start_with_env(extra, &[]);
    }

    /// Like [`Agent::start_with`], with extra environment variables (e.g. failpoints).
    pub fn start_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(netiso_bin());
        cmd.args(self.args())
            .args(extra)
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // setns rather than `ip netns exec`, which remounts /sys and hides bpffs.
        let ns = self
            .netns
            .as_ref()
            .map(|ns| fs::File::open(ns).unwrap_or_else(|e| panic!("opening {ns}: {e}")));
        let umask = self.umask;
        use std::os::unix::process::CommandExt;
        // SAFETY: only setns(2) and umask(2) run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(f) = &ns {
                    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                }
                if let Some(m) = umask {
                    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("starting agent"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.client().status().is_err() {
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
        out.into()
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

    /// The agent's process id (None when stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The names of the registered containers, sorted (the API lists them in name order).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .client()
            .containers()
            .expect("listing containers")
            .into_iter()
            .map(|c| c.name)
            .collect();
        names.sort();
        names
    }

    /// The registry in the agent's state store, as JSON (None: no state).
    pub fn state(&self) -> Option<serde_json::Value> {
        netiso_user::store::Store::dump(&self.state_dir)
            .unwrap_or_else(|e| panic!("reading the store in {}: {e}", self.state_dir.display()))
    }

    /// The typed API client, talking to this agent.
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// A container's counter (summed over CPUs).
    pub fn counter(&self, name: &str, counter: &str) -> u64 {
        let c = self
            .client()
            .container(name)
            .unwrap_or_else(|e| panic!("container {name}: {e}"));
        assert!(c.counters.contains_key(counter), "no counter {counter}");
        c.counter(counter)
    }

    /// `netiso agent --cleanup` with this agent's paths.
    pub fn cleanup(&self) -> CliOutput {
        let mut args = self.args();
        args.push("--cleanup".into());
        let out = Command::new(netiso_bin())
            .args(&args)
            .output()
            .expect("cleanup");
        out.into()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(nix::sys::signal::Signal::SIGKILL);
        let _ = self.cleanup();
        let _ = fs::remove_dir_all(self.socket.parent().unwrap());
    }
}
