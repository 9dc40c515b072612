//! bind/connect/sendmsg contexts (`struct bpf_sock_addr`), and the peer of a unix connect
//! or sendmsg, read from the kernel's copy of the address.

use core::{ffi::c_void, ptr::addr_of_mut};

use aya_ebpf::{
    bindings::{bpf_sock, sockaddr},
    helpers::{bpf_bind, bpf_probe_read_kernel},
    programs::SockAddrContext,
};
use netiso_common::{
    policy::{UnixPeer, AF_INET, AF_INET6},
    Ip4, Ip6, UnixName, UNIX_NAME_MAX,
};

/// The `struct sockaddr_in` that bpf_bind takes.
#[repr(C)]
struct SockaddrIn {
    family: u16,
    port: u16,
    addr: Ip4,
    zero: [u8; 8],
}

/// The `struct sockaddr_in6` that bpf_bind takes.
#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port: u16,
    flowinfo: u32,
    addr: Ip6,
    scope_id: u32,
}

/// bind/connect/sendmsg hooks (`struct bpf_sock_addr`).
pub trait SockAddr {
    fn user_ip4(&self) -> Ip4;
    fn set_user_ip4(&self, a: Ip4);
    fn user_ip6(&self) -> Ip6;
    fn set_user_ip6(&self, a: &Ip6);
    /// The port the process asked for, host order.
    fn user_port(&self) -> u16;
    /// The source a control message (IP_PKTINFO / IPV6_PKTINFO) asks for (sendmsg only).
    fn msg_src_ip4(&self) -> Ip4;
    fn set_msg_src_ip4(&self, a: Ip4);
    fn msg_src_ip6(&self) -> Ip6;
    fn set_msg_src_ip6(&self, a: &Ip6);
    /// The socket's bound address and (host-order) port.
    fn sk_src_ip4(&self) -> Ip4;
    fn sk_src_ip6(&self) -> Ip6;
    fn sk_src_port(&self) -> u16;
    /// Binds the socket's source address with port 0, which the kernel leaves to connect()
    /// (connect hooks only). Err: the kernel's negative errno.
    fn bind4(&self, a: Ip4) -> Result<(), i64>;
    fn bind6(&self, a: &Ip6) -> Result<(), i64>;
    /// The socket, for its storage.
    fn socket(&self) -> *mut c_void;
}

impl SockAddr for SockAddrContext {
    fn user_ip4(&self) -> Ip4 {
        Ip4(field!(self.sock_addr, user_ip4))
    }
    fn set_user_ip4(&self, a: Ip4) {
        set_field!(self.sock_addr, user_ip4, a.0);
    }
    fn user_ip6(&self) -> Ip6 {
        field6!(self.sock_addr, user_ip6)
    }
    fn set_user_ip6(&self, a: &Ip6) {
        set_field6!(self.sock_addr, user_ip6, a);
    }
    fn user_port(&self) -> u16 {
        // Network order in the low 16 bits.
        u16::from_be(field!(self.sock_addr, user_port) as u16)
    }
    fn msg_src_ip4(&self) -> Ip4 {
        Ip4(field!(self.sock_addr, msg_src_ip4))
    }
    fn set_msg_src_ip4(&self, a: Ip4) {
        set_field!(self.sock_addr, msg_src_ip4, a.0);
    }
    fn msg_src_ip6(&self) -> Ip6 {
        field6!(self.sock_addr, msg_src_ip6)
    }
    fn set_msg_src_ip6(&self, a: &Ip6) {
        set_field6!(self.sock_addr, msg_src_ip6, a);
    }
    fn sk_src_ip4(&self) -> Ip4 {
        Ip4(field!(sk(self), src_ip4))
    }
    fn sk_src_ip6(&self) -> Ip6 {
        field6!(sk(self), src_ip6)
    }
    fn sk_src_port(&self) -> u16 {
        // Host order, unlike user_port.
        field!(sk(self), src_port) as u16
    }
    fn bind4(&self, a: Ip4) -> Result<(), i64> {
        let mut sa = SockaddrIn {
            family: AF_INET as u16,
            port: 0,
            addr: a,
            zero: [0; 8],
        };
        bind(self, addr_of_mut!(sa).cast(), size_of::<SockaddrIn>())
    }
    fn bind6(&self, a: &Ip6) -> Result<(), i64> {
        let mut sa = SockaddrIn6 {
            family: AF_INET6 as u16,
            port: 0,
            flowinfo: 0,
            addr: *a,
            scope_id: 0,
        };
        bind(self, addr_of_mut!(sa).cast(), size_of::<SockaddrIn6>())
    }
    fn socket(&self) -> *mut c_void {
        sk(self).cast_mut().cast()
    }
}

