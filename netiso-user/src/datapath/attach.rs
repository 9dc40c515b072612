//! The cgroup programs: attached once at the cgroup root as bpf links pinned under `links/`,
//! adopted (program swapped atomically) by every later agent.
use std::{
    fs,
    os::{
        fd::{AsFd, BorrowedFd},
        unix::fs::MetadataExt,
    },
    path::Path,
};

use aya::{
    programs::{
        links::{CgroupAttachMode, FdLink},
        CgroupSkbAttachType, Program, ProgramError,
    },
    Ebpf,
};
use log::{debug, error, info};

use super::{io_err, link_err, pin_program, program_err, raw_bpf, Datapath, DatapathError};

/// What [`Datapath::check_links`] found for one program's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Attached at the cgroup root, running this agent's program.
    Attached,
    /// It was not (pin gone, link detached, or another program in it): repaired now.
    Repaired,
    /// It was not, and repairing failed (the error was logged); the next check retries.
    Broken,
}

/// Every program netiso attaches at the cgroup root: ELF function name and kernel attach type
/// (enum bpf_attach_type), for the raw link calls.
pub const PROGRAMS: [(&str, u32); 12] = [
    ("sock_create", 2),   // BPF_CGROUP_INET_SOCK_CREATE
    ("post_bind4", 12),   // BPF_CGROUP_INET4_POST_BIND
    ("post_bind6", 13),   // BPF_CGROUP_INET6_POST_BIND
    ("sock_release", 34), // BPF_CGROUP_INET_SOCK_RELEASE
    ("bind4", 8),         // BPF_CGROUP_INET4_BIND
    ("bind6", 9),         // BPF_CGROUP_INET6_BIND
    ("connect4", 10),     // BPF_CGROUP_INET4_CONNECT
    ("connect6", 11),     // BPF_CGROUP_INET6_CONNECT
    ("sendmsg4", 14),     // BPF_CGROUP_UDP4_SENDMSG
    ("sendmsg6", 15),     // BPF_CGROUP_UDP6_SENDMSG
    ("setsockopt", 22),   // BPF_CGROUP_SETSOCKOPT
    ("guard", 0),         // BPF_CGROUP_INET_INGRESS
];

/// The programs attached to each container's cgroup, not at the root: they run for every
/// packet or every TCP event, and host sockets run none of them (see `skb`).
pub const PER_CONTAINER: [(&str, u32); 3] = [
    ("ingress", 0), // BPF_CGROUP_INET_INGRESS
    ("egress", 1),  // BPF_CGROUP_INET_EGRESS
    ("listen", 3),  // BPF_CGROUP_SOCK_OPS
];

/// The socket-lookup program and its attach type (BPF_SK_LOOKUP), linked to the agent's
/// network namespace.
pub const STEER: (&str, u32) = ("steer", 36);

/// Loads every cgroup program, pins it under `progs`, and attaches it at `cgroup_root` or
/// adopts the link an earlier agent pinned under `links`.
pub(super) fn cgroup_programs(
    ebpf: &mut Ebpf,
    cgroup_root: &Path,
    links: &Path,
    progs: &Path,
) -> Result<(), DatapathError> {
    let cgroup = fs::File::open(cgroup_root).map_err(io_err("opening cgroup", cgroup_root))?;
    for (name, attach_type) in PROGRAMS {
        let prog = ebpf
            .program_mut(name)
            .ok_or(program_err(name)(ProgramError::UnexpectedProgramType))?;
        load(prog).map_err(program_err(name))?;
        let pin = links.join(name);
        let fd = prog.fd().map_err(program_err(name))?.as_fd();
        if pin.exists() {
            adopt(name, fd, &pin)?;
            info!("adopted the pinned link of {name}, program replaced atomically");
        } else {
            attach(name, prog, attach_type, &cgroup, &pin)?;
            info!("attached {name}, pinned at {}", pin.display());
        }
        pin_program(ebpf, name, progs)?;
    }
    for (name, _) in PER_CONTAINER {
        let prog = ebpf
            .program_mut(name)
            .ok_or(program_err(name)(ProgramError::UnexpectedProgramType))?;
        load(prog).map_err(program_err(name))?;
        pin_program(ebpf, name, progs)?;
    }
    Ok(())
}

/// Loads the socket-lookup program and links it to the network namespace the agent runs in,
/// or adopts the link an earlier agent pinned. The namespace is the one whose sockets the
/// cgroup programs govern.
pub(super) fn steering(ebpf: &mut Ebpf, links: &Path, progs: &Path) -> Result<(), DatapathError> {
    let (name, attach_type) = STEER;
    let perr = program_err(name);
    let prog: &mut aya::programs::SkLookup = ebpf
        .program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)
        .and_then(TryInto::try_into)
        .map_err(&perr)?;
    prog.load().map_err(&perr)?;
    let fd = prog.fd().map_err(&perr)?.as_fd();
    let pin = links.join(name);
    if pin.exists() {
        adopt(name, fd, &pin)?;
        info!("adopted the pinned link of {name}, program replaced atomically");
    } else {
        let netns_path = Path::new("/proc/self/ns/net");
        let netns = fs::File::open(netns_path).map_err(io_err("opening", netns_path))?;
        // Raw: aya 0.14's SkLookupLink cannot become a pinnable FdLink.
        let link = raw_bpf::link_create(fd, netns.as_fd(), attach_type)
            .map_err(io_err("linking to the network namespace", &pin))?;
        raw_bpf::obj_pin(link.as_fd(), &pin).map_err(io_err("pinning link", &pin))?;
        info!(
            "attached {name} to this network namespace, pinned at {}",
            pin.display()
        );
    }
    pin_program(ebpf, name, progs)
}

