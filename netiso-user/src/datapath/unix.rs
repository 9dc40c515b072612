//! The abstract-unix programs (`connect_unix`, `sendmsg_unix`; see netiso-ebpf's `unix`),
//! attached only to the cgroups of containers whose abstract unix names are restricted, as
//! links pinned at `links/unix-<program>@<cgroup id>`, and the names they may reach
//! (`UNIX_ALLOW`).
//!
//! aya 0.14 has no unix attach types, so these two are loaded here: parsed from the same
//! object with aya-obj (aya's own ELF parser), their map references pointed at the maps aya
//! created, and loaded with the raw bpf call for their attach types.

use std::{
    collections::HashSet,
    fs, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, Map, MapData},
    Ebpf,
};
use log::debug;
use netiso_common::{maps, UnixName};

use super::{io_err, raw_bpf, Datapath, DatapathError, Entry, OBJECT};

/// The programs, their attach types (BPF_CGROUP_UNIX_CONNECT, BPF_CGROUP_UNIX_SENDMSG) and
/// the name of their link pins.
pub const UNIX_PROGRAMS: [(&str, u32); 2] = [("connect_unix", 49), ("sendmsg_unix", 50)];
/// Their attach types, which key their storage.
pub(super) const ATTACH_TYPES: [u32; 2] = [UNIX_PROGRAMS[0].1, UNIX_PROGRAMS[1].1];
/// BPF_PROG_TYPE_CGROUP_SOCK_ADDR
const PROG_TYPE: u32 = 18;
pub(super) const PIN_PREFIX: &str = "unix-";

/// The loaded programs, in the order of [`UNIX_PROGRAMS`].
pub(super) struct UnixPrograms([OwnedFd; 2]);

fn load_err(name: &str) -> impl FnOnce(String) -> DatapathError + '_ {
    move |e| DatapathError::Io {
        what: "loading the abstract-unix program",
        path: name.into(),
        source: io::Error::other(e),
    }
}

