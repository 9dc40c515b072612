//! The loaded eBPF datapath: one struct owns the programs, their pinned links and maps, and
//! exposes domain operations (register a container, revoke an address, enable/disable).
//!
//! Everything is pinned under the bpffs directory (`maps/`, `links/`), so enforcement outlives
//! the agent. A new agent adopts the pins: maps are reused by name and each pinned link is
//! switched to the freshly loaded program with BPF_LINK_UPDATE, which is atomic, so a restart
//! (or kill -9) never opens a gap.
use std::{
    fs, io,
    mem::size_of,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuHashMap},
    programs::{Program, ProgramError},
    Ebpf, EbpfError, EbpfLoader,
};
use log::{debug, info};
use netiso_common::{
    config, counter, maps, policy, Container, Counters, Ip4, Ip6, PolicyKey, FLAG_ALLOW_RAW,
    FLAG_AUDIT, FLAG_HAS_V4, FLAG_HAS_V6, FLAG_ISOLATED,
};
use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

use crate::{api::Mode, state::ContainerSpec, sys};

mod tc;
pub use tc::{IfaceStatus, TC_PROGRAMS};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netiso"));

/// Every program netiso attaches at the cgroup root: ELF function name and kernel attach type
/// (enum bpf_attach_type).
pub const PROGRAMS: [(&str, u32); 10] = [
    ("sock_create", 2), // BPF_CGROUP_INET_SOCK_CREATE
    ("bind4", 8),       // BPF_CGROUP_INET4_BIND
    ("bind6", 9),       // BPF_CGROUP_INET6_BIND
    ("connect4", 10),   // BPF_CGROUP_INET4_CONNECT
    ("connect6", 11),   // BPF_CGROUP_INET6_CONNECT
    ("sendmsg4", 14),   // BPF_CGROUP_UDP4_SENDMSG
    ("sendmsg6", 15),   // BPF_CGROUP_UDP6_SENDMSG
    ("setsockopt", 22), // BPF_CGROUP_SETSOCKOPT
    ("ingress", 0),     // BPF_CGROUP_INET_INGRESS
    ("egress", 1),      // BPF_CGROUP_INET_EGRESS
];

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
    #[error("map {name}: {source}")]
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
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
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

pub struct Datapath {
    ebpf: Ebpf,
    bpffs: PathBuf,
    _lock: PinLock,
}

pub use netiso_common::host::{ip4_raw, ip6_raw};

/// The kernel's view of a container: flags and primary addresses (first of each family).
pub fn container_value(spec: &ContainerSpec) -> Container {
    let mut c = Container {
        id: spec.id,
        flags: 0,
        v4: 0,
        lo4: policy::loopback_for(spec.id),
        v6: [0; 4],
    };
    if spec.mode == Mode::Audit {
        c.flags |= FLAG_AUDIT;
    }
    if spec.allow_raw {
        c.flags |= FLAG_ALLOW_RAW;
    }
    if spec.isolated {
        c.flags |= FLAG_ISOLATED;
    }
    if let Some(v4) = spec.ips.iter().find_map(|ip| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    }) {
        c.flags |= FLAG_HAS_V4;
        c.v4 = ip4_raw(v4);
    }
    if let Some(v6) = spec.ips.iter().find_map(|ip| match ip {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    }) {
        c.flags |= FLAG_HAS_V6;
        c.v6 = ip6_raw(v6);
    }
    c
}

