//! Small system helpers: namespaces, cgroups, `ip`, /proc/meminfo.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    netiso_testkit::cgroup2_mount().context("no cgroup v2 mount found")
}

/// Moves the calling (single-threaded) process into the network namespace at `path`.
pub fn enter_netns(path: &Path) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns {}", path.display()))?;
    Ok(())
}

/// Moves the calling process into the cgroup directory `dir`.
pub fn enter_cgroup(dir: &Path) -> Result<()> {
    fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
        .with_context(|| format!("joining cgroup {}", dir.display()))
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Feeds `lines` to `ip [-n NS] -batch -`.
pub fn ip_batch(netns: Option<&str>, lines: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child.stdin.take().unwrap().write_all(lines.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch in {netns:?} failed: {}\n--- input ---\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            lines.lines().take(8).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// Removes a cgroup subtree, killing whatever runs in it.
pub fn remove_cgroup_tree(p: &Path) {
    netiso_testkit::destroy_cgroup(p, Duration::from_secs(10));
}

/// Kernel-side memory in KiB as /proc/meminfo shows it: Slab + Percpu + KernelStack +
/// PageTables + VmallocUsed. Network namespaces, devices, cgroups and BPF map elements all
/// allocate from these.
pub fn kernel_mem_kib() -> u64 {
    let info = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(
                k,
                "Slab" | "Percpu" | "KernelStack" | "PageTables" | "VmallocUsed"
            )
            .then(|| v.split_whitespace().next()?.parse::<u64>().ok())
            .flatten()
        })
        .sum()
}

/// Per-interface (rx_packets, tx_packets) in a namespace, from `ip -s -j link`.
pub fn link_counters(netns: &str) -> Result<Vec<(String, u64, u64)>> {
    let out = sh(Command::new("ip").args(["-n", netns, "-s", "-j", "link", "show"]))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j output")?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| {
                    let name = l["ifname"].as_str()?.to_owned();
                    let s = &l["stats64"];
                    Some((
                        name,
                        s["rx"]["packets"].as_u64()?,
                        s["tx"]["packets"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}
