//! The isolation contract as pure functions.
//!
//! The eBPF hooks read the socket address from their context, call one of these functions and
//! apply the decision; keeping the decisions here means they are unit-tested on the host and the
//! hooks stay thin. Nothing here may loop unboundedly or allocate: it runs in the kernel verifier.

use crate::{packet::Kind, Container, ContainerId, Ip4, Ip6, UnixName};

pub const AF_UNSPEC: u32 = 0;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
pub const IPPROTO_IPV6: i32 = 41;
pub const IPPROTO_ICMPV6: u32 = 58;
pub const IPV6_2292PKTOPTIONS: i32 = 6;
pub const IPV6_2292RTHDR: i32 = 5;
pub const IPV6_PKTINFO: i32 = 50;
pub const IPV6_RTHDR: i32 = 57;

/// Why an operation is refused; each maps to the errno the process sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deny {
    /// The address is not one the container owns (what a namespace without it would answer).
    AddrNotAvail,
    /// The destination is not reachable from the container (other loopbacks, no usable family).
    NetUnreach,
    /// The socket type or option is not allowed in a container.
    NotPermitted,
    /// The destination container does not accept this container (isolation policy).
    Policy,
    /// An abstract unix name the container may not reach: what a network namespace in which
    /// no socket has that name answers.
    Unlisted,
}

impl Deny {
    pub const fn errno(self) -> i32 {
        match self {
            Deny::AddrNotAvail => 99, // EADDRNOTAVAIL
            Deny::NetUnreach => 101,  // ENETUNREACH
            Deny::NotPermitted => 1,  // EPERM
            Deny::Policy => 13,       // EACCES
            Deny::Unlisted => 111,    // ECONNREFUSED
        }
    }
}

/// What the decisions need to know about the registry: who owns an address, and who may
/// reach whom. The eBPF side answers from its maps, the unit tests from plain lists.
pub trait Registry {
    fn owner4(&self, addr: Ip4) -> Option<ContainerId>;
    fn owner6(&self, addr: &Ip6) -> Option<ContainerId>;
    fn isolated(&self, id: ContainerId) -> bool;
    /// An explicit rule for `from` -> `to`: Some(true) allow, Some(false) deny.
    fn rule(&self, from: ContainerId, to: ContainerId) -> Option<bool>;
}

fn owns4(c: &Container, addr: Ip4, r: &impl Registry) -> bool {
    addr == c.lo4 || r.owner4(addr) == Some(c.id)
}

fn owns6(c: &Container, addr: &Ip6, r: &impl Registry) -> bool {
    r.owner6(addr) == Some(c.id)
}

/// May container `from` talk to the owner of an address (`to`, None when no container owns
/// it)? Like hosts on a LAN by default; an isolated container only accepts containers a rule
/// allows, and an explicit deny applies to any container.
pub fn reach(from: ContainerId, to: Option<ContainerId>, r: &impl Registry) -> Result<(), Deny> {
    let Some(to) = to else { return Ok(()) };
    if to == from {
        return Ok(());
    }
    let allowed = match r.rule(from, to) {
        Some(v) => v,
        None => !r.isolated(to),
    };
    if allowed {
        Ok(())
    } else {
        Err(Deny::Policy)
    }
}

/// The container owning a destination given as an IPv6 socket address (v4-mapped included).
pub fn owner_of6(addr: &Ip6, r: &impl Registry) -> Option<ContainerId> {
    if addr.is_mapped() {
        r.owner4(addr.mapped_v4())
    } else {
        r.owner6(addr)
    }
}

/// Whether an arriving packet may open a flow, and is therefore judged by the policy between
/// containers: a TCP SYN, an echo request, any protocol netiso does not follow; a UDP datagram
/// unless the local socket it is for is connected (then it answers a flow that socket opened).
/// Never a later fragment, whose first fragment carried the decision. Replies to flows a
/// container opened itself must not be judged again, or an isolated container could not hear
/// back from anyone. `udp_connected` is asked only for UDP.
#[inline(always)]
pub fn opens_flow(kind: Kind, udp_connected: impl FnOnce() -> bool) -> bool {
    match kind {
        Kind::Tcp | Kind::Icmp | Kind::LaterFragment => false,
        Kind::Udp => !udp_connected(),
        _ => true,
    }
}