impl Datapath {
    /// Loads the programs and attaches them at `cgroup_root`, or adopts the links a previous
    /// agent pinned under `bpffs`.
    pub fn open(bpffs: &Path, cgroup_root: &Path) -> Result<Datapath, DatapathError> {
        let lock = PinLock::acquire(bpffs)?;
        let maps_dir = bpffs.join("maps");
        let links_dir = bpffs.join("links");
        for d in [&maps_dir, &links_dir] {
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
        check_pinned_maps(&maps_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(OBJECT)?;
        let cgroup = fs::File::open(cgroup_root).map_err(io_err("opening cgroup", cgroup_root))?;
        for (name, attach_type) in PROGRAMS {
            let prog = ebpf.program_mut(name).ok_or(DatapathError::Program {
                name,
                source: ProgramError::UnexpectedProgramType,
            })?;
            attach_or_adopt(name, attach_type, prog, &cgroup, &links_dir.join(name))?;
        }
        tc::load(&mut ebpf)?;
        Ok(Datapath {
            ebpf,
            bpffs: bpffs.to_owned(),
            _lock: lock,
        })
    }

    /// Hands out the events ring buffer (once) for the agent's reader task.
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        let map = self.ebpf.take_map(maps::EVENTS)?;
        aya::maps::RingBuf::try_from(map).ok()
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    fn containers(&mut self) -> Result<HashMap<&mut MapData, u64, Container>, DatapathError> {
        let m = self.ebpf.map_mut(maps::CONTAINERS).expect("CONTAINERS map");
        HashMap::try_from(m).map_err(map_err("CONTAINERS"))
    }
    fn owned4(&mut self) -> Result<HashMap<&mut MapData, Ip4, u32>, DatapathError> {
        let m = self.ebpf.map_mut(maps::OWNED4).expect("OWNED4 map");
        HashMap::try_from(m).map_err(map_err("OWNED4"))
    }
    fn owned6(&mut self) -> Result<HashMap<&mut MapData, Ip6, u32>, DatapathError> {
        let m = self.ebpf.map_mut(maps::OWNED6).expect("OWNED6 map");
        HashMap::try_from(m).map_err(map_err("OWNED6"))
    }
    fn policy(&mut self) -> Result<HashMap<&mut MapData, PolicyKey, u32>, DatapathError> {
        let m = self.ebpf.map_mut(maps::POLICY).expect("POLICY map");
        HashMap::try_from(m).map_err(map_err("POLICY"))
    }
    fn ids(&mut self) -> Result<HashMap<&mut MapData, u32, Container>, DatapathError> {
        let m = self.ebpf.map_mut(maps::IDS).expect("IDS map");
        HashMap::try_from(m).map_err(map_err("IDS"))
    }

    /// Sets (Some) or clears (None) the rule for container `from` reaching container `to`.
    pub fn set_rule(
        &mut self,
        from: u32,
        to: u32,
        allow: Option<bool>,
    ) -> Result<(), DatapathError> {
        let key = PolicyKey { from, to };
        let mut m = self.policy()?;
        match allow {
            Some(a) => m.insert(key, u32::from(a), 0).map_err(map_err("POLICY")),
            None => ignore_missing(m.remove(&key)).map_err(map_err("POLICY")),
        }
    }

    /// Makes the rule map hold exactly `rules` (from id, to id, allow).
    pub fn reconcile_rules(&mut self, rules: &[(u32, u32, bool)]) -> Result<(), DatapathError> {
        for (f, t, a) in rules {
            self.set_rule(*f, *t, Some(*a))?;
        }
        prune(
            self.policy()?,
            |k| rules.iter().any(|(f, t, _)| k.from == *f && k.to == *t),
            "POLICY",
        )
    }

    fn config(&mut self) -> Result<Array<&mut MapData, u32>, DatapathError> {
        let m = self.ebpf.map_mut(maps::CONFIG).expect("CONFIG map");
        Array::try_from(m).map_err(map_err("CONFIG"))
    }
    fn counters_map(
        &mut self,
    ) -> Result<PerCpuHashMap<&mut MapData, u32, Counters>, DatapathError> {
        let m = self.ebpf.map_mut(maps::COUNTERS).expect("COUNTERS map");
        PerCpuHashMap::try_from(m).map_err(map_err("COUNTERS"))
    }

    /// Global switch: when disabled every hook passes through, programs stay attached.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<(), DatapathError> {
        self.config()?
            .set(config::DISABLED, u32::from(!enabled), 0)
            .map_err(map_err("CONFIG"))
    }

    /// Tells the hooks which cgroup levels hold containers, so they look only there.
    pub fn set_levels<'a>(
        &mut self,
        specs: impl IntoIterator<Item = &'a ContainerSpec>,
    ) -> Result<(), DatapathError> {
        let (mut min, mut max) = (u32::MAX, 0);
        for s in specs {
            min = min.min(s.cgroup_level);
            max = max.max(s.cgroup_level);
        }
        let mut cfg = self.config()?;
        if max == 0 {
            return cfg.set(config::MAX_LEVEL, 0, 0).map_err(map_err("CONFIG"));
        }
        // Widen before narrowing so no registered level is ever outside the window.
        let old_min = cfg.get(&config::MIN_LEVEL, 0).map_err(map_err("CONFIG"))?;
        let old_max = cfg.get(&config::MAX_LEVEL, 0).map_err(map_err("CONFIG"))?;
        if old_max != 0 {
            cfg.set(config::MIN_LEVEL, min.min(old_min), 0)
                .map_err(map_err("CONFIG"))?;
            cfg.set(config::MAX_LEVEL, max.max(old_max), 0)
                .map_err(map_err("CONFIG"))?;
        }
        cfg.set(config::MIN_LEVEL, min, 0)
            .map_err(map_err("CONFIG"))?;
        cfg.set(config::MAX_LEVEL, max, 0)
            .map_err(map_err("CONFIG"))
    }

