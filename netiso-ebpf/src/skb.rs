//! cgroup_skb programs, the packet layer of sockets.
//!
//! - `ingress` and `egress`, attached to each container's cgroup (so host sockets run
//!   neither): every packet of a container socket must carry an address the container owns,
//!   its destination arriving, its source leaving. This closes what the socket hooks never see:
//!   listen() and sendto() on unbound sockets, raw sockets of `--allow-raw` containers, sockets
//!   passed in, options set through paths without a hook. A container may not send IPv6
//!   routing headers, and a packet opening a flow from a container the policy does not let in
//!   is dropped on arrival. The container comes from the attachment's storage and the common
//!   case (the container's primary address, no extension headers, no policy to apply) is
//!   decided from the packet's first bytes, without a map lookup.
//! - `guard`, ingress at the cgroup root: the loop-back copy of a container's broadcast or
//!   multicast, made before egress ran, has no socket but carries the sender's mark; a copy
//!   whose source the sender does not own never reaches any local socket.
use aya_ebpf::{bindings::__sk_buff, macros::cgroup_skb, programs::SkBuffContext, EbpfContext};
use netiso_common::{
    abi::container_of_mark,
    counter,
    packet::Headers,
    policy::{self, IPPROTO_UDP},
    Container, Ip4, Ip6,
};

use crate::{
    container::{self, Maps},
    ctx, maps, packet, sock,
    verdict::{self, Local, Packet, Subject, Traffic},
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const TCP_ESTABLISHED: u32 = 1;
/// `skb->pkt_type` of the copy `dev_loopback_xmit` makes of a multicast or broadcast.
const PACKET_LOOPBACK: u32 = 5;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP8: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn dropped(self) -> usize {
        match self {
            Direction::Ingress => counter::INGRESS_DROPPED,
            Direction::Egress => counter::EGRESS_DROPPED,
        }
    }
    /// (local, remote) address of a packet in this direction.
    fn ends(self, h: &Headers) -> (Ip6, Ip6) {
        match self {
            Direction::Ingress => (h.dst, h.src),
            Direction::Egress => (h.src, h.dst),
        }
    }
}

#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    run(&ctx, Direction::Ingress)
}

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    run(&ctx, Direction::Egress)
}

#[inline(always)]
fn run(ctx: &SkBuffContext, dir: Direction) -> i32 {
    if container::disabled() {
        return PASS;
    }
    let Some(c) = maps::attached_container() else {
        return PASS;
    };
    let tally = Local(maps::packet_counters());
    let decision = if fast_path(ctx, &c, dir) {
        Packet::Attributed(c.id)
    } else {
        try_skb(ctx, &c, dir)
    };
    if verdict::packet(decision, ctx.len(), &tally) {
        PASS
    } else {
        DROP
    }
}

/// Whether the packet is certainly fine, from its first bytes in the linear data: the local
/// address is the container's primary (or its loopback), an IPv6 packet leaving has no
/// extension header, nothing arriving needs the policy, and a UDP packet leaving comes from a
/// socket that needs no registering. Anything else takes the full path.
#[inline(always)]
fn fast_path(ctx: &SkBuffContext, c: &Container, dir: Direction) -> bool {
    if dir == Direction::Ingress && c.judges_arrivals() {
        return false;
    }
    let skb = ctx::skb(ctx);
    let (data, end) = ctx::skb_data(skb);
    if data + 20 > end {
        return false;
    }
    // SAFETY: `data + 20 <= end`, checked just above as the verifier requires.
    let first = unsafe { *(data as *const u8) };
    let proto = match first >> 4 {
        4 => {
            // SAFETY: the IPv4 header's fixed 20 bytes are within the checked range.
            let read32 =
                |off: usize| unsafe { core::ptr::read_unaligned((data + off) as *const u32) };
            let local = Ip4(read32(if dir == Direction::Ingress { 16 } else { 12 }));
            if !(c.has_v4() && local == c.v4) && local != c.lo4 {
                return false;
            }
            // SAFETY: as above.
            unsafe { *((data + 9) as *const u8) }
        }
        6 => {
            if data + 40 > end {
                return false;
            }
            // SAFETY: `data + 40 <= end`, checked just above: the IPv6 fixed header.
            let read32 =
                |off: usize| unsafe { core::ptr::read_unaligned((data + off) as *const u32) };
            let at = if dir == Direction::Ingress { 24 } else { 8 };
            let local = Ip6([read32(at), read32(at + 4), read32(at + 8), read32(at + 12)]);
            if !c.has_v6() || local != c.v6 {
                return false;
            }
            // SAFETY: as above.
            let next = unsafe { *((data + 6) as *const u8) };
            if next != IPPROTO_TCP && next != IPPROTO_UDP8 && next != IPPROTO_ICMPV6 {
                return false;
            }
            next
        }
        _ => return false,
    };
    !(dir == Direction::Egress && proto == IPPROTO_UDP8 && needs_registering(skb))
}

