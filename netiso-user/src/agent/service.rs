//! The agent's domain logic: validates requests, changes the datapath, then persists the
//! state. A request that fails changes nothing: the datapath is rolled back when the state
//! cannot be saved.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use log::{info, warn};

use super::ApiError;
use crate::{
    api::{
        AddContainer, ContainerInfo, IfaceInfo, IfaceState, Mode, PolicyAction, PolicyRule, Status,
    },
    cgroup,
    datapath::{Datapath, IfaceStatus, PROGRAMS},
    state::{ContainerSpec, Rule, State},
};

/// The rules of `state` by container id, as the kernel holds them.
fn rule_ids(state: &State) -> Vec<(u32, u32, bool)> {
    state
        .rules
        .iter()
        .filter_map(|r| {
            let f = state.containers.get(&r.from)?.id;
            let t = state.containers.get(&r.to)?.id;
            Some((f, t, r.allow))
        })
        .collect()
}

pub struct Service {
    /// Refused, audited and dropped operations reported by the kernel.
    pub events: super::events::EventLog,
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
        for (name, spec) in state.containers.iter_mut() {
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
        datapath.reconcile(state.containers.values())?;
        datapath.reconcile_rules(&rule_ids(&state))?;
        datapath.set_enabled(state.enabled)?;
        for name in &state.ifaces {
            if let Err(e) = datapath.attach_iface(name) {
                warn!("{e}; it stays configured, `netiso iface add {name}` retries");
            }
        }
        for name in ifaces {
            validate_iface(name).map_err(|e| anyhow::anyhow!(e.message))?;
            datapath
                .attach_iface(name)
                .with_context(|| format!("--iface {name}"))?;
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
            events: Default::default(),
            datapath,
            state,
            state_dir,
            mount,
            root,
        })
    }

    pub fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            enabled: self.state.enabled,
            cgroup_root: self.root.clone(),
            bpffs: self.datapath.bpffs().to_owned(),
            state_dir: self.state_dir.clone(),
            containers: self.state.containers.len(),
            programs: PROGRAMS.iter().map(|(p, _)| p.to_string()).collect(),
            ifaces: self.state.ifaces.clone(),
        }
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
    pub fn add_iface(&mut self, name: &str) -> Result<IfaceInfo, ApiError> {
        validate_iface(name)?;
        self.datapath.attach_iface(name).map_err(|e| match e {
            crate::datapath::DatapathError::NoIface { .. }
            | crate::datapath::DatapathError::NotEthernet { .. } => {
                ApiError::bad_request(e.to_string())
            }
            e => ApiError::internal(e),
        })?;
        if !self.state.ifaces.iter().any(|n| n == name) {
            let mut next = self.state.clone();
            next.ifaces.push(name.to_owned());
            next.ifaces.sort();
            let undo = name.to_owned();
            self.commit(next, move |dp, _| Ok(dp.detach_iface(&undo)?))?;
            info!("interface {name}: TC programs attached");
        }
        Ok(self.iface(name))
    }

    pub fn remove_iface(&mut self, name: &str) -> Result<(), ApiError> {
        validate_iface(name)?;
        if !self.state.ifaces.iter().any(|n| n == name) {
            return Err(ApiError::not_found(format!(
                "interface {name:?} is not configured (see `netiso iface ls`)"
            )));
        }
        let mut next = self.state.clone();
        next.ifaces.retain(|n| n != name);
        // State first: if saving fails nothing changed; if detaching then fails, the next
        // agent start prunes the leftover links.
        self.commit(next, |_, _| Ok(()))?;
        self.datapath
            .detach_iface(name)
            .map_err(ApiError::internal)?;
        info!("interface {name}: TC programs detached");
        Ok(())
    }

    /// Persists `next`; on failure the datapath is restored to `self.state` by `undo`.
    fn commit(
        &mut self,
        next: State,
        undo: impl FnOnce(&mut Datapath, &State) -> anyhow::Result<()>,
    ) -> Result<(), ApiError> {
        if let Err(e) = next.save(&self.state_dir) {
            if let Err(u) = undo(&mut self.datapath, &self.state) {
                warn!("rolling back the datapath failed: {u:#}");
            }
            return Err(ApiError::internal(format!("{e}; nothing was changed")));
        }
        self.state = next;
        Ok(())
    }

    pub fn set_enabled(&mut self, enabled: bool) -> Result<Status, ApiError> {
        self.datapath
            .set_enabled(enabled)
            .map_err(ApiError::internal)?;
        let mut next = self.state.clone();
        next.enabled = enabled;
        self.commit(next, |dp, old| Ok(dp.set_enabled(old.enabled)?))?;
        info!("netiso {}", if enabled { "enabled" } else { "disabled" });
        Ok(self.status())
    }

    pub fn list(&mut self) -> Result<Vec<ContainerInfo>, ApiError> {
        let names: Vec<String> = self.state.containers.keys().cloned().collect();
        names.iter().map(|n| self.show(n)).collect()
    }

    pub fn show(&mut self, name: &str) -> Result<ContainerInfo, ApiError> {
        let spec = self.spec(name)?.clone();
        let counters: BTreeMap<String, u64> = self
            .datapath
            .counters(spec.id)
            .map_err(ApiError::internal)?
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        Ok(ContainerInfo {
            name: name.to_owned(),
            id: spec.id,
            cgroup_present: cgroup::resolve(&self.mount, &self.root, &spec.cgroup)
                .map(|c| c.id == spec.cgroup_id)
                .unwrap_or(false),
            cgroup: spec.cgroup,
            cgroup_id: spec.cgroup_id,
            ips: spec.ips,
            loopback: IpAddr::V4(std::net::Ipv4Addr::from(
                netiso_common::policy::loopback_for(spec.id).to_ne_bytes(),
            )),
            mode: spec.mode,
            allow_raw: spec.allow_raw,
            isolated: spec.isolated,
            counters,
        })
    }

    fn spec(&self, name: &str) -> Result<&ContainerSpec, ApiError> {
        self.state
            .containers
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no container named {name:?}")))
    }

    fn check_ip_free(&self, ip: &IpAddr, except: Option<&str>) -> Result<(), ApiError> {
        validate_ip(ip)?;
        match self.state.owner_of(ip) {
            Some(owner) if Some(owner) != except => Err(ApiError::conflict(format!(
                "address {ip} is already owned by container {owner:?}"
            ))),
            Some(owner) => Err(ApiError::conflict(format!(
                "container {owner:?} already owns {ip}"
            ))),
            None => Ok(()),
        }
    }

    pub fn add(&mut self, req: AddContainer) -> Result<ContainerInfo, ApiError> {
        validate_name(&req.name)?;
        if self.state.containers.contains_key(&req.name) {
            return Err(ApiError::conflict(format!(
                "a container named {:?} already exists",
                req.name
            )));
        }
        if req.ips.is_empty() {
            return Err(ApiError::bad_request(
                "a container needs at least one address (--ip)",
            ));
        }
        for (i, ip) in req.ips.iter().enumerate() {
            if req.ips[..i].contains(ip) {
                return Err(ApiError::bad_request(format!(
                    "address {ip} is given twice"
                )));
            }
            self.check_ip_free(ip, None)?;
        }
        let cg = cgroup::resolve(&self.mount, &self.root, &req.cgroup)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        if cg.path == self.root {
            return Err(ApiError::bad_request(format!(
                "{} is the cgroup root itself; register a cgroup below it",
                cg.path.display()
            )));
        }
        for (other, spec) in &self.state.containers {
            if cg.path.starts_with(&spec.cgroup) || spec.cgroup.starts_with(&cg.path) {
                return Err(ApiError::conflict(format!(
                    "cgroup {} overlaps container {other:?} ({}); containers cannot nest",
                    cg.path.display(),
                    spec.cgroup.display()
                )));
            }
        }
        let spec = ContainerSpec {
            id: self.state.next_id,
            cgroup: cg.path,
            cgroup_id: cg.id,
            cgroup_level: cg.level,
            ips: req.ips,
            mode: req.mode,
            allow_raw: req.allow_raw,
            isolated: req.isolated,
        };
        let mut next = self.state.clone();
        next.next_id += 1;
        next.containers.insert(req.name.clone(), spec.clone());
        let undo_spec = spec.clone();
        let apply = |dp: &mut Datapath| -> anyhow::Result<()> {
            dp.set_levels(next.containers.values())?;
            dp.register(&spec)?;
            Ok(())
        };
        if let Err(e) = apply(&mut self.datapath) {
            let _ = self.datapath.unregister(&spec);
            return Err(ApiError::internal(format!("{e:#}")));
        }
        self.commit(next, move |dp, old| {
            dp.unregister(&undo_spec)?;
            Ok(dp.set_levels(old.containers.values())?)
        })?;
        info!(
            "registered container {} ({})",
            req.name,
            spec.cgroup.display()
        );
        self.show(&req.name)
    }

    pub fn remove(&mut self, name: &str) -> Result<(), ApiError> {
        let spec = self.spec(name)?.clone();
        self.datapath
            .unregister(&spec)
            .map_err(ApiError::internal)?;
        let mut next = self.state.clone();
        next.containers.remove(name);
        // Rules naming the container go with it.
        next.rules.retain(|r| r.from != name && r.to != name);
        self.datapath
            .set_levels(next.containers.values())
            .map_err(ApiError::internal)?;
        self.datapath
            .reconcile_rules(&rule_ids(&next))
            .map_err(ApiError::internal)?;
        let undo = spec.clone();
        self.commit(next, move |dp, old| {
            dp.set_levels(old.containers.values())?;
            dp.register(&undo)?;
            Ok(dp.reconcile_rules(&rule_ids(old))?)
        })?;
        info!("unregistered container {name}");
        Ok(())
    }

    /// Applies a changed spec (mode or addresses) to the datapath and the state.
    fn update(
        &mut self,
        name: &str,
        new: ContainerSpec,
        revoked: Option<IpAddr>,
    ) -> Result<ContainerInfo, ApiError> {
        let old = self.spec(name)?.clone();
        self.datapath.register(&new).map_err(ApiError::internal)?;
        if let Some(ip) = revoked {
            self.datapath.revoke(ip).map_err(ApiError::internal)?;
        }
        let mut next = self.state.clone();
        next.containers.insert(name.to_owned(), new.clone());
        let added: Vec<IpAddr> = new
            .ips
            .iter()
            .filter(|ip| !old.ips.contains(ip))
            .copied()
            .collect();
        self.commit(next, move |dp, _| {
            for ip in added {
                dp.revoke(ip)?;
            }
            Ok(dp.register(&old)?)
        })?;
        self.show(name)
    }

    pub fn set_mode(&mut self, name: &str, mode: Mode) -> Result<ContainerInfo, ApiError> {
        let mut spec = self.spec(name)?.clone();
        spec.mode = mode;
        info!("container {name}: mode {mode}");
        self.update(name, spec, None)
    }

    pub fn add_ip(&mut self, name: &str, ip: IpAddr) -> Result<ContainerInfo, ApiError> {
        let mut spec = self.spec(name)?.clone();
        self.check_ip_free(&ip, Some(name))?;
        spec.ips.push(ip);
        info!("container {name}: granted {ip}");
        self.update(name, spec, None)
    }

    pub fn remove_ip(&mut self, name: &str, ip: IpAddr) -> Result<ContainerInfo, ApiError> {
        let mut spec = self.spec(name)?.clone();
        if !spec.ips.contains(&ip) {
            return Err(ApiError::not_found(format!(
                "container {name:?} does not own {ip}"
            )));
        }
        if spec.ips.len() == 1 {
            return Err(ApiError::conflict(format!(
                "{ip} is the last address of container {name:?}; remove the container instead"
            )));
        }
        spec.ips.retain(|a| *a != ip);
        info!("container {name}: revoked {ip}");
        self.update(name, spec, Some(ip))
    }

    /// Sets the rule for container `from` reaching container `to`.
    pub fn set_rule(&mut self, req: PolicyRule) -> Result<Vec<PolicyRule>, ApiError> {
        let from = self.spec(&req.from)?.id;
        let to = self.spec(&req.to)?.id;
        if from == to {
            return Err(ApiError::bad_request(
                "a container always reaches itself; name two containers",
            ));
        }
        let allow = req.action == PolicyAction::Allow;
        self.datapath
            .set_rule(from, to, Some(allow))
            .map_err(ApiError::internal)?;
        let mut next = self.state.clone();
        next.rules
            .retain(|r| !(r.from == req.from && r.to == req.to));
        next.rules.push(Rule {
            from: req.from.clone(),
            to: req.to.clone(),
            allow,
        });
        self.commit(next, |dp, old| Ok(dp.reconcile_rules(&rule_ids(old))?))?;
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

    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.datapath.take_events()
    }

    /// Events after sequence number `after`, named by container.
    pub fn events_after(&self, after: u64) -> crate::api::EventsPage {
        let names: BTreeMap<u32, &String> = self
            .state
            .containers
            .iter()
            .map(|(n, s)| (s.id, n))
            .collect();
        let events = self.events.after(after, |id| {
            names
                .get(&id)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("#{id}"))
        });
        crate::api::EventsPage {
            events,
            last: self.events.last(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    crate::api::validate_name(name).map_err(ApiError::bad_request)
}

fn validate_iface(name: &str) -> Result<(), ApiError> {
    crate::api::validate_iface(name).map_err(ApiError::bad_request)
}

/// Addresses a container can own: unicast, not loopback (containers get a private one), not
/// v4-mapped (give the IPv4 form).
pub fn validate_ip(ip: &IpAddr) -> Result<(), ApiError> {
    let why = match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_loopback() => {
            Some("a loopback address (each container gets a private 127.x loopback)")
        }
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_loopback() => Some("the loopback address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("a v4-mapped address (give the IPv4 form)")
        }
        _ => None,
    };
    match why {
        Some(w) => Err(ApiError::bad_request(format!(
            "{ip} cannot be owned by a container: it is {w}"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("web-1.a_b").is_ok());
        for bad in ["", ".hidden", "a/b", "x y", &"n".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_unicast_addresses_can_be_owned() {
        for ok in ["192.0.2.1", "2001:db8::1"] {
            assert!(validate_ip(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "::ffff:192.0.2.1",
        ] {
            assert!(validate_ip(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
