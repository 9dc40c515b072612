//! Host unit tests of the isolation contract.
use super::*;
use crate::{FLAG_ALLOW_RAW, FLAG_HAS_V4, FLAG_HAS_V6, UNIX_NAME_MAX};

fn v4(s: &str) -> Ip4 {
    Ip4::from(s.parse::<core::net::Ipv4Addr>().unwrap())
}
fn v6(s: &str) -> Ip6 {
    Ip6::from(s.parse::<core::net::Ipv6Addr>().unwrap())
}

const ME: ContainerId = ContainerId(1);
const OTHER: ContainerId = ContainerId(2);

/// A registry: addresses by owner, isolated containers, explicit rules.
#[derive(Default)]
struct Net {
    v4: Vec<(Ip4, ContainerId)>,
    v6: Vec<(Ip6, ContainerId)>,
    isolated: Vec<ContainerId>,
    rules: Vec<(ContainerId, ContainerId, bool)>,
}

impl Registry for Net {
    fn owner4(&self, a: Ip4) -> Option<ContainerId> {
        self.v4.iter().find(|(x, _)| *x == a).map(|(_, id)| *id)
    }
    fn owner6(&self, a: &Ip6) -> Option<ContainerId> {
        self.v6.iter().find(|(x, _)| x == a).map(|(_, id)| *id)
    }
    fn isolated(&self, id: ContainerId) -> bool {
        self.isolated.contains(&id)
    }
    fn rule(&self, f: ContainerId, t: ContainerId) -> Option<bool> {
        self.rules
            .iter()
            .find(|r| r.0 == f && r.1 == t)
            .map(|r| r.2)
    }
}

/// Container 1 owns .10/.11 and ::10/::11; container 2 owns .20 and ::20.
fn dual() -> (Container, Net) {
    let c = Container {
        id: ME,
        flags: FLAG_HAS_V4 | FLAG_HAS_V6,
        v4: v4("192.0.2.10"),
        lo4: loopback_for(ME),
        v6: v6("2001:db8::10"),
    };
    let n = Net {
        v4: vec![
            (v4("192.0.2.10"), ME),
            (v4("192.0.2.11"), ME),
            (v4("192.0.2.20"), OTHER),
        ],
        v6: vec![
            (v6("2001:db8::10"), ME),
            (v6("2001:db8::11"), ME),
            (v6("2001:db8::20"), OTHER),
        ],
        ..Net::default()
    };
    (c, n)
}

fn v4_only() -> (Container, Net) {
    let (mut c, mut n) = dual();
    c.flags = FLAG_HAS_V4;
    c.v6 = Ip6::UNSPECIFIED;
    n.v6.retain(|(_, id)| *id != ME);
    (c, n)
}

const UNBOUND4: Bound<Ip4> = Bound {
    addr: Ip4::UNSPECIFIED,
    has_port: false,
};
const UNBOUND6: Bound<Ip6> = Bound {
    addr: Ip6::UNSPECIFIED,
    has_port: false,
};

#[test]
fn loopback_addresses_are_private_and_in_127_128() {
    assert_eq!(loopback_for(ContainerId(1)), v4("127.128.0.1"));
    assert_eq!(loopback_for(ContainerId(300)), v4("127.128.1.44"));
    assert_ne!(loopback_for(ContainerId(1)), loopback_for(ContainerId(2)));
    assert!(loopback_for(ContainerId(70_000)).is_loopback());
    for id in [1, 300, 70_000, 0x7f_ffff] {
        assert_eq!(
            loopback_owner(loopback_for(ContainerId(id))),
            Some(ContainerId(id))
        );
    }
    for other in ["127.0.0.1", "127.128.0.0", "127.127.255.255", "192.0.2.1"] {
        assert_eq!(loopback_owner(v4(other)), None, "{other}");
    }
}

