//! netiso's kernel side. A newcomer's map:
//!
//! - [`maps`]: every map the programs and the agent share.
//! - [`ctx`]: the raw context readers and writers (the only direct context access).
//! - [`container`]: which container a task, a socket or an address belongs to.
//! - [`packet`]: the one header reader of the packet programs and the flow-start check.
//! - [`verdict`]: the one place a decision becomes enforce / audit / count / event.
//! - one module per program kind: [`sock_addr`] (bind, connect, sendmsg), [`sock`]
//!   (socket creation, bind, release), [`sock_ops`] (listen), [`sockopt`], [`skb`] (cgroup_skb), [`sk_lookup`]
//!   (steering new flows by destination), [`tc`] (per interface) and [`unix`] (abstract unix
//!   sockets of containers that restrict them).
//!
//! Every program is a thin hook that calls a `try_*` function; `try_*` asks
//! `netiso_common::policy` for a decision and applies it, and [`verdict`] turns the result
//! into the program's return value. Processes and packets outside every container pass
//! through untouched; registered containers fail closed.
#![no_std]
#![no_main]
// Atomic adds on map values: core's atomic types have no read-modify-write on this target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod container;
mod ctx;
mod maps;
mod packet;
mod sk_lookup;
mod skb;
mod sock;
mod sock_addr;
mod sock_ops;
mod sockopt;
mod tc;
mod unix;
mod verdict;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
