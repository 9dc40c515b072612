//! Socket-level contexts: cgroup/sock (the socket itself), setsockopt and sock_ops.

use core::{
    ffi::c_void,
    ptr::{addr_of, read_volatile},
};

use aya_ebpf::{
    helpers::bpf_get_socket_cookie,
    programs::{SockContext, SockOpsContext, SockoptContext},
};
use netiso_common::{policy::AF_INET, Ip4, Ip6};

/// cgroup/sock programs (sock_create, post_bind, sock_release): the socket is the context.
pub trait Sock {
    /// Family, type, protocol.
    fn kind(&self) -> (u32, u32, u32);
    /// The bound address and host-order port.
    fn bound4(&self) -> (Ip4, u16);
    fn bound6(&self) -> (Ip6, u16);
    /// Sets the socket's mark (sock_create only; the verifier checks).
    fn set_mark(&self, mark: u32);
    fn cookie(&self) -> u64;
    /// The socket, for its storage.
    fn socket(&self) -> *mut c_void;
}

impl Sock for SockContext {
    fn kind(&self) -> (u32, u32, u32) {
        (
            field!(self.sock, family),
            field!(self.sock, type_),
            field!(self.sock, protocol),
        )
    }
    fn bound4(&self) -> (Ip4, u16) {
        (
            Ip4(field!(self.sock, src_ip4)),
            field!(self.sock, src_port) as u16,
        )
    }
    fn bound6(&self) -> (Ip6, u16) {
        (
            field6!(self.sock, src_ip6),
            field!(self.sock, src_port) as u16,
        )
    }
    fn set_mark(&self, mark: u32) {
        set_field!(self.sock, mark, mark);
    }
    fn cookie(&self) -> u64 {
        // SAFETY: the helper reads the cookie of the context's socket.
        unsafe { bpf_get_socket_cookie(self.sock.cast()) }
    }
    fn socket(&self) -> *mut c_void {
        self.sock.cast()
    }
}

/// setsockopt: the socket, for its storage.
#[inline(always)]
pub fn sockopt_socket(ctx: &SockoptContext) -> *mut c_void {
    // SAFETY: reads the `sk` pointer field of the kernel's context.
    unsafe { (*ctx.sockopt).__bindgen_anon_1.sk }.cast()
}

/// setsockopt (`struct bpf_sockopt`): level and option name.
#[inline(always)]
pub fn sockopt(ctx: &SockoptContext) -> (i32, i32) {
    // SAFETY: reads two i32 fields of the kernel's context.
    unsafe {
        (
            read_volatile(addr_of!((*ctx.sockopt).level)),
            read_volatile(addr_of!((*ctx.sockopt).optname)),
        )
    }
}

/// setsockopt: the first 16 bytes of the option value (an in6_addr for IPV6_PKTINFO), or
/// None when the value is shorter.
#[inline(always)]
pub fn sockopt_in6_addr(ctx: &SockoptContext) -> Option<Ip6> {
    // SAFETY: reads the optval/optval_end pointer fields of the kernel's context.
    let (start, end) = unsafe {
        (
            (*ctx.sockopt).__bindgen_anon_2.optval as usize,
            (*ctx.sockopt).__bindgen_anon_3.optval_end as usize,
        )
    };
    if start + 16 > end {
        return None;
    }
    let p = start as *const u32;
    // SAFETY: [start, start + 16) lies inside the option buffer: checked against optval_end
    // just above, the check the verifier requires before this read.
    Some(unsafe {
        Ip6([
            read_volatile(p),
            read_volatile(p.add(1)),
            read_volatile(p.add(2)),
            read_volatile(p.add(3)),
        ])
    })
}

/// sock_ops on a listening socket: the socket, the version (4 or 6, a v4-mapped address
/// counting as 6 here) and address it is bound to (IPv4 held; zero for the wildcard), and
/// its host-order port. None without a full socket.
#[inline(always)]
pub fn listener(ctx: &SockOpsContext) -> Option<(*mut c_void, u8, Ip6, u16)> {
    let ops = ctx.ops;
    // SAFETY: reads the `sk` pointer field of the kernel's context.
    let sk = unsafe { (*ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let family = field!(ops, family);
    let port = field!(ops, local_port) as u16;
    let v4 = Ip4(field!(ops, local_ip4));
    let v6 = field6!(ops, local_ip6);
    Some(if family == AF_INET {
        (sk.cast(), 4, Ip6::holding_v4(v4), port)
    } else {
        (sk.cast(), 6, v6, port)
    })
}

/// The cookie of a sock_ops context's socket.
#[inline(always)]
pub fn sock_ops_cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the helper reads the cookie of the context's socket.
    unsafe { bpf_get_socket_cookie(ctx.ops.cast()) }
}
