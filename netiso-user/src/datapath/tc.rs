//! The per-interface TC programs: TCX links on the interfaces the agent is told to watch,
//! pinned under `links/` like the cgroup links, so they outlive the agent and a new agent
//! swaps them to its programs with BPF_LINK_UPDATE.
use std::{
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    programs::{Program, ProgramError},
    Ebpf,
};
use log::{info, warn};

use super::{io_err, Datapath, DatapathError};
use crate::sys;

/// The TC programs: ELF name, the pin name's direction, kernel attach type.
pub const TC_PROGRAMS: [(&str, &str, u32); 2] = [
    ("tc_ingress", "ingress", 46), // BPF_TCX_INGRESS
    ("tc_egress", "egress", 47),   // BPF_TCX_EGRESS
];

/// Pins of TCX links start with this; the rest is `<direction>@<interface>`.
const PIN_PREFIX: &str = "tcx-";

/// Whether an interface's programs are in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfaceStatus {
    /// Both programs attached to the interface with this index.
    Attached(u32),
    /// No interface of that name in the agent's network namespace.
    Missing,
    /// The interface exists but the programs are not (all) on it, e.g. it was re-created.
    Detached,
}

/// Loads (without attaching) the TC programs; they attach per interface.
pub(super) fn load(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    for (name, _, _) in TC_PROGRAMS {
        match ebpf.program_mut(name) {
            Some(Program::SchedClassifier(p)) => p.load(),
            _ => Err(ProgramError::UnexpectedProgramType),
        }
        .map_err(|source| DatapathError::Program { name, source })?;
    }
    Ok(())
}

/// bpffs refuses names with '.', which interface names may contain (`eth0.100`).
fn encode(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

fn decode(pin: &str) -> String {
    pin.replace("%2e", ".").replace("%25", "%")
}

impl Datapath {
    fn tc_pin(&self, iface: &str, direction: &str) -> PathBuf {
        self.bpffs
            .join("links")
            .join(format!("{PIN_PREFIX}{direction}@{}", encode(iface)))
    }

    /// Attaches the ingress and egress programs to `iface`, or adopts links a previous agent
    /// pinned there (swapping in this agent's programs). Idempotent; repairs an interface
    /// that was re-created. On error nothing new stays attached.
    pub fn attach_iface(&self, iface: &str) -> Result<u32, DatapathError> {
        let (ifindex, ty) = sys::interface(iface).map_err(|source| DatapathError::NoIface {
            name: iface.to_owned(),
            source,
        })?;
        if ty != sys::ARPHRD_ETHER && ty != sys::ARPHRD_LOOPBACK {
            return Err(DatapathError::NotEthernet {
                name: iface.to_owned(),
                link_type: ty,
            });
        }
        let mut created = Vec::new();
        let result = TC_PROGRAMS.iter().try_for_each(|(name, direction, ty)| {
            let pin = self.tc_pin(iface, direction);
            if self.attach_tc(name, *ty, ifindex, &pin)? {
                created.push(pin);
            }
            Ok(())
        });
        if let Err(e) = result {
            for pin in created {
                let _ = fs::remove_file(pin);
            }
            return Err(e);
        }
        Ok(ifindex)
    }

    /// Returns true when it created (rather than adopted) the link.
    fn attach_tc(
        &self,
        name: &'static str,
        attach_type: u32,
        ifindex: u32,
        pin: &Path,
    ) -> Result<bool, DatapathError> {
        let perr = |source| DatapathError::Program { name, source };
        let prog = self
            .ebpf
            .program(name)
            .ok_or(perr(ProgramError::UnexpectedProgramType))?
            .fd()
            .map_err(perr)?
            .as_fd();
        if pin.exists() {
            let link = sys::obj_get(pin).map_err(io_err("opening pinned link", pin))?;
            let info = sys::link_info(link.as_fd()).map_err(io_err("inspecting", pin))?;
            if info.tcx_ifindex == ifindex {
                sys::link_update(link.as_fd(), prog).map_err(io_err("updating", pin))?;
                info!("adopted pinned link {}", pin.display());
                return Ok(false);
            }
            // The interface it was on is gone (or is another one now): replace the link.
            warn!("replacing stale link {}", pin.display());
            fs::remove_file(pin).map_err(io_err("unpinning", pin))?;
        }
        let link =
            sys::link_create(prog, ifindex, attach_type).map_err(io_err("attaching to", pin))?;
        sys::obj_pin(link.as_fd(), pin).map_err(io_err("pinning link", pin))?;
        info!(
            "attached {name} to ifindex {ifindex}, pinned at {}",
            pin.display()
        );
        Ok(true)
    }

    /// Detaches both programs from `iface` (also when the interface no longer exists).
    pub fn detach_iface(&self, iface: &str) -> Result<(), DatapathError> {
        for (_, direction, _) in TC_PROGRAMS {
            let pin = self.tc_pin(iface, direction);
            // The pin holds the only reference to the link: removing it detaches.
            match fs::remove_file(&pin) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("unpinning", &pin)(e))
                }
                _ => {}
            }
        }
        info!("detached from {iface}");
        Ok(())
    }

    pub fn iface_status(&self, iface: &str) -> IfaceStatus {
        let Ok((ifindex, _)) = sys::interface(iface) else {
            return IfaceStatus::Missing;
        };
        let on_it = |direction| {
            sys::obj_get(&self.tc_pin(iface, direction))
                .and_then(|l| sys::link_info(l.as_fd()))
                .is_ok_and(|i| i.tcx_ifindex == ifindex)
        };
        if TC_PROGRAMS.iter().all(|(_, d, _)| on_it(d)) {
            IfaceStatus::Attached(ifindex)
        } else {
            IfaceStatus::Detached
        }
    }

    /// Removes the TC links of interfaces not in `keep` (left by an agent whose state was lost).
    pub fn prune_ifaces(&self, keep: &[String]) -> Result<(), DatapathError> {
        let dir = self.bpffs.join("links");
        let entries = fs::read_dir(&dir).map_err(io_err("reading", &dir))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(iface) = name
                .strip_prefix(PIN_PREFIX)
                .and_then(|rest| rest.split_once('@'))
                .map(|(_, i)| decode(i))
            else {
                continue;
            };
            if !keep.contains(&iface) {
                warn!("detaching {name}: interface {iface} is not configured");
                fs::remove_file(e.path()).map_err(io_err("unpinning", &e.path()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_survive_dots_and_percents() {
        for name in ["eth0", "eth0.100", "a%2eb", "%", "x.y.z"] {
            let enc = encode(name);
            assert!(!enc.contains('.'), "{enc}");
            assert_eq!(decode(&enc), name);
        }
    }
}