/// The socket of a sock_addr context: never null there (the verifier types it as a socket).
#[inline(always)]
fn sk(ctx: &SockAddrContext) -> *const bpf_sock {
    // SAFETY: reads the `sk` pointer field of the kernel's context.
    unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }
}

#[inline(always)]
fn bind(ctx: &SockAddrContext, sa: *mut sockaddr, len: usize) -> Result<(), i64> {
    // SAFETY: `sa` points to a sockaddr of `len` bytes on this program's stack.
    let rc = unsafe { bpf_bind(ctx.sock_addr, sa, len as i32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

/// `struct bpf_sock_addr_kern` (Linux 6.7+), what a sock_addr program's context pointer
/// really points to. The unix hooks have no context field for the address: it is read from
/// here (the agent loads these programs, and only a privileged loader may read kernel memory).
#[repr(C)]
struct SockAddrKern {
    sk: u64,
    uaddr: u64,
    tmp_reg: u64,
    t_ctx: u64,
    uaddrlen: u32,
}

const AF_UNIX: u16 = 1;
/// offsetof(struct sockaddr_un, sun_path)
const SUN_PATH: usize = 2;

/// The peer address of a unix connect or sendmsg hook. An abstract name is copied into
/// `name` (zeroed by the caller beyond its length). The address is the kernel's copy of what
/// the process passed, already checked by the kernel (family, 3..=110 bytes).
#[inline(always)]
pub fn unix_peer<'a>(ctx: &SockAddrContext, name: &'a mut UnixName) -> UnixPeer<'a> {
    // SAFETY: the context pointer is valid kernel memory for this run; the helper copies it
    // and reports a fault instead of taking it.
    let Ok(kern) = (unsafe { bpf_probe_read_kernel(ctx.sock_addr.cast::<SockAddrKern>()) }) else {
        return UnixPeer::Unreadable;
    };
    let len = kern.uaddrlen as usize;
    if len > SUN_PATH + UNIX_NAME_MAX + 1 {
        return UnixPeer::Unreadable;
    }
    // SAFETY: as above; the kernel's copy of the address is a sockaddr_storage (128 bytes),
    // so the first 4 bytes are readable whatever the length.
    let Ok(head) = (unsafe { bpf_probe_read_kernel(kern.uaddr as *const [u8; 4]) }) else {
        return UnixPeer::Unreadable;
    };
    if u16::from_ne_bytes([head[0], head[1]]) != AF_UNIX {
        // Not the layout this reader knows: fail closed.
        return UnixPeer::Unreadable;
    }
    if len <= SUN_PATH || head[2] != 0 {
        return UnixPeer::Path;
    }
    let n = len - SUN_PATH - 1;
    if n > UNIX_NAME_MAX {
        return UnixPeer::Unreadable;
    }
    if n > 0 {
        // SAFETY: `n` bytes fit `name.name` (UNIX_NAME_MAX + 1 bytes); the source is the
        // kernel's copy of the address, read with the checked helper.
        let rc = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                name.name.as_mut_ptr().cast(),
                n as u32,
                (kern.uaddr as usize + SUN_PATH + 1) as *const c_void,
            )
        };
        if rc != 0 {
            return UnixPeer::Unreadable;
        }
    }
    name.len = n as u32;
    UnixPeer::Abstract(name)
}