    /// Registers (or updates) a container: addresses first, the cgroup entry last, so the
    /// hooks never see a container whose addresses are missing. The id entry (for the TC
    /// programs, which find containers by address) comes before the cgroup entry too.
    pub fn register(&mut self, spec: &ContainerSpec) -> Result<(), DatapathError> {
        for ip in &spec.ips {
            self.grant(*ip, spec.id)?;
        }
        let mut counters = self.counters_map()?;
        if counters.get(&spec.id, 0).is_err() {
            let zero = aya::maps::PerCpuValues::try_from(vec![
                Counters::default();
                aya::util::nr_cpus().map_err(
                    |(_, e)| DatapathError::Io {
                        what: "counting",
                        path: "/sys/devices/system/cpu/possible".into(),
                        source: e,
                    }
                )?
            ])
            .map_err(|e| DatapathError::Io {
                what: "allocating counters for",
                path: PathBuf::from(format!("container {}", spec.id)),
                source: e,
            })?;
            counters
                .insert(spec.id, zero, 0)
                .map_err(map_err("COUNTERS"))?;
        }
        let value = container_value(spec);
        self.ids()?
            .insert(spec.id, value, 0)
            .map_err(map_err("IDS"))?;
        self.containers()?
            .insert(spec.cgroup_id, value, 0)
            .map_err(map_err("CONTAINERS"))
    }

    /// Removes a container: the cgroup entry first (its processes pass through from then on),
    /// then its addresses and counters.
    pub fn unregister(&mut self, spec: &ContainerSpec) -> Result<(), DatapathError> {
        ignore_missing(self.containers()?.remove(&spec.cgroup_id))
            .map_err(map_err("CONTAINERS"))?;
        for ip in &spec.ips {
            self.revoke(*ip)?;
        }
        ignore_missing(self.ids()?.remove(&spec.id)).map_err(map_err("IDS"))?;
        ignore_missing(self.counters_map()?.remove(&spec.id)).map_err(map_err("COUNTERS"))
    }

    /// Records that container `id` owns `ip`.
    pub fn grant(&mut self, ip: IpAddr, id: u32) -> Result<(), DatapathError> {
        match ip {
            IpAddr::V4(a) => self
                .owned4()?
                .insert(ip4_raw(a), id, 0)
                .map_err(map_err("OWNED4")),
            IpAddr::V6(a) => self
                .owned6()?
                .insert(ip6_raw(a), id, 0)
                .map_err(map_err("OWNED6")),
        }
    }

    /// Forgets the owner of `ip`.
    pub fn revoke(&mut self, ip: IpAddr) -> Result<(), DatapathError> {
        match ip {
            IpAddr::V4(a) => {
                ignore_missing(self.owned4()?.remove(&ip4_raw(a))).map_err(map_err("OWNED4"))
            }
            IpAddr::V6(a) => {
                ignore_missing(self.owned6()?.remove(&ip6_raw(a))).map_err(map_err("OWNED6"))
            }
        }
    }

