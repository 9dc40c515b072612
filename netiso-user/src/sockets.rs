//! Ending the use of revoked addresses: the sockets of a container that still use an address
//! it no longer owns are destroyed with sock_diag's SOCK_DESTROY (what `ss -K` does), so a
//! socket bound or connected while the container owned the address cannot go on using it.
//!
//! A small raw implementation over a NETLINK_SOCK_DIAG socket (no netlink crate covers
//! SOCK_DESTROY and the cgroup filter): dump the TCP and UDP sockets of both families whose
//! cgroup (the cgroup the socket was created in) is one of the container's (an in-kernel
//! bytecode filter, so only the container's sockets cross to user space, however many the
//! host has), keep those whose local address is one of the revoked ones (an IPv4 address
//! also in its v4-mapped form on AF_INET6 sockets), and destroy each by its identity and
//! cookie. TCP sockets in every state are aborted
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
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_CGROUP_COND: u8 = 13;
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

/// The bytecode "the socket's cgroup is one of `cgroups`", as an INET_DIAG_REQ_BYTECODE
/// attribute (None when there are too many for one attribute: the caller filters itself).
///
/// The kernel checks a program by following its `yes` jumps only, so an "or" is written the
/// way `ss` writes it: each condition's `yes` goes to a JMP whose `no` jumps to the end
/// (accept), its `no` goes to the next condition; the last condition's `no` jumps past the
/// end (reject).
fn cgroup_filter(cgroups: &[u64]) -> Option<Vec<u8>> {
    const COND: usize = 4 + 8; // struct inet_diag_bc_op + u64 cgroup id
    const JMP: usize = 4;
    if cgroups.is_empty() {
        return None;
    }
    let len = cgroups.len() * (COND + JMP) - JMP;
    if 4 + len > usize::from(u16::MAX) {
        return None;
    }
    let mut bc = Vec::with_capacity(len);
    for (i, id) in cgroups.iter().enumerate() {
        let left = len - bc.len();
        let last = i + 1 == cgroups.len();
        // struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }
        bc.push(INET_DIAG_BC_CGROUP_COND);
        bc.push(COND as u8);
        let no = if last { left + 4 } else { COND + JMP };
        bc.extend_from_slice(&(no as u16).to_ne_bytes());
        bc.extend_from_slice(&id.to_ne_bytes());
        if !last {
            // JMP: `no` is always taken; to the end of the program.
            let left = len - bc.len();
            bc.push(INET_DIAG_BC_JMP);
            bc.push(JMP as u8);
            bc.extend_from_slice(&(left as u16).to_ne_bytes());
        }
    }
    let mut attr = Vec::with_capacity(4 + bc.len());
    attr.extend_from_slice(&((4 + bc.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    attr.extend_from_slice(&bc);
    Some(attr)
}

/// The local address of an inet_diag_msg payload (v4-mapped IPv6 as IPv4).
fn local_of(msg: &[u8]) -> Option<IpAddr> {
    // idiag_family, then struct inet_diag_sockid at 4: sport, dport, src[16] at 8.
    let src: [u8; 16] = msg.get(8..24)?.try_into().ok()?;
    match i32::from(msg[0]) {
        libc::AF_INET => Some(IpAddr::from([src[0], src[1], src[2], src[3]])),
        libc::AF_INET6 => {
            let a = std::net::Ipv6Addr::from(src);
            Some(a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4))
        }
        _ => None,
    }
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

/// The sockets of `cgroups` whose local address is one of `ips`: one dump per family and
/// protocol, filtered by cgroup in the kernel and by address here, however many addresses.
fn find<S: std::hash::BuildHasher>(
    diag: &mut Diag,
    ips: &HashSet<IpAddr>,
    cgroups: &HashSet<u64, S>,
) -> io::Result<Vec<Found>> {
    let ids: Vec<u64> = cgroups.iter().copied().collect();
    let filter = cgroup_filter(&ids);
    let mut families = Vec::new();
    if ips.iter().any(IpAddr::is_ipv4) {
        families.push(libc::AF_INET as u8);
    }
    // AF_INET6 sockets can use an IPv4 address too (v4-mapped).
    families.push(libc::AF_INET6 as u8);
    let mut out = Vec::new();
    for family in families {
        for protocol in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
            let mut payload = request(family, protocol, &[0; SOCKID]);
            if let Some(f) = &filter {
                payload.extend_from_slice(f);
            }
            let seq = diag.send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &payload)?;
            let err = diag.recv(seq, |msg| {
                if msg.len() < DIAG_MSG {
                    return;
                }
                let ours = cgroup_of(msg).is_some_and(|cg| cgroups.contains(&cg));
                if ours && local_of(msg).is_some_and(|a| ips.contains(&a)) {
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
    let ips: HashSet<IpAddr> = ips.iter().copied().collect();
    let mut diag = Diag::open()?;
    let mut done = HashSet::new();
    for _pass in 0..2 {
        for s in find(&mut diag, &ips, cgroups)? {
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
    Ok(done.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel's audit (inet_diag_bc_audit) checks: following `yes` jumps walks
    /// every op and lands exactly on the end; every `no` lands on an op boundary of that
    /// walk, or exactly on the end, or 4 past it.
    #[test]
    fn cgroup_filter_passes_the_kernel_audit_and_runs_as_an_or() {
        for ids in [vec![7u64], vec![7, 8], vec![1, 2, 3, 4, 5]] {
            let attr = cgroup_filter(&ids).unwrap();
            let bc = &attr[4..];
            assert_eq!(
                usize::from(u16::from_ne_bytes([attr[0], attr[1]])),
                attr.len()
            );
            let mut bounds = vec![0];
            let mut at = 0;
            while at < bc.len() {
                at += usize::from(bc[at + 1]);
                bounds.push(at);
            }
            assert_eq!(at, bc.len(), "{ids:?}: the yes chain ends on the end");
            for &b in &bounds[..bounds.len() - 1] {
                let no = usize::from(u16::from_ne_bytes([bc[b + 2], bc[b + 3]]));
                let to = b + no;
                assert!(
                    bounds.contains(&to) || to == bc.len() + 4,
                    "{ids:?}: no at {b} lands on {to}"
                );
            }
            // Run it: accepts exactly the listed ids.
            let run = |cg: u64| {
                let mut at = 0usize;
                while at < bc.len() {
                    let (code, yes) = (bc[at], usize::from(bc[at + 1]));
                    let no = usize::from(u16::from_ne_bytes([bc[at + 2], bc[at + 3]]));
                    let ok = match code {
                        INET_DIAG_BC_JMP => false,
                        INET_DIAG_BC_CGROUP_COND => {
                            u64::from_ne_bytes(bc[at + 4..at + 12].try_into().unwrap()) == cg
                        }
                        _ => unreachable!(),
                    };
                    at += if ok { yes } else { no };
                }
                at == bc.len()
            };
            for cg in 0..10 {
                assert_eq!(run(cg), ids.contains(&cg), "{ids:?}: cgroup {cg}");
            }
        }
        assert!(cgroup_filter(&[]).is_none());
        assert!(
            cgroup_filter(&vec![1; 5000]).is_none(),
            "too long for one attribute"
        );
    }

    #[test]
    fn local_addresses_are_read_v4_mapped_as_ipv4() {
        let mut msg = vec![0u8; DIAG_MSG];
        msg[0] = libc::AF_INET as u8;
        msg[8..12].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(local_of(&msg), Some("192.0.2.1".parse().unwrap()));
        msg[0] = libc::AF_INET6 as u8;
        let mapped: std::net::Ipv6Addr = "::ffff:192.0.2.1".parse().unwrap();
        msg[8..24].copy_from_slice(&mapped.octets());
        assert_eq!(local_of(&msg), Some("192.0.2.1".parse().unwrap()));
        let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        msg[8..24].copy_from_slice(&v6.octets());
        assert_eq!(local_of(&msg), Some(IpAddr::V6(v6)));
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
