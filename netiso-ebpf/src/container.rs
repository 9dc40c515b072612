//! Which container a task, a socket or an address belongs to.
//!
//! A container is a registered cgroup and everything below it; containers never nest, so at
//! most one ancestor of a cgroup is registered. The hooks walk only the levels the agent says
//! hold containers (`config::MIN_LEVEL..=MAX_LEVEL`), so the common case is one lookup.
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_skb_ancestor_cgroup_id},
};
use netiso_common::{
    config, policy::Registry, policy::AF_INET, Container, ContainerId, Ip4, Ip6, MAX_CGROUP_LEVELS,
};

use crate::maps;

/// The global switch; each program checks it once, on entry.
#[inline(always)]
pub fn disabled() -> bool {
    maps::config(config::DISABLED) != 0
}

/// The container of the calling task (socket hooks run in the task's context).
#[inline(always)]
pub fn of_task() -> Option<Container> {
    // SAFETY: a plain helper call with an integer argument.
    among_ancestors(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level) })
}

/// The container of the socket an skb belongs to: the cgroup it was created in. Packet
/// programs run in softirq context too, where the current task means nothing.
#[inline(always)]
pub fn of_skb(skb: *mut __sk_buff) -> Option<Container> {
    // SAFETY: `skb` is the program's own context pointer.
    among_ancestors(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb.cast(), level) })
}

/// The container among the ancestors `ancestor(level)` returns (0 past the deepest level).
#[inline(always)]
fn among_ancestors(ancestor: impl Fn(i32) -> u64) -> Option<Container> {
    let (min, max) = (
        maps::config(config::MIN_LEVEL),
        maps::config(config::MAX_LEVEL),
    );
    let mut i = 0;
    while i < MAX_CGROUP_LEVELS {
        let level = min + i;
        if level > max {
            break;
        }
        let id = ancestor(level as i32);
        if id == 0 {
            break;
        }
        if let Some(c) = maps::container_of_cgroup(id) {
            return Some(c);
        }
        i += 1;
    }
    None
}

/// The owner of an address of either family (IPv4 held as by `Ip6::holding_v4`): the one
/// owner lookup of the datapath.
#[inline(always)]
pub fn owner(family: u32, addr: &Ip6) -> Option<ContainerId> {
    if family == AF_INET {
        maps::owner4(addr.held_v4())
    } else {
        maps::owner6(addr)
    }
}

/// The registry as the maps hold it, for `netiso_common::policy`.
pub struct Maps;

impl Registry for Maps {
    #[inline(always)]
    fn owner4(&self, addr: Ip4) -> Option<ContainerId> {
        maps::owner4(addr)
    }
    #[inline(always)]
    fn owner6(&self, addr: &Ip6) -> Option<ContainerId> {
        maps::owner6(addr)
    }
    #[inline(always)]
    fn isolated(&self, id: ContainerId) -> bool {
        maps::container_of_id(id).is_some_and(|c| c.isolated())
    }
    #[inline(always)]
    fn rule(&self, from: ContainerId, to: ContainerId) -> Option<bool> {
        maps::rule(from, to)
    }
}
