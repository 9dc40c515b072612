//! A cgroup subtree per test, torn down on drop (also when the test fails).
use std::{fs, path::PathBuf, time::Duration};

use crate::unique;

/// A cgroup subtree below the cgroup2 mount; processes are killed and the tree removed on drop.
pub struct CgroupTree {
    pub root: PathBuf,
}

impl CgroupTree {
    pub fn new(tag: &str) -> CgroupTree {
        let root = crate::cgroup2_mount().expect("cgroup2").join(unique(tag));
        fs::create_dir(&root).expect("creating test cgroup");
        CgroupTree { root }
    }

    /// Creates (if needed) and returns a child cgroup, `rel` may contain '/'.
    pub fn child(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).expect("creating child cgroup");
        p
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        crate::destroy_cgroup(&self.root, Duration::from_secs(10));
    }
}