/// First address of the per-container loopback range 127.128.0.0/9.
pub const LOOPBACK_BASE: [u8; 4] = [127, 128, 0, 0];

/// The private loopback address of container `id`: 127.128.0.0 + id.
pub const fn loopback_for(id: ContainerId) -> Ip4 {
    Ip4(u32::from_ne_bytes(
        (u32::from_be_bytes(LOOPBACK_BASE) + (id.0 & 0x007f_ffff)).to_be_bytes(),
    ))
}

/// The container whose private loopback address `addr` would be (ids start at 1), if it is in
/// 127.128.0.0/9. The caller checks that such a container exists.
pub const fn loopback_owner(addr: Ip4) -> Option<ContainerId> {
    let base = u32::from_be_bytes(LOOPBACK_BASE);
    let a = u32::from_be_bytes(addr.octets());
    if a & 0xff80_0000 != base || a == base {
        return None;
    }
    Some(ContainerId(a - base))
}

/// Result of a bind decision: keep the address the process asked for, or use another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind<A> {
    Keep,
    Rewrite(A),
}

/// bind() on an AF_INET socket. The family field is not trusted: the kernel accepts AF_UNSPEC
/// with 0.0.0.0 as a wildcard, so every request is judged by its address alone.
pub fn bind4(c: &Container, addr: Ip4, r: &impl Registry) -> Result<Bind<Ip4>, Deny> {
    if addr.is_unspecified() {
        return if c.has_v4() {
            Ok(Bind::Rewrite(c.v4))
        } else {
            Err(Deny::AddrNotAvail)
        };
    }
    if addr == Ip4::LOCALHOST {
        return Ok(Bind::Rewrite(c.lo4));
    }
    if owns4(c, addr, r) {
        return Ok(Bind::Keep);
    }
    Err(Deny::AddrNotAvail)
}

/// bind() on an AF_INET6 socket, including v4-mapped addresses on dual-stack sockets.
pub fn bind6(c: &Container, addr: &Ip6, r: &impl Registry) -> Result<Bind<Ip6>, Deny> {
    if addr.is_unspecified() {
        return if c.has_v6() {
            Ok(Bind::Rewrite(c.v6))
        } else if c.has_v4() {
            // The kernel refuses a mapped bind on a v6-only socket (EINVAL): still no escape.
            Ok(Bind::Rewrite(Ip6::mapped(c.v4)))
        } else {
            Err(Deny::AddrNotAvail)
        };
    }
    if addr.is_mapped() {
        return match bind4(c, addr.mapped_v4(), r)? {
            Bind::Keep => Ok(Bind::Keep),
            Bind::Rewrite(a) => Ok(Bind::Rewrite(Ip6::mapped(a))),
        };
    }
    if owns6(c, addr, r) {
        return Ok(Bind::Keep);
    }
    // ::1 and everything else: there is one IPv6 loopback per namespace, so it is never shared.
    Err(Deny::AddrNotAvail)
}

/// What to change on a connect() or a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rewrite<A> {
    /// New destination address (loopback mapping), if any.
    pub dst: Option<A>,
    /// Source address to bind (connect) or to send from (sendmsg), if any.
    pub src: Option<A>,
}

/// Source state of the socket being connected, read from `ctx->sk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound<A> {
    pub addr: A,
    /// A local port is assigned: with a zero address that means an autobound wildcard socket.
    pub has_port: bool,
}

/// Destination mapping shared by connect4 and sendmsg4: 127.0.0.1 becomes the container's own
/// loopback address; other 127/8 addresses (host services, other containers) are unreachable.
/// Returns (new destination, source to use).
fn route4(c: &Container, dst: Ip4) -> Result<(Option<Ip4>, Ip4), Deny> {
    if dst.is_loopback() {
        if dst == Ip4::LOCALHOST {
            return Ok((Some(c.lo4), c.lo4));
        }
        if dst == c.lo4 {
            return Ok((None, c.lo4));
        }
        return Err(Deny::NetUnreach);
    }
    if c.has_v4() {
        Ok((None, c.v4))
    } else {
        Err(Deny::NetUnreach)
    }
}

