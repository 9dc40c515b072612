//! The binary interface between the eBPF programs and the agent: map keys and values, config
//! slots, counter indices, event records and map names.
//!
//! Every type is `#[repr(C)]` with no implicit padding (where the layout would have a hole, an
//! explicit `_pad` field fills it), so both sides agree byte for byte. The tests at the bottom
//! pin sizes and field offsets; a change that moves a field fails them, and the agent refuses
//! pins of another layout.
use crate::addr::{ContainerId, Ip4, Ip6};

/// Container flag: audit mode (allow, but count what enforce mode would refuse).
pub const FLAG_AUDIT: u32 = 1 << 0;
/// Container flag: raw, SCTP and other ungoverned sockets may be created (weakens isolation).
pub const FLAG_ALLOW_RAW: u32 = 1 << 1;
/// Container flag: `v4` and `lo4` hold an owned primary IPv4 address.
pub const FLAG_HAS_V4: u32 = 1 << 2;
/// Container flag: `v6` holds an owned primary IPv6 address.
pub const FLAG_HAS_V6: u32 = 1 << 3;
/// Container flag: reachable only from containers a policy rule allows.
pub const FLAG_ISOLATED: u32 = 1 << 4;
/// Container flag: an explicit `deny` rule names it as destination. With `FLAG_ISOLATED`,
/// what makes its packet programs judge who opens a flow to it; without either, arriving
/// packets need no policy lookup.
pub const FLAG_DENY_RULES: u32 = 1 << 5;

/// A registered container as the programs see it: the value of `CONTAINERS` (keyed by the
/// cgroup id, u64) and of `IDS` (keyed by the container id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Container {
    pub id: ContainerId,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Primary IPv4 address (valid when `FLAG_HAS_V4`).
    pub v4: Ip4,
    /// The container's private loopback address in 127.128.0.0/9; 127.0.0.1 maps to it.
    pub lo4: Ip4,
    /// Primary IPv6 address (valid when `FLAG_HAS_V6`).
    pub v6: Ip6,
}

impl Container {
    pub const fn audit(&self) -> bool {
        self.flags & FLAG_AUDIT != 0
    }
    pub const fn allow_raw(&self) -> bool {
        self.flags & FLAG_ALLOW_RAW != 0
    }
    pub const fn has_v4(&self) -> bool {
        self.flags & FLAG_HAS_V4 != 0
    }
    pub const fn has_v6(&self) -> bool {
        self.flags & FLAG_HAS_V6 != 0
    }
    pub const fn isolated(&self) -> bool {
        self.flags & FLAG_ISOLATED != 0
    }
    /// Whether some container may be refused when it opens a flow to this one.
    pub const fn judges_arrivals(&self) -> bool {
        self.flags & (FLAG_ISOLATED | FLAG_DENY_RULES) != 0
    }
}

/// The per-CPU packet counters of one direction of a container's cgroup_skb program, kept in
/// that attachment's cgroup storage (`CG_COUNTERS`): no map lookup on the packet path. The
/// agent adds them to the container's other counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PacketCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Not owned local address (or unreadable addresses).
    pub dropped: u64,
    /// Ingress: opened by a container the policy does not let in.
    pub policy_dropped: u64,
    /// Egress: carries an IPv6 routing header.
    pub header_dropped: u64,
    pub audited: u64,
}

/// Key of the `POLICY` map: may container `from` reach container `to`? Value 1 allow, 0 deny.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyKey {
    pub from: ContainerId,
    pub to: ContainerId,
}

/// One refused (or audited) operation or dropped packet, sent to the agent through the
/// `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Event {
    /// bpf_ktime_get_ns() when it happened.
    pub ts_ns: u64,
    pub container: ContainerId,
    /// What happened: the counter index it was counted under (e.g. `counter::BIND_REFUSED`).
    pub kind: u32,
    /// The errno the process got; 0 for a dropped packet.
    pub errno: u32,
    /// `EVENT_AUDITED` when audit mode let it through.
    pub flags: u32,
    /// AF_INET or AF_INET6 when `addr`/`port` describe the address involved, else 0.
    pub family: u32,
    /// Host-order port (0 when none).
    pub port: u32,
    /// The address involved (IPv4 held as by [`Ip6::holding_v4`]).
    pub addr: Ip6,
}

