//! netiso-probe: performs socket operations from inside a network namespace and cgroup and
//! prints one JSON line per step, so tests see exactly what a containerized process sees.
//!
//! Usage: netiso-probe [--netns PATH] [--cgroup DIR] [--caps container|none] [--uid N] STEP...
//! `--caps container` drops CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_BPF and
//! CAP_PERFMON from every set (root as a container runtime leaves it, the threat model's
//! attacker), `--caps none` drops every capability, and `--uid N` becomes uid and gid N with
//! no supplementary groups: all after joining the namespace and the cgroup, before any step.
//! Each STEP is one argument, an operation and its operands separated by spaces:
//!   socket tcp4|tcp6|udp4|udp6|ping4|ping6|raw4|raw6|rawip4|rawicmp4|rawicmp6|sctp4|mptcp4|
//!          udplite4|l2tp4|unix-stream|unix-dgram
//!   v6only 0|1            bind ADDR            bind-unspec PORT      name
//!   connect ADDR          listen               accept                send
//!   sendto ADDR           sendmsg ADDR         sendmmsg ADDR         sendto-pktinfo ADDR SRC
//!   sticky-pktinfo SRC    recvfrom             serve TEXT (answer every connection with TEXT)
//!   join-cgroup DIR       wait (until stdin closes)   pause (until a line on stdin)
//!   recv (read from a connected socket; value: the text)
//!   recv-held (read from the connection the last `accept` took and kept open)
//!   bind-loop ADDR        (bind fresh TCP sockets to ADDR until stdin closes;
//!                          value: "tries successes")
//!   timeout MS            spoof-udp4 SRC ADDR (IPPROTO_RAW socket: hand-made IPv4/UDP packet)
//!   packet-send IFACE HEX (AF_PACKET socket: send the Ethernet frame HEX out of IFACE)
//!   tc-run PIN HEX        (BPF_PROG_TEST_RUN of the TC program pinned at PIN on
//!                          frame HEX; value: the program's return value)
//!   broadcast             (SO_BROADCAST)       ping ADDR (ICMP echo request on a ping socket)
//!   recv-icmp             (raw ICMPv4 socket: value "SRC>DST TYPE")
//!   rthdr SEG...          (IPV6_RTHDR: segment routing header through SEG..., in travel order)
//!   compat-setsockopt direct|socketcall LEVEL NAME HEX
//!                         (setsockopt through the 32-bit entry, int 0x80: no cgroup hook)
//! ADDR is ip:port, [ip6]:port, @NAME (an abstract unix name) or /PATH (a unix path). The
//! probe stops at the first failing step.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use nix::{
    errno::Errno,
    sys::socket::{self, SockaddrLike, SockaddrStorage},
};
use serde_json::json;

fn emit(op: &str, r: Result<Option<String>, Errno>) -> bool {
    let line = match &r {
        Ok(v) => json!({"op": op, "ok": true, "value": v}),
        Err(e) => json!({"op": op, "ok": false, "errno": format!("{e:?}")}),
    };
    println!("{line}");
    let _ = std::io::stdout().flush();
    r.is_ok()
}

fn parse(addr: &str) -> Result<SocketAddr, Errno> {
    addr.parse().map_err(|_| Errno::EINVAL)
}

/// ADDR as a socket address: ip:port, [ip6]:port, @NAME (abstract unix) or /PATH (unix).
fn sockaddr(addr: &str) -> Result<SockaddrStorage, Errno> {
    let unix = if let Some(name) = addr.strip_prefix('@') {
        socket::UnixAddr::new_abstract(name.as_bytes())?
    } else if addr.starts_with('/') {
        socket::UnixAddr::new(addr)?
    } else {
        return parse(addr).map(SockaddrStorage::from);
    };
    // SAFETY: a valid sockaddr_un of the given length.
    unsafe { SockaddrStorage::from_raw(unix.as_ptr().cast(), Some(unix.len())) }
        .ok_or(Errno::EINVAL)
}

fn check(rc: libc::c_int) -> Result<libc::c_int, Errno> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc)
    }
}

fn ip_of(s: &str) -> Result<IpAddr, Errno> {
    s.parse().map_err(|_| Errno::EINVAL)
}