#[test]
fn bind4_contract() {
    let (c, n) = dual();
    assert_eq!(bind4(&c, v4("192.0.2.11"), &n), Ok(Bind::Keep));
    assert_eq!(
        bind4(&c, Ip4::UNSPECIFIED, &n),
        Ok(Bind::Rewrite(v4("192.0.2.10")))
    );
    assert_eq!(bind4(&c, Ip4::LOCALHOST, &n), Ok(Bind::Rewrite(c.lo4)));
    assert_eq!(bind4(&c, c.lo4, &n), Ok(Bind::Keep));
    for other in [
        "192.0.2.20",
        "127.0.0.2",
        "127.128.0.2",
        "255.255.255.255",
        "224.0.0.1",
    ] {
        assert_eq!(bind4(&c, v4(other), &n), Err(Deny::AddrNotAvail), "{other}");
    }
    let mut v6only = c;
    v6only.flags = FLAG_HAS_V6;
    assert_eq!(
        bind4(&v6only, Ip4::UNSPECIFIED, &n),
        Err(Deny::AddrNotAvail)
    );
}

#[test]
fn bind6_contract() {
    let (c, n) = dual();
    assert_eq!(bind6(&c, &v6("2001:db8::11"), &n), Ok(Bind::Keep));
    assert_eq!(bind6(&c, &Ip6::UNSPECIFIED, &n), Ok(Bind::Rewrite(c.v6)));
    assert_eq!(bind6(&c, &v6("::ffff:192.0.2.11"), &n), Ok(Bind::Keep));
    assert_eq!(
        bind6(&c, &v6("::ffff:0.0.0.0"), &n),
        Ok(Bind::Rewrite(Ip6::mapped(c.v4)))
    );
    assert_eq!(
        bind6(&c, &v6("::ffff:127.0.0.1"), &n),
        Ok(Bind::Rewrite(Ip6::mapped(c.lo4)))
    );
    for other in ["::1", "2001:db8::20", "::ffff:192.0.2.20", "ff02::1"] {
        assert_eq!(
            bind6(&c, &v6(other), &n),
            Err(Deny::AddrNotAvail),
            "{other}"
        );
    }
    let (c4, n4) = v4_only();
    assert_eq!(
        bind6(&c4, &Ip6::UNSPECIFIED, &n4),
        Ok(Bind::Rewrite(Ip6::mapped(c4.v4)))
    );
    let none = Container { flags: 0, ..c4 };
    assert_eq!(
        bind6(&none, &Ip6::UNSPECIFIED, &n4),
        Err(Deny::AddrNotAvail)
    );
}

#[test]
fn connect4_contract() {
    let (c, n) = dual();
    let r = connect4(&c, v4("198.51.100.1"), UNBOUND4, &n).unwrap();
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
        connect4(&c, v4("198.51.100.1"), bound, &n),
        Ok(Rewrite::default())
    );
    let foreign = Bound {
        addr: v4("192.0.2.20"),
        has_port: true,
    };
    assert_eq!(
        connect4(&c, v4("198.51.100.1"), foreign, &n),
        Err(Deny::AddrNotAvail)
    );
    let autobound = Bound {
        addr: Ip4::UNSPECIFIED,
        has_port: true,
    };
    assert_eq!(
        connect4(&c, v4("198.51.100.1"), autobound, &n),
        Err(Deny::AddrNotAvail)
    );
    let lo = connect4(&c, Ip4::LOCALHOST, UNBOUND4, &n).unwrap();
    assert_eq!(
        lo,
        Rewrite {
            dst: Some(c.lo4),
            src: Some(c.lo4)
        }
    );
    assert_eq!(
        connect4(&c, loopback_for(OTHER), UNBOUND4, &n),
        Err(Deny::NetUnreach)
    );
    assert_eq!(
        connect4(&c, v4("127.0.0.53"), UNBOUND4, &n),
        Err(Deny::NetUnreach)
    );
}

