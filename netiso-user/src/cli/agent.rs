//! `netiso agent`: run the host agent, or remove everything it created (`--cleanup`).
use std::path::{Path, PathBuf};

use clap::Args;

use super::{iface_arg, CmdResult};
use crate::agent::{
    self, AgentOptions, ConfigFile, DEFAULT_BPFFS, DEFAULT_SOCKET, DEFAULT_STATE_DIR,
};

#[derive(Args)]
pub struct AgentArgs {
    /// cgroup the programs attach to; only processes below it can be governed
    /// [default: the cgroup v2 mount]
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/netiso]
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// Directory for the agent's state file [default: /var/lib/netiso]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Attach the per-interface TC programs (address-based accounting, ingress policy,
    /// anti-spoofing) to IFACE; repeatable. Kept in the state like `netiso iface add`.
    #[arg(long = "iface", value_name = "IFACE", value_parser = iface_arg)]
    pub ifaces: Vec<String>,
    /// TOML file with any of: cgroup-root, bpffs, state-dir, socket, ifaces (a list). Flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Detach and remove everything netiso created (pins, state, socket, `netiso run` cgroups)
    /// instead of running. Refuses while an agent runs on the same pins.
    #[arg(long)]
    pub cleanup: bool,
}

pub fn run(args: &AgentArgs, socket_flag: &Path) -> CmdResult {
    let file = match &args.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    // The global --socket has a default; the config file only wins over that default.
    let socket = if socket_flag == Path::new(DEFAULT_SOCKET) {
        file.socket.unwrap_or_else(|| socket_flag.to_owned())
    } else {
        socket_flag.to_owned()
    };
    let opts = AgentOptions {
        cgroup_root: args.cgroup_root.clone().or(file.cgroup_root),
        bpffs: args
            .bpffs
            .clone()
            .or(file.bpffs)
            .unwrap_or_else(|| DEFAULT_BPFFS.into()),
        state_dir: args
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
        socket,
        ifaces: args.ifaces.iter().chain(&file.ifaces).cloned().collect(),
    };
    if args.cleanup {
        agent::cleanup(opts)?;
    } else {
        agent::run(opts)?;
    }
    Ok(0)
}
