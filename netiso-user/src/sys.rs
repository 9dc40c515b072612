//! Small system queries nix does not wrap: an interface's link type, the type of a mount.
use std::{io, os::fd::AsRawFd, path::Path};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
pub const ARPHRD_ETHER: u16 = 1;
pub const ARPHRD_LOOPBACK: u16 = 772;

/// Whether `path` lives on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

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
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // if_nametoindex accepted the name, so it is shorter than IFNAMSIZ and NUL-terminated here.
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and fills ifr_hwaddr of the ifreq we pass.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFHWADDR as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel set the hwaddr member of the union.
    let ty = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    Ok((index, ty))
}
