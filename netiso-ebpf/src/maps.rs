//! Every map of the datapath. Names, key and value types are the ABI in `netiso_common::abi`;
//! all maps are pinned by name under the agent's bpffs directory, so they outlive the agent.
//!
//! Lookups return copies: a value may be replaced by the agent at any time, and a copy is
//! what the decision was made on.
use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, atomic_xsub, AtomicOrdering},
    ptr::{self, addr_of},
};

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use netiso_common::{
    config, Container, ContainerId, Counters, Event, Ip4, Ip6, PolicyKey, Receiver, SockInfo,
    UnixName, EVENTS_BYTES, MAX_ADDRESSES, MAX_CONTAINERS, MAX_UNIX_NAMES,
};

/// libbpf's LIBBPF_PIN_BY_NAME: the loader pins the map under its pin directory.
const PIN_BY_NAME: usize = 1;

/// Registered container cgroups: cgroup id -> container.
#[map(name = "CONTAINERS")]
// Hash maps allocate entries on demand: a preallocated per-CPU map of 64k entries would cost
// hundreds of MiB on large machines.
static CONTAINERS: HashMap<u64, Container> = HashMap::pinned(MAX_CONTAINERS, BPF_F_NO_PREALLOC);
/// Container id -> container: the packet programs find containers by address, hence by id.
#[map(name = "IDS")]
static IDS: HashMap<ContainerId, Container> = HashMap::pinned(MAX_CONTAINERS, BPF_F_NO_PREALLOC);
/// Owned IPv4 addresses -> container id.
#[map(name = "OWNED4")]
static OWNED4: HashMap<Ip4, ContainerId> = HashMap::pinned(MAX_ADDRESSES, BPF_F_NO_PREALLOC);
/// Owned IPv6 addresses -> container id.
#[map(name = "OWNED6")]
static OWNED6: HashMap<Ip6, ContainerId> = HashMap::pinned(MAX_ADDRESSES, BPF_F_NO_PREALLOC);
/// Explicit rules between containers: (from, to) -> 1 allow, 0 deny.
#[map(name = "POLICY")]
static POLICY: HashMap<PolicyKey, u32> = HashMap::pinned(MAX_ADDRESSES, BPF_F_NO_PREALLOC);
/// Global switches, see `netiso_common::config`.
#[map(name = "CONFIG")]
static CONFIG: Array<u32> = Array::pinned(config::LEN, 0);
/// Per-container counters, see `netiso_common::counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuHashMap<ContainerId, Counters> =
    PerCpuHashMap::pinned(MAX_CONTAINERS, BPF_F_NO_PREALLOC);
pub use attachment::{attached_container, packet_counters};

/// Sockets of containers that can receive new flows, counted per (container, protocol,
/// address, port): socket lookup for a container's address passes only when one exists.
#[map(name = "RECEIVERS")]
static RECEIVERS: HashMap<Receiver, u64> = HashMap::pinned(MAX_ADDRESSES, BPF_F_NO_PREALLOC);

/// The BTF definition of a pinned socket-storage map, which aya's `SkStorage` does not offer.
#[repr(C)]
pub struct SockStorage {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockInfo,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    pinning: *const [i32; PIN_BY_NAME],
}

// SAFETY: the fields are never dereferenced; the loader reads their types from BTF.
unsafe impl Sync for SockStorage {}

/// The receiver a container socket registered (`SockInfo`); pinned, so a restarted agent's
/// programs release what the earlier ones registered.
#[btf_map(name = "SOCKS")]
static SOCKS: SockStorage = SockStorage {
    r#type: ptr::null(),
    key: ptr::null(),
    value: ptr::null(),
    max_entries: ptr::null(),
    map_flags: ptr::null(),
    pinning: ptr::null(),
};

/// The storage of socket `sk` (a full socket, or a cgroup/sock context), creating it when
/// `create` is set.
#[inline(always)]
pub fn sock_info(sk: *mut c_void, create: bool) -> Option<&'static mut SockInfo> {
    const BPF_SK_STORAGE_GET_F_CREATE: u64 = 1;
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE
    } else {
        0
    };
    let map = addr_of!(SOCKS).cast_mut().cast::<c_void>();
    // SAFETY: `map` is the storage map and `sk` a socket the kernel handed the program; the
    // helper returns this socket's storage (zeroed when created) or null.
    let p = unsafe { bpf_sk_storage_get(map, sk, ptr::null_mut(), flags) }.cast::<SockInfo>();
    // SAFETY: non-null storage stays valid while the program runs on this socket.
    unsafe { p.as_mut() }
}

/// Counts one more receiving socket for `key`.
#[inline(always)]
pub fn add_receiver(key: &Receiver) {
    if let Some(n) = RECEIVERS.get_ptr_mut(key) {
        // SAFETY: a map value; sockets of one container bind concurrently, hence an atomic
        // add (BPF's lock-free XADD; core's atomic types have no RMW on this target).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
    } else if RECEIVERS.insert(key, 1, u64::from(BPF_NOEXIST)).is_err() {
        // Inserted by a concurrent bind in between: count on that entry.
        if let Some(n) = RECEIVERS.get_ptr_mut(key) {
            // SAFETY: as above.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
        }
    }
}

/// Counts one receiving socket less for `key`, removing the entry at zero.
#[inline(always)]
pub fn remove_receiver(key: &Receiver) {
    let Some(n) = RECEIVERS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value, see `add_receiver`. The last one out removes the entry; a bind
    // racing with that can lose its count, which fails closed (its flows are refused).
    if unsafe { ptr::read_volatile(n) } <= 1 {
        let _ = RECEIVERS.remove(key);
    } else {
        // SAFETY: as above.
        unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
    }
}

