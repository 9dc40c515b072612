//! Header parsing for the packet programs (cgroup_skb and TC), shared with host unit tests.
//!
//! The parser only reads through [`Frame::load`], which is bounds-checked by whoever implements
//! it (the kernel's `bpf_skb_load_bytes` in eBPF, a slice check on the host), so no input can
//! make it read out of bounds. It never guesses: a packet whose addresses cannot be read is
//! [`Kind::Unreadable`], and one whose addresses are there but whose other headers are broken
//! or truncated is [`Kind::Malformed`], so the caller can fail closed for a container.
//!
//! Headers are read as `network-types` structs, each with one load (a helper call in eBPF, the
//! bulk of the parser's cost). The results are plain structs with every field always set, not
//! enums with payloads: an enum's unset payload becomes an uninitialized register in BPF, which
//! the verifier rejects.

use network_types::{
    eth::EthHdr,
    icmp::{Icmpv4Hdr, Icmpv6Hdr},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::{
    policy::{AF_INET, AF_INET6},
    Ip4, Ip6,
};

pub const ETH_HLEN: usize = EthHdr::LEN;
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
const ICMP_ECHO: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// Plain types a frame can be read as: every bit pattern is a valid value.
pub trait Plain: Copy + sealed::Sealed {}
mod sealed {
    pub trait Sealed {}
}
macro_rules! plain {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Plain for $t {}
    )*};
}
plain!(u8, u16, [u8; 2], [u8; 4], EthHdr, VlanHdr, Ipv4Hdr, Ipv6Hdr, TcpHdr, UdpHdr);
plain!(Icmpv4Hdr, Icmpv6Hdr);

/// A packet read only through a bounds-checked load.
pub trait Frame {
    /// The bytes at `offset` in memory order, or None when they are not all inside the frame.
    fn load<T: Plain>(&self, offset: usize) -> Option<T>;
}

