//! `netiso agent`: run the host agent, or remove everything it created (`--cleanup`).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;

use super::{iface_arg, CmdResult, Failure};
use crate::agent::{
    self, parse_group, parse_metrics_addr, service::Limits, AgentOptions, ConfigFile,
    DEFAULT_BPFFS, DEFAULT_SOCKET, DEFAULT_STATE_DIR,
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
    /// Let members of GROUP (name or number) use the API socket as well as root: the socket
    /// becomes root:GROUP 0660 and each connection's credentials are checked.
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    pub socket_group: Option<u32>,
    /// Also serve Prometheus metrics over HTTP on ADDR: PORT (on 127.0.0.1), HOST:PORT or
    /// [V6]:PORT. They are always on the API socket at GET /metrics.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// Most containers the registry and the kernel maps hold [default: 65536]. Applies to
    /// new pins; pinned maps keep the capacity they were made with.
    #[arg(long, value_name = "N")]
    pub max_containers: Option<u32>,
    /// Most owned addresses, all containers together (per family in the kernel maps)
    /// [default: 65536].
    #[arg(long, value_name = "N")]
    pub max_addresses: Option<u32>,
    /// Most addresses one container may own [default: 256].
    #[arg(long, value_name = "N")]
    pub max_addresses_per_container: Option<u32>,
    /// Seconds between checks that the programs are still attached (re-attached when not),
    /// that registered cgroups still exist (released when not) and that the state is saved.
    #[arg(long, value_name = "SECS", default_value = "30")]
    pub check_interval: u64,
    /// TOML file with any of: cgroup-root, bpffs, state-dir, socket, ifaces (a list),
    /// socket-group, metrics-addr, max-containers, max-addresses,
    /// max-addresses-per-container. Flags win.
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
        socket_group: match (args.socket_group, &file.socket_group) {
            (Some(g), _) => Some(g),
            (None, Some(g)) => Some(parse_group(g).map_err(Failure::Usage)?),
            (None, None) => None,
        },
        metrics_addr: match (args.metrics_addr, &file.metrics_addr) {
            (Some(a), _) => Some(a),
            (None, Some(a)) => Some(parse_metrics_addr(a).map_err(Failure::Usage)?),
            (None, None) => None,
        },
        limits: {
            let d = Limits::default();
            Limits {
                containers: args
                    .max_containers
                    .or(file.max_containers)
                    .unwrap_or(d.containers),
                addresses: args
                    .max_addresses
                    .or(file.max_addresses)
                    .unwrap_or(d.addresses),
                addresses_per_container: args
                    .max_addresses_per_container
                    .or(file.max_addresses_per_container)
                    .unwrap_or(d.addresses_per_container),
            }
        },
        check_interval: Duration::from_secs(args.check_interval.max(1)),
    };
    for (flag, v) in [
        ("--max-containers", opts.limits.containers),
        ("--max-addresses", opts.limits.addresses),
        (
            "--max-addresses-per-container",
            opts.limits.addresses_per_container,
        ),
    ] {
        if v == 0 {
            return Err(Failure::Usage(format!("{flag} must be at least 1")));
        }
    }
    if opts.limits.containers > crate::registry::LOOPBACK_SLOTS {
        return Err(Failure::Usage(format!(
            "--max-containers is at most {} (one private loopback address each)",
            crate::registry::LOOPBACK_SLOTS
        )));
    }
    if args.cleanup {
        agent::cleanup(opts)?;
    } else {
        agent::run(opts)?;
    }
    Ok(0)
}
