//! sock_create (cgroup/sock): a container may only create the socket kinds the address hooks
//! govern (TCP, UDP, ping), unless it was registered with `--allow-raw`.
use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use netiso_common::{
    counter,
    policy::{self, Deny},
    Container,
};

use crate::{
    container, ctx,
    verdict::{self, Hook, Outcome, Subject},
};

const SOCKET: Hook = Hook {
    allowed: counter::LEN,
    rewritten: counter::LEN,
    refused: counter::SOCKET_REFUSED,
};

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    if container::disabled() {
        return 1;
    }
    let Some(c) = container::of_task() else {
        return 1;
    };
    verdict::socket(&c, SOCKET, try_sock_create(&ctx, &c), || Subject::NONE)
}

fn try_sock_create(ctx: &SockContext, c: &Container) -> Result<Outcome, Deny> {
    let (family, ty, protocol) = ctx::new_socket(ctx);
    policy::sock_create(c, family, ty, protocol)?;
    Ok(Outcome::Allowed)
}
