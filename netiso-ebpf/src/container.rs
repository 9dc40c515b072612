//! Which container a task, a socket, a packet or an address belongs to.
//!
//! A container is a registered cgroup and everything below it; containers never nest, so at
//! most one ancestor of a cgroup is registered. A socket belongs to the container it was
//! created in, wherever it goes: sock_create gives it the container's mark, which it keeps
//! (and passes to the connections it accepts), and every later hook reads it from there, the
//! way a network namespace owns the sockets made in it. Sockets without that mark (made
//! outside every container, or before their cgroup was registered) are the host's.
use core::ffi::c_void;

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_skb_ancestor_cgroup_id};
use netiso_common::{
    abi::container_of_mark, config, policy::Registry, policy::AF_INET, Container, ContainerId, Ip4,
    Ip6, MAX_CGROUP_LEVELS,
};

use crate::{ctx, maps};

/// The global switch; each program checks it once, on entry.
#[inline(always)]
pub fn disabled() -> bool {
    maps::config(config::DISABLED) != 0
}

/// The container a socket belongs to (`sk`: a full socket, or a cgroup/sock context), if it
/// was created in one that is still registered.
#[inline(always)]
pub fn of_socket(sk: *mut c_void) -> Option<Container> {
    maps::container_of_id(container_of_mark(ctx::socket_mark(sk))?)
}

/// The container of the socket an skb belongs to: its mark, or for a socket without one (no
/// inet hook saw it: AF_PACKET, the test socket of BPF_PROG_TEST_RUN; request and time-wait
/// sockets) the cgroup it was made in. For TC egress, where packet sockets are
/// the point.
#[inline(always)]
pub fn of_skb_or_cgroup(skb: *mut __sk_buff) -> Option<Container> {
    if let ctx::SkbSocket::Full(sk) = ctx::skb_socket(skb) {
        if let Some(c) = of_socket(sk) {
            return Some(c);
        }
    }
    // SAFETY: `skb` is the program's own context pointer.
    among_ancestors(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb.cast(), level) })
}

/// The registered cgroup among the ancestors `ancestor(level)` returns (0 past the deepest
/// level), walking only the levels where containers are registered.
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

/// The container a destination belongs to: an owned address, or a container's private
/// loopback address.
#[inline(always)]
pub fn of_destination(family: u32, addr: &Ip6) -> Option<ContainerId> {
    if let Some(id) = owner(family, addr) {
        return Some(id);
    }
    if family != AF_INET {
        return None;
    }
    let lo = addr.held_v4();
    let id = netiso_common::policy::loopback_owner(lo)?;
    maps::container_of_id(id)
        .filter(|c| c.lo4 == lo)
        .map(|c| c.id)
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
