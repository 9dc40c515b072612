//! cgroup v2 helpers: finding the mount, ids, levels, creating and removing subtrees.
use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`")]
    NoCgroup2,
    #[error("cgroup {0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not a cgroup v2 directory")]
    NotCgroup(PathBuf),
    #[error("cgroup {path} is outside the cgroup root {root}")]
    OutsideRoot { path: PathBuf, root: PathBuf },
    #[error("no process with pid {0} (has it exited?)")]
    NoProcess(u32),
    #[error("process {pid} has no cgroup v2 entry (`0::` line) in /proc/{pid}/cgroup: {found:?}")]
    NoV2Entry { pid: u32, found: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The cgroup v2 mount point, read from /proc/self/mountinfo. Never hard-coded: hybrid
/// hosts mount it at /sys/fs/cgroup/unified.
pub fn mount_point() -> Result<PathBuf, CgroupError> {
    fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| parse_mountinfo(&info))
        .ok_or(CgroupError::NoCgroup2)
}

/// The cgroup v2 mount point in a /proc/self/mountinfo text.
fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = pre.split_whitespace().nth(4)?;
        Some(PathBuf::from(mount.replace("\\040", " ")))
    })
}

/// The cgroup v2 directory process `pid` is in: the path of the `0::` line of
/// /proc/PID/cgroup, below `mount`. The path is relative to the reader's cgroup namespace,
/// so the caller must share the cgroup namespace the mount was made in (the host's).
pub fn of_pid(mount: &Path, pid: u32) -> Result<PathBuf, CgroupError> {
    let file = format!("/proc/{pid}/cgroup");
    let text = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CgroupError::NoProcess(pid)),
        Err(e) => return Err(io_err("reading", Path::new(&file))(e)),
    };
    let rel = parse_proc_cgroup(&text).ok_or_else(|| CgroupError::NoV2Entry {
        pid,
        found: text.trim().to_owned(),
    })?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// The cgroup v2 path in a /proc/PID/cgroup text (the `0::PATH` line).
fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/'))
}

/// A validated cgroup v2 directory.
#[derive(Clone, Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    pub id: u64,
    /// Depth below the cgroup2 mount (the mount itself is level 0).
    pub level: u32,
}

/// Resolves `path` (absolute, or relative to `mount`) to a cgroup at or below `root`.
pub fn resolve(mount: &Path, root: &Path, path: &Path) -> Result<Cgroup, CgroupError> {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        mount.join(path)
    };
    let canon = fs::canonicalize(&joined).map_err(|_| CgroupError::Missing(joined.clone()))?;
    if !canon.join("cgroup.procs").exists() {
        return Err(CgroupError::NotCgroup(canon));
    }
    if !canon.starts_with(root) {
        return Err(CgroupError::OutsideRoot {
            path: canon,
            root: root.to_owned(),
        });
    }
    let level = canon
        .strip_prefix(mount)
        .map_err(|_| CgroupError::NotCgroup(canon.clone()))?
        .components()
        .count() as u32;
    let id = fs::metadata(&canon).map_err(io_err("stat", &canon))?.ino();
    Ok(Cgroup {
        path: canon,
        id,
        level,
    })
}

/// Whether the cgroup with id `id` still exists at `path`. cgroup v2 directories cannot be
/// renamed and ids are not reused, so a cgroup lives at one path for its whole life: when the
/// path is gone or holds another id, the cgroup is gone.
pub fn exists(path: &Path, id: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.ino() == id)
}

/// Every cgroup at or below `root`: id -> path (one walk of the tree).
pub fn index_ids(root: &Path) -> std::collections::HashMap<u64, PathBuf> {
    let mut out = std::collections::HashMap::new();
    walk(root, &mut |p, id| {
        out.insert(id, p.to_owned());
    });
    out
}

/// The ids of `root` and every cgroup below it (empty when `root` is gone).
pub fn subtree_ids(root: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    walk(root, &mut |_, id| out.push(id));
    out
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, u64)) {
    let Ok(meta) = fs::metadata(dir) else { return };
    f(dir, meta.ino());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), f);
        }
    }
}

/// Creates `path` (and missing parents).
pub fn create(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(io_err("creating cgroup", path))
}

/// Kills every process in the subtree and waits until it is empty.
pub fn kill_all(path: &Path, timeout: Duration) -> Result<(), CgroupError> {
    // cgroup.kill (5.14+) kills the whole subtree atomically, forks included.
    let kill = path.join("cgroup.kill");
    if kill.exists() {
        fs::write(&kill, "1").map_err(io_err("writing", &kill))?;
    }
    let deadline = Instant::now() + timeout;
    let events = path.join("cgroup.events");
    loop {
        let populated =
            fs::read_to_string(&events).is_ok_and(|s| s.lines().any(|l| l == "populated 1"));
        if !populated {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CgroupError::Io {
                what: "waiting for processes to exit in",
                path: path.to_owned(),
                source: io::Error::from(io::ErrorKind::TimedOut),
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Tears a subtree down: kills every process in it, waits until it is empty and removes it,
/// children first. The one teardown of the agent (`netiso run`, `--cleanup`), the tests, the
/// benchmark and the demo.
pub fn destroy(path: &Path, timeout: Duration) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    kill_all(path, timeout)?;
    let deadline = Instant::now() + timeout;
    loop {
        match remove_tree(path) {
            // A cgroup whose last task is still being reaped refuses rmdir (EBUSY) briefly.
            Err(CgroupError::Io { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Removes an empty cgroup subtree, children first.
pub fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing", path)(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing cgroup", path)(e)),
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
    fn proc_cgroup_v2_line_in_hybrid_layout() {
        let text = "9:name=systemd:/p/libpod-1\n1:cpu:/p/libpod-1\n0::/p/libpod-1\n";
        assert_eq!(parse_proc_cgroup(text), Some("/p/libpod-1"));
        assert_eq!(parse_proc_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_proc_cgroup("1:cpu:/x\n"), None);
    }

    #[test]
    fn of_pid_reads_proc() {
        match of_pid(Path::new("/m"), std::process::id()) {
            Ok(p) => assert!(p.starts_with("/m"), "{}", p.display()),
            // A host without cgroup v2 has no `0::` line.
            Err(CgroupError::NoV2Entry { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(
            of_pid(Path::new("/m"), u32::MAX),
            Err(CgroupError::NoProcess(_))
        ));
    }

    #[test]
    fn no_cgroup2_is_none() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n";
        assert_eq!(parse_mountinfo(info), None);
    }
}