#[test]
fn connect6_contract() {
    let (c, n) = dual();
    let r = connect6(&c, &v6("2001:db8:1::1"), UNBOUND6, &n).unwrap();
    assert_eq!(r.src, Some(c.v6));
    let r = connect6(&c, &v6("::ffff:198.51.100.1"), UNBOUND6, &n).unwrap();
    assert_eq!(r.src, Some(Ip6::mapped(c.v4)));
    let r = connect6(&c, &v6("::ffff:127.0.0.1"), UNBOUND6, &n).unwrap();
    assert_eq!(r.dst, Some(Ip6::mapped(c.lo4)));
    assert_eq!(
        connect6(&c, &Ip6::LOCALHOST, UNBOUND6, &n),
        Err(Deny::NetUnreach)
    );
    assert_eq!(
        connect6(&c, &Ip6::UNSPECIFIED, UNBOUND6, &n),
        Err(Deny::NetUnreach)
    );
    let (c4, n4) = v4_only();
    assert_eq!(
        connect6(&c4, &v6("2001:db8:1::1"), UNBOUND6, &n4),
        Err(Deny::NetUnreach)
    );
    let foreign = Bound {
        addr: v6("2001:db8::20"),
        has_port: true,
    };
    assert_eq!(
        connect6(&c, &v6("2001:db8:1::1"), foreign, &n),
        Err(Deny::AddrNotAvail)
    );
}

