//! Watching registered cgroups disappear. A cgroup v2 directory sends no inotify event of
//! its own when it is removed (checked on 6.18: neither the directory nor its
//! `cgroup.events` reports IN_DELETE_SELF), but its parent reports IN_DELETE for it. So the
//! agent watches the parent directory of every registered cgroup (one watch per parent,
//! counted) and, for each removed entry, checks by cgroup id whether a registered cgroup is
//! gone; the service then releases it at once. A queue overflow, or a watch that cannot be
//! added (inotify limits), falls back to the periodic sweep.
use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use log::warn;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// What the watch saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Directories removed below watched parents (full paths).
    pub removed: Vec<PathBuf>,
    /// Events were lost: everything must be checked.
    pub overflow: bool,
}

pub struct CgroupWatch {
    inotify: Option<Inotify>,
    /// Parent directory -> its watch and how many registered cgroups it holds.
    parents: HashMap<PathBuf, (WatchDescriptor, usize)>,
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

impl CgroupWatch {
    pub fn new() -> CgroupWatch {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| warn!("inotify is unavailable ({e}); removed cgroups are noticed by the periodic check only"))
            .ok();
        CgroupWatch {
            inotify,
            parents: HashMap::new(),
            dirs: HashMap::new(),
        }
    }

    /// The descriptor to wait on (None: no inotify).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(AsFd::as_fd)
    }

    /// Starts watching for the removal of `cgroup` (id `cgroup_id`).
    pub fn add(&mut self, cgroup_id: u64, cgroup: &Path) {
        let (Some(ino), Some(parent)) = (&self.inotify, cgroup.parent()) else {
            return;
        };
        if let Some((_, n)) = self.parents.get_mut(parent) {
            *n += 1;
            return;
        }
        let flags = AddWatchFlags::IN_DELETE | AddWatchFlags::IN_ONLYDIR;
        match ino.add_watch(parent, flags) {
            Ok(wd) => {
                self.parents.insert(parent.to_owned(), (wd, 1));
                self.dirs.insert(wd, parent.to_owned());
            }
            Err(e) => warn!(
                "cannot watch {} for the removal of cgroup {} (id {cgroup_id}): {e}; the periodic check will notice it",
                parent.display(),
                cgroup.display()
            ),
        }
    }

    /// Stops watching for `cgroup` (it was unregistered).
    pub fn remove(&mut self, _cgroup_id: u64, cgroup: &Path) {
        let Some(parent) = cgroup.parent() else {
            return;
        };
        let Some((wd, n)) = self.parents.get_mut(parent) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            let wd = *wd;
            self.parents.remove(parent);
            self.dirs.remove(&wd);
            if let Some(ino) = &self.inotify {
                // Fails when the parent itself is gone (the kernel dropped the watch).
                let _ = ino.rm_watch(wd);
            }
        }
    }

    /// Reads what has happened since the last call (non-blocking).
    pub fn read(&mut self) -> Seen {
        let mut seen = Seen::default();
        let Some(ino) = &self.inotify else {
            return seen;
        };
        while let Ok(events) = ino.read_events() {
            if events.is_empty() {
                break;
            }
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    seen.overflow = true;
                } else if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The parent itself went away: its children went first.
                    if let Some(dir) = self.dirs.remove(&ev.wd) {
                        self.parents.remove(&dir);
                        seen.overflow = true;
                    }
                } else if let (Some(dir), Some(name)) = (self.dirs.get(&ev.wd), &ev.name) {
                    seen.removed.push(dir.join(name));
                }
            }
        }
        seen
    }

    /// How many directories are watched (for tests and metrics).
    pub fn watched(&self) -> usize {
        self.parents.len()
    }
}
