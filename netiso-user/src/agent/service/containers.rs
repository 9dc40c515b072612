//! Containers: register (one or a batch), list, change mode and addresses, move an address,
//! unregister, and release the ones whose cgroup disappeared.
use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
};

use log::{info, warn};
use netiso_common::{counter, ContainerId};

use super::{entry, Result, Service, ServiceError};
use crate::{
    api::{AddContainer, ContainerInfo, Mode},
    cgroup,
    registry::{ContainerSpec, LOOPBACK_SLOTS},
    sockets,
    store::Op,
};

impl Service {
    pub fn list(&mut self) -> Result<Vec<ContainerInfo>> {
        let ids: Vec<u32> = self.reg.iter().map(|c| c.id).collect();
        ids.into_iter().map(|id| self.info(id)).collect()
    }

    pub fn show(&mut self, name: &str) -> Result<ContainerInfo> {
        let id = self.spec(name)?.id;
        self.info(id)
    }

    fn info(&mut self, id: u32) -> Result<ContainerInfo> {
        let spec = self.reg.get(id).expect("a registered id").clone();
        let values = self
            .datapath
            .counters(ContainerId(spec.id), spec.cgroup_id)?;
        let counters: BTreeMap<String, u64> = counter::NAMES
            .iter()
            .zip(values)
            .map(|(k, v)| ((*k).to_owned(), v))
            .collect();
        Ok(ContainerInfo {
            cgroup_present: cgroup::exists(&spec.cgroup, spec.cgroup_id),
            name: spec.name,
            id: spec.id,
            cgroup: spec.cgroup,
            cgroup_id: spec.cgroup_id,
            ips: spec.ips,
            loopback: IpAddr::V4(spec.loopback),
            mode: spec.mode,
            allow_raw: spec.allow_raw,
            isolated: spec.isolated,
            abstract_unix: spec.abstract_unix,
            counters,
        })
    }

    fn check_ip_free(&self, ip: &IpAddr, except: Option<&str>) -> Result<()> {
        validate_ip(ip)?;
        match self.reg.owner(ip) {
            Some(owner) if Some(owner.name.as_str()) != except => {
                Err(ServiceError::Conflict(format!(
                    "address {ip} is already owned by container {:?}",
                    owner.name
                )))
            }
            Some(owner) => Err(ServiceError::Conflict(format!(
                "container {:?} already owns {ip}",
                owner.name
            ))),
            None => Ok(()),
        }
    }

    /// Checks the length of an address list, before any work proportional to it.
    fn check_ip_count(&self, n: usize) -> Result<()> {
        let max = self.limits.addresses_per_container as usize;
        if n > max {
            return Err(ServiceError::Full(format!(
                "{n} addresses is more than a container may own (--max-addresses-per-container {max})"
            )));
        }
        Ok(())
    }

