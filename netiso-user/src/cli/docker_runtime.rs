//! `netiso docker-runtime`: an OCI runtime for Docker (`dockerd --add-runtime`) that wraps
//! runc. Docker runs no OCI hooks, so the wrapper takes their place: every call goes to runc
//! unchanged, except that
//! - `create` of a container whose environment has `NETISO_IPS` registers it once runc has
//!   created it (its init is in its cgroup, the user program has not started); if the agent
//!   refuses, the container is deleted again and `create` fails: fail closed;
//! - `delete` of such a container unregisters it after runc deleted it.
//!
//! Installed under the name `netiso-docker-runtime` (a symlink to `netiso`), the binary
//! behaves as `netiso docker-runtime`, which is what `--add-runtime NAME=PATH` needs.
use std::{
    fs,
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use oci_spec::runtime::{Spec, State};

use super::{
    oci::{self, KeySource, Keys, Unregistered},
    CmdResult,
};
use crate::client::Client;

/// The program name under which `netiso` acts as `netiso docker-runtime`.
pub const ALIAS: &str = "netiso-docker-runtime";

#[derive(Args)]
pub struct DockerRuntimeArgs {
    /// The runc binary every call is passed to.
    #[arg(long, env = "NETISO_RUNC", value_name = "PATH", default_value = "runc")]
    pub runc: PathBuf,
    /// Give up on the agent after SECS seconds; the container then fails to start.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
    /// runc's own arguments, exactly as dockerd (containerd's shim) passes them.
    #[arg(
        value_name = "RUNC_ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..
    )]
    pub args: Vec<String>,
}

/// runc's global options that take a value.
const GLOBAL_WITH_VALUE: [&str; 5] = ["--log", "--log-format", "--root", "--criu", "--rootless"];

/// One runc invocation, split into its parts.
struct Call<'a> {
    globals: &'a [String],
    command: &'a str,
    rest: &'a [String],
}

impl<'a> Call<'a> {
    fn parse(args: &'a [String]) -> Option<Call<'a>> {
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if !a.starts_with('-') {
                return Some(Call {
                    globals: &args[..i],
                    command: a,
                    rest: &args[i + 1..],
                });
            }
            i += if GLOBAL_WITH_VALUE.contains(&a) { 2 } else { 1 };
        }
        None
    }

    /// The value of a global option (`--log FILE` or `--log=FILE`).
    fn global(&self, name: &str) -> Option<&'a str> {
        option(self.globals, name, None)
    }

    /// The container id: runc takes it as the last argument.
    fn id(&self) -> Option<&'a str> {
        self.rest
            .last()
            .map(String::as_str)
            .filter(|a| !a.starts_with('-'))
    }

    fn bundle(&self) -> PathBuf {
        option(self.rest, "--bundle", Some("-b")).map_or_else(|| PathBuf::from("."), PathBuf::from)
    }
}

fn option<'a>(args: &'a [String], long: &str, short: Option<&str>) -> Option<&'a str> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == long || Some(a.as_str()) == short {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            return Some(v);
        }
    }
    None
}

struct Runtime<'a> {
    runc: &'a Path,
    call: Call<'a>,
    args: &'a [String],
    socket: &'a Path,
    timeout: Duration,
}

pub fn run(socket: &Path, a: &DockerRuntimeArgs) -> CmdResult {
    let Some(call) = Call::parse(&a.args) else {
        // `--version`, `--help` and the like: runc's answer.
        return Ok(exec(&a.runc, &a.args));
    };
    let rt = Runtime {
        runc: &a.runc,
        call,
        args: &a.args,
        socket,
        timeout: Duration::from_secs(a.timeout),
    };
    let result = match rt.call.command {
        "create" => rt.create(),
        "delete" => rt.delete(),
        "run" => rt.refuse_run(),
        _ => Ok(exec(rt.runc, rt.args)),
    };
    result.map_err(|e| {
        // main prints it on stderr too.
        rt.runtime_log(&format!("netiso: {e:#}"));
        e.into()
    })
}

/// Replaces this process with runc (same arguments, descriptors and environment).
fn exec(runc: &Path, args: &[String]) -> i32 {
    let e = Command::new(runc).args(args).exec();
    eprintln!("netiso: running {}: {e}", runc.display());
    super::EXIT_RUNTIME
}

/// The netiso keys in a bundle's config.json (process.env).
fn bundle_keys(bundle: &Path) -> anyhow::Result<Option<Keys>> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).with_context(|| format!("reading {}", path.display()))?;
    let env = spec
        .process()
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default();
    Ok(oci::parse(KeySource::Env, oci::env_pairs(&env))?)
}

