//! bpf(2) commands aya 0.14 does not expose, for the agent: creating links (a sockopt link
//! aya cannot pin, TCX links by ifindex) and swapping the program behind a link
//! (BPF_LINK_UPDATE), which lets a restarted agent replace programs with no enforcement gap.
//! The raw syscall and the pin helpers live in `netiso_common::bpf`, shared with the tests.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
    path::Path,
};

use netiso_common::bpf::{bpf, owned};
pub use netiso_common::bpf::{link_info, obj_get, obj_pin};

const BPF_LINK_UPDATE: libc::c_long = 29;

/// Atomically replaces the program a link runs.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = [0u64; 16];
    // struct { u32 link_fd; u32 new_prog_fd; u32 flags; u32 old_prog_fd; }
    attr[0] = (link.as_raw_fd() as u32 as u64) | ((prog.as_raw_fd() as u32 as u64) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Whether `path` lives on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

const BPF_LINK_CREATE: libc::c_long = 28;

/// Attaches `prog` as a bpf link to `target`: a cgroup fd, or an ifindex for TCX. Both kinds
/// are multi-attach and compose with other programs.
pub fn link_create(prog: BorrowedFd<'_>, target: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    // struct { u32 prog_fd; u32 target_fd_or_ifindex; u32 attach_type; u32 flags; }
    attr[0] = (prog.as_raw_fd() as u32 as u64) | ((target as u64) << 32);
    attr[1] = attach_type as u64;
    Ok(owned(bpf(BPF_LINK_CREATE, &mut attr)?))
}

const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
pub const ARPHRD_ETHER: u16 = 1;
pub const ARPHRD_LOOPBACK: u16 = 772;

/// An interface's index and link type (ARPHRD_*) in the caller's network namespace.
pub fn interface(name: &str) -> io::Result<(u32, u16)> {
    let index = nix::net::if_::if_nametoindex(name).map_err(io::Error::from)?;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    // SAFETY: ifreq is plain data; the name fits (if_nametoindex accepted it, so < IFNAMSIZ).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of the ifreq we pass.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFHWADDR as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel set the hwaddr member of the union.
    let ty = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    Ok((index, ty))
}
