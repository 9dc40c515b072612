//! bind, connect and sendmsg (cgroup sock_addr programs): keep every socket of a container
//! on its own addresses. IPv4 and IPv6 share one body per hook; [`Family`] supplies what
//! differs (context fields, the policy function, the address type).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext, EbpfContext};
use netiso_common::{
    counter,
    policy::{self, Bind, Bound, Deny, Rewrite, AF_INET, AF_INET6},
    Container, ContainerId, Ip4, Ip6,
};

use crate::{
    container::{self, Maps},
    ctx::SockAddr,
    packet,
    verdict::{self, Hook, Outcome, Subject},
};

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

/// What differs between the IPv4 and the IPv6 hooks. A v4 hook may only read the v4 fields
/// of its context (and the other way round), so each family reads its own.
trait Family {
    type Addr: Copy;
    const AF: u32;
    fn user_ip(ctx: &SockAddrContext) -> Self::Addr;
    fn set_user_ip(ctx: &SockAddrContext, a: &Self::Addr);
    fn msg_src(ctx: &SockAddrContext) -> Self::Addr;
    fn set_msg_src(ctx: &SockAddrContext, a: &Self::Addr);
    fn sk_src(ctx: &SockAddrContext) -> Self::Addr;
    fn bind_src(ctx: &SockAddrContext, a: &Self::Addr) -> Result<(), i64>;
    /// The address in the either-family form of events and socket lookups.
    fn held(a: &Self::Addr) -> Ip6;
    fn is_unspecified(a: &Self::Addr) -> bool;
    fn primary(c: &Container) -> Self::Addr;
    fn owner(a: &Self::Addr) -> Option<ContainerId>;
    fn bind(c: &Container, a: &Self::Addr) -> Result<Bind<Self::Addr>, Deny>;
    fn connect(
        c: &Container,
        dst: &Self::Addr,
        bound: Bound<Self::Addr>,
    ) -> Result<Rewrite<Self::Addr>, Deny>;
    fn sendmsg(
        c: &Container,
        dst: &Self::Addr,
        src: &Self::Addr,
    ) -> Result<Rewrite<Self::Addr>, Deny>;
}

struct V4;
struct V6;

impl Family for V4 {
    type Addr = Ip4;
    const AF: u32 = AF_INET;
    fn user_ip(ctx: &SockAddrContext) -> Ip4 {
        ctx.user_ip4()
    }
    fn set_user_ip(ctx: &SockAddrContext, a: &Ip4) {
        ctx.set_user_ip4(*a);
    }
    fn msg_src(ctx: &SockAddrContext) -> Ip4 {
        ctx.msg_src_ip4()
    }
    fn set_msg_src(ctx: &SockAddrContext, a: &Ip4) {
        ctx.set_msg_src_ip4(*a);
    }
    fn sk_src(ctx: &SockAddrContext) -> Ip4 {
        ctx.sk_src_ip4()
    }
    fn bind_src(ctx: &SockAddrContext, a: &Ip4) -> Result<(), i64> {
        ctx.bind4(*a)
    }
    fn held(a: &Ip4) -> Ip6 {
        Ip6::holding_v4(*a)
    }
    fn is_unspecified(a: &Ip4) -> bool {
        a.is_unspecified()
    }
    fn primary(c: &Container) -> Ip4 {
        c.v4
    }
    fn owner(a: &Ip4) -> Option<ContainerId> {
        crate::maps::owner4(*a)
    }
    fn bind(c: &Container, a: &Ip4) -> Result<Bind<Ip4>, Deny> {
        policy::bind4(c, *a, &Maps)
    }
    fn connect(c: &Container, dst: &Ip4, bound: Bound<Ip4>) -> Result<Rewrite<Ip4>, Deny> {
        policy::connect4(c, *dst, bound, &Maps)
    }
    fn sendmsg(c: &Container, dst: &Ip4, src: &Ip4) -> Result<Rewrite<Ip4>, Deny> {
        policy::sendmsg4(c, *dst, *src, &Maps)
    }
}

impl Family for V6 {
    type Addr = Ip6;
    const AF: u32 = AF_INET6;
    fn user_ip(ctx: &SockAddrContext) -> Ip6 {
        ctx.user_ip6()
    }
    fn set_user_ip(ctx: &SockAddrContext, a: &Ip6) {
        ctx.set_user_ip6(a);
    }
    fn msg_src(ctx: &SockAddrContext) -> Ip6 {
        ctx.msg_src_ip6()
    }
    fn set_msg_src(ctx: &SockAddrContext, a: &Ip6) {
        ctx.set_msg_src_ip6(a);
    }
    fn sk_src(ctx: &SockAddrContext) -> Ip6 {
        ctx.sk_src_ip6()
    }
    fn bind_src(ctx: &SockAddrContext, a: &Ip6) -> Result<(), i64> {
        ctx.bind6(a)
    }
    fn held(a: &Ip6) -> Ip6 {
        *a
    }
    fn is_unspecified(a: &Ip6) -> bool {
        a.is_unspecified()
    }
    fn primary(c: &Container) -> Ip6 {
        c.v6
    }
    fn owner(a: &Ip6) -> Option<ContainerId> {
        policy::owner_of6(a, &Maps)
    }
    fn bind(c: &Container, a: &Ip6) -> Result<Bind<Ip6>, Deny> {
        policy::bind6(c, a, &Maps)
    }
    fn connect(c: &Container, dst: &Ip6, bound: Bound<Ip6>) -> Result<Rewrite<Ip6>, Deny> {
        policy::connect6(c, dst, bound, &Maps)
    }
    fn sendmsg(c: &Container, dst: &Ip6, src: &Ip6) -> Result<Rewrite<Ip6>, Deny> {
        policy::sendmsg6(c, dst, src, &Maps)
    }
}