pub const EVENT_AUDITED: u32 = 1;
/// Size of the `EVENTS` ring buffer.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Indices into the `CONFIG` array map.
pub mod config {
    /// Non-zero: netiso is disabled globally, every hook passes through.
    pub const DISABLED: u32 = 0;
    /// Shallowest cgroup level (0 = cgroup root) at which a container is registered.
    pub const MIN_LEVEL: u32 = 1;
    /// Deepest cgroup level at which a container is registered; 0 when none is registered.
    pub const MAX_LEVEL: u32 = 2;
    /// Written by the agent only, never read by the programs: which state store the maps
    /// follow, so an agent can tell pins made with its store from pins whose store was lost.
    pub const STORE_ID: u32 = 3;
    pub const LEN: u32 = 4;
}

/// Upper bound on cgroup nesting the hooks walk when looking for a registered ancestor.
pub const MAX_CGROUP_LEVELS: u32 = 32;
/// Capacity of the container and address maps.
pub const MAX_CONTAINERS: u32 = 65_536;
pub const MAX_ADDRESSES: u32 = 65_536;

/// Per-container counters (one per-CPU copy each; user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub v: [u64; counter::LEN],
}

/// Indices into [`Counters::v`].
pub mod counter {
    pub const BIND_ALLOWED: usize = 0;
    pub const BIND_REWRITTEN: usize = 1;
    pub const BIND_REFUSED: usize = 2;
    pub const CONNECT_ALLOWED: usize = 3;
    pub const CONNECT_REWRITTEN: usize = 4;
    pub const CONNECT_REFUSED: usize = 5;
    pub const SENDMSG_ALLOWED: usize = 6;
    pub const SENDMSG_REWRITTEN: usize = 7;
    pub const SENDMSG_REFUSED: usize = 8;
    pub const SOCKET_REFUSED: usize = 9;
    pub const SOCKOPT_REFUSED: usize = 10;
    /// Operations enforce mode would have refused, allowed because the container is in audit mode.
    pub const AUDITED: usize = 11;
    /// Packets and bytes delivered to / sent by container sockets (packet layer).
    pub const RX_PACKETS: usize = 12;
    pub const RX_BYTES: usize = 13;
    pub const TX_PACKETS: usize = 14;
    pub const TX_BYTES: usize = 15;
    /// Packets dropped because their destination (ingress) or source (egress) is not owned.
    pub const INGRESS_DROPPED: usize = 16;
    pub const EGRESS_DROPPED: usize = 17;
    /// Connections and sends to a container the policy does not let this one reach.
    pub const POLICY_REFUSED: usize = 18;
    /// Packets from a container the policy does not let reach this one.
    pub const POLICY_DROPPED: usize = 19;
    /// Packets and bytes the per-interface TC programs attribute to the container: by
    /// destination address on ingress, by source address on egress.
    pub const IFACE_RX_PACKETS: usize = 20;
    pub const IFACE_RX_BYTES: usize = 21;
    pub const IFACE_TX_PACKETS: usize = 22;
    pub const IFACE_TX_BYTES: usize = 23;
    /// Packets to or from the container dropped at an interface because their headers are
    /// truncated or malformed, or (egress) because they are not IP at all.
    pub const MALFORMED_DROPPED: usize = 24;
    /// Packets of container sockets carrying headers a container may not send (IPv6 routing
    /// headers, whatever path set them).
    pub const HEADER_DROPPED: usize = 25;
    /// Connections and datagrams to the container's addresses (or its private loopback) that
    /// no socket of the container would receive: refused at socket lookup, as a namespace
    /// without such a socket would (TCP reset, ICMP port unreachable).
    pub const LOOKUP_REFUSED: usize = 26;
    /// Connects and sends to abstract unix names the operator did not list, for containers
    /// whose abstract unix sockets are restricted.
    pub const UNIX_REFUSED: usize = 27;
    pub const LEN: usize = 28;
    pub const NAMES: [&str; LEN] = [
        "bind_allowed",
        "bind_rewritten",
        "bind_refused",
        "connect_allowed",
        "connect_rewritten",
        "connect_refused",
        "sendmsg_allowed",
        "sendmsg_rewritten",
        "sendmsg_refused",
        "socket_refused",
        "sockopt_refused",
        "audited",
        "rx_packets",
        "rx_bytes",
        "tx_packets",
        "tx_bytes",
        "ingress_dropped",
        "egress_dropped",
        "policy_refused",
        "policy_dropped",
        "iface_rx_packets",
        "iface_rx_bytes",
        "iface_tx_packets",
        "iface_tx_bytes",
        "malformed_dropped",
        "header_dropped",
        "lookup_refused",
        "unix_refused",
    ];
}

