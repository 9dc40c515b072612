//! `cargo xtask bench [--quick] [--out DIR] [-- EXTRA...]`: builds netiso and the load generator
//! in release mode and runs `netiso-bench run` (see netiso-bench/src/bench.rs for what it does).
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

pub fn run(quick: bool, out: Option<PathBuf>, extra: &[String]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark creates namespaces and cgroups and attaches eBPF programs: run it as root");
    }
    eprintln!("bench: building netiso and netiso-bench (release)");
    crate::cargo(&[
        "build",
        "--release",
        "-p",
        "netiso-user",
        "-p",
        "netiso-bench",
        "--bins",
    ])?;
    let root = crate::workspace_root();
    let release = root.join("target/release");
    let out = out.unwrap_or_else(|| root.join("target/bench"));
    let mut cmd = Command::new(release.join("netiso-bench"));
    cmd.arg("run")
        .arg("--netiso-bin")
        .arg(release.join("netiso"))
        .arg("--out")
        .arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    cmd.args(extra).current_dir(&root);
    eprintln!("bench: {cmd:?}");
    let status = cmd.status().context("running netiso-bench")?;
    if !status.success() {
        bail!("netiso-bench failed ({status})");
    }
    Ok(())
}
