//! The per-container programs (`attach::PER_CONTAINER`: the socket hooks, the packet programs
//! and `listen`): attached to each container's own cgroup as bpf links pinned at
//! `links/cg-<program>@<cgroup id>`, so host sockets run none of them. They are fed through
//! their attachment storage: `CG_INFO` holds the container (read without a lookup),
//! `CG_COUNTERS` the packet programs' per-CPU counters.
#![expect(
    deprecated,
    reason = "attachment-local cgroup storage, see netiso-ebpf's maps"
)]

use std::{
    collections::HashSet,
    fs,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{CgroupStorage, CgroupStorageKey, MapData, PerCpuCgroupStorage},
    programs::ProgramError,
};
use log::debug;
use netiso_common::{maps, Container, PacketCounters};

use super::{
    attach::{self, PER_CONTAINER, WITH_STORAGE},
    io_err,
    maps::map_err,
    program_err, Datapath, DatapathError, Entry,
};

/// Pins of per-container links start with this; the rest is `<direction>@<cgroup id>`.
pub(super) const PIN_PREFIX: &str = "cg-";

impl Datapath {
    /// The pin of a per-container link (also of the abstract-unix programs).
    pub(super) fn container_pin(&self, name: &str, cgroup_id: u64) -> PathBuf {
        if super::UNIX_PROGRAMS.iter().any(|(n, _)| *n == name) {
            return self.unix_pin(name, cgroup_id);
        }
        self.skb_pin(name, cgroup_id)
    }

    /// The descriptor of a loaded program, by name (aya's, or a raw-loaded unix one).
    pub(super) fn program_fd(&self, name: &'static str) -> Result<BorrowedFd<'_>, DatapathError> {
        if let Some(fd) = self.unix_program_fd(name) {
            return Ok(fd);
        }
        let perr = program_err(name);
        let prog = self
            .ebpf
            .program(name)
            .ok_or(perr(ProgramError::UnexpectedProgramType))?;
        Ok(prog.fd().map_err(&perr)?.as_fd())
    }

    /// Writes the container into the storage of its attachments again (after one of its
    /// links was re-made: a new attachment starts with empty storage).
    pub(super) fn refresh_container(&mut self, e: &Entry) -> Result<(), DatapathError> {
        self.write_container(e.cgroup_id, &e.value(), &WITH_STORAGE)?;
        if e.unix_names.is_some() {
            self.write_container(e.cgroup_id, &e.value(), &super::unix::ATTACH_TYPES)?;
        }
        Ok(())
    }

    fn skb_pin(&self, name: &str, cgroup_id: u64) -> PathBuf {
        self.bpffs
            .join("links")
            .join(format!("{PIN_PREFIX}{name}@{cgroup_id}"))
    }

    /// Makes the container's packet programs run for its cgroup: attaches them, or adopts the
    /// links an earlier agent pinned (switching them to this agent's programs), once per agent;
    /// then writes the container into their storage.
    /// The abstract-unix programs follow the same path (see `unix`; `prune_unix` as there).
    pub(super) fn attach_packet_programs(
        &mut self,
        e: &Entry,
        prune_unix: bool,
    ) -> Result<(), DatapathError> {
        let first = !self.attached.contains(&e.cgroup_id);
        if first {
            for (name, attach_type) in PER_CONTAINER {
                let pin = self.skb_pin(name, e.cgroup_id);
                self.link_packet_program(name, attach_type, &e.cgroup, &pin)?;
            }
        }
        self.write_container(e.cgroup_id, &e.value(), &WITH_STORAGE)?;
        self.sync_unix(e, first, prune_unix)?;
        self.attached.insert(e.cgroup_id);
        Ok(())
    }

    /// Attaches one of the per-container programs to `cgroup`, or adopts its pinned link.
    fn link_packet_program(
        &mut self,
        name: &'static str,
        attach_type: u32,
        cgroup: &Path,
        pin: &Path,
    ) -> Result<(), DatapathError> {
        let perr = program_err(name);
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(perr(ProgramError::UnexpectedProgramType))?;
        if pin.exists() {
            return attach::adopt(name, prog.fd().map_err(&perr)?.as_fd(), pin);
        }
        let dir = fs::File::open(cgroup).map_err(io_err("opening cgroup", cgroup))?;
        attach::attach(name, prog, attach_type, &dir, pin)
    }

    /// Writes the container into the storage of its attachments of `attach_types`.
    pub(super) fn write_container(
        &mut self,
        cgroup_id: u64,
        value: &Container,
        attach_types: &[u32],
    ) -> Result<(), DatapathError> {
        let m = self.ebpf.map_mut(maps::CG_INFO).expect("CG_INFO map");
        let mut storage: CgroupStorage<&mut MapData, Container> =
            CgroupStorage::try_from(m).map_err(map_err(maps::CG_INFO))?;
        for attach_type in attach_types {
            storage
                .insert(CgroupStorageKey::new(cgroup_id, *attach_type), value, 0)
                .map_err(map_err(maps::CG_INFO))?;
        }
        Ok(())
    }

    /// Detaches a container's packet programs; their storage goes with them.
    pub(super) fn detach_packet_programs(&mut self, cgroup_id: u64) -> Result<(), DatapathError> {
        for (name, _) in PER_CONTAINER {
            super::detach_link(&self.skb_pin(name, cgroup_id))?;
        }
        self.detach_unix(cgroup_id)?;
        self.attached.remove(&cgroup_id);
        Ok(())
    }

    /// Detaches the packet programs of cgroups not in `keep` (left by removed containers).
    pub(super) fn prune_packet_programs(
        &mut self,
        keep: &HashSet<u64>,
    ) -> Result<(), DatapathError> {
        let dir = self.bpffs.join("links");
        let entries = fs::read_dir(&dir).map_err(io_err("reading", &dir))?;
        let mut stale = HashSet::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(cgroup_id) = name
                .strip_prefix(PIN_PREFIX)
                .or_else(|| name.strip_prefix(super::unix::PIN_PREFIX))
                .and_then(|rest| rest.split_once('@'))
                .and_then(|(_, id)| id.parse::<u64>().ok())
            else {
                continue;
            };
            if !keep.contains(&cgroup_id) {
                stale.insert(cgroup_id);
            }
        }
        for cgroup_id in stale {
            debug!("detaching the packet programs of removed cgroup {cgroup_id}");
            self.detach_packet_programs(cgroup_id)?;
        }
        Ok(())
    }

    /// The container's packet counters, summed over CPUs: (ingress, egress). Zero when its
    /// programs are not attached.
    pub(super) fn packet_counters(
        &mut self,
        cgroup_id: u64,
    ) -> Result<(PacketCounters, PacketCounters), DatapathError> {
        let m = self
            .ebpf
            .map_mut(maps::CG_COUNTERS)
            .expect("CG_COUNTERS map");
        let storage: PerCpuCgroupStorage<&mut MapData, PacketCounters> =
            PerCpuCgroupStorage::try_from(m).map_err(map_err(maps::CG_COUNTERS))?;
        let sum = |attach_type| {
            let mut t = PacketCounters::default();
            if let Ok(values) = storage.get(CgroupStorageKey::new(cgroup_id, attach_type), 0) {
                for c in values.iter() {
                    t.packets += c.packets;
                    t.bytes += c.bytes;
                    t.dropped += c.dropped;
                    t.policy_dropped += c.policy_dropped;
                    t.header_dropped += c.header_dropped;
                    t.audited += c.audited;
                }
            }
            t
        };
        Ok((sum(PER_CONTAINER[0].1), sum(PER_CONTAINER[1].1)))
    }
}