    /// Checks an address list (its length was checked by [`Self::check_ip_count`]): each
    /// address, and duplicates in O(n log n).
    fn check_ips(&self, ips: &[IpAddr]) -> Result<()> {
        if ips.is_empty() {
            return Err(ServiceError::Invalid(
                "a container needs at least one address (--ip)".into(),
            ));
        }
        let mut sorted = ips.to_vec();
        sorted.sort_unstable();
        if let Some([dup, _]) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ServiceError::Invalid(format!(
                "address {dup} is given twice"
            )));
        }
        for ip in ips {
            self.check_ip_free(ip, None)?;
        }
        Ok(())
    }

    /// Validates a container's abstract unix names (sorted, deduplicated) and checks they fit
    /// the name map, counting the names of every other container but `replacing`.
    fn check_abstract_names(
        &self,
        names: Option<&[String]>,
        replacing: Option<u32>,
    ) -> Result<Option<Vec<String>>> {
        let Some(names) = names else {
            return Ok(None);
        };
        let names = crate::api::abstract_names(names).map_err(ServiceError::Invalid)?;
        if !names.is_empty() {
            let used: usize = self
                .reg
                .iter()
                .filter(|c| Some(c.id) != replacing)
                .filter_map(|c| c.abstract_unix.as_ref())
                .map(Vec::len)
                .sum();
            if used + names.len() > netiso_common::MAX_UNIX_NAMES as usize {
                return Err(ServiceError::Full(format!(
                    "the abstract unix name map is full ({} names)",
                    netiso_common::MAX_UNIX_NAMES
                )));
            }
        }
        Ok(Some(names))
    }

    /// The limits a registration of `containers` more containers owning `addresses` more
    /// addresses would exceed, if any.
    fn check_room(&self, containers: usize, addresses: usize) -> Result<()> {
        let l = self.effective_limits();
        let max_c = (l.containers as usize).min(LOOPBACK_SLOTS as usize);
        if self.reg.len() + containers > max_c {
            return Err(ServiceError::Full(format!(
                "the registry is full: {} of {max_c} containers registered (--max-containers)",
                self.reg.len()
            )));
        }
        if self.reg.address_count() + addresses > l.addresses as usize {
            return Err(ServiceError::Full(format!(
                "the address map is full: {} of {} addresses registered (--max-addresses)",
                self.reg.address_count(),
                l.addresses
            )));
        }
        Ok(())
    }

    /// A validated spec for `req` with a fresh id and loopback (not yet inserted).
    fn new_spec(&self, req: AddContainer) -> Result<ContainerSpec> {
        crate::api::validate_name(&req.name).map_err(ServiceError::Invalid)?;
        if self.reg.by_name(&req.name).is_some() {
            return Err(ServiceError::Conflict(format!(
                "a container named {:?} already exists",
                req.name
            )));
        }
        self.check_ips(&req.ips)?;
        let cg = self.resolve_cgroup(&req)?;
        if cg.path == self.paths.root {
            return Err(ServiceError::Invalid(format!(
                "{} is the cgroup root itself; register a cgroup below it",
                cg.path.display()
            )));
        }
        let abstract_unix = self.check_abstract_names(req.abstract_unix.as_deref(), None)?;
        let id = self.reg.allocate_id();
        Ok(ContainerSpec {
            id,
            name: req.name,
            cgroup: cg.path,
            cgroup_id: cg.id,
            cgroup_level: cg.level,
            ips: req.ips,
            loopback: crate::registry::loopback_of_slot(id),
            mode: req.mode,
            allow_raw: req.allow_raw,
            isolated: req.isolated,
            abstract_unix,
        })
    }

    /// The cgroup a request names, by path or by a process in it.
    fn resolve_cgroup(&self, req: &AddContainer) -> Result<cgroup::Cgroup> {
        let path = match (&req.cgroup, req.pid) {
            (Some(path), None) => path.clone(),
            (None, Some(pid)) => cgroup::of_pid(&self.paths.mount, pid)
                .map_err(|e| ServiceError::Invalid(e.to_string()))?,
            _ => {
                return Err(ServiceError::Invalid(
                    "give exactly one of cgroup and pid".into(),
                ))
            }
        };
        cgroup::resolve(&self.paths.mount, &self.paths.root, &path)
            .map_err(|e| ServiceError::Invalid(e.to_string()))
    }

    /// Registers a container and says whether it is new. Registration is idempotent: when
    /// exactly this container (name, cgroup, addresses, options) is registered already, it is
    /// returned unchanged (`false`); a registration that differs in anything is refused.
    pub fn add_or_existing(&mut self, req: AddContainer) -> Result<(ContainerInfo, bool)> {
        if let Some(existing) = self.reg.by_name(&req.name) {
            let cg = self.resolve_cgroup(&req)?;
            same_registration(&req, &cg, existing)?;
            let id = existing.id;
            return Ok((self.info(id)?, false));
        }
        let mut added = self.add_batch(vec![req])?;
        Ok((added.remove(0), true))
    }

    /// Registers containers, all or none: each is validated (also against the others of the
    /// batch), then the batch is one transaction in the store and one pass over the maps.
    pub fn add_batch(&mut self, reqs: Vec<AddContainer>) -> Result<Vec<ContainerInfo>> {
        if reqs.is_empty() {
            return Err(ServiceError::Invalid("the batch is empty".into()));
        }
        // Each list is bounded before anything proportional to it is done.
        for (i, r) in reqs.iter().enumerate() {
            if let Err(e) = self.check_ip_count(r.ips.len()) {
                return Err(if reqs.len() == 1 {
                    e
                } else {
                    prefix(e, &format!("batch entry {}: ", i + 1))
                });
            }
        }
        let addresses: usize = reqs.iter().map(|r| r.ips.len()).sum();
        self.check_room(reqs.len(), addresses)?;
        let old_cursors = (self.reg.next_id, self.reg.next_loopback);
        let old_window = self.reg.level_window();
        // Insert one by one into the registry (ids and loopbacks are allocated past those of
        // earlier ones, clashes within the batch are caught); taken out again on any error.
        let mut specs: Vec<ContainerSpec> = Vec::with_capacity(reqs.len());
        let mut failure = None;
        for (i, req) in reqs.into_iter().enumerate() {
            let r = self.new_spec(req).and_then(|spec| {
                self.reg
                    .insert(spec.clone())
                    .map(|_| spec)
                    .map_err(|c| ServiceError::Conflict(c.to_string()))
            });
            match r {
                Ok(spec) => {
                    self.reg.advance_cursors(spec.id, spec.loopback);
                    specs.push(spec);
                }
                Err(e) => {
                    failure = Some(if specs.is_empty() && i == 0 {
                        e
                    } else {
                        prefix(e, &format!("batch entry {}: ", i + 1))
                    });
                    break;
                }
            }
        }
        let take_back = |s: &mut Service, specs: &[ContainerSpec]| {
            for spec in specs {
                s.reg.remove(spec.id);
            }
            (s.reg.next_id, s.reg.next_loopback) = old_cursors;
        };
        if let Some(e) = failure {
            take_back(self, &specs);
            return Err(e);
        }
        let mut ops: Vec<Op> = specs.iter().cloned().map(Op::PutContainer).collect();
        ops.push(Op::Cursors(self.reg.next_id, self.reg.next_loopback));
        let mut undo: Vec<Op> = specs.iter().map(|s| Op::DeleteContainer(s.id)).collect();
        undo.push(Op::Cursors(old_cursors.0, old_cursors.1));
        let entries: Vec<_> = specs.iter().map(|s| entry(s, &self.reg)).collect();
        let window = self.reg.level_window();
        let applied = std::cell::Cell::new(0usize);
        let r = self.change(
            &ops,
            &undo,
            |dp| {
                dp.set_levels(window)?;
                for e in &entries {
                    dp.register(e, true)?;
                    applied.set(applied.get() + 1);
                }
                Ok(())
            },
            |dp| {
                // Whatever was registered goes; a partly registered one too.
                for e in entries.iter().take(applied.get() + 1) {
                    let _ = dp.unregister(e);
                }
                let _ = dp.set_levels(old_window);
            },
        );
        if let Err(e) = r {
            take_back(self, &specs);
            return Err(e);
        }
        for spec in &specs {
            self.watch.add(spec.cgroup_id, &spec.cgroup);
            info!(
                "registered container {} ({}, id {}, loopback {})",
                spec.name,
                spec.cgroup.display(),
                spec.id,
                spec.loopback
            );
        }
        specs.iter().map(|s| self.info(s.id)).collect()
    }

    pub fn remove(&mut self, name: &str) -> Result<()> {
        let id = self.spec(name)?.id;
        self.unregister(id)?;
        info!("unregistered container {name}");
        Ok(())
    }

    /// Removes a registration: store first; in the kernel the addresses and the id go, then
    /// the cgroup entry (the commit point, which frees the processes); rules, levels and
    /// counters after it (best effort: leftovers cannot loosen anything and the next start
    /// prunes them). Then the sockets that used its addresses are destroyed.
    fn unregister(&mut self, id: u32) -> Result<ContainerSpec> {
        let spec = self.reg.get(id).expect("a registered id").clone();
        let rules = self.reg.rules_of(id);
        let mut undo = vec![Op::PutContainer(spec.clone())];
        undo.extend(rules.iter().map(|&(f, t, a)| Op::PutRule(f, t, a)));
        let e = entry(&spec, &self.reg);
        let cgroups = container_cgroups(&spec);
        let ips = spec.ips.clone();
        let early = std::cell::Cell::new(0);
        self.change(
            &[Op::DeleteContainer(id)],
            &undo,
            |dp| {
                // While the addresses are still owned, so that the resets of the aborted
                // connections get past the packet programs to their peers.
                early.set(destroy_sockets(&spec.name, &ips, &cgroups));
                dp.unregister(&e)
            },
            |dp| {
                let _ = dp.register(&e, false);
            },
        )?;
        self.reg.remove(id);
        let keys: Vec<(ContainerId, ContainerId)> = rules
            .iter()
            .map(|&(f, t, _)| (ContainerId(f), ContainerId(t)))
            .collect();
        if let Err(err) = self.datapath.remove_rules(&keys) {
            warn!(
                "removing the rules of container {}: {err} (pruned at the next start)",
                spec.name
            );
        }
        if let Err(err) = self.datapath.set_levels(self.reg.level_window()) {
            warn!("narrowing the cgroup levels: {err}");
        }
        self.watch.remove(spec.cgroup_id, &spec.cgroup);
        self.end_use(&spec, &spec.ips, early.get());
        Ok(spec)
    }

    /// Destroys the sockets of `spec`'s cgroup subtree that still use one of `ips` as
    /// their local address once the addresses left it: those created while the change was
    /// being applied (the first pass, which destroyed `early` sockets, ran before the commit
    /// point). Counts both passes.
    fn end_use(&mut self, spec: &ContainerSpec, ips: &[IpAddr], early: usize) {
        let n = destroy_sockets(&spec.name, ips, &container_cgroups(spec));
        self.stats.sockets_destroyed += (early + n) as u64;
    }

    /// Saves and applies a changed spec (mode or added addresses).
    fn update(&mut self, new: ContainerSpec) -> Result<ContainerInfo> {
        let old = self.reg.get(new.id).expect("a registered id").clone();
        let (e_new, e_old) = (entry(&new, &self.reg), entry(&old, &self.reg));
        let added: Vec<IpAddr> = new
            .ips
            .iter()
            .filter(|ip| !old.ips.contains(ip))
            .copied()
            .collect();
        self.change(
            &[Op::PutContainer(new.clone())],
            &[Op::PutContainer(old.clone())],
            |dp| dp.register(&e_new, false),
            |dp| {
                for ip in &added {
                    let _ = dp.revoke(*ip);
                }
                let _ = dp.register(&e_old, false);
            },
        )?;
        let id = new.id;
        self.reg
            .insert(new)
            .expect("validated against the registry");
        self.info(id)
    }

    /// Restricts a container's abstract unix sockets to `names` (Some), or lifts the
    /// restriction (None).
    pub fn set_abstract_unix(
        &mut self,
        name: &str,
        names: Option<Vec<String>>,
    ) -> Result<ContainerInfo> {
        let mut spec = self.spec(name)?.clone();
        spec.abstract_unix = self.check_abstract_names(names.as_deref(), Some(spec.id))?;
        let info = self.update(spec)?;
        match &info.abstract_unix {
            None => info!("container {name}: abstract unix namespace shared"),
            Some(n) => info!(
                "container {name}: abstract unix restricted to {} name(s)",
                n.len()
            ),
        }
        Ok(info)
    }

    pub fn set_mode(&mut self, name: &str, mode: Mode) -> Result<ContainerInfo> {
        let mut spec = self.spec(name)?.clone();
        spec.mode = mode;
        let info = self.update(spec)?;
        info!("container {name}: mode {mode}");
        Ok(info)
    }

    pub fn add_ip(&mut self, name: &str, ip: IpAddr) -> Result<ContainerInfo> {
        let mut spec = self.spec(name)?.clone();
        self.check_ip_free(&ip, Some(name))?;
        if spec.ips.len() >= self.limits.addresses_per_container as usize {
            return Err(ServiceError::Full(format!(
                "container {name:?} already owns {} addresses (--max-addresses-per-container {})",
                spec.ips.len(),
                self.limits.addresses_per_container
            )));
        }
        self.check_room(0, 1)?;
        spec.ips.push(ip);
        let info = self.update(spec)?;
        info!("container {name}: granted {ip}");
        Ok(info)
    }

    pub fn remove_ip(&mut self, name: &str, ip: IpAddr) -> Result<ContainerInfo> {
        let old = self.spec(name)?.clone();
        releasable(&old, name, ip)?;
        let mut new = old.clone();
        new.ips.retain(|a| *a != ip);
        let (e_new, e_old) = (entry(&new, &self.reg), entry(&old, &self.reg));
        let cgroups = container_cgroups(&old);
        let early = std::cell::Cell::new(0);
        // The container's view (its primary) changes first, while it still owns the address;
        // then its sockets on the address are destroyed (their resets still get out); the
        // revocation is the commit point.
        self.change(
            &[Op::PutContainer(new.clone())],
            &[Op::PutContainer(old.clone())],
            |dp| {
                dp.register(&e_new, false)?;
                early.set(destroy_sockets(name, &[ip], &cgroups));
                dp.revoke(ip)
            },
            |dp| {
                let _ = dp.grant(ip, ContainerId(old.id));
                let _ = dp.register(&e_old, false);
            },
        )?;
        let id = new.id;
        self.reg
            .insert(new)
            .expect("validated against the registry");
        self.end_use(&old, &[ip], early.get());
        info!("container {name}: revoked {ip}");
        self.info(id)
    }

    /// Moves an owned address from one container to another in one step: in the kernel the
    /// owner is replaced by a single map update, so at no moment do both or neither own it.
    /// The sockets of `from` that used it are destroyed afterwards.
    pub fn move_ip(
        &mut self,
        ip: IpAddr,
        from: &str,
        to: &str,
    ) -> Result<(ContainerInfo, ContainerInfo)> {
        let a = self.spec(from)?.clone();
        let b = self.spec(to)?.clone();
        if a.id == b.id {
            return Err(ServiceError::Invalid(format!(
                "{ip} already belongs to {from:?}; name two containers"
            )));
        }
        releasable(&a, from, ip)?;
        if b.ips.len() >= self.limits.addresses_per_container as usize {
            return Err(ServiceError::Full(format!(
                "container {to:?} already owns {} addresses (--max-addresses-per-container {})",
                b.ips.len(),
                self.limits.addresses_per_container
            )));
        }
        let mut a2 = a.clone();
        a2.ips.retain(|x| *x != ip);
        let mut b2 = b.clone();
        b2.ips.push(ip);
        let (ea, ea2, eb, eb2) = (
            entry(&a, &self.reg),
            entry(&a2, &self.reg),
            entry(&b, &self.reg),
            entry(&b2, &self.reg),
        );
        let cgroups = container_cgroups(&a);
        let early = std::cell::Cell::new(0);
        self.change(
            // One transaction: a loses it, b gains it.
            &[Op::PutContainer(a2.clone()), Op::PutContainer(b2.clone())],
            &[Op::PutContainer(a.clone()), Op::PutContainer(b.clone())],
            |dp| {
                // a's view stops using it (it still owns it), then the owner flips (the
                // commit point), then b's view may use it.
                dp.register(&ea2, false)?;
                early.set(destroy_sockets(from, &[ip], &cgroups));
                dp.grant(ip, ContainerId(b.id))?;
                dp.register(&eb2, false)
            },
            |dp| {
                let _ = dp.grant(ip, ContainerId(a.id));
                let _ = dp.register(&ea, false);
                let _ = dp.register(&eb, false);
            },
        )?;
        // Two steps in memory: the address leaves a, then joins b.
        self.reg.insert(a2).expect("validated");
        self.reg.insert(b2).expect("validated");
        self.end_use(&a, &[ip], early.get());
        info!("moved {ip} from container {from} to {to}");
        Ok((self.info(a.id)?, self.info(b.id)?))
    }

    /// Releases the container registered for cgroup `cgroup_id` if that cgroup no longer
    /// exists (matched by id, never by path alone): its registration goes as with
    /// `container rm`, and its addresses are free again. For the cgroup watch, the periodic
    /// sweep and runtime integrations whose containers vanish without a stop hook. Returns
    /// the released container's name.
    pub fn release_cgroup(&mut self, cgroup_id: u64) -> Option<String> {
        let spec = self.reg.by_cgroup_id(cgroup_id)?.clone();
        if cgroup::exists(&spec.cgroup, spec.cgroup_id) {
            return None;
        }
        match self.unregister(spec.id) {
            Ok(_) => {
                self.stats.released += 1;
                warn!(
                    "container {} released: its cgroup {} (id {}) was removed",
                    spec.name,
                    spec.cgroup.display(),
                    spec.cgroup_id
                );
                Some(spec.name)
            }
            Err(e) => {
                warn!(
                    "container {}: its cgroup {} was removed, but releasing it failed: {e} (retried by the periodic check)",
                    spec.name,
                    spec.cgroup.display()
                );
                None
            }
        }
    }

    /// Releases every container whose cgroup is gone (after a watch overflow, periodically).
    pub fn sweep_cgroups(&mut self) -> Vec<String> {
        let gone: Vec<u64> = self
            .reg
            .iter()
            .filter(|c| !cgroup::exists(&c.cgroup, c.cgroup_id))
            .map(|c| c.cgroup_id)
            .collect();
        gone.into_iter()
            .filter_map(|id| self.release_cgroup(id))
            .collect()
    }

    /// Handles what the cgroup watch saw: releases the containers whose cgroup was removed.
    pub fn handle_watch(&mut self) -> Vec<String> {
        let seen = self.watch.read();
        let mut released = Vec::new();
        if seen.overflow {
            released.extend(self.sweep_cgroups());
        }
        for path in seen.removed {
            let id = self.reg.by_path(&path).map(|c| c.cgroup_id);
            if let Some(name) = id.and_then(|id| self.release_cgroup(id)) {
                released.push(name);
            }
        }
        released
    }

    /// A duplicate of the watch's descriptor, for the agent's event loop to wait on.
    pub fn watch_fd(&self) -> Option<std::os::fd::OwnedFd> {
        self.watch.fd().and_then(|fd| fd.try_clone_to_owned().ok())
    }
}