/// A UDP socket autobound to the wildcard (sendto() without bind()) can receive replies, and
/// socket lookup must know it: one that is not connected and not registered yet.
#[inline(always)]
fn needs_registering(skb: *mut __sk_buff) -> bool {
    let ctx::SkbSocket::Full(sk) = ctx::skb_socket(skb) else {
        return false;
    };
    if ctx::socket_state(sk.cast()) == TCP_ESTABLISHED {
        return false;
    }
    // Explicitly bound sockets registered at bind (a container's wildcard binds are
    // rewritten to an owned address): only a wildcard-bound one can be autobound.
    let (_, _, bound, _) = ctx::socket_binding(sk);
    if !bound.is_unspecified() {
        return false;
    }
    maps::sock_info(sk, false).is_none_or(|info| info.cookie == 0)
}

/// The full path: parse the packet, look every address up.
#[inline(always)]
fn try_skb(ctx: &SkBuffContext, c: &Container, dir: Direction) -> Packet {
    let h = packet::from_ip(&ctx.skb);
    if !h.is_ip() {
        // A container socket's packet whose addresses cannot be read: fail closed.
        return Packet::Drop {
            c: *c,
            kind: dir.dropped(),
            subject: Subject::NONE,
        };
    }
    let (local, remote) = dir.ends(&h);
    let drop = |kind| Packet::Drop {
        c: *c,
        kind,
        subject: Subject {
            family: h.family,
            addr: remote,
            port: 0,
        },
    };
    if policy::packet(c, h.family, &local, &Maps).is_err() {
        return drop(dir.dropped());
    }
    if dir == Direction::Egress {
        if policy::egress_headers(h.rthdr).is_err() {
            return drop(counter::HEADER_DROPPED);
        }
        register_autobound(ctx, c);
        return Packet::Attributed(c.id);
    }
    // The receiving side of the policy: who sent a packet that opens a flow?
    if c.judges_arrivals()
        && packet::opens_flow(ctx.as_ptr(), &h, c.id, ctx::skb_socket_state(ctx::skb(ctx)))
    {
        if let Some(from) = container::owner(h.family, &remote) {
            if policy::reach(from, Some(c.id), &Maps).is_err() {
                return drop(counter::POLICY_DROPPED);
            }
        }
    }
    Packet::Attributed(c.id)
}

/// Registers an autobound UDP socket as a receiver on its first packet, as post_bind does
/// for explicit binds.
#[inline(always)]
fn register_autobound(ctx: &SkBuffContext, c: &Container) {
    let ctx::SkbSocket::Full(sk) = ctx::skb_socket(ctx::skb(ctx)) else {
        return;
    };
    let (family, protocol, bound, port) = ctx::socket_binding(sk);
    if protocol != IPPROTO_UDP || !bound.is_unspecified() || port == 0 {
        return;
    }
    let Some(info) = maps::sock_info(sk, true) else {
        return;
    };
    if info.cookie != 0 {
        return;
    }
    sock::add(
        info,
        sock::wildcard(c, family, protocol, port),
        ctx::skb_cookie(ctx::skb(ctx)),
    );
}

/// The container that sent `skb`, when it is the loop-back copy of a container's broadcast
/// or multicast (it has no socket; the mark set at the socket's creation tells the sender).
/// Anything else costs two context reads.
#[inline(always)]
pub fn loopback_sender(skb: *mut __sk_buff) -> Option<Container> {
    let (mark, pkt_type) = ctx::skb_mark_and_type(skb);
    if pkt_type != PACKET_LOOPBACK {
        return None;
    }
    container_of_mark(mark).and_then(maps::container_of_id)
}

/// At the cgroup root: the loop-back copy of a container's broadcast or multicast. Everything
/// else leaves after two context reads.
#[cgroup_skb(ingress)]
pub fn guard(ctx: SkBuffContext) -> i32 {
    let Some(sender) = loopback_sender(ctx::skb(&ctx)) else {
        return PASS;
    };
    if container::disabled() {
        return PASS;
    }
    let Some(drop) = foreign_copy(&sender, &packet::from_ip(&ctx.skb)) else {
        return PASS;
    };
    if verdict::packet(drop, ctx.len(), &Traffic::NONE) {
        PASS
    } else {
        DROP
    }
}

/// A drop when a loop-back copy of `sender`'s packet carries a source `sender` does not own.
#[inline(always)]
pub fn foreign_copy(sender: &Container, h: &Headers) -> Option<Packet> {
    if h.is_ip() && policy::packet(sender, h.family, &h.src, &Maps).is_ok() {
        return None;
    }
    Some(Packet::Drop {
        c: *sender,
        kind: counter::EGRESS_DROPPED,
        subject: Subject {
            family: h.family,
            addr: h.src,
            port: 0,
        },
    })
}
