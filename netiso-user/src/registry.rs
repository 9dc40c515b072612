//! The registry in memory: every registered container with the indexes the agent needs to
//! answer in O(log n) whatever the number of containers (by name, id, address, cgroup id,
//! cgroup path, loopback), the rules between containers, the interfaces and the switches.
//!
//! It holds the invariants the kernel relies on: names, ids, addresses, cgroups and private
//! loopback addresses are each used by at most one container, and containers do not nest.
//! [`Registry::insert`] refuses anything that breaks one, so a registry loaded from the store,
//! imported from an old state file or recovered from the pinned maps is checked the same way.
//! Ids are allocated next-fit from a cursor and never handed to two live containers (the
//! cursor wraps; used values are skipped). Ids live in 1 ..= [`MAX_ID`]: the socket mark
//! carries a container's id in 23 bits, and its private loopback is slot `id` of
//! 127.128.0.0/9 (the programs find the owner of a loopback address by that arithmetic).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::api::Mode;

/// First address of the private loopback range 127.128.0.0/9; slot `n` is this plus `n`.
const LOOPBACK_BASE: u32 = 0x7f80_0000;
/// Usable loopback slots: 1 ..= 2^23 - 2 (not the range's first address, not 127.255.255.255).
pub const LOOPBACK_SLOTS: u32 = (1 << 23) - 2;

/// The highest container id (see the module comment).
pub const MAX_ID: u32 = LOOPBACK_SLOTS;

/// The loopback address of slot `n` (1 ..= LOOPBACK_SLOTS).
pub fn loopback_of_slot(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(LOOPBACK_BASE + n)
}

/// The slot of a private loopback address, if it is one.
pub fn loopback_slot(a: Ipv4Addr) -> Option<u32> {
    let n = u32::from(a).checked_sub(LOOPBACK_BASE)?;
    (1..=LOOPBACK_SLOTS).contains(&n).then_some(n)
}

/// A rule between containers by id: (from, to, allow).
pub type Rule = (u32, u32, bool);

/// A registered container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerSpec {
    pub id: u32,
    pub name: String,
    pub cgroup: PathBuf,
    /// The cgroup's id (inode number): what the kernel knows it by. Never reused while the
    /// cgroup exists, and cgroup v2 directories cannot be renamed, so (path, id) is stable.
    pub cgroup_id: u64,
    pub cgroup_level: u32,
    /// Owned addresses; the first of each family is its primary.
    pub ips: Vec<IpAddr>,
    /// The private loopback address, unique among live containers.
    pub loopback: Ipv4Addr,
    pub mode: Mode,
    pub allow_raw: bool,
    pub isolated: bool,
    /// Some: its abstract unix sockets reach only these names (`@name`, as `ss -x` shows
    /// them); None: the abstract namespace is shared, as it is for the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abstract_unix: Option<Vec<String>>,
}

/// Why a container cannot be inserted: something it would use is taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Clash {
    Name(String),
    Id(u32),
    Ip(IpAddr, String),
    Cgroup(u64, String),
    Path(PathBuf, String),
    Loopback(Ipv4Addr, String),
    Nested(PathBuf, String),
}

