//! The timing floor: a no-op cgroup_skb program the cost section runs, and times, next to
//! netiso's programs, to measure what the timing itself adds to every run.
//!
//! With run-time statistics on, the kernel brackets every program run with two `sched_clock()`
//! reads and adds the difference to the program's `run_time_ns` (`__bpf_prog_run` in
//! include/linux/filter.h, the common path of every program type). A program that only
//! returns therefore shows what a run costs before any program code: the clock reads and the
//! call. It is the bench's instrument, not part of netiso: pinned in a directory of the bench's
//! own, named `timing-floor`, and kept out of every sum of netiso's programs.
//!
//! Gap: aya 0.14 loads programs only from ELF objects and cannot load two raw instructions, so
//! this module calls bpf(2) itself, for the three commands it needs. Nothing else in the bench
//! uses the raw syscall.
use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::env;

/// The pin's file name, which is also how the cost section tells the floor from netiso's
/// programs in a client's window.
pub const NAME: &str = "timing-floor";
/// The name the kernel shows (`bpftool prog`): at most 15 bytes of `[A-Za-z0-9_.]`.
const PROG_NAME: &[u8] = b"timing_floor";

// enum bpf_cmd
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
// enum bpf_prog_type
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
// enum bpf_attach_type
const BPF_CGROUP_INET_INGRESS: u32 = 0;
// Opcodes: BPF_ALU64 | BPF_MOV | BPF_K, and BPF_JMP | BPF_EXIT.
const MOV64_IMM: u8 = 0x07 | 0xb0;
const EXIT: u8 = 0x05 | 0x90;

/// `struct bpf_insn`: opcode, dst_reg (low nibble) and src_reg (high nibble), offset, imm.
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `r0 = 1; exit`: a cgroup_skb program that passes every packet.
const PROGRAM: [Insn; 2] = [
    Insn {
        code: MOV64_IMM,
        regs: 0,
        off: 0,
        imm: 1,
    },
    Insn {
        code: EXIT,
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// The BPF_PROG_LOAD member of `union bpf_attr`, up to `expected_attach_type` (the kernel
/// zero-fills the fields after it).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The BPF_OBJ_PIN member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The BPF_LINK_CREATE member of `union bpf_attr`, for a cgroup target.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// bpf(2) with the attribute struct of `cmd`; returns what the call returns.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`, passed with its
    // size; the pointers inside it point at data that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// bpf(2) for a command that returns a new descriptor.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: a fresh descriptor the kernel just returned; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// The loaded floor program, pinned at `<dir>/timing-floor`; the directory is removed on drop
/// (and by the bench's teardown on Ctrl-C or an error).
pub struct Floor {
    prog: OwnedFd,
    dir: PathBuf,
}

impl Floor {
    /// Loads the program and pins it in `dir`, a bpffs directory the bench creates.
    pub fn load(dir: &Path) -> Result<Floor> {
        env::track_bpf_dir(dir);
        fs::create_dir(dir).with_context(|| {
            format!(
                "creating {} for the timing floor (is bpffs mounted at /sys/fs/bpf?)",
                dir.display()
            )
        })?;
        // From here on, drop removes the directory.
        let prog = load_program().context(
            "loading the timing floor, a 2-instruction cgroup_skb program (BPF_PROG_LOAD)",
        );
        let floor = match prog {
            Ok(prog) => Floor {
                prog,
                dir: dir.to_owned(),
            },
            Err(e) => {
                remove_dir(dir);
                return Err(e);
            }
        };
        let pin = floor.pin();
        let c = c_path(&pin)?;
        let mut attr = ObjPinAttr {
            pathname: c.as_ptr() as u64,
            bpf_fd: floor.prog.as_raw_fd() as u32,
            file_flags: 0,
        };
        bpf(BPF_OBJ_PIN, &mut attr)
            .with_context(|| format!("pinning the timing floor at {}", pin.display()))?;
        Ok(floor)
    }

    /// Where the program is pinned.
    pub fn pin(&self) -> PathBuf {
        self.dir.join(NAME)
    }

    /// The directory to read it from (the client's `--bpf-progs`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Attaches the floor to the ingress of each cgroup; it stays attached until the returned
    /// links are dropped (a cgroup bpf link detaches when its last descriptor closes).
    pub fn attach(&self, cgroups: &[&Path]) -> Result<Vec<OwnedFd>> {
        cgroups
            .iter()
            .map(|cg| {
                let dir = fs::File::open(cg)
                    .with_context(|| format!("opening cgroup {}", cg.display()))?;
                let mut attr = LinkCreateAttr {
                    prog_fd: self.prog.as_raw_fd() as u32,
                    target_fd: dir.as_raw_fd() as u32,
                    attach_type: BPF_CGROUP_INET_INGRESS,
                    flags: 0,
                };
                bpf_fd(BPF_LINK_CREATE, &mut attr).with_context(|| {
                    format!(
                        "attaching the timing floor to the ingress of {} (BPF_LINK_CREATE)",
                        cg.display()
                    )
                })
            })
            .collect()
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        remove_dir(&self.dir);
    }
}

fn remove_dir(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
    env::forget_bpf_dir(dir);
}

fn load_program() -> io::Result<OwnedFd> {
    // Any license will do: the program calls no helper.
    const LICENSE: &[u8] = b"MIT\0";
    let mut prog_name = [0u8; 16];
    prog_name[..PROG_NAME.len()].copy_from_slice(PROG_NAME);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_SKB,
        insn_cnt: PROGRAM.len() as u32,
        insns: PROGRAM.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        prog_name,
        expected_attach_type: BPF_CGROUP_INET_INGRESS,
        ..ProgLoadAttr::default()
    };
    bpf_fd(BPF_PROG_LOAD, &mut attr)
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    /// The structs match `union bpf_attr` and `struct bpf_insn` of include/uapi/linux/bpf.h.
    #[test]
    fn layouts_match_the_kernel_abi() {
        assert_eq!(size_of::<Insn>(), 8);
        assert_eq!(offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(offset_of!(ProgLoadAttr, license), 16);
        assert_eq!(offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(offset_of!(ProgLoadAttr, prog_flags), 44);
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(size_of::<ProgLoadAttr>(), 72);
        assert_eq!(offset_of!(ObjPinAttr, bpf_fd), 8);
        assert_eq!(size_of::<ObjPinAttr>(), 16);
        assert_eq!(offset_of!(LinkCreateAttr, attach_type), 8);
        assert_eq!(size_of::<LinkCreateAttr>(), 16);
    }

    /// `r0 = 1; exit` as the kernel encodes it (bpftool prints b7 00 .. 01 00 00 00, 95 ...).
    #[test]
    fn the_program_is_r0_1_exit() {
        // SAFETY: `Insn` is 8 plain bytes (checked above).
        let bytes: [u8; 16] = unsafe { std::mem::transmute(PROGRAM) };
        assert_eq!(
            bytes,
            [0xb7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]
        );
        assert!(PROG_NAME.len() <= 15);
        assert!(PROG_NAME
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.'));
    }
}