struct Probe {
    fd: Option<OwnedFd>,
    /// Connections `accept` took, kept open until the probe exits.
    held: Vec<OwnedFd>,
}

impl Probe {
    fn fd(&self) -> Result<RawFd, Errno> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd).ok_or(Errno::EBADF)
    }

    fn socket(&mut self, kind: &str) -> Result<Option<String>, Errno> {
        let (family, ty, proto) = match kind {
            "tcp4" => (libc::AF_INET, libc::SOCK_STREAM, 0),
            "tcp6" => (libc::AF_INET6, libc::SOCK_STREAM, 0),
            "udp4" => (libc::AF_INET, libc::SOCK_DGRAM, 0),
            "udp6" => (libc::AF_INET6, libc::SOCK_DGRAM, 0),
            "ping4" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
            "ping6" => (libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6),
            "raw4" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP),
            "raw6" => (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_UDP),
            "rawip4" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW),
            "rawicmp4" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
            "rawicmp6" => (libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
            "sctp4" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
            "mptcp4" => (libc::AF_INET, libc::SOCK_STREAM, 262),
            "udplite4" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
            "l2tp4" => (libc::AF_INET, libc::SOCK_DGRAM, 115),
            "unix-stream" => (libc::AF_UNIX, libc::SOCK_STREAM, 0),
            "unix-dgram" => (libc::AF_UNIX, libc::SOCK_DGRAM, 0),
            _ => return Err(Errno::EINVAL),
        };
        let fd = check(unsafe { libc::socket(family, ty, proto) })?;
        // SAFETY: fresh descriptor from socket(2).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Every blocking step gives up after 10 s instead of hanging a test.
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const tv).cast::<libc::c_void>(),
                    size_of::<libc::timeval>() as u32,
                )
            };
        }
        let one: libc::c_int = 1;
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast::<libc::c_void>(),
                4,
            )
        };
        self.fd = Some(owned);
        Ok(None)
    }

    /// Sets the send and receive timeouts of the socket (milliseconds).
    fn timeout(&self, ms: &str) -> Result<Option<String>, Errno> {
        let ms: i64 = ms.parse().map_err(|_| Errno::EINVAL)?;
        let tv = libc::timeval {
            tv_sec: ms / 1000,
            tv_usec: (ms % 1000) * 1000,
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            check(unsafe {
                libc::setsockopt(
                    self.fd()?,
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const tv).cast::<libc::c_void>(),
                    size_of::<libc::timeval>() as u32,
                )
            })?;
        }
        Ok(None)
    }

    /// Sends a hand-made IPv4/UDP packet with source SRC through an IPPROTO_RAW socket.
    fn spoof_udp4(&self, src: &str, dst: &str) -> Result<Option<String>, Errno> {
        let IpAddr::V4(s) = ip_of(src)? else {
            return Err(Errno::EINVAL);
        };
        let SocketAddr::V4(d) = parse(dst)? else {
            return Err(Errno::EINVAL);
        };
        let payload = b"spoof";
        let total = 20 + 8 + payload.len();
        let mut pkt = vec![0u8; total];
        pkt[0] = 0x45;
        pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        pkt[8] = 64;
        pkt[9] = libc::IPPROTO_UDP as u8;
        pkt[12..16].copy_from_slice(&s.octets());
        pkt[16..20].copy_from_slice(&d.ip().octets());
        pkt[20..22].copy_from_slice(&7777u16.to_be_bytes());
        pkt[22..24].copy_from_slice(&d.port().to_be_bytes());
        pkt[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        pkt[28..].copy_from_slice(payload); // UDP checksum 0: none, valid for IPv4
        let sa = SockaddrStorage::from(SocketAddr::V4(d));
        socket::sendto(self.fd()?, &pkt, &sa, socket::MsgFlags::empty())?;
        Ok(None)
    }

    fn setsockopt_int(&self, level: i32, name: i32, v: i32) -> Result<Option<String>, Errno> {
        let fd = self.fd()?;
        check(unsafe {
            libc::setsockopt(fd, level, name, (&raw const v).cast::<libc::c_void>(), 4)
        })?;
        Ok(None)
    }

    fn name(&self) -> Result<Option<String>, Errno> {
        let a: SockaddrStorage = socket::getsockname(self.fd()?)?;
        Ok(Some(a.to_string()))
    }

    fn bind(&self, addr: &str) -> Result<Option<String>, Errno> {
        let sa = sockaddr(addr)?;
        socket::bind(self.fd()?, &sa)?;
        self.name()
    }

    fn bind_unspec(&self, port: &str) -> Result<Option<String>, Errno> {
        let port: u16 = port.parse().map_err(|_| Errno::EINVAL)?;
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_UNSPEC as u16;
        sin.sin_port = port.to_be();
        check(unsafe {
            libc::bind(
                self.fd()?,
                (&raw const sin).cast::<libc::sockaddr>(),
                size_of_val(&sin) as u32,
            )
        })?;
        self.name()
    }

    fn connect(&self, addr: &str) -> Result<Option<String>, Errno> {
        let sa = sockaddr(addr)?;
        socket::connect(self.fd()?, &sa)?;
        self.name()
    }

    fn listen(&self) -> Result<Option<String>, Errno> {
        check(unsafe { libc::listen(self.fd()?, 64) })?;
        self.name()
    }

    fn accept(&mut self) -> Result<Option<String>, Errno> {
        let c = socket::accept(self.fd()?)?;
        // SAFETY: fresh descriptor from accept(2).
        let c = unsafe { OwnedFd::from_raw_fd(c) };
        let peer: SockaddrStorage = socket::getpeername(c.as_raw_fd())?;
        self.held.push(c);
        Ok(Some(peer.to_string()))
    }

    /// Reads from the connection the last `accept` took.
    fn recv_held(&self) -> Result<Option<String>, Errno> {
        let c = self.held.last().ok_or(Errno::EBADF)?;
        let mut buf = [0u8; 2048];
        let n = socket::recv(c.as_raw_fd(), &mut buf, socket::MsgFlags::empty())?;
        Ok(Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned()))
    }

    fn sendto(&self, addr: &str) -> Result<Option<String>, Errno> {
        let sa = sockaddr(addr)?;
        socket::sendto(self.fd()?, b"probe", &sa, socket::MsgFlags::empty())?;
        self.name()
    }

    /// sendmsg(2) with an optional source-address control message.
    fn sendmsg(&self, addr: &str, src: Option<&str>) -> Result<Option<String>, Errno> {
        let sa = sockaddr(addr)?;
        let iov = [std::io::IoSlice::new(b"probe")];
        let fd = self.fd()?;
        match src.map(ip_of).transpose()? {
            None => socket::sendmsg(fd, &iov, &[], socket::MsgFlags::empty(), Some(&sa))?,
            Some(IpAddr::V4(s)) => {
                let mut pi: libc::in_pktinfo = unsafe { std::mem::zeroed() };
                pi.ipi_spec_dst.s_addr = u32::from_ne_bytes(s.octets());
                let cmsg = [socket::ControlMessage::Ipv4PacketInfo(&pi)];
                socket::sendmsg(fd, &iov, &cmsg, socket::MsgFlags::empty(), Some(&sa))?
            }
            Some(IpAddr::V6(s)) => {
                let mut pi: libc::in6_pktinfo = unsafe { std::mem::zeroed() };
                pi.ipi6_addr.s6_addr = s.octets();
                let cmsg = [socket::ControlMessage::Ipv6PacketInfo(&pi)];
                socket::sendmsg(fd, &iov, &cmsg, socket::MsgFlags::empty(), Some(&sa))?
            }
        };
        self.name()
    }

    fn sendmmsg(&self, addr: &str) -> Result<Option<String>, Errno> {
        let sa = sockaddr(addr)?;
        let mut buf = *b"probe";
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast::<libc::c_void>(),
            iov_len: buf.len(),
        };
        let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
        for m in &mut msgs {
            m.msg_hdr.msg_name = sa.as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = sa.len();
            m.msg_hdr.msg_iov = &raw mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let n = check(unsafe { libc::sendmmsg(self.fd()?, msgs.as_mut_ptr(), 2, 0) })?;
        if n != 2 {
            return Err(Errno::EIO);
        }
        self.name()
    }

    fn send(&self) -> Result<Option<String>, Errno> {
        socket::send(self.fd()?, b"probe", socket::MsgFlags::empty())?;
        self.name()
    }

    fn recv(&self) -> Result<Option<String>, Errno> {
        let mut buf = [0u8; 2048];
        let n = socket::recv(self.fd()?, &mut buf, socket::MsgFlags::empty())?;
        Ok(Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned()))
    }

    fn sticky_pktinfo(&self, src: &str) -> Result<Option<String>, Errno> {
        let IpAddr::V6(s) = ip_of(src)? else {
            return Err(Errno::EINVAL);
        };
        let mut pi: libc::in6_pktinfo = unsafe { std::mem::zeroed() };
        pi.ipi6_addr.s6_addr = s.octets();
        check(unsafe {
            libc::setsockopt(
                self.fd()?,
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                (&raw const pi).cast::<libc::c_void>(),
                size_of_val(&pi) as u32,
            )
        })?;
        Ok(None)
    }

    /// Sends an ICMP echo request (on a ping socket; the kernel fills in id and checksum).
    fn ping(&self, addr: &str) -> Result<Option<String>, Errno> {
        let sa = parse(addr)?;
        let ty = if sa.is_ipv4() { 8 } else { 128 };
        let echo = [ty, 0, 0, 0, 0, 0, 0, 1, b'n', b'i'];
        socket::sendto(
            self.fd()?,
            &echo,
            &SockaddrStorage::from(sa),
            socket::MsgFlags::empty(),
        )?;
        Ok(None)
    }

    /// setsockopt(IPV6_RTHDR) with a segment routing header (type 4) through `segments`, the
    /// last one first, as the kernel wants them.
    fn rthdr(&self, segments: &[&str]) -> Result<Option<String>, Errno> {
        let srh = srh(segments)?;
        check(unsafe {
            libc::setsockopt(
                self.fd()?,
                libc::IPPROTO_IPV6,
                libc::IPV6_RTHDR,
                srh.as_ptr().cast::<libc::c_void>(),
                srh.len() as u32,
            )
        })?;
        Ok(None)
    }

    /// setsockopt through the 32-bit compat entry (`int 0x80`), which skips the cgroup sockopt
    /// hook: `how` is `direct` (the setsockopt syscall) or `socketcall`.
    fn compat_setsockopt(
        &self,
        how: &str,
        level: &str,
        name: &str,
        value: &[u8],
    ) -> Result<Option<String>, Errno> {
        let fd = self.fd()?;
        let level: i32 = level.parse().map_err(|_| Errno::EINVAL)?;
        let name: i32 = name.parse().map_err(|_| Errno::EINVAL)?;
        compat::setsockopt(how, fd, level, name, value)?;
        Ok(None)
    }

    /// Receives on a raw ICMPv4 socket (which gets the IP header): "SRC>DST TYPE".
    fn recv_icmp(&self) -> Result<Option<String>, Errno> {
        let mut buf = [0u8; 2048];
        let n = socket::recv(self.fd()?, &mut buf, socket::MsgFlags::empty())?;
        if n < 21 {
            return Err(Errno::EMSGSIZE);
        }
        let hl = usize::from(buf[0] & 0x0f) * 4;
        let src = std::net::Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let dst = std::net::Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]);
        let ty = buf.get(hl).copied().ok_or(Errno::EMSGSIZE)?;
        Ok(Some(format!("{src}>{dst} {ty}")))
    }

    fn recvfrom(&self) -> Result<Option<String>, Errno> {
        let mut buf = [0u8; 2048];
        let (_, from) = socket::recvfrom::<SockaddrStorage>(self.fd()?, &mut buf)?;
        Ok(from.map(|f| f.to_string()))
    }

    /// Answers every connection with `text` until the process is killed.
    fn serve(&self, text: &str) -> Result<Option<String>, Errno> {
        let fd = self.fd()?;
        emit("serving", Ok(self.name()?));
        loop {
            let c = match socket::accept(fd) {
                Ok(c) => c,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(e),
            };
            // SAFETY: fresh descriptor from accept(2).
            let mut stream = unsafe { std::net::TcpStream::from_raw_fd(c) };
            let _ = writeln!(stream, "{text}");
        }
    }
}

