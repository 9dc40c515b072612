//! The raw context readers and writers: the only place that touches the kernel's context
//! structs. Context fields are read and written with loads and stores of their exact width
//! (u32): the verifier rewrites each access into an access to the kernel's own struct and
//! rejects other sizes, and volatile accesses keep the compiler from merging or widening them.
//!
//! Every method takes the context aya built from the pointer the kernel passed to the program,
//! so the pointers dereferenced here are the kernel's.

/// Reads one u32 context field: `field!(ptr, name)`.
macro_rules! field {
    ($ptr:expr, $($f:tt)+) => {
        // SAFETY: `$ptr` is a context pointer the kernel handed to this program (or a socket
        // pointer it derived from one), valid for the whole run; the field is a u32.
        unsafe { ::core::ptr::read_volatile(::core::ptr::addr_of!((*$ptr).$($f)+)) }
    };
}

/// Writes one u32 context field: `set_field!(ptr, name, value)`.
macro_rules! set_field {
    ($ptr:expr, $f:ident, $v:expr) => {
        // SAFETY: as in `field!`; the verifier only lets this program kind write the fields
        // netiso writes (user_ip*, msg_src_ip*), and checks it at load time.
        unsafe { ::core::ptr::write_volatile(::core::ptr::addr_of_mut!((*$ptr).$f), $v) }
    };
}

/// Reads four u32 fields starting at `p`, an IPv6 address in a context.
macro_rules! field6 {
    ($ptr:expr, $f:ident) => {{
        // SAFETY: as in `field!`; `$f` is a `[u32; 4]`, read word by word as the verifier wants.
        unsafe {
            let p = ::core::ptr::addr_of!((*$ptr).$f).cast::<u32>();
            Ip6([
                ::core::ptr::read_volatile(p),
                ::core::ptr::read_volatile(p.add(1)),
                ::core::ptr::read_volatile(p.add(2)),
                ::core::ptr::read_volatile(p.add(3)),
            ])
        }
    }};
}

macro_rules! set_field6 {
    ($ptr:expr, $f:ident, $v:expr) => {{
        let v: &Ip6 = $v;
        // SAFETY: as in `set_field!`; word by word, as the verifier wants.
        unsafe {
            let p = ::core::ptr::addr_of_mut!((*$ptr).$f).cast::<u32>();
            ::core::ptr::write_volatile(p, v.0[0]);
            ::core::ptr::write_volatile(p.add(1), v.0[1]);
            ::core::ptr::write_volatile(p.add(2), v.0[2]);
            ::core::ptr::write_volatile(p.add(3), v.0[3]);
        }
    }};
}

mod skb;
mod sock;
mod sock_addr;

pub use skb::{
    lookup, skb, skb_cookie, skb_data, skb_mark_and_type, skb_socket, skb_socket_state,
    socket_binding, socket_mark, socket_state, Lookup, SkbSocket,
};
pub use sock::{listener, sock_ops_cookie, sockopt, sockopt_in6_addr, sockopt_socket, Sock};
pub use sock_addr::{unix_peer, SockAddr};
