//! Containers: register, list, change mode and addresses, unregister.
use std::{collections::BTreeMap, collections::BTreeSet, net::IpAddr};

use log::info;
use netiso_common::{counter, policy, ContainerId};

use super::{entry, rule_ids, Result, Service, ServiceError};
use crate::{
    api::{AddContainer, ContainerInfo, Mode},
    cgroup,
    state::ContainerSpec,
};

impl Service {
    pub fn list(&mut self) -> Result<Vec<ContainerInfo>> {
        let names: Vec<String> = self.state.containers.keys().cloned().collect();
        names.iter().map(|n| self.show(n)).collect()
    }

    pub fn show(&mut self, name: &str) -> Result<ContainerInfo> {
        let spec = self.spec(name)?.clone();
        let values = self.datapath.counters(ContainerId(spec.id))?;
        let counters: BTreeMap<String, u64> = counter::NAMES
            .iter()
            .zip(values)
            .map(|(k, v)| ((*k).to_owned(), v))
            .collect();
        Ok(ContainerInfo {
            name: name.to_owned(),
            id: spec.id,
            cgroup_present: cgroup::resolve(&self.mount, &self.root, &spec.cgroup)
                .is_ok_and(|c| c.id == spec.cgroup_id),
            cgroup: spec.cgroup,
            cgroup_id: spec.cgroup_id,
            ips: spec.ips,
            loopback: IpAddr::V4(policy::loopback_for(ContainerId(spec.id)).into()),
            mode: spec.mode,
            allow_raw: spec.allow_raw,
            isolated: spec.isolated,
            counters,
        })
    }

    fn check_ip_free(&self, ip: &IpAddr, except: Option<&str>) -> Result<()> {
        validate_ip(ip)?;
        match self.state.owner_of(ip) {
            Some(owner) if Some(owner) != except => Err(ServiceError::Conflict(format!(
                "address {ip} is already owned by container {owner:?}"
            ))),
            Some(owner) => Err(ServiceError::Conflict(format!(
                "container {owner:?} already owns {ip}"
            ))),
            None => Ok(()),
        }
    }

    pub fn add(&mut self, req: AddContainer) -> Result<ContainerInfo> {
        self.add_or_existing(req).map(|(info, _)| info)
    }

