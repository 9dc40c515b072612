//! sk_lookup, attached to the agent's network namespace: steering by destination. A new flow
//! (a TCP connection, an unconnected UDP datagram) to an address a container owns, or to its
//! private loopback address, is delivered only to a socket of that container, as in a network
//! namespace: when the container has no socket bound there (or to the wildcard) on that port,
//! the lookup fails, and the sender gets what a namespace without a listener gives (TCP
//! reset, ICMP port unreachable), never a host listener on the wildcard. Established flows
//! never come here; host addresses pass untouched.
use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use netiso_common::{counter, policy::AF_INET, ContainerId, Ip6, Receiver};

use crate::{
    container, ctx, maps,
    verdict::{self, Packet, Subject, Traffic},
};

const SK_PASS: u32 = 1;
const SK_DROP: u32 = 0;

#[sk_lookup]
pub fn steer(ctx: SkLookupContext) -> u32 {
    if container::disabled() {
        return SK_PASS;
    }
    let l = ctx::lookup(&ctx);
    let Some(drop) = try_steer(&l) else {
        return SK_PASS;
    };
    if verdict::packet(drop, 0, &Traffic::NONE) {
        SK_PASS
    } else {
        SK_DROP
    }
}

/// Some(drop) when the destination is a container's and it has no socket for the flow.
fn try_steer(l: &ctx::Lookup) -> Option<Packet> {
    let id = container::of_destination(l.family, &l.local)?;
    if receives(id, l.family, l.protocol, &l.local, l.local_port) {
        return None;
    }
    let c = maps::container_of_id(id)?;
    Some(Packet::Drop {
        c,
        kind: counter::LOOKUP_REFUSED,
        subject: Subject {
            family: l.family,
            addr: l.remote,
            port: l.remote_port,
        },
    })
}

/// Whether container `id` has a socket bound to `addr:port` (IPv4 held) for `protocol`, or
/// to the wildcard of its family (an IPv6 wildcard socket also receives IPv4, unless it is
/// v6-only).
#[inline(always)]
pub fn receives(id: ContainerId, family: u32, protocol: u32, addr: &Ip6, port: u16) -> bool {
    let version = if family == AF_INET { 4 } else { 6 };
    let key = |version, addr| Receiver {
        container: id,
        proto: protocol as u8,
        version,
        port,
        addr,
    };
    maps::has_receiver(&key(version, *addr))
        || maps::has_receiver(&key(version, Ip6::UNSPECIFIED))
        || (version == 4 && maps::has_receiver(&key(6, Ip6::UNSPECIFIED)))
}
