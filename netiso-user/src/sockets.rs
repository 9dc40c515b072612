//! Ending the use of revoked addresses: the sockets of a container that still use an address
//! it no longer owns are destroyed with sock_diag's SOCK_DESTROY (what `ss -K` does), so a
//! socket bound or connected while the container owned the address cannot go on using it.
//!
//! A small raw implementation over a NETLINK_SOCK_DIAG socket (no netlink crate covers
//! SOCK_DESTROY and the cgroup attribute): for each address, dump the TCP and UDP sockets of
//! both families whose local address is it (an in-kernel bytecode filter; an IPv4 address
//! also matches its v4-mapped form on AF_INET6 sockets), keep those whose cgroup
//! (INET_DIAG_CGROUP_ID, the cgroup the socket was created in) is one of `cgroups`, and
//! destroy each by its identity and cookie. TCP sockets in every state are aborted
//! (connections get a reset, listeners stop accepting); UDP sockets are disconnected with
//! ECONNABORTED. Sockets of other processes (an unregistered process bound to the same
//! address) are never touched. The agent runs in the network namespace whose sockets it
//! governs; sock_diag sees the sockets of the caller's namespace.
use std::{
    collections::HashSet,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_COND: u8 = 7;
const INET_DIAG_CGROUP_ID: u16 = 21;
/// sizeof(struct nlmsghdr), sizeof(struct inet_diag_req_v2), sizeof(struct inet_diag_msg).
const NLMSG_HDR: usize = 16;
const REQ_V2: usize = 56;
const DIAG_MSG: usize = 72;
/// struct inet_diag_sockid: sport, dport, src[4], dst[4], if, cookie[2] (48 bytes).
const SOCKID: usize = 48;

/// A socket found by the dump: what SOCK_DESTROY needs to find it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Found {
    family: u8,
    protocol: u8,
    id: [u8; SOCKID],
}

struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    fn open() -> io::Result<Diag> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor from socket(2).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A kernel that never answers must not hang the agent.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid timeval of the right size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Diag { fd, seq: 0 })
    }

    fn send(&mut self, ty: u16, flags: u16, payload: &[u8]) -> io::Result<u32> {
        self.seq += 1;
        let len = NLMSG_HDR + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: sockaddr_nl is plain data; all-zero then the family is a valid address
        // of the kernel (pid 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sendto with a buffer and address that outlive the call.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Receives the answers to request `seq`, calling `f` with each message's type and
    /// payload, until NLMSG_DONE (dumps) or the acknowledgement (NLMSG_ERROR, which is
    /// returned: 0 for success).
    fn recv(&mut self, seq: u32, mut f: impl FnMut(&[u8])) -> io::Result<i32> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: recv into a buffer we own, of the length given.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDR {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
                let mseq = u32::from_ne_bytes(rest[8..12].try_into().unwrap());
                if len < NLMSG_HDR || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink message",
                    ));
                }
                let payload = &rest[NLMSG_HDR..len];
                if mseq == seq {
                    match ty {
                        NLMSG_DONE => return Ok(0),
                        NLMSG_ERROR => {
                            let err = payload
                                .get(0..4)
                                .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                            return Ok(err);
                        }
                        _ => f(payload),
                    }
                }
                rest = &rest[align4(len).min(rest.len())..];
            }
        }
    }
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// inet_diag_req_v2 for `family`/`protocol`, all states, with `id` (zero for dumps).
fn request(family: u8, protocol: u8, id: &[u8; SOCKID]) -> Vec<u8> {
    let mut r = Vec::with_capacity(REQ_V2);
    r.extend_from_slice(&[family, protocol, 0, 0]);
    r.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: every state
    r.extend_from_slice(id);
    r
}