#[test]
fn sendmsg_contract() {
    let (c, n) = dual();
    let r = sendmsg4(&c, v4("198.51.100.1"), Ip4::UNSPECIFIED, &n).unwrap();
    assert_eq!(r.src, Some(c.v4));
    assert_eq!(
        sendmsg4(&c, v4("198.51.100.1"), v4("192.0.2.11"), &n),
        Ok(Rewrite::default())
    );
    assert_eq!(
        sendmsg4(&c, v4("198.51.100.1"), v4("192.0.2.20"), &n),
        Err(Deny::AddrNotAvail)
    );
    assert_eq!(
        sendmsg4(&c, Ip4::LOCALHOST, Ip4::UNSPECIFIED, &n),
        Ok(Rewrite {
            dst: Some(c.lo4),
            src: Some(c.lo4)
        })
    );
    let r = sendmsg6(&c, &v6("2001:db8:1::1"), &Ip6::UNSPECIFIED, &n).unwrap();
    assert_eq!(r.src, Some(c.v6));
    assert_eq!(
        sendmsg6(&c, &v6("2001:db8:1::1"), &v6("2001:db8::20"), &n),
        Err(Deny::AddrNotAvail)
    );
    assert_eq!(
        sendmsg6(&c, &Ip6::LOCALHOST, &Ip6::UNSPECIFIED, &n),
        Err(Deny::NetUnreach)
    );
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

#[test]
fn policy_between_containers() {
    let (_, open) = dual();
    assert!(reach(ME, Some(OTHER), &open).is_ok());
    assert!(reach(ME, None, &open).is_ok());
    let c3 = ContainerId(3);
    let c4 = ContainerId(4);
    let iso = Net {
        isolated: vec![OTHER],
        rules: vec![(c3, OTHER, true), (ME, c4, false)],
        ..dual().1
    };
    assert_eq!(reach(ME, Some(OTHER), &iso), Err(Deny::Policy));
    assert!(reach(OTHER, Some(OTHER), &iso).is_ok());
    assert!(reach(c3, Some(OTHER), &iso).is_ok());
    assert_eq!(reach(ME, Some(c4), &iso), Err(Deny::Policy));
    assert!(reach(OTHER, Some(ME), &iso).is_ok());
    assert_eq!(owner_of6(&Ip6::mapped(v4("192.0.2.20")), &iso), Some(OTHER));
    assert_eq!(owner_of6(&v6("2001:db8::20"), &iso), Some(OTHER));
}

#[test]
fn flows_are_opened_by_syns_requests_and_unconnected_udp() {
    for k in [
        Kind::TcpSyn,
        Kind::EchoRequest,
        Kind::Other,
        Kind::Malformed,
    ] {
        assert!(opens_flow(k, || unreachable!()), "{k:?}");
    }
    for k in [Kind::Tcp, Kind::Icmp, Kind::LaterFragment] {
        assert!(!opens_flow(k, || unreachable!()), "{k:?}");
    }
    assert!(opens_flow(Kind::Udp, || false));
    assert!(!opens_flow(Kind::Udp, || true));
}

#[test]
fn packets_need_an_owned_local_address() {
    let (c, n) = dual();
    let held = |s| Ip6::holding_v4(v4(s));
    assert!(packet(&c, AF_INET, &held("192.0.2.11"), &n).is_ok());
    assert!(packet(&c, AF_INET, &Ip6::holding_v4(c.lo4), &n).is_ok());
    for other in ["192.0.2.20", "127.0.0.1", "255.255.255.255", "0.0.0.0"] {
        assert!(packet(&c, AF_INET, &held(other), &n).is_err(), "{other}");
    }
    assert!(packet(&c, AF_INET6, &v6("2001:db8::11"), &n).is_ok());
    assert!(packet(&c, AF_INET6, &v6("2001:db8::20"), &n).is_err());
    assert!(packet(&c, AF_INET6, &Ip6::LOCALHOST, &n).is_err());
}

#[test]
fn sticky_pktinfo_needs_an_owned_source() {
    let (c, n) = dual();
    let pktinfo = |a: Option<&Ip6>| setsockopt(&c, IPPROTO_IPV6, IPV6_PKTINFO, a, &n);
    assert!(pktinfo(Some(&v6("2001:db8::10"))).is_ok());
    assert!(pktinfo(Some(&Ip6::UNSPECIFIED)).is_ok());
    assert_eq!(pktinfo(Some(&v6("2001:db8::20"))), Err(Deny::AddrNotAvail));
    assert_eq!(pktinfo(None), Err(Deny::NotPermitted));
    assert!(setsockopt(&c, IPPROTO_IPV6, IPV6_2292PKTOPTIONS, None, &n).is_err());
    assert!(setsockopt(&c, 0, 8, None, &n).is_ok());
}

#[test]
fn routing_headers_are_refused_at_the_socket_and_on_the_wire() {
    let (c, n) = dual();
    for opt in [IPV6_RTHDR, IPV6_2292RTHDR] {
        assert_eq!(
            setsockopt(&c, IPPROTO_IPV6, opt, None, &n),
            Err(Deny::NotPermitted),
            "{opt}"
        );
    }
    assert_eq!(egress_headers(true), Err(Deny::NotPermitted));
    assert_eq!(egress_headers(false), Ok(()));
}

#[test]
fn restricted_abstract_unix_reaches_listed_names_only() {
    let id = ContainerId(7);
    let listed = UnixName::new(id, b"allowed").unwrap();
    let other = UnixName::new(id, b"other").unwrap();
    let is_listed = |n: &UnixName| *n == listed;
    assert_eq!(unix_peer(UnixPeer::Abstract(&listed), is_listed), Ok(()));
    assert_eq!(
        unix_peer(UnixPeer::Abstract(&other), is_listed),
        Err(Deny::Unlisted)
    );
    assert_eq!(Deny::Unlisted.errno(), 111);
    assert_eq!(unix_peer(UnixPeer::Path, |_| false), Ok(()));
    assert_eq!(
        unix_peer(UnixPeer::Unreadable, |_| true),
        Err(Deny::NotPermitted)
    );
}

#[test]
fn abstract_names_are_keyed_by_their_bytes_and_length() {
    let id = ContainerId(1);
    let a = UnixName::new(id, b"x").unwrap();
    let a0 = UnixName::new(id, b"x\0").unwrap();
    assert_ne!(a, a0, "a trailing NUL is part of an abstract name");
    assert_eq!(a0.bytes(), b"x\0");
    assert!(UnixName::new(id, &[b'a'; UNIX_NAME_MAX]).is_some());
    assert!(UnixName::new(id, &[b'a'; UNIX_NAME_MAX + 1]).is_none());
    assert_ne!(a, UnixName::new(ContainerId(2), b"x").unwrap());
}
