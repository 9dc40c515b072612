//! The shared packet parser (`netiso_common::packet`) against crafted frames: every kind of
//! header the TC and cgroup_skb programs meet, every prefix of them, and random bytes.
use netiso_common::{
    packet::{parse, Kind, MAX_EXT_HEADERS},
    policy::{AF_INET, AF_INET6},
    Ip4, Ip6,
};
use netiso_testkit::craft::{Packet, Transport, ACK, SYN};

fn v4(s: &str) -> Ip4 {
    Ip4::from(s.parse::<std::net::Ipv4Addr>().unwrap())
}
fn v6(s: &str) -> Ip6 {
    Ip6::from(s.parse::<std::net::Ipv6Addr>().unwrap())
}
fn kind(p: &Packet) -> Kind {
    let h = parse(&p.build()[..]);
    assert!(h.is_ip(), "not parsed as IP: {h:?}");
    h.kind
}
fn kind_of(f: &[u8]) -> Kind {
    parse(f).kind
}
fn syn4() -> Packet {
    Packet::new("192.0.2.1", "192.0.2.2", Transport::Tcp { flags: SYN })
}
fn syn6() -> Packet {
    Packet::new("2001:db8::1", "2001:db8::2", Transport::Tcp { flags: SYN })
}

#[test]
fn ipv4_addresses_and_transport() {
    let h = parse(&syn4().build()[..]);
    assert_eq!(h.family, AF_INET);
    assert_eq!(h.src4(), v4("192.0.2.1"));
    assert_eq!(h.dst4(), v4("192.0.2.2"));
    assert_eq!(h.kind, Kind::TcpSyn);
    let synack = Packet::new(
        "192.0.2.1",
        "192.0.2.2",
        Transport::Tcp { flags: SYN | ACK },
    );
    assert_eq!(kind(&synack), Kind::Tcp);
    let udp = Packet::new(
        "192.0.2.1",
        "192.0.2.2",
        Transport::Udp {
            sport: 5353,
            dport: 53,
        },
    );
    let h = parse(&udp.build()[..]);
    assert_eq!((h.kind, h.sport, h.dport), (Kind::Udp, 5353, 53));
    let echo = Packet::new("192.0.2.1", "192.0.2.2", Transport::Icmp { ty: 8 });
    assert_eq!(kind(&echo), Kind::EchoRequest);
    let reply = Packet::new("192.0.2.1", "192.0.2.2", Transport::Icmp { ty: 0 });
    assert_eq!(kind(&reply), Kind::Icmp);
}

#[test]
fn ipv4_options_are_skipped() {
    let mut p = syn4();
    p.options = vec![1; 12]; // NOPs: IHL 8
    assert_eq!(kind(&p), Kind::TcpSyn);
    p.options = vec![1; 40]; // the maximum: IHL 15
    assert_eq!(kind(&p), Kind::TcpSyn);
}

#[test]
fn ipv4_bad_ihl_and_truncation_are_malformed() {
    let mut f = syn4().build();
    f[14] = 0x44; // IHL 4 < 5
    assert_eq!(kind_of(&f[..]), Kind::Malformed);
    let mut f = syn4().build();
    f[14] = 0x4f; // IHL 15 but no options present: header runs past the frame
    f.truncate(14 + 40);
    assert_eq!(kind_of(&f[..]), Kind::Malformed);
    // Transport header cut short: TCP flags missing.
    let f = syn4().build();
    assert_eq!(kind_of(&f[..14 + 20 + 10]), Kind::Malformed);
    // Addresses cut short: unreadable, and every shorter prefix too.
    for n in 0..14 + 20 {
        assert_eq!(kind_of(&f[..n]), Kind::Unreadable, "prefix of {n} bytes");
    }
}

#[test]
fn cut_transport_headers_are_malformed() {
    let udp = Transport::Udp {
        sport: 5353,
        dport: 53,
    };
    let acked = Transport::Tcp { flags: SYN | ACK };
    for (p, hlen) in [
        (syn4(), 20),
        (Packet::new("192.0.2.1", "192.0.2.2", acked.clone()), 20),
        (Packet::new("192.0.2.1", "192.0.2.2", udp.clone()), 8),
        (
            Packet::new("192.0.2.1", "192.0.2.2", Transport::Icmp { ty: 0 }),
            8,
        ),
        (syn6(), 20),
        (Packet::new("2001:db8::1", "2001:db8::2", acked), 20),
        (Packet::new("2001:db8::1", "2001:db8::2", udp), 8),
        (
            Packet::new("2001:db8::1", "2001:db8::2", Transport::Icmp { ty: 129 }),
            8,
        ),
    ] {
        let f = p.build();
        assert_ne!(kind_of(&f[..]), Kind::Malformed, "{p:?}");
        for n in f.len() - hlen..f.len() {
            assert_eq!(kind_of(&f[..n]), Kind::Malformed, "{p:?} cut to {n}");
        }
    }
}

