//! Header parsing for the per-interface TC programs, shared with host unit tests.
//!
//! The parser only reads through [`Frame::load`], which is bounds-checked by whoever implements
//! it (the kernel's `bpf_skb_load_bytes` in eBPF, a slice check on the host), so no input can
//! make it read out of bounds. It never guesses: a frame whose addresses cannot be read is
//! [`Kind::Unreadable`], and one whose addresses are there but whose other headers are broken
//! or truncated is [`Kind::Malformed`], so the caller can fail closed for a container.
//!
//! The results are plain structs with every field always set, not enums with payloads: an
//! enum's unset payload becomes an uninitialized register in BPF, which the verifier rejects.

use crate::{policy::AF_INET, policy::AF_INET6, Ip4, Ip6};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags read in-line (QinQ); a hardware-accelerated outer tag is not in the frame at all.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up (and failing closed).
pub const MAX_EXT_HEADERS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// Plain types a frame can be read as (any bit pattern is valid).
pub trait Plain: Copy + sealed::Sealed {}
impl Plain for u8 {}
impl Plain for u16 {}
impl<const N: usize> Plain for [u8; N] {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl<const N: usize> Sealed for [u8; N] {}
}

/// A frame starting at its Ethernet header, read only through a bounds-checked load.
pub trait Frame {
    /// The bytes at `offset` in memory order, or None when they are not all inside the frame.
    fn load<T: Plain>(&self, offset: usize) -> Option<T>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn load<T: Plain>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` holds exactly size_of::<T>() bytes and T is a plain integer type.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const T) })
    }
}

#[inline(always)]
fn be16(f: &(impl Frame + ?Sized), offset: usize) -> Option<u16> {
    f.load::<u16>(offset).map(u16::from_be)
}

// Each header is read with one load (a helper call in eBPF, the bulk of the parser's cost)
// and picked apart on the stack.

#[inline(always)]
fn be16_at<const N: usize>(b: &[u8; N], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

#[inline(always)]
fn ip4_at<const N: usize>(b: &[u8; N], i: usize) -> Ip4 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

#[inline(always)]
fn ip6_at<const N: usize>(b: &[u8; N], i: usize) -> Ip6 {
    [
        ip4_at(b, i),
        ip4_at(b, i + 4),
        ip4_at(b, i + 8),
        ip4_at(b, i + 12),
    ]
}

/// What a frame is, as far as the policy between containers needs to tell a packet that
/// opens a flow from one that belongs to a flow already admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// Not IPv4 or IPv6 (ARP, LLDP ...).
    NotIp,
    /// Claims to be IP (or is too short to say) but its addresses cannot be read.
    Unreadable,
    /// The addresses are valid but the rest is not: bad header length, truncated transport
    /// header, too many extension headers.
    Malformed,
    /// TCP with SYN and without ACK: opens a connection.
    TcpSyn,
    /// Any other TCP segment.
    Tcp,
    /// UDP; `sport`/`dport` are set.
    Udp,
    /// ICMP or ICMPv6 echo request.
    EchoRequest,
    /// Other ICMP / ICMPv6 (replies, errors).
    Icmp,
    /// A fragment other than the first: its transport header is in the first fragment.
    LaterFragment,
    /// Any other protocol (raw, SCTP, ESP ...); `proto` is set.
    Other,
}

/// A parsed frame. Addresses are valid for every kind but `NotIp` and `Unreadable`; IPv4
/// addresses sit in `src[0]`/`dst[0]`. Fields that do not apply are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    pub kind: Kind,
    pub family: u32,
    pub src: Ip6,
    pub dst: Ip6,
    pub proto: u32,
    /// Host-order UDP ports.
    pub sport: u16,
    pub dport: u16,
}

impl Headers {
    const fn none(kind: Kind) -> Headers {
        Headers {
            kind,
            family: 0,
            src: [0; 4],
            dst: [0; 4],
            proto: 0,
            sport: 0,
            dport: 0,
        }
    }
    /// Whether `src`, `dst` and `family` are valid.
    pub fn is_ip(&self) -> bool {
        !matches!(self.kind, Kind::NotIp | Kind::Unreadable)
    }
    pub fn src4(&self) -> Ip4 {
        self.src[0]
    }
    pub fn dst4(&self) -> Ip4 {
        self.dst[0]
    }
}

/// The transport part of [`Headers`].
#[derive(Clone, Copy)]
struct L4 {
    kind: Kind,
    proto: u32,
    sport: u16,
    dport: u16,
}

impl L4 {
    const fn just(kind: Kind) -> L4 {
        L4 {
            kind,
            proto: 0,
            sport: 0,
            dport: 0,
        }
    }
}

#[inline(always)]
fn ip(family: u32, src: Ip6, dst: Ip6, l4: L4) -> Headers {
    Headers {
        kind: l4.kind,
        family,
        src,
        dst,
        proto: l4.proto,
        sport: l4.sport,
        dport: l4.dport,
    }
}

/// Parses an Ethernet frame: up to [`MAX_VLAN_TAGS`] in-line 802.1Q/802.1ad tags, then IPv4
/// (options skipped by IHL, fragments recognised) or IPv6 (extension headers walked).
#[inline(always)]
pub fn parse(f: &(impl Frame + ?Sized)) -> Headers {
    let Some(mut proto) = be16(f, 12) else {
        return Headers::none(Kind::Unreadable);
    };
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        // Tag: 2 bytes TCI, then the encapsulated ethertype.
        let Some(inner) = be16(f, l3 + 2) else {
            return Headers::none(Kind::Unreadable);
        };
        proto = inner;
        l3 += 4;
    }
    match proto {
        ETH_P_IP => parse4(f, l3),
        ETH_P_IPV6 => parse6(f, l3),
        // A third tag, or anything else, is not ours to parse.
        ETH_P_8021Q | ETH_P_8021AD => Headers::none(Kind::Unreadable),
        _ => Headers::none(Kind::NotIp),
    }
}

#[inline(always)]
fn parse4(f: &(impl Frame + ?Sized), l3: usize) -> Headers {
    let Some(h) = f.load::<[u8; 20]>(l3) else {
        return Headers::none(Kind::Unreadable);
    };
    if h[0] >> 4 != 4 {
        return Headers::none(Kind::Unreadable);
    }
    let hl = usize::from(h[0] & 0x0f) * 4;
    let l4 = if hl < 20 || (hl > 20 && f.load::<u8>(l3 + hl - 1).is_none()) {
        // The whole header, options included, must be inside the frame.
        L4::just(Kind::Malformed)
    } else if be16_at(&h, 6) & 0x1fff != 0 {
        L4::just(Kind::LaterFragment)
    } else {
        transport(f, h[9], l3 + hl, IPPROTO_ICMP, 8)
    };
    ip(
        AF_INET,
        [ip4_at(&h, 12), 0, 0, 0],
        [ip4_at(&h, 16), 0, 0, 0],
        l4,
    )
}

#[inline(always)]
fn parse6(f: &(impl Frame + ?Sized), l3: usize) -> Headers {
    let Some(h) = f.load::<[u8; 40]>(l3) else {
        return Headers::none(Kind::Unreadable);
    };
    if h[0] >> 4 != 6 {
        return Headers::none(Kind::Unreadable);
    }
    ip(
        AF_INET6,
        ip6_at(&h, 8),
        ip6_at(&h, 24),
        l4_of6(f, h[6], l3 + 40),
    )
}

#[inline(always)]
fn l4_of6(f: &(impl Frame + ?Sized), mut next: u8, mut off: usize) -> L4 {
    // One round per extension header, and one more for the transport after the last.
    for _ in 0..=MAX_EXT_HEADERS {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                // Next header, length: in 8-byte units not counting the first (AH: 4-byte
                // units not counting the first two).
                let Some(e) = f.load::<[u8; 2]>(off) else {
                    return L4::just(Kind::Malformed);
                };
                let len = if next == IPPROTO_AH {
                    (usize::from(e[1]) + 2) * 4
                } else {
                    (usize::from(e[1]) + 1) * 8
                };
                next = e[0];
                len
            }
            IPPROTO_FRAGMENT => {
                let Some(e) = f.load::<[u8; 4]>(off) else {
                    return L4::just(Kind::Malformed);
                };
                if be16_at(&e, 2) & 0xfff8 != 0 {
                    return L4::just(Kind::LaterFragment);
                }
                next = e[0];
                8
            }
            proto => return transport(f, proto, off, IPPROTO_ICMPV6, 128),
        };
        off += len;
    }
    L4::just(Kind::Malformed)
}

/// Reads the transport header at `off` as far as the flow check needs. TCP, UDP and ICMP
/// headers must be there whole (20, 8 and 8 bytes, what the kernel itself requires before it
/// looks at a segment), not just the bytes read: a cut one is malformed, not attributed.
#[inline(always)]
fn transport(f: &(impl Frame + ?Sized), proto: u8, off: usize, icmp: u8, echo: u8) -> L4 {
    let kind = match proto {
        IPPROTO_TCP => match f.load::<[u8; 20]>(off) {
            Some(t) if t[13] & 0x12 == 0x02 => Kind::TcpSyn,
            Some(_) => Kind::Tcp,
            None => Kind::Malformed,
        },
        IPPROTO_UDP => match f.load::<[u8; 8]>(off) {
            Some(u) => {
                return L4 {
                    kind: Kind::Udp,
                    proto: u32::from(proto),
                    sport: be16_at(&u, 0),
                    dport: be16_at(&u, 2),
                }
            }
            None => Kind::Malformed,
        },
        p if p == icmp => match f.load::<[u8; 8]>(off) {
            Some(i) if i[0] == echo => Kind::EchoRequest,
            Some(_) => Kind::Icmp,
            None => Kind::Malformed,
        },
        _ => Kind::Other,
    };
    L4 {
        kind,
        proto: u32::from(proto),
        sport: 0,
        dport: 0,
    }
}

/// Crafted frames for tests (host only).
#[cfg(any(feature = "std", test))]
pub mod craft {
    use std::net::IpAddr;

    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMP: u8 = 1;
    pub const ICMPV6: u8 = 58;
    pub const SYN: u8 = 0x02;
    pub const ACK: u8 = 0x10;

    /// A transport header: TCP with flags, UDP with ports, ICMP with a type, or raw bytes.
    #[derive(Clone, Debug)]
    pub enum Transport {
        Tcp { flags: u8 },
        Udp { sport: u16, dport: u16 },
        Icmp { ty: u8 },
        Raw { proto: u8, bytes: Vec<u8> },
    }

    impl Transport {
        fn proto(&self, v6: bool) -> u8 {
            match self {
                Transport::Tcp { .. } => TCP,
                Transport::Udp { .. } => UDP,
                Transport::Icmp { .. } if v6 => ICMPV6,
                Transport::Icmp { .. } => ICMP,
                Transport::Raw { proto, .. } => *proto,
            }
        }
        fn bytes(&self) -> Vec<u8> {
            match self {
                Transport::Tcp { flags } => {
                    let mut h = vec![0u8; 20];
                    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
                    h[2..4].copy_from_slice(&80u16.to_be_bytes());
                    h[12] = 5 << 4;
                    h[13] = *flags;
                    h
                }
                Transport::Udp { sport, dport } => {
                    let mut h = vec![0u8; 8];
                    h[0..2].copy_from_slice(&sport.to_be_bytes());
                    h[2..4].copy_from_slice(&dport.to_be_bytes());
                    h[4..6].copy_from_slice(&8u16.to_be_bytes());
                    h
                }
                Transport::Icmp { ty } => vec![*ty, 0, 0, 0, 0, 0, 0, 0],
                Transport::Raw { bytes, .. } => bytes.clone(),
            }
        }
    }

    /// A frame to build: Ethernet (+ VLAN tags) + IP (+ options / extension headers).
    #[derive(Clone, Debug)]
    pub struct Packet {
        pub src: IpAddr,
        pub dst: IpAddr,
        pub transport: Transport,
        pub vlans: usize,
        /// IPv4 options bytes (a multiple of 4).
        pub options: Vec<u8>,
        /// IPv6 extension headers to insert, by protocol number (0, 43, 44, 51 or 60).
        pub ext: Vec<u8>,
        /// IPv4 fragment offset in 8-byte units (and IPv6 fragment header offset when 44 is in `ext`).
        pub frag_offset: u16,
    }

    impl Packet {
        pub fn new(src: &str, dst: &str, transport: Transport) -> Packet {
            Packet {
                src: src.parse().expect("src address"),
                dst: dst.parse().expect("dst address"),
                transport,
                vlans: 0,
                options: Vec::new(),
                ext: Vec::new(),
                frag_offset: 0,
            }
        }

        pub fn build(&self) -> Vec<u8> {
            let v6 = self.src.is_ipv6();
            let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
            for i in 0..self.vlans {
                let tpid: u16 = if i == 0 && self.vlans > 1 {
                    0x88a8
                } else {
                    0x8100
                };
                f.extend_from_slice(&tpid.to_be_bytes());
                f.extend_from_slice(&(100 + i as u16).to_be_bytes());
            }
            let l4 = self.transport.bytes();
            let proto = self.transport.proto(v6);
            match (self.src, self.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    f.extend_from_slice(&super::ETH_P_IP.to_be_bytes());
                    let hl = 20 + self.options.len();
                    let total = (hl + l4.len()) as u16;
                    let mut h = vec![0u8; 20];
                    h[0] = 0x40 | (hl / 4) as u8;
                    h[2..4].copy_from_slice(&total.to_be_bytes());
                    h[6..8].copy_from_slice(&self.frag_offset.to_be_bytes());
                    h[8] = 64;
                    h[9] = proto;
                    h[12..16].copy_from_slice(&s.octets());
                    h[16..20].copy_from_slice(&d.octets());
                    let sum = checksum(&[&h[..], &self.options[..]].concat());
                    h[10..12].copy_from_slice(&sum.to_be_bytes());
                    f.extend_from_slice(&h);
                    f.extend_from_slice(&self.options);
                    if self.frag_offset & 0x1fff == 0 {
                        f.extend_from_slice(&l4);
                    } else {
                        f.extend_from_slice(&[0u8; 8]);
                    }
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    f.extend_from_slice(&super::ETH_P_IPV6.to_be_bytes());
                    let mut exts = Vec::new();
                    for (i, kind) in self.ext.iter().enumerate() {
                        let next = self.ext.get(i + 1).copied().unwrap_or(proto);
                        // AH's length counts 4-byte units minus 2, the others 8-byte units
                        // minus 1: 16 bytes of AH, 8 of the rest.
                        let mut e = vec![0u8; if *kind == 51 { 16 } else { 8 }];
                        e[0] = next;
                        if *kind == 51 {
                            e[1] = 2;
                        }
                        if *kind == 44 {
                            e[2..4].copy_from_slice(&(self.frag_offset << 3).to_be_bytes());
                        }
                        exts.extend_from_slice(&e);
                    }
                    let first = self.ext.first().copied().unwrap_or(proto);
                    let payload = (exts.len() + l4.len()) as u16;
                    let mut h = vec![0u8; 40];
                    h[0] = 0x60;
                    h[4..6].copy_from_slice(&payload.to_be_bytes());
                    h[6] = first;
                    h[7] = 64;
                    h[8..24].copy_from_slice(&s.octets());
                    h[24..40].copy_from_slice(&d.octets());
                    f.extend_from_slice(&h);
                    f.extend_from_slice(&exts);
                    f.extend_from_slice(&l4);
                }
                _ => panic!("mixed address families"),
            }
            f
        }
    }

    /// The Internet checksum (RFC 1071) of `b`.
    pub fn checksum(b: &[u8]) -> u16 {
        let mut sum: u32 = b
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::craft::{Packet, Transport, ACK, SYN};
    use super::*;

    fn v4(s: &str) -> Ip4 {
        crate::host::ip4_raw(s.parse().unwrap())
    }
    fn v6(s: &str) -> Ip6 {
        crate::host::ip6_raw(s.parse().unwrap())
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
            for b in f.iter_mut() {
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
}
