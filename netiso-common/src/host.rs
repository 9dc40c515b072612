//! Host-side helpers shared by the agent, the tests, the benchmark and xtask (feature `std`;
//! the eBPF side never sees this module): cgroups, and addresses in the kernel's raw form.
use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

/// An IPv4 address in the form the maps hold (see [`crate::Ip4`]).
pub fn ip4_raw(ip: Ipv4Addr) -> crate::Ip4 {
    u32::from_ne_bytes(ip.octets())
}

/// An IPv6 address in the form the maps hold (see [`crate::Ip6`]).
pub fn ip6_raw(ip: Ipv6Addr) -> crate::Ip6 {
    let o = ip.octets();
    core::array::from_fn(|i| {
        u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])
    })
}

/// The cgroup v2 mount point in a /proc/self/mountinfo text. Never hard-coded: hybrid hosts
/// mount it at /sys/fs/cgroup/unified.
pub fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = pre.split_whitespace().nth(4)?;
        Some(PathBuf::from(mount.replace("\\040", " ")))
    })
}

/// The cgroup v2 mount point of this process, if there is one.
pub fn cgroup2_mount() -> Option<PathBuf> {
    parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// Best effort: kills every process in the subtree (cgroup.kill) and removes it, children
/// first, retrying each directory until `timeout` while the killed processes exit.
pub fn destroy_cgroup(path: &Path, timeout: Duration) {
    if !path.exists() {
        return;
    }
    let _ = fs::write(path.join("cgroup.kill"), "1");
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                destroy_cgroup(&e.path(), timeout);
            }
        }
    }
    let deadline = Instant::now() + timeout;
    while fs::remove_dir(path).is_err() && path.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_is_none() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n";
        assert_eq!(parse_mountinfo(info), None);
    }
}
