//! setsockopt (cgroup/setsockopt): a sticky IPV6_PKTINFO may only name an owned source; the
//! legacy IPV6_2292PKTOPTIONS is refused. Every other option returns at once.
use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use netiso_common::{
    counter,
    policy::{self, Deny, IPPROTO_IPV6},
    Container,
};

use crate::{
    container::{self, Maps},
    ctx,
    verdict::{self, Hook, Outcome, Subject},
};

const SOCKOPT: Hook = Hook {
    allowed: counter::LEN,
    rewritten: counter::LEN,
    refused: counter::SOCKOPT_REFUSED,
};

#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    // Most options are none of netiso's business: decided before any map lookup.
    let (level, optname) = ctx::sockopt(&ctx);
    if level != IPPROTO_IPV6 || container::disabled() {
        return 1;
    }
    let Some(c) = container::of_socket(ctx::sockopt_socket(&ctx)) else {
        return 1;
    };
    let result = try_setsockopt(&ctx, &c, level, optname);
    verdict::socket(&c, SOCKOPT, result, || Subject::NONE)
}

fn try_setsockopt(
    ctx: &SockoptContext,
    c: &Container,
    level: i32,
    optname: i32,
) -> Result<Outcome, Deny> {
    let addr = ctx::sockopt_in6_addr(ctx);
    policy::setsockopt(c, level, optname, addr.as_ref(), &Maps)?;
    Ok(Outcome::Allowed)
}
