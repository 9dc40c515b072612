//! `netiso agent`: loads and pins the datapath, adopts the registry, serves the API.
mod events;
mod http;
pub mod kernel;
mod metrics;
pub mod service;
mod systemd;
mod watch;

use std::{
    fs, io,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context};
use log::{error, info, warn};
use serde::Deserialize;
use tokio::io::unix::AsyncFd;

use crate::{
    cgroup,
    datapath::{Capacity, Datapath},
    state::{State, STATE_FILE},
    store::{Store, STORE_FILE},
};
pub use http::Limits as ApiLimits;
use service::{Limits, Paths, Service};

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
    /// Members of this group may use the API socket too (root always may).
    pub socket_group: Option<u32>,
    /// Serve `/metrics` on this TCP address as well.
    pub metrics_addr: Option<SocketAddr>,
    pub limits: Limits,
    /// How often programs, cgroups and the store are checked.
    pub check_interval: Duration,
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
    pub socket_group: Option<String>,
    pub metrics_addr: Option<String>,
    pub max_containers: Option<u32>,
    pub max_addresses: Option<u32>,
    pub max_addresses_per_container: Option<u32>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

/// `--metrics-addr`: PORT, HOST:PORT or [V6]:PORT; a bare port listens on 127.0.0.1.
pub fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("invalid metrics address {s:?}: give PORT (loopback), HOST:PORT or [V6]:PORT")
    })
}

/// `--socket-group`: a group name or number.
pub fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no group named {s:?}")),
        Err(e) => Err(format!("looking up group {s:?}: {e}")),
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
    let store = Store::open(&opts.state_dir).with_context(|| {
        format!(
            "opening the state in {} (the pins are under {})",
            opts.state_dir.display(),
            opts.bpffs.display()
        )
    })?;
    let persisted = store.load()?;
    let legacy = if persisted.is_none() {
        State::load(&opts.state_dir)?
    } else {
        None
    };
    // The socket first: an agent that cannot serve must not attach anything.
    let listener = bind_socket(&opts.socket, opts.socket_group)?;
    let metrics_listener = match opts.metrics_addr {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding --metrics-addr {addr}"))?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        None => None,
    };
    let capacity = Capacity {
        containers: opts.limits.containers,
        addresses: opts.limits.addresses,
        ..Capacity::default()
    };
    let paths = Paths {
        state_dir: opts.state_dir.clone(),
        bpffs: opts.bpffs.clone(),
        mount,
        root: root.clone(),
    };
    let imported = legacy.is_some();
    let started = Datapath::open(&opts.bpffs, &root, capacity)
        .with_context(|| format!("setting up the datapath under {}", opts.bpffs.display()))
        .and_then(|dp| {
            let cap = dp.capacity();
            if cap.containers != capacity.containers || cap.addresses != capacity.addresses {
                warn!(
                    "the pinned maps under {} hold {} containers and {} addresses (asked: {} and {}); \
                     their capacity stays until the pins are made anew (see README, Capacity)",
                    opts.bpffs.display(),
                    cap.containers,
                    cap.addresses,
                    capacity.containers,
                    capacity.addresses
                );
            }
            Service::start(
                dp,
                store,
                persisted,
                legacy,
                paths,
                opts.limits,
                &opts.ifaces,
                watch::CgroupWatch::new(),
            )
        });
    let mut service = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(&opts.socket);
            return Err(e);
        }
    };
    if imported {
        let old = opts.state_dir.join(STATE_FILE);
        let kept = opts.state_dir.join(format!("{STATE_FILE}.imported"));
        if let Err(e) = fs::rename(&old, &kept) {
            warn!("renaming {} after the import: {e}", old.display());
        }
    }
    service.periodic();
    info!(
        "netiso agent ready: cgroup root {}, pins {}, state {}, API on {}{}",
        root.display(),
        opts.bpffs.display(),
        opts.state_dir.join(STORE_FILE).display(),
        opts.socket.display(),
        opts.metrics_addr
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    crate::failpoint::arm();
    let ring = service.take_events();
    let watch_fd = service.watch_fd();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = http::Shared {
        service: Arc::new(Mutex::new(service)),
        events: Arc::default(),
        limits: http::Limits::default(),
    };
    let access = http::Access {
        group: opts.socket_group,
    };
    let result = rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            info!("stopping");
            systemd::stopping();
            let _ = stop_tx.send(true);
        });
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
        if let Some(fd) = watch_fd {
            let svc = shared.service.clone();
            tokio::spawn(async move {
                if let Err(e) = watch_cgroups(fd, svc).await {
                    error!("cgroup watch stopped ({e}); the periodic check still releases removed cgroups");
                }
            });
        }
        {
            let svc = shared.service.clone();
            let every = opts.check_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    svc.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .periodic();
                }
            });
        }
        let metrics_task = metrics_listener.map(|l| {
            let shared = shared.clone();
            let rx = stop_rx.clone();
            tokio::spawn(async move {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => http::serve_metrics(l, shared, rx).await,
                    Err(e) => error!("metrics listener: {e}"),
                }
            })
        });
        // The socket is listening already; requests are answered as soon as serving starts.
        systemd::ready(&format!("serving the API on {}", opts.socket.display()));
        let r = http::serve_unix(listener, shared, access, stop_rx).await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        r
    });
    // Tasks still running (the event reader, the watch) end with the runtime.
    rt.shutdown_timeout(Duration::from_millis(200));
    let _ = fs::remove_file(&opts.socket);
    info!("agent stopped; the pinned programs keep enforcing");
    result
}

