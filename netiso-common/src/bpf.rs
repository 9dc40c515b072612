//! The bpf(2) commands netiso needs that aya 0.14 does not expose (host only): opening pins,
//! creating, pinning, updating and inspecting links for the agent; and BPF_PROG_TEST_RUN,
//! the kernel's own way of running a loaded program on a crafted frame against its real
//! maps, for the tests and the benchmark.
//!
//! For a test run the program is found through the TCX link the agent pinned (link ->
//! program id -> fd).
//! The kernel gives the test skb a dummy socket created in the caller's cgroup, so running
//! this from a process inside a container cgroup (netiso-probe `tc-run`) tests the "packet
//! of a container socket" path of the egress program.
use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

/// The raw syscall; `attr` is the command's `union bpf_attr` member, as u64 words.
pub fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a 128-byte buffer, larger than every bpf_attr variant used here; the
    // pointers inside it outlive the call.
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

/// Takes ownership of a descriptor a bpf(2) command returned.
pub fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a fresh descriptor the kernel just returned.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Opens a pinned bpffs object (link, map or program).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // pathname
    Ok(owned(bpf(7, &mut attr)?)) // BPF_OBJ_GET
}

/// Pins a bpf object at `path` on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    attr[1] = fd.as_raw_fd() as u32 as u64;
    bpf(6, &mut attr).map(|_| ()) // BPF_OBJ_PIN
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub prog_id: u32,
    /// For a TCX link: its interface, 0 once the interface is gone (the link is defunct).
    pub tcx_ifindex: u32,
}

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info { u32 type; u32 id; u32 prog_id; union (8-aligned) { ...
    //   struct { u32 ifindex; u32 attach_type; } tcx; } }
    let mut info = [0u64; 32];
    let mut attr = [0u64; 16];
    attr[0] = (link.as_raw_fd() as u32 as u64) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(15, &mut attr)?; // BPF_OBJ_GET_INFO_BY_FD
    Ok(LinkInfo {
        prog_id: (info[1] & 0xffff_ffff) as u32,
        tcx_ifindex: (info[2] & 0xffff_ffff) as u32,
    })
}

/// The program behind the link pinned at `pin`.
pub fn prog_of_link(pin: &Path) -> io::Result<OwnedFd> {
    let link = obj_get(pin)?;
    let mut attr = [0u64; 16];
    attr[0] = u64::from(link_info(link.as_fd())?.prog_id);
    Ok(owned(bpf(13, &mut attr)?)) // BPF_PROG_GET_FD_BY_ID
}

/// Runs the program once on `frame` (an Ethernet frame) and returns its return value
/// (TCX: -1 next, 0 pass, 2 drop).
pub fn test_run(prog: &OwnedFd, frame: &[u8]) -> io::Result<i32> {
    test_run_repeat(prog, frame, 1).map(|(r, _)| r)
}

/// Runs the program `repeat` times on `frame`; returns its return value and the kernel's
/// average run time in nanoseconds.
pub fn test_run_repeat(prog: &OwnedFd, frame: &[u8], repeat: u32) -> io::Result<(i32, u32)> {
    let mut attr = [0u64; 16];
    // struct { u32 prog_fd; u32 retval; u32 data_size_in; u32 data_size_out;
    //          u64 data_in; u64 data_out; u32 repeat; u32 duration; ... }
    attr[0] = prog.as_raw_fd() as u32 as u64;
    attr[1] = frame.len() as u64;
    attr[2] = frame.as_ptr() as u64;
    attr[4] = u64::from(repeat);
    bpf(10, &mut attr)?; // BPF_PROG_TEST_RUN
    Ok(((attr[0] >> 32) as u32 as i32, (attr[4] >> 32) as u32))
}

/// Loads the smallest TC program there is (`return TCX_NEXT`), the baseline a measured
/// program's run time is compared with.
pub fn load_noop_tc() -> io::Result<OwnedFd> {
    // r0 = -1; exit
    let insns: [u64; 2] = [0xffff_ffff_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = [0u64; 16];
    // struct { u32 prog_type; u32 insn_cnt; u64 insns; u64 license; ... }
    attr[0] = 3 | (2 << 32); // BPF_PROG_TYPE_SCHED_CLS
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    Ok(owned(bpf(5, &mut attr)?)) // BPF_PROG_LOAD
}

/// `test_run` on the program behind the link pinned at `pin`.
pub fn run_pinned(pin: &Path, frame: &[u8]) -> io::Result<i32> {
    test_run(&prog_of_link(pin)?, frame)
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Creates a map (`map_type` as in enum bpf_map_type) and pins it at `path`: lets a test
/// stand in for pins left by another netiso version.
pub fn create_pinned_map(
    path: &Path,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<()> {
    let mut attr = [0u64; 16];
    // struct { u32 map_type; u32 key_size; u32 value_size; u32 max_entries; ... }
    attr[0] = u64::from(map_type) | (u64::from(key_size) << 32);
    attr[1] = u64::from(value_size) | (u64::from(max_entries) << 32);
    let map = owned(bpf(0, &mut attr)?); // BPF_MAP_CREATE
    obj_pin(map.as_fd(), path)
}
