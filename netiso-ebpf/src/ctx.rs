//! The raw context readers and writers: the only place that touches the kernel's context
//! structs. Context fields are read and written with loads and stores of their exact width
//! (u32): the verifier rewrites each access into an access to the kernel's own struct and
//! rejects other sizes, and volatile accesses keep the compiler from merging or widening them.
//!
//! Every method takes the context aya built from the pointer the kernel passed to the program,
//! so the pointers dereferenced here are the kernel's.
use core::{
    ffi::c_void,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock, sockaddr},
    helpers::{bpf_bind, bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_sk_fullsock},
    programs::{
        SkBuffContext, SkLookupContext, SockAddrContext, SockContext, SockOpsContext,
        SockoptContext,
    },
};
use netiso_common::{
    policy::{UnixPeer, AF_INET, AF_INET6},
    Ip4, Ip6, UnixName, UNIX_NAME_MAX,
};

/// Reads one u32 context field: `field!(ptr, name)`.
macro_rules! field {
    ($ptr:expr, $($f:tt)+) => {
        // SAFETY: `$ptr` is a context pointer the kernel handed to this program (or a socket
        // pointer it derived from one), valid for the whole run; the field is a u32.
        unsafe { read_volatile(addr_of!((*$ptr).$($f)+)) }
    };
}

/// Writes one u32 context field: `set_field!(ptr, name, value)`.
macro_rules! set_field {
    ($ptr:expr, $f:ident, $v:expr) => {
        // SAFETY: as in `field!`; the verifier only lets this program kind write the fields
        // netiso writes (user_ip*, msg_src_ip*), and checks it at load time.
        unsafe { write_volatile(addr_of_mut!((*$ptr).$f), $v) }
    };
}

/// Reads four u32 fields starting at `p`, an IPv6 address in a context.
macro_rules! field6 {
    ($ptr:expr, $f:ident) => {{
        // SAFETY: as in `field!`; `$f` is a `[u32; 4]`, read word by word as the verifier wants.
        unsafe {
            let p = addr_of!((*$ptr).$f).cast::<u32>();
            Ip6([
                read_volatile(p),
                read_volatile(p.add(1)),
                read_volatile(p.add(2)),
                read_volatile(p.add(3)),
            ])
        }
    }};
}

macro_rules! set_field6 {
    ($ptr:expr, $f:ident, $v:expr) => {{
        let v: &Ip6 = $v;
        // SAFETY: as in `set_field!`; word by word, as the verifier wants.
        unsafe {
            let p = addr_of_mut!((*$ptr).$f).cast::<u32>();
            write_volatile(p, v.0[0]);
            write_volatile(p.add(1), v.0[1]);
            write_volatile(p.add(2), v.0[2]);
            write_volatile(p.add(3), v.0[3]);
        }
    }};
}

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

/// The kernel's `__sk_buff` of a cgroup_skb or TC context.
#[inline(always)]
pub fn skb(ctx: &SkBuffContext) -> *mut __sk_buff {
    ctx.skb.skb
}

/// The socket an skb belongs to.
pub enum SkbSocket {
    /// None (a packet the kernel makes, a copy without a socket).
    None,
    /// A full socket: its storage and state are readable.
    Full(*mut c_void),
    /// A request or time-wait socket.
    Partial,
}

#[inline(always)]
pub fn skb_socket(skb: *mut __sk_buff) -> SkbSocket {
    // SAFETY: reads the `sk` pointer field of the kernel's __sk_buff.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return SkbSocket::None;
    }
    // SAFETY: `sk` is the skb's socket pointer, checked non-null as the helper requires.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        SkbSocket::Partial
    } else {
        SkbSocket::Full(full.cast())
    }
}

/// The TCP state (`TCP_*`; UDP uses TCP_ESTABLISHED for connected sockets) of the full
/// socket an skb belongs to, if it has one.
#[inline(always)]
pub fn skb_socket_state(skb: *mut __sk_buff) -> Option<u32> {
    match skb_socket(skb) {
        SkbSocket::Full(sk) => Some(socket_state(sk.cast())),
        _ => None,
    }
}

/// The mark of a full socket (or of a cgroup/sock context's socket).
#[inline(always)]
pub fn socket_mark(sk: *mut c_void) -> u32 {
    field!(sk.cast::<bpf_sock>(), mark)
}

/// Family, protocol, bound address (IPv4 held) and host-order port of a full socket.
#[inline(always)]
pub fn socket_binding(sk: *mut c_void) -> (u32, u32, Ip6, u16) {
    let sk = sk.cast::<bpf_sock>();
    let family = field!(sk, family);
    let port = field!(sk, src_port) as u16;
    // Both read unconditionally: loads in the two arms of a branch get merged into one load
    // through a computed pointer, which the verifier refuses on a socket.
    let v4 = Ip4(field!(sk, src_ip4));
    let v6 = field6!(sk, src_ip6);
    let addr = if family == AF_INET {
        Ip6::holding_v4(v4)
    } else {
        v6
    };
    (family, field!(sk, protocol), addr, port)
}

/// The start and end of an skb's linear data (direct packet access: the verifier checks every
/// read against the end).
#[inline(always)]
pub fn skb_data(skb: *mut __sk_buff) -> (usize, usize) {
    (field!(skb, data) as usize, field!(skb, data_end) as usize)
}

/// The mark and packet type (`PACKET_*`) of an skb.
#[inline(always)]
pub fn skb_mark_and_type(skb: *mut __sk_buff) -> (u32, u32) {
    (field!(skb, mark), field!(skb, pkt_type))
}

/// The cookie of the skb's socket.
#[inline(always)]
pub fn skb_cookie(skb: *mut __sk_buff) -> u64 {
    // SAFETY: the helper reads the cookie of the skb's socket (0 without one).
    unsafe { bpf_get_socket_cookie(skb.cast()) }
}

/// sk_lookup (`struct bpf_sk_lookup`): a lookup for a new flow.
pub struct Lookup {
    pub family: u32,
    pub protocol: u32,
    /// Local (destination) address, IPv4 held, and host-order port.
    pub local: Ip6,
    pub local_port: u16,
    /// Remote (source) address, IPv4 held, and host-order port.
    pub remote: Ip6,
    pub remote_port: u16,
}

#[inline(always)]
pub fn lookup(ctx: &SkLookupContext) -> Lookup {
    let l = ctx.lookup;
    let family = field!(l, family);
    let (local, remote) = if family == AF_INET {
        (
            Ip6::holding_v4(Ip4(field!(l, local_ip4))),
            Ip6::holding_v4(Ip4(field!(l, remote_ip4))),
        )
    } else {
        (field6!(l, local_ip6), field6!(l, remote_ip6))
    };
    // SAFETY: remote_port is a 16-bit field in network order; the kernel allows this read.
    let remote_port = u16::from_be(unsafe { read_volatile(addr_of!((*l).remote_port)) });
    Lookup {
        family,
        protocol: field!(l, protocol),
        local,
        local_port: field!(l, local_port) as u16,
        remote,
        remote_port,
    }
}

/// The TCP state of a socket a bpf_sk_lookup_* helper returned (non-null).
#[inline(always)]
pub fn socket_state(sk: *const bpf_sock) -> u32 {
    field!(sk, state)
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
