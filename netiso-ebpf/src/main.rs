//! netiso's kernel side: cgroup socket hooks that keep every socket of a container on the
//! addresses it owns, cgroup_skb programs that hold every packet of a container socket to the
//! same rule, and TC programs on chosen interfaces that attribute, police and sanity-check
//! packets by address.
//!
//! Each hook is thin: find the container (pass through when there is none or netiso is
//! disabled), call `try_*`, which asks `netiso_common::policy` for a decision and applies it,
//! then one function per program family (`finish`, `run_skb`, `run_tc`) turns the result into
//! the verdict.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr, bpf_sock_tuple, sockaddr},
    helpers::{
        bpf_bind, bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_ns, bpf_set_retval,
        bpf_sk_fullsock, bpf_sk_lookup_udp, bpf_sk_release, bpf_skb_ancestor_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, classifier, map},
    maps::{Array, HashMap, PerCpuHashMap, RingBuf},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockoptContext, TcContext},
};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use netiso_common::{
    config, counter,
    packet::{self, Frame, Headers, Kind, Plain},
    policy::{self, Bind, Bound, Deny, Ownership, Reachability, Rewrite, AF_INET, AF_INET6},
    Container, Counters, Event, Ip4, Ip6, PolicyKey, EVENTS_BYTES, EVENT_AUDITED, FLAG_ISOLATED,
    MAX_ADDRESSES, MAX_CGROUP_LEVELS, MAX_CONTAINERS,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
/// Hash maps allocate entries on demand: a preallocated per-CPU map of 64k entries would cost
/// hundreds of MiB on large machines.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Registered container cgroups: cgroup id -> container.
#[map(name = "CONTAINERS")]
static CONTAINERS: HashMap<u64, Container> = HashMap::pinned(MAX_CONTAINERS, BPF_F_NO_PREALLOC);
/// Owned IPv4 addresses -> container id.
#[map(name = "OWNED4")]
static OWNED4: HashMap<Ip4, u32> = HashMap::pinned(MAX_ADDRESSES, BPF_F_NO_PREALLOC);
/// Owned IPv6 addresses -> container id.
#[map(name = "OWNED6")]
static OWNED6: HashMap<Ip6, u32> = HashMap::pinned(MAX_ADDRESSES, BPF_F_NO_PREALLOC);
/// Global switches, see `netiso_common::config`.
#[map(name = "CONFIG")]
static CONFIG: Array<u32> = Array::pinned(config::LEN, 0);
/// Per-container counters, see `netiso_common::counter`.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuHashMap<u32, Counters> =
    PerCpuHashMap::pinned(MAX_CONTAINERS, BPF_F_NO_PREALLOC);

/// Explicit rules between containers: (from, to) -> 1 allow, 0 deny.
#[map(name = "POLICY")]
static POLICY: HashMap<PolicyKey, u32> = HashMap::pinned(MAX_ADDRESSES, BPF_F_NO_PREALLOC);
/// Container id -> container: the TC programs find containers by address, hence by id.
#[map(name = "IDS")]
static IDS: HashMap<u32, Container> = HashMap::pinned(MAX_CONTAINERS, BPF_F_NO_PREALLOC);

/// Refused, audited and dropped operations for `netiso events`. Best effort: when the agent
/// falls behind, events are lost; the counters stay exact.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// The address an event is about: (family, address, host-order port).
type Subject = (u32, Ip6, u32);

#[inline(always)]
fn emit(c: &Container, kind: usize, errno: i32, audited: bool, subject: Subject) {
    let ev = Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        container: c.id,
        kind: kind as u32,
        errno: errno as u32,
        flags: if audited { EVENT_AUDITED } else { 0 },
        family: subject.0,
        port: subject.2,
        addr: subject.1,
    };
    let _ = EVENTS.output::<Event>(&ev, 0);
}

/// What a `try_*` did when it let the operation through.
enum Outcome {
    Allowed,
    Rewritten,
}

/// The counters one hook reports into.
#[derive(Clone, Copy)]
struct Hook {
    allowed: usize,
    rewritten: usize,
    refused: usize,
}

