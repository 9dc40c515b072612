//! Every map of the datapath. Names, key and value types are the ABI in `netiso_common::abi`;
//! all maps are pinned by name under the agent's bpffs directory, so they outlive the agent.
//!
//! Lookups return copies: a value may be replaced by the agent at any time, and a copy is
//! what the decision was made on.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use netiso_common::{
    config, Container, ContainerId, Counters, Event, Ip4, Ip6, PolicyKey, EVENTS_BYTES,
    MAX_ADDRESSES, MAX_CONTAINERS,
};

/// Hash maps allocate entries on demand: a preallocated per-CPU map of 64k entries would cost
/// hundreds of MiB on large machines.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Registered container cgroups: cgroup id -> container.
#[map(name = "CONTAINERS")]
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
