//! Ways out of a container that a network namespace would close, tried the way an attacker
//! would: from a process in the container's cgroup that is root without a single capability
//! (`NO_CAPS`), or an unprivileged user (`NOBODY`). Each case has a positive control showing
//! that the probe and the listener see what they should when nothing is wrong.
use netiso_testkit::{probe_last, with, Background, Netns, World, NOBODY, NO_CAPS};

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').expect("ip:port").1
}

/// A host (unregistered) TCP listener on the dual-stack wildcard and a UDP one on both
/// families' wildcards: what a container must never reach through a container's address.
struct HostWildcard {
    _tcp: Background,
    udp4: Background,
    udp6: Background,
}

impl HostWildcard {
    fn new(w: &World, port: u16) -> HostWildcard {
        let host = w.host_cgroup();
        let tcp = Background::spawn(
            &w.ns,
            &host,
            &[
                "socket tcp6",
                "v6only 0",
                &format!("bind [::]:{port}"),
                "listen",
                "serve host",
            ],
        );
        tcp.wait_for("serving");
        let udp = |kind: &str, addr: String| {
            let b = Background::spawn(
                &w.ns,
                &host,
                &[
                    &format!("socket {kind}"),
                    &format!("bind {addr}"),
                    "recvfrom",
                    "recvfrom",
                ],
            );
            b.wait_for("bind");
            b
        };
        HostWildcard {
            _tcp: tcp,
            udp4: udp("udp4", format!("0.0.0.0:{}", port + 1)),
            udp6: {
                let b = Background::spawn(
                    &w.ns,
                    &host,
                    &[
                        "socket udp6",
                        "v6only 1",
                        &format!("bind [::]:{}", port + 1),
                        "recvfrom",
                        "recvfrom",
                    ],
                );
                b.wait_for("bind");
                b
            },
        }
    }
}