const BIND: Hook = Hook {
    allowed: counter::BIND_ALLOWED,
    rewritten: counter::BIND_REWRITTEN,
    refused: counter::BIND_REFUSED,
};
const CONNECT: Hook = Hook {
    allowed: counter::CONNECT_ALLOWED,
    rewritten: counter::CONNECT_REWRITTEN,
    refused: counter::CONNECT_REFUSED,
};
const SENDMSG: Hook = Hook {
    allowed: counter::SENDMSG_ALLOWED,
    rewritten: counter::SENDMSG_REWRITTEN,
    refused: counter::SENDMSG_REFUSED,
};
const SOCKET: Hook = Hook {
    allowed: counter::LEN,
    rewritten: counter::LEN,
    refused: counter::SOCKET_REFUSED,
};
const SOCKOPT: Hook = Hook {
    allowed: counter::LEN,
    rewritten: counter::LEN,
    refused: counter::SOCKOPT_REFUSED,
};

struct MapOwner(u32);

impl Ownership for MapOwner {
    #[inline(always)]
    fn owns4(&self, addr: Ip4) -> bool {
        matches!(unsafe { OWNED4.get(addr) }, Some(id) if *id == self.0)
    }
    #[inline(always)]
    fn owns6(&self, addr: &Ip6) -> bool {
        matches!(unsafe { OWNED6.get(addr) }, Some(id) if *id == self.0)
    }
}

impl Reachability for MapOwner {
    #[inline(always)]
    fn owner4(&self, addr: Ip4) -> Option<u32> {
        unsafe { OWNED4.get(addr) }.copied()
    }
    #[inline(always)]
    fn owner6(&self, addr: &Ip6) -> Option<u32> {
        unsafe { OWNED6.get(addr) }.copied()
    }
    #[inline(always)]
    fn isolated(&self, id: u32) -> bool {
        matches!(unsafe { IDS.get(id) }, Some(c) if c.flags & FLAG_ISOLATED != 0)
    }
    #[inline(always)]
    fn rule(&self, from: u32, to: u32) -> Option<bool> {
        unsafe { POLICY.get(PolicyKey { from, to }) }.map(|v| *v != 0)
    }
}

#[inline(always)]
fn config(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}

/// The container of the calling task: the registered cgroup among its ancestors (containers
/// never nest, so at most one matches). None when netiso is disabled or the task is outside
/// every container, which makes every hook pass through.
#[inline(always)]
fn current_container() -> Option<Container> {
    if disabled() {
        return None;
    }
    container_of(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level) })
}

/// The global switch; each program's entry checks it once.
#[inline(always)]
fn disabled() -> bool {
    config(config::DISABLED) != 0
}