/// The descriptor of a map aya created (the kinds the unix programs may use).
fn map_fd(m: &Map) -> Option<BorrowedFd<'_>> {
    let data: &MapData = match m {
        Map::HashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::CgroupStorage(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::RingBuf(d)
        | Map::SkStorage(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

/// Loads both programs from the object and pins them under `progs`.
pub(super) fn load(ebpf: &Ebpf, progs: &Path) -> Result<UnixPrograms, DatapathError> {
    let mut obj = aya_obj::Object::parse(OBJECT).map_err(|e| load_err("object")(e.to_string()))?;
    let mut keys = Vec::new();
    for (name, _) in UNIX_PROGRAMS {
        let p = obj
            .programs
            .get(name)
            .ok_or_else(|| load_err(name)("not in the eBPF object".into()))?;
        keys.push(p.function_key());
    }
    // Only these two and the shared functions they may call are relocated, so only the maps
    // they use need descriptors.
    let program_sections: HashSet<usize> = obj.programs.values().map(|p| p.section_index).collect();
    obj.functions
        .retain(|k, _| keys.contains(k) || !program_sections.contains(&k.0));
    obj.programs
        .retain(|name, _| UNIX_PROGRAMS.iter().any(|(n, _)| n == name));
    let text_sections: HashSet<usize> = obj.functions.keys().map(|k| k.0).collect();
    let maps: Vec<(String, i32, aya_obj::Map)> = obj
        .maps
        .iter()
        .filter_map(|(name, m)| {
            let fd = map_fd(ebpf.map(name)?)?;
            Some((name.clone(), fd.as_raw_fd(), m.clone()))
        })
        .collect();
    obj.relocate_maps(
        maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
        &text_sections,
    )
    .map_err(|e| load_err("object")(e.to_string()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| load_err("object")(e.to_string()))?;
    let mut fds = Vec::new();
    for ((name, attach_type), key) in UNIX_PROGRAMS.iter().zip(&keys) {
        let insns = &obj.functions[key].instructions;
        let fd = raw_bpf::prog_load(PROG_TYPE, *attach_type, insns, name)
            .map_err(|e| load_err(name)(e.to_string()))?;
        let pin = progs.join(name);
        super::unpin(&pin)?;
        raw_bpf::obj_pin(fd.as_fd(), &pin).map_err(io_err("pinning program at", &pin))?;
        fds.push(fd);
    }
    let [connect, sendmsg]: [OwnedFd; 2] = fds.try_into().expect("two programs");
    Ok(UnixPrograms([connect, sendmsg]))
}

/// The names a container may reach, as map keys.
pub(super) fn listed_names(e: &Entry) -> impl Iterator<Item = UnixName> + '_ {
    e.unix_names
        .iter()
        .flatten()
        .filter_map(|n| UnixName::new(e.id, n))
}

impl Datapath {
    /// The descriptor of a raw-loaded unix program, by name.
    pub(super) fn unix_program_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        let progs = self.unix.as_ref().ok()?;
        let i = UNIX_PROGRAMS.iter().position(|(n, _)| *n == name)?;
        Some(progs.0[i].as_fd())
    }

    pub(super) fn unix_pin(&self, name: &str, cgroup_id: u64) -> PathBuf {
        self.bpffs
            .join("links")
            .join(format!("{PIN_PREFIX}{name}@{cgroup_id}"))
    }

    /// Restricts the container's abstract unix sockets to its listed names, or lifts the
    /// restriction. The names are written before the programs are attached, so a restricted
    /// container never misses one; names no longer listed go last.
    /// `adopt`: switch links an earlier agent pinned to this agent's programs. `prune`: remove
    /// its names no longer listed (a scan of the whole map; reconcile prunes once for all).
    pub(super) fn sync_unix(
        &mut self,
        e: &Entry,
        adopt: bool,
        prune: bool,
    ) -> Result<(), DatapathError> {
        let wanted: HashSet<UnixName> = listed_names(e).collect();
        let mut allow: HashMap<&mut MapData, UnixName, u32> = self.hash(maps::UNIX_ALLOW)?;
        for k in &wanted {
            allow
                .insert(k, 1, 0)
                .map_err(super::maps::map_err(maps::UNIX_ALLOW))?;
        }
        if e.unix_names.is_some() {
            self.attach_unix(e, adopt)?;
        } else {
            self.detach_unix(e.cgroup_id)?;
        }
        if prune {
            self.prune_unix_names(|k| k.container == e.id && !wanted.contains(k))?;
        }
        Ok(())
    }

    fn attach_unix(&mut self, e: &Entry, adopt: bool) -> Result<(), DatapathError> {
        let progs = match &self.unix {
            Ok(p) => p,
            Err(why) => {
                return Err(DatapathError::Unsupported(format!(
                    "restricting abstract unix sockets needs the cgroup unix hooks of Linux 6.7 or later, and loading them failed: {why}"
                )))
            }
        };
        let mut cgroup = None;
        for ((name, attach_type), prog) in UNIX_PROGRAMS.iter().zip(&progs.0) {
            let pin = self.unix_pin(name, e.cgroup_id);
            if pin.exists() {
                if adopt {
                    super::attach::adopt(name, prog.as_fd(), &pin)?;
                }
                continue;
            }
            if cgroup.is_none() {
                cgroup =
                    Some(fs::File::open(&e.cgroup).map_err(io_err("opening cgroup", &e.cgroup))?);
            }
            let dir = cgroup.as_ref().expect("opened above");
            let link = raw_bpf::link_create(prog.as_fd(), dir.as_fd(), *attach_type)
                .map_err(io_err("attaching the abstract-unix program to", &e.cgroup))?;
            raw_bpf::obj_pin(link.as_fd(), &pin).map_err(io_err("pinning link", &pin))?;
            debug!("attached {name} to {}", e.cgroup.display());
        }
        self.write_container(e.cgroup_id, &e.value(), &ATTACH_TYPES)
    }

    /// The cgroups whose abstract-unix programs are attached (by their link pins).
    pub(super) fn unix_restricted(&self) -> HashSet<u64> {
        let prefix = format!("{PIN_PREFIX}{}@", UNIX_PROGRAMS[0].0);
        let Ok(entries) = fs::read_dir(self.bpffs.join("links")) else {
            return HashSet::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix(&prefix)?
                    .parse::<u64>()
                    .ok()
            })
            .collect()
    }

    /// Detaches a container's abstract-unix programs, if attached.
    pub(super) fn detach_unix(&mut self, cgroup_id: u64) -> Result<(), DatapathError> {
        for (name, _) in UNIX_PROGRAMS {
            super::detach_link(&self.unix_pin(name, cgroup_id))?;
        }
        Ok(())
    }

    /// Removes the listed names `stale` selects.
    pub(super) fn prune_unix_names(
        &mut self,
        stale: impl Fn(&UnixName) -> bool,
    ) -> Result<(), DatapathError> {
        let mut allow: HashMap<&mut MapData, UnixName, u32> = self.hash(maps::UNIX_ALLOW)?;
        let gone: Vec<UnixName> = allow
            .keys()
            .filter_map(Result::ok)
            .filter(|k| stale(k))
            .collect();
        for k in gone {
            match allow.remove(&k) {
                Err(aya::maps::MapError::KeyNotFound) | Ok(()) => {}
                Err(e) => return Err(super::maps::map_err(maps::UNIX_ALLOW)(e)),
            }
        }
        Ok(())
    }
}