/// Releases containers as soon as the watch sees their cgroup removed.
async fn watch_cgroups(fd: std::os::fd::OwnedFd, svc: Arc<Mutex<Service>>) -> io::Result<()> {
    // SAFETY: the AsyncFd owns the descriptor (a duplicate of the watch's) and nothing else
    // closes it while it is registered.
    let fd = unsafe { AsyncFd::register(fd) }?;
    loop {
        let mut guard = fd.readable().await?;
        svc.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .handle_watch();
        guard.clear_ready();
    }
}

/// Binds the API socket with its final mode from the start: the bind happens under umask
/// 0177, so the socket is created 0600 (root only) and never wider; with `--socket-group`
/// it is then given to that group and opened to it (0660). Peer credentials are checked on
/// every connection as well (see `http::Access`).
fn bind_socket(
    path: &Path,
    group: Option<u32>,
) -> anyhow::Result<std::os::unix::net::UnixListener> {
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
    // The agent has no other thread yet, so the process-wide umask change affects nothing else.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = bound.with_context(|| format!("binding API socket {}", path.display()))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    }
    l.set_nonblocking(true)?;
    Ok(l)
}

/// `netiso agent --cleanup`: detach and remove everything netiso created.
pub fn cleanup(opts: AgentOptions) -> anyhow::Result<()> {
    let root = Store::open(&opts.state_dir)
        .ok()
        .and_then(|s| s.load().ok().flatten())
        .and_then(|r| r.cgroup_root)
        .or_else(|| resolve_root(&opts).ok().map(|(_, r)| r));
    let removed = Datapath::remove_pins(&opts.bpffs)
        .with_context(|| format!("removing pins under {}", opts.bpffs.display()))?;
    eprintln!(
        "removed {} pinned object(s) under {}",
        removed.len(),
        opts.bpffs.display()
    );
    if let Some(root) = root {
        let run_dir = root.join(RUN_CGROUP_DIR);
        if run_dir.exists() {
            match cgroup::remove_tree(&run_dir) {
                Ok(()) => eprintln!("removed cgroups under {}", run_dir.display()),
                Err(e) => warn!("{e} (processes still running there?)"),
            }
        }
    }
    let mut files = vec![opts.socket.clone()];
    for name in [
        STORE_FILE.to_owned(),
        format!("{STORE_FILE}-wal"),
        format!("{STORE_FILE}-shm"),
        STATE_FILE.to_owned(),
        format!("{STATE_FILE}.imported"),
    ] {
        files.push(opts.state_dir.join(name));
    }
    for f in files {
        match fs::remove_file(&f) {
            Ok(()) => eprintln!("removed {}", f.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", f.display())),
        }
    }
    let _ = fs::remove_dir(&opts.state_dir);
    Ok(())
}