/// Whether a container has a receiving socket for `key`.
#[inline(always)]
pub fn has_receiver(key: &Receiver) -> bool {
    // SAFETY: only the presence is read.
    unsafe { RECEIVERS.get(key) }.is_some()
}

/// The abstract unix names containers with restricted abstract sockets may reach.
#[map(name = "UNIX_ALLOW")]
static UNIX_ALLOW: HashMap<UnixName, u32> = HashMap::pinned(MAX_UNIX_NAMES, BPF_F_NO_PREALLOC);

/// Whether the operator listed this abstract unix name for its container.
#[inline(always)]
pub fn unix_listed(name: &UnixName) -> bool {
    // SAFETY: only the presence is read.
    unsafe { UNIX_ALLOW.get(name) }.is_some()
}

/// Refused, audited and dropped operations for `netiso events`. Best effort: when the agent
/// falls behind, events are lost; the counters stay exact.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
/// Events the ring buffer had no room for (one per-CPU slot), for the agent's metrics.
#[map(name = "EVENTS_DROPPED")]
static EVENTS_DROPPED: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

/// A global switch (`netiso_common::config`); 0 when unset.
#[inline(always)]
pub fn config(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}

/// The container registered for a cgroup id.
#[inline(always)]
pub fn container_of_cgroup(cgroup_id: u64) -> Option<Container> {
    // SAFETY: the value is copied out at once; a concurrent update by the agent replaces the
    // entry as a whole (a hash map update), so the copy is one version or the other.
    unsafe { CONTAINERS.get(cgroup_id) }.copied()
}

/// The container with an id.
#[inline(always)]
pub fn container_of_id(id: ContainerId) -> Option<Container> {
    // SAFETY: copied out at once, see `container_of_cgroup`.
    unsafe { IDS.get(id) }.copied()
}

#[inline(always)]
pub fn owner4(addr: Ip4) -> Option<ContainerId> {
    // SAFETY: copied out at once, see `container_of_cgroup`.
    unsafe { OWNED4.get(addr) }.copied()
}

#[inline(always)]
pub fn owner6(addr: &Ip6) -> Option<ContainerId> {
    // SAFETY: copied out at once, see `container_of_cgroup`.
    unsafe { OWNED6.get(addr) }.copied()
}

/// The explicit rule for `from` reaching `to`, if any: Some(true) allow, Some(false) deny.
#[inline(always)]
pub fn rule(from: ContainerId, to: ContainerId) -> Option<bool> {
    // SAFETY: copied out at once, see `container_of_cgroup`.
    unsafe { POLICY.get(PolicyKey { from, to }) }.map(|v| *v != 0)
}

/// Adds 1 to counter `index` of container `id`, and `bytes` to counter `bytes_index` when
/// given (packet counters come in pairs).
#[inline(always)]
pub fn count(id: ContainerId, index: usize, bytes: Option<(usize, u64)>) {
    if index >= netiso_common::counter::LEN {
        return;
    }
    let Some(c) = COUNTERS.get_ptr_mut(id) else {
        return;
    };
    // SAFETY: a per-CPU value of this CPU: no other writer runs concurrently, and the pointer
    // stays valid for this program run (entries are freed only after an RCU grace period).
    let v = unsafe { &mut (*c).v };
    v[index] += 1;
    if let Some((i, n)) = bytes {
        if i < v.len() {
            v[i] += n;
        }
    }
}

/// Sends an event to the agent, written in place in the ring buffer (no copy on the stack,
/// which is nearly full in the packet programs); when the buffer has no room the event is
/// dropped and counted in `EVENTS_DROPPED`.
#[inline(always)]
pub fn emit(ev: impl FnOnce() -> Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(ev());
            entry.submit(0);
        }
        None => {
            if let Some(n) = EVENTS_DROPPED.get_ptr_mut(0) {
                // SAFETY: this CPU's slot; no other writer runs concurrently on it.
                unsafe { *n += 1 };
            }
        }
    }
}

/// Attachment-local cgroup storage for the per-container programs. The kernel calls
/// this map type deprecated in favour of CGRP_STORAGE, which is keyed by cgroup rather than by
/// attachment and needs a cgroup pointer the packet path does not have; the attachment is
/// exactly what is needed here.
#[expect(
    deprecated,
    reason = "attachment-local storage is what the packet path needs"
)]
mod attachment {
    use aya_ebpf::{
        macros::map,
        maps::{CgroupStorage, PerCpuCgroupStorage},
    };
    use netiso_common::{Container, PacketCounters};

    /// The container a program attached to a container's cgroup works for, written by the
    /// agent into that attachment's storage: read without a lookup. All zero until the agent
    /// has written it.
    #[map(name = "CG_INFO")]
    static CG_INFO: CgroupStorage<Container> = CgroupStorage::pinned();

    /// That attachment's per-CPU packet counters.
    #[map(name = "CG_COUNTERS")]
    static CG_COUNTERS: PerCpuCgroupStorage<PacketCounters> = PerCpuCgroupStorage::pinned();

    /// The container of the cgroup the running program is attached to, once the agent has
    /// written it.
    #[inline(always)]
    pub fn attached_container() -> Option<Container> {
        // SAFETY: the helper returns this attachment's storage, valid for the whole run; the
        // agent replaces the value as a whole, so the copy is one version or the other.
        let c = unsafe { *CG_INFO.get_ptr_mut() };
        (c.id.0 != 0).then_some(c)
    }

    /// This attachment's packet counters for the running CPU.
    #[inline(always)]
    pub fn packet_counters() -> *mut PacketCounters {
        CG_COUNTERS.get_ptr_mut()
    }
}
