//! Rebuilding the registry from the pinned maps, for an agent that finds registrations in
//! the kernel and no state: dropping them would stop enforcing at once (a forbidden bind
//! loop saw 120 908 successes in 3 s when that happened), so the kernel's view is taken
//! as the truth.
//!
//! The maps hold cgroup id -> container (id, flags, primary addresses, loopback), container
//! id -> container, address -> container id, and the rules. What the kernel does not know is
//! rebuilt: the cgroup's path (found by searching the cgroup tree under the root for a
//! directory whose inode number is the cgroup id) and the container's name, invented as
//! `recovered-<id>`. A registration whose cgroup no longer exists is not recovered (no
//! process can be in it). One that cannot be rebuilt faithfully stops the agent: it refuses
//! to start rather than enforce less.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use netiso_common::{ContainerId, FLAG_ALLOW_RAW, FLAG_AUDIT, FLAG_ISOLATED};

use crate::{
    api::Mode,
    cgroup,
    datapath::Snapshot,
    registry::{loopback_of_slot, loopback_slot, ContainerSpec, Registry},
};

/// The registry the pinned maps describe, and what was left out or changed (one line each).
pub fn from_snapshot(
    snap: &Snapshot,
    mount: &Path,
    root: &Path,
    pins: &Path,
    store: &Path,
) -> anyhow::Result<(Registry, Vec<String>)> {
    let mut notes = Vec::new();
    let mut fatal = Vec::new();
    let paths = cgroup::index_ids(root);
    let mut ips: HashMap<ContainerId, Vec<IpAddr>> = HashMap::new();
    for (a, id) in &snap.owned4 {
        ips.entry(*id)
            .or_default()
            .push(IpAddr::V4(Ipv4Addr::from(*a)));
    }
    for (a, id) in &snap.owned6 {
        ips.entry(*id)
            .or_default()
            .push(IpAddr::V6(Ipv6Addr::from(*a)));
    }
    let mut unix_names: HashMap<ContainerId, Vec<String>> = HashMap::new();
    for (id, n) in &snap.unix_names {
        unix_names
            .entry(*id)
            .or_default()
            .push(format!("@{}", String::from_utf8_lossy(n)));
    }
    let mut reg = Registry::new();
    reg.enabled = !snap.disabled;
    let mut sorted: Vec<_> = snap.containers.clone();
    sorted.sort_by_key(|(_, c)| c.id.0);
    let mut relocate = Vec::new();
    for (cgroup_id, c) in sorted {
        let Some(path) = paths.get(&cgroup_id) else {
            notes.push(format!(
                "container #{} (cgroup id {cgroup_id}): its cgroup no longer exists; not recovered",
                c.id.0
            ));
            continue;
        };
        let mut owned = ips.remove(&c.id).unwrap_or_default();
        if owned.is_empty() {
            fatal.push(format!(
                "container #{} ({}) owns no address in the maps",
                c.id.0,
                path.display()
            ));
            continue;
        }
        // Primaries first (the kernel records them), the others in address order.
        owned.sort_unstable();
        let v4 = IpAddr::V4(Ipv4Addr::from(c.v4));
        let v6 = IpAddr::V6(Ipv6Addr::from(c.v6));
        for p in [v6, v4] {
            if let Some(i) = owned.iter().position(|a| *a == p) {
                let a = owned.remove(i);
                owned.insert(0, a);
            }
        }
        let level = path
            .strip_prefix(mount)
            .map_or(0, |p| p.components().count() as u32);
        let loopback = Ipv4Addr::from(c.lo4);
        let spec = ContainerSpec {
            id: c.id.0,
            name: format!("recovered-{}", c.id.0),
            cgroup: path.clone(),
            cgroup_id,
            cgroup_level: level,
            ips: owned,
            loopback,
            mode: if c.flags & FLAG_AUDIT != 0 {
                Mode::Audit
            } else {
                Mode::Enforce
            },
            allow_raw: c.flags & FLAG_ALLOW_RAW != 0,
            isolated: c.flags & FLAG_ISOLATED != 0,
            abstract_unix: snap.unix_restricted.contains(&cgroup_id).then(|| {
                let mut names = unix_names.remove(&c.id).unwrap_or_default();
                names.sort();
                names
            }),
        };
        if spec.id == 0 || spec.id > crate::registry::MAX_ID {
            fatal.push(format!(
                "container #{}: id outside 1..={}",
                spec.id,
                crate::registry::MAX_ID
            ));
            continue;
        }
        if spec.loopback != loopback_of_slot(spec.id) {
            relocate.push(spec);
            continue;
        }
        if let Err(clash) = reg.insert(spec.clone()) {
            fatal.push(format!("container #{}: {clash}", c.id.0));
        }
    }
    // A container's loopback is slot `id` (the programs rely on it); ids are unique, so
    // restoring that never clashes.
    for mut spec in relocate {
        let old = spec.loopback;
        spec.loopback = loopback_of_slot(spec.id);
        notes.push(format!(
            "container {}: loopback {old} was not its own; it gets {}",
            spec.name, spec.loopback
        ));
        if let Err(clash) = reg.insert(spec.clone()) {
            fatal.push(format!("container #{}: {clash}", spec.id));
        }
    }
    for (id, addrs) in &ips {
        notes.push(format!(
            "addresses {} of container #{} without a cgroup entry: not recovered",
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            id.0
        ));
    }
    if !fatal.is_empty() {
        anyhow::bail!(
            "the state store {} is missing and the pinned maps under {} cannot be recovered faithfully: {}. \
             Restore {} from a backup, or remove the pins (`netiso agent --cleanup`, which stops \
             enforcement until the containers are registered again)",
            store.display(),
            pins.display(),
            fatal.join("; "),
            store.display()
        );
    }
    for (k, v) in &snap.rules {
        if reg.get(k.from.0).is_some() && reg.get(k.to.0).is_some() {
            reg.set_rule(k.from.0, k.to.0, *v != 0);
        } else {
            notes.push(format!(
                "rule #{} -> #{} names a container that was not recovered",
                k.from.0, k.to.0
            ));
        }
    }
    let max_id = reg.iter().map(|c| c.id).max().unwrap_or(0);
    let max_slot = reg
        .iter()
        .filter_map(|c| loopback_slot(c.loopback))
        .max()
        .unwrap_or(0);
    reg.advance_cursors(max_id, loopback_of_slot(max_slot.max(1)));
    Ok((reg, notes))
}
