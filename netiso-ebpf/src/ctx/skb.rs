//! Packet contexts (`__sk_buff` of cgroup_skb and TC, the sockets packets belong to) and
//! sk_lookup.

use core::{
    ffi::c_void,
    ptr::{addr_of, read_volatile},
};

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::{bpf_get_socket_cookie, bpf_sk_fullsock},
    programs::{SkBuffContext, SkLookupContext},
};
use netiso_common::{policy::AF_INET, Ip4, Ip6};

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
