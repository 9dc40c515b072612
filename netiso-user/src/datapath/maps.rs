//! The map side of the datapath: registering containers, owned addresses, rules, switches
//! and counters, each a domain method on [`Datapath`].
use std::{
    collections::{HashMap as StdHashMap, HashSet},
    hash::Hash,
    mem::size_of,
    net::IpAddr,
    path::Path,
};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    Ebpf, EbpfLoader,
};
use log::debug;
use netiso_common::{
    config, counter, maps, Container, ContainerId, Counters, Ip4, Ip6, PacketCounters, PolicyKey,
    Receiver, SockInfo, UnixName, MAX_ADDRESSES, MAX_CONTAINERS,
};

use super::{Datapath, DatapathError, Entry};

pub(super) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Map capacities: `--max-containers` sizes CONTAINERS, IDS and COUNTERS, `--max-addresses`
/// sizes OWNED4 and OWNED6 each; POLICY keeps the object's size. Hash maps allocate entries
/// on demand, so a large capacity costs nothing until it is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub containers: u32,
    pub addresses: u32,
    pub rules: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            containers: MAX_CONTAINERS,
            addresses: MAX_ADDRESSES,
            rules: MAX_ADDRESSES,
        }
    }
}

impl Capacity {
    pub(super) fn configure(&self, loader: &mut EbpfLoader<'_>) {
        for name in [maps::CONTAINERS, maps::IDS, maps::COUNTERS] {
            loader.map_max_entries(name, self.containers);
        }
        for name in [maps::OWNED4, maps::OWNED6] {
            loader.map_max_entries(name, self.addresses);
        }
    }
}

/// The capacities of the maps the programs use: a map adopted from its pin keeps the
/// capacity it was created with, whatever the flags say now.
pub(super) fn capacity_in_force(ebpf: &Ebpf) -> Result<Capacity, DatapathError> {
    let max = |name: &'static str| -> Result<u32, DatapathError> {
        let map = ebpf.map(name).expect("the object defines every shared map");
        let (aya::maps::Map::HashMap(data) | aya::maps::Map::PerCpuHashMap(data)) = map else {
            unreachable!("{name} is a hash map")
        };
        Ok(data.info().map_err(map_err(name))?.max_entries())
    };
    let containers = max(maps::CONTAINERS)?
        .min(max(maps::IDS)?)
        .min(max(maps::COUNTERS)?);
    let addresses = max(maps::OWNED4)?.min(max(maps::OWNED6)?);
    Ok(Capacity {
        containers,
        addresses,
        rules: max(maps::POLICY)?,
    })
}

/// A map update failed with E2BIG: the map is full.
fn full(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG))
}

/// Runs a map update, again when the kernel answers ENOMEM: hash maps without
/// preallocation take their entries from per-CPU caches that the kernel refills
/// asynchronously, so a burst of updates (a batch registration) can find one empty for a
/// moment. Gives up after about a second.
fn update<T>(mut op: impl FnMut() -> Result<T, MapError>) -> Result<T, MapError> {
    let mut tries = 0;
    loop {
        match op() {
            Err(MapError::SyscallError(s))
                if s.io_error.raw_os_error() == Some(libc::ENOMEM) && tries < 1000 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// Everything the maps hold, as read by [`Datapath::snapshot`].
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// cgroup id -> container.
    pub containers: Vec<(u64, Container)>,
    pub ids: Vec<(ContainerId, Container)>,
    pub owned4: Vec<(Ip4, ContainerId)>,
    pub owned6: Vec<(Ip6, ContainerId)>,
    /// (from, to) -> 1 allow, 0 deny.
    pub rules: Vec<(PolicyKey, u32)>,
    pub disabled: bool,
    /// The store these maps were last reconciled with (0: none recorded).
    pub store_id: u32,
    /// Cgroups whose abstract unix sockets are restricted (their unix programs are attached),
    /// and the names each container may reach (without the leading NUL).
    pub unix_restricted: HashSet<u64>,
    pub unix_names: Vec<(ContainerId, Vec<u8>)>,
}

impl Snapshot {
    /// No registration at all (what a new set of pins holds).
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && self.ids.is_empty()
            && self.owned4.is_empty()
            && self.owned6.is_empty()
    }
}

/// One change [`Datapath::reconcile`] made to bring the maps in line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Correction {
    pub map: &'static str,
    pub key: String,
    pub action: &'static str,
}