/// The container among the ancestors `ancestor(level)` returns (0 past the deepest level).
#[inline(always)]
fn container_of(ancestor: impl Fn(i32) -> u64) -> Option<Container> {
    let (min, max) = (config(config::MIN_LEVEL), config(config::MAX_LEVEL));
    let mut i = 0;
    while i < MAX_CGROUP_LEVELS {
        let level = min + i;
        if level > max {
            break;
        }
        // Returns 0 for levels deeper than the task's own cgroup.
        let id = ancestor(level as i32);
        if id == 0 {
            break;
        }
        if let Some(c) = unsafe { CONTAINERS.get(id) } {
            return Some(*c);
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn count(id: u32, index: usize) {
    if index >= counter::LEN {
        return;
    }
    if let Some(c) = COUNTERS.get_ptr_mut(id) {
        // Per-CPU value: no other writer, a plain add is enough.
        unsafe { (*c).v[index] += 1 };
    }
}

/// Every hook: pass through when the calling task is in no container (or netiso is disabled),
/// otherwise decide with `try_*` and turn the result into the verdict.
#[inline(always)]
fn run<C>(
    ctx: &C,
    hook: Hook,
    try_hook: fn(&C, &Container) -> Result<Outcome, Deny>,
    subject: fn(&C) -> Subject,
) -> i32 {
    match current_container() {
        None => ALLOW,
        Some(c) => {
            let result = try_hook(ctx, &c);
            if let Err(deny) = result {
                emit(&c, hook.refused, deny.errno(), c.audit(), subject(ctx));
            }
            finish(&c, hook, result)
        }
    }
}

/// The address a v4 sock_addr hook was asked about (only v4 fields are readable there).
#[inline(always)]
fn subject4(ctx: &SockAddrContext) -> Subject {
    let sa = ctx.sock_addr;
    let ip = rd(unsafe { addr_of!((*sa).user_ip4) });
    let port = rd(unsafe { addr_of!((*sa).user_port) });
    (AF_INET, [ip, 0, 0, 0], u32::from(u16::from_be(port as u16)))
}

#[inline(always)]
fn subject6(ctx: &SockAddrContext) -> Subject {
    let sa = ctx.sock_addr;
    let ip = rd6(unsafe { addr_of!((*sa).user_ip6) });
    let port = rd(unsafe { addr_of!((*sa).user_port) });
    (AF_INET6, ip, u32::from(u16::from_be(port as u16)))
}

#[inline(always)]
fn no_subject<C>(_: &C) -> Subject {
    (0, [0; 4], 0)
}

/// The one place that turns a decision into a verdict. Audit mode allows what enforce mode
/// would refuse and counts it; `try_*` never rewrites anything for an audited container.
#[inline(always)]
fn finish(c: &Container, hook: Hook, result: Result<Outcome, Deny>) -> i32 {
    match result {
        Ok(Outcome::Allowed) => {
            count(c.id, hook.allowed);
            ALLOW
        }
        Ok(Outcome::Rewritten) => {
            count(c.id, hook.rewritten);
            ALLOW
        }
        Err(_) if c.audit() => {
            count(c.id, counter::AUDITED);
            ALLOW
        }
        Err(deny) => {
            count(c.id, hook.refused);
            if deny == Deny::Policy {
                count(c.id, counter::POLICY_REFUSED);
            }
            unsafe { bpf_set_retval(-deny.errno()) };
            DENY
        }
    }
}

// ---- context access: narrow (u32) volatile loads and stores, as the verifier requires ----

#[inline(always)]
fn rd(p: *const u32) -> u32 {
    unsafe { read_volatile(p) }
}

#[inline(always)]
fn rd6(p: *const [u32; 4]) -> Ip6 {
    let p = p as *const u32;
    unsafe { [rd(p), rd(p.add(1)), rd(p.add(2)), rd(p.add(3))] }
}

#[inline(always)]
fn wr6(p: *mut [u32; 4], v: &Ip6) {
    let p = p as *mut u32;
    unsafe {
        write_volatile(p, v[0]);
        write_volatile(p.add(1), v[1]);
        write_volatile(p.add(2), v[2]);
        write_volatile(p.add(3), v[3]);
    }
}

#[inline(always)]
fn sk_of(ctx: &SockAddrContext) -> *const bpf_sock {
    unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }
}

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: u32,
    zero: [u8; 8],
}

#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}

/// Binds the socket's source address with port 0, which the kernel leaves to connect().
#[inline(always)]
fn bind_src4(ctx: &SockAddrContext, addr: Ip4) -> Result<(), Deny> {
    let mut sa = SockaddrIn {
        family: AF_INET as u16,
        port: 0,
        addr,
        zero: [0; 8],
    };
    let len = core::mem::size_of::<SockaddrIn>() as i32;
    let rc = unsafe { bpf_bind(ctx.sock_addr, addr_of_mut!(sa) as *mut sockaddr, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Deny::AddrNotAvail)
    }
}

#[inline(always)]
fn bind_src6(ctx: &SockAddrContext, addr: &Ip6) -> Result<(), Deny> {
    let mut sa = SockaddrIn6 {
        family: AF_INET6 as u16,
        port: 0,
        flowinfo: 0,
        addr: *addr,
        scope_id: 0,
    };
    let len = core::mem::size_of::<SockaddrIn6>() as i32;
    let rc = unsafe { bpf_bind(ctx.sock_addr, addr_of_mut!(sa) as *mut sockaddr, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Deny::AddrNotAvail)
    }
}

// ---- bind ----

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    run(&ctx, BIND, try_bind4, subject4)
}

fn try_bind4(ctx: &SockAddrContext, c: &Container) -> Result<Outcome, Deny> {
    let sa = ctx.sock_addr;
    let addr = rd(unsafe { addr_of!((*sa).user_ip4) });
    match policy::bind4(c, addr, &MapOwner(c.id))? {
        Bind::Rewrite(a) if !c.audit() => {
            unsafe { write_volatile(addr_of_mut!((*sa).user_ip4), a) };
            Ok(Outcome::Rewritten)
        }
        _ => Ok(Outcome::Allowed),
    }
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    run(&ctx, BIND, try_bind6, subject6)
}

