//! The map side of the datapath: registering containers, owned addresses, rules, switches
//! and counters, each a domain method on [`Datapath`].
use std::{collections::HashSet, hash::Hash, mem::size_of, net::IpAddr, path::Path};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuHashMap, PerCpuValues};
use log::debug;
use netiso_common::{
    config, counter, maps, Container, ContainerId, Counters, Ip4, Ip6, PacketCounters, PolicyKey,
    Receiver, SockInfo,
};

use super::{Datapath, DatapathError, Entry};

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Key and value sizes of every hash/array map, as the eBPF object defines them.
const LAYOUTS: [(&str, usize, usize); 11] = [
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

    /// Tells the programs which cgroup levels hold containers, so they look only there.
    pub fn set_levels(
        &mut self,
        levels: impl IntoIterator<Item = u32>,
    ) -> Result<(), DatapathError> {
        let (mut min, mut max) = (u32::MAX, 0);
        for l in levels {
            min = min.min(l);
            max = max.max(l);
        }
        let mut cfg = self.config()?;
        let set = |cfg: &mut Array<_, u32>, i, v| cfg.set(i, v, 0).map_err(map_err(maps::CONFIG));
        if max == 0 {
            return set(&mut cfg, config::MAX_LEVEL, 0);
        }
        // Widen before narrowing so no registered level is ever outside the window.
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

    /// Registers (or updates) a container: addresses first, the cgroup entry last, so the
    /// programs never see a container whose addresses are missing. The id entry (for the
    /// packet programs, which find containers by address) comes before the cgroup entry too.
    pub fn register(&mut self, e: &Entry) -> Result<(), DatapathError> {
        for ip in &e.ips {
            self.grant(*ip, e.id)?;
        }
        let mut counters = self.counters_map()?;
        if counters.get(&e.id, 0).is_err() {
            let cpus = aya::util::nr_cpus().map_err(|(path, source)| DatapathError::Io {
                what: "counting CPUs in",
                path: path.into(),
                source,
            })?;
            let zero =
                PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(|source| {
                    DatapathError::Io {
                        what: "allocating counters for",
                        path: format!("container {}", e.id.0).into(),
                        source,
                    }
                })?;
            counters
                .insert(e.id, zero, 0)
                .map_err(map_err(maps::COUNTERS))?;
        }
        crate::failpoint::hit("datapath.register").map_err(|source| DatapathError::Io {
            what: "registering",
            path: format!("container {}", e.id.0).into(),
            source,
        })?;
        let value = e.value();
        self.hash(maps::IDS)?
            .insert(e.id, value, 0)
            .map_err(map_err(maps::IDS))?;
        self.hash(maps::CONTAINERS)?
            .insert(e.cgroup_id, value, 0)
            .map_err(map_err(maps::CONTAINERS))?;
        self.attach_packet_programs(e)
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
        if let Err(err) = ignore_missing(self.counters_map()?.remove(&e.id)) {
            log::warn!("removing the counters of container {}: {err}", e.id.0);
        }
        Ok(())
    }

    /// Records that container `id` owns `ip`.
    pub fn grant(&mut self, ip: IpAddr, id: ContainerId) -> Result<(), DatapathError> {
        match ip {
            IpAddr::V4(a) => self
                .hash::<Ip4, ContainerId>(maps::OWNED4)?
                .insert(Ip4::from(a), id, 0)
                .map_err(map_err(maps::OWNED4)),
            IpAddr::V6(a) => self
                .hash::<Ip6, ContainerId>(maps::OWNED6)?
                .insert(Ip6::from(a), id, 0)
                .map_err(map_err(maps::OWNED6)),
        }
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
        match allow {
            Some(a) => m.insert(key, u32::from(a), 0),
            None => ignore_missing(m.remove(&key)),
        }
        .map_err(map_err(maps::POLICY))
    }

    /// Makes the rule map hold exactly `rules` (from, to, allow).
    pub fn reconcile_rules(
        &mut self,
        rules: &[(ContainerId, ContainerId, bool)],
    ) -> Result<(), DatapathError> {
        for (f, t, a) in rules {
            self.set_rule(*f, *t, Some(*a))?;
        }
        let keep = rules.iter().map(|(from, to, _)| PolicyKey {
            from: *from,
            to: *to,
        });
        let keep: HashSet<PolicyKey> = keep.collect();
        prune(
            self.hash::<PolicyKey, u32>(maps::POLICY)?,
            &keep,
            maps::POLICY,
        )
    }

    /// Makes the maps hold exactly `entries` (used when adopting pins after a restart):
    /// upserts first, then removes what is no longer registered.
    pub fn reconcile(&mut self, entries: &[Entry]) -> Result<(), DatapathError> {
        for e in entries {
            self.register(e)?;
        }
        self.set_levels(entries.iter().map(|e| e.cgroup_level))?;
        let cgroups: HashSet<u64> = entries.iter().map(|e| e.cgroup_id).collect();
        let ids: HashSet<ContainerId> = entries.iter().map(|e| e.id).collect();
        let ips = entries.iter().flat_map(|e| e.ips.iter().copied());
        let (mut keep4, mut keep6) = (HashSet::new(), HashSet::new());
        for ip in ips {
            match ip {
                IpAddr::V4(a) => keep4.insert(Ip4::from(a)),
                IpAddr::V6(a) => keep6.insert(Ip6::from(a)),
            };
        }
        prune(
            self.hash::<u64, Container>(maps::CONTAINERS)?,
            &cgroups,
            maps::CONTAINERS,
        )?;
        self.prune_packet_programs(&cgroups)?;
        self.prune_unix_names(|k| !ids.contains(&k.container))?;
        prune(
            self.hash::<Ip4, ContainerId>(maps::OWNED4)?,
            &keep4,
            maps::OWNED4,
        )?;
        prune(
            self.hash::<Ip6, ContainerId>(maps::OWNED6)?,
            &keep6,
            maps::OWNED6,
        )?;
        prune(
            self.hash::<ContainerId, Container>(maps::IDS)?,
            &ids,
            maps::IDS,
        )?;
        let mut counters = self.counters_map()?;
        let stale: Vec<ContainerId> = counters
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ids.contains(k))
            .collect();
        for k in stale {
            ignore_missing(counters.remove(&k)).map_err(map_err(maps::COUNTERS))?;
        }
        Ok(())
    }

    /// A container's counters summed over CPUs, indexed as `netiso_common::counter`: those of
    /// the shared map and those its packet programs keep in their attachment storage.
    pub fn counters(&mut self, e: &Entry) -> Result<[u64; counter::LEN], DatapathError> {
        let mut sum = [0u64; counter::LEN];
        if let Ok(values) = self.counters_map()?.get(&e.id, 0) {
            for cpu in values.iter() {
                for (s, v) in sum.iter_mut().zip(cpu.v.iter()) {
                    *s += v;
                }
            }
        }
        let (rx, tx) = self.packet_counters(e.cgroup_id)?;
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