// 1. A packet to an address a container owns (or to its private loopback) reaches only that
// container's sockets; without one of its own, TCP gets ECONNREFUSED and UDP a port
// unreachable at once, as in a namespace. Host addresses and listeners are not affected.
fn new_flows_to_a_container_address_reach_only_its_sockets() {
    let w = World::new("steer");
    let a = w.container("a", &["192.0.2.10", "2001:db8::10"], &[]);
    let b = w.container("b", &["192.0.2.20", "2001:db8::20"], &[]);
    let host = w.host_cgroup();
    let wild = HostWildcard::new(&w, 7700);

    // Controls: the host listener answers at host addresses, to the host and to containers.
    for cg in [&host, &a] {
        for dst in ["198.51.100.1:7700", "[2001:db8:1::1]:7700"] {
            let s = probe_last(
                &w.ns,
                cg,
                &with(NO_CAPS, &["socket tcp6", &format!("connect {}", v6(dst))]),
            );
            s.addr();
        }
    }

    // Not through a container's address: not for the container itself, another container,
    // or the host; not through the private loopback. Refused at once, never a timeout.
    let refused = [
        (&a, "192.0.2.10:7700"),
        (&a, "[2001:db8::10]:7700"),
        (&a, "127.0.0.1:7700"),
        (&b, "192.0.2.10:7700"),
        (&b, "[2001:db8::10]:7700"),
        (&host, "192.0.2.10:7700"),
        (&host, "[2001:db8::10]:7700"),
    ];
    for (cg, dst) in refused {
        let kind = if dst.starts_with('[') { "tcp6" } else { "tcp4" };
        for flags in [NO_CAPS, NOBODY] {
            let s = probe_last(
                &w.ns,
                cg,
                &with(
                    flags,
                    &[
                        &format!("socket {kind}"),
                        "timeout 5000",
                        &format!("connect {dst}"),
                    ],
                ),
            );
            assert_eq!(s.err(), "ECONNREFUSED", "{dst} from {}", cg.display());
        }
    }
    assert!(w.agent.counter("a", "lookup_refused") >= 14);

    // UDP: a connected socket learns of the port unreachable; the host listeners got nothing
    // (the control datagrams sent after arrive first).
    for (kind, dst) in [("udp4", "192.0.2.10:7701"), ("udp6", "[2001:db8::10]:7701")] {
        for cg in [&a, &b] {
            let s = probe_last(
                &w.ns,
                cg,
                &with(
                    NO_CAPS,
                    &[
                        &format!("socket {kind}"),
                        "timeout 5000",
                        &format!("connect {dst}"),
                        "send",
                        "recvfrom",
                    ],
                ),
            );
            assert_eq!(s.err(), "ECONNREFUSED", "udp {dst}");
        }
    }
    for (kind, dst) in [
        ("udp4", "198.51.100.1:7701"),
        ("udp6", "[2001:db8:1::1]:7701"),
    ] {
        probe_last(
            &w.ns,
            &host,
            &[&format!("socket {kind}"), &format!("sendto {dst}")],
        )
        .addr();
    }
    assert!(wild
        .udp4
        .wait_for("recvfrom")
        .addr()
        .starts_with("198.51.100.1:"));
    assert!(wild
        .udp6
        .wait_for("recvfrom")
        .addr()
        .starts_with("[2001:db8:1::1]:"));

    // With sockets of its own, the container is reached there: an explicit bind, a wildcard
    // bind (rewritten), and a listen() without bind (an ephemeral port on the wildcard).
    let own = Background::spawn(
        &w.ns,
        &a,
        &with(
            NO_CAPS,
            &["socket tcp4", "bind 0.0.0.0:7703", "listen", "serve a"],
        ),
    );
    own.wait_for("serving");
    for cg in [&b, &host] {
        let s = probe_last(&w.ns, cg, &["socket tcp4", "connect 192.0.2.10:7703"]);
        s.addr();
    }
    let auto = Background::spawn(
        &w.ns,
        &a,
        &with(
            NO_CAPS,
            &["socket tcp6", "v6only 0", "listen", "serve auto"],
        ),
    );
    let port = port_of(auto.wait_for("serving").addr()).to_owned();
    for dst in [
        format!("192.0.2.10:{port}"),
        format!("[2001:db8::10]:{port}"),
    ] {
        let kind = if dst.starts_with('[') { "tcp6" } else { "tcp4" };
        probe_last(
            &w.ns,
            &b,
            &[&format!("socket {kind}"), &format!("connect {dst}")],
        )
        .addr();
    }
    // The private loopback: only the container's own listener on it.
    let lo = Background::spawn(
        &w.ns,
        &a,
        &with(
            NO_CAPS,
            &["socket tcp4", "bind 127.0.0.1:7702", "listen", "serve lo"],
        ),
    );
    lo.wait_for("serving");
    probe_last(
        &w.ns,
        &a,
        &with(NO_CAPS, &["socket tcp4", "connect 127.0.0.1:7702"]),
    )
    .addr();
    let s = probe_last(
        &w.ns,
        &b,
        &with(NO_CAPS, &["socket tcp4", "connect 127.0.0.1:7702"]),
    );
    assert_eq!(s.err(), "ECONNREFUSED", "b's 127.0.0.1 is b's own");
}

/// "[v6]:port" as is, "v4:port" as its v4-mapped form (for a tcp6 socket).
fn v6(dst: &str) -> String {
    if dst.starts_with('[') {
        dst.to_owned()
    } else {
        format!(
            "[::ffff:{}]:{}",
            dst.rsplit_once(':').unwrap().0,
            port_of(dst)
        )
    }
}

/// A world with a wire: the test namespace `w.ns` is joined to a peer namespace by a veth,
/// 192.0.2.1/24 here, so broadcasts and multicasts have a way out (and a way back in).
fn wired(tag: &str) -> (World, Netns) {
    let w = World::new(tag);
    let peer = Netns::new(&format!("{tag}-p"));
    w.ns.veth("nb0", &["192.0.2.1/24"], &peer, "nb1", &["192.0.2.2/24"]);
    w.ns.ip(&["route", "add", "224.0.0.0/4", "dev", "nb0"]);
    // Ping sockets for every group.
    w.ns.sysctl("net.ipv4.ping_group_range", "0 2147483647");
    (w, peer)
}

