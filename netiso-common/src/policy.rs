//! The isolation contract as pure functions.
//!
//! The eBPF hooks read the socket address from their context, call one of these functions and
//! apply the decision; keeping the decisions here means they are unit-tested on the host and the
//! hooks stay thin. Nothing here may loop unboundedly or allocate: it runs in the kernel verifier.

use crate::{Container, Ip4, Ip6};

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
pub const IPV6_PKTINFO: i32 = 50;

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
}

impl Deny {
    pub const fn errno(self) -> i32 {
        match self {
            Deny::AddrNotAvail => 99, // EADDRNOTAVAIL
            Deny::NetUnreach => 101,  // ENETUNREACH
            Deny::NotPermitted => 1,  // EPERM
            Deny::Policy => 13,       // EACCES
        }
    }
}

/// Looks up whether the container being decided for owns an address.
pub trait Ownership {
    fn owns4(&self, addr: Ip4) -> bool;
    fn owns6(&self, addr: &Ip6) -> bool;
}

/// Who owns addresses and who may reach whom, for the policy between containers.
pub trait Reachability {
    fn owner4(&self, addr: Ip4) -> Option<u32>;
    fn owner6(&self, addr: &Ip6) -> Option<u32>;
    fn isolated(&self, id: u32) -> bool;
    /// An explicit rule for `from` -> `to`: Some(true) allow, Some(false) deny.
    fn rule(&self, from: u32, to: u32) -> Option<bool>;
}

/// May container `from` talk to the owner of an address (`to`, None when no container owns
/// it)? Like hosts on a LAN by default; an isolated container only accepts containers a rule
/// allows, and an explicit deny applies to any container.
pub fn reach(from: u32, to: Option<u32>, r: &impl Reachability) -> Result<(), Deny> {
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
pub fn owner_of6(addr: &Ip6, r: &impl Reachability) -> Option<u32> {
    if is_mapped(addr) {
        r.owner4(addr[3])
    } else {
        r.owner6(addr)
    }
}

pub const fn ip4(a: u8, b: u8, c: u8, d: u8) -> Ip4 {
    u32::from_ne_bytes([a, b, c, d])
}

pub const LOCALHOST4: Ip4 = ip4(127, 0, 0, 1);
pub const ANY6: Ip6 = [0; 4];
pub const LOCALHOST6: Ip6 = [0, 0, 0, ip4(0, 0, 0, 1)];
const MAPPED_PREFIX: u32 = ip4(0, 0, 0xff, 0xff);

/// First address of the per-container loopback range 127.128.0.0/9.
pub const LOOPBACK_BASE: [u8; 4] = [127, 128, 0, 0];

/// The private loopback address of container `id`: 127.128.0.0 + id.
pub const fn loopback_for(id: u32) -> Ip4 {
    u32::from_ne_bytes((u32::from_be_bytes(LOOPBACK_BASE) + (id & 0x007f_ffff)).to_be_bytes())
}

pub const fn is_loopback4(a: Ip4) -> bool {
    a.to_ne_bytes()[0] == 127
}

pub const fn is_mapped(a: &Ip6) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == MAPPED_PREFIX
}

pub const fn mapped(a: Ip4) -> Ip6 {
    [0, 0, MAPPED_PREFIX, a]
}

pub const fn is_zero6(a: &Ip6) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0
}

const fn eq6(a: &Ip6, b: &Ip6) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// Result of a bind decision: keep the address the process asked for, or use another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind<A> {
    Keep,
    Rewrite(A),
}

/// bind() on an AF_INET socket. The family field is not trusted: the kernel accepts AF_UNSPEC
/// with 0.0.0.0 as a wildcard, so every request is judged by its address alone.
pub fn bind4(c: &Container, addr: Ip4, own: &impl Ownership) -> Result<Bind<Ip4>, Deny> {
    if addr == 0 {
        return if c.has_v4() {
            Ok(Bind::Rewrite(c.v4))
        } else {
            Err(Deny::AddrNotAvail)
        };
    }
    if addr == LOCALHOST4 {
        return Ok(Bind::Rewrite(c.lo4));
    }
    if addr == c.lo4 || own.owns4(addr) {
        return Ok(Bind::Keep);
    }
    Err(Deny::AddrNotAvail)
}