/// The cgroups of a container: its own and every one below it (a removed cgroup has none
/// left below it: rmdir needs them gone).
fn container_cgroups(spec: &ContainerSpec) -> HashSet<u64> {
    let mut cgroups: HashSet<u64> = if cgroup::exists(&spec.cgroup, spec.cgroup_id) {
        cgroup::subtree_ids(&spec.cgroup).into_iter().collect()
    } else {
        HashSet::new()
    };
    cgroups.insert(spec.cgroup_id);
    cgroups
}

/// Destroys the sockets of `cgroups` whose local address is one of `ips`; best effort,
/// logged. Returns how many.
fn destroy_sockets(name: &str, ips: &[IpAddr], cgroups: &HashSet<u64>) -> usize {
    match sockets::destroy(ips, cgroups) {
        Ok(0) => 0,
        Ok(n) => {
            info!(
                "container {name}: destroyed {n} socket(s) using {}",
                ips.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            n
        }
        Err(e) => {
            warn!("container {name}: destroying the sockets that used its revoked addresses failed: {e}");
            0
        }
    }
}

fn prefix(e: ServiceError, p: &str) -> ServiceError {
    match e {
        ServiceError::Invalid(m) => ServiceError::Invalid(format!("{p}{m}")),
        ServiceError::NotFound(m) => ServiceError::NotFound(format!("{p}{m}")),
        ServiceError::Conflict(m) => ServiceError::Conflict(format!("{p}{m}")),
        ServiceError::Full(m) => ServiceError::Full(format!("{p}{m}")),
        other => other,
    }
}

/// Checks that a repeated registration asks for exactly what `existing` is; a conflict
/// names what differs.
fn same_registration(
    req: &AddContainer,
    cg: &cgroup::Cgroup,
    existing: &ContainerSpec,
) -> Result<()> {
    let wanted_abstract = req
        .abstract_unix
        .as_deref()
        .map(crate::api::abstract_names)
        .transpose()
        .map_err(ServiceError::Invalid)?;
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
    } else if wanted_abstract != existing.abstract_unix {
        format!(
            "abstract unix names {:?} (requested: {:?})",
            existing.abstract_unix, req.abstract_unix
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

/// Checks that container `name` owns `ip` and keeps another address without it.
fn releasable(spec: &ContainerSpec, name: &str, ip: IpAddr) -> Result<()> {
    if !spec.ips.contains(&ip) {
        return Err(ServiceError::NotFound(format!(
            "container {name:?} does not own {ip}"
        )));
    }
    if spec.ips.len() == 1 {
        return Err(ServiceError::Conflict(format!(
            "{ip} is the last address of container {name:?}; a container keeps at least one \
             (remove the container instead)"
        )));
    }
    Ok(())
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