/// A type 4 (segment routing) header through `segments` (IPv6 addresses, in travel order).
fn srh(segments: &[&str]) -> Result<Vec<u8>, Errno> {
    let addrs = segments
        .iter()
        .map(|s| s.parse::<std::net::Ipv6Addr>().map_err(|_| Errno::EINVAL))
        .collect::<Result<Vec<_>, _>>()?;
    let n = u8::try_from(addrs.len()).map_err(|_| Errno::EINVAL)?;
    if n == 0 {
        return Err(Errno::EINVAL);
    }
    // next header (the kernel sets it), length in 8-byte units after the first 8 bytes,
    // type 4, segments left, last entry, flags, tag.
    let mut h = vec![0, 2 * n, 4, n - 1, n - 1, 0, 0, 0];
    for a in addrs.iter().rev() {
        h.extend_from_slice(&a.octets());
    }
    Ok(h)
}

/// The 32-bit compat system call entry, reached from this 64-bit process with `int 0x80`.
mod compat {
    use nix::errno::Errno;

    const NR_SOCKETCALL: u32 = 102;
    const NR_SETSOCKOPT: u32 = 366;
    const SYS_SETSOCKOPT: u32 = 14;

    /// A page below 4 GiB, where 32-bit pointers can reach.
    fn low_page() -> Result<*mut u8, Errno> {
        // SAFETY: an anonymous private mapping, owned by this short-lived process.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(p.cast())
    }

