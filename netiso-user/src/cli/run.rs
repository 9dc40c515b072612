//! `netiso run`: run a command inside a fresh container and clean up when it exits.
use std::{
    fs,
    io::Write,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use log::warn;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};

use super::{CmdResult, Failure, PolicyArgs};
use crate::{agent::RUN_CGROUP_DIR, api::AddContainer, cgroup, client::Client};

#[derive(Args)]
pub struct RunArgs {
    /// Container name; its cgroup is <cgroup root>/netiso/NAME.
    #[arg(long, value_parser = super::name_arg)]
    pub name: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn run(client: &Client, args: &RunArgs) -> CmdResult {
    args.policy.check()?;
    let status = client.status()?;
    let dir = status.cgroup_root.join(RUN_CGROUP_DIR);
    let cg = dir.join(&args.name);
    if cg.exists() {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "cgroup {} already exists (is a container named {:?} running?)",
            cg.display(),
            args.name
        )));
    }
    cgroup::create(&cg)?;
    let req = AddContainer {
        name: args.name.clone(),
        cgroup: Some(cg.clone()),
        pid: None,
        ips: args.policy.ips.clone(),
        mode: args.policy.mode,
        allow_raw: args.policy.allow_raw,
        isolated: args.policy.isolated,
        abstract_unix: args.policy.abstract_unix(),
    };
    if let Err(e) = client.add_container(&req) {
        let _ = cgroup::remove_tree(&cg);
        return Err(e.into());
    }
    let result = spawn_and_wait(&cg, &args.command);
    // Leftover processes are killed before the container is unregistered: nothing of it may
    // run without its policy.
    let mut problems = Vec::new();
    if let Err(e) = cgroup::kill_all(&cg, Duration::from_secs(10)) {
        problems.push(e.to_string());
    }
    if let Err(e) = client.remove_container(&args.name) {
        problems.push(format!("unregistering {}: {e}", args.name));
    }
    if let Err(e) = cgroup::remove_tree(&cg) {
        problems.push(e.to_string());
    }
    for p in &problems {
        warn!("cleanup: {p}");
    }
    result
}

fn spawn_and_wait(cg: &std::path::Path, command: &[String]) -> CmdResult {
    let procs: PathBuf = cg.join("cgroup.procs");
    let mut join = fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {}", procs.display()))?;
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: only write(2) on an already open fd happens between fork and exec.
    unsafe {
        cmd.pre_exec(move || join.write_all(b"0"));
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", command[0]))?;
    // Forward termination signals; the terminal already sends SIGINT/SIGQUIT to the child.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGINT, SIGQUIT])?;
    let handle = signals.handle();
    let pid = child.id() as i32;
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == SIGTERM || sig == SIGHUP {
                // SAFETY: plain kill(2) on our child's pid.
                unsafe { libc::kill(pid, sig) };
            }
        }
    });
    let status = child.wait().context("waiting for the command")?;
    handle.close();
    let _ = forwarder.join();
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    })
}
