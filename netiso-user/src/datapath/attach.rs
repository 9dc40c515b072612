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

use super::{io_err, link_err, pin_program, program_err, raw_bpf, Datapath, DatapathError, Entry};

/// What [`Datapath::check_links`] found for one program's links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Attached where it should be, running this agent's program.
    Attached,
    /// It was not (pin gone, link detached, or another program in it): repaired now.
    Repaired,
    /// It was not, and repairing failed (the error was logged); the next check retries.
    Broken,
}

/// The programs netiso attaches at the cgroup root: ELF function name and kernel attach type
/// (enum bpf_attach_type), for the raw link calls. Only `guard`, which must see what host
/// sockets receive; everything else is attached per container.
pub const PROGRAMS: [(&str, u32); 1] = [
    ("guard", 0), // BPF_CGROUP_INET_INGRESS
];

/// The programs attached to each container's cgroup (see `skb`): they govern the sockets made
/// in it and their packets, and host sockets run none of them. Hooks run the programs of the
/// cgroup a socket was made in, so a container's socket is governed wherever it goes.
pub const PER_CONTAINER: [(&str, u32); 14] = [
    ("ingress", 0),       // BPF_CGROUP_INET_INGRESS
    ("egress", 1),        // BPF_CGROUP_INET_EGRESS
    ("sock_create", 2),   // BPF_CGROUP_INET_SOCK_CREATE
    ("listen", 3),        // BPF_CGROUP_SOCK_OPS
    ("bind4", 8),         // BPF_CGROUP_INET4_BIND
    ("bind6", 9),         // BPF_CGROUP_INET6_BIND
    ("connect4", 10),     // BPF_CGROUP_INET4_CONNECT
    ("connect6", 11),     // BPF_CGROUP_INET6_CONNECT
    ("post_bind4", 12),   // BPF_CGROUP_INET4_POST_BIND
    ("post_bind6", 13),   // BPF_CGROUP_INET6_POST_BIND
    ("sendmsg4", 14),     // BPF_CGROUP_UDP4_SENDMSG
    ("sendmsg6", 15),     // BPF_CGROUP_UDP6_SENDMSG
    ("setsockopt", 22),   // BPF_CGROUP_SETSOCKOPT
    ("sock_release", 34), // BPF_CGROUP_INET_SOCK_RELEASE
];

/// The attach types of the per-container programs that read the container from their
/// attachment's storage (`CG_INFO`): the agent writes it for each.
pub const WITH_STORAGE: [u32; 5] = [0, 1, 2, 12, 13];