    /// One i386 system call; returns the kernel's result (negative errno on failure).
    fn int80(nr: u32, a: [u32; 5]) -> i32 {
        let ret: u32;
        // SAFETY: the i386 entry reads its arguments from these registers; rbx is reserved by
        // the compiler, hence the exchange around the trap. Pointer arguments point below
        // 4 GiB (see `low_page`).
        unsafe {
            core::arch::asm!(
                "xchg {b:e}, ebx",
                "int 0x80",
                "xchg {b:e}, ebx",
                b = inout(reg) a[0] => _,
                inlateout("eax") nr => ret,
                in("ecx") a[1],
                in("edx") a[2],
                in("esi") a[3],
                in("edi") a[4],
            );
        }
        ret as i32
    }

    pub fn setsockopt(
        how: &str,
        fd: i32,
        level: i32,
        name: i32,
        value: &[u8],
    ) -> Result<(), Errno> {
        if value.len() > 1024 {
            return Err(Errno::EINVAL);
        }
        let page = low_page()?;
        // SAFETY: `page` is a fresh 4096-byte mapping; the value fits in its first KiB.
        unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), page, value.len()) };
        let optval = page as usize as u32;
        let args = [
            fd as u32,
            level as u32,
            name as u32,
            optval,
            value.len() as u32,
        ];
        let rc = match how {
            "direct" => int80(NR_SETSOCKOPT, args),
            "socketcall" => {
                // The argument array goes to the second KiB of the same page.
                let bytes: Vec<u8> = args.iter().flat_map(|a| a.to_ne_bytes()).collect();
                // SAFETY: 20 bytes within the page, after the value.
                let argv = unsafe { page.add(2048) };
                // SAFETY: `argv` has room for `bytes`; the regions do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), argv, bytes.len()) };
                int80(
                    NR_SOCKETCALL,
                    [SYS_SETSOCKOPT, argv as usize as u32, 0, 0, 0],
                )
            }
            _ => return Err(Errno::EINVAL),
        };
        // SAFETY: unmapping the page mapped above.
        unsafe { libc::munmap(page.cast(), 4096) };
        if rc < 0 {
            Err(Errno::from_raw(-rc))
        } else {
            Ok(())
        }
    }
}