/// The bytecode "local address is `ip` (any port)", as an INET_DIAG_REQ_BYTECODE attribute.
fn source_filter(ip: IpAddr) -> Vec<u8> {
    let (family, prefix, addr): (u8, u8, Vec<u8>) = match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, 128, a.octets().to_vec()),
    };
    // struct inet_diag_bc_op { u8 code; u8 yes; u16 no; } then struct inet_diag_hostcond
    // { u8 family; u8 prefix_len; int port; } and the address. `yes` reaches the end of the
    // program (accept), `no` jumps past it (reject).
    let len = 4 + 8 + addr.len();
    let mut bc = Vec::with_capacity(len);
    bc.push(INET_DIAG_BC_S_COND);
    bc.push(len as u8);
    bc.extend_from_slice(&((len + 4) as u16).to_ne_bytes());
    bc.extend_from_slice(&[family, prefix, 0, 0]);
    bc.extend_from_slice(&(-1i32).to_ne_bytes());
    bc.extend_from_slice(&addr);
    let mut attr = Vec::with_capacity(4 + bc.len());
    attr.extend_from_slice(&((4 + bc.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    attr.extend_from_slice(&bc);
    attr
}

/// The cgroup id attribute of an inet_diag_msg payload, if present.
fn cgroup_of(payload: &[u8]) -> Option<u64> {
    let mut attrs = payload.get(DIAG_MSG..)?;
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == INET_DIAG_CGROUP_ID && len >= 12 {
            return Some(u64::from_ne_bytes(attrs[4..12].try_into().unwrap()));
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    None
}

/// The sockets of `cgroups` whose local address is `ip`.
fn find<S: std::hash::BuildHasher>(
    diag: &mut Diag,
    ip: IpAddr,
    cgroups: &HashSet<u64, S>,
) -> io::Result<Vec<Found>> {
    let families: &[u8] = match ip {
        // v4-mapped sockets of AF_INET6 match an IPv4 condition too.
        IpAddr::V4(_) => &[libc::AF_INET as u8, libc::AF_INET6 as u8],
        IpAddr::V6(_) => &[libc::AF_INET6 as u8],
    };
    let mut out = Vec::new();
    for &family in families {
        for protocol in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
            let mut payload = request(family, protocol, &[0; SOCKID]);
            payload.extend_from_slice(&source_filter(ip));
            let seq = diag.send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &payload)?;
            let err = diag.recv(seq, |msg| {
                if msg.len() < DIAG_MSG {
                    return;
                }
                if cgroup_of(msg).is_some_and(|cg| cgroups.contains(&cg)) {
                    let mut id = [0u8; SOCKID];
                    id.copy_from_slice(&msg[4..4 + SOCKID]);
                    out.push(Found {
                        family: msg[0],
                        protocol,
                        id,
                    });
                }
            })?;
            // A kernel without UDP diag answers ENOENT for that protocol.
            if err < 0 && -err != libc::ENOENT {
                return Err(io::Error::from_raw_os_error(-err));
            }
        }
    }
    Ok(out)
}

/// Destroys the sockets created in one of `cgroups` whose local address is one of `ips`.
/// Returns how many were destroyed. Two passes: a socket being bound while the first pass ran
/// (its bind hook had allowed the address just before it was revoked) is caught by the second.
pub fn destroy<S: std::hash::BuildHasher>(
    ips: &[IpAddr],
    cgroups: &HashSet<u64, S>,
) -> io::Result<usize> {
    if ips.is_empty() || cgroups.is_empty() {
        return Ok(0);
    }
    let mut diag = Diag::open()?;
    let mut done = HashSet::new();
    for _pass in 0..2 {
        for ip in ips {
            for s in find(&mut diag, *ip, cgroups)? {
                if done.contains(&s) {
                    continue;
                }
                let seq = diag.send(
                    SOCK_DESTROY,
                    NLM_F_REQUEST | NLM_F_ACK,
                    &request(s.family, s.protocol, &s.id),
                )?;
                let err = diag.recv(seq, |_| {})?;
                // ENOENT: it closed in the meantime.
                if err < 0 && -err != libc::ENOENT {
                    return Err(io::Error::from_raw_os_error(-err));
                }
                if err == 0 {
                    done.insert(s);
                }
            }
        }
    }
    Ok(done.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_filter_is_one_condition_jumping_past_the_end_when_false() {
        let a = source_filter("192.0.2.1".parse().unwrap());
        assert_eq!(a.len(), 4 + 4 + 8 + 4);
        assert_eq!(u16::from_ne_bytes([a[0], a[1]]) as usize, a.len());
        let (code, yes, no) = (a[4], a[5], u16::from_ne_bytes([a[6], a[7]]));
        assert_eq!(code, INET_DIAG_BC_S_COND);
        assert_eq!(usize::from(yes), a.len() - 4);
        assert_eq!(usize::from(no), a.len());
        assert_eq!(&a[a.len() - 4..], &[192, 0, 2, 1]);
        let b = source_filter("2001:db8::1".parse().unwrap());
        assert_eq!(b.len(), 4 + 4 + 8 + 16);
    }

    #[test]
    fn cgroup_attribute_is_found_among_others() {
        let mut msg = vec![0u8; DIAG_MSG];
        msg.extend_from_slice(&[8, 0, 5, 0, 1, 2, 3, 4]); // INET_DIAG_TOS, 4 bytes
        msg.extend_from_slice(&[12, 0, INET_DIAG_CGROUP_ID as u8, 0]);
        msg.extend_from_slice(&4242u64.to_ne_bytes());
        assert_eq!(cgroup_of(&msg), Some(4242));
        assert_eq!(cgroup_of(&msg[..DIAG_MSG + 8]), None);
    }

    #[test]
    fn requests_have_the_kernel_layout() {
        let r = request(2, 6, &[0; SOCKID]);
        assert_eq!(r.len(), REQ_V2);
    }
}