    /// Makes the maps hold exactly `specs` (used when adopting pins after a restart): upserts
    /// first, then removes what is no longer registered.
    pub fn reconcile<'a>(
        &mut self,
        specs: impl IntoIterator<Item = &'a ContainerSpec> + Clone,
    ) -> Result<(), DatapathError> {
        for s in specs.clone() {
            self.register(s)?;
        }
        self.set_levels(specs.clone())?;
        let cgroups: Vec<u64> = specs.clone().into_iter().map(|s| s.cgroup_id).collect();
        let ids: Vec<u32> = specs.clone().into_iter().map(|s| s.id).collect();
        let ips: Vec<IpAddr> = specs
            .into_iter()
            .flat_map(|s| s.ips.iter().copied())
            .collect();
        let keep4: Vec<Ip4> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(a) => Some(ip4_raw(*a)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let keep6: Vec<Ip6> = ips
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V6(a) => Some(ip6_raw(*a)),
                IpAddr::V4(_) => None,
            })
            .collect();
        prune(self.containers()?, |k| cgroups.contains(k), "CONTAINERS")?;
        prune(self.owned4()?, |k| keep4.contains(k), "OWNED4")?;
        prune(self.owned6()?, |k| keep6.contains(k), "OWNED6")?;
        prune(self.ids()?, |k| ids.contains(k), "IDS")?;
        let mut counters = self.counters_map()?;
        let stale: Vec<u32> = counters
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ids.contains(k))
            .collect();
        for k in stale {
            ignore_missing(counters.remove(&k)).map_err(map_err("COUNTERS"))?;
        }
        Ok(())
    }

    /// A container's counters summed over CPUs, by name.
    pub fn counters(&mut self, id: u32) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let mut sum = [0u64; counter::LEN];
        if let Ok(values) = self.counters_map()?.get(&id, 0) {
            for cpu in values.iter() {
                for (s, v) in sum.iter_mut().zip(cpu.v.iter()) {
                    *s += v;
                }
            }
        }
        Ok(counter::NAMES.iter().copied().zip(sum).collect())
    }

    /// Detaches and removes everything pinned under `bpffs`. Takes the pin lock, so it refuses
    /// while an agent runs.
    pub fn remove_pins(bpffs: &Path) -> Result<Vec<PathBuf>, DatapathError> {
        if !bpffs.exists() {
            return Ok(Vec::new());
        }
        let lock = PinLock::acquire(bpffs)?;
        let mut removed = Vec::new();
        for sub in ["links", "maps"] {
            let dir = bpffs.join(sub);
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    // Unpinning the last reference to a link detaches it.
                    fs::remove_file(e.path()).map_err(io_err("unpinning", &e.path()))?;
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

/// Key and value sizes of every hash/array map, as the eBPF object defines them.
const MAP_LAYOUTS: [(&str, usize, usize); 7] = [
    (maps::CONTAINERS, size_of::<u64>(), size_of::<Container>()),
    (maps::OWNED4, size_of::<Ip4>(), size_of::<u32>()),
    (maps::OWNED6, size_of::<Ip6>(), size_of::<u32>()),
    (maps::CONFIG, size_of::<u32>(), size_of::<u32>()),
    (maps::COUNTERS, size_of::<u32>(), size_of::<Counters>()),
    (maps::POLICY, size_of::<PolicyKey>(), size_of::<u32>()),
    (maps::IDS, size_of::<u32>(), size_of::<Container>()),
];

/// Refuses pins left by a netiso whose maps have another layout: reusing them would make the
/// programs fail verification (or worse, misread entries).
fn check_pinned_maps(dir: &Path) -> Result<(), DatapathError> {
    for (name, key, value) in MAP_LAYOUTS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(name))?;
        let found = (info.key_size(), info.value_size());
        let expected = (key as u32, value as u32);
        if found != expected {
            return Err(DatapathError::IncompatiblePin {
                path,
                found,
                expected,
            });
        }
    }
    Ok(())
}

/// Removes every entry of `map` whose key `keep` rejects.
fn prune<K: aya::Pod, V: aya::Pod>(
    mut map: HashMap<&mut MapData, K, V>,
    keep: impl Fn(&K) -> bool,
    name: &'static str,
) -> Result<(), DatapathError> {
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep(k))
        .collect();
    for k in stale {
        debug!("removing a stale {name} entry");
        ignore_missing(map.remove(&k)).map_err(map_err(name))?;
    }
    Ok(())
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn attach_or_adopt(
    name: &'static str,
    attach_type: u32,
    prog: &mut Program,
    cgroup: &fs::File,
    pin: &Path,
) -> Result<(), DatapathError> {
    let perr = |source| DatapathError::Program { name, source };
    match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
    .map_err(perr)?;
    let fd = prog.fd().map_err(perr)?.as_fd();
    if adopt(name, fd, pin)? {
        return Ok(());
    }
    // Raw link_create/obj_pin: aya 0.14 cannot turn a sockopt link into a pinnable FdLink.
    let link = sys::link_create(fd, cgroup.as_raw_fd() as u32, attach_type)
        .map_err(io_err("attaching program to cgroup", pin))?;
    sys::obj_pin(link.as_fd(), pin).map_err(io_err("pinning link", pin))?;
    info!("attached {name}, pinned at {}", pin.display());
    Ok(())
}

/// If a previous agent pinned a link for this hook, switch it to the new program atomically.
fn adopt(name: &str, prog: std::os::fd::BorrowedFd<'_>, pin: &Path) -> Result<bool, DatapathError> {
    if !pin.exists() {
        return Ok(false);
    }
    let link = sys::obj_get(pin).map_err(io_err("opening pinned link", pin))?;
    sys::link_update(link.as_fd(), prog).map_err(io_err("updating pinned link", pin))?;
    info!("adopted pinned link for {name}, program replaced atomically");
    Ok(true)
}