/// Drops every capability (bounding, ambient, effective, permitted, inheritable): a
/// container's root. Or, with `uid`, becomes that user (which drops them too).
fn drop_privileges(how: &str) -> std::io::Result<()> {
    if let Ok(uid) = how.parse::<u32>() {
        nix::unistd::setgroups(&[]).map_err(std::io::Error::from)?;
        let (u, g) = (
            nix::unistd::Uid::from_raw(uid),
            nix::unistd::Gid::from_raw(uid),
        );
        nix::unistd::setresgid(g, g, g).map_err(std::io::Error::from)?;
        return nix::unistd::setresuid(u, u, u).map_err(std::io::Error::from);
    }
    if how != "none" {
        return Err(std::io::Error::other("use --caps none or --uid N"));
    }
    for cap in 0..64 {
        // SAFETY: plain prctl calls on this process; caps beyond the kernel's last fail.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [0u32; 6]; // effective, permitted, inheritable, twice (64 bits)
                          // SAFETY: capset with a version-3 header and two zeroed data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends a raw Ethernet frame out of `iface` through an AF_PACKET socket, a path none of the
/// socket address hooks sees.
fn packet_send(iface: &str, hex: &str) -> Result<Option<String>, Errno> {
    let frame = netiso_testkit::craft::from_hex(hex).ok_or(Errno::EINVAL)?;
    let ifindex = nix::net::if_::if_nametoindex(iface)?;
    let fd = check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) })?;
    // SAFETY: fresh descriptor from socket(2).
    let _owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6.min(frame.len())]);
    let n = check(unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast::<libc::c_void>(),
            frame.len(),
            0,
            (&raw const sll).cast::<libc::sockaddr>(),
            size_of_val(&sll) as u32,
        ) as libc::c_int
    })?;
    Ok(Some(n.to_string()))
}

