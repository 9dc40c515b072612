//! cgroup/sock programs: the life of a socket. Attached to each container's cgroup (host
//! sockets run none of them); the container comes from the attachment's storage.
//!
//! - sock_create: a socket made in a container belongs to it from now on: it carries the
//!   container's mark. A container may only create the socket kinds the address hooks govern
//!   (TCP, UDP, ping) unless it was registered with `--allow-raw`.
//! - post_bind4/6: a container socket bound to an address and port can receive new flows
//!   there; socket lookup ([`crate::sk_lookup`]) lets flows to a container's address through
//!   only to such a socket.
//! - sock_release: the socket is gone, and with it what it registered.
use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use netiso_common::{
    abi::mark_for,
    counter,
    policy::{self, Deny, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    Container, Ip6, Receiver, SockInfo,
};

use crate::{
    container::{self, Maps},
    ctx::Sock,
    maps,
    verdict::{self, Hook, Outcome, Subject},
};

const SOCKET: Hook = Hook {
    allowed: counter::LEN,
    rewritten: counter::LEN,
    refused: counter::SOCKET_REFUSED,
};

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // Until the agent has written the container (registration under way), a socket made
    // here is the host's, as one made before the registration.
    let Some(c) = maps::attached_container() else {
        return 1;
    };
    // Ownership is bookkeeping, not enforcement: recorded also while netiso is disabled, so
    // that enabling it again governs every socket made meanwhile.
    ctx.set_mark(mark_for(c.id));
    if container::disabled() {
        return 1;
    }
    verdict::socket(&c, SOCKET, try_sock_create(&ctx, &c), || Subject::NONE)
}

fn try_sock_create(ctx: &SockContext, c: &Container) -> Result<Outcome, Deny> {
    let (family, ty, protocol) = ctx.kind();
    policy::sock_create(c, family, ty, protocol)?;
    Ok(Outcome::Allowed)
}

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    let (addr, port) = ctx.bound4();
    register(&ctx, 4, Ip6::holding_v4(addr), port);
    1
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    let (addr, port) = ctx.bound6();
    // A v4-mapped bind receives IPv4.
    if addr.is_mapped() {
        register(&ctx, 4, Ip6::holding_v4(addr.mapped_v4()), port);
    } else {
        register(&ctx, 6, addr, port);
    }
    1
}

/// Records a container socket bound to one of the container's addresses (or its loopback) as
/// a receiver of that container, once per socket. The container is the attachment's: the
/// socket was made in its cgroup (a post_bind program cannot read the socket's mark), and the
/// bind hook has already judged the socket by its own container.
#[inline(always)]
fn register(ctx: &SockContext, version: u8, addr: Ip6, port: u16) {
    let (_, _, protocol) = ctx.kind();
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return;
    }
    let Some(c) = maps::attached_container() else {
        return;
    };
    let family = if version == 4 { AF_INET } else { AF_INET6 };
    if !addr.is_unspecified() && policy::packet(&c, family, &addr, &Maps).is_err() {
        return;
    }
    let Some(info) = maps::sock_info(ctx.socket(), true) else {
        return;
    };
    let key = Receiver {
        container: c.id,
        proto: protocol as u8,
        version,
        port,
        addr,
    };
    add(info, key, ctx.cookie());
}

/// Registers `key` for the socket whose storage is `info` (identified by `cookie`).
#[inline(always)]
pub fn add(info: &mut SockInfo, key: Receiver, cookie: u64) {
    if info.cookie != 0 {
        return;
    }
    maps::add_receiver(&key);
    info.receiver = key;
    info.cookie = cookie;
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let Some(info) = maps::sock_info(ctx.socket(), false) else {
        return 1;
    };
    // Accepted sockets carry a copy of their listener's storage, not its registration.
    if info.cookie != 0 && info.cookie == ctx.cookie() {
        maps::remove_receiver(&info.receiver);
        info.cookie = 0;
    }
    1
}

/// The receiver a container socket is for, when bound to the wildcard of `family` (autobind:
/// listen() or sendto() without bind()).
#[inline(always)]
pub fn wildcard(c: &Container, family: u32, protocol: u32, port: u16) -> Receiver {
    Receiver {
        container: c.id,
        proto: protocol as u8,
        version: if family == AF_INET { 4 } else { 6 },
        port,
        addr: Ip6::UNSPECIFIED,
    }
}
