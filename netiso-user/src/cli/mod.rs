//! The `netiso` command line: one module per command.
mod agent;
mod container;
mod dist;
mod docker_runtime;
mod events;
mod iface;
mod oci;
mod oci_hook;
mod output;
mod policy;
mod run;
mod stats;
mod status;

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{agent::DEFAULT_SOCKET, api::Mode, client::Client};

/// Exit status for a runtime failure (agent unreachable, request refused, I/O).
pub const EXIT_RUNTIME: i32 = 1;
/// Exit status for bad usage (clap's own errors use it too).
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser)]
#[command(
    name = "netiso",
    version,
    about = "Layer 3 network isolation for containers, enforced by eBPF cgroup socket hooks",
    long_about = "Layer 3 network isolation for containers, enforced by eBPF cgroup socket hooks.\n\n\
        A container is a cgroup v2 subtree that owns IPv4/IPv6 addresses. Its sockets may only bind to, \
        connect from and send from those addresses; wildcard binds are rewritten to the primary address. \
        `netiso agent` loads the datapath; every other command talks to it over its Unix socket."
)]
pub struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "NETISO_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the host agent in the foreground: load, attach and pin the datapath, serve the API.
    Agent(agent::AgentArgs),
    /// Show whether netiso is enforcing, where it is attached, and how many containers it knows.
    Status,
    /// Turn enforcement on again after `disable`.
    Enable,
    /// Make every hook pass through (programs stay attached); `enable` restores enforcement.
    Disable,
    /// Register, inspect and change containers.
    #[command(subcommand)]
    Container(ContainerCmd),
    /// Per-container traffic and what was refused or dropped. RX/TX: packets and bytes of the
    /// container's sockets. IF_RX/IF_TX: packets the interface programs (`netiso iface`)
    /// attributed to it by destination (rx) or source (tx) address.
    Stats,
    /// Refused, audited and dropped operations, newest last.
    Events {
        /// Keep printing new events until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Rules between containers: which may reach which.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Interfaces with the TC programs: per-container accounting by address, ingress policy
    /// and anti-spoofing on the wire.
    #[command(subcommand)]
    Iface(iface::IfaceCmd),
    /// Run a command in a new container: create a cgroup, register it, run CMD, clean up.
    Run(run::RunArgs),
    /// The OCI hook for Podman, CRI-O and other runtimes that run hooks: registers a
    /// container with io.netiso.* annotations at createRuntime, unregisters it at poststop.
    /// `netiso oci-hook install` makes the runtime call it.
    ///
    /// Annotations: io.netiso.ips (addresses separated by spaces, required; the first of each
    /// family is the primary), io.netiso.name (default: the container id), io.netiso.mode
    /// (enforce|audit), io.netiso.isolated and io.netiso.allow-raw (true|false). An invalid or
    /// unknown io.netiso.* annotation, or an agent that cannot be reached, fails the
    /// container. Reads the OCI state on stdin.
    OciHook(oci_hook::OciHookArgs),
    /// An OCI runtime for Docker that wraps runc and registers containers whose environment
    /// has NETISO_IPS: `dockerd --add-runtime netiso=/usr/local/bin/netiso-docker-runtime`
    /// (a symlink to netiso), then `docker run --runtime netiso --network host -e
    /// NETISO_IPS=... IMAGE`.
    ///
    /// Environment keys: NETISO_IPS, NETISO_NAME, NETISO_MODE, NETISO_ISOLATED,
    /// NETISO_ALLOW_RAW, read like the io.netiso.* annotations of `netiso oci-hook`. Every
    /// runc call passes through; `create` registers (a refusal deletes the container again),
    /// `delete` unregisters.
    DockerRuntime(docker_runtime::DockerRuntimeArgs),
}

/// Parses an interface name (it ends up in API paths and pin names).
pub(crate) fn iface_arg(s: &str) -> Result<String, String> {
    crate::api::validate_iface(s).map(|()| s.to_owned())
}