/// What netiso keeps on a container socket that can receive new flows (socket-local storage
/// `SOCKS`, created when it binds, listens or autobinds): the receiver it registered for
/// socket lookup, until it is released.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockInfo {
    /// The socket cookie of the socket that registered `receiver` (0: none).
    pub cookie: u64,
    pub receiver: Receiver,
}

/// Key of `RECEIVERS`: a container has a socket bound to `addr:port` (or to the wildcard of
/// `family`, `addr` zero) for `proto`; the value counts such sockets. Socket lookup for a
/// container's address passes only when one exists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Receiver {
    pub container: ContainerId,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    /// 4 or 6: the family of the bound address (a v4-mapped address counts as 4).
    pub version: u8,
    /// Host order.
    pub port: u16,
    /// IPv4 held as by [`Ip6::holding_v4`]; zero for a wildcard bind.
    pub addr: Ip6,
}

/// The socket mark of container sockets: this tag in the high bits, the container id in the
/// low 23. Set at socket creation (a process needs CAP_NET_ADMIN to change it), it says which
/// container a socket belongs to wherever it goes, and it travels with the socket's packets
/// and with the copies the kernel makes of them (broadcast and multicast loop-back), which
/// have no socket, so they can be attributed.
pub const MARK_TAG: u32 = 0xa580_0000;
pub const MARK_TAG_MASK: u32 = 0xff80_0000;

/// The mark container `id`'s sockets carry.
pub const fn mark_for(id: ContainerId) -> u32 {
    MARK_TAG | (id.0 & !MARK_TAG_MASK)
}

/// The container a mark names, if it carries netiso's tag.
pub const fn container_of_mark(mark: u32) -> Option<ContainerId> {
    if mark & MARK_TAG_MASK == MARK_TAG {
        Some(ContainerId(mark & !MARK_TAG_MASK))
    } else {
        None
    }
}

/// Longest abstract unix socket name: `sun_path` (108 bytes) without its leading NUL.
pub const UNIX_NAME_MAX: usize = 107;
/// Capacity of `UNIX_ALLOW`.
pub const MAX_UNIX_NAMES: u32 = 16_384;

/// Key of `UNIX_ALLOW`: container `container` may connect and send to the abstract unix
/// socket `name[..len]` (the bytes after the leading NUL, the rest zero). Abstract names are
/// byte strings delimited by the address length, so the length is part of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixName {
    pub container: ContainerId,
    pub len: u32,
    pub name: [u8; UNIX_NAME_MAX + 1],
}

impl UnixName {
    /// The key for `name` (without the leading NUL); None when it is too long.
    pub fn new(container: ContainerId, name: &[u8]) -> Option<UnixName> {
        if name.len() > UNIX_NAME_MAX {
            return None;
        }
        let mut k = UnixName {
            container,
            len: name.len() as u32,
            name: [0; UNIX_NAME_MAX + 1],
        };
        k.name[..name.len()].copy_from_slice(name);
        Some(k)
    }

    /// The name's bytes (without the leading NUL).
    pub fn bytes(&self) -> &[u8] {
        &self.name[..(self.len as usize).min(UNIX_NAME_MAX)]
    }
}

