//! Crafted frames for the packet programs' tests: Ethernet (+ VLAN tags) + IPv4 (+ options)
//! or IPv6 (+ extension headers) + TCP, UDP, ICMP or raw bytes.
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
                f.extend_from_slice(&netiso_common::packet::ETH_P_IP.to_be_bytes());
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
                #[expect(
                    clippy::verbose_bit_mask,
                    reason = "the fragment offset field is the low 13 bits"
                )]
                let first_fragment = self.frag_offset & 0x1fff == 0;
                if first_fragment {
                    f.extend_from_slice(&l4);
                } else {
                    f.extend_from_slice(&[0u8; 8]);
                }
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&netiso_common::packet::ETH_P_IPV6.to_be_bytes());
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

/// Lowercase hex of `b` (frames travel to netiso-probe as hex).
pub fn to_hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The bytes of a hex string, None when it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