#[test]
fn wrong_version_is_unreadable() {
    let mut f = syn4().build();
    f[14] = 0x65;
    assert_eq!(kind_of(&f[..]), Kind::Unreadable);
    let mut f = syn6().build();
    f[14] = 0x45;
    assert_eq!(kind_of(&f[..]), Kind::Unreadable);
}

#[test]
fn fragments() {
    let mut p = syn4();
    p.frag_offset = 0x2000; // MF set, offset 0: first fragment, transport readable
    assert_eq!(kind(&p), Kind::TcpSyn);
    p.frag_offset = 185; // a later fragment
    assert_eq!(kind(&p), Kind::LaterFragment);
    let mut p = syn6();
    p.ext = vec![44];
    assert_eq!(kind(&p), Kind::TcpSyn);
    p.frag_offset = 100;
    assert_eq!(kind(&p), Kind::LaterFragment);
}

#[test]
fn ipv6_extension_headers() {
    let mut p = syn6();
    let h = parse(&p.build()[..]);
    assert_eq!(h.family, AF_INET6);
    assert_eq!(h.src, v6("2001:db8::1"));
    assert_eq!(h.dst, v6("2001:db8::2"));
    assert_eq!(h.kind, Kind::TcpSyn);
    p.ext = vec![0, 51, 60, 43, 44, 60];
    assert_eq!(kind(&p), Kind::TcpSyn);
    p.ext = vec![60; MAX_EXT_HEADERS];
    assert_eq!(kind(&p), Kind::TcpSyn, "as many headers as walked");
    p.ext = vec![60; MAX_EXT_HEADERS + 1];
    assert_eq!(
        kind(&p),
        Kind::Malformed,
        "more headers than walked: fail closed"
    );
    p.ext = vec![0, 60];
    let f = p.build();
    // Cut inside the second extension header.
    assert_eq!(kind_of(&f[..14 + 40 + 9]), Kind::Malformed);
    let echo = Packet::new("2001:db8::1", "2001:db8::2", Transport::Icmp { ty: 128 });
    assert_eq!(kind(&echo), Kind::EchoRequest);
    let esp = Packet::new(
        "2001:db8::1",
        "2001:db8::2",
        Transport::Raw {
            proto: 50,
            bytes: vec![0; 8],
        },
    );
    assert_eq!(kind(&esp), Kind::Other);
}

#[test]
fn vlan_tags() {
    for n in 1..=2 {
        let mut p = syn4();
        p.vlans = n;
        assert_eq!(kind(&p), Kind::TcpSyn, "{n} tags");
        let mut p = syn6();
        p.vlans = n;
        assert_eq!(kind(&p), Kind::TcpSyn, "{n} tags");
    }
    let mut p = syn4();
    p.vlans = 3;
    assert_eq!(kind_of(&p.build()), Kind::Unreadable);
    let mut p = syn4();
    p.vlans = 1;
    assert_eq!(kind_of(&p.build()[..16]), Kind::Unreadable);
}

#[test]
fn non_ip_is_not_ours() {
    let mut f = syn4().build();
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    assert_eq!(kind_of(&f[..]), Kind::NotIp);
}

#[test]
fn no_input_reads_out_of_bounds() {
    // Every prefix of every crafted frame, plus random bytes after the Ethernet header.
    let mut frames = vec![syn4().build(), syn6().build()];
    let mut p = syn6();
    p.ext = vec![0, 43, 44];
    p.vlans = 2;
    frames.push(p.build());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let mut f = vec![0u8; 14 + (seed % 120) as usize];
        for b in &mut f {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        f[12..14].copy_from_slice(if seed & 1 == 0 {
            &[8, 0]
        } else {
            &[0x86, 0xdd]
        });
        frames.push(f);
    }
    for f in &frames {
        for n in 0..=f.len() {
            let _ = parse(&f[..n]);
        }
    }
}

#[test]
fn routing_headers_are_seen() {
    let mut p = syn6();
    assert!(!parse(&p.build()[..]).rthdr);
    p.ext = vec![0, 60];
    assert!(!parse(&p.build()[..]).rthdr, "no routing header");
    for ext in [vec![43], vec![0, 43, 60], vec![60, 44, 43]] {
        p.ext = ext.clone();
        let h = parse(&p.build()[..]);
        assert!(h.rthdr, "{ext:?}");
        assert_eq!(h.kind, Kind::TcpSyn, "{ext:?}");
    }
    // Even when the frame is cut after it, the routing header was seen.
    p.ext = vec![43, 60];
    let f = p.build();
    let h = parse(&f[..14 + 40 + 8 + 4]);
    assert!(h.rthdr && h.kind == Kind::Malformed, "{h:?}");
    assert!(!parse(&syn4().build()[..]).rthdr);
}