fn try_bind6(ctx: &SockAddrContext, c: &Container) -> Result<Outcome, Deny> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let addr = rd6(unsafe { addr_of!((*sa).user_ip6) });
    match policy::bind6(c, &addr, &MapOwner(c.id))? {
        Bind::Rewrite(a) if !c.audit() => {
            wr6(unsafe { addr_of_mut!((*sa).user_ip6) }, &a);
            Ok(Outcome::Rewritten)
        }
        _ => Ok(Outcome::Allowed),
    }
}

// ---- connect (TCP, UDP, ping) ----

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    run(&ctx, CONNECT, try_connect4, subject4)
}

fn try_connect4(ctx: &SockAddrContext, c: &Container) -> Result<Outcome, Deny> {
    let sa = ctx.sock_addr;
    let sk = sk_of(ctx);
    let dst = rd(unsafe { addr_of!((*sa).user_ip4) });
    let bound = Bound {
        addr: rd(unsafe { addr_of!((*sk).src_ip4) }),
        has_port: rd(unsafe { addr_of!((*sk).src_port) }) != 0,
    };
    let own = MapOwner(c.id);
    let r = policy::connect4(c, dst, bound, &own)?;
    policy::reach(c.id, own.owner4(dst), &own)?;
    apply4(ctx, c, r, true)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    run(&ctx, CONNECT, try_connect6, subject6)
}

fn try_connect6(ctx: &SockAddrContext, c: &Container) -> Result<Outcome, Deny> {
    let sa = ctx.sock_addr;
    let sk = sk_of(ctx);
    let dst = rd6(unsafe { addr_of!((*sa).user_ip6) });
    let bound = Bound {
        addr: rd6(unsafe { addr_of!((*sk).src_ip6) }),
        has_port: rd(unsafe { addr_of!((*sk).src_port) }) != 0,
    };
    let own = MapOwner(c.id);
    let r = policy::connect6(c, &dst, bound, &own)?;
    policy::reach(c.id, policy::owner_of6(&dst, &own), &own)?;
    apply6(ctx, c, r, true)
}

/// Applies a connect or sendmsg rewrite: the destination into `user_ip*`, the source with
/// bpf_bind (connect) or into `msg_src_ip*` (sendmsg).
#[inline(always)]
fn apply4(
    ctx: &SockAddrContext,
    c: &Container,
    r: Rewrite<Ip4>,
    connect: bool,
) -> Result<Outcome, Deny> {
    if c.audit() || (r.dst.is_none() && r.src.is_none()) {
        return Ok(Outcome::Allowed);
    }
    let sa = ctx.sock_addr;
    if let Some(d) = r.dst {
        unsafe { write_volatile(addr_of_mut!((*sa).user_ip4), d) };
    }
    if let Some(s) = r.src {
        if connect {
            bind_src4(ctx, s)?;
        } else {
            unsafe { write_volatile(addr_of_mut!((*sa).msg_src_ip4), s) };
        }
    }
    Ok(Outcome::Rewritten)
}

#[inline(always)]
fn apply6(
    ctx: &SockAddrContext,
    c: &Container,
    r: Rewrite<Ip6>,
    connect: bool,
) -> Result<Outcome, Deny> {
    if c.audit() || (r.dst.is_none() && r.src.is_none()) {
        return Ok(Outcome::Allowed);
    }
    let sa = ctx.sock_addr;
    if let Some(d) = r.dst {
        wr6(unsafe { addr_of_mut!((*sa).user_ip6) }, &d);
    }
    if let Some(s) = r.src {
        if connect {
            bind_src6(ctx, &s)?;
        } else {
            wr6(unsafe { addr_of_mut!((*sa).msg_src_ip6) }, &s);
        }
    }
    Ok(Outcome::Rewritten)
}

// ---- unconnected UDP sends ----

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    run(&ctx, SENDMSG, try_sendmsg4, subject4)
}

