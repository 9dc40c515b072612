//! Addresses and ids in the form both sides of the maps use.
//!
//! Addresses are kept the way the kernel hands them to sock_addr programs: an IPv4 address is
//! a `u32` whose in-memory bytes are the octets in network order, an IPv6 address four such
//! words. The newtypes keep them from being mixed up with host-order integers or ids.
use core::net::{Ipv4Addr, Ipv6Addr};

/// A container's id, assigned by the agent (>= 1). The value of the owned-address maps and
/// the key of the per-container maps.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerId(pub u32);

/// A raw IPv4 address: the in-memory bytes are the octets in network order.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ip4(pub u32);

/// A raw IPv6 address: four words whose in-memory bytes are the octets in network order.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ip6(pub [u32; 4]);

impl Ip4 {
    pub const UNSPECIFIED: Ip4 = Ip4(0);
    pub const LOCALHOST: Ip4 = Ip4::new(127, 0, 0, 1);

    pub const fn new(a: u8, b: u8, c: u8, d: u8) -> Ip4 {
        Ip4(u32::from_ne_bytes([a, b, c, d]))
    }
    pub const fn octets(self) -> [u8; 4] {
        self.0.to_ne_bytes()
    }
    pub const fn is_unspecified(self) -> bool {
        self.0 == 0
    }
    /// In 127.0.0.0/8.
    pub const fn is_loopback(self) -> bool {
        self.octets()[0] == 127
    }
    /// In 224.0.0.0/4 (multicast) or 255.255.255.255 (limited broadcast).
    pub const fn is_multicast_or_broadcast(self) -> bool {
        self.octets()[0] >= 224
    }
}

const MAPPED_PREFIX: u32 = Ip4::new(0, 0, 0xff, 0xff).0;

impl Ip6 {
    pub const UNSPECIFIED: Ip6 = Ip6([0; 4]);
    pub const LOCALHOST: Ip6 = Ip6([0, 0, 0, Ip4::new(0, 0, 0, 1).0]);

    pub const fn is_unspecified(&self) -> bool {
        self.0[0] == 0 && self.0[1] == 0 && self.0[2] == 0 && self.0[3] == 0
    }
    pub const fn is_loopback(&self) -> bool {
        self.0[0] == 0 && self.0[1] == 0 && self.0[2] == 0 && self.0[3] == Ip6::LOCALHOST.0[3]
    }
    /// An IPv4-mapped address (`::ffff:a.b.c.d`).
    pub const fn is_mapped(&self) -> bool {
        self.0[0] == 0 && self.0[1] == 0 && self.0[2] == MAPPED_PREFIX
    }
    /// `::ffff:a.b.c.d`
    pub const fn mapped(a: Ip4) -> Ip6 {
        Ip6([0, 0, MAPPED_PREFIX, a.0])
    }
    /// The IPv4 address of a mapped address (meaningful only when `is_mapped`).
    pub const fn mapped_v4(&self) -> Ip4 {
        Ip4(self.0[3])
    }
    /// In ff00::/8.
    pub const fn is_multicast(&self) -> bool {
        self.0[0].to_ne_bytes()[0] == 0xff
    }
    /// Where an IPv4 address travels in a field that holds either family (events, parsed
    /// headers): in the first word, the rest zero.
    pub const fn holding_v4(a: Ip4) -> Ip6 {
        Ip6([a.0, 0, 0, 0])
    }
    /// The IPv4 address of a field filled by [`Ip6::holding_v4`].
    pub const fn held_v4(&self) -> Ip4 {
        Ip4(self.0[0])
    }
}

impl From<Ipv4Addr> for Ip4 {
    fn from(a: Ipv4Addr) -> Ip4 {
        Ip4(u32::from_ne_bytes(a.octets()))
    }
}

impl From<Ip4> for Ipv4Addr {
    fn from(a: Ip4) -> Ipv4Addr {
        Ipv4Addr::from(a.octets())
    }
}

impl From<Ipv6Addr> for Ip6 {
    fn from(a: Ipv6Addr) -> Ip6 {
        let o = a.octets();
        Ip6(core::array::from_fn(|i| {
            u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])
        }))
    }
}

impl From<Ip6> for Ipv6Addr {
    fn from(a: Ip6) -> Ipv6Addr {
        let mut o = [0u8; 16];
        for (i, w) in a.0.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        Ipv6Addr::from(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip_in_network_order() {
        let a: Ipv4Addr = "192.0.2.10".parse().unwrap();
        assert_eq!(Ip4::from(a).octets(), [192, 0, 2, 10]);
        assert_eq!(Ipv4Addr::from(Ip4::from(a)), a);
        let b: Ipv6Addr = "2001:db8::10".parse().unwrap();
        assert_eq!(Ipv6Addr::from(Ip6::from(b)), b);
        assert_eq!(
            Ip6::from("::1".parse::<Ipv6Addr>().unwrap()),
            Ip6::LOCALHOST
        );
    }

    #[test]
    fn classification() {
        let v4 = |s: &str| Ip4::from(s.parse::<Ipv4Addr>().unwrap());
        let v6 = |s: &str| Ip6::from(s.parse::<Ipv6Addr>().unwrap());
        assert!(v4("127.128.0.1").is_loopback());
        assert!(!v4("128.0.0.1").is_loopback());
        assert!(v4("224.0.0.1").is_multicast_or_broadcast());
        assert!(v4("255.255.255.255").is_multicast_or_broadcast());
        assert!(!v4("223.255.255.255").is_multicast_or_broadcast());
        assert!(v6("::ffff:192.0.2.1").is_mapped());
        assert_eq!(v6("::ffff:192.0.2.1").mapped_v4(), v4("192.0.2.1"));
        assert_eq!(Ip6::mapped(v4("192.0.2.1")), v6("::ffff:192.0.2.1"));
        assert!(v6("ff02::1").is_multicast());
        assert!(!v6("2001:db8::1").is_multicast());
        assert!(v6("::1").is_loopback());
    }
}
