//! The bpf(2) commands netiso needs that aya 0.14 does not offer. Everything else goes
//! through aya. Each function names the gap it fills.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

// enum bpf_cmd
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr`, as 64-bit words: large enough for every command used here.
type Attr = [u64; 16];

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a 128-byte buffer, larger than the bpf_attr member of each command
    // used here; the pointers placed inside it outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of::<Attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a fresh descriptor the kernel just returned; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Gap: aya's `FdLink` does not expose its descriptor, so a link pinned by an earlier agent
/// is opened here to update it (see [`link_update`]).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = Attr::default();
    attr[0] = c.as_ptr() as u64; // pathname
    Ok(owned(bpf(BPF_OBJ_GET, &mut attr)?))
}

/// Gap: aya 0.14 cannot turn a cgroup sockopt link into an `FdLink`, so that link is pinned
/// here (the other links use `FdLink::pin`).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = Attr::default();
    attr[0] = c.as_ptr() as u64; // pathname
    attr[1] = u64::from(fd.as_raw_fd() as u32); // bpf_fd
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// Gap: aya 0.14 gives a cgroup sockopt program and a socket-lookup program links it cannot
/// turn into pinnable `FdLink`s; this creates the link (to a cgroup or a network namespace
/// fd; a bpf link, so it composes with other programs) whose descriptor [`obj_pin`] pins.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = Attr::default();
    // struct { u32 prog_fd; u32 target_fd; u32 attach_type; u32 flags; }
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(target.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    Ok(owned(bpf(BPF_LINK_CREATE, &mut attr)?))
}

/// Gap: aya 0.14 updates TC links (`attach_to_link`) but not cgroup or netns links. Atomically replaces
/// the program a link runs, so a restarted agent swaps programs with no enforcement gap.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::default();
    // struct { u32 link_fd; u32 new_prog_fd; u32 flags; u32 old_prog_fd; }
    attr[0] = u64::from(link.as_raw_fd() as u32) | (u64::from(prog.as_raw_fd() as u32) << 32);
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Gap: aya detaches only the links it holds itself, not a pinned one opened by path.
/// Detaches a link at once: dropping its last reference (removing its pin) would release it
/// only later, in the kernel's deferred work.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::default();
    // struct { u32 link_fd; }
    attr[0] = u64::from(link.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// `struct bpf_link_info` as 64-bit words: word 0 = type | id << 32, word 1 = prog_id, then
/// the per-type union from word 2.
/// BPF_OBJ_GET_INFO_BY_FD of a link or program, as 64-bit words.
fn link_info(link: BorrowedFd<'_>) -> io::Result<[u64; 32]> {
    let mut info = [0u64; 32];
    let mut attr = Attr::default();
    attr[0] = u64::from(link.as_raw_fd() as u32) | ((size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// Gap: aya has no program info from a bare descriptor (the unix programs are loaded raw).
/// The id of the program `prog`.
pub fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    // struct bpf_prog_info { u32 type; u32 id; ... }
    Ok((link_info(prog)?[0] >> 32) as u32)
}

/// Gap: aya 0.14's `LinkInfo` has no TCX fields. The interface a TCX link is attached to;
/// 0 once that interface is gone (the link is then defunct).
pub fn tcx_ifindex(link: BorrowedFd<'_>) -> io::Result<u32> {
    // union member: struct { u32 ifindex; u32 attach_type; } tcx
    Ok((link_info(link)?[2] & 0xffff_ffff) as u32)
}

/// Gap: aya 0.14's `LinkInfo` has no cgroup fields. The program a cgroup link runs and the
/// cgroup it is attached to; the cgroup id is 0 once the link was detached (defunct).
pub fn cgroup_link(link: BorrowedFd<'_>) -> io::Result<(u32, u64)> {
    // union member: struct { u64 cgroup_id; u32 attach_type; } cgroup
    let info = link_info(link)?;
    Ok(((info[1] & 0xffff_ffff) as u32, info[2]))
}

/// Gap: aya 0.14 cannot load a program for an attach type it does not know (the unix
/// sock_addr hooks). Loads `insns` (relocated `struct bpf_insn`s) as a GPL program of
/// `prog_type` for `expected_attach_type`; on refusal the error carries the verifier's log.
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[aya_obj::generated::bpf_insn],
    name: &str,
) -> io::Result<OwnedFd> {
    const LICENSE: &[u8] = b"GPL\0";
    let load = |log: &mut [u8]| {
        let mut attr = Attr::default();
        // struct { u32 prog_type; u32 insn_cnt; u64 insns; u64 license; u32 log_level;
        //   u32 log_size; u64 log_buf; u32 kern_version; u32 prog_flags; char prog_name[16];
        //   u32 prog_ifindex; u32 expected_attach_type; ... }
        attr[0] = u64::from(prog_type) | ((insns.len() as u64) << 32);
        attr[1] = insns.as_ptr() as u64;
        attr[2] = LICENSE.as_ptr() as u64;
        if !log.is_empty() {
            attr[3] = 1 | ((log.len() as u64) << 32);
            attr[4] = log.as_mut_ptr() as u64;
        }
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        attr[6] = u64::from_ne_bytes(prog_name[..8].try_into().expect("8 bytes"));
        attr[7] = u64::from_ne_bytes(prog_name[8..].try_into().expect("8 bytes"));
        attr[8] = u64::from(expected_attach_type) << 32;
        bpf(BPF_PROG_LOAD, &mut attr).map(owned)
    };
    load(&mut []).or_else(|first| {
        let mut log = vec![0u8; 1 << 20];
        if let Ok(fd) = load(&mut log) {
            return Ok(fd);
        }
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        Err(io::Error::new(
            first.kind(),
            format!("{first}; verifier log (end):\n{tail}"),
        ))
    })
}
