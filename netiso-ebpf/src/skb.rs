//! cgroup_skb ingress and egress: every packet of a container socket must carry an address
//! the container owns (its destination arriving, its source leaving). This closes what the
//! socket hooks never see: listen() and sendto() on unbound sockets (implicit wildcard binds),
//! raw sockets of `--allow-raw` containers, sockets passed in. On ingress, a packet that opens
//! a flow from a container the policy does not let in is dropped too.
//!
//! The container is the one of the packet's socket (where it was created), not of a task: in
//! softirq context there is no meaningful task.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext, EbpfContext};
use netiso_common::{counter, packet::Headers, policy, Container, Ip6};

use crate::{
    container::{self, Maps},
    ctx, packet,
    verdict::{self, Packet, Subject, Traffic},
};

const PASS: i32 = 1;
const DROP: i32 = 0;

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
    let Some(c) = container::of_skb(ctx::skb(ctx)) else {
        return PASS;
    };
    if verdict::packet(try_skb(ctx, &c, dir), dir.traffic(), ctx.len()) {
        PASS
    } else {
        DROP
    }
}

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
    // The receiving side of the policy: who sent a packet that opens a flow?
    if dir == Direction::Ingress
        && packet::opens_flow(ctx.as_ptr(), &h, ctx::skb_socket_state(ctx::skb(ctx)))
    {
        if let Some(from) = container::owner(h.family, &remote) {
            if policy::reach(from, Some(c.id), &Maps).is_err() {
                return drop(counter::POLICY_DROPPED);
            }
        }
    }
    Packet::Attributed(c.id)
}