impl std::fmt::Display for Correction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.map, self.key, self.action)
    }
}

/// Key and value sizes of every hash/array map, as the eBPF object defines them.
const LAYOUTS: [(&str, usize, usize); 13] = [
    (maps::EVENTS_DROPPED, size_of::<u32>(), size_of::<u64>()),
    (maps::UNIX_ALLOW, size_of::<UnixName>(), size_of::<u32>()),
    (maps::CONTAINERS, size_of::<u64>(), size_of::<Container>()),
    (maps::OWNED4, size_of::<Ip4>(), size_of::<ContainerId>()),
    (maps::OWNED6, size_of::<Ip6>(), size_of::<ContainerId>()),
    (maps::CONFIG, size_of::<u32>(), size_of::<u32>()),
    (
        maps::COUNTERS,
        size_of::<ContainerId>(),
        size_of::<Counters>(),
    ),
    (maps::POLICY, size_of::<PolicyKey>(), size_of::<u32>()),
    (maps::IDS, size_of::<ContainerId>(), size_of::<Container>()),
    (maps::RECEIVERS, size_of::<Receiver>(), size_of::<u64>()),
    // Socket storage is keyed by the socket (an fd, 4 bytes, from user space).
    (maps::SOCKS, size_of::<i32>(), size_of::<SockInfo>()),
    // Keyed by struct bpf_cgroup_storage_key { u64 cgroup id; u32 attach type; } (padded).
    (maps::CG_INFO, 16, size_of::<Container>()),
    (maps::CG_COUNTERS, 16, size_of::<PacketCounters>()),
];

