//! What the netiso eBPF programs and the user-space agent share, and nothing else: the map
//! ABI ([`abi`]), address and id newtypes ([`addr`]), the isolation contract as pure functions
//! ([`policy`]) and the packet header parser ([`packet`]). `no_std`: the eBPF crate builds it
//! for bpfel-unknown-none; the `user` feature adds `aya::Pod` for the agent's map access.
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod addr;
pub mod packet;
pub mod policy;

pub use abi::{
    config, counter, maps, Container, Counters, Event, PacketCounters, PolicyKey, Receiver,
    SockInfo, UnixName, EVENTS_BYTES, EVENT_AUDITED, FLAG_ALLOW_RAW, FLAG_AUDIT, FLAG_DENY_RULES,
    FLAG_HAS_V4, FLAG_HAS_V6, FLAG_ISOLATED, MAX_ADDRESSES, MAX_CGROUP_LEVELS, MAX_CONTAINERS,
    MAX_UNIX_NAMES, UNIX_NAME_MAX,
};
pub use addr::{ContainerId, Ip4, Ip6};
