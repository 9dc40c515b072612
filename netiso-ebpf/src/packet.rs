//! The packet programs' view of a packet: the one header reader (the shared parser of
//! `netiso_common::packet` over the kernel's bounds-checked load) and the one flow-start
//! check, for cgroup_skb and TC alike.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_sock_tuple,
    helpers::{bpf_sk_lookup_udp, bpf_sk_release},
    programs::sk_buff::SkBuff,
};
use netiso_common::{
    packet::{self, Frame, Headers, Plain},
    policy::{self, AF_INET, IPPROTO_UDP},
    ContainerId, Ip6,
};

use crate::{ctx, sk_lookup};

/// `BPF_F_CURRENT_NETNS` for the socket lookup helpers.
const CURRENT_NETNS: u64 = u64::MAX;
/// UDP sockets report this state once connected.
const TCP_ESTABLISHED: u32 = 1;

/// An skb read only through `bpf_skb_load_bytes`, which also reads non-linear skbs.
struct Skb<'a>(&'a SkBuff);

impl Frame for Skb<'_> {
    #[inline(always)]
    fn load<T: Plain>(&self, offset: usize) -> Option<T> {
        self.0.load::<T>(offset).ok()
    }
}

/// Headers of an Ethernet frame (TC).
#[inline(always)]
pub fn from_frame(skb: &SkBuff) -> Headers {
    packet::parse(&Skb(skb))
}

/// Headers of an IP packet (cgroup_skb, where the packet starts at the IP header).
#[inline(always)]
pub fn from_ip(skb: &SkBuff) -> Headers {
    packet::parse_ip(&Skb(skb), 0)
}

/// Whether an arriving packet opens a flow (`policy::opens_flow`). For UDP, `local_socket`
/// says whether the socket it is for is connected; None: look it up (`to` owns the
/// destination).
#[inline(always)]
pub fn opens_flow(
    ctx: *mut c_void,
    h: &Headers,
    to: ContainerId,
    local_socket_state: Option<u32>,
) -> bool {
    policy::opens_flow(h.kind, || match local_socket_state {
        Some(state) => state == TCP_ESTABLISHED,
        None => udp_connected(ctx, to, h.family, &h.src, h.sport, &h.dst, h.dport),
    })
}

/// Whether the UDP socket of container `to` that would receive a datagram
/// `src:sport -> dst:dport` (host-order ports) is connected, i.e. the datagram answers a flow
/// that socket opened. Used where the policy judges only new flows and no socket is at hand:
/// TC ingress, the sendmsg hooks. `ctx` is the program's context (the lookup helpers need it).
#[inline(always)]
pub fn udp_connected(
    ctx: *mut c_void,
    to: ContainerId,
    family: u32,
    src: &Ip6,
    sport: u16,
    dst: &Ip6,
    dport: u16,
) -> bool {
    // Without a receiving socket there is nothing to answer; asking the kernel would also run
    // the socket-lookup program, which counts a refusal for a datagram never sent.
    if !sk_lookup::receives(to, family, IPPROTO_UDP, dst, dport) {
        return false;
    }
    // SAFETY: bpf_sock_tuple is plain data; all-zero is a valid value.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // SAFETY: the tuple's union members are plain data; the one written matches `size`.
    let size = unsafe {
        if family == AF_INET {
            let v4 = &mut t.__bindgen_anon_1.ipv4;
            v4.saddr = src.held_v4().0;
            v4.daddr = dst.held_v4().0;
            v4.sport = sport.to_be();
            v4.dport = dport.to_be();
            size_of_val(v4)
        } else {
            let v6 = &mut t.__bindgen_anon_1.ipv6;
            v6.saddr = src.0;
            v6.daddr = dst.0;
            v6.sport = sport.to_be();
            v6.dport = dport.to_be();
            size_of_val(v6)
        }
    };
    // SAFETY: `ctx` is the program's context and `t` a tuple of `size` bytes on the stack.
    let sk = unsafe { bpf_sk_lookup_udp(ctx, &raw mut t, size as u32, CURRENT_NETNS, 0) };
    if sk.is_null() {
        return false;
    }
    let state = ctx::socket_state(sk);
    // SAFETY: releases the reference the lookup took, as the verifier requires.
    unsafe { bpf_sk_release(sk.cast()) };
    state == TCP_ESTABLISHED
}
