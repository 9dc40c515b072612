//! The one place a decision becomes an effect: enforce or audit, count, report an event, and
//! the return value each program kind gives the kernel. Audit mode lets through what enforce
//! mode would refuse and counts it in `audited`; the `try_*` functions never rewrite
//! anything for an audited container.
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_set_retval};
use netiso_common::{counter, policy::Deny, Container, ContainerId, Event, Ip6, EVENT_AUDITED};

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
    maps::emit(&Event {
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

/// The packet and byte counters of one direction of one program kind.
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

/// Turns a packet decision into "let it through" (true) or "drop it" (false), counting `len`
/// bytes where the packet goes on. Each program maps the answer to its own return codes.
#[inline(always)]
pub fn packet(decision: Packet, traffic: Traffic, len: u32) -> bool {
    match decision {
        Packet::NotOurs => true,
        Packet::Attributed(id) => {
            maps::count(id, traffic.packets, Some((traffic.bytes, u64::from(len))));
            true
        }
        Packet::Drop { c, kind, subject } => {
            emit(&c, kind, 0, subject);
            if c.audit() {
                maps::count(c.id, counter::AUDITED, None);
                maps::count(c.id, traffic.packets, Some((traffic.bytes, u64::from(len))));
                return true;
            }
            maps::count(c.id, kind, None);
            false
        }
    }
}