/// connect() on an AF_INET socket (TCP, UDP, ping).
pub fn connect4(
    c: &Container,
    dst: Ip4,
    bound: Bound<Ip4>,
    r: &impl Registry,
) -> Result<Rewrite<Ip4>, Deny> {
    let (new_dst, want_src) = route4(c, dst)?;
    let src = if !bound.addr.is_unspecified() {
        if !owns4(c, bound.addr, r) {
            return Err(Deny::AddrNotAvail);
        }
        None
    } else if bound.has_port {
        // Autobound to the wildcard (e.g. after an unconnected send): bpf_bind cannot fix the
        // source of an already-bound socket, so refuse rather than let routing pick one.
        return Err(Deny::AddrNotAvail);
    } else {
        Some(want_src)
    };
    Ok(Rewrite { dst: new_dst, src })
}

/// connect() on an AF_INET6 socket, including v4-mapped destinations.
pub fn connect6(
    c: &Container,
    dst: &Ip6,
    bound: Bound<Ip6>,
    r: &impl Registry,
) -> Result<Rewrite<Ip6>, Deny> {
    if dst.is_mapped() {
        let bound4 = if bound.addr.is_unspecified() {
            Ip4::UNSPECIFIED
        } else if bound.addr.is_mapped() {
            bound.addr.mapped_v4()
        } else {
            return Err(Deny::AddrNotAvail);
        };
        let r = connect4(
            c,
            dst.mapped_v4(),
            Bound {
                addr: bound4,
                has_port: bound.has_port,
            },
            r,
        )?;
        return Ok(Rewrite {
            dst: r.dst.map(Ip6::mapped),
            src: r.src.map(Ip6::mapped),
        });
    }
    // `::` means "this host" and the kernel turns it into ::1 after the hook.
    if dst.is_unspecified() || dst.is_loopback() {
        return Err(Deny::NetUnreach);
    }
    if !bound.addr.is_unspecified() {
        if !owns6(c, &bound.addr, r) {
            return Err(Deny::AddrNotAvail);
        }
        return Ok(Rewrite::default());
    }
    if bound.has_port {
        return Err(Deny::AddrNotAvail);
    }
    if !c.has_v6() {
        return Err(Deny::NetUnreach);
    }
    Ok(Rewrite {
        dst: None,
        src: Some(c.v6),
    })
}

/// An unconnected UDP send (or one with an IP_PKTINFO source) seen by sendmsg4. `src` is the
/// source the kernel would use: the control message's, else the bound address, else 0.
pub fn sendmsg4(
    c: &Container,
    dst: Ip4,
    src: Ip4,
    r: &impl Registry,
) -> Result<Rewrite<Ip4>, Deny> {
    let (new_dst, want_src) = route4(c, dst)?;
    if src.is_unspecified() {
        return Ok(Rewrite {
            dst: new_dst,
            src: Some(want_src),
        });
    }
    if !owns4(c, src, r) {
        return Err(Deny::AddrNotAvail);
    }
    Ok(Rewrite {
        dst: new_dst,
        src: None,
    })
}

/// A UDP send seen by sendmsg6 (v4-mapped destinations go to sendmsg4 instead).
pub fn sendmsg6(
    c: &Container,
    dst: &Ip6,
    src: &Ip6,
    r: &impl Registry,
) -> Result<Rewrite<Ip6>, Deny> {
    if dst.is_mapped() || dst.is_unspecified() || dst.is_loopback() {
        return Err(Deny::NetUnreach);
    }
    if src.is_unspecified() {
        if !c.has_v6() {
            return Err(Deny::NetUnreach);
        }
        return Ok(Rewrite {
            dst: None,
            src: Some(c.v6),
        });
    }
    if !owns6(c, src, r) {
        return Err(Deny::AddrNotAvail);
    }
    Ok(Rewrite::default())
}

