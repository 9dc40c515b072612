//! A forbidden-bind loop: a process in a container's cgroup, without the capabilities a
//! container must not have, binding an address it does not own as fast as it can, counting
//! the binds that succeed. Tests that stop, kill or confuse the agent run one to show that
//! enforcement never lapsed: any success is a bypass.
use std::path::Path;

use crate::{probe::As, Background, Netns};

pub struct BindLoop(Background);

impl BindLoop {
    /// Starts the loop in `cgroup`, binding `addr` (ip:port).
    pub fn start(ns: &Netns, cgroup: &Path, addr: &str) -> BindLoop {
        let bg = Background::spawn_as(ns, cgroup, &[&format!("bind-loop {addr}")], As::Attacker);
        bg.wait_for("looping");
        BindLoop(bg)
    }

    /// Stops the loop: (binds tried, binds that succeeded).
    pub fn stop(self) -> (u64, u64) {
        let steps = self.0.finish();
        let last = steps
            .iter()
            .find(|s| s.op == "bind-loop")
            .unwrap_or_else(|| panic!("bind loop reported nothing: {steps:?}"));
        let v = last.value.as_deref().expect("bind-loop value");
        let mut it = v.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    }
}
