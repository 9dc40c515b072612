//! Abstract unix sockets (cgroup connect_unix and sendmsg_unix), for the containers whose
//! abstract names are restricted: they reach only the names the operator listed. Containers
//! share the abstract namespace with the host (a network namespace would separate it), and
//! the kernel has no unix bind hook, so "only sockets bound in the same container" cannot be
//! decided; the list is what an operator can vouch for.
//!
//! The agent attaches these two programs to the cgroups of those containers only, and writes
//! the container into their attachment storage. aya 0.14 knows no unix attach types, so they
//! sit in sections aya parses (`connect4`, `sendmsg4`) and the agent loads them with the
//! unix attach types itself (see netiso-user's `datapath/unix.rs`).
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use netiso_common::{
    counter,
    policy::{self, Deny},
    ContainerId, UnixName, UNIX_NAME_MAX,
};

use crate::{
    container, ctx, maps,
    verdict::{self, Hook, Outcome, Subject},
};

const UNIX: Hook = Hook {
    allowed: counter::LEN,
    rewritten: counter::LEN,
    refused: counter::UNIX_REFUSED,
};

#[cgroup_sock_addr(connect4)]
pub fn connect_unix(ctx: SockAddrContext) -> i32 {
    unix(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg_unix(ctx: SockAddrContext) -> i32 {
    unix(&ctx)
}

#[inline(always)]
fn unix(ctx: &SockAddrContext) -> i32 {
    if container::disabled() {
        return 1;
    }
    let Some(c) = maps::attached_container() else {
        // Attached, but the agent has not written the container yet: the registration is
        // under way, and restricted is what it will be.
        return 0;
    };
    let result = try_unix(ctx, c.id);
    verdict::socket(&c, UNIX, result, || Subject::NONE)
}

#[inline(always)]
fn try_unix(ctx: &SockAddrContext, id: ContainerId) -> Result<Outcome, Deny> {
    let mut name = UnixName {
        container: id,
        len: 0,
        name: [0; UNIX_NAME_MAX + 1],
    };
    policy::unix_peer(ctx::unix_peer(ctx, &mut name), maps::unix_listed)?;
    Ok(Outcome::Allowed)
}
