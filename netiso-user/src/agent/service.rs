//! The agent's domain logic: validates requests and keeps the store, the kernel and the
//! in-memory registry in step. Every change follows one rule: the store (the intent) is
//! written first, as one durable transaction; then the kernel follows, in an order that only
//! tightens until one last step (the commit point), and what comes after that step cannot
//! loosen anything; the registry in memory changes last. When the store refuses, nothing
//! happened. When the kernel refuses before its commit point, the kernel is put back and the
//! store's change is undone. A refused request therefore changes nothing and never enforces
//! less, not even for a moment, and the answer, the store and the kernel agree.
mod containers;
mod recover;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use log::{error, info, warn};
use netiso_common::ContainerId;
use thiserror::Error;

use super::watch::CgroupWatch;
use crate::{
    api::{CapacityInfo, IfaceInfo, IfaceState, Mode, PolicyAction, PolicyRule, Status},
    cgroup,
    datapath::{
        Capacity, Datapath, DatapathError, Entry, IfaceStatus, LinkState, PER_CONTAINER, PROGRAMS,
        STEER,
    },
    registry::{ContainerSpec, Registry},
    state::State,
    store::{Op, Store, StoreError},
};

/// Why the service refused a request. Only the HTTP layer turns these into status codes.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The request is malformed or names something impossible.
    #[error("{0}")]
    Invalid(String),
    /// It names a container, address or interface that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It clashes with what exists (a name or address in use, overlapping cgroups).
    #[error("{0}")]
    Conflict(String),
    /// A configured limit (or a map's capacity) would be exceeded; nothing was changed.
    #[error("{0}; nothing was changed")]
    Full(String),
    /// The kernel refused a change; nothing was changed.
    #[error("{0}; nothing was changed")]
    Datapath(DatapathError),
    /// The state could not be saved; nothing was changed.
    #[error("{0}; nothing was changed")]
    State(#[from] StoreError),
}

