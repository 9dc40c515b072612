//! TC programs on the interfaces the agent is given (`--iface`, `netiso iface add`): they
//! attribute packets to containers by address, apply the policy between containers before
//! the stack spends work on a packet, and drop what container sockets send from addresses
//! their container does not own (also from AF_PACKET sockets, which no socket hook sees).
use aya_ebpf::{macros::classifier, programs::TcContext, EbpfContext};
use netiso_common::{counter, packet::Kind, policy, ContainerId};

use crate::{
    container::{self, Maps},
    maps, packet, skb,
    verdict::{self, Packet, Subject, Traffic},
};

/// TCX verdicts. netiso never says "pass": what it lets through goes on to the next program
/// on the interface (or the stack), so it composes with other TC users.
const TC_NEXT: i32 = -1;
const TC_DROP: i32 = 2;

const RX: Traffic = Traffic {
    packets: counter::IFACE_RX_PACKETS,
    bytes: counter::IFACE_RX_BYTES,
};
const TX: Traffic = Traffic {
    packets: counter::IFACE_TX_PACKETS,
    bytes: counter::IFACE_TX_BYTES,
};

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    run(&ctx, RX, try_ingress)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    run(&ctx, TX, try_egress)
}

#[inline(always)]
fn run(ctx: &TcContext, traffic: Traffic, try_tc: fn(&TcContext) -> Packet) -> i32 {
    if container::disabled() {
        return TC_NEXT;
    }
    if verdict::packet(try_tc(ctx), ctx.len(), &traffic) {
        TC_NEXT
    } else {
        TC_DROP
    }
}

/// Ingress steering: the destination address names the container. Frames without readable
/// addresses concern no container; the stack drops broken IP itself.
fn try_ingress(ctx: &TcContext) -> Packet {
    // The loop-back copy of a container's broadcast or multicast skipped egress (see `skb`);
    // here it is also stopped on its way to the kernel's own ICMP. It has no link-layer
    // header: the packet starts at IP.
    if let Some(sender) = skb::loopback_sender(ctx.skb.skb) {
        return skb::foreign_copy(&sender, &packet::from_ip(&ctx.skb)).unwrap_or(Packet::NotOurs);
    }
    let h = packet::from_frame(&ctx.skb);
    if !h.is_ip() {
        return Packet::NotOurs;
    }
    let Some(to) = container::owner(h.family, &h.dst) else {
        return Packet::NotOurs;
    };
    // The container itself (its flags) is needed only to drop, not on the common path.
    let drop = |kind| match maps::container_of_id(to) {
        Some(c) => Packet::Drop {
            c,
            kind,
            subject: Subject {
                family: h.family,
                addr: h.src,
                port: 0,
            },
        },
        None => Packet::NotOurs,
    };
    if h.kind == Kind::Malformed {
        return drop(counter::MALFORMED_DROPPED);
    }
    // Judged only when a container sends it (the owner lookup is cheaper than the flow check,
    // whose UDP socket lookup also runs the socket-lookup program).
    if let Some(from) = container::owner(h.family, &h.src) {
        if policy::reach(from, Some(to), &Maps).is_err()
            && packet::opens_flow(ctx.as_ptr(), &h, to, None)
        {
            return drop(counter::POLICY_DROPPED);
        }
    }
    Packet::Attributed(to)
}

/// Egress: a container socket may only send IP packets from addresses its container owns;
/// host sockets and the kernel's own replies are attributed to the owner of their source and
/// never judged.
fn try_egress(ctx: &TcContext) -> Packet {
    let sock = container::of_skb_or_cgroup(ctx.skb.skb);
    let h = packet::from_frame(&ctx.skb);
    let Some(c) = sock else {
        if !h.is_ip() {
            return Packet::NotOurs;
        }
        return container::owner(h.family, &h.src)
            .map_or(Packet::NotOurs, |id: ContainerId| Packet::Attributed(id));
    };
    if !h.is_ip() || h.kind == Kind::Malformed {
        // Not IP, or not parseable: a container has no business sending it.
        return Packet::Drop {
            c,
            kind: counter::MALFORMED_DROPPED,
            subject: Subject {
                family: h.family,
                addr: h.dst,
                port: 0,
            },
        };
    }
    if policy::egress_headers(h.rthdr).is_err() {
        return Packet::Drop {
            c,
            kind: counter::HEADER_DROPPED,
            subject: Subject {
                family: h.family,
                addr: h.dst,
                port: 0,
            },
        };
    }
    match policy::packet(&c, h.family, &h.src, &Maps) {
        Ok(()) => Packet::Attributed(c.id),
        Err(_) => Packet::Drop {
            c,
            kind: counter::EGRESS_DROPPED,
            subject: Subject {
                family: h.family,
                addr: h.src,
                port: 0,
            },
        },
    }
}