fn load(prog: &mut Program) -> Result<(), ProgramError> {
    match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        Program::SockOps(p) => p.load(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
}

/// A link pinned by an earlier agent: switch it to this agent's program, atomically.
pub(super) fn adopt(name: &str, prog: BorrowedFd<'_>, pin: &Path) -> Result<(), DatapathError> {
    let link = raw_bpf::obj_get(pin).map_err(io_err("opening pinned link", pin))?;
    raw_bpf::link_update(link.as_fd(), prog).map_err(io_err("updating pinned link", pin))?;
    debug!("adopted {} for {name}", pin.display());
    Ok(())
}

/// A new bpf link of `prog` at `cgroup` (the root, or a container's), pinned so it outlives
/// the agent. Links compose with
/// other programs at the same cgroup whatever the mode, which only applies to old-style
/// attachments.
pub(super) fn attach(
    name: &'static str,
    prog: &mut Program,
    attach_type: u32,
    cgroup: &fs::File,
    pin: &Path,
) -> Result<(), DatapathError> {
    let perr = program_err(name);
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match prog {
        Program::CgroupSockAddr(p) => {
            let id = p.attach(cgroup, mode).map_err(&perr)?;
            p.take_link(id).map_err(&perr)?.try_into()
        }
        Program::CgroupSock(p) => {
            let id = p.attach(cgroup, mode).map_err(&perr)?;
            p.take_link(id).map_err(&perr)?.try_into()
        }
        Program::CgroupSkb(p) => {
            let direction = if attach_type == 0 {
                CgroupSkbAttachType::Ingress
            } else {
                CgroupSkbAttachType::Egress
            };
            let id = p.attach(cgroup, direction, mode).map_err(&perr)?;
            p.take_link(id).map_err(&perr)?.try_into()
        }
        Program::SockOps(p) => {
            let id = p.attach(cgroup, mode).map_err(&perr)?;
            p.take_link(id).map_err(&perr)?.try_into()
        }
        Program::CgroupSockopt(_) => {
            // No pinnable link from aya here: raw link, raw pin.
            let fd = prog.fd().map_err(&perr)?.as_fd();
            let link = raw_bpf::link_create(fd, cgroup.as_fd(), attach_type)
                .map_err(io_err("attaching program to cgroup", pin))?;
            raw_bpf::obj_pin(link.as_fd(), pin).map_err(io_err("pinning link", pin))?;
            debug!("attached {name}, pinned at {}", pin.display());
            return Ok(());
        }
        _ => return Err(perr(ProgramError::UnexpectedProgramType)),
    }
    .map_err(link_err(name))?;
    link.pin(pin).map_err(|e| DatapathError::Io {
        what: "pinning link at",
        path: pin.to_owned(),
        source: std::io::Error::other(e),
    })?;
    debug!("attached {name}, pinned at {}", pin.display());
    Ok(())
}

impl Datapath {
    /// Checks that every cgroup program is still attached where it should be, running this
    /// agent's program, and repairs what is not: a missing pin or a detached link gets a new
    /// link, a link running another program gets this agent's back. Says so loudly.
    pub fn check_links(&mut self) -> Vec<(&'static str, LinkState)> {
        let links = self.bpffs.join("links");
        let root_id = fs::metadata(&self.cgroup_root).map_or(0, |m| m.ino());
        let mut out = Vec::new();
        for (name, attach_type) in PROGRAMS {
            let pin = links.join(name);
            let state = match self.check_link(name, attach_type, &pin, root_id) {
                Ok(None) => LinkState::Attached,
                Ok(Some(why)) => {
                    error!("program {name} was not attached at the cgroup root ({why}): re-attached it");
                    LinkState::Repaired
                }
                Err(e) => {
                    error!("program {name} is not attached at the cgroup root and re-attaching failed: {e}");
                    LinkState::Broken
                }
            };
            out.push((name, state));
        }
        out
    }

    /// None when the link is fine; otherwise repairs it and says what was wrong.
    fn check_link(
        &mut self,
        name: &'static str,
        attach_type: u32,
        pin: &Path,
        root_id: u64,
    ) -> Result<Option<&'static str>, DatapathError> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(program_err(name)(ProgramError::UnexpectedProgramType))?;
        let prog_id = prog.info().map_err(program_err(name))?.id();
        let why = match raw_bpf::obj_get(pin) {
            Err(_) => "its pinned link is gone",
            Ok(link) => match raw_bpf::cgroup_link(link.as_fd()) {
                Ok((p, cg)) if p == prog_id && cg == root_id && cg != 0 => return Ok(None),
                Ok((p, cg)) if cg == root_id && cg != 0 => {
                    // Attached where it should be, running another program: swap ours back.
                    let fd = prog.fd().map_err(program_err(name))?.as_fd();
                    raw_bpf::link_update(link.as_fd(), fd)
                        .map_err(io_err("updating pinned link", pin))?;
                    let _ = p;
                    return Ok(Some("its link ran another program"));
                }
                _ => "its link was detached",
            },
        };
        match fs::remove_file(pin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err("unpinning", pin)(e))
            }
            _ => {}
        }
        let cgroup = fs::File::open(&self.cgroup_root)
            .map_err(io_err("opening cgroup", &self.cgroup_root))?;
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(program_err(name)(ProgramError::UnexpectedProgramType))?;
        attach(name, prog, attach_type, &cgroup, pin)?;
        Ok(Some(why))
    }
}
