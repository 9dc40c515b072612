//! netiso-probe: performs socket operations from inside a network namespace and cgroup and
//! prints one JSON line per step, so tests see exactly what a containerized process sees.
//!
//! Usage: netiso-probe [--netns PATH] [--cgroup DIR] STEP...
//! Each STEP is one argument, an operation and its operands separated by spaces:
//!   socket tcp4|tcp6|udp4|udp6|ping4|ping6|raw4|raw6|rawip4|sctp4|mptcp4|udplite4|l2tp4
//!   v6only 0|1            bind ADDR            bind-unspec PORT      name
//!   connect ADDR          listen               accept                send
//!   sendto ADDR           sendmsg ADDR         sendmmsg ADDR         sendto-pktinfo ADDR SRC
//!   sticky-pktinfo SRC    recvfrom             serve TEXT (answer every connection with TEXT)
//!   recv (value: the text received on a connected socket, trimmed)
//!   join-cgroup DIR       wait (until stdin closes)
//!   timeout MS            spoof-udp4 SRC ADDR (IPPROTO_RAW socket: hand-made IPv4/UDP packet)
//!   packet-send IFACE HEX (AF_PACKET socket: send the Ethernet frame HEX out of IFACE)
//!   tc-run PIN HEX        (BPF_PROG_TEST_RUN of the TC program pinned at PIN on
//!                          frame HEX; value: the program's return value)
//! ADDR is ip:port or [ip6]:port. The probe stops at the first failing step.
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
            "sctp4" => (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
            "mptcp4" => (libc::AF_INET, libc::SOCK_STREAM, 262),
            "udplite4" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE),
            "l2tp4" => (libc::AF_INET, libc::SOCK_DGRAM, 115),
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
        let sa = SockaddrStorage::from(parse(addr)?);
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
        let sa = SockaddrStorage::from(parse(addr)?);
        socket::connect(self.fd()?, &sa)?;
        self.name()
    }

    fn listen(&self) -> Result<Option<String>, Errno> {
        check(unsafe { libc::listen(self.fd()?, 64) })?;
        self.name()
    }

    fn accept(&self) -> Result<Option<String>, Errno> {
        let c = socket::accept(self.fd()?)?;
        // SAFETY: fresh descriptor from accept(2).
        let c = unsafe { OwnedFd::from_raw_fd(c) };
        let peer: SockaddrStorage = socket::getpeername(c.as_raw_fd())?;
        Ok(Some(peer.to_string()))
    }

    fn sendto(&self, addr: &str) -> Result<Option<String>, Errno> {
        let sa = SockaddrStorage::from(parse(addr)?);
        socket::sendto(self.fd()?, b"probe", &sa, socket::MsgFlags::empty())?;
        self.name()
    }

    /// sendmsg(2) with an optional source-address control message.
    fn sendmsg(&self, addr: &str, src: Option<&str>) -> Result<Option<String>, Errno> {
        let sa = SockaddrStorage::from(parse(addr)?);
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
        let sa = SockaddrStorage::from(parse(addr)?);
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

    fn recvfrom(&self) -> Result<Option<String>, Errno> {
        let mut buf = [0u8; 2048];
        let (_, from) = socket::recvfrom::<SockaddrStorage>(self.fd()?, &mut buf)?;
        Ok(from.map(|f| f.to_string()))
    }

    /// Reads what a connected socket receives (one read) as text.
    fn recv(&self) -> Result<Option<String>, Errno> {
        let mut buf = [0u8; 2048];
        let n = socket::recv(self.fd()?, &mut buf, socket::MsgFlags::empty())?;
        Ok(Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned()))
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

fn join_cgroup(dir: &str) -> std::io::Result<()> {
    std::fs::write(format!("{dir}/cgroup.procs"), "0")
}

fn join_netns(path: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // Namespace and cgroup first, before any socket exists.
    while args.len() >= 2 && args[0].starts_with("--") {
        let (flag, value) = (args.remove(0), args.remove(0));
        let r = match flag.as_str() {
            "--netns" => join_netns(&value),
            "--cgroup" => join_cgroup(&value),
            _ => Err(std::io::Error::other(format!("unknown flag {flag}"))),
        };
        if let Err(e) = r {
            eprintln!("netiso-probe: {flag} {value}: {e}");
            std::process::exit(2);
        }
    }
    let mut p = Probe { fd: None };
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
            "recv" => p.recv(),
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
            _ => Err(Errno::EINVAL),
        };
        if !emit(op, r) {
            break;
        }
    }
}