/// Every sock_addr hook: pass through when netiso is disabled or the socket belongs to no
/// container, otherwise decide with `try_hook` and let [`verdict::socket`] apply it.
#[inline(always)]
fn run<F: Family>(
    ctx: &SockAddrContext,
    hook: Hook,
    try_hook: fn(&SockAddrContext, &Container) -> Result<Outcome, Deny>,
) -> i32 {
    if container::disabled() {
        return 1;
    }
    let Some(c) = container::of_socket(ctx.socket()) else {
        return 1;
    };
    let result = try_hook(ctx, &c);
    verdict::socket(&c, hook, result, || Subject {
        family: F::AF,
        addr: F::held(&F::user_ip(ctx)),
        port: ctx.user_port(),
    })
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    run::<V4>(&ctx, BIND, try_bind::<V4>)
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    run::<V6>(&ctx, BIND, try_bind::<V6>)
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    run::<V4>(&ctx, CONNECT, try_connect::<V4>)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    run::<V6>(&ctx, CONNECT, try_connect::<V6>)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    run::<V4>(&ctx, SENDMSG, try_sendmsg::<V4>)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    run::<V6>(&ctx, SENDMSG, try_sendmsg::<V6>)
}

/// bind(): an owned address is kept, the wildcard and 127.0.0.1 are rewritten, anything else
/// is refused.
fn try_bind<F: Family>(ctx: &SockAddrContext, c: &Container) -> Result<Outcome, Deny> {
    match F::bind(c, &F::user_ip(ctx))? {
        Bind::Rewrite(a) if !c.audit() => {
            F::set_user_ip(ctx, &a);
            Ok(Outcome::Rewritten)
        }
        _ => Ok(Outcome::Allowed),
    }
}

/// connect() (TCP, UDP, ping): an owned source, the loopback mapping, and the policy between
/// containers.
fn try_connect<F: Family>(ctx: &SockAddrContext, c: &Container) -> Result<Outcome, Deny> {
    let dst = F::user_ip(ctx);
    let bound = Bound {
        addr: F::sk_src(ctx),
        has_port: ctx.sk_src_port() != 0,
    };
    let r = F::connect(c, &dst, bound)?;
    policy::reach(c.id, F::owner(&dst), &Maps)?;
    apply::<F>(ctx, c, r, Apply::Connect)
}

/// An unconnected UDP send, or one with a source in a control message.
fn try_sendmsg<F: Family>(ctx: &SockAddrContext, c: &Container) -> Result<Outcome, Deny> {
    let dst = F::user_ip(ctx);
    let src = F::msg_src(ctx);
    let r = F::sendmsg(c, &dst, &src)?;
    let to = F::owner(&dst);
    if let Err(deny) = policy::reach(c.id, to, &Maps) {
        // A reply to a container that connected its UDP socket to us is not a new flow. The
        // datagram's source: the cmsg's, else the bound one, else the primary (what the
        // rewrite picks). Not read from `r`: an unset Option payload upsets the verifier.
        let bound = F::sk_src(ctx);
        let from = if !F::is_unspecified(&src) {
            src
        } else if !F::is_unspecified(&bound) {
            bound
        } else {
            F::primary(c)
        };
        let (sport, dport) = (ctx.sk_src_port(), ctx.user_port());
        let (from, dst) = (F::held(&from), F::held(&dst));
        // `reach` refuses only an owned destination, so `to` is set here.
        let to = to.unwrap_or_default();
        if !packet::udp_connected(ctx.as_ptr(), to, F::AF, &from, sport, &dst, dport) {
            return Err(deny);
        }
    }
    apply::<F>(ctx, c, r, Apply::Send)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Apply {
    Connect,
    Send,
}

/// Applies a connect or sendmsg rewrite: the destination into `user_ip*`, the source with
/// bpf_bind (connect) or into `msg_src_ip*` (sendmsg).
#[inline(always)]
fn apply<F: Family>(
    ctx: &SockAddrContext,
    c: &Container,
    r: Rewrite<F::Addr>,
    how: Apply,
) -> Result<Outcome, Deny> {
    if c.audit() || (r.dst.is_none() && r.src.is_none()) {
        return Ok(Outcome::Allowed);
    }
    if let Some(d) = r.dst {
        F::set_user_ip(ctx, &d);
    }
    if let Some(s) = r.src {
        match how {
            Apply::Connect => F::bind_src(ctx, &s).map_err(|_| Deny::AddrNotAvail)?,
            Apply::Send => F::set_msg_src(ctx, &s),
        }
    }
    Ok(Outcome::Rewritten)
}