fn try_sendmsg4(ctx: &SockAddrContext, c: &Container) -> Result<Outcome, Deny> {
    let sa = ctx.sock_addr;
    let dst = rd(unsafe { addr_of!((*sa).user_ip4) });
    let src = rd(unsafe { addr_of!((*sa).msg_src_ip4) });
    let own = MapOwner(c.id);
    let r = policy::sendmsg4(c, dst, src, &own)?;
    if let Err(deny) = policy::reach(c.id, own.owner4(dst), &own) {
        // A reply to a container that connected its UDP socket to us is not a new flow.
        // The datagram's source: the cmsg's, else the bound one, else the primary (what the
        // rewrite picks). Not read from `r`: an unset Option payload upsets the verifier.
        let sk = sk_of(ctx);
        let bound = rd(unsafe { addr_of!((*sk).src_ip4) });
        let from = match (src, bound) {
            (0, 0) => c.v4,
            (0, b) => b,
            (s, _) => s,
        };
        let sport = (rd(unsafe { addr_of!((*sk).src_port) }) as u16).to_be();
        let dport = rd(unsafe { addr_of!((*sa).user_port) }) as u16;
        let (f, d) = ([from, 0, 0, 0], [dst, 0, 0, 0]);
        if !udp_connected(sa as *mut _, AF_INET, &f, sport, &d, dport) {
            return Err(deny);
        }
    }
    apply4(ctx, c, r, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    run(&ctx, SENDMSG, try_sendmsg6, subject6)
}

fn try_sendmsg6(ctx: &SockAddrContext, c: &Container) -> Result<Outcome, Deny> {
    let sa = ctx.sock_addr;
    let dst = rd6(unsafe { addr_of!((*sa).user_ip6) });
    let src = rd6(unsafe { addr_of!((*sa).msg_src_ip6) });
    let own = MapOwner(c.id);
    let r = policy::sendmsg6(c, &dst, &src, &own)?;
    if let Err(deny) = policy::reach(c.id, policy::owner_of6(&dst, &own), &own) {
        // A reply to a container that connected its UDP socket to us is not a new flow.
        let sk = sk_of(ctx);
        let bound = rd6(unsafe { addr_of!((*sk).src_ip6) });
        let from = if !policy::is_zero6(&src) {
            src
        } else if !policy::is_zero6(&bound) {
            bound
        } else {
            c.v6
        };
        let sport = (rd(unsafe { addr_of!((*sk).src_port) }) as u16).to_be();
        let dport = rd(unsafe { addr_of!((*sa).user_port) }) as u16;
        if !udp_connected(sa as *mut _, AF_INET6, &from, sport, &dst, dport) {
            return Err(deny);
        }
    }
    apply6(ctx, c, r, false)
}

// ---- socket creation ----

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    run(&ctx, SOCKET, try_sock_create, no_subject)
}

fn try_sock_create(ctx: &SockContext, c: &Container) -> Result<Outcome, Deny> {
    let sk = ctx.sock;
    let family = rd(unsafe { addr_of!((*sk).family) });
    let ty = rd(unsafe { addr_of!((*sk).type_) });
    let protocol = rd(unsafe { addr_of!((*sk).protocol) });
    policy::sock_create(c, family, ty, protocol)?;
    Ok(Outcome::Allowed)
}

// ---- setsockopt: sticky IPv6 source ----

#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    run(&ctx, SOCKOPT, try_setsockopt, no_subject)
}

fn try_setsockopt(ctx: &SockoptContext, c: &Container) -> Result<Outcome, Deny> {
    let so = ctx.sockopt;
    let level = unsafe { read_volatile(addr_of!((*so).level)) };
    let optname = unsafe { read_volatile(addr_of!((*so).optname)) };
    if level != policy::IPPROTO_IPV6 {
        return Ok(Outcome::Allowed);
    }
    // struct in6_pktinfo starts with the in6_addr; bounds-check against optval_end.
    let start = unsafe { (*so).__bindgen_anon_2.optval } as usize;
    let end = unsafe { (*so).__bindgen_anon_3.optval_end } as usize;
    let addr = if start + 16 <= end {
        Some(rd6(start as *const [u32; 4]))
    } else {
        None
    };
    policy::setsockopt(level, optname, addr.as_ref(), &MapOwner(c.id))?;
    Ok(Outcome::Allowed)
}

// ---- packet layer: cgroup_skb on every container socket ----

/// Which end of the packet is local to the socket, and the counters that go with it.
#[derive(Clone, Copy)]
struct Direction {
    /// Offsets of the local address in the IPv4 and IPv6 headers.
    off4: usize,
    off6: usize,
    /// Offsets of the remote address, checked against the policy on ingress.
    remote4: usize,
    remote6: usize,
    ingress: bool,
    packets: usize,
    bytes: usize,
    dropped: usize,
}