/// socket(): only the socket kinds the address hooks govern (TCP, UDP, ping) are created,
/// unless the container was registered with `--allow-raw`.
pub fn sock_create(c: &Container, family: u32, ty: u32, protocol: u32) -> Result<(), Deny> {
    if c.allow_raw() {
        return Ok(());
    }
    let governed = matches!(
        (family, ty, protocol),
        (AF_INET | AF_INET6, SOCK_STREAM, IPPROTO_TCP)
            | (AF_INET | AF_INET6, SOCK_DGRAM, IPPROTO_UDP)
            | (AF_INET, SOCK_DGRAM, IPPROTO_ICMP)
            | (AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6)
    );
    if governed {
        Ok(())
    } else {
        Err(Deny::NotPermitted)
    }
}

/// setsockopt(): a sticky IPV6_PKTINFO may only name an owned source (or none); the legacy
/// IPV6_2292PKTOPTIONS, which can carry one too, and routing headers (IPV6_RTHDR, which
/// would put destinations no hook saw on the wire) are refused outright.
pub fn setsockopt(
    c: &Container,
    level: i32,
    optname: i32,
    pktinfo_addr: Option<&Ip6>,
    r: &impl Registry,
) -> Result<(), Deny> {
    if level != IPPROTO_IPV6 {
        return Ok(());
    }
    match optname {
        IPV6_PKTINFO => match pktinfo_addr {
            Some(a) if a.is_unspecified() || owns6(c, a, r) => Ok(()),
            Some(_) => Err(Deny::AddrNotAvail),
            // A short buffer: the kernel would reject it, refusing loses nothing.
            None => Err(Deny::NotPermitted),
        },
        IPV6_2292PKTOPTIONS | IPV6_RTHDR | IPV6_2292RTHDR => Err(Deny::NotPermitted),
        _ => Ok(()),
    }
}

/// Packet layer: a packet of a container socket may only carry an owned address (or, IPv4,
/// the container's loopback) as its source on egress and as its destination on ingress. This
/// closes what the socket hooks never see: implicit wildcard binds, raw sockets, passed-in
/// sockets. `local` is IPv4 held as by [`Ip6::holding_v4`] when `family` is AF_INET.
pub fn packet(c: &Container, family: u32, local: &Ip6, r: &impl Registry) -> Result<(), Deny> {
    let owned = if family == AF_INET {
        owns4(c, local.held_v4(), r)
    } else {
        owns6(c, local, r)
    };
    if owned {
        Ok(())
    } else {
        Err(Deny::AddrNotAvail)
    }
}

/// Packet layer: a container may not send packets that carry an IPv6 routing header, however
/// it was set (`IPV6_RTHDR` through the compat syscall that skips the sockopt hook, a control
/// message, a raw socket): the header routes the packet through addresses no hook judged.
pub fn egress_headers(rthdr: bool) -> Result<(), Deny> {
    if rthdr {
        Err(Deny::NotPermitted)
    } else {
        Ok(())
    }
}

/// The peer of a unix connect or send, as the hook read it.
pub enum UnixPeer<'a> {
    /// Unnamed or a filesystem path: the mount namespace and file permissions govern it.
    Path,
    Abstract(&'a UnixName),
    /// The hook could not read the address.
    Unreadable,
}

/// A container whose abstract unix sockets are restricted reaches only the abstract names
/// the operator listed (`listed`). Paths pass; an address the hook cannot read fails closed.
pub fn unix_peer(peer: UnixPeer<'_>, listed: impl FnOnce(&UnixName) -> bool) -> Result<(), Deny> {
    match peer {
        UnixPeer::Path => Ok(()),
        UnixPeer::Abstract(name) if listed(name) => Ok(()),
        UnixPeer::Abstract(_) => Err(Deny::Unlisted),
        UnixPeer::Unreadable => Err(Deny::NotPermitted),
    }
}

#[cfg(test)]
mod tests;