impl std::fmt::Display for Clash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clash::Name(n) => write!(f, "a container named {n:?} already exists"),
            Clash::Id(id) => write!(f, "container id {id} is already in use"),
            Clash::Ip(ip, owner) => {
                write!(f, "address {ip} is already owned by container {owner:?}")
            }
            Clash::Cgroup(id, owner) => {
                write!(
                    f,
                    "cgroup id {id} is already registered as container {owner:?}"
                )
            }
            Clash::Path(p, owner) => write!(
                f,
                "cgroup {} is already registered as container {owner:?}",
                p.display()
            ),
            Clash::Loopback(a, owner) => {
                write!(f, "loopback {a} is already used by container {owner:?}")
            }
            Clash::Nested(p, other) => write!(
                f,
                "cgroup {} overlaps container {other:?}; containers cannot nest",
                p.display()
            ),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Registry {
    pub enabled: bool,
    /// The cgroup the programs are attached to; a restart must use the same one.
    pub cgroup_root: Option<PathBuf>,
    /// Identifies this registry's store; also written into the pinned CONFIG map, so an
    /// agent can tell pins made with this store from pins made with another (or none).
    pub store_id: u32,
    /// Allocation cursors: the next id and loopback slot to try.
    pub next_id: u32,
    pub next_loopback: u32,
    containers: HashMap<u32, ContainerSpec>,
    names: BTreeMap<String, u32>,
    ips: HashMap<IpAddr, u32>,
    cgroups: HashMap<u64, u32>,
    paths: BTreeMap<PathBuf, u32>,
    loopbacks: HashMap<Ipv4Addr, u32>,
    /// How many containers live at each cgroup level (the programs look only there).
    levels: BTreeMap<u32, usize>,
    /// (from, to) -> allow, and the same keys as (to, from) to find a container's rules fast.
    rules: BTreeMap<(u32, u32), bool>,
    rules_to: BTreeSet<(u32, u32)>,
    pub ifaces: BTreeSet<String>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry {
            enabled: true,
            next_id: 1,
            next_loopback: 1,
            ..Registry::default()
        }
    }

    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    /// Owned addresses, all containers together.
    pub fn address_count(&self) -> usize {
        self.ips.len()
    }

    pub fn get(&self, id: u32) -> Option<&ContainerSpec> {
        self.containers.get(&id)
    }

    pub fn by_name(&self, name: &str) -> Option<&ContainerSpec> {
        self.names.get(name).and_then(|id| self.containers.get(id))
    }

    pub fn by_cgroup_id(&self, cgroup_id: u64) -> Option<&ContainerSpec> {
        self.cgroups
            .get(&cgroup_id)
            .and_then(|id| self.containers.get(id))
    }

    /// The container registered at cgroup path `path`.
    pub fn by_path(&self, path: &Path) -> Option<&ContainerSpec> {
        self.paths.get(path).and_then(|id| self.containers.get(id))
    }

    /// The container owning `ip`.
    pub fn owner(&self, ip: &IpAddr) -> Option<&ContainerSpec> {
        self.ips.get(ip).and_then(|id| self.containers.get(id))
    }

    /// Containers in name order.
    pub fn iter(&self) -> impl Iterator<Item = &ContainerSpec> {
        self.names.values().filter_map(|id| self.containers.get(id))
    }

    /// The containers whose names sort after `name`, in name order.
    pub fn iter_after(&self, name: &str) -> impl Iterator<Item = &ContainerSpec> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.names
            .range::<str, _>((Excluded(name), Unbounded))
            .filter_map(|(_, id)| self.containers.get(id))
    }

    /// The lowest and highest cgroup level holding a container (None: no container).
    pub fn level_window(&self) -> Option<(u32, u32)> {
        let min = *self.levels.keys().next()?;
        let max = *self.levels.keys().next_back()?;
        Some((min, max))
    }

    /// A registered container whose cgroup is `path`, an ancestor of it or below it.
    pub fn overlapping(&self, path: &Path) -> Option<&ContainerSpec> {
        // Ancestors (and the path itself): one lookup per level.
        for anc in path.ancestors() {
            if let Some(id) = self.paths.get(anc) {
                return self.containers.get(id);
            }
        }
        // Descendants sort right after `path` (paths compare component by component).
        let (p, id) = self
            .paths
            .range::<Path, _>((std::ops::Bound::Excluded(path), std::ops::Bound::Unbounded))
            .next()?;
        if p.starts_with(path) {
            self.containers.get(id)
        } else {
            None
        }
    }

    fn name_of(&self, id: u32) -> String {
        self.containers
            .get(&id)
            .map_or_else(|| format!("#{id}"), |c| c.name.clone())
    }

    /// Why `c` cannot be inserted, if it cannot. Its own id's entries do not count (so an
    /// update can be checked against the registry it replaces an entry of).
    pub fn clash(&self, c: &ContainerSpec) -> Option<Clash> {
        let other = |id: &u32| *id != c.id;
        if self.names.get(&c.name).is_some_and(other) {
            return Some(Clash::Name(c.name.clone()));
        }
        if self.cgroups.get(&c.cgroup_id).is_some_and(other) {
            return Some(Clash::Cgroup(
                c.cgroup_id,
                self.name_of(self.cgroups[&c.cgroup_id]),
            ));
        }
        if let Some(o) = self.overlapping(&c.cgroup).filter(|o| o.id != c.id) {
            if o.cgroup == c.cgroup {
                return Some(Clash::Path(c.cgroup.clone(), o.name.clone()));
            }
            return Some(Clash::Nested(c.cgroup.clone(), o.name.clone()));
        }
        if let Some(o) = self.loopbacks.get(&c.loopback).filter(|o| other(o)) {
            return Some(Clash::Loopback(c.loopback, self.name_of(*o)));
        }
        for ip in &c.ips {
            if let Some(o) = self.ips.get(ip).filter(|o| other(o)) {
                return Some(Clash::Ip(*ip, self.name_of(*o)));
            }
        }
        None
    }

    /// Adds a container, or replaces the one with the same id; refuses any clash.
    pub fn insert(&mut self, c: ContainerSpec) -> Result<Option<ContainerSpec>, Clash> {
        if let Some(clash) = self.clash(&c) {
            return Err(clash);
        }
        let old = self.remove_indexes(c.id);
        self.names.insert(c.name.clone(), c.id);
        for ip in &c.ips {
            self.ips.insert(*ip, c.id);
        }
        self.cgroups.insert(c.cgroup_id, c.id);
        self.paths.insert(c.cgroup.clone(), c.id);
        self.loopbacks.insert(c.loopback, c.id);
        *self.levels.entry(c.cgroup_level).or_default() += 1;
        self.containers.insert(c.id, c);
        Ok(old)
    }

    fn remove_indexes(&mut self, id: u32) -> Option<ContainerSpec> {
        let c = self.containers.remove(&id)?;
        self.names.remove(&c.name);
        for ip in &c.ips {
            self.ips.remove(ip);
        }
        self.cgroups.remove(&c.cgroup_id);
        self.paths.remove(&c.cgroup);
        self.loopbacks.remove(&c.loopback);
        if let Some(n) = self.levels.get_mut(&c.cgroup_level) {
            *n -= 1;
            if *n == 0 {
                self.levels.remove(&c.cgroup_level);
            }
        }
        Some(c)
    }

    /// Removes a container and the rules naming it; returns both.
    pub fn remove(&mut self, id: u32) -> Option<(ContainerSpec, Vec<Rule>)> {
        let c = self.remove_indexes(id)?;
        let rules = self.rules_of(id);
        for (f, t, _) in &rules {
            self.rules.remove(&(*f, *t));
            self.rules_to.remove(&(*t, *f));
        }
        Some((c, rules))
    }

    /// Every rule naming container `id`, as (from, to, allow).
    pub fn rules_of(&self, id: u32) -> Vec<(u32, u32, bool)> {
        let from = self
            .rules
            .range((id, 0)..=(id, u32::MAX))
            .map(|(&(f, t), &a)| (f, t, a));
        let to = self
            .rules_to
            .range((id, 0)..=(id, u32::MAX))
            .filter(|(_, f)| *f != id)
            .map(|&(t, f)| (f, t, self.rules[&(f, t)]));
        from.chain(to).collect()
    }

    /// Whether a deny rule names container `to` as its destination (`except`: leave out the
    /// rule from that container). Uses the destination index, not a scan of every rule.
    pub fn denied_by(&self, to: u32, except: Option<u32>) -> bool {
        self.rules_to
            .range((to, 0)..=(to, u32::MAX))
            .any(|&(t, f)| Some(f) != except && !self.rules[&(f, t)])
    }

    pub fn rules(&self) -> impl Iterator<Item = (u32, u32, bool)> + '_ {
        self.rules.iter().map(|(&(f, t), &a)| (f, t, a))
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn rule(&self, from: u32, to: u32) -> Option<bool> {
        self.rules.get(&(from, to)).copied()
    }

    /// Sets a rule between two registered containers.
    pub fn set_rule(&mut self, from: u32, to: u32, allow: bool) {
        debug_assert!(self.containers.contains_key(&from) && self.containers.contains_key(&to));
        self.rules.insert((from, to), allow);
        self.rules_to.insert((to, from));
    }

    pub fn remove_rule(&mut self, from: u32, to: u32) {
        self.rules.remove(&(from, to));
        self.rules_to.remove(&(to, from));
    }

    /// Whether a live container holds this private loopback.
    pub fn loopback_taken(&self, loopback: Ipv4Addr) -> bool {
        self.loopbacks.contains_key(&loopback)
    }

    /// The next free container id from the cursor (1 ..= MAX_ID, never a live container's,
    /// and never one whose loopback slot a live container holds).
    pub fn allocate_id(&self) -> u32 {
        let mut id = self.next_id.clamp(1, MAX_ID);
        while self.containers.contains_key(&id)
            || self.loopbacks.contains_key(&loopback_of_slot(id))
        {
            id = if id >= MAX_ID { 1 } else { id + 1 };
        }
        id
    }

    /// Moves the cursors past a container just allocated.
    pub fn advance_cursors(&mut self, id: u32, loopback: Ipv4Addr) {
        self.next_id = if id >= MAX_ID { 1 } else { id + 1 };
        self.next_loopback =
            loopback_slot(loopback).map_or(1, |s| if s >= LOOPBACK_SLOTS { 1 } else { s + 1 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u32, name: &str, path: &str, ips: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id,
            name: name.into(),
            cgroup: path.into(),
            cgroup_id: 1000 + u64::from(id),
            cgroup_level: path.matches('/').count() as u32,
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            loopback: loopback_of_slot(id),
            abstract_unix: None,
            mode: Mode::Enforce,
            allow_raw: false,
            isolated: false,
        }
    }

    #[test]
    fn indexes_follow_inserts_and_removals() {
        let mut r = Registry::new();
        r.insert(spec(1, "a", "/cg/a", &["192.0.2.1", "2001:db8::1"]))
            .unwrap();
        r.insert(spec(2, "b", "/cg/x/b", &["192.0.2.2"])).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.address_count(), 3);
        assert_eq!(r.owner(&"2001:db8::1".parse().unwrap()).unwrap().name, "a");
        assert_eq!(r.by_cgroup_id(1002).unwrap().name, "b");
        assert_eq!(r.level_window(), Some((2, 3)));
        r.set_rule(1, 2, true);
        r.set_rule(2, 1, false);
        assert_eq!(r.rules_of(1).len(), 2);
        let (gone, rules) = r.remove(1).unwrap();
        assert_eq!(gone.name, "a");
        assert_eq!(rules.len(), 2);
        assert_eq!(r.rule_count(), 0);
        assert!(r.owner(&"192.0.2.1".parse().unwrap()).is_none());
        assert_eq!(r.level_window(), Some((3, 3)));
        assert_eq!(r.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn deny_rules_are_found_by_destination() {
        let mut r = Registry::new();
        for id in 1..=4 {
            let ip = format!("192.0.2.{id}");
            r.insert(spec(id, &format!("c{id}"), &format!("/cg/c{id}"), &[&ip]))
                .unwrap();
        }
        r.set_rule(1, 2, true);
        r.set_rule(3, 2, false);
        r.set_rule(2, 4, false);
        assert!(r.denied_by(2, None));
        assert!(!r.denied_by(2, Some(3)), "the only deny rule is left out");
        assert!(r.denied_by(4, Some(3)));
        assert!(!r.denied_by(1, None));
        r.set_rule(3, 2, true);
        assert!(!r.denied_by(2, None));
    }

    #[test]
    fn clashes_are_refused() {
        let mut r = Registry::new();
        r.insert(spec(1, "a", "/cg/a", &["192.0.2.1"])).unwrap();
        r.insert(spec(2, "deep", "/cg/mid/deep", &["192.0.2.9"]))
            .unwrap();
        let mut c = spec(3, "a", "/cg/c", &["192.0.2.3"]);
        assert_eq!(r.insert(c.clone()), Err(Clash::Name("a".into())));
        c.name = "c".into();
        c.ips.push("192.0.2.1".parse().unwrap());
        assert!(matches!(r.insert(c.clone()), Err(Clash::Ip(_, o)) if o == "a"));
        c.ips.pop();
        c.loopback = loopback_of_slot(1);
        assert!(matches!(r.insert(c.clone()), Err(Clash::Loopback(_, o)) if o == "a"));
        c.loopback = loopback_of_slot(3);
        for (path, owner) in [("/cg/a/inner", "a"), ("/cg/mid", "deep"), ("/cg/a", "a")] {
            let mut n = c.clone();
            n.cgroup = path.into();
            let e = r.insert(n).unwrap_err();
            assert!(e.to_string().contains(&format!("{owner:?}")), "{path}: {e}");
        }
        // Siblings whose names extend another's are not nested.
        c.cgroup = "/cg/a-2".into();
        r.insert(c.clone()).unwrap();
        // An update of the same id may keep its own address, name and loopback.
        c.mode = Mode::Audit;
        assert!(r.insert(c).unwrap().is_some());
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn ids_and_loopbacks_are_never_shared_by_live_containers() {
        let mut r = Registry::new();
        r.insert(spec(1, "old", "/cg/old", &["192.0.2.1"])).unwrap();
        // The cursor has gone all the way round (as after 2^23 registrations): ids stay
        // within the 23 bits of the socket mark.
        r.next_id = u32::MAX;
        let id = r.allocate_id();
        assert_eq!(id, MAX_ID);
        r.advance_cursors(id, loopback_of_slot(id));
        // It wraps, and skips what "old" holds.
        assert_eq!(r.allocate_id(), 2);
        assert_eq!(
            loopback_of_slot(LOOPBACK_SLOTS),
            Ipv4Addr::new(127, 255, 255, 254)
        );
        assert_eq!(loopback_slot(Ipv4Addr::new(127, 128, 0, 0)), None);
        assert_eq!(loopback_slot(Ipv4Addr::new(127, 255, 255, 255)), None);
        assert_eq!(loopback_slot(Ipv4Addr::new(127, 128, 1, 44)), Some(300));
    }
}
