//! The agent's domain logic: validates requests and keeps the state file and the kernel in
//! step. Every change follows one rule: the state (the intent) is saved first, then the
//! kernel follows; when the kernel refuses, both are put back as they were. A request that
//! fails therefore changes nothing, and the answer, the state and the kernel always agree.
mod containers;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use log::{error, info, warn};
use netiso_common::ContainerId;
use thiserror::Error;

use crate::{
    api::{IfaceInfo, IfaceState, Mode, PolicyAction, PolicyRule, Status},
    cgroup,
    datapath::{Datapath, DatapathError, Entry, IfaceStatus, PER_CONTAINER, PROGRAMS, STEER},
    state::{ContainerSpec, State, StateError},
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
    /// The kernel refused a change; nothing was changed.
    #[error("{0}; nothing was changed")]
    Datapath(#[from] DatapathError),
    /// The state could not be saved; nothing was changed.
    #[error("{0}; nothing was changed")]
    State(#[from] StateError),
}

pub type Result<T> = std::result::Result<T, ServiceError>;

/// What the datapath needs of a registered container; `state` holds the rules that name it.
pub fn entry(name: &str, spec: &ContainerSpec, state: &State) -> Entry {
    Entry {
        id: ContainerId(spec.id),
        cgroup: spec.cgroup.clone(),
        cgroup_id: spec.cgroup_id,
        cgroup_level: spec.cgroup_level,
        ips: spec.ips.clone(),
        audit: spec.mode == Mode::Audit,
        allow_raw: spec.allow_raw,
        isolated: spec.isolated,
        deny_rules: state.rules.iter().any(|r| !r.allow && r.to == name),
        unix_names: None,
    }
}

/// The rules of `state` by container id, as the kernel holds them.
fn rule_ids(state: &State) -> Vec<(ContainerId, ContainerId, bool)> {
    state
        .rules
        .iter()
        .filter_map(|r| {
            let f = state.containers.get(&r.from)?.id;
            let t = state.containers.get(&r.to)?.id;
            Some((ContainerId(f), ContainerId(t), r.allow))
        })
        .collect()
}

/// Makes the kernel hold exactly what `state` says (containers, levels, rules, switch).
fn apply_all(dp: &mut Datapath, state: &State) -> std::result::Result<(), DatapathError> {
    let entries: Vec<Entry> = state
        .containers
        .iter()
        .map(|(name, spec)| entry(name, spec, state))
        .collect();
    dp.reconcile(&entries)?;
    dp.reconcile_rules(&rule_ids(state))?;
    dp.set_enabled(state.enabled)
}

pub struct Service {
    datapath: Datapath,
    state: State,
    state_dir: PathBuf,
    mount: PathBuf,
    root: PathBuf,
}

impl Service {
    /// Adopts `state` into a freshly opened datapath: re-resolves each container's cgroup (it
    /// may have been recreated while the agent was down) and makes the maps match. Attaches
    /// the TC programs to the state's interfaces (a missing one stays configured) and to
    /// `ifaces` from the command line (which must exist).
    pub fn start(
        mut datapath: Datapath,
        mut state: State,
        state_dir: PathBuf,
        mount: PathBuf,
        root: PathBuf,
        ifaces: &[String],
    ) -> anyhow::Result<Service> {
        for (name, spec) in &mut state.containers {
            match cgroup::resolve(&mount, &root, &spec.cgroup) {
                Ok(cg) if cg.id != spec.cgroup_id => {
                    warn!(
                        "container {name}: cgroup {} was recreated, following it",
                        spec.cgroup.display()
                    );
                    spec.cgroup_id = cg.id;
                    spec.cgroup_level = cg.level;
                }
                Ok(_) => {}
                Err(e) => warn!("container {name}: {e}; keeping its registration"),
            }
        }
        apply_all(&mut datapath, &state)?;
        for name in &state.ifaces {
            if let Err(e) = datapath.attach_iface(name) {
                warn!("{e}; it stays configured, `netiso iface add {name}` retries");
            }
        }
        for name in ifaces {
            crate::api::validate_iface(name).map_err(anyhow::Error::msg)?;
            datapath
                .attach_iface(name)
                .map_err(|e| anyhow::anyhow!("--iface {name}: {e}"))?;
            if !state.ifaces.contains(name) {
                state.ifaces.push(name.clone());
            }
        }
        state.ifaces.sort();
        datapath.prune_ifaces(&state.ifaces)?;
        state.cgroup_root = Some(root.clone());
        state.save(&state_dir)?;
        info!(
            "adopted state: {} container(s), netiso {}",
            state.containers.len(),
            if state.enabled { "enabled" } else { "disabled" }
        );
        Ok(Service {
            datapath,
            state,
            state_dir,
            mount,
            root,
        })
    }

    /// The one way state changes: saves `next`, then lets `apply` bring the kernel in line.
    /// If saving fails, nothing happened. If the kernel refuses, the kernel is reconciled
    /// back to the current state and the current state is saved again.
    fn change(
        &mut self,
        next: State,
        apply: impl FnOnce(&mut Datapath) -> std::result::Result<(), DatapathError>,
    ) -> Result<()> {
        next.save(&self.state_dir)?;
        if let Err(e) = apply(&mut self.datapath) {
            if let Err(u) = apply_all(&mut self.datapath, &self.state) {
                error!("restoring the datapath after a failed change failed: {u}");
            }
            if let Err(u) = self.state.save(&self.state_dir) {
                error!("restoring the state after a failed change failed: {u}");
            }
            return Err(e.into());
        }
        self.state = next;
        Ok(())
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            enabled: self.state.enabled,
            cgroup_root: self.root.clone(),
            bpffs: self.datapath.bpffs().to_owned(),
            state_dir: self.state_dir.clone(),
            containers: self.state.containers.len(),
            programs: PROGRAMS
                .iter()
                .chain([&STEER])
                .chain(&PER_CONTAINER)
                .map(|(p, _)| (*p).to_owned())
                .collect(),
            ifaces: self.state.ifaces.clone(),
        }
    }

    pub fn set_enabled(&mut self, enabled: bool) -> Result<Status> {
        let mut next = self.state.clone();
        next.enabled = enabled;
        self.change(next, |dp| dp.set_enabled(enabled))?;
        info!("netiso {}", if enabled { "enabled" } else { "disabled" });
        Ok(self.status())
    }

    /// Container names by id, for naming events.
    pub fn names(&self) -> BTreeMap<u32, String> {
        self.state
            .containers
            .iter()
            .map(|(n, s)| (s.id, n.clone()))
            .collect()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.datapath.take_events()
    }

    pub fn ifaces(&self) -> Vec<IfaceInfo> {
        self.state.ifaces.iter().map(|n| self.iface(n)).collect()
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
    /// Attaching only tightens, so the kernel goes first; the state follows, and a state that
    /// cannot be saved detaches again.
    pub fn add_iface(&mut self, name: &str) -> Result<IfaceInfo> {
        crate::api::validate_iface(name).map_err(ServiceError::Invalid)?;
        self.datapath.attach_iface(name).map_err(|e| match e {
            DatapathError::NoIface { .. } | DatapathError::NotEthernet { .. } => {
                ServiceError::Invalid(e.to_string())
            }
            e => e.into(),
        })?;
        if !self.state.ifaces.iter().any(|n| n == name) {
            let mut next = self.state.clone();
            next.ifaces.push(name.to_owned());
            next.ifaces.sort();
            if let Err(e) = next.save(&self.state_dir) {
                if let Err(d) = self.datapath.detach_iface(name) {
                    error!("detaching {name} after a failed save failed: {d}");
                }
                return Err(e.into());
            }
            self.state = next;
            info!("interface {name}: TC programs attached");
        }
        Ok(self.iface(name))
    }

    pub fn remove_iface(&mut self, name: &str) -> Result<()> {
        crate::api::validate_iface(name).map_err(ServiceError::Invalid)?;
        if !self.state.ifaces.iter().any(|n| n == name) {
            return Err(ServiceError::NotFound(format!(
                "interface {name:?} is not configured (see `netiso iface ls`)"
            )));
        }
        let mut next = self.state.clone();
        next.ifaces.retain(|n| n != name);
        let iface = name.to_owned();
        self.change(next, move |dp| dp.detach_iface(&iface))?;
        info!("interface {name}: TC programs detached");
        Ok(())
    }

    /// Sets the rule for container `from` reaching container `to`.
    pub fn set_rule(&mut self, req: PolicyRule) -> Result<Vec<PolicyRule>> {
        let from = self.spec(&req.from)?.id;
        let to = self.spec(&req.to)?.id;
        if from == to {
            return Err(ServiceError::Invalid(
                "a container always reaches itself; name two containers".into(),
            ));
        }
        let allow = req.action == PolicyAction::Allow;
        let mut next = self.state.clone();
        next.rules
            .retain(|r| !(r.from == req.from && r.to == req.to));
        next.rules.push(crate::state::Rule {
            from: req.from.clone(),
            to: req.to.clone(),
            allow,
        });
        let (f, t) = (ContainerId(from), ContainerId(to));
        // The destination's flags say whether a deny rule names it.
        let target = entry(&req.to, self.spec(&req.to)?, &next);
        self.change(next, |dp| {
            dp.set_rule(f, t, Some(allow))?;
            dp.register(&target)
        })?;
        info!(
            "policy: {} {} -> {}",
            if allow { "allow" } else { "deny" },
            req.from,
            req.to
        );
        Ok(self.rules())
    }

    pub fn rules(&self) -> Vec<PolicyRule> {
        self.state
            .rules
            .iter()
            .map(|r| PolicyRule {
                from: r.from.clone(),
                to: r.to.clone(),
                action: if r.allow {
                    PolicyAction::Allow
                } else {
                    PolicyAction::Deny
                },
            })
            .collect()
    }

    fn spec(&self, name: &str) -> Result<&ContainerSpec> {
        self.state
            .containers
            .get(name)
            .ok_or_else(|| ServiceError::NotFound(format!("no container named {name:?}")))
    }
}
