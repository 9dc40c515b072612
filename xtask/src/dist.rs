//! `cargo xtask dist`: the release binary and what a package installs next to it, in
//! target/dist. The files themselves come from `netiso dist-files`, generated from the
//! command line definitions, so they cannot drift from the binary.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cargo, workspace_root};

/// What a complete distribution holds (relative to its directory).
pub const EXPECTED: [&str; 10] = [
    "bin/netiso",
    "bin/netiso-docker-runtime",
    "completions/netiso.bash",
    "completions/_netiso",
    "completions/netiso.fish",
    "man/netiso.1",
    "man/netiso-oci-hook.1",
    "systemd/netiso.service",
    "hooks.d/netiso.json",
    "docker/daemon.json",
];

/// The entries of `EXPECTED` missing below `out`.
pub fn missing(out: &Path) -> Vec<&'static str> {
    EXPECTED
        .iter()
        .copied()
        .filter(|f| fs::symlink_metadata(out.join(f)).is_err())
        .collect()
}

pub fn run(out: Option<PathBuf>) -> Result<()> {
    eprintln!("dist: building the release binary");
    cargo(&["build", "--release", "--bin", "netiso"])?;
    let out = out.unwrap_or_else(|| workspace_root().join("target/dist"));
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
    }
    let bin = out.join("bin");
    fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
    let netiso = bin.join("netiso");
    fs::copy(workspace_root().join("target/release/netiso"), &netiso)
        .context("copying the release binary")?;
    // `dockerd --add-runtime` runs a path without arguments: under this name the binary
    // acts as `netiso docker-runtime`.
    symlink("netiso", bin.join("netiso-docker-runtime"))?;
    let status = Command::new(&netiso)
        .arg("dist-files")
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running netiso dist-files")?;
    if !status.success() {
        bail!("netiso dist-files failed ({status})");
    }
    let missing = missing(&out);
    if !missing.is_empty() {
        bail!("the distribution lacks {}", missing.join(", "));
    }
    eprintln!(
        "dist: {} holds the binary (bin/), completions/, man/, systemd/netiso.service, hooks.d/netiso.json and docker/daemon.json; see README \"Installing\"",
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_what_is_absent() {
        let dir = std::env::temp_dir().join(format!("xtask-dist-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for f in &EXPECTED[..9] {
            let p = dir.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, "x").unwrap();
        }
        assert_eq!(missing(&dir), vec!["docker/daemon.json"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
