//! The usual test world: a namespace with addresses, a cgroup subtree and an agent.
use std::path::PathBuf;

use crate::{Agent, CgroupTree, CliOutput, Netns};

/// Test world: namespace with documentation-range addresses on `lo`, cgroup subtree and agent.
pub struct World {
    pub ns: Netns,
    pub agent: Agent,
    pub cgroups: CgroupTree,
}

impl World {
    /// Namespace with 192.0.2.10/.11/.20 and 2001:db8::10/::11/::20 on lo.
    pub fn new(tag: &str) -> World {
        let ns = Netns::new(tag);
        for a in [
            "192.0.2.10/32",
            "192.0.2.11/32",
            "192.0.2.20/32",
            "198.51.100.1/32",
        ] {
            ns.add_addr(a);
        }
        for a in [
            "2001:db8::10/128",
            "2001:db8::11/128",
            "2001:db8::20/128",
            "2001:db8:1::1/128",
        ] {
            ns.add_addr(a);
        }
        let cgroups = CgroupTree::new(tag);
        let agent = Agent::with_netns(&cgroups, Some(ns.path()));
        World { ns, agent, cgroups }
    }

    /// A container cgroup registered with `ips` (and extra `container add` flags).
    pub fn container(&self, name: &str, ips: &[&str], extra: &[&str]) -> PathBuf {
        let cg = self.cgroups.child(name);
        self.agent.add(name, &cg, ips, extra);
        cg
    }

    /// Runs `netiso --socket <agent> LINE` against the world's agent, LINE split on whitespace
    /// (test paths and names have no spaces).
    pub fn cli(&self, line: &str) -> CliOutput {
        self.agent.cli(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// An unregistered cgroup inside the test subtree (the hooks run there and must pass).
    pub fn host_cgroup(&self) -> PathBuf {
        self.cgroups.child("host")
    }
}