impl Runtime<'_> {
    fn runc(&self) -> Command {
        let mut c = Command::new(self.runc);
        c.args(self.call.globals);
        c
    }

    /// Runs runc with the call's arguments and waits: Some(exit code) when it failed.
    fn pass_failed(&self) -> anyhow::Result<Option<i32>> {
        let status = Command::new(self.runc)
            .args(self.args)
            .status()
            .with_context(|| format!("running {}", self.runc.display()))?;
        Ok((!status.success()).then(|| status.code().unwrap_or(super::EXIT_RUNTIME)))
    }

    fn client(&self) -> Client {
        Client::new(self.socket).with_timeout(self.timeout)
    }

    fn id(&self) -> anyhow::Result<&str> {
        self.call
            .id()
            .ok_or_else(|| anyhow!("runc {}: no container id", self.call.command))
    }

    fn create(&self) -> anyhow::Result<i32> {
        let Some(keys) = bundle_keys(&self.call.bundle())? else {
            return Ok(exec(self.runc, self.args));
        };
        let id = self.id()?;
        if let Some(code) = self.pass_failed()? {
            return Ok(code);
        }
        let registered = self
            .init_pid(id)
            .and_then(|pid| keys.register(&self.client(), id, pid));
        if let Err(e) = registered {
            // Nothing of the container may run unconfined: delete it again.
            let deleted = self.runc().args(["delete", "--force", id]).status();
            if !deleted.is_ok_and(|s| s.success()) {
                log::error!("deleting container {id} after the failed registration failed");
            }
            return Err(e);
        }
        Ok(0)
    }

    /// The pid of the created container's init: from `--pid-file`, else `runc state`.
    fn init_pid(&self, id: &str) -> anyhow::Result<u32> {
        if let Some(file) = option(self.call.rest, "--pid-file", None) {
            let text =
                fs::read_to_string(file).with_context(|| format!("reading pid file {file}"))?;
            return text
                .trim()
                .parse()
                .with_context(|| format!("pid file {file} holds {text:?}"));
        }
        let state = self.state(id)?;
        state
            .pid()
            .filter(|p| *p > 0)
            .map(|p| p as u32)
            .ok_or_else(|| anyhow!("runc state of {id} shows no pid"))
    }

    fn state(&self, id: &str) -> anyhow::Result<State> {
        let out = self
            .runc()
            .args(["state", id])
            .stderr(Stdio::null())
            .output()
            .with_context(|| format!("running {} state", self.runc.display()))?;
        if !out.status.success() {
            bail!("runc state {id} failed");
        }
        serde_json::from_slice(&out.stdout).context("parsing runc state")
    }

    fn delete(&self) -> anyhow::Result<i32> {
        let id = self.id()?;
        // The bundle (and so the keys) can only be found while runc still knows the container.
        let keys = self
            .state(id)
            .ok()
            .and_then(|s| bundle_keys(s.bundle()).ok().flatten());
        let Some(keys) = keys else {
            return Ok(exec(self.runc, self.args));
        };
        if let Some(code) = self.pass_failed()? {
            // The container may still run: it stays registered.
            return Ok(code);
        }
        let name = keys.name(id)?;
        let problem = match oci::unregister(&self.client(), &name) {
            Ok(Unregistered::StillRunning) => Some(format!(
                "container {name:?} left registered: its registered cgroup still has processes (two containers with the same NETISO_NAME?)"
            )),
            Ok(_) => None,
            Err(e) => Some(format!("{e:#}")),
        };
        // runc deleted the container: report, but do not fail the delete.
        if let Some(p) = problem {
            log::warn!("{p}");
            self.runtime_log(&format!("netiso: {p}"));
        }
        Ok(0)
    }

    /// `runc run` creates and starts in one step: there is no moment to register between.
    fn refuse_run(&self) -> anyhow::Result<i32> {
        if bundle_keys(&self.call.bundle())?.is_some() {
            bail!("`runc run` cannot be governed (no moment between create and start); use create and start");
        }
        Ok(exec(self.runc, self.args))
    }

    /// Writes an error into runc's log (`--log`), where containerd's shim reads the reason a
    /// runtime call failed.
    fn runtime_log(&self, msg: &str) {
        let Some(log) = self.call.global("--log") else {
            return;
        };
        let line = if self.call.global("--log-format") == Some("json") {
            serde_json::json!({ "level": "error", "msg": msg }).to_string()
        } else {
            format!("level=error msg={msg:?}")
        };
        let written = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            eprintln!("netiso: writing the runtime log {log}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn splits_a_shim_call() {
        let a = args("--root /r --log /l.json --log-format json --systemd-cgroup create --bundle /b --pid-file /p id1");
        let c = Call::parse(&a).unwrap();
        assert_eq!(c.command, "create");
        assert_eq!(c.global("--log"), Some("/l.json"));
        assert_eq!(c.global("--log-format"), Some("json"));
        assert_eq!(c.bundle(), PathBuf::from("/b"));
        assert_eq!(option(c.rest, "--pid-file", None), Some("/p"));
        assert_eq!(c.id(), Some("id1"));

        let a = args("--log=/l delete --force id2");
        let c = Call::parse(&a).unwrap();
        assert_eq!((c.command, c.id()), ("delete", Some("id2")));
        assert_eq!(c.global("--log"), Some("/l"));

        let a = args("create -b /x id3");
        assert_eq!(Call::parse(&a).unwrap().bundle(), PathBuf::from("/x"));
        let a = args("create id4");
        assert_eq!(Call::parse(&a).unwrap().bundle(), PathBuf::from("."));
        assert!(Call::parse(&args("--version")).is_none());
    }
}