/// Parses a container name (it ends up in API paths and cgroup directory names).
pub(crate) fn name_arg(s: &str) -> Result<String, String> {
    crate::api::validate_name(s).map(|()| s.to_owned())
}

#[derive(Subcommand)]
pub enum ContainerCmd {
    /// Register an existing cgroup (and all its descendants) as a container owning addresses.
    Add(ContainerAdd),
    /// Unregister a container (its cgroup is left alone; sockets of it still using its
    /// addresses are destroyed).
    Rm {
        #[arg(value_parser = name_arg)]
        name: String,
    },
    /// List containers.
    Ls,
    /// Show one container with its counters.
    Show {
        #[arg(value_parser = name_arg)]
        name: String,
    },
    /// Set a container's mode: enforce refuses, audit only counts.
    Mode {
        #[arg(value_parser = name_arg)]
        name: String,
        mode: Mode,
    },
    /// Restrict a container's abstract unix sockets to listed names, or share the host's
    /// abstract namespace again. Restricted, its connects and sends to any other abstract name
    /// get ECONNREFUSED (as in a network namespace where no such socket exists); filesystem
    /// (pathname) sockets are not affected.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["allow", "none", "shared"])))]
    AbstractUnix {
        /// The container.
        #[arg(value_parser = name_arg)]
        name: String,
        /// A name it may reach, as `ss -x` shows it (`@name`); repeatable. Replaces the list.
        #[arg(long, value_name = "@NAME", value_parser = abstract_arg)]
        allow: Vec<String>,
        /// Restrict it to no abstract name at all.
        #[arg(long)]
        none: bool,
        /// Lift the restriction: share the host's abstract namespace (the default).
        #[arg(long)]
        shared: bool,
    },
    /// Grant or revoke addresses.
    #[command(subcommand)]
    Ip(IpCmd),
}

fn abstract_arg(s: &str) -> Result<String, String> {
    crate::api::abstract_name(s).map(|_| s.to_owned())
}

#[derive(Subcommand)]
pub enum IpCmd {
    /// Grant ADDR to container NAME.
    Add {
        #[arg(value_parser = name_arg)]
        name: String,
        addr: IpAddr,
    },
    /// Revoke ADDR from container NAME (not its last address). Sockets of NAME still using
    /// ADDR are destroyed.
    Rm {
        #[arg(value_parser = name_arg)]
        name: String,
        addr: IpAddr,
    },
    /// Move ADDR from one container to another in one step: at no moment do both or neither
    /// own it. Sockets of the first still using ADDR are destroyed.
    Move {
        addr: IpAddr,
        /// The container that owns ADDR now (it keeps at least one address).
        #[arg(long, value_parser = name_arg)]
        from: String,
        /// The container that gets it.
        #[arg(long, value_parser = name_arg)]
        to: String,
    },
}

