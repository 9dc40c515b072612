//! Running the agent's loaded programs on crafted frames: BPF_PROG_TEST_RUN, the kernel's own
//! way of running a program against its real maps. The agent pins its programs under
//! `<bpffs>/progs`; aya opens them there. The kernel gives the test skb a socket created in
//! the caller's cgroup, so running this from a process inside a container cgroup (netiso-probe
//! `tc-run`) tests the "packet of a container socket" path of the egress program.
//!
//! Raw bpf(2) only for what a test needs and aya cannot make: a no-op baseline program and a
//! map standing in for another netiso version's pin.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};

/// The TC program pinned at `pin` (e.g. `<bpffs>/progs/tc_ingress`).
pub fn tc_program(pin: &Path) -> io::Result<SchedClassifier> {
    SchedClassifier::from_pin(pin).map_err(io::Error::other)
}

/// Runs `prog` `repeat` times on `frame` (an Ethernet frame); returns its return value (TCX:
/// -1 next, 0 pass, 2 drop) and the kernel's average run time.
pub fn test_run(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> io::Result<(i32, Duration)> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|e| match e {
            // Keep the kernel's errno (tests check what it refuses, e.g. short frames).
            ProgramError::SyscallError(e) => e.io_error,
            e => io::Error::other(e),
        })?;
    Ok((r.return_value as i32, r.duration))
}

/// Runs the TC program pinned at `pin` once on `frame`; returns its return value.
pub fn run_pinned(pin: &Path, frame: &[u8]) -> io::Result<i32> {
    test_run(&tc_program(pin)?, frame, 1).map(|(r, _)| r)
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a 128-byte buffer, larger than the bpf_attr member of the commands
    // used here; the pointers inside it outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// For the commands that return a new descriptor.
fn bpf_fd(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: a fresh descriptor the kernel just returned; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the smallest TC program there is (`return TCX_NEXT`), the baseline a measured
/// program's run time is compared with.
pub fn noop_tc() -> io::Result<SchedClassifier> {
    // r0 = -1; exit
    let insns: [u64; 2] = [0xffff_ffff_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = [0u64; 16];
    // struct { u32 prog_type; u32 insn_cnt; u64 insns; u64 license; ... }
    attr[0] = 3 | (2 << 32); // BPF_PROG_TYPE_SCHED_CLS
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    let fd = bpf_fd(5, &mut attr)?; // BPF_PROG_LOAD
                                    // aya opens programs by pin: pin it briefly.
    let pin = Path::new("/sys/fs/bpf").join(format!("netiso-noop-{}", std::process::id()));
    obj_pin(fd.as_fd(), &pin)?;
    let prog = tc_program(&pin);
    let _ = std::fs::remove_file(&pin);
    prog
}

fn obj_pin(fd: std::os::fd::BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(fd.as_raw_fd() as u32);
    bpf(6, &mut attr).map(drop) // BPF_OBJ_PIN
}

/// Creates a map (`map_type` as in enum bpf_map_type) and pins it at `path`: stands in for
/// pins left by another netiso version.
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
    let map = bpf_fd(0, &mut attr)?; // BPF_MAP_CREATE
    obj_pin(map.as_fd(), path)
}

/// How many entries the pinned (hash) map at `pin` holds, whatever its key size: walks the
/// keys with BPF_MAP_GET_NEXT_KEY (for leak checks).
pub fn count_entries(pin: &Path) -> io::Result<usize> {
    use std::os::fd::{AsFd, AsRawFd};
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let info = aya::maps::MapInfo::from_pin(pin).map_err(io::Error::other)?;
    let data = aya::maps::MapData::from_pin(pin).map_err(io::Error::other)?;
    let fd = data.fd().as_fd().as_raw_fd();
    let mut key = vec![0u8; info.key_size() as usize];
    let mut next = key.clone();
    let mut n = 0;
    loop {
        // union bpf_attr for BPF_MAP_GET_NEXT_KEY: map_fd, key (NULL: the first), next_key.
        let mut attr = [0u64; 16];
        attr[0] = u64::from(fd as u32);
        attr[1] = if n == 0 { 0 } else { key.as_ptr() as u64 };
        attr[2] = next.as_mut_ptr() as u64;
        // SAFETY: bpf(2) with a 128-byte attr whose pointers outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                attr.as_mut_ptr(),
                128u32,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(n)
            } else {
                Err(e)
            };
        }
        n += 1;
        key.copy_from_slice(&next);
    }
}