fn tc_run(pin: &str, hex: &str) -> Result<Option<String>, Errno> {
    let frame = netiso_testkit::craft::from_hex(hex).ok_or(Errno::EINVAL)?;
    netiso_testkit::bpf::run_pinned(std::path::Path::new(pin), &frame)
        .map(|r| Some(r.to_string()))
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Binds fresh TCP sockets to `addr` (each closed at once) until stdin closes; reports how
/// many binds were tried and how many succeeded. A forbidden-bind loop for the tests that
/// count bypasses.
fn bind_loop(addr: &str) -> Result<Option<String>, Errno> {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let sa = sockaddr(addr)?;
    let family = if parse(addr)?.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        flag.store(true, Ordering::SeqCst);
    });
    emit("looping", Ok(None));
    let (mut tries, mut ok) = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst) {
        let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM, 0) })?;
        // SAFETY: fresh descriptor from socket(2).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        tries += 1;
        if socket::bind(owned.as_raw_fd(), &sa).is_ok() {
            ok += 1;
        }
        // Tens of thousands of tries a second still catch any window the agent could open
        // (they last milliseconds); the pause keeps the loop from taking a whole core from
        // the tests running next to it.
        if tries % 100 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    Ok(Some(format!("{tries} {ok}")))
}

/// The capabilities a container must not have (capability.h numbers).
const FORBIDDEN_CAPS: [u32; 5] = [
    12, // CAP_NET_ADMIN
    13, // CAP_NET_RAW
    21, // CAP_SYS_ADMIN
    38, // CAP_PERFMON
    39, // CAP_BPF
];