impl From<DatapathError> for ServiceError {
    fn from(e: DatapathError) -> Self {
        match e {
            e @ DatapathError::Full { .. } => ServiceError::Full(e.to_string()),
            e => ServiceError::Datapath(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, ServiceError>;

/// Registry limits (`netiso agent --max-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub containers: u32,
    pub addresses: u32,
    pub addresses_per_container: u32,
}

impl Default for Limits {
    fn default() -> Self {
        let c = Capacity::default();
        Limits {
            containers: c.containers,
            addresses: c.addresses,
            addresses_per_container: 256,
        }
    }
}

/// What the datapath needs of a registered container; `reg` holds the rules that name it.
pub fn entry(spec: &ContainerSpec, reg: &Registry) -> Entry {
    Entry {
        id: ContainerId(spec.id),
        cgroup: spec.cgroup.clone(),
        cgroup_id: spec.cgroup_id,
        cgroup_level: spec.cgroup_level,
        ips: spec.ips.clone(),
        loopback: spec.loopback,
        audit: spec.mode == Mode::Audit,
        allow_raw: spec.allow_raw,
        isolated: spec.isolated,
        deny_rules: reg.denied_by(spec.id, None),
        unix_names: spec.abstract_unix.as_ref().map(|names| {
            names
                .iter()
                .filter_map(|n| crate::api::abstract_name(n).ok().map(<[u8]>::to_vec))
                .collect()
        }),
    }
}

fn rule_ids(reg: &Registry) -> Vec<(ContainerId, ContainerId, bool)> {
    reg.rules()
        .map(|(f, t, a)| (ContainerId(f), ContainerId(t), a))
        .collect()
}

/// Where the registry came from when the agent started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The store (the normal case).
    Store,
    /// An old `state.json`, imported into a new store.
    Imported,
    /// The pinned maps: the store was missing, so it was rebuilt from the kernel.
    Recovered,
    /// Nothing: a first start.
    New,
}

/// Counters the agent keeps about itself (for `/metrics`).
#[derive(Clone, Debug, Default)]
pub struct AgentStats {
    /// Per program: re-attachments made by the periodic check.
    pub reattached: BTreeMap<&'static str, u64>,
    /// The last link check's result per program.
    pub links: Vec<(&'static str, LinkState)>,
    /// Containers released because their cgroup disappeared.
    pub released: u64,
    /// Sockets destroyed because the address they used was revoked.
    pub sockets_destroyed: u64,
}

/// Where the agent keeps things (for messages and `status`).
pub struct Paths {
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub mount: PathBuf,
    pub root: PathBuf,
}

pub struct Service {
    datapath: Datapath,
    reg: Registry,
    store: Store,
    /// The store could not be put back after a refused kernel change; it is rewritten
    /// from the registry before the next change (and by the periodic check).
    store_dirty: bool,
    paths: Paths,
    limits: Limits,
    origin: Origin,
    watch: CgroupWatch,
    pub stats: AgentStats,
    /// The last container whose per-container links the periodic check covered.
    link_cursor: String,
}

/// A random non-zero store id.
fn new_store_id() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom(2) writes at most 4 bytes into the 4-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let v = if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        std::process::id() ^ 0x6e65_7469
    };
    v.max(1)
}

/// Logs a list of corrections: each up to `max`, then a count.
fn log_corrections(what: &str, items: &[String], max: usize) {
    for c in items.iter().take(max) {
        warn!("{what}: {c}");
    }
    if items.len() > max {
        warn!("{what}: {} more correction(s) not shown", items.len() - max);
    }
}

/// How many containers' per-container links one periodic check covers: all of them over
/// successive checks (at 30 s and 500, 10 000 containers every 10 minutes), at a bounded
/// cost per check.
const LINK_CHECK_BATCH: usize = 500;

impl Service {
    /// Adopts the registry into a freshly opened datapath: from the store, from an old
    /// `state.json` (imported), or — when the store was lost but the pins hold registrations —
    /// rebuilt from the pinned maps. Then compares it with the cgroup tree (a container whose
    /// cgroup is gone is released; cgroups are matched by id) and makes the maps match,
    /// logging every correction. Attaches the TC programs to the registry's interfaces and
    /// to `ifaces` from the command line.
    #[expect(clippy::too_many_arguments, reason = "the agent's start-up settings")]
    pub fn start(
        mut datapath: Datapath,
        mut store: Store,
        persisted: Option<Registry>,
        legacy: Option<State>,
        paths: Paths,
        limits: Limits,
        ifaces: &[String],
        watch: CgroupWatch,
    ) -> anyhow::Result<Service> {
        let snap = datapath.snapshot()?;
        let pins = paths.bpffs.display().to_string();
        let store_path = store.path().display().to_string();
        let (mut reg, origin) = match (persisted, legacy) {
            (Some(reg), _) => {
                if snap.store_id != 0 && snap.store_id != reg.store_id && !snap.is_empty() {
                    anyhow::bail!(
                        "the pinned maps under {pins} hold {} registration(s) made with another state store than {store_path}; \
                         the two disagree and neither is trusted blindly. To keep what the kernel enforces, move {store_path} \
                         away and start again (the agent rebuilds the registry from the pins); to use {store_path} instead, \
                         stop everything using the pins and remove them (`rm -r {pins}`, enforcement stops until the agent starts)",
                        snap.containers.len()
                    );
                }
                (reg, Origin::Store)
            }
            (None, Some(state)) => {
                let (reg, notes) = state.into_registry()?;
                log_corrections("importing state.json", &notes, 50);
                info!(
                    "imported {} container(s) from {}/state.json into {store_path}",
                    reg.len(),
                    paths.state_dir.display()
                );
                (reg, Origin::Imported)
            }
            (None, None) if !snap.is_empty() => {
                let (reg, notes) = recover::from_snapshot(
                    &snap,
                    &paths.mount,
                    &paths.root,
                    &paths.bpffs,
                    store.path(),
                )?;
                error!(
                    "NO STATE in {store_path}, but the pinned maps under {pins} hold {} registration(s): \
                     RECOVERED {} container(s) from them instead of dropping enforcement. Names were not kept \
                     by the kernel: they are recovered-<id> (see `netiso container ls`); everything else \
                     (cgroup, addresses, mode, rules) is as the kernel enforced it",
                    snap.containers.len(),
                    reg.len()
                );
                log_corrections("recovering from the pins", &notes, 50);
                (reg, Origin::Recovered)
            }
            (None, None) => (Registry::new(), Origin::New),
        };
        if let Some(prev) = &reg.cgroup_root {
            if *prev != paths.root {
                anyhow::bail!(
                    "the state in {store_path} belongs to cgroup root {}, not {}; start with --cgroup-root {} or run `netiso agent --cleanup` first",
                    prev.display(), paths.root.display(), prev.display()
                );
            }
        }
        reg.cgroup_root = Some(paths.root.clone());
        if reg.store_id == 0 {
            reg.store_id = new_store_id();
        }
        // The cgroup tree: a registered cgroup is known by its id; one that is gone (or was
        // made again at the same path, with a new id) is released.
        let mut released = Vec::new();
        let gone: Vec<u32> = reg
            .iter()
            .filter(|c| !cgroup::exists(&c.cgroup, c.cgroup_id))
            .map(|c| c.id)
            .collect();
        for id in gone {
            if let Some((c, _)) = reg.remove(id) {
                released.push(format!(
                    "container {} released: its cgroup {} (id {}) no longer exists",
                    c.name,
                    c.cgroup.display(),
                    c.cgroup_id
                ));
            }
        }
        log_corrections("cgroup tree", &released, 50);
        let capacity = datapath.capacity();
        if reg.len() > capacity.containers as usize
            || reg.address_count() > capacity.addresses as usize
        {
            anyhow::bail!(
                "the registry ({} containers, {} addresses) does not fit the maps under {pins} ({} containers, {} addresses); \
                 start with larger --max-containers/--max-addresses on new pins",
                reg.len(),
                reg.address_count(),
                capacity.containers,
                capacity.addresses
            );
        }
        if origin == Origin::Recovered {
            for name in datapath.pinned_ifaces() {
                reg.ifaces.insert(name);
            }
        }
        for name in ifaces {
            crate::api::validate_iface(name).map_err(anyhow::Error::msg)?;
            reg.ifaces.insert(name.clone());
        }
        if origin != Origin::Store || !released.is_empty() || !ifaces.is_empty() {
            store.replace_all(&reg)?;
        }
        // The maps follow this store from now on.
        datapath.set_store_id(reg.store_id)?;
        let entries: Vec<Entry> = reg.iter().map(|s| entry(s, &reg)).collect();
        let corrections = datapath.reconcile(&entries, &rule_ids(&reg), reg.enabled)?;
        datapath.retire_former_root_links()?;
        let lines: Vec<String> = corrections.iter().map(ToString::to_string).collect();
        log_corrections("pinned maps", &lines, 50);
        for name in &reg.ifaces {
            let r = datapath.attach_iface(name);
            if let Err(e) = r {
                if ifaces.contains(name) {
                    anyhow::bail!("--iface {name}: {e}");
                }
                warn!("{e}; it stays configured, `netiso iface add {name}` retries");
            }
        }
        let keep: Vec<String> = reg.ifaces.iter().cloned().collect();
        datapath.prune_ifaces(&keep)?;
        let mut service = Service {
            datapath,
            reg,
            store,
            store_dirty: false,
            paths,
            limits,
            origin,
            watch,
            stats: AgentStats::default(),
            link_cursor: String::new(),
        };
        let cgroups: Vec<(u64, PathBuf)> = service
            .reg
            .iter()
            .map(|c| (c.cgroup_id, c.cgroup.clone()))
            .collect();
        for (id, path) in cgroups {
            service.watch.add(id, &path);
        }
        service.stats.released = released.len() as u64;
        info!(
            "adopted state: {} container(s), netiso {} ({})",
            service.reg.len(),
            if service.reg.enabled {
                "enabled"
            } else {
                "disabled"
            },
            match origin {
                Origin::Store => "from the store",
                Origin::Imported => "imported from state.json",
                Origin::Recovered => "RECOVERED from the pinned maps",
                Origin::New => "new",
            }
        );
        Ok(service)
    }

