//! Idempotent set-up of what building and running netiso needs, one line per step.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context, Result};

const BPF_LINKER_VERSION: &str = "0.13.0";

fn step(name: &str, r: Result<String>) -> Result<()> {
    match r {
        Ok(msg) => {
            eprintln!("bootstrap: {name:<12} {msg}");
            Ok(())
        }
        Err(e) => Err(e.context(format!("bootstrap step {name} failed"))),
    }
}

pub fn run() -> Result<()> {
    step("nightly", nightly())?;
    step("rust-src", rust_src())?;
    step("bpf-linker", bpf_linker())?;
    step("bpffs", bpffs())?;
    step("iproute2", iproute2())?;
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_vv() -> Result<String> {
    output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
}

fn nightly() -> Result<String> {
    if Command::new("rustup").arg("--version").output().is_err() {
        bail!(
            "rustup is not installed; install it from your distribution or rustup.rs, then rerun"
        );
    }
    if let Ok(v) = nightly_vv() {
        return Ok(format!(
            "present ({})",
            v.lines().next().unwrap_or("").trim()
        ));
    }
    output(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))?;
    Ok("installed".into())
}

fn rust_src() -> Result<String> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok("present".into());
    }
    output(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    Ok("installed".into())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    )
}

/// bpf-linker must link against the same LLVM as the nightly that compiles the eBPF crate,
/// so it is built against the nightly's own libLLVM (no system LLVM needed).
fn bpf_linker() -> Result<String> {
    let bin = cargo_home().join("bin").join("bpf-linker");
    if let Ok(v) = output(Command::new(&bin).arg("--version")) {
        return Ok(format!("present ({})", v.trim()));
    }
    let vv = nightly_vv()?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| anyhow!("`rustc +nightly -vV` reports no LLVM version"))?;
    let major = llvm.split('.').next().unwrap_or_default().trim().to_owned();
    let sysroot =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = fs::read_dir(&libdir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| {
            n.starts_with("libLLVM.so.")
                || (n.starts_with("libLLVM-")
                    && Path::new(n).extension().is_some_and(|e| e == "so"))
        })
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM in {}; is the nightly complete?",
                libdir.display()
            )
        })?;
    // A persistent prefix (bpf-linker's RUNPATH points into it) with the two names it links by.
    let prefix = cargo_home().join("netiso-llvm").join(&lib);
    let plib = prefix.join("lib");
    fs::create_dir_all(&plib)?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = plib.join(name);
        let _ = fs::remove_file(&link);
        symlink(libdir.join(&lib), &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("bootstrap: bpf-linker   building {BPF_LINKER_VERSION} against the nightly's LLVM {llvm} (about a minute)");
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--root")
        .arg(cargo_home())
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() {
        bail!("building bpf-linker failed; see the cargo output above");
    }
    let v = output(Command::new(&bin).arg("--version"))?;
    Ok(format!("installed ({})", v.trim()))
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn bpffs() -> Result<String> {
    let is_bpf =
        |p: &str| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if is_bpf("/sys/fs/bpf") {
        return Ok("mounted at /sys/fs/bpf".into());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("/sys/fs/bpf is not mounted; run as root or `sudo mount -t bpf bpf /sys/fs/bpf`");
    }
    fs::create_dir_all("/sys/fs/bpf").ok();
    output(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mounting bpffs at /sys/fs/bpf")?;
    Ok("mounted it at /sys/fs/bpf".into())
}

fn iproute2() -> Result<String> {
    match output(Command::new("ip").arg("-V")) {
        Ok(v) => Ok(format!("present ({})", v.trim())),
        Err(_) => bail!("`ip` (iproute2) is missing; install it (apt-get install iproute2)"),
    }
}