/// bind() on an AF_INET6 socket, including v4-mapped addresses on dual-stack sockets.
pub fn bind6(c: &Container, addr: &Ip6, own: &impl Ownership) -> Result<Bind<Ip6>, Deny> {
    if is_zero6(addr) {
        return if c.has_v6() {
            Ok(Bind::Rewrite(c.v6))
        } else if c.has_v4() {
            // The kernel refuses a mapped bind on a v6-only socket (EINVAL): still no escape.
            Ok(Bind::Rewrite(mapped(c.v4)))
        } else {
            Err(Deny::AddrNotAvail)
        };
    }
    if is_mapped(addr) {
        return match bind4(c, addr[3], own)? {
            Bind::Keep => Ok(Bind::Keep),
            Bind::Rewrite(a) => Ok(Bind::Rewrite(mapped(a))),
        };
    }
    if own.owns6(addr) {
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
    if is_loopback4(dst) {
        if dst == LOCALHOST4 {
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

fn owned_src4(c: &Container, src: Ip4, own: &impl Ownership) -> bool {
    src == c.lo4 || own.owns4(src)
}

/// connect() on an AF_INET socket (TCP, UDP, ping).
pub fn connect4(
    c: &Container,
    dst: Ip4,
    bound: Bound<Ip4>,
    own: &impl Ownership,
) -> Result<Rewrite<Ip4>, Deny> {
    let (new_dst, want_src) = route4(c, dst)?;
    let src = if bound.addr != 0 {
        if !owned_src4(c, bound.addr, own) {
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
    own: &impl Ownership,
) -> Result<Rewrite<Ip6>, Deny> {
    if is_mapped(dst) {
        let bound4 = if is_zero6(&bound.addr) {
            0
        } else if is_mapped(&bound.addr) {
            bound.addr[3]
        } else {
            return Err(Deny::AddrNotAvail);
        };
        let r = connect4(
            c,
            dst[3],
            Bound {
                addr: bound4,
                has_port: bound.has_port,
            },
            own,
        )?;
        return Ok(Rewrite {
            dst: r.dst.map(mapped),
            src: r.src.map(mapped),
        });
    }
    // `::` means "this host" and the kernel turns it into ::1 after the hook.
    if is_zero6(dst) || eq6(dst, &LOCALHOST6) {
        return Err(Deny::NetUnreach);
    }
    if !is_zero6(&bound.addr) {
        if !own.owns6(&bound.addr) {
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
    own: &impl Ownership,
) -> Result<Rewrite<Ip4>, Deny> {
    let (new_dst, want_src) = route4(c, dst)?;
    if src == 0 {
        return Ok(Rewrite {
            dst: new_dst,
            src: Some(want_src),
        });
    }
    if !owned_src4(c, src, own) {
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
    own: &impl Ownership,
) -> Result<Rewrite<Ip6>, Deny> {
    if is_mapped(dst) || is_zero6(dst) || eq6(dst, &LOCALHOST6) {
        return Err(Deny::NetUnreach);
    }
    if is_zero6(src) {
        if !c.has_v6() {
            return Err(Deny::NetUnreach);
        }
        return Ok(Rewrite {
            dst: None,
            src: Some(c.v6),
        });
    }
    if !own.owns6(src) {
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
/// IPV6_2292PKTOPTIONS, which can carry one too, is refused outright.
pub fn setsockopt(
    level: i32,
    optname: i32,
    pktinfo_addr: Option<&Ip6>,
    own: &impl Ownership,
) -> Result<(), Deny> {
    if level != IPPROTO_IPV6 {
        return Ok(());
    }
    match optname {
        IPV6_PKTINFO => match pktinfo_addr {
            Some(a) if is_zero6(a) || own.owns6(a) => Ok(()),
            Some(_) => Err(Deny::AddrNotAvail),
            // A short buffer: the kernel would reject it, refusing loses nothing.
            None => Err(Deny::NotPermitted),
        },
        IPV6_2292PKTOPTIONS => Err(Deny::NotPermitted),
        _ => Ok(()),
    }
}

/// Packet layer: an IPv4 packet of a container socket may only carry an owned address (or the
/// container's loopback) as its source on egress and as its destination on ingress. This closes
/// what the socket hooks never see: implicit wildcard binds, raw sockets, passed-in sockets.
pub fn packet4(c: &Container, local: Ip4, own: &impl Ownership) -> Result<(), Deny> {
    if local == c.lo4 || own.owns4(local) {
        Ok(())
    } else {
        Err(Deny::AddrNotAvail)
    }
}

/// Packet layer for IPv6, see [`packet4`].
pub fn packet6(_c: &Container, local: &Ip6, own: &impl Ownership) -> Result<(), Deny> {
    if own.owns6(local) {
        Ok(())
    } else {
        Err(Deny::AddrNotAvail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FLAG_ALLOW_RAW, FLAG_HAS_V4, FLAG_HAS_V6};

    fn v4(s: &str) -> Ip4 {
        crate::host::ip4_raw(s.parse().unwrap())
    }
    fn v6(s: &str) -> Ip6 {
        crate::host::ip6_raw(s.parse().unwrap())
    }

    struct Owned(Vec<Ip4>, Vec<Ip6>);
    impl Ownership for Owned {
        fn owns4(&self, a: Ip4) -> bool {
            self.0.contains(&a)
        }
        fn owns6(&self, a: &Ip6) -> bool {
            self.1.contains(a)
        }
    }

    fn dual() -> (Container, Owned) {
        let c = Container {
            id: 1,
            flags: FLAG_HAS_V4 | FLAG_HAS_V6,
            v4: v4("192.0.2.10"),
            lo4: loopback_for(1),
            v6: v6("2001:db8::10"),
        };
        let o = Owned(
            vec![v4("192.0.2.10"), v4("192.0.2.11")],
            vec![v6("2001:db8::10"), v6("2001:db8::11")],
        );
        (c, o)
    }

    fn v4_only() -> (Container, Owned) {
        let (mut c, mut o) = dual();
        c.flags = FLAG_HAS_V4;
        c.v6 = ANY6;
        o.1.clear();
        (c, o)
    }

    const UNBOUND4: Bound<Ip4> = Bound {
        addr: 0,
        has_port: false,
    };
    const UNBOUND6: Bound<Ip6> = Bound {
        addr: ANY6,
        has_port: false,
    };

    #[test]
    fn loopback_addresses_are_private_and_in_127_128() {
        assert_eq!(loopback_for(1), v4("127.128.0.1"));
        assert_eq!(loopback_for(300), v4("127.128.1.44"));
        assert_ne!(loopback_for(1), loopback_for(2));
        assert!(is_loopback4(loopback_for(70_000)));
    }

    #[test]
    fn bind4_contract() {
        let (c, o) = dual();
        assert_eq!(bind4(&c, v4("192.0.2.11"), &o), Ok(Bind::Keep));
        assert_eq!(bind4(&c, 0, &o), Ok(Bind::Rewrite(v4("192.0.2.10"))));
        assert_eq!(bind4(&c, LOCALHOST4, &o), Ok(Bind::Rewrite(c.lo4)));
        assert_eq!(bind4(&c, c.lo4, &o), Ok(Bind::Keep));
        for other in [
            "192.0.2.20",
            "127.0.0.2",
            "127.128.0.2",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert_eq!(bind4(&c, v4(other), &o), Err(Deny::AddrNotAvail), "{other}");
        }
        let mut v6only = c;
        v6only.flags = FLAG_HAS_V6;
        assert_eq!(bind4(&v6only, 0, &o), Err(Deny::AddrNotAvail));
    }

    #[test]
    fn bind6_contract() {
        let (c, o) = dual();
        assert_eq!(bind6(&c, &v6("2001:db8::11"), &o), Ok(Bind::Keep));
        assert_eq!(bind6(&c, &ANY6, &o), Ok(Bind::Rewrite(c.v6)));
        assert_eq!(bind6(&c, &v6("::ffff:192.0.2.11"), &o), Ok(Bind::Keep));
        assert_eq!(
            bind6(&c, &v6("::ffff:0.0.0.0"), &o),
            Ok(Bind::Rewrite(mapped(c.v4)))
        );
        assert_eq!(
            bind6(&c, &v6("::ffff:127.0.0.1"), &o),
            Ok(Bind::Rewrite(mapped(c.lo4)))
        );
        for other in ["::1", "2001:db8::20", "::ffff:192.0.2.20", "ff02::1"] {
            assert_eq!(
                bind6(&c, &v6(other), &o),
                Err(Deny::AddrNotAvail),
                "{other}"
            );
        }
        let (c4, o4) = v4_only();
        assert_eq!(bind6(&c4, &ANY6, &o4), Ok(Bind::Rewrite(mapped(c4.v4))));
        let none = Container { flags: 0, ..c4 };
        assert_eq!(bind6(&none, &ANY6, &o4), Err(Deny::AddrNotAvail));
    }

    #[test]
    fn connect4_contract() {
        let (c, o) = dual();
        let r = connect4(&c, v4("198.51.100.1"), UNBOUND4, &o).unwrap();
        assert_eq!(
            r,
            Rewrite {
                dst: None,
                src: Some(c.v4)
            }
        );
        let bound = Bound {
            addr: v4("192.0.2.11"),
            has_port: true,
        };
        assert_eq!(
            connect4(&c, v4("198.51.100.1"), bound, &o),
            Ok(Rewrite::default())
        );
        let foreign = Bound {
            addr: v4("192.0.2.20"),
            has_port: true,
        };
        assert_eq!(
            connect4(&c, v4("198.51.100.1"), foreign, &o),
            Err(Deny::AddrNotAvail)
        );
        let autobound = Bound {
            addr: 0,
            has_port: true,
        };
        assert_eq!(
            connect4(&c, v4("198.51.100.1"), autobound, &o),
            Err(Deny::AddrNotAvail)
        );
        let lo = connect4(&c, LOCALHOST4, UNBOUND4, &o).unwrap();
        assert_eq!(
            lo,
            Rewrite {
                dst: Some(c.lo4),
                src: Some(c.lo4)
            }
        );
        assert_eq!(
            connect4(&c, loopback_for(2), UNBOUND4, &o),
            Err(Deny::NetUnreach)
        );
        assert_eq!(
            connect4(&c, v4("127.0.0.53"), UNBOUND4, &o),
            Err(Deny::NetUnreach)
        );
    }

    #[test]
    fn connect6_contract() {
        let (c, o) = dual();
        let r = connect6(&c, &v6("2001:db8:1::1"), UNBOUND6, &o).unwrap();
        assert_eq!(r.src, Some(c.v6));
        let r = connect6(&c, &v6("::ffff:198.51.100.1"), UNBOUND6, &o).unwrap();
        assert_eq!(r.src, Some(mapped(c.v4)));
        let r = connect6(&c, &v6("::ffff:127.0.0.1"), UNBOUND6, &o).unwrap();
        assert_eq!(r.dst, Some(mapped(c.lo4)));
        assert_eq!(
            connect6(&c, &LOCALHOST6, UNBOUND6, &o),
            Err(Deny::NetUnreach)
        );
        assert_eq!(connect6(&c, &ANY6, UNBOUND6, &o), Err(Deny::NetUnreach));
        let (c4, o4) = v4_only();
        assert_eq!(
            connect6(&c4, &v6("2001:db8:1::1"), UNBOUND6, &o4),
            Err(Deny::NetUnreach)
        );
        let foreign = Bound {
            addr: v6("2001:db8::20"),
            has_port: true,
        };
        assert_eq!(
            connect6(&c, &v6("2001:db8:1::1"), foreign, &o),
            Err(Deny::AddrNotAvail)
        );
    }

    #[test]
    fn sendmsg_contract() {
        let (c, o) = dual();
        let r = sendmsg4(&c, v4("198.51.100.1"), 0, &o).unwrap();
        assert_eq!(r.src, Some(c.v4));
        assert_eq!(
            sendmsg4(&c, v4("198.51.100.1"), v4("192.0.2.11"), &o),
            Ok(Rewrite::default())
        );
        assert_eq!(
            sendmsg4(&c, v4("198.51.100.1"), v4("192.0.2.20"), &o),
            Err(Deny::AddrNotAvail)
        );
        assert_eq!(
            sendmsg4(&c, LOCALHOST4, 0, &o),
            Ok(Rewrite {
                dst: Some(c.lo4),
                src: Some(c.lo4)
            })
        );
        let r = sendmsg6(&c, &v6("2001:db8:1::1"), &ANY6, &o).unwrap();
        assert_eq!(r.src, Some(c.v6));
        assert_eq!(
            sendmsg6(&c, &v6("2001:db8:1::1"), &v6("2001:db8::20"), &o),
            Err(Deny::AddrNotAvail)
        );
        assert_eq!(sendmsg6(&c, &LOCALHOST6, &ANY6, &o), Err(Deny::NetUnreach));
    }

    #[test]
    fn sock_create_contract() {
        let (c, _) = dual();
        assert!(sock_create(&c, AF_INET, SOCK_STREAM, IPPROTO_TCP).is_ok());
        assert!(sock_create(&c, AF_INET6, SOCK_DGRAM, IPPROTO_UDP).is_ok());
        assert!(sock_create(&c, AF_INET, SOCK_DGRAM, IPPROTO_ICMP).is_ok());
        assert!(sock_create(&c, AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6).is_ok());
        // raw, SCTP, MPTCP, UDP-Lite, l2tp
        for (f, t, p) in [
            (AF_INET, 3, 255),
            (AF_INET, 1, 132),
            (AF_INET, 1, 262),
            (AF_INET, 2, 136),
            (AF_INET, 2, 115),
        ] {
            assert_eq!(sock_create(&c, f, t, p), Err(Deny::NotPermitted));
        }
        let raw = Container {
            flags: c.flags | FLAG_ALLOW_RAW,
            ..c
        };
        assert!(sock_create(&raw, AF_INET, 3, 255).is_ok());
    }

    struct Net {
        isolated: Vec<u32>,
        rules: Vec<(u32, u32, bool)>,
    }
    impl Reachability for Net {
        fn owner4(&self, a: Ip4) -> Option<u32> {
            (a == v4("192.0.2.20")).then_some(2)
        }
        fn owner6(&self, _: &Ip6) -> Option<u32> {
            None
        }
        fn isolated(&self, id: u32) -> bool {
            self.isolated.contains(&id)
        }
        fn rule(&self, f: u32, t: u32) -> Option<bool> {
            self.rules
                .iter()
                .find(|r| r.0 == f && r.1 == t)
                .map(|r| r.2)
        }
    }

    #[test]
    fn policy_between_containers() {
        let open = Net {
            isolated: vec![],
            rules: vec![],
        };
        assert!(reach(1, Some(2), &open).is_ok());
        assert!(reach(1, None, &open).is_ok());
        let iso = Net {
            isolated: vec![2],
            rules: vec![(3, 2, true), (1, 4, false)],
        };
        assert_eq!(reach(1, Some(2), &iso), Err(Deny::Policy));
        assert!(reach(2, Some(2), &iso).is_ok());
        assert!(reach(3, Some(2), &iso).is_ok());
        assert_eq!(reach(1, Some(4), &iso), Err(Deny::Policy));
        assert!(reach(2, Some(1), &iso).is_ok());
        assert_eq!(owner_of6(&mapped(v4("192.0.2.20")), &iso), Some(2));
    }

    #[test]
    fn packets_need_an_owned_local_address() {
        let (c, o) = dual();
        assert!(packet4(&c, v4("192.0.2.11"), &o).is_ok());
        assert!(packet4(&c, c.lo4, &o).is_ok());
        for other in ["192.0.2.20", "127.0.0.1", "255.255.255.255", "0.0.0.0"] {
            assert!(packet4(&c, v4(other), &o).is_err(), "{other}");
        }
        assert!(packet6(&c, &v6("2001:db8::11"), &o).is_ok());
        assert!(packet6(&c, &v6("2001:db8::20"), &o).is_err());
        assert!(packet6(&c, &LOCALHOST6, &o).is_err());
    }

    #[test]
    fn sticky_pktinfo_needs_an_owned_source() {
        let (_, o) = dual();
        assert!(setsockopt(IPPROTO_IPV6, IPV6_PKTINFO, Some(&v6("2001:db8::10")), &o).is_ok());
        assert!(setsockopt(IPPROTO_IPV6, IPV6_PKTINFO, Some(&ANY6), &o).is_ok());
        assert_eq!(
            setsockopt(IPPROTO_IPV6, IPV6_PKTINFO, Some(&v6("2001:db8::20")), &o),
            Err(Deny::AddrNotAvail)
        );
        assert!(setsockopt(IPPROTO_IPV6, IPV6_2292PKTOPTIONS, None, &o).is_err());
        assert!(setsockopt(0, 8, None, &o).is_ok());
    }
}