// 2. The kernel copies an IPv4 broadcast or multicast for local delivery before cgroup egress
// runs, and the copy has no socket: a ping socket bound to another container's address (ping
// bind runs no cgroup hook) got its foreign source to local listeners. The copy carries the
// sender's mark and is dropped when its source is not the sender's.
fn loopback_copies_of_broadcasts_keep_their_source() {
    let (w, _peer) = wired("bcast");
    let a = w.container("a", &["192.0.2.10"], &[]);
    w.container("b", &["192.0.2.20"], &[]);
    let host = w.host_cgroup();
    for dst in ["192.0.2.255", "255.255.255.255", "224.0.0.1"] {
        let listener =
            Background::spawn(&w.ns, &host, &["socket rawicmp4", "recv-icmp", "recv-icmp"]);
        listener.wait_for("socket");
        // Attack: a ping socket of a bound to b's address.
        let s = probe_last(
            &w.ns,
            &a,
            &with(
                NOBODY,
                &[
                    "socket ping4",
                    "bind 192.0.2.20:0",
                    "broadcast",
                    &format!("ping {dst}:0"),
                ],
            ),
        );
        assert!(!s.ok, "the send from b's address went out ({dst})");
        // Control: the same from a's own address is seen.
        probe_last(
            &w.ns,
            &a,
            &with(
                NOBODY,
                &[
                    "socket ping4",
                    "bind 192.0.2.10:0",
                    "broadcast",
                    &format!("ping {dst}:0"),
                ],
            ),
        )
        .done();
        let first = listener.wait_for("recv-icmp");
        assert_eq!(
            first.addr(),
            format!("192.0.2.10>{dst} 8"),
            "the first copy a listener saw"
        );
    }
    assert!(w.agent.counter("a", "egress_dropped") >= 3);
}

// 2b. With the interface programs attached, the copy is also stopped on its way to the
// kernel's own ICMP, which would otherwise answer b's address.
fn broadcast_pings_from_a_foreign_address_get_no_answer() {
    let (w, _peer) = wired("bcast-tc");
    // The kernel answering broadcast pings (not the default): the worst case.
    w.ns.sysctl("net.ipv4.icmp_echo_ignore_broadcasts", "0");
    let a = w.container("a", &["192.0.2.10"], &[]);
    w.container("b", &["192.0.2.20"], &[]);
    w.agent.cli(&["iface", "add", "nb0"]).ok();
    let host = w.host_cgroup();
    let listener = Background::spawn(
        &w.ns,
        &host,
        &[
            "socket rawicmp4",
            "recv-icmp",
            "recv-icmp",
            "recv-icmp",
            "recv-icmp",
        ],
    );
    listener.wait_for("socket");
    let attack = probe_last(
        &w.ns,
        &a,
        &with(
            NOBODY,
            &[
                "socket ping4",
                "bind 192.0.2.20:0",
                "broadcast",
                "ping 192.0.2.255:0",
            ],
        ),
    );
    assert!(!attack.ok);
    probe_last(
        &w.ns,
        &a,
        &with(
            NOBODY,
            &[
                "socket ping4",
                "bind 192.0.2.10:0",
                "broadcast",
                "ping 192.0.2.255:0",
            ],
        ),
    )
    .done();
    // The control's request, then the kernel's reply to a: nothing for b in between.
    assert_eq!(
        listener.wait_for("recv-icmp").addr(),
        "192.0.2.10>192.0.2.255 8"
    );
    let reply = listener.wait_for("recv-icmp");
    assert!(reply.addr().ends_with(">192.0.2.10 0"), "{reply:?}");
}

/// An in6_pktinfo naming `addr`, as hex.
fn pktinfo6(addr: &str) -> String {
    let a: std::net::Ipv6Addr = addr.parse().unwrap();
    let mut b = a.octets().to_vec();
    b.extend_from_slice(&0u32.to_ne_bytes());
    netiso_testkit::craft::to_hex(&b)
}

