//! The loaded eBPF datapath: one struct owns the programs, their pinned links and maps, and
//! exposes domain operations (register a container, grant and revoke addresses, rules,
//! enable/disable, interfaces). It knows nothing of the API or the state file: the agent's
//! service translates its records into [`Entry`] values.
//!
//! Everything is pinned under the bpffs directory (`maps/`, `links/`, `progs/`), so
//! enforcement outlives the agent. A new agent adopts the pins: maps are reused by name and
//! each pinned link is switched to the freshly loaded program with BPF_LINK_UPDATE, which is
//! atomic, so a restart (or kill -9) never opens a gap.
mod attach;
mod maps;
mod per_container;
mod raw_bpf;
mod tc;
mod unix;

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, MapError, RingBuf},
    programs::ProgramError,
    Ebpf, EbpfError, EbpfLoader,
};
use log::debug;
use netiso_common::{
    Container, ContainerId, FLAG_ALLOW_RAW, FLAG_AUDIT, FLAG_DENY_RULES, FLAG_HAS_V4, FLAG_HAS_V6,
    FLAG_ISOLATED,
};
use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

pub use attach::{LinkState, PER_CONTAINER, PROGRAMS, STEER};
pub use maps::{Capacity, Snapshot};
pub use tc::{IfaceStatus, TC_PROGRAMS};
pub use unix::UNIX_PROGRAMS;

use crate::sys;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netiso"));

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("{0} is not on a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NoBpffs(PathBuf),
    #[error("another netiso agent is running on {0} (its lock is held); stop it first")]
    Locked(PathBuf),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("link of {name}: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("map {name}: {}", map_error_text(source))]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("interface {name:?}: {source} (see `ip link`; the agent's network namespace is what counts)")]
    NoIface { name: String, source: io::Error },
    #[error("interface {name:?} has link type {link_type}; netiso's TC programs parse Ethernet frames, so only Ethernet-like and loopback interfaces are supported")]
    NotEthernet { name: String, link_type: u16 },
    #[error("pinned map {path} has {found:?} (key, value) bytes, this netiso needs {expected:?}: it was made by another netiso version; run `netiso agent --cleanup` with the same --bpffs and --state-dir (this forgets the registry), or run the matching version")]
    IncompatiblePin {
        path: PathBuf,
        found: (u32, u32),
        expected: (u32, u32),
    },
    /// A map is full: its capacity (`--max-containers`, `--max-addresses`) is reached.
    #[error("{what} is full ({capacity} entries, map {map}); raise {flag} (see README, Capacity)")]
    Full {
        map: &'static str,
        what: &'static str,
        flag: &'static str,
        capacity: u32,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A map error with the kernel's errno, which aya's own message leaves out.
fn map_error_text(e: &MapError) -> String {
    match e {
        MapError::SyscallError(s) => format!("{e}: {}", s.io_error),
        e => e.to_string(),
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn program_err(name: &'static str) -> impl Fn(ProgramError) -> DatapathError {
    move |source| DatapathError::Program { name, source }
}

fn link_err(name: &'static str) -> impl Fn(aya::programs::links::LinkError) -> DatapathError {
    move |source| DatapathError::Link { name, source }
}

/// Holds the exclusive lock on a bpffs directory: one agent (or cleanup) per set of pins.
pub struct PinLock(#[allow(dead_code)] Flock<fs::File>);

impl PinLock {
    pub fn acquire(bpffs: &Path) -> Result<PinLock, DatapathError> {
        let parent = bpffs.parent().unwrap_or(Path::new("/"));
        if !sys::is_bpffs(parent) && !sys::is_bpffs(bpffs) {
            return Err(DatapathError::NoBpffs(parent.to_owned()));
        }
        fs::create_dir_all(bpffs).map_err(io_err("creating", bpffs))?;
        let dir = fs::File::open(bpffs).map_err(io_err("opening", bpffs))?;
        Flock::lock(dir, FlockArg::LockExclusiveNonblock)
            .map(PinLock)
            .map_err(|_| DatapathError::Locked(bpffs.to_owned()))
    }
}

/// A container as the datapath needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent switches of a container, mirrored from the state"
)]
pub struct Entry {
    pub id: ContainerId,
    /// The cgroup's path, id (its inode number) and depth below the cgroup2 mount.
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub cgroup_level: u32,
    /// Owned addresses; the first of each family is the primary.
    pub ips: Vec<IpAddr>,
    /// The private loopback address (127.0.0.1 inside the container maps to it).
    pub loopback: Ipv4Addr,
    pub audit: bool,
    pub allow_raw: bool,
    pub isolated: bool,
    /// An explicit deny rule names this container as destination.
    pub deny_rules: bool,
    /// Some: its abstract unix sockets reach only these names (without the leading NUL).
    pub unix_names: Option<Vec<Vec<u8>>>,
}

impl Entry {
    /// The programs' view: flags and primary addresses (first of each family).
    pub fn value(&self) -> Container {
        let flag = |on, f| if on { f } else { 0 };
        let mut c = Container {
            id: self.id,
            flags: flag(self.audit, FLAG_AUDIT)
                | flag(self.allow_raw, FLAG_ALLOW_RAW)
                | flag(self.isolated, FLAG_ISOLATED)
                | flag(self.deny_rules, FLAG_DENY_RULES),
            lo4: self.loopback.into(),
            ..Container::default()
        };
        if let Some(v4) = self.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }) {
            c.flags |= FLAG_HAS_V4;
            c.v4 = v4.into();
        }
        if let Some(v6) = self.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        }) {
            c.flags |= FLAG_HAS_V6;
            c.v6 = v6.into();
        }
        c
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    bpffs: PathBuf,
    cgroup_root: PathBuf,
    /// The capacities in force (those of pinned maps when they were adopted).
    capacity: Capacity,
    /// Cgroups whose packet programs this agent attached or adopted.
    attached: std::collections::HashSet<u64>,
    /// The abstract-unix programs, or why they could not be loaded.
    unix: Result<unix::UnixPrograms, String>,
    _lock: PinLock,
}

impl Datapath {
    /// Loads the programs and attaches them at `cgroup_root`, or adopts the links a previous
    /// agent pinned under `bpffs`. New maps get `capacity`; pinned maps keep theirs (see
    /// [`Datapath::capacity`]).
    pub fn open(
        bpffs: &Path,
        cgroup_root: &Path,
        capacity: Capacity,
    ) -> Result<Datapath, DatapathError> {
        let lock = PinLock::acquire(bpffs)?;
        let dirs = ["maps", "links", "progs"].map(|d| bpffs.join(d));
        for d in &dirs {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        if let Err(e) = nix::sys::resource::setrlimit(
            nix::sys::resource::Resource::RLIMIT_MEMLOCK,
            nix::sys::resource::RLIM_INFINITY,
            nix::sys::resource::RLIM_INFINITY,
        ) {
            // Kernels >= 5.11 charge BPF memory to the memory cgroup instead.
            debug!("raising RLIMIT_MEMLOCK failed ({e}); relying on memcg accounting");
        }
        maps::check_pinned(&dirs[0])?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&dirs[0]);
        capacity.configure(&mut loader);
        if std::env::var_os("NETISO_VERIFIER_LOG").is_some() {
            // A developer's aid: the verifier's full reasoning when a program is refused.
            loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE);
        }
        let mut ebpf = loader.load(OBJECT)?;
        attach::cgroup_programs(&mut ebpf, cgroup_root, &dirs[1], &dirs[2])?;
        attach::steering(&mut ebpf, &dirs[1], &dirs[2])?;
        tc::load(&mut ebpf, &dirs[2])?;
        let capacity = maps::capacity_in_force(&ebpf)?;
        let unix = unix::load(&ebpf, &dirs[2]).map_err(|e| {
            log::warn!("{e}: containers cannot restrict their abstract unix sockets");
            e.to_string()
        });
        Ok(Datapath {
            ebpf,
            bpffs: bpffs.to_owned(),
            cgroup_root: cgroup_root.to_owned(),
            capacity,
            attached: std::collections::HashSet::new(),
            unix,
            _lock: lock,
        })
    }

    /// The map capacities in force.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Hands out the events ring buffer (once) for the agent's reader task.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        let map = self.ebpf.take_map(netiso_common::maps::EVENTS)?;
        RingBuf::try_from(map).ok()
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// Detaches and removes everything pinned under `bpffs`. Takes the pin lock, so it refuses
    /// while an agent runs.
    pub fn remove_pins(bpffs: &Path) -> Result<Vec<PathBuf>, DatapathError> {
        if !bpffs.exists() {
            return Ok(Vec::new());
        }
        let lock = PinLock::acquire(bpffs)?;
        let mut removed = Vec::new();
        for sub in ["links", "progs", "maps"] {
            let dir = bpffs.join(sub);
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if sub == "links" {
                        detach_link(&e.path())?;
                    } else {
                        fs::remove_file(e.path()).map_err(io_err("unpinning", &e.path()))?;
                    }
                    removed.push(e.path());
                }
            }
            if dir.exists() {
                fs::remove_dir(&dir).map_err(io_err("removing", &dir))?;
            }
        }
        drop(lock);
        fs::remove_dir(bpffs).map_err(io_err("removing", bpffs))?;
        Ok(removed)
    }
}

