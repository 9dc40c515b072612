//! sock_ops: a TCP socket of a container that listens without having been bound (listen()
//! autobinds it to the wildcard and an ephemeral port, with no bind hook) can receive new
//! connections: register it for socket lookup, as post_bind does for explicit binds.
use aya_ebpf::{bindings::BPF_SOCK_OPS_TCP_LISTEN_CB, macros::sock_ops, programs::SockOpsContext};
use netiso_common::{policy::IPPROTO_TCP, Ip6, Receiver};

use crate::{container, ctx, maps, sock};

#[sock_ops]
pub fn listen(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_LISTEN_CB {
        register_listener(&ctx);
    }
    1
}

#[inline(always)]
fn register_listener(ctx: &SockOpsContext) {
    let Some((sk, version, addr, port)) = ctx::listener(ctx) else {
        return;
    };
    let Some(c) = container::of_socket(sk) else {
        return;
    };
    let Some(info) = maps::sock_info(sk, true) else {
        return;
    };
    // A v4-mapped bind receives IPv4.
    let (version, addr) = if addr.is_mapped() {
        (4, Ip6::holding_v4(addr.mapped_v4()))
    } else {
        (version, addr)
    };
    let key = Receiver {
        container: c.id,
        proto: IPPROTO_TCP as u8,
        version,
        port,
        addr,
    };
    sock::add(info, key, ctx::sock_ops_cookie(ctx));
}