/// Drops FORBIDDEN_CAPS from every capability set of this process.
fn drop_caps() -> std::io::Result<()> {
    const PR_CAPBSET_DROP: libc::c_int = 24;
    const PR_CAP_AMBIENT: libc::c_int = 47;
    const PR_CAP_AMBIENT_CLEAR_ALL: libc::c_ulong = 4;
    const VERSION_3: u32 = 0x2008_0522;
    for cap in FORBIDDEN_CAPS {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    // struct __user_cap_header_struct { u32 version; int pid; } and two
    // struct __user_cap_data_struct { u32 effective, permitted, inheritable; }.
    let mut header = [VERSION_3, 0u32];
    let mut data = [0u32; 6];
    // SAFETY: capget fills the two data structs we pass.
    if unsafe { libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for cap in FORBIDDEN_CAPS {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        for set in 0..3 {
            data[word * 3 + set] &= !bit;
        }
    }
    // SAFETY: capset reads the header and data we pass.
    if unsafe { libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn join_cgroup(dir: &str) -> std::io::Result<()> {
    std::fs::write(format!("{dir}/cgroup.procs"), "0")
}

fn join_netns(path: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Namespace and cgroup first, before any socket exists; privileges are shed after both.
    let mut shed: Vec<(String, String)> = Vec::new();
    while args.len() >= 2 && args[0].starts_with("--") {
        let (flag, value) = (args.remove(0), args.remove(0));
        let r = match flag.as_str() {
            "--netns" => join_netns(&value),
            "--cgroup" => join_cgroup(&value),
            "--caps" | "--uid" => {
                shed.push((flag.clone(), value.clone()));
                Ok(())
            }
            _ => Err(std::io::Error::other(format!("unknown flag {flag}"))),
        };
        if let Err(e) = r {
            eprintln!("netiso-probe: {flag} {value}: {e}");
            std::process::exit(2);
        }
    }
    // Capabilities before the uid: dropping them needs CAP_SETPCAP, which setuid takes away.
    shed.sort_by_key(|(flag, _)| flag != "--caps");
    for (flag, value) in shed {
        let r = match (flag.as_str(), value.as_str()) {
            ("--caps", "container") => drop_caps(),
            ("--caps", "none") => drop_privileges("none"),
            ("--caps", _) => Err(std::io::Error::other("use --caps container or --caps none")),
            _ => drop_privileges(&value),
        };
        if let Err(e) = r {
            eprintln!("netiso-probe: {flag} {value}: {e}");
            std::process::exit(2);
        }
    }
    let mut p = Probe {
        fd: None,
        held: Vec::new(),
    };
    for step in &args {
        let parts: Vec<&str> = step.split_whitespace().collect();
        let (op, rest) = (parts[0], &parts[1..]);
        let arg = |i: usize| rest.get(i).copied().ok_or(Errno::EINVAL);
        let r = match op {
            "socket" => arg(0).and_then(|k| p.socket(k)),
            "v6only" => arg(0).and_then(|v| {
                p.setsockopt_int(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, i32::from(v == "1"))
            }),
            "bind" => arg(0).and_then(|a| p.bind(a)),
            "bind-unspec" => arg(0).and_then(|a| p.bind_unspec(a)),
            "name" => p.name(),
            "connect" => arg(0).and_then(|a| p.connect(a)),
            "listen" => p.listen(),
            "accept" => p.accept(),
            "send" => p.send(),
            "sendto" => arg(0).and_then(|a| p.sendto(a)),
            "sendmsg" => arg(0).and_then(|a| p.sendmsg(a, None)),
            "sendmmsg" => arg(0).and_then(|a| p.sendmmsg(a)),
            "sendto-pktinfo" => arg(0).and_then(|a| arg(1).and_then(|s| p.sendmsg(a, Some(s)))),
            "timeout" => arg(0).and_then(|ms| p.timeout(ms)),
            "spoof-udp4" => arg(0).and_then(|a| arg(1).and_then(|d| p.spoof_udp4(a, d))),
            "sticky-pktinfo" => arg(0).and_then(|s| p.sticky_pktinfo(s)),
            "recvfrom" => p.recvfrom(),
            "recv-icmp" => p.recv_icmp(),
            "broadcast" => p.setsockopt_int(libc::SOL_SOCKET, libc::SO_BROADCAST, 1),
            "ping" => arg(0).and_then(|a| p.ping(a)),
            "rthdr" => p.rthdr(rest),
            "compat-setsockopt" => arg(0).and_then(|how| {
                let value = netiso_testkit::craft::from_hex(arg(3)?).ok_or(Errno::EINVAL)?;
                p.compat_setsockopt(how, arg(1)?, arg(2)?, &value)
            }),
            "packet-send" => arg(0).and_then(|i| arg(1).and_then(|h| packet_send(i, h))),
            "tc-run" => arg(0).and_then(|pin| arg(1).and_then(|h| tc_run(pin, h))),
            "serve" => p.serve(&rest.join(" ")),
            // Moves this process (and so the socket's user) to another cgroup mid-script.
            "join-cgroup" => arg(0).and_then(|d| {
                join_cgroup(d)
                    .map(|()| None)
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))
            }),
            "wait" => {
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
                Ok(None)
            }
            "pause" => {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                Ok(None)
            }
            "recv" => p.recv(),
            "recv-held" => p.recv_held(),
            "bind-loop" => arg(0).and_then(bind_loop),
            _ => Err(Errno::EINVAL),
        };
        if !emit(op, r) {
            break;
        }
    }
}
