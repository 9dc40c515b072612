//! `netiso agent`: loads and pins the datapath, adopts earlier state, serves the API.
mod events;
mod http;
pub mod kernel;
pub mod service;
mod systemd;

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context};
use log::{info, warn};
use serde::Deserialize;

use crate::{
    cgroup,
    datapath::Datapath,
    state::{State, STATE_FILE},
};
use service::Service;

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/netiso";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netiso";
pub const DEFAULT_SOCKET: &str = "/run/netiso/netiso.sock";
/// Cgroups created by `netiso run` live here, below the cgroup root.
pub const RUN_CGROUP_DIR: &str = "netiso";

/// Agent settings after merging flags, config file and defaults.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub cgroup_root: Option<PathBuf>,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Interfaces to attach the TC programs to (added to those in the state).
    pub ifaces: Vec<String>,
}

/// The optional TOML config file (`--config`); flags win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub cgroup_root: Option<PathBuf>,
    pub bpffs: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub ifaces: Vec<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

fn resolve_root(opts: &AgentOptions) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mount = cgroup::mount_point()?;
    let root = match &opts.cgroup_root {
        Some(r) => fs::canonicalize(r)
            .with_context(|| format!("cgroup root {} does not exist", r.display()))?,
        None => mount.clone(),
    };
    if !root.starts_with(&mount) || !root.join("cgroup.procs").exists() {
        bail!(
            "cgroup root {} is not a cgroup v2 directory (cgroup2 is mounted at {})",
            root.display(),
            mount.display()
        );
    }
    Ok((mount, root))
}

/// Runs the agent in the foreground until SIGINT or SIGTERM. Pins stay behind on exit, so
/// enforcement continues; the next agent adopts them.
pub fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let failpoints = crate::failpoint::configured();
    if !failpoints.is_empty() {
        warn!(
            "{} is set: these steps will fail on purpose (a testing aid): {}",
            crate::failpoint::ENV,
            failpoints.join(", ")
        );
    }
    kernel::check()?;
    let (mount, root) = resolve_root(&opts)?;
    let state = State::load(&opts.state_dir)?;
    if let Some(prev) = &state.cgroup_root {
        if *prev != root {
            bail!(
                "the state in {} belongs to cgroup root {}, not {}; start with --cgroup-root {} or run `netiso agent --cleanup` first",
                opts.state_dir.display(), prev.display(), root.display(), prev.display()
            );
        }
    }
    // The socket first: an agent that cannot serve must not attach anything.
    let listener = bind_socket(&opts.socket)?;
    let started = Datapath::open(&opts.bpffs, &root)
        .with_context(|| format!("setting up the datapath under {}", opts.bpffs.display()))
        .and_then(|dp| {
            Service::start(
                dp,
                state,
                opts.state_dir.clone(),
                mount,
                root.clone(),
                &opts.ifaces,
            )
        });
    let mut service = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(&opts.socket);
            return Err(e);
        }
    };
    info!(
        "netiso agent ready: cgroup root {}, pins {}, state {}, API on {}",
        root.display(),
        opts.bpffs.display(),
        opts.state_dir.display(),
        opts.socket.display()
    );
    crate::failpoint::arm();
    let ring = service.take_events();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = http::Shared {
        service: Arc::new(Mutex::new(service)),
        events: Arc::default(),
    };
    let result = rt.block_on(async {
        match ring {
            Some(rb) => {
                let log = shared.events.clone();
                tokio::spawn(async move {
                    if let Err(e) = events::read(rb, log).await {
                        warn!("event reader stopped: {e}");
                    }
                });
            }
            None => warn!("no EVENTS ring buffer: `netiso events` will stay empty"),
        }
        // The socket is listening already; requests are answered as soon as serving starts.
        systemd::ready(&format!("serving the API on {}", opts.socket.display()));
        http::serve_on(listener, shared, systemd::stopping).await
    });
    let _ = fs::remove_file(&opts.socket);
    info!("agent stopped; the pinned programs keep enforcing");
    result
}

fn bind_socket(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent already serves {}; stop it or pick another --socket",
                path.display()
            );
        }
        fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding API socket {}", path.display()))?;
    // The API changes kernel policy: root only.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// `netiso agent --cleanup`: detach and remove everything netiso created.
pub fn cleanup(opts: AgentOptions) -> anyhow::Result<()> {
    let state = State::load(&opts.state_dir).unwrap_or_else(|e| {
        warn!("{e}; cleaning up without it");
        State::default()
    });
    let removed = Datapath::remove_pins(&opts.bpffs)
        .with_context(|| format!("removing pins under {}", opts.bpffs.display()))?;
    eprintln!(
        "removed {} pinned object(s) under {}",
        removed.len(),
        opts.bpffs.display()
    );
    let root = state
        .cgroup_root
        .clone()
        .or_else(|| resolve_root(&opts).ok().map(|(_, r)| r));
    if let Some(root) = root {
        let run_dir = root.join(RUN_CGROUP_DIR);
        if run_dir.exists() {
            match cgroup::remove_tree(&run_dir) {
                Ok(()) => eprintln!("removed cgroups under {}", run_dir.display()),
                Err(e) => warn!("{e} (processes still running there?)"),
            }
        }
    }
    for f in [opts.state_dir.join(STATE_FILE), opts.socket.clone()] {
        match fs::remove_file(&f) {
            Ok(()) => eprintln!("removed {}", f.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", f.display())),
        }
    }
    let _ = fs::remove_dir(&opts.state_dir);
    Ok(())
}
