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
    step("runtimes", runtimes())?;
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

/// Debian packages the container runtime tests use: Podman with runc (crun refuses hybrid
/// cgroup layouts), conmon and the containers configuration, Docker, and busybox-static for
/// the containers' root filesystems; the rest is what Podman expects next to it.
const RUNTIME_PACKAGES: [&str; 11] = [
    "podman",
    "runc",
    "conmon",
    "golang-github-containers-common",
    "fuse-overlayfs",
    "uidmap",
    "catatonit",
    "busybox-static",
    "iptables",
    "slirp4netns",
    "docker.io",
];

/// The packages of `wanted` dpkg does not list as installed.
fn missing_packages(wanted: &[&'static str]) -> Result<Vec<&'static str>> {
    // dpkg-query fails for packages it has never heard of but still lists the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\\n"])
        .args(wanted)
        .output()
        .context("running dpkg-query (the runtime step needs a Debian-based system)")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(p, _)| p)
        .collect();
    Ok(wanted
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}

fn apt_get(args: &[&str]) -> Result<String> {
    output(
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn runtime_versions() -> String {
    let word = |cmd: &str, arg: &str, n: usize| {
        output(Command::new(cmd).arg(arg))
            .ok()
            .and_then(|o| {
                o.split_whitespace()
                    .nth(n)
                    .map(|w| w.trim_end_matches(',').to_owned())
            })
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "podman {}, runc {}, docker {}",
        word("podman", "--version", 2),
        word("runc", "--version", 2),
        word("dockerd", "--version", 2)
    )
}

/// Podman, runc and Docker for the container runtime tests, installed with apt-get when
/// missing. Without root (outside CI) it only warns: everything but those tests still runs.
fn runtimes() -> Result<String> {
    let missing = missing_packages(&RUNTIME_PACKAGES)?;
    if missing.is_empty() {
        return Ok(format!("present ({})", runtime_versions()));
    }
    let list = missing.join(" ");
    if !nix::unistd::geteuid().is_root() {
        let advice = format!("apt-get install -y --no-install-recommends {list}");
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("missing {list}; run as root or `{advice}`");
        }
        return Ok(format!(
            "MISSING {list}: the podman and docker tests will fail; as root: {advice}"
        ));
    }
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(&missing);
    if apt_get(&install).is_err() {
        // A fresh machine may have no package lists yet.
        apt_get(&["update"]).context("apt-get update")?;
        apt_get(&install).with_context(|| format!("installing {list}"))?;
    }
    let still = missing_packages(&RUNTIME_PACKAGES)?;
    if !still.is_empty() {
        bail!("apt-get did not install {}", still.join(" "));
    }
    Ok(format!("installed {list} ({})", runtime_versions()))
}
