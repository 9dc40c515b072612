//! The two bpf(2) commands aya 0.14 does not expose: opening a pinned object and swapping the
//! program behind a link (BPF_LINK_UPDATE), which lets a restarted agent replace programs with
//! no enforcement gap.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed, 128-byte buffer, larger than every bpf_attr variant used here.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned bpffs object (link, map or program).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // pathname
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a fresh file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

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

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Attaches `prog` as a bpf link to `target`: a cgroup fd, or an ifindex for TCX. Both kinds
/// are multi-attach and compose with other programs.
pub fn link_create(prog: BorrowedFd<'_>, target: u32, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    // struct { u32 prog_fd; u32 target_fd_or_ifindex; u32 attach_type; u32 flags; }
    attr[0] = (prog.as_raw_fd() as u32 as u64) | ((target as u64) << 32);
    attr[1] = attach_type as u64;
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a fresh file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins a bpf object at `path` on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u32 as u64;
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// What `BPF_OBJ_GET_INFO_BY_FD` says about a TCX link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcxLinkInfo {
    pub prog_id: u32,
    /// 0 once the interface is gone (the link is then defunct).
    pub ifindex: u32,
}

/// Reads a TCX link's program id and interface.
pub fn tcx_link_info(link: BorrowedFd<'_>) -> io::Result<TcxLinkInfo> {
    // struct bpf_link_info { u32 type; u32 id; u32 prog_id; union (8-aligned) { ...
    //   struct { u32 ifindex; u32 attach_type; } tcx; } }
    let mut info = [0u64; 32];
    let mut attr = [0u64; 16];
    attr[0] = (link.as_raw_fd() as u32 as u64) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(TcxLinkInfo {
        prog_id: (info[1] & 0xffff_ffff) as u32,
        ifindex: (info[2] & 0xffff_ffff) as u32,
    })
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
