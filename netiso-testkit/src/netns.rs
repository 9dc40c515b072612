//! Network namespaces for tests: each test makes its own, with documentation-range addresses,
//! and it is deleted on drop.
use std::process::Command;

use crate::{run, unique};

/// A network namespace with `lo` up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n NS ARGS...`, asserting success.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Adds an address (with prefix) to `lo`.
    pub fn add_addr(&self, cidr: &str) {
        let extra: &[&str] = if cidr.contains(':') { &["nodad"] } else { &[] };
        let mut args = vec!["addr", "add", cidr, "dev", "lo"];
        args.extend_from_slice(extra);
        self.ip(&args);
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Netns {
    /// Connects this namespace to `peer` with a veth pair: `name` here with `addrs`, `peer_name`
    /// there with `peer_addrs` (CIDR; IPv6 ones `nodad`), both up. Deleting either namespace
    /// (or either end) deletes the pair.
    pub fn veth(
        &self,
        name: &str,
        addrs: &[&str],
        peer: &Netns,
        peer_name: &str,
        peer_addrs: &[&str],
    ) {
        self.ip(&[
            "link", "add", name, "type", "veth", "peer", "name", peer_name, "netns", &peer.name,
        ]);
        for (ns, dev, addrs) in [(self, name, addrs), (peer, peer_name, peer_addrs)] {
            for a in addrs {
                let mut args = vec!["addr", "add", a, "dev", dev];
                if a.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args);
            }
            ns.ip(&["link", "set", dev, "up"]);
        }
    }

    /// The index of interface `name` in this namespace.
    pub fn ifindex(&self, name: &str) -> u32 {
        let out =
            run(Command::new("ip").args(["-n", &self.name, "-o", "link", "show", "dev", name]));
        let text = String::from_utf8_lossy(&out.stdout);
        text.split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ifindex in {text:?}"))
    }
}