    /// Registers a container and says whether it is new. Registration is idempotent: when
    /// exactly this container (name, cgroup, addresses, options) is registered already, it is
    /// returned unchanged (`false`); a registration that differs in anything is refused.
    pub fn add_or_existing(&mut self, req: AddContainer) -> Result<(ContainerInfo, bool)> {
        crate::api::validate_name(&req.name).map_err(ServiceError::Invalid)?;
        let path = match (&req.cgroup, req.pid) {
            (Some(path), None) => path.clone(),
            (None, Some(pid)) => cgroup::of_pid(&self.mount, pid)
                .map_err(|e| ServiceError::Invalid(e.to_string()))?,
            _ => {
                return Err(ServiceError::Invalid(
                    "give exactly one of cgroup and pid".into(),
                ))
            }
        };
        let cg = cgroup::resolve(&self.mount, &self.root, &path)
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        if let Some(existing) = self.state.containers.get(&req.name) {
            same_registration(&req, &cg, existing)?;
            return Ok((self.show(&req.name)?, false));
        }
        if req.ips.is_empty() {
            return Err(ServiceError::Invalid(
                "a container needs at least one address (--ip)".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for ip in &req.ips {
            if !seen.insert(ip) {
                return Err(ServiceError::Invalid(format!(
                    "address {ip} is given twice"
                )));
            }
            self.check_ip_free(ip, None)?;
        }
        if cg.path == self.root {
            return Err(ServiceError::Invalid(format!(
                "{} is the cgroup root itself; register a cgroup below it",
                cg.path.display()
            )));
        }
        for (other, spec) in &self.state.containers {
            if cg.path.starts_with(&spec.cgroup) || spec.cgroup.starts_with(&cg.path) {
                return Err(ServiceError::Conflict(format!(
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
        let levels: Vec<u32> = next.containers.values().map(|s| s.cgroup_level).collect();
        self.change(next, |dp| {
            dp.set_levels(levels)?;
            dp.register(&entry(&spec))
        })?;
        info!(
            "registered container {} ({})",
            req.name,
            spec.cgroup.display()
        );
        Ok((self.show(&req.name)?, true))
    }

    pub fn remove(&mut self, name: &str) -> Result<()> {
        let spec = self.spec(name)?.clone();
        let mut next = self.state.clone();
        next.containers.remove(name);
        // Rules naming the container go with it.
        next.rules.retain(|r| r.from != name && r.to != name);
        let rules = rule_ids(&next);
        let levels: Vec<u32> = next.containers.values().map(|s| s.cgroup_level).collect();
        self.change(next, |dp| {
            dp.unregister(&entry(&spec))?;
            dp.reconcile_rules(&rules)?;
            dp.set_levels(levels)
        })?;
        info!("unregistered container {name}");
        Ok(())
    }

    /// Saves and applies a changed spec (mode or addresses); `revoked` is an address it no
    /// longer owns.
    fn update(
        &mut self,
        name: &str,
        new: ContainerSpec,
        revoked: Option<IpAddr>,
    ) -> Result<ContainerInfo> {
        let mut next = self.state.clone();
        next.containers.insert(name.to_owned(), new.clone());
        self.change(next, |dp| {
            if let Some(ip) = revoked {
                dp.revoke(ip)?;
            }
            dp.register(&entry(&new))
        })?;
        self.show(name)
    }

    pub fn set_mode(&mut self, name: &str, mode: Mode) -> Result<ContainerInfo> {
        let mut spec = self.spec(name)?.clone();
        spec.mode = mode;
        let info = self.update(name, spec, None)?;
        info!("container {name}: mode {mode}");
        Ok(info)
    }

    pub fn add_ip(&mut self, name: &str, ip: IpAddr) -> Result<ContainerInfo> {
        let mut spec = self.spec(name)?.clone();
        self.check_ip_free(&ip, Some(name))?;
        spec.ips.push(ip);
        let info = self.update(name, spec, None)?;
        info!("container {name}: granted {ip}");
        Ok(info)
    }

    pub fn remove_ip(&mut self, name: &str, ip: IpAddr) -> Result<ContainerInfo> {
        let mut spec = self.spec(name)?.clone();
        if !spec.ips.contains(&ip) {
            return Err(ServiceError::NotFound(format!(
                "container {name:?} does not own {ip}"
            )));
        }
        if spec.ips.len() == 1 {
            return Err(ServiceError::Conflict(format!(
                "{ip} is the last address of container {name:?}; remove the container instead"
            )));
        }
        spec.ips.retain(|a| *a != ip);
        let info = self.update(name, spec, Some(ip))?;
        info!("container {name}: revoked {ip}");
        Ok(info)
    }
}

/// Checks that a repeated registration asks for exactly what `existing` is; a conflict
/// names what differs.
fn same_registration(
    req: &AddContainer,
    cg: &cgroup::Cgroup,
    existing: &ContainerSpec,
) -> Result<()> {
    let differs = if cg.path != existing.cgroup {
        format!(
            "cgroup {} (requested: {})",
            existing.cgroup.display(),
            cg.path.display()
        )
    } else if cg.id != existing.cgroup_id {
        format!(
            "an earlier cgroup at {} (it was removed and created again)",
            existing.cgroup.display()
        )
    } else if req.ips != existing.ips {
        let list = |ips: &[IpAddr]| {
            ips.iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "addresses {} (requested: {})",
            list(&existing.ips),
            list(&req.ips)
        )
    } else if req.mode != existing.mode {
        format!("mode {} (requested: {})", existing.mode, req.mode)
    } else if req.allow_raw != existing.allow_raw {
        format!(
            "allow-raw {} (requested: {})",
            existing.allow_raw, req.allow_raw
        )
    } else if req.isolated != existing.isolated {
        format!(
            "isolated {} (requested: {})",
            existing.isolated, req.isolated
        )
    } else {
        return Ok(());
    };
    Err(ServiceError::Conflict(format!(
        "a container named {:?} already exists with {differs}; remove it first or choose another name",
        req.name
    )))
}

/// Addresses a container can own: unicast, not loopback (containers get a private one), not
/// v4-mapped (give the IPv4 form).
pub fn validate_ip(ip: &IpAddr) -> Result<()> {
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
        Some(w) => Err(ServiceError::Invalid(format!(
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
        assert!(crate::api::validate_name("web-1.a_b").is_ok());
        for bad in ["", ".hidden", "a/b", "x y", &"n".repeat(65)] {
            assert!(crate::api::validate_name(bad).is_err(), "{bad:?}");
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