/// Removes a pin; one already gone is fine.
fn unpin(pin: &Path) -> Result<(), DatapathError> {
    match fs::remove_file(pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("unpinning", pin)(e)),
        _ => Ok(()),
    }
}

/// Detaches a pinned link at once and removes its pin; one already gone is fine. (Removing
/// the pin alone would leave the program running until the kernel's deferred release.)
fn detach_link(pin: &Path) -> Result<(), DatapathError> {
    match raw_bpf::obj_get(pin) {
        Ok(link) => {
            // A link that is detached already (its cgroup or interface gone) says so; the
            // pin still goes.
            if let Err(e) = raw_bpf::link_detach(std::os::fd::AsFd::as_fd(&link)) {
                log::debug!("detaching {}: {e}", pin.display());
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("opening pinned link", pin)(e)),
    }
    unpin(pin)
}

/// Replaces the pin of a loaded program under `progs/` (tests and benchmarks run the agent's
/// programs from there with BPF_PROG_TEST_RUN; `bpftool prog show pinned` finds them).
fn pin_program(ebpf: &mut Ebpf, name: &'static str, progs: &Path) -> Result<(), DatapathError> {
    let pin = progs.join(name);
    unpin(&pin)?;
    let prog = ebpf.program_mut(name).ok_or(DatapathError::Program {
        name,
        source: ProgramError::UnexpectedProgramType,
    })?;
    prog.pin(&pin).map_err(|e| DatapathError::Io {
        what: "pinning program at",
        path: pin.clone(),
        source: io::Error::other(e),
    })
}
