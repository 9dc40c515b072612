//! The one place a decision becomes an effect: enforce or audit, count, report an event, and
//! the return value each program kind gives the kernel. Audit mode lets through what enforce
//! mode would refuse and counts it in `audited`; the `try_*` functions never rewrite
//! anything for an audited container.
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_set_retval};
use netiso_common::{
    counter, policy::Deny, Container, ContainerId, Event, Ip6, PacketCounters, EVENT_AUDITED,
};

use crate::maps;

/// The address an event is about.
#[derive(Clone, Copy)]
pub struct Subject {
    /// AF_INET or AF_INET6, 0 when there is no address.
    pub family: u32,
    /// IPv4 held as by `Ip6::holding_v4`.
    pub addr: Ip6,
    /// Host order, 0 when none.
    pub port: u16,
}

impl Subject {
    pub const NONE: Subject = Subject {
        family: 0,
        addr: Ip6::UNSPECIFIED,
        port: 0,
    };
}

#[inline(always)]
fn emit(c: &Container, kind: usize, errno: i32, subject: Subject) {
    maps::emit(|| Event {
        // SAFETY: a plain helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        container: c.id,
        kind: kind as u32,
        errno: errno as u32,
        flags: if c.audit() { EVENT_AUDITED } else { 0 },
        family: subject.family,
        port: u32::from(subject.port),
        addr: subject.addr,
    });
}

// ---- socket hooks (sock_addr, sock, sockopt): 1 lets the call go on, 0 fails it ----

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// What a socket hook's `try_*` did when it let the operation through.
pub enum Outcome {
    Allowed,
    Rewritten,
}

/// The counters a socket hook reports into (`counter::LEN`: not counted).
#[derive(Clone, Copy)]
pub struct Hook {
    pub allowed: usize,
    pub rewritten: usize,
    pub refused: usize,
}

/// Turns a socket hook's decision into its return value. A refusal sets the errno the process
/// sees (bpf_set_retval; plain 0 would give EPERM) and is reported with the `subject` it
/// names (read only then).
#[inline(always)]
pub fn socket(
    c: &Container,
    hook: Hook,
    result: Result<Outcome, Deny>,
    subject: impl FnOnce() -> Subject,
) -> i32 {
    match result {
        Ok(Outcome::Allowed) => {
            maps::count(c.id, hook.allowed, None);
            ALLOW
        }
        Ok(Outcome::Rewritten) => {
            maps::count(c.id, hook.rewritten, None);
            ALLOW
        }
        Err(deny) => {
            emit(c, hook.refused, deny.errno(), subject());
            if c.audit() {
                maps::count(c.id, counter::AUDITED, None);
                return ALLOW;
            }
            maps::count(c.id, hook.refused, None);
            if deny == Deny::Policy {
                maps::count(c.id, counter::POLICY_REFUSED, None);
            }
            // SAFETY: a plain helper call; the kernel hands the value to the caller as errno.
            unsafe { bpf_set_retval(-deny.errno()) };
            DENY
        }
    }
}

// ---- packet programs (cgroup_skb, TC) ----

/// What a packet program decided about one packet.
pub enum Packet {
    /// No container is involved: untouched, uncounted.
    NotOurs,
    /// The packet belongs to this container: counted, let through.
    Attributed(ContainerId),
    /// Refused: charged to `c` under counter `kind`; `subject` is the address at fault.
    Drop {
        c: Container,
        kind: usize,
        subject: Subject,
    },
}

/// Where a packet program counts: the per-container `COUNTERS` map (TC, socket lookup), or
/// the per-CPU storage of a container's cgroup_skb attachment.
pub trait Tally {
    /// A packet of `len` bytes went on, charged to `id`.
    fn traffic(&self, id: ContainerId, len: u32);
    /// A packet was dropped, counted under `kind` (a `counter` index).
    fn dropped(&self, id: ContainerId, kind: usize);
    /// Audit mode let a packet go that enforce mode would have dropped.
    fn audited(&self, id: ContainerId);
}

/// Counting in the per-container `COUNTERS` map, traffic under these two indices.
#[derive(Clone, Copy)]
pub struct Traffic {
    pub packets: usize,
    pub bytes: usize,
}

impl Traffic {
    /// For programs that count no traffic (socket lookup).
    pub const NONE: Traffic = Traffic {
        packets: counter::LEN,
        bytes: counter::LEN,
    };
}

impl Tally for Traffic {
    fn traffic(&self, id: ContainerId, len: u32) {
        maps::count(id, self.packets, Some((self.bytes, u64::from(len))));
    }
    fn dropped(&self, id: ContainerId, kind: usize) {
        maps::count(id, kind, None);
    }
    fn audited(&self, id: ContainerId) {
        maps::count(id, counter::AUDITED, None);
    }
}

/// Counting in a cgroup_skb attachment's per-CPU storage (this CPU's copy: no other writer).
pub struct Local(pub *mut PacketCounters);

impl Local {
    #[inline(always)]
    fn with(&self, f: impl FnOnce(&mut PacketCounters)) {
        // SAFETY: the attachment's storage for this CPU, valid for the whole run and written
        // by this program run alone.
        if let Some(c) = unsafe { self.0.as_mut() } {
            f(c);
        }
    }
}

impl Tally for Local {
    fn traffic(&self, _: ContainerId, len: u32) {
        self.with(|c| {
            c.packets += 1;
            c.bytes += u64::from(len);
        });
    }
    fn dropped(&self, _: ContainerId, kind: usize) {
        self.with(|c| match kind {
            counter::POLICY_DROPPED => c.policy_dropped += 1,
            counter::HEADER_DROPPED => c.header_dropped += 1,
            _ => c.dropped += 1,
        });
    }
    fn audited(&self, _: ContainerId) {
        self.with(|c| c.audited += 1);
    }
}

/// Turns a packet decision into "let it through" (true) or "drop it" (false), counting in
/// `tally`. Each program maps the answer to its own return codes.
#[inline(always)]
pub fn packet(decision: Packet, len: u32, tally: &impl Tally) -> bool {
    match decision {
        Packet::NotOurs => true,
        Packet::Attributed(id) => {
            tally.traffic(id, len);
            true
        }
        Packet::Drop { c, kind, subject } => {
            emit(&c, kind, 0, subject);
            if c.audit() {
                tally.audited(c.id);
                tally.traffic(c.id, len);
                return true;
            }
            tally.dropped(c.id, kind);
            false
        }
    }
}