/// Map names, shared so the agent finds what the eBPF object defines.
pub mod maps {
    pub const CONTAINERS: &str = "CONTAINERS";
    pub const OWNED4: &str = "OWNED4";
    pub const OWNED6: &str = "OWNED6";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const POLICY: &str = "POLICY";
    pub const IDS: &str = "IDS";
    pub const EVENTS: &str = "EVENTS";
    pub const SOCKS: &str = "SOCKS";
    pub const RECEIVERS: &str = "RECEIVERS";
    pub const CG_INFO: &str = "CG_INFO";
    pub const CG_COUNTERS: &str = "CG_COUNTERS";
    pub const UNIX_ALLOW: &str = "UNIX_ALLOW";
    /// Per-CPU count of events the ring buffer had no room for.
    pub const EVENTS_DROPPED: &str = "EVENTS_DROPPED";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): `#[repr(C)]` or `#[repr(transparent)]` plain integers with no padding (see
    // the layout tests), so every bit pattern is a valid value.
    unsafe impl aya::Pod for crate::ContainerId {}
    unsafe impl aya::Pod for crate::Ip4 {}
    unsafe impl aya::Pod for crate::Ip6 {}
    unsafe impl aya::Pod for super::Container {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Receiver {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::PacketCounters {}
    unsafe impl aya::Pod for super::UnixName {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ContainerId>(), 4);
        assert_eq!(size_of::<Ip4>(), 4);
        assert_eq!(size_of::<Ip6>(), 16);
        assert_eq!(align_of::<Ip6>(), 4);

        assert_eq!(size_of::<Container>(), 4 + 4 + 4 + 4 + 16);
        assert_eq!(align_of::<Container>(), 4);
        assert_eq!(offset_of!(Container, id), 0);
        assert_eq!(offset_of!(Container, flags), 4);
        assert_eq!(offset_of!(Container, v4), 8);
        assert_eq!(offset_of!(Container, lo4), 12);
        assert_eq!(offset_of!(Container, v6), 16);

        assert_eq!(size_of::<PolicyKey>(), 8);
        assert_eq!(offset_of!(PolicyKey, to), 4);

        assert_eq!(size_of::<Counters>(), 8 * counter::LEN);

        assert_eq!(size_of::<Event>(), 8 + 6 * 4 + 16);
        assert_eq!(offset_of!(Event, container), 8);
        assert_eq!(offset_of!(Event, kind), 12);
        assert_eq!(offset_of!(Event, errno), 16);
        assert_eq!(offset_of!(Event, flags), 20);
        assert_eq!(offset_of!(Event, family), 24);
        assert_eq!(offset_of!(Event, port), 28);
        assert_eq!(offset_of!(Event, addr), 32);

        assert_eq!(size_of::<UnixName>(), 4 + 4 + 108);
        assert_eq!(align_of::<UnixName>(), 4);
        assert_eq!(offset_of!(UnixName, len), 4);
        assert_eq!(offset_of!(UnixName, name), 8);

        assert_eq!(size_of::<Receiver>(), 4 + 1 + 1 + 2 + 16);
        assert_eq!(offset_of!(Receiver, proto), 4);
        assert_eq!(offset_of!(Receiver, version), 5);
        assert_eq!(offset_of!(Receiver, port), 6);
        assert_eq!(offset_of!(Receiver, addr), 8);
        assert_eq!(size_of::<SockInfo>(), 8 + 24);
        assert_eq!(offset_of!(SockInfo, receiver), 8);
        assert_eq!(size_of::<PacketCounters>(), 6 * 8);
    }

    #[test]
    fn marks_carry_the_container_id_under_a_tag() {
        let id = ContainerId(0x7f_ffff);
        assert_eq!(container_of_mark(mark_for(id)), Some(id));
        assert_eq!(
            container_of_mark(mark_for(ContainerId(1))),
            Some(ContainerId(1))
        );
        for foreign in [0, 1, 0x4000, 0x8000, 0xa500_0001, 0xffff_ffff] {
            assert_eq!(container_of_mark(foreign), None, "{foreign:#x}");
        }
    }

    #[test]
    fn counter_names_are_unique() {
        for (i, a) in counter::NAMES.iter().enumerate() {
            for b in &counter::NAMES[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