const INGRESS: Direction = Direction {
    off4: 16, // destination
    off6: 24,
    remote4: 12,
    remote6: 8,
    ingress: true,
    packets: counter::RX_PACKETS,
    bytes: counter::RX_BYTES,
    dropped: counter::INGRESS_DROPPED,
};
const EGRESS: Direction = Direction {
    off4: 12, // source
    off6: 8,
    remote4: 16,
    remote6: 24,
    ingress: false,
    packets: counter::TX_PACKETS,
    bytes: counter::TX_BYTES,
    dropped: counter::EGRESS_DROPPED,
};

const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    run_skb(&ctx, INGRESS)
}

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    run_skb(&ctx, EGRESS)
}

/// The container is the one of the packet's socket (where it was created), not of a task:
/// in softirq context there is no meaningful task.
#[inline(always)]
fn run_skb(ctx: &SkBuffContext, dir: Direction) -> i32 {
    if disabled() {
        return PASS;
    }
    let skb = ctx.skb.skb;
    let Some(c) = container_of(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb as *mut _, level) })
    else {
        return PASS;
    };
    match try_packet(ctx, &c, dir) {
        Ok(()) => {
            count_packet(&c, dir, ctx.len());
            PASS
        }
        Err(deny) => {
            let kind = if deny == Deny::Policy {
                counter::POLICY_DROPPED
            } else {
                dir.dropped
            };
            emit(&c, kind, 0, c.audit(), packet_subject(ctx, dir));
            if c.audit() {
                count(c.id, counter::AUDITED);
                count_packet(&c, dir, ctx.len());
                return PASS;
            }
            count(c.id, kind);
            DROP
        }
    }
}

#[inline(always)]
fn count_packet(c: &Container, dir: Direction, len: u32) {
    count_bytes(c.id, dir.packets, dir.bytes, len);
}

#[inline(always)]
fn count_bytes(id: u32, packets: usize, bytes: usize, len: u32) {
    if packets >= counter::LEN || bytes >= counter::LEN {
        return;
    }
    if let Some(v) = COUNTERS.get_ptr_mut(id) {
        unsafe {
            (*v).v[packets] += 1;
            (*v).v[bytes] += u64::from(len);
        }
    }
}

/// The remote address of a packet, for its event.
#[inline(always)]
fn packet_subject(ctx: &SkBuffContext, dir: Direction) -> Subject {
    match ctx.load::<u8>(0).map(|b| b >> 4) {
        Ok(4) => (AF_INET, [ctx.load(dir.remote4).unwrap_or(0), 0, 0, 0], 0),
        Ok(6) => (AF_INET6, ctx.load(dir.remote6).unwrap_or([0; 4]), 0),
        _ => (0, [0; 4], 0),
    }
}

/// Reads the local address through the bounds-checked `load` helper (works on non-linear skbs
/// too); a packet too short to hold it is dropped for a container.
#[inline(always)]
fn try_packet(ctx: &SkBuffContext, c: &Container, dir: Direction) -> Result<(), Deny> {
    let first: u8 = ctx.load(0).map_err(|_| Deny::NotPermitted)?;
    let own = MapOwner(c.id);
    match first >> 4 {
        4 => {
            let local: Ip4 = ctx.load(dir.off4).map_err(|_| Deny::NotPermitted)?;
            policy::packet4(c, local, &own)?;
            if dir.ingress && starts_flow(ctx) {
                // The receiving side of the policy: who sent this?
                let remote: Ip4 = ctx.load(dir.remote4).map_err(|_| Deny::NotPermitted)?;
                return match own.owner4(remote) {
                    Some(from) => reach_in(from, c.id, &own),
                    None => Ok(()),
                };
            }
            Ok(())
        }
        6 => {
            let local: Ip6 = ctx.load(dir.off6).map_err(|_| Deny::NotPermitted)?;
            policy::packet6(c, &local, &own)?;
            if dir.ingress && starts_flow(ctx) {
                let remote: Ip6 = ctx.load(dir.remote6).map_err(|_| Deny::NotPermitted)?;
                return match own.owner6(&remote) {
                    Some(from) => reach_in(from, c.id, &own),
                    None => Ok(()),
                };
            }
            Ok(())
        }
        _ => Err(Deny::NotPermitted),
    }
}