/// Root links earlier versions pinned under `links/` for programs now attached per
/// container: removed once every container has its own (see `retire_former_root_links`), so
/// no old program keeps running at the root and an upgrade leaves no gap.
const FORMER_ROOT: [&str; 11] = [
    "sock_create",
    "post_bind4",
    "post_bind6",
    "sock_release",
    "bind4",
    "bind6",
    "connect4",
    "connect6",
    "sendmsg4",
    "sendmsg6",
    "setsockopt",
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
    /// Detaches the root links of programs that earlier versions attached at the root and
    /// this one attaches per container. Called once every registered container has its own.
    pub fn retire_former_root_links(&self) -> Result<(), DatapathError> {
        let links = self.bpffs.join("links");
        for name in FORMER_ROOT {
            let pin = links.join(name);
            if pin.exists() {
                super::detach_link(&pin)?;
                info!("detached {name} from the cgroup root: it is attached per container now");
            }
        }
        Ok(())
    }

    /// Checks that every cgroup program is still attached where it should be, running this
    /// agent's program, and repairs what is not: a missing pin or a detached link gets a new
    /// link, a link running another program gets this agent's back. Says so loudly. The root
    /// programs are checked every time, the per-container ones for `containers` (the caller
    /// spreads its containers over successive checks). One state per program, the worst.
    pub fn check_links(&mut self, containers: &[Entry]) -> Vec<(&'static str, LinkState)> {
        let mut out = Vec::new();
        let root = self.cgroup_root.clone();
        let root_id = fs::metadata(&root).map_or(0, |m| m.ino());
        let links = self.bpffs.join("links");
        for (name, attach_type) in PROGRAMS {
            let state = self.checked(name, attach_type, &links.join(name), &root, root_id);
            out.push((name, state));
        }
        let unix: &[(&'static str, u32)] = if self.unix.is_ok() {
            &crate::datapath::UNIX_PROGRAMS
        } else {
            &[]
        };
        // Containers with a re-made link: a new attachment has empty storage.
        let mut refresh = std::collections::HashSet::new();
        for (name, attach_type) in PER_CONTAINER.iter().chain(unix) {
            let unix_prog = unix.iter().any(|(n, _)| n == name);
            let mut worst = LinkState::Attached;
            for e in containers {
                if unix_prog && e.unix_names.is_none() {
                    continue;
                }
                let pin = self.container_pin(name, e.cgroup_id);
                let state = self.checked(name, *attach_type, &pin, &e.cgroup, e.cgroup_id);
                if state != LinkState::Attached {
                    refresh.insert(e.id);
                }
                if state == LinkState::Broken || worst == LinkState::Attached {
                    worst = state;
                }
            }
            out.push((*name, worst));
        }
        for e in containers.iter().filter(|e| refresh.contains(&e.id)) {
            if let Err(err) = self.refresh_container(e) {
                error!(
                    "writing container {} into the storage of its programs: {err}",
                    e.id.0
                );
            }
        }
        out
    }

    /// Checks and repairs one link; logs what it found.
    fn checked(
        &self,
        name: &'static str,
        attach_type: u32,
        pin: &Path,
        cgroup: &Path,
        cgroup_id: u64,
    ) -> LinkState {
        let r = self.check_link(name, attach_type, pin, cgroup, cgroup_id);
        match r {
            Ok(None) => LinkState::Attached,
            Ok(Some(why)) => {
                error!(
                    "program {name} was not attached to {} ({why}): re-attached it",
                    cgroup.display()
                );
                LinkState::Repaired
            }
            Err(e) => {
                error!(
                    "program {name} is not attached to {} and re-attaching failed: {e}",
                    cgroup.display()
                );
                LinkState::Broken
            }
        }
    }

    /// None when the link is fine; otherwise repairs it and says what was wrong.
    fn check_link(
        &self,
        name: &'static str,
        attach_type: u32,
        pin: &Path,
        cgroup: &Path,
        cgroup_id: u64,
    ) -> Result<Option<&'static str>, DatapathError> {
        let prog = self.program_fd(name)?;
        let prog_id =
            raw_bpf::prog_id(prog.as_fd()).map_err(io_err("reading the program of", pin))?;
        let why = match raw_bpf::obj_get(pin) {
            Err(_) => "its pinned link is gone",
            Ok(link) => match raw_bpf::cgroup_link(link.as_fd()) {
                Ok((p, cg)) if p == prog_id && cg == cgroup_id && cg != 0 => return Ok(None),
                Ok((_, cg)) if cg == cgroup_id && cg != 0 => {
                    // Attached where it should be, running another program: swap ours back.
                    raw_bpf::link_update(link.as_fd(), prog.as_fd())
                        .map_err(io_err("updating pinned link", pin))?;
                    return Ok(Some("its link ran another program"));
                }
                _ => "its link was detached",
            },
        };
        super::detach_link(pin)?;
        let dir = fs::File::open(cgroup).map_err(io_err("opening cgroup", cgroup))?;
        let link = raw_bpf::link_create(prog.as_fd(), dir.as_fd(), attach_type)
            .map_err(io_err("attaching program to cgroup", pin))?;
        raw_bpf::obj_pin(link.as_fd(), pin).map_err(io_err("pinning link", pin))?;
        Ok(Some(why))
    }
}
