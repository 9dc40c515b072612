//! The per-interface TC programs: TCX links on the interfaces the agent is told to watch,
//! attached and pinned with aya under `links/` like the cgroup links, so they outlive the
//! agent; a new agent swaps them to its programs (aya's `attach_to_link`).
use std::{
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        ProgramError, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use log::{info, warn};

use super::{io_err, link_err, pin_program, program_err, raw_bpf, Datapath, DatapathError};
use crate::sys;

/// The TC programs: ELF name, the pin name's direction, the attach point.
pub const TC_PROGRAMS: [(&str, &str, TcAttachType); 2] = [
    ("tc_ingress", "ingress", TcAttachType::Ingress),
    ("tc_egress", "egress", TcAttachType::Egress),
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

/// Loads (without attaching) the TC programs, which attach per interface, and pins them.
pub(super) fn load(ebpf: &mut Ebpf, progs: &Path) -> Result<(), DatapathError> {
    for (name, _, _) in TC_PROGRAMS {
        classifier(ebpf, name)?.load().map_err(program_err(name))?;
        pin_program(ebpf, name, progs)?;
    }
    Ok(())
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)
        .and_then(TryInto::try_into)
        .map_err(program_err(name))
}

/// bpffs refuses names with '.', which interface names may contain (`eth0.100`).
fn encode(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

fn decode(pin: &str) -> String {
    pin.replace("%2e", ".").replace("%25", "%")
}

/// The interface a pinned TCX link is on (0: its interface is gone).
fn pinned_ifindex(pin: &Path) -> io::Result<u32> {
    raw_bpf::tcx_ifindex(raw_bpf::obj_get(pin)?.as_fd())
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
    pub fn attach_iface(&mut self, iface: &str) -> Result<u32, DatapathError> {
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
        for (name, direction, at) in TC_PROGRAMS {
            let pin = self.tc_pin(iface, direction);
            match self.attach_tc(name, at, iface, ifindex, &pin) {
                Ok(true) => created.push(pin),
                Ok(false) => {}
                Err(e) => {
                    for pin in created {
                        let _ = fs::remove_file(pin);
                    }
                    return Err(e);
                }
            }
        }
        Ok(ifindex)
    }

    /// Returns true when it created (rather than adopted) the link.
    fn attach_tc(
        &mut self,
        name: &'static str,
        at: TcAttachType,
        iface: &str,
        ifindex: u32,
        pin: &Path,
    ) -> Result<bool, DatapathError> {
        let perr = program_err(name);
        let lerr = link_err(name);
        let prog = classifier(&mut self.ebpf, name)?;
        if pin.exists() {
            if pinned_ifindex(pin).map_err(io_err("inspecting", pin))? == ifindex {
                let link = PinnedLink::from_pin(pin)
                    .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)))
                    .map_err(&lerr)?;
                let id = prog.attach_to_link(link).map_err(&perr)?;
                // The pin holds the link; this agent keeps no descriptor, so unpinning detaches.
                drop(prog.take_link(id).map_err(&perr)?);
                info!("adopted pinned link {}", pin.display());
                return Ok(false);
            }
            // The interface it was on is gone (or is another one now): replace the link.
            warn!("replacing stale link {}", pin.display());
            fs::remove_file(pin).map_err(io_err("unpinning", pin))?;
        }
        let id = prog
            .attach_with_options(iface, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(&perr)?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(&perr)?
            .try_into()
            .map_err(|e: LinkError| lerr(e))?;
        link.pin(pin).map_err(|e| DatapathError::Io {
            what: "pinning link at",
            path: pin.to_owned(),
            source: io::Error::other(e),
        })?;
        info!(
            "attached {name} to {iface} (ifindex {ifindex}), pinned at {}",
            pin.display()
        );
        Ok(true)
    }

    /// Detaches both programs from `iface` (also when the interface no longer exists).
    pub fn detach_iface(&self, iface: &str) -> Result<(), DatapathError> {
        for (_, direction, _) in TC_PROGRAMS {
            super::detach_link(&self.tc_pin(iface, direction))?;
        }
        info!("detached from {iface}");
        Ok(())
    }

    pub fn iface_status(&self, iface: &str) -> IfaceStatus {
        let Ok((ifindex, _)) = sys::interface(iface) else {
            return IfaceStatus::Missing;
        };
        let on_it =
            |direction| pinned_ifindex(&self.tc_pin(iface, direction)).is_ok_and(|i| i == ifindex);
        if TC_PROGRAMS.iter().all(|(_, d, _)| on_it(d)) {
            IfaceStatus::Attached(ifindex)
        } else {
            IfaceStatus::Detached
        }
    }

    /// The interfaces with pinned TC links (what an agent whose state was lost finds).
    pub fn pinned_ifaces(&self) -> Vec<String> {
        let dir = self.bpffs.join("links");
        let mut out: Vec<String> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(PIN_PREFIX)
                    .and_then(|rest| rest.split_once('@'))
                    .map(|(_, i)| decode(i))
            })
            .collect();
        out.sort();
        out.dedup();
        out
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