const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;

/// Whether an arriving packet may open a flow: it reaches a TCP listener or an unconnected
/// datagram socket. Replies to flows the container opened itself (SYN-ACKs, established and
/// connected sockets) were admitted when they started and must not be judged again, or an
/// isolated container could not talk back to anyone. Without a full socket: judged.
#[inline(always)]
fn starts_flow(ctx: &SkBuffContext) -> bool {
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return true;
    }
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return true;
    }
    let state = rd(unsafe { addr_of!((*full).state) });
    let protocol = rd(unsafe { addr_of!((*full).protocol) });
    if protocol == policy::IPPROTO_TCP {
        state == TCP_LISTEN
    } else {
        state != TCP_ESTABLISHED
    }
}

/// May a packet from container `from` reach container `to`?
#[inline(always)]
fn reach_in(from: u32, to: u32, own: &MapOwner) -> Result<(), Deny> {
    policy::reach(from, Some(to), own)
}

// ---- packet layer: TC programs on the interfaces given with --iface ----

/// TCX verdicts. netiso never says "pass": what it lets through goes on to the next program
/// on the interface (or the stack), so it composes with other TC users.
const TC_NEXT: i32 = -1;
const TC_DROP: i32 = 2;

/// `BPF_F_CURRENT_NETNS` for the socket lookup helpers.
const CURRENT_NETNS: u64 = u64::MAX;

/// The frame behind a TC context, read only through the kernel's bounds-checked
/// `bpf_skb_load_bytes` (also correct for non-linear skbs).
struct SkbFrame<'a>(&'a TcContext);

impl Frame for SkbFrame<'_> {
    #[inline(always)]
    fn load<T: Plain>(&self, offset: usize) -> Option<T> {
        self.0.load::<T>(offset).ok()
    }
}

/// What a TC program decided.
enum TcVerdict {
    /// No container is involved: untouched.
    NotOurs,
    /// The packet belongs to this container: counted, let through.
    Attributed(u32),
    /// Refused: charged to `c` under counter `kind`, `subject` is the address at fault.
    Drop {
        c: Container,
        kind: usize,
        subject: Subject,
    },
}

#[derive(Clone, Copy)]
struct TcDirection {
    packets: usize,
    bytes: usize,
}

const TC_RX: TcDirection = TcDirection {
    packets: counter::IFACE_RX_PACKETS,
    bytes: counter::IFACE_RX_BYTES,
};
const TC_TX: TcDirection = TcDirection {
    packets: counter::IFACE_TX_PACKETS,
    bytes: counter::IFACE_TX_BYTES,
};

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    run_tc(&ctx, TC_RX, try_tc_ingress)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    run_tc(&ctx, TC_TX, try_tc_egress)
}

/// The one place TC verdicts are made; audit mode counts what it would drop and lets it go.
#[inline(always)]
fn run_tc(ctx: &TcContext, dir: TcDirection, try_tc: fn(&TcContext) -> TcVerdict) -> i32 {
    if disabled() {
        return TC_NEXT;
    }
    match try_tc(ctx) {
        TcVerdict::NotOurs => TC_NEXT,
        TcVerdict::Attributed(id) => {
            count_bytes(id, dir.packets, dir.bytes, ctx.len());
            TC_NEXT
        }
        TcVerdict::Drop { c, kind, subject } => {
            emit(&c, kind, 0, c.audit(), subject);
            if c.audit() {
                count(c.id, counter::AUDITED);
                count_bytes(c.id, dir.packets, dir.bytes, ctx.len());
                return TC_NEXT;
            }
            count(c.id, kind);
            TC_DROP
        }
    }
}

#[inline(always)]
fn owner(family: u32, addr: &Ip6) -> Option<u32> {
    if family == AF_INET {
        unsafe { OWNED4.get(addr[0]) }.copied()
    } else {
        unsafe { OWNED6.get(addr) }.copied()
    }
}