    /// The one way state changes: writes `ops` to the store, then lets `apply` bring the
    /// kernel in line. If the store refuses, nothing happened. If the kernel refuses,
    /// `restore` puts the kernel back and `undo` puts the store back; when even that write
    /// fails, the store is rewritten from the registry before any further change.
    fn change(
        &mut self,
        ops: &[Op],
        undo: &[Op],
        apply: impl FnOnce(&mut Datapath) -> std::result::Result<(), DatapathError>,
        restore: impl FnOnce(&mut Datapath),
    ) -> Result<()> {
        self.repair_store()?;
        self.store.write(ops)?;
        if let Err(e) = apply(&mut self.datapath) {
            restore(&mut self.datapath);
            if let Err(u) = self.store.write(undo) {
                error!("putting the store back after a refused change failed ({u}); it is rewritten before the next change");
                self.store_dirty = true;
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Rewrites the store from the registry when a compensation failed earlier.
    fn repair_store(&mut self) -> Result<()> {
        if self.store_dirty {
            self.store.replace_all(&self.reg)?;
            self.store_dirty = false;
            info!("store rewritten from the registry");
        }
        Ok(())
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub fn registry(&self) -> &Registry {
        &self.reg
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The limits in force: the flags, capped by the capacity of the maps.
    pub fn effective_limits(&self) -> Limits {
        let cap = self.datapath.capacity();
        Limits {
            containers: self.limits.containers.min(cap.containers),
            addresses: self.limits.addresses.min(cap.addresses),
            addresses_per_container: self.limits.addresses_per_container,
        }
    }

    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    pub fn status(&self) -> Status {
        let l = self.effective_limits();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            enabled: self.reg.enabled,
            cgroup_root: self.paths.root.clone(),
            bpffs: self.paths.bpffs.clone(),
            state_dir: self.paths.state_dir.clone(),
            containers: self.reg.len(),
            programs: PROGRAMS
                .iter()
                .chain([&STEER])
                .chain(&PER_CONTAINER)
                .map(|(p, _)| (*p).to_owned())
                .collect(),
            ifaces: self.reg.ifaces.iter().cloned().collect(),
            capacity: Some(CapacityInfo {
                containers: l.containers,
                addresses: l.addresses,
                addresses_per_container: l.addresses_per_container,
                addresses_used: self.reg.address_count(),
            }),
        }
    }

    pub fn set_enabled(&mut self, enabled: bool) -> Result<Status> {
        let old = self.reg.enabled;
        self.change(
            &[Op::Enabled(enabled)],
            &[Op::Enabled(old)],
            |dp| dp.set_enabled(enabled),
            |dp| {
                let _ = dp.set_enabled(old);
            },
        )?;
        self.reg.enabled = enabled;
        info!("netiso {}", if enabled { "enabled" } else { "disabled" });
        Ok(self.status())
    }

    /// Container names by id, for naming events.
    pub fn names(&self) -> BTreeMap<u32, String> {
        self.reg.iter().map(|c| (c.id, c.name.clone())).collect()
    }

    pub fn name_of(&self, id: u32) -> Option<String> {
        self.reg.get(id).map(|c| c.name.clone())
    }

    pub fn root(&self) -> &Path {
        &self.paths.root
    }

    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.datapath.take_events()
    }

    pub fn ifaces(&self) -> Vec<IfaceInfo> {
        self.reg.ifaces.iter().map(|n| self.iface(n)).collect()
    }

    fn iface(&self, name: &str) -> IfaceInfo {
        let (state, ifindex) = match self.datapath.iface_status(name) {
            IfaceStatus::Attached(i) => (IfaceState::Attached, Some(i)),
            IfaceStatus::Missing => (IfaceState::Missing, None),
            IfaceStatus::Detached => (IfaceState::Detached, None),
        };
        IfaceInfo {
            name: name.to_owned(),
            state,
            ifindex,
        }
    }

    /// Attaches the TC programs to an interface (again: also repairs a re-created one).
    /// Attaching only tightens, so the kernel goes first; the store follows, and a store that
    /// refuses detaches again.
    pub fn add_iface(&mut self, name: &str) -> Result<IfaceInfo> {
        crate::api::validate_iface(name).map_err(ServiceError::Invalid)?;
        self.repair_store()?;
        self.datapath.attach_iface(name).map_err(|e| match e {
            DatapathError::NoIface { .. } | DatapathError::NotEthernet { .. } => {
                ServiceError::Invalid(e.to_string())
            }
            e => e.into(),
        })?;
        if !self.reg.ifaces.contains(name) {
            if let Err(e) = self.store.write(&[Op::PutIface(name.to_owned())]) {
                if let Err(d) = self.datapath.detach_iface(name) {
                    error!("detaching {name} after a failed save failed: {d}");
                }
                return Err(e.into());
            }
            self.reg.ifaces.insert(name.to_owned());
            info!("interface {name}: TC programs attached");
        }
        Ok(self.iface(name))
    }

    pub fn remove_iface(&mut self, name: &str) -> Result<()> {
        crate::api::validate_iface(name).map_err(ServiceError::Invalid)?;
        if !self.reg.ifaces.contains(name) {
            return Err(ServiceError::NotFound(format!(
                "interface {name:?} is not configured (see `netiso iface ls`)"
            )));
        }
        let iface = name.to_owned();
        self.change(
            &[Op::DeleteIface(iface.clone())],
            &[Op::PutIface(iface.clone())],
            |dp| dp.detach_iface(&iface),
            |dp| {
                let _ = dp.attach_iface(&iface);
            },
        )?;
        self.reg.ifaces.remove(name);
        info!("interface {name}: TC programs detached");
        Ok(())
    }

    /// Sets the rule for container `from` reaching container `to`.
    pub fn set_rule(&mut self, req: PolicyRule) -> Result<Vec<PolicyRule>> {
        let from = self.spec(&req.from)?.id;
        let target_spec = self.spec(&req.to)?;
        let to = target_spec.id;
        if from == to {
            return Err(ServiceError::Invalid(
                "a container always reaches itself; name two containers".into(),
            ));
        }
        let old = self.reg.rule(from, to);
        if old.is_none() && self.reg.rule_count() >= self.datapath.capacity().rules as usize {
            return Err(ServiceError::Full(format!(
                "the rule map is full ({} rules)",
                self.datapath.capacity().rules
            )));
        }
        let allow = req.action == PolicyAction::Allow;
        let undo = match old {
            Some(a) => Op::PutRule(from, to, a),
            None => Op::DeleteRule(from, to),
        };
        let (f, t) = (ContainerId(from), ContainerId(to));
        // The destination's flags say whether a deny rule names it.
        let before = entry(target_spec, &self.reg);
        let mut target = before.clone();
        target.deny_rules = !allow || self.reg.denied_by(to, Some(from));
        self.change(
            &[Op::PutRule(from, to, allow)],
            &[undo],
            |dp| {
                dp.set_rule(f, t, Some(allow))?;
                dp.register(&target, false)
            },
            |dp| {
                let _ = dp.set_rule(f, t, old);
                let _ = dp.register(&before, false);
            },
        )?;
        self.reg.set_rule(from, to, allow);
        info!(
            "policy: {} {} -> {}",
            if allow { "allow" } else { "deny" },
            req.from,
            req.to
        );
        Ok(self.rules())
    }

    pub fn rules(&self) -> Vec<PolicyRule> {
        let name = |id: u32| {
            self.reg
                .get(id)
                .map_or_else(String::new, |c| c.name.clone())
        };
        let mut out: Vec<PolicyRule> = self
            .reg
            .rules()
            .map(|(f, t, a)| PolicyRule {
                from: name(f),
                to: name(t),
                action: if a {
                    PolicyAction::Allow
                } else {
                    PolicyAction::Deny
                },
            })
            .collect();
        out.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        out
    }

    fn spec(&self, name: &str) -> Result<&ContainerSpec> {
        self.reg
            .by_name(name)
            .ok_or_else(|| ServiceError::NotFound(format!("no container named {name:?}")))
    }

    /// The next containers whose links the periodic check covers, round robin by name: those
    /// after the cursor, then from the start (never one twice: at most all of them).
    fn link_batch(&mut self) -> Vec<Entry> {
        let n = LINK_CHECK_BATCH.min(self.reg.len());
        let specs: Vec<&ContainerSpec> = self
            .reg
            .iter_after(&self.link_cursor)
            .chain(self.reg.iter())
            .take(n)
            .collect();
        if let Some(last) = specs.last() {
            self.link_cursor = last.name.clone();
        }
        specs.into_iter().map(|s| entry(s, &self.reg)).collect()
    }

    /// The periodic check (every 30 s by default): programs still attached (repaired when
    /// not), registered cgroups still there (released when not), a store that needs a
    /// rewrite.
    pub fn periodic(&mut self) {
        let batch = self.link_batch();
        let links = self.datapath.check_links(&batch);
        for (name, state) in &links {
            if *state == LinkState::Repaired {
                *self.stats.reattached.entry(name).or_default() += 1;
            }
        }
        self.stats.links = links;
        self.sweep_cgroups();
        if let Err(e) = self.repair_store() {
            error!("{e}");
        }
    }
}