/// Refuses pins left by a netiso whose maps have another layout: reusing them would make the
/// programs fail verification (or worse, misread entries).
pub(super) fn check_pinned(dir: &Path) -> Result<(), DatapathError> {
    for (name, key, value) in LAYOUTS {
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

/// A missing key is what removing wanted anyway.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Removes every entry of `map` whose key is not in `keep`.
fn prune<K: aya::Pod + Eq + Hash>(
    mut map: HashMap<&mut MapData, K, impl aya::Pod>,
    keep: &HashSet<K>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(k))
        .collect();
    for k in stale {
        debug!("removing a stale {name} entry");
        ignore_missing(map.remove(&k)).map_err(map_err(name))?;
    }
    Ok(())
}

impl Datapath {
    pub(super) fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, DatapathError> {
        let m = self
            .ebpf
            .map_mut(name)
            .expect("the object defines every shared map");
        HashMap::try_from(m).map_err(map_err(name))
    }
    fn config(&mut self) -> Result<Array<&mut MapData, u32>, DatapathError> {
        let m = self.ebpf.map_mut(maps::CONFIG).expect("CONFIG map");
        Array::try_from(m).map_err(map_err(maps::CONFIG))
    }
    fn counters_map(
        &mut self,
    ) -> Result<PerCpuHashMap<&mut MapData, ContainerId, Counters>, DatapathError> {
        let m = self.ebpf.map_mut(maps::COUNTERS).expect("COUNTERS map");
        PerCpuHashMap::try_from(m).map_err(map_err(maps::COUNTERS))
    }

    /// Global switch: when disabled every program passes through, programs stay attached.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<(), DatapathError> {
        self.config()?
            .set(config::DISABLED, u32::from(!enabled), 0)
            .map_err(map_err(maps::CONFIG))
    }

    /// Tells the programs which cgroup levels hold containers (lowest, highest; None when
    /// there is none), so they look only there. The window is widened before it is narrowed,
    /// so a registered level is never outside it.
    pub fn set_levels(&mut self, window: Option<(u32, u32)>) -> Result<(), DatapathError> {
        let mut cfg = self.config()?;
        let set = |cfg: &mut Array<_, u32>, i, v| cfg.set(i, v, 0).map_err(map_err(maps::CONFIG));
        let Some((min, max)) = window else {
            return set(&mut cfg, config::MAX_LEVEL, 0);
        };
        let old_min = cfg
            .get(&config::MIN_LEVEL, 0)
            .map_err(map_err(maps::CONFIG))?;
        let old_max = cfg
            .get(&config::MAX_LEVEL, 0)
            .map_err(map_err(maps::CONFIG))?;
        if old_max != 0 {
            set(&mut cfg, config::MIN_LEVEL, min.min(old_min))?;
            set(&mut cfg, config::MAX_LEVEL, max.max(old_max))?;
        }
        set(&mut cfg, config::MIN_LEVEL, min)?;
        set(&mut cfg, config::MAX_LEVEL, max)
    }

    /// Records which store the maps follow (see `Snapshot::store_id`).
    pub fn set_store_id(&mut self, id: u32) -> Result<(), DatapathError> {
        self.config()?
            .set(config::STORE_ID, id, 0)
            .map_err(map_err(maps::CONFIG))
    }

    /// Events the programs could not hand to the agent (the ring buffer was full).
    pub fn events_dropped(&self) -> u64 {
        let Some(map) = self.ebpf.map(maps::EVENTS_DROPPED) else {
            return 0;
        };
        PerCpuArray::<_, u64>::try_from(map)
            .and_then(|a| a.get(&0, 0))
            .map_or(0, |v| v.iter().sum())
    }

    /// Registers (or updates) a container: addresses first, the cgroup entry last, so the
    /// programs never see a container whose addresses are missing. The id entry (for the
    /// packet programs, which find containers by address) comes before the cgroup entry too.
    ///
    /// `fresh`: a new registration, whose counters start at zero (an id may have been used by
    /// a container removed long ago).
    pub fn register(&mut self, e: &Entry, fresh: bool) -> Result<(), DatapathError> {
        self.register_entry(e, fresh, true)
    }

    /// [`Self::register`]; `prune_unix`: remove the container's abstract names no longer
    /// listed now (reconcile prunes once for all containers instead).
    fn register_entry(
        &mut self,
        e: &Entry,
        fresh: bool,
        prune_unix: bool,
    ) -> Result<(), DatapathError> {
        for ip in &e.ips {
            self.grant(*ip, e.id)?;
        }
        let mut counters = self.counters_map()?;
        if fresh || counters.get(&e.id, 0).is_err() {
            let cpus = aya::util::nr_cpus().map_err(|(path, source)| DatapathError::Io {
                what: "counting CPUs in",
                path: path.into(),
                source,
            })?;
            // Checked once; the values are rebuilt for each try below.
            PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(|source| {
                DatapathError::Io {
                    what: "allocating counters for",
                    path: format!("container {}", e.id.0).into(),
                    source,
                }
            })?;
            let zero =
                || PerCpuValues::try_from(vec![Counters::default(); cpus]).expect("checked above");
            update(|| counters.insert(e.id, zero(), 0)).map_err(|e| {
                if full(&e) {
                    self.full(maps::COUNTERS)
                } else {
                    map_err(maps::COUNTERS)(e)
                }
            })?;
        }
        crate::failpoint::hit("datapath.register").map_err(|source| DatapathError::Io {
            what: "registering",
            path: format!("container {}", e.id.0).into(),
            source,
        })?;
        let value = e.value();
        let mut ids = self.hash(maps::IDS)?;
        let r = update(|| ids.insert(e.id, value, 0));
        r.map_err(|err| self.map_error(maps::IDS, err))?;
        let mut cgroups = self.hash(maps::CONTAINERS)?;
        let r = update(|| cgroups.insert(e.cgroup_id, value, 0));
        r.map_err(|err| self.map_error(maps::CONTAINERS, err))?;
        self.attach_packet_programs(e, prune_unix)
    }

    /// The error for a full map, naming the limit.
    fn full(&self, map: &'static str) -> DatapathError {
        let c = self.capacity;
        let (what, flag, capacity) = match map {
            maps::OWNED4 => ("the IPv4 address map", "--max-addresses", c.addresses),
            maps::OWNED6 => ("the IPv6 address map", "--max-addresses", c.addresses),
            maps::POLICY => ("the rule map", "nothing (fixed size)", c.rules),
            _ => ("the container map", "--max-containers", c.containers),
        };
        DatapathError::Full {
            map,
            what,
            flag,
            capacity,
        }
    }

    fn map_error(&self, map: &'static str, e: MapError) -> DatapathError {
        if full(&e) {
            self.full(map)
        } else {
            map_err(map)(e)
        }
    }

    /// Removes a container. Every step before the last only tightens: its addresses and id go
    /// first (its sockets may no longer use them), and the cgroup entry, which frees its
    /// processes, goes last. A failure part way therefore never lets anything through that
    /// the registration refused. Counters go after that; a leftover is pruned at the next
    /// start.
    pub fn unregister(&mut self, e: &Entry) -> Result<(), DatapathError> {
        for ip in &e.ips {
            self.revoke(*ip)?;
        }
        let mut ids: HashMap<_, ContainerId, Container> = self.hash(maps::IDS)?;
        ignore_missing(ids.remove(&e.id)).map_err(map_err(maps::IDS))?;
        crate::failpoint::hit("datapath.unregister").map_err(|source| DatapathError::Io {
            what: "unregistering",
            path: format!("container {}", e.id.0).into(),
            source,
        })?;
        let mut containers: HashMap<_, u64, Container> = self.hash(maps::CONTAINERS)?;
        ignore_missing(containers.remove(&e.cgroup_id)).map_err(map_err(maps::CONTAINERS))?;
        self.detach_packet_programs(e.cgroup_id)?;
        // Its sockets' release no longer runs netiso's program: forget what they registered.
        if let Err(err) = self.prune_receivers(|id| id != e.id) {
            log::warn!("removing the receivers of container {}: {err}", e.id.0);
        }
        if let Err(err) = ignore_missing(self.counters_map()?.remove(&e.id)) {
            log::warn!("removing the counters of container {}: {err}", e.id.0);
        }
        Ok(())
    }

    /// Removes the receivers (see `RECEIVERS`) of containers `keep` says no to.
    fn prune_receivers(&mut self, keep: impl Fn(ContainerId) -> bool) -> Result<(), DatapathError> {
        let mut m: HashMap<_, Receiver, u64> = self.hash(maps::RECEIVERS)?;
        let stale: Vec<Receiver> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|r| !keep(r.container))
            .collect();
        for r in stale {
            ignore_missing(m.remove(&r)).map_err(map_err(maps::RECEIVERS))?;
        }
        Ok(())
    }

    /// Records that container `id` owns `ip`.
    /// Replacing the owner is one map update, atomic for the programs: they see the old owner
    /// or the new one, never neither (what `ip move` relies on).
    pub fn grant(&mut self, ip: IpAddr, id: ContainerId) -> Result<(), DatapathError> {
        let (name, r) = match ip {
            IpAddr::V4(a) => (maps::OWNED4, {
                let mut m = self.hash::<Ip4, ContainerId>(maps::OWNED4)?;
                update(|| m.insert(Ip4::from(a), id, 0))
            }),
            IpAddr::V6(a) => (maps::OWNED6, {
                let mut m = self.hash::<Ip6, ContainerId>(maps::OWNED6)?;
                update(|| m.insert(Ip6::from(a), id, 0))
            }),
        };
        r.map_err(|e| self.map_error(name, e))
    }

    /// Forgets the owner of `ip`.
    pub fn revoke(&mut self, ip: IpAddr) -> Result<(), DatapathError> {
        crate::failpoint::hit("datapath.revoke").map_err(|source| DatapathError::Io {
            what: "revoking",
            path: ip.to_string().into(),
            source,
        })?;
        match ip {
            IpAddr::V4(a) => ignore_missing(
                self.hash::<Ip4, ContainerId>(maps::OWNED4)?
                    .remove(&Ip4::from(a)),
            )
            .map_err(map_err(maps::OWNED4)),
            IpAddr::V6(a) => ignore_missing(
                self.hash::<Ip6, ContainerId>(maps::OWNED6)?
                    .remove(&Ip6::from(a)),
            )
            .map_err(map_err(maps::OWNED6)),
        }
    }

    /// Sets (Some) or clears (None) the rule for container `from` reaching container `to`.
    pub fn set_rule(
        &mut self,
        from: ContainerId,
        to: ContainerId,
        allow: Option<bool>,
    ) -> Result<(), DatapathError> {
        let key = PolicyKey { from, to };
        let mut m: HashMap<_, PolicyKey, u32> = self.hash(maps::POLICY)?;
        let r = match allow {
            Some(a) => update(|| m.insert(key, u32::from(a), 0)),
            None => ignore_missing(m.remove(&key)),
        };
        r.map_err(|e| self.map_error(maps::POLICY, e))
    }

    /// Removes rules from the kernel (a removed container's).
    pub fn remove_rules(
        &mut self,
        rules: &[(ContainerId, ContainerId)],
    ) -> Result<(), DatapathError> {
        for (f, t) in rules {
            self.set_rule(*f, *t, None)?;
        }
        Ok(())
    }

    /// Everything the maps hold.
    pub fn snapshot(&mut self) -> Result<Snapshot, DatapathError> {
        fn all<K: aya::Pod, V: aya::Pod>(
            m: HashMap<&mut MapData, K, V>,
            name: &'static str,
        ) -> Result<Vec<(K, V)>, DatapathError> {
            m.iter().map(|r| r.map_err(map_err(name))).collect()
        }
        let containers = all(
            self.hash::<u64, Container>(maps::CONTAINERS)?,
            maps::CONTAINERS,
        )?;
        let ids = all(self.hash::<ContainerId, Container>(maps::IDS)?, maps::IDS)?;
        let owned4 = all(self.hash::<Ip4, ContainerId>(maps::OWNED4)?, maps::OWNED4)?;
        let owned6 = all(self.hash::<Ip6, ContainerId>(maps::OWNED6)?, maps::OWNED6)?;
        let rules = all(self.hash::<PolicyKey, u32>(maps::POLICY)?, maps::POLICY)?;
        let unix_names = self
            .hash::<UnixName, u32>(maps::UNIX_ALLOW)?
            .keys()
            .map(|k| k.map(|k| (k.container, k.bytes().to_vec())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::UNIX_ALLOW))?;
        let unix_restricted = self.unix_restricted();
        let cfg = self.config()?;
        let get = |i| cfg.get(&i, 0).map_err(map_err(maps::CONFIG));
        Ok(Snapshot {
            containers,
            ids,
            owned4,
            owned6,
            rules,
            unix_restricted,
            unix_names,
            disabled: get(config::DISABLED)? != 0,
            store_id: get(config::STORE_ID)?,
        })
    }

    /// Makes the maps hold exactly `entries`, `rules` and `enabled` (when adopting pins),
    /// and says what it changed. What is registered goes in first (addresses, ids, then
    /// cgroups); what is no longer registered goes out after, so nothing registered is ever
    /// missing on the way.
    pub fn reconcile(
        &mut self,
        entries: &[Entry],
        rules: &[(ContainerId, ContainerId, bool)],
        enabled: bool,
    ) -> Result<Vec<Correction>, DatapathError> {
        let before = self.snapshot()?;
        let mut out = Vec::new();
        let mut note = |map, key: String, action| out.push(Correction { map, key, action });

        let owned4: StdHashMap<Ip4, ContainerId> = before.owned4.iter().copied().collect();
        let owned6: StdHashMap<Ip6, ContainerId> = before.owned6.iter().copied().collect();
        let ids: StdHashMap<ContainerId, Container> = before.ids.iter().copied().collect();
        let cgroups: StdHashMap<u64, Container> = before.containers.iter().copied().collect();
        let (mut keep4, mut keep6) = (HashSet::new(), HashSet::new());
        for e in entries {
            for ip in &e.ips {
                let (now, key) = match ip {
                    IpAddr::V4(a) => {
                        keep4.insert(Ip4::from(*a));
                        (owned4.get(&Ip4::from(*a)).copied(), ip.to_string())
                    }
                    IpAddr::V6(a) => {
                        keep6.insert(Ip6::from(*a));
                        (owned6.get(&Ip6::from(*a)).copied(), ip.to_string())
                    }
                };
                if now != Some(e.id) {
                    let map = if ip.is_ipv4() {
                        maps::OWNED4
                    } else {
                        maps::OWNED6
                    };
                    note(
                        map,
                        key,
                        if now.is_none() {
                            "added"
                        } else {
                            "owner corrected"
                        },
                    );
                    self.grant(*ip, e.id)?;
                }
            }
        }
        let window = {
            let min = entries.iter().map(|e| e.cgroup_level).min();
            let max = entries.iter().map(|e| e.cgroup_level).max();
            min.zip(max)
        };
        self.set_levels(window)?;
        let counted: HashSet<ContainerId> =
            self.counters_map()?.keys().filter_map(Result::ok).collect();
        for e in entries {
            let v = e.value();
            let id_ok = ids.get(&e.id) == Some(&v);
            let cg_ok = cgroups.get(&e.cgroup_id) == Some(&v);
            if !id_ok || !cg_ok || !counted.contains(&e.id) {
                if !id_ok {
                    note(
                        maps::IDS,
                        e.id.0.to_string(),
                        if ids.contains_key(&e.id) {
                            "corrected"
                        } else {
                            "added"
                        },
                    );
                }
                if !cg_ok {
                    note(
                        maps::CONTAINERS,
                        format!("cgroup {} (container {})", e.cgroup_id, e.id.0),
                        if cgroups.contains_key(&e.cgroup_id) {
                            "corrected"
                        } else {
                            "added"
                        },
                    );
                }
                self.register_entry(e, false, false)?;
            } else {
                // Adopts its per-container links (switching them to this agent's programs).
                self.attach_packet_programs(e, false)?;
            }
        }
        // Out: stale cgroups first (they free their processes), then ids and addresses.
        let keep_cg: HashSet<u64> = entries.iter().map(|e| e.cgroup_id).collect();
        let keep_id: HashSet<ContainerId> = entries.iter().map(|e| e.id).collect();
        for (cg, c) in &before.containers {
            if !keep_cg.contains(cg) {
                note(
                    maps::CONTAINERS,
                    format!("cgroup {cg} (container {})", c.id.0),
                    "removed (not registered)",
                );
            }
        }
        prune(
            self.hash::<u64, Container>(maps::CONTAINERS)?,
            &keep_cg,
            maps::CONTAINERS,
        )?;
        self.prune_packet_programs(&keep_cg)?;
        // Names of unknown containers and names no longer listed, after every attachment.
        let listed: HashSet<UnixName> =
            entries.iter().flat_map(super::unix::listed_names).collect();
        self.prune_unix_names(|k| !listed.contains(k))?;
        self.prune_receivers(|id| keep_id.contains(&id))?;
        for (id, _) in &before.ids {
            if !keep_id.contains(id) {
                note(maps::IDS, id.0.to_string(), "removed (not registered)");
            }
        }
        prune(
            self.hash::<ContainerId, Container>(maps::IDS)?,
            &keep_id,
            maps::IDS,
        )?;
        for (a, _) in &before.owned4 {
            if !keep4.contains(a) {
                note(
                    maps::OWNED4,
                    std::net::Ipv4Addr::from(*a).to_string(),
                    "removed (not registered)",
                );
            }
        }
        prune(
            self.hash::<Ip4, ContainerId>(maps::OWNED4)?,
            &keep4,
            maps::OWNED4,
        )?;
        for (a, _) in &before.owned6 {
            if !keep6.contains(a) {
                note(
                    maps::OWNED6,
                    std::net::Ipv6Addr::from(*a).to_string(),
                    "removed (not registered)",
                );
            }
        }
        prune(
            self.hash::<Ip6, ContainerId>(maps::OWNED6)?,
            &keep6,
            maps::OWNED6,
        )?;
        let mut counters = self.counters_map()?;
        let stale: Vec<ContainerId> = counters
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep_id.contains(k))
            .collect();
        for k in stale {
            ignore_missing(counters.remove(&k)).map_err(map_err(maps::COUNTERS))?;
        }
        // Rules.
        let have: StdHashMap<PolicyKey, u32> = before.rules.iter().copied().collect();
        let mut keep_rules = HashSet::new();
        for (f, t, a) in rules {
            let key = PolicyKey { from: *f, to: *t };
            keep_rules.insert(key);
            if have.get(&key) != Some(&u32::from(*a)) {
                note(
                    maps::POLICY,
                    format!("{} -> {}", f.0, t.0),
                    if have.contains_key(&key) {
                        "corrected"
                    } else {
                        "added"
                    },
                );
                self.set_rule(*f, *t, Some(*a))?;
            }
        }
        for k in have.keys() {
            if !keep_rules.contains(k) {
                note(
                    maps::POLICY,
                    format!("{} -> {}", k.from.0, k.to.0),
                    "removed (not registered)",
                );
            }
        }
        prune(
            self.hash::<PolicyKey, u32>(maps::POLICY)?,
            &keep_rules,
            maps::POLICY,
        )?;
        if before.disabled == enabled {
            note(
                maps::CONFIG,
                "disabled".into(),
                if enabled { "cleared" } else { "set" },
            );
            self.set_enabled(enabled)?;
        }
        Ok(out)
    }

    /// A container's counters summed over CPUs, indexed as `netiso_common::counter`: those of
    /// the shared map and those its packet programs keep in their attachment storage.
    pub fn counters(
        &mut self,
        id: ContainerId,
        cgroup_id: u64,
    ) -> Result<[u64; counter::LEN], DatapathError> {
        let mut sum = [0u64; counter::LEN];
        if let Ok(values) = self.counters_map()?.get(&id, 0) {
            for cpu in values.iter() {
                for (s, v) in sum.iter_mut().zip(cpu.v.iter()) {
                    *s += v;
                }
            }
        }
        let (rx, tx) = self.packet_counters(cgroup_id)?;
        for (index, value) in [
            (counter::RX_PACKETS, rx.packets),
            (counter::RX_BYTES, rx.bytes),
            (counter::INGRESS_DROPPED, rx.dropped),
            (counter::POLICY_DROPPED, rx.policy_dropped),
            (counter::AUDITED, rx.audited + tx.audited),
            (counter::TX_PACKETS, tx.packets),
            (counter::TX_BYTES, tx.bytes),
            (counter::EGRESS_DROPPED, tx.dropped),
            (counter::HEADER_DROPPED, tx.header_dropped),
        ] {
            sum[index] += value;
        }
        Ok(sum)
    }
}
