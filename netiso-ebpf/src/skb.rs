//! cgroup_skb ingress and egress, the packet layer of the sockets below the cgroup root.
//!
//! Container sockets: every packet must carry an address the container owns (its destination
//! arriving, its source leaving). This closes what the socket hooks never see: listen() and
//! sendto() on unbound sockets, raw sockets of `--allow-raw` containers, sockets passed in,
//! options set through paths without a hook. A packet that opens a flow from a container the
//! policy does not let in is dropped on arrival, and a container may not send IPv6 routing
//! headers.
//!
//! Every socket: a packet addressed to a container's address opens a flow only at that
//! container's sockets (socket lookup refuses the rest; this is the backstop), and the
//! loop-back copy of a container's broadcast or multicast, which skipped egress, must carry
//! a source its sender owns.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext, EbpfContext};
use netiso_common::{
    abi::container_of_mark,
    counter,
    packet::Headers,
    policy::{self, IPPROTO_TCP, IPPROTO_UDP},
    Container, Ip6,
};

use crate::{
    container::{self, Maps},
    ctx, maps, packet, sock,
    verdict::{self, Packet, Subject, Traffic},
};

const PASS: i32 = 1;
const DROP: i32 = 0;
const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;
/// `skb->pkt_type` of the copy `dev_loopback_xmit` makes of a multicast or broadcast.
const PACKET_LOOPBACK: u32 = 5;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn traffic(self) -> Traffic {
        match self {
            Direction::Ingress => Traffic {
                packets: counter::RX_PACKETS,
                bytes: counter::RX_BYTES,
            },
            Direction::Egress => Traffic {
                packets: counter::TX_PACKETS,
                bytes: counter::TX_BYTES,
            },
        }
    }
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
    let skb = ctx::skb(ctx);
    let decision = if dir == Direction::Ingress {
        if let Some(d) = loopback_copy(ctx) {
            d
        } else {
            match container::of_skb(skb) {
                Some(c) => try_skb(ctx, &c, dir),
                None => try_host_ingress(ctx),
            }
        }
    } else {
        match container::of_skb(skb) {
            Some(c) => try_skb(ctx, &c, dir),
            None => Packet::NotOurs,
        }
    };
    if verdict::packet(decision, dir.traffic(), ctx.len()) {
        PASS
    } else {
        DROP
    }
}

/// A packet of a container socket.
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
    if packet::opens_flow(ctx.as_ptr(), &h, c.id, ctx::skb_socket_state(ctx::skb(ctx))) {
        if let Some(from) = container::owner(h.family, &remote) {
            if policy::reach(from, Some(c.id), &Maps).is_err() {
                return drop(counter::POLICY_DROPPED);
            }
        }
    }
    Packet::Attributed(c.id)
}

/// A UDP socket autobound to the wildcard (sendto() without bind()) can receive replies:
/// register it as a receiver on its first packet, as post_bind does for explicit binds.
#[inline(always)]
fn register_autobound(ctx: &SkBuffContext, c: &Container) {
    let ctx::SkbSocket::Full(sk) = ctx::skb_socket(ctx::skb(ctx)) else {
        return;
    };
    let Some(info) = maps::sock_info(sk, false) else {
        return;
    };
    if info.cookie != 0 {
        return;
    }
    let (family, protocol, bound, port) = ctx::socket_binding(sk);
    if protocol != IPPROTO_UDP || !bound.is_unspecified() || port == 0 {
        return;
    }
    sock::add(
        info,
        sock::wildcard(c, family, protocol, port),
        ctx::skb_cookie(ctx::skb(ctx)),
    );
}

/// A packet for a host socket that would open a flow to a container's address: that flow
/// belongs to the container alone. Established flows are not looked at.
#[inline(always)]
fn try_host_ingress(ctx: &SkBuffContext) -> Packet {
    let skb = ctx::skb(ctx);
    let ctx::SkbSocket::Full(sk) = ctx::skb_socket(skb) else {
        return Packet::NotOurs;
    };
    let (_, protocol, _, _) = ctx::socket_binding(sk);
    let state = ctx::socket_state(sk.cast());
    let opens = match protocol {
        IPPROTO_TCP => state == TCP_LISTEN,
        IPPROTO_UDP => state != TCP_ESTABLISHED,
        _ => false,
    };
    if !opens {
        return Packet::NotOurs;
    }
    let h = packet::from_ip(&ctx.skb);
    if !h.is_ip() {
        return Packet::NotOurs;
    }
    match container::of_destination(h.family, &h.dst).and_then(maps::container_of_id) {
        Some(c) => Packet::Drop {
            c,
            kind: counter::LOOKUP_REFUSED,
            subject: Subject {
                family: h.family,
                addr: h.src,
                port: 0,
            },
        },
        None => Packet::NotOurs,
    }
}

/// The loop-back copy of a container's broadcast or multicast: made before egress ran, it
/// has no socket, but it carries the sender's mark. Its source must be one the sender owns.
/// Some(drop) when it does not; None for every other packet.
#[inline(always)]
fn loopback_copy(ctx: &SkBuffContext) -> Option<Packet> {
    let (mark, pkt_type) = ctx::skb_mark_and_type(ctx::skb(ctx));
    if pkt_type != PACKET_LOOPBACK {
        return None;
    }
    let sender = maps::container_of_id(container_of_mark(mark)?)?;
    foreign_copy(&sender, &packet::from_ip(&ctx.skb))
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