#[derive(Args)]
#[group(id = "target", required = true, multiple = false, args = ["cgroup", "pid"])]
pub struct ContainerAdd {
    /// Container name (letters, digits, '-', '_', '.').
    #[arg(value_parser = name_arg)]
    pub name: String,
    /// The container's cgroup v2 directory: absolute, or relative to the cgroup2 mount.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Instead of --cgroup: the cgroup v2 directory that process PID is in (the agent reads
    /// /proc/PID/cgroup; PID as the agent's pid namespace sees it).
    #[arg(long)]
    pub pid: Option<u32>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Options shared by `container add` and `run`.
#[derive(Args, Clone)]
pub struct PolicyArgs {
    /// An owned address (repeatable); the first of each family is the primary.
    #[arg(long = "ip", value_name = "ADDR", required = true)]
    pub ips: Vec<IpAddr>,
    /// enforce (refuse) or audit (allow and count).
    #[arg(long, default_value = "enforce")]
    pub mode: Mode,
    /// Allow raw, SCTP and other sockets the address hooks cannot govern. WEAKENS ISOLATION:
    /// such sockets can use any source address.
    #[arg(long)]
    pub allow_raw: bool,
    /// Reachable only from containers a `netiso policy allow` rule lets in (others: EACCES on
    /// connect/send, packets dropped on arrival). Unregistered processes are not affected.
    #[arg(long)]
    pub isolated: bool,
    /// Restrict its abstract unix sockets to the names given with --abstract-allow (to none
    /// without any): other connects and sends get ECONNREFUSED. Without it, containers share
    /// the host's abstract unix namespace (see README, limitations).
    #[arg(long)]
    pub restrict_abstract: bool,
    /// An abstract unix name it may reach, as `ss -x` shows it (`@name`); repeatable; implies
    /// --restrict-abstract.
    #[arg(long = "abstract-allow", value_name = "@NAME", value_parser = abstract_arg)]
    pub abstract_allow: Vec<String>,
}

impl PolicyArgs {
    /// The abstract unix restriction the flags ask for (None: shared).
    pub fn abstract_unix(&self) -> Option<Vec<String>> {
        (self.restrict_abstract || !self.abstract_allow.is_empty())
            .then(|| self.abstract_allow.clone())
    }

    /// Rejects a repeated address before anything is sent to the agent.
    fn check(&self) -> Result<(), Failure> {
        for (i, ip) in self.ips.iter().enumerate() {
            if self.ips[..i].contains(ip) {
                return Err(Failure::Usage(format!("address {ip} is given twice")));
            }
        }
        Ok(())
    }
}

/// How a command failed, which decides the exit status.
pub enum Failure {
    Usage(String),
    Runtime(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Runtime(e.into())
    }
}

pub type CmdResult = Result<i32, Failure>;

/// The command line, with the alias `netiso-docker-runtime ARGS` read as
/// `netiso docker-runtime ARGS` (dockerd's `--add-runtime` takes a path, no arguments).
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let alias = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == docker_runtime::ALIAS);
    if alias {
        args.splice(0..1, ["netiso".into(), "docker-runtime".into()]);
    }
    args
}

/// Parses arguments, runs the command and returns the process exit status.
pub fn main() -> i32 {
    let args = args();
    // `netiso dist-files` (for `cargo xtask dist`) is no part of the command line it
    // documents: parsed on its own, it stays out of completions, man pages and help.
    if args.get(1).is_some_and(|a| a == dist::COMMAND) {
        return dist::main(&args[1..]);
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    if !matches!(cli.command, Command::Agent(_)) {
        // A CLI writing into a closed pipe (`netiso container ls | head`) should end quietly,
        // as every Unix tool does; Rust ignores SIGPIPE and would panic on the failed write.
        // SAFETY: restores the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let default_level = if matches!(cli.command, Command::Agent(_)) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_target(false)
        .init();
    let client = || Client::new(&cli.socket);
    let result = match &cli.command {
        Command::Agent(a) => agent::run(a, &cli.socket),
        Command::Status => status::status(&client(), cli.json),
        Command::Enable => status::toggle(&client(), cli.json, true),
        Command::Disable => status::toggle(&client(), cli.json, false),
        Command::Container(c) => container::run(&client(), cli.json, c),
        Command::Stats => stats::run(&client(), cli.json),
        Command::Policy(p) => policy::run(&client(), cli.json, p),
        Command::Events { follow } => events::run(&client(), cli.json, *follow),
        Command::Iface(i) => iface::run(&client(), cli.json, i),
        Command::Run(r) => run::run(&client(), r),
        Command::OciHook(h) => oci_hook::run(&cli.socket, h),
        Command::DockerRuntime(d) => docker_runtime::run(&cli.socket, d),
    };
    match result {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("netiso: usage error: {m}");
            EXIT_USAGE
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("netiso: error: {e:#}");
            EXIT_RUNTIME
        }
    }
}