/// A segment routing header through `segments`, as hex (what `rthdr` sets natively).
fn srh6(segments: &[&str]) -> String {
    let n = segments.len() as u8;
    let mut h = vec![0, 2 * n, 4, n - 1, n - 1, 0, 0, 0];
    for s in segments.iter().rev() {
        h.extend_from_slice(&s.parse::<std::net::Ipv6Addr>().unwrap().octets());
    }
    netiso_testkit::craft::to_hex(&h)
}

const IPPROTO_IPV6: &str = "41";
const IPV6_PKTINFO: &str = "50";
const IPV6_RTHDR: &str = "57";

// 3 and 4. IPv6 routing headers put destinations on the wire that no hook saw; the sockopt
// hook refuses IPV6_RTHDR, and the 32-bit compat setsockopt (int 0x80, direct or through
// socketcall), which skips that hook, gets no further: a container's packets carrying a
// routing header are dropped at egress. The same entry accepts IPV6_PKTINFO naming another
// container's address; the packets never leave with it.
fn routing_headers_and_compat_sockopts_get_nothing_out() {
    let w = World::new("rthdr");
    let a = w.container("a", &["2001:db8::10"], &[]);
    w.container("b", &["2001:db8::20"], &[]);
    let host = w.host_cgroup();
    let listener = Background::spawn(
        &w.ns,
        &host,
        &[
            "socket udp6",
            "bind [2001:db8:1::1]:7900",
            "recvfrom",
            "recvfrom",
            "recvfrom",
        ],
    );
    listener.wait_for("bind");
    let srh = srh6(&["2001:db8:1::1", "::1"]);
    let native = probe_last(
        &w.ns,
        &a,
        &with(NO_CAPS, &["socket udp6", "rthdr 2001:db8:1::1 ::1"]),
    );
    assert_eq!(native.err(), "EPERM", "IPV6_RTHDR through the hook");
    let before = w.agent.counter("a", "header_dropped");
    for how in ["direct", "socketcall"] {
        // The compat entry really runs: the option is accepted ...
        let set = format!("compat-setsockopt {how} {IPPROTO_IPV6} {IPV6_RTHDR} {srh}");
        let s = probe_last(
            &w.ns,
            &a,
            &with(
                NO_CAPS,
                &["socket udp6", &set, "sendto [2001:db8:1::1]:7900"],
            ),
        );
        // ... and the packet carrying the header is dropped on its way out.
        assert_eq!(s.op, "sendto", "{s:?}");
        assert_eq!(
            s.err(),
            "EPERM",
            "{how}: a packet with a routing header left"
        );
        let foreign = format!(
            "compat-setsockopt {how} {IPPROTO_IPV6} {IPV6_PKTINFO} {}",
            pktinfo6("2001:db8::20")
        );
        let s = probe_last(
            &w.ns,
            &a,
            &with(
                NO_CAPS,
                &["socket udp6", &foreign, "sendto [2001:db8:1::1]:7900"],
            ),
        );
        // Accepted there, yet no datagram leaves with b's source: dropped (the send may still
        // report success), or sent from a's own address (6.18 ignores a sticky IPV6_PKTINFO
        // for the source). Every datagram the listener gets below must be a's.
        assert_eq!(s.op, "sendto", "{s:?}");
        // Control: the compat entry with a's own address works end to end.
        let own = format!(
            "compat-setsockopt {how} {IPPROTO_IPV6} {IPV6_PKTINFO} {}",
            pktinfo6("2001:db8::10")
        );
        probe_last(
            &w.ns,
            &a,
            &with(
                NO_CAPS,
                &["socket udp6", &own, "sendto [2001:db8:1::1]:7900"],
            ),
        )
        .addr();
        assert!(
            listener
                .wait_for("recvfrom")
                .addr()
                .starts_with("[2001:db8::10]:"),
            "{how}: the first datagram the listener got"
        );
    }
    assert!(w.agent.counter("a", "header_dropped") >= before + 2);
}

netiso_testkit::privileged_tests![
    new_flows_to_a_container_address_reach_only_its_sockets,
    loopback_copies_of_broadcasts_keep_their_source,
    broadcast_pings_from_a_foreign_address_get_no_answer,
    routing_headers_and_compat_sockopts_get_nothing_out,
];