/// Ingress steering: the destination address names the container. A packet from another
/// container that may not reach it is dropped here, before the stack spends work on it.
/// Frames without readable addresses concern no container; the stack drops broken IP itself.
fn try_tc_ingress(ctx: &TcContext) -> TcVerdict {
    let h = packet::parse(&SkbFrame(ctx));
    if !h.is_ip() {
        return TcVerdict::NotOurs;
    }
    let Some(to) = owner(h.family, &h.dst) else {
        return TcVerdict::NotOurs;
    };
    // The container itself (its flags) is needed only to drop, not on the common path.
    let drop = |kind| match unsafe { IDS.get(to) } {
        Some(c) => TcVerdict::Drop {
            c: *c,
            kind,
            subject: (h.family, h.src, 0),
        },
        None => TcVerdict::NotOurs,
    };
    if h.kind == Kind::Malformed {
        return drop(counter::MALFORMED_DROPPED);
    }
    if let Some(from) = owner(h.family, &h.src) {
        if starts_flow_tc(ctx, &h) && reach_in(from, to, &MapOwner(to)).is_err() {
            return drop(counter::POLICY_DROPPED);
        }
    }
    TcVerdict::Attributed(to)
}

/// Egress attribution: by source address. A container socket may only send IP packets from
/// addresses its container owns; host sockets and the kernel's own replies are attributed to
/// the owner of their source and never judged.
fn try_tc_egress(ctx: &TcContext) -> TcVerdict {
    let skb = ctx.skb.skb;
    let sock = container_of(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb as *mut _, level) });
    let h = packet::parse(&SkbFrame(ctx));
    let Some(c) = sock else {
        if !h.is_ip() {
            return TcVerdict::NotOurs;
        }
        return owner(h.family, &h.src).map_or(TcVerdict::NotOurs, TcVerdict::Attributed);
    };
    if !h.is_ip() || h.kind == Kind::Malformed {
        // Not IP, or not parseable: a container has no business sending it.
        return TcVerdict::Drop {
            c,
            kind: counter::MALFORMED_DROPPED,
            subject: (h.family, h.dst, 0),
        };
    }
    let own = MapOwner(c.id);
    let allowed = if h.family == AF_INET {
        policy::packet4(&c, h.src4(), &own)
    } else {
        policy::packet6(&c, &h.src, &own)
    };
    match allowed {
        Ok(()) => TcVerdict::Attributed(c.id),
        Err(_) => TcVerdict::Drop {
            c,
            kind: counter::EGRESS_DROPPED,
            subject: (h.family, h.src, 0),
        },
    }
}

/// Whether an arriving packet may open a flow (see `starts_flow` for the socket-level twin):
/// a TCP SYN, an echo request, any other protocol; a UDP datagram unless the socket it is
/// for is connected (a reply on a flow that socket opened); never a later fragment, whose
/// first fragment carried the decision.
#[inline(always)]
fn starts_flow_tc(ctx: &TcContext, h: &Headers) -> bool {
    match h.kind {
        Kind::Tcp | Kind::Icmp | Kind::LaterFragment => false,
        Kind::Udp => !udp_connected(
            ctx.skb.skb as *mut _,
            h.family,
            &h.src,
            h.sport.to_be(),
            &h.dst,
            h.dport.to_be(),
        ),
        _ => true,
    }
}

/// Whether the local UDP socket that would receive a datagram `src:sport -> dst:dport`
/// (ports in network order) is connected, i.e. the datagram answers a flow that socket
/// opened. Used where the policy judges only new flows: TC ingress and the sendmsg hooks.
#[inline(always)]
fn udp_connected(
    ctx: *mut core::ffi::c_void,
    family: u32,
    src: &Ip6,
    sport: u16,
    dst: &Ip6,
    dport: u16,
) -> bool {
    // SAFETY: bpf_sock_tuple is plain data; all-zero is a valid value.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if family == AF_INET {
        let v4 = unsafe { &mut t.__bindgen_anon_1.ipv4 };
        v4.saddr = src[0];
        v4.daddr = dst[0];
        v4.sport = sport;
        v4.dport = dport;
        core::mem::size_of_val(v4)
    } else {
        let v6 = unsafe { &mut t.__bindgen_anon_1.ipv6 };
        v6.saddr = *src;
        v6.daddr = *dst;
        v6.sport = sport;
        v6.dport = dport;
        core::mem::size_of_val(v6)
    };
    let sk = unsafe { bpf_sk_lookup_udp(ctx, &mut t, size as u32, CURRENT_NETNS, 0) };
    if sk.is_null() {
        return false;
    }
    let state = rd(unsafe { addr_of!((*sk).state) });
    unsafe { bpf_sk_release(sk as *mut _) };
    state == TCP_ESTABLISHED
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