impl Frame for [u8] {
    #[inline(always)]
    fn load<T: Plain>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` holds exactly size_of::<T>() bytes and T is `Plain`: any bit pattern
        // is a valid T; read_unaligned needs no alignment.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
}

/// What a packet is, as far as the policy between containers needs to tell a packet that
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

/// A parsed packet. Addresses are valid for every kind but `NotIp` and `Unreadable`; IPv4
/// addresses are held as by [`Ip6::holding_v4`]. Fields that do not apply are 0.
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
    /// An IPv6 routing header was among the extension headers walked: the packet asks to
    /// be routed through addresses no socket hook saw.
    pub rthdr: bool,
}

impl Headers {
    const fn none(kind: Kind) -> Headers {
        Headers {
            kind,
            family: 0,
            src: Ip6::UNSPECIFIED,
            dst: Ip6::UNSPECIFIED,
            proto: 0,
            sport: 0,
            dport: 0,
            rthdr: false,
        }
    }
    /// Whether `src`, `dst` and `family` are valid.
    pub fn is_ip(&self) -> bool {
        !matches!(self.kind, Kind::NotIp | Kind::Unreadable)
    }
    pub fn src4(&self) -> Ip4 {
        self.src.held_v4()
    }
    pub fn dst4(&self) -> Ip4 {
        self.dst.held_v4()
    }
}

/// The transport part of [`Headers`].
#[derive(Clone, Copy)]
struct L4 {
    kind: Kind,
    proto: u32,
    sport: u16,
    dport: u16,
    rthdr: bool,
}

impl L4 {
    const fn just(kind: Kind) -> L4 {
        L4 {
            kind,
            proto: 0,
            sport: 0,
            dport: 0,
            rthdr: false,
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
        rthdr: l4.rthdr,
    }
}

/// Parses an Ethernet frame (what TC programs see): up to [`MAX_VLAN_TAGS`] in-line
/// 802.1Q/802.1ad tags, then the IP packet as [`parse_ip`] does.
#[inline(always)]
pub fn parse(f: &(impl Frame + ?Sized)) -> Headers {
    let Some(eth) = f.load::<EthHdr>(0) else {
        return Headers::none(Kind::Unreadable);
    };
    let mut proto = u16::from_be(eth.ether_type);
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        // A tag is the TCI, then the ethertype of what it encapsulates.
        let Some(tag) = f.load::<VlanHdr>(l3) else {
            return Headers::none(Kind::Unreadable);
        };
        proto = u16::from_be(tag.ether_type);
        l3 += size_of::<VlanHdr>();
    }
    match proto {
        ETH_P_IP => parse4(f, l3),
        ETH_P_IPV6 => parse6(f, l3),
        // A third tag, or anything else, is not ours to parse.
        ETH_P_8021Q | ETH_P_8021AD => Headers::none(Kind::Unreadable),
        _ => Headers::none(Kind::NotIp),
    }
}

/// Parses an IP packet starting at `l3` (what cgroup_skb programs see at offset 0): IPv4
/// (options skipped by IHL, fragments recognised) or IPv6 (extension headers walked), by the
/// version nibble.
#[inline(always)]
pub fn parse_ip(f: &(impl Frame + ?Sized), l3: usize) -> Headers {
    match f.load::<u8>(l3).map(|b| b >> 4) {
        Some(4) => parse4(f, l3),
        Some(6) => parse6(f, l3),
        _ => Headers::none(Kind::Unreadable),
    }
}

#[inline(always)]
fn parse4(f: &(impl Frame + ?Sized), l3: usize) -> Headers {
    let Some(h) = f.load::<Ipv4Hdr>(l3) else {
        return Headers::none(Kind::Unreadable);
    };
    if h.vihl >> 4 != 4 {
        return Headers::none(Kind::Unreadable);
    }
    let hl = usize::from(h.vihl & 0x0f) * 4;
    let l4 = if hl < Ipv4Hdr::LEN || (hl > Ipv4Hdr::LEN && f.load::<u8>(l3 + hl - 1).is_none()) {
        // The whole header, options included, must be inside the frame.
        L4::just(Kind::Malformed)
    } else if u16::from_be_bytes(h.frags) & 0x1fff != 0 {
        L4::just(Kind::LaterFragment)
    } else {
        transport(f, h.proto, l3 + hl, IPPROTO_ICMP, ICMP_ECHO)
    };
    let src = Ip6::holding_v4(Ip4(u32::from_ne_bytes(h.src_addr)));
    let dst = Ip6::holding_v4(Ip4(u32::from_ne_bytes(h.dst_addr)));
    ip(AF_INET, src, dst, l4)
}

#[inline(always)]
fn words(b: [u8; 16]) -> Ip6 {
    Ip6(core::array::from_fn(|i| {
        u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
    }))
}

#[inline(always)]
fn parse6(f: &(impl Frame + ?Sized), l3: usize) -> Headers {
    let Some(h) = f.load::<Ipv6Hdr>(l3) else {
        return Headers::none(Kind::Unreadable);
    };
    if h.vcf[0] >> 4 != 6 {
        return Headers::none(Kind::Unreadable);
    }
    let l4 = l4_of6(f, h.next_hdr, l3 + Ipv6Hdr::LEN);
    ip(AF_INET6, words(h.src_addr), words(h.dst_addr), l4)
}

#[inline(always)]
fn l4_of6(f: &(impl Frame + ?Sized), mut next: u8, mut off: usize) -> L4 {
    let mut rthdr = false;
    // One round per extension header, and one more for the transport after the last.
    for _ in 0..=MAX_EXT_HEADERS {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                rthdr |= next == IPPROTO_ROUTING;
                // Next header, length: in 8-byte units not counting the first (AH: 4-byte
                // units not counting the first two).
                let Some(e) = f.load::<[u8; 2]>(off) else {
                    return L4 {
                        rthdr,
                        ..L4::just(Kind::Malformed)
                    };
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
                    return L4 {
                        rthdr,
                        ..L4::just(Kind::Malformed)
                    };
                };
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    return L4 {
                        rthdr,
                        ..L4::just(Kind::LaterFragment)
                    };
                }
                next = e[0];
                8
            }
            proto => {
                return L4 {
                    rthdr,
                    ..transport(f, proto, off, IPPROTO_ICMPV6, ICMPV6_ECHO_REQUEST)
                }
            }
        };
        off += len;
    }
    L4 {
        rthdr,
        ..L4::just(Kind::Malformed)
    }
}

/// Reads the transport header at `off` as far as the flow check needs. TCP, UDP and ICMP
/// headers must be there whole (20, 8 and 8 bytes, what the kernel itself requires before it
/// looks at a segment), not just the bytes read: a cut one is malformed, not attributed.
#[inline(always)]
fn transport(f: &(impl Frame + ?Sized), proto: u8, off: usize, icmp: u8, echo: u8) -> L4 {
    let kind = match proto {
        IPPROTO_TCP => match f.load::<TcpHdr>(off) {
            Some(t) if t.syn() != 0 && t.ack() == 0 => Kind::TcpSyn,
            Some(_) => Kind::Tcp,
            None => Kind::Malformed,
        },
        IPPROTO_UDP => match f.load::<UdpHdr>(off) {
            Some(u) => {
                return L4 {
                    kind: Kind::Udp,
                    proto: u32::from(proto),
                    sport: u16::from_be_bytes(u.src),
                    dport: u16::from_be_bytes(u.dst),
                    rthdr: false,
                }
            }
            None => Kind::Malformed,
        },
        // Both ICMP headers are 8 bytes with the type first.
        p if p == icmp => match f.load::<Icmpv4Hdr>(off) {
            Some(i) if i.type_ == echo => Kind::EchoRequest,
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
        rthdr: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn header_structs_have_wire_sizes() {
        assert_eq!(size_of::<EthHdr>(), 14);
        assert_eq!(size_of::<VlanHdr>(), 4);
        assert_eq!(size_of::<Ipv4Hdr>(), 20);
        assert_eq!(size_of::<Ipv6Hdr>(), 40);
        assert_eq!(size_of::<TcpHdr>(), 20);
        assert_eq!(size_of::<UdpHdr>(), 8);
        assert_eq!(size_of::<Icmpv4Hdr>(), 8);
        assert_eq!(size_of::<Icmpv6Hdr>(), 8);
    }

    #[test]
    fn raw_ip_and_ethernet_entries_agree() {
        // An IPv4 TCP SYN without and with its Ethernet header.
        let mut ipv4 = [0u8; 40];
        ipv4[0] = 0x45;
        ipv4[9] = IPPROTO_TCP;
        ipv4[12..16].copy_from_slice(&[192, 0, 2, 1]);
        ipv4[16..20].copy_from_slice(&[192, 0, 2, 2]);
        ipv4[20 + 12] = 5 << 4;
        ipv4[20 + 13] = 0x02;
        let mut frame = [0u8; 54];
        frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        frame[14..].copy_from_slice(&ipv4);
        let a = parse_ip(&ipv4[..], 0);
        assert_eq!(a, parse(&frame[..]));
        assert_eq!(a.kind, Kind::TcpSyn);
        assert_eq!(a.src4(), Ip4::new(192, 0, 2, 1));
        assert_eq!(parse_ip(&ipv4[..19], 0).kind, Kind::Unreadable);
        assert_eq!(parse_ip(&[0x15u8; 40][..], 0).kind, Kind::Unreadable);
    }
}
