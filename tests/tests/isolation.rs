//! The isolation contract (README "Isolation contract", numbered as there), checked against
//! real sockets in a namespace and cgroup subtree each test creates.
use netiso_testkit::{probe, probe_last, Background, World};

/// A container "c1" owning 192.0.2.10, 192.0.2.11, 2001:db8::10, 2001:db8::11 and a second
/// container "c2" owning 192.0.2.20 and 2001:db8::20.
fn two_containers(tag: &str) -> (World, std::path::PathBuf, std::path::PathBuf) {
    let w = World::new(tag);
    let c1 = w.container(
        "c1",
        &["192.0.2.10", "2001:db8::10", "192.0.2.11", "2001:db8::11"],
        &[],
    );
    let c2 = w.container("c2", &["192.0.2.20", "2001:db8::20"], &[]);
    (w, c1, c2)
}

fn ip_of(addr: &str) -> &str {
    // "192.0.2.10:7000" -> "192.0.2.10", "[2001:db8::10]:7000" -> "2001:db8::10"
    let host = addr.rsplit_once(':').unwrap().0;
    host.trim_start_matches('[').trim_end_matches(']')
}

// 1. bind to an owned address: allowed, port unchanged.
fn bind_to_owned_address_keeps_address_and_port() {
    let (w, c1, _) = two_containers("own");
    for (kind, addr) in [
        ("tcp4", "192.0.2.11:7001"),
        ("udp4", "192.0.2.10:7001"),
        ("tcp6", "[2001:db8::11]:7001"),
        ("udp6", "[2001:db8::10]:7001"),
    ] {
        let s = probe_last(
            &w.ns,
            &c1,
            &[&format!("socket {kind}"), &format!("bind {addr}")],
        );
        assert_eq!(s.addr(), addr, "{kind}");
    }
    let s = probe_last(
        &w.ns,
        &c1,
        &["socket tcp6", "v6only 0", "bind [::ffff:192.0.2.11]:7002"],
    );
    assert_eq!(s.addr(), "[::ffff:192.0.2.11]:7002");
}

// 2. wildcard binds become the primary address of the family.
fn wildcard_bind_is_rewritten_to_the_primary_address() {
    let (w, c1, _) = two_containers("wild");
    let cases = [
        (vec!["socket tcp4", "bind 0.0.0.0:7010"], "192.0.2.10:7010"),
        (vec!["socket udp4", "bind 0.0.0.0:7010"], "192.0.2.10:7010"),
        (vec!["socket tcp6", "bind [::]:7011"], "[2001:db8::10]:7011"),
        (vec!["socket udp6", "bind [::]:7011"], "[2001:db8::10]:7011"),
        (
            vec!["socket tcp6", "v6only 0", "bind [::ffff:0.0.0.0]:7012"],
            "[::ffff:192.0.2.10]:7012",
        ),
    ];
    for (steps, want) in cases {
        assert_eq!(probe_last(&w.ns, &c1, &steps).addr(), want, "{steps:?}");
    }
    // Port 0 still gets an ephemeral port, on the primary address.
    let s = probe_last(&w.ns, &c1, &["socket tcp4", "bind 0.0.0.0:0"]);
    assert_eq!(ip_of(s.addr()), "192.0.2.10");
    assert!(!s.addr().ends_with(":0"));

    // A v4-only container: `::` on a dual-stack socket becomes the v4-mapped primary, and a
    // v6-only socket has no usable address, so the bind is refused.
    w.agent.cli(&["container", "rm", "c2"]).ok();
    let v4 = w.container("v4only", &["192.0.2.20"], &[]);
    let s = probe_last(&w.ns, &v4, &["socket tcp6", "v6only 0", "bind [::]:7013"]);
    assert_eq!(s.addr(), "[::ffff:192.0.2.20]:7013");
    let s = probe_last(&w.ns, &v4, &["socket tcp6", "v6only 1", "bind [::]:7013"]);
    assert!(
        !s.ok,
        "a v6-only socket of a v4-only container must not bind"
    );

    // AF_UNSPEC + 0.0.0.0 is a wildcard bind to the kernel. The hook rewrites the address but
    // cannot change the family field, so the kernel refuses the result: never a wildcard.
    let s = probe_last(&w.ns, &c1, &["socket tcp4", "bind-unspec 7014"]);
    assert_eq!(s.err(), "EAFNOSUPPORT");
}

// 2, seen from outside: two containers can both listen on *:8080 and each is reached only at
// its own address.
fn two_containers_share_a_wildcard_port() {
    let (w, c1, c2) = two_containers("share");
    let host = w.host_cgroup();
    let a = Background::spawn(
        &w.ns,
        &c1,
        &["socket tcp4", "bind 0.0.0.0:8080", "listen", "accept"],
    );
    assert_eq!(a.wait_for("listen").addr(), "192.0.2.10:8080");
    let b = Background::spawn(
        &w.ns,
        &c2,
        &["socket tcp4", "bind 0.0.0.0:8080", "listen", "accept"],
    );
    assert_eq!(b.wait_for("listen").addr(), "192.0.2.20:8080");

    probe_last(&w.ns, &host, &["socket tcp4", "connect 192.0.2.20:8080"]).addr();
    b.wait_for("accept").addr();
    probe_last(&w.ns, &host, &["socket tcp4", "connect 192.0.2.10:8080"]).addr();
    a.wait_for("accept").addr();
    // c1 also owns 192.0.2.11, but its listener is on the primary only.
    let s = probe_last(&w.ns, &host, &["socket tcp4", "connect 192.0.2.11:8080"]);
    assert_eq!(s.err(), "ECONNREFUSED");
}

// 3. binds to anything not owned are refused with EADDRNOTAVAIL.
fn binds_to_foreign_addresses_are_refused() {
    let (w, c1, _) = two_containers("foreign");
    let cases = [
        ("tcp4", "192.0.2.20:7020"),      // another container's
        ("tcp4", "198.51.100.1:7020"),    // the host's
        ("udp4", "255.255.255.255:7020"), // broadcast
        ("udp4", "224.0.0.1:7020"),       // multicast
        ("tcp4", "127.0.0.2:7020"),       // host loopback
        ("tcp6", "[2001:db8::20]:7020"),  // another container's
        ("tcp6", "[2001:db8:1::1]:7020"), // the host's
        ("tcp6", "[::1]:7020"),           // host loopback
        ("udp6", "[ff02::1]:7020"),       // multicast
        ("tcp6", "[::ffff:192.0.2.20]:7020"),
        ("tcp6", "[::ffff:198.51.100.1]:7020"),
        ("udp6", "[::ffff:255.255.255.255]:7020"),
        ("tcp6", "[::ffff:127.0.0.2]:7020"),
    ];
    for (kind, addr) in cases {
        let s = probe_last(
            &w.ns,
            &c1,
            &[&format!("socket {kind}"), &format!("bind {addr}")],
        );
        assert_eq!(s.err(), "EADDRNOTAVAIL", "{kind} {addr}");
    }
    assert!(w.agent.counter("c1", "bind_refused") >= cases.len() as u64);
}

// 4. connect from an unbound socket gets the primary owned source; a bound one keeps its own.
fn connect_uses_the_primary_address_as_source() {
    let (w, c1, _) = two_containers("connect");
    let host = w.host_cgroup();
    let srv4 = Background::spawn(
        &w.ns,
        &host,
        &[
            "socket tcp4",
            "bind 198.51.100.1:7030",
            "listen",
            "accept",
            "accept",
            "accept",
        ],
    );
    srv4.wait_for("listen");
    // TCP over IPv4
    let s = probe_last(&w.ns, &c1, &["socket tcp4", "connect 198.51.100.1:7030"]);
    assert_eq!(ip_of(s.addr()), "192.0.2.10");
    assert_eq!(ip_of(srv4.wait_for("accept").addr()), "192.0.2.10");
    // AF_INET6 socket to a v4-mapped destination
    let s = probe_last(
        &w.ns,
        &c1,
        &["socket tcp6", "connect [::ffff:198.51.100.1]:7030"],
    );
    assert_eq!(ip_of(s.addr()), "::ffff:192.0.2.10");
    assert_eq!(ip_of(srv4.wait_for("accept").addr()), "192.0.2.10");
    // A socket bound to a secondary owned address keeps it.
    let s = probe_last(
        &w.ns,
        &c1,
        &[
            "socket tcp4",
            "bind 192.0.2.11:0",
            "connect 198.51.100.1:7030",
        ],
    );
    assert_eq!(ip_of(s.addr()), "192.0.2.11");
    assert_eq!(ip_of(srv4.wait_for("accept").addr()), "192.0.2.11");

    // TCP over IPv6
    let srv6 = Background::spawn(
        &w.ns,
        &host,
        &[
            "socket tcp6",
            "bind [2001:db8:1::1]:7031",
            "listen",
            "accept",
        ],
    );
    srv6.wait_for("listen");
    let s = probe_last(&w.ns, &c1, &["socket tcp6", "connect [2001:db8:1::1]:7031"]);
    assert_eq!(ip_of(s.addr()), "2001:db8::10");
    assert_eq!(ip_of(srv6.wait_for("accept").addr()), "2001:db8::10");

    // UDP connect, v4 and v6: the source shows in getsockname and on the wire.
    let u4 = Background::spawn(
        &w.ns,
        &host,
        &["socket udp4", "bind 198.51.100.1:7032", "recvfrom"],
    );
    u4.wait_for("bind");
    let s = probe_last(
        &w.ns,
        &c1,
        &["socket udp4", "connect 198.51.100.1:7032", "send"],
    );
    assert_eq!(ip_of(s.addr()), "192.0.2.10");
    assert_eq!(ip_of(u4.wait_for("recvfrom").addr()), "192.0.2.10");
    let u6 = Background::spawn(
        &w.ns,
        &host,
        &["socket udp6", "bind [2001:db8:1::1]:7033", "recvfrom"],
    );
    u6.wait_for("bind");
    let s = probe_last(
        &w.ns,
        &c1,
        &["socket udp6", "connect [2001:db8:1::1]:7033", "send"],
    );
    assert_eq!(ip_of(s.addr()), "2001:db8::10");
    assert_eq!(ip_of(u6.wait_for("recvfrom").addr()), "2001:db8::10");
    assert!(w.agent.counter("c1", "connect_rewritten") >= 4);
}

// 4. ICMP ping sockets: connect picks the primary source too.
fn ping_socket_connect_uses_the_primary_address() {
    let (w, c1, _) = two_containers("ping");
    w.ns.sysctl("net.ipv4.ping_group_range", "0 2147483647");
    let s = probe_last(&w.ns, &c1, &["socket ping4", "connect 198.51.100.1:0"]);
    assert_eq!(ip_of(s.addr()), "192.0.2.10");
    let s = probe_last(&w.ns, &c1, &["socket ping6", "connect [2001:db8:1::1]:0"]);
    assert_eq!(ip_of(s.addr()), "2001:db8::10");
}

// 5. unconnected UDP sends leave with an owned source; a PKTINFO source must be owned.
fn unconnected_udp_sends_use_an_owned_source() {
    let (w, c1, _) = two_containers("send");
    let host = w.host_cgroup();
    let r4 = Background::spawn(
        &w.ns,
        &host,
        &[
            "socket udp4",
            "bind 198.51.100.1:7040",
            "recvfrom",
            "recvfrom",
            "recvfrom",
            "recvfrom",
            "recvfrom",
        ],
    );
    r4.wait_for("bind");
    for step in ["sendto 198.51.100.1:7040", "sendmsg 198.51.100.1:7040"] {
        probe_last(&w.ns, &c1, &["socket udp4", step]).addr();
        assert_eq!(
            ip_of(r4.wait_for("recvfrom").addr()),
            "192.0.2.10",
            "{step}"
        );
    }
    probe_last(&w.ns, &c1, &["socket udp4", "sendmmsg 198.51.100.1:7040"]).addr();
    assert_eq!(ip_of(r4.wait_for("recvfrom").addr()), "192.0.2.10");
    assert_eq!(ip_of(r4.wait_for("recvfrom").addr()), "192.0.2.10");
    // IP_PKTINFO asking for an owned secondary address: allowed and used.
    probe_last(
        &w.ns,
        &c1,
        &["socket udp4", "sendto-pktinfo 198.51.100.1:7040 192.0.2.11"],
    )
    .addr();
    assert_eq!(ip_of(r4.wait_for("recvfrom").addr()), "192.0.2.11");
    // ...asking for another container's: refused.
    let s = probe_last(
        &w.ns,
        &c1,
        &["socket udp4", "sendto-pktinfo 198.51.100.1:7040 192.0.2.20"],
    );
    assert_eq!(s.err(), "EADDRNOTAVAIL");
    // A dual-stack socket sending to a v4-mapped destination (goes through sendmsg4).
    let r4b = Background::spawn(
        &w.ns,
        &host,
        &["socket udp4", "bind 198.51.100.1:7041", "recvfrom"],
    );
    r4b.wait_for("bind");
    probe_last(
        &w.ns,
        &c1,
        &["socket udp6", "sendto [::ffff:198.51.100.1]:7041"],
    )
    .addr();
    assert_eq!(ip_of(r4b.wait_for("recvfrom").addr()), "192.0.2.10");

    let r6 = Background::spawn(
        &w.ns,
        &host,
        &[
            "socket udp6",
            "bind [2001:db8:1::1]:7042",
            "recvfrom",
            "recvfrom",
            "recvfrom",
            "recvfrom",
        ],
    );
    r6.wait_for("bind");
    probe_last(&w.ns, &c1, &["socket udp6", "sendto [2001:db8:1::1]:7042"]).addr();
    assert_eq!(ip_of(r6.wait_for("recvfrom").addr()), "2001:db8::10");
    probe_last(
        &w.ns,
        &c1,
        &["socket udp6", "sendmmsg [2001:db8:1::1]:7042"],
    )
    .addr();
    assert_eq!(ip_of(r6.wait_for("recvfrom").addr()), "2001:db8::10");
    assert_eq!(ip_of(r6.wait_for("recvfrom").addr()), "2001:db8::10");
    let s = probe_last(
        &w.ns,
        &c1,
        &[
            "socket udp6",
            "sendto-pktinfo [2001:db8:1::1]:7042 2001:db8::20",
        ],
    );
    assert_eq!(s.err(), "EADDRNOTAVAIL");
    probe_last(
        &w.ns,
        &c1,
        &[
            "socket udp6",
            "sendto-pktinfo [2001:db8:1::1]:7042 2001:db8::11",
        ],
    )
    .addr();
    assert_eq!(ip_of(r6.wait_for("recvfrom").addr()), "2001:db8::11");
}

// 5. a sticky IPV6_PKTINFO cannot smuggle a foreign source: refused at setsockopt, and the
// wire never shows a non-owned source (regression guard for kernels that honour it).
fn sticky_ipv6_pktinfo_cannot_choose_a_foreign_source() {
    let (w, c1, _) = two_containers("sticky");
    let host = w.host_cgroup();
    let s = probe_last(&w.ns, &c1, &["socket udp6", "sticky-pktinfo 2001:db8::20"]);
    assert_eq!(s.err(), "EADDRNOTAVAIL");
    assert!(w.agent.counter("c1", "sockopt_refused") >= 1);

    let r6 = Background::spawn(
        &w.ns,
        &host,
        &["socket udp6", "bind [2001:db8:1::1]:7050", "recvfrom"],
    );
    r6.wait_for("bind");
    probe_last(
        &w.ns,
        &c1,
        &[
            "socket udp6",
            "sticky-pktinfo 2001:db8::11",
            "sendto [2001:db8:1::1]:7050",
        ],
    )
    .addr();
    let src = r6.wait_for("recvfrom");
    let src = ip_of(src.addr());
    assert!(
        src == "2001:db8::10" || src == "2001:db8::11",
        "wire source {src}"
    );
    // Unregistered processes may still set it.
    probe_last(
        &w.ns,
        &host,
        &["socket udp6", "sticky-pktinfo 2001:db8::20"],
    );
}

// 6. sockets the address hooks cannot govern are refused at creation unless --allow-raw.
fn ungoverned_socket_types_are_refused_unless_allow_raw() {
    let (w, c1, _) = two_containers("raw");
    for kind in ["raw4", "raw6", "udplite4"] {
        let s = probe_last(&w.ns, &c1, &[&format!("socket {kind}")]);
        assert_eq!(s.err(), "EPERM", "{kind}");
    }
    // Protocols the kernel may not have built in fail either way; never succeed.
    for kind in ["sctp4", "mptcp4", "l2tp4"] {
        let s = probe_last(&w.ns, &c1, &[&format!("socket {kind}")]);
        assert!(!s.ok, "{kind} must not be created in a container");
    }
    for kind in ["tcp4", "udp6"] {
        assert!(probe_last(&w.ns, &c1, &[&format!("socket {kind}")]).ok);
    }
    assert!(w.agent.counter("c1", "socket_refused") >= 3);

    let raw = w.container("rawok", &["198.51.100.7"], &["--allow-raw"]);
    assert!(probe_last(&w.ns, &raw, &["socket raw4"]).ok);
    let host = w.host_cgroup();
    assert!(probe_last(&w.ns, &host, &["socket raw4"]).ok);
}

// 7. loopback: 127.0.0.1 inside a container is its own private 127.128.x.y; it reaches
// neither host loopback services nor other containers' loopback listeners.
fn loopback_is_private_to_each_container() {
    let (w, c1, c2) = two_containers("lo");
    let host = w.host_cgroup();
    let lo1 = w
        .agent
        .cli(&["--json", "container", "show", "c1"])
        .ok()
        .json()["loopback"]
        .as_str()
        .unwrap()
        .to_owned();
    let lo2 = w
        .agent
        .cli(&["--json", "container", "show", "c2"])
        .ok()
        .json()["loopback"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(lo1.starts_with("127.128.") && lo1 != lo2);

    // A server in c1 on 127.0.0.1 lands on c1's private loopback and works from inside c1.
    let srv = Background::spawn(
        &w.ns,
        &c1,
        &["socket tcp4", "bind 127.0.0.1:7060", "listen", "accept"],
    );
    assert_eq!(srv.wait_for("listen").addr(), format!("{lo1}:7060"));
    let s = probe_last(&w.ns, &c1, &["socket tcp4", "connect 127.0.0.1:7060"]);
    assert_eq!(ip_of(s.addr()), lo1);
    assert_eq!(ip_of(srv.wait_for("accept").addr()), lo1);

    // c2's 127.0.0.1 is c2's own: c1's listener is not there.
    let s = probe_last(&w.ns, &c2, &["socket tcp4", "connect 127.0.0.1:7060"]);
    assert_eq!(s.err(), "ECONNREFUSED");
    // Nor can c2 name c1's loopback, other 127/8 addresses or ::1.
    for dst in [
        format!("{lo1}:7060"),
        "127.0.0.53:53".into(),
        "[::1]:7060".into(),
    ] {
        let kind = if dst.starts_with('[') { "tcp6" } else { "tcp4" };
        let s = probe_last(
            &w.ns,
            &c2,
            &[&format!("socket {kind}"), &format!("connect {dst}")],
        );
        assert_eq!(s.err(), "ENETUNREACH", "{dst}");
    }
    // A host service on 127.0.0.1 is out of reach.
    let hostsrv = Background::spawn(
        &w.ns,
        &host,
        &["socket tcp4", "bind 127.0.0.1:7061", "listen", "accept"],
    );
    hostsrv.wait_for("listen");
    let s = probe_last(&w.ns, &c2, &["socket tcp4", "connect 127.0.0.1:7061"]);
    assert_eq!(s.err(), "ECONNREFUSED");
    // UDP to 127.0.0.1 goes to the container's own loopback as well, from it.
    let r = Background::spawn(
        &w.ns,
        &c2,
        &["socket udp4", "bind 127.0.0.1:7062", "recvfrom"],
    );
    assert_eq!(r.wait_for("bind").addr(), format!("{lo2}:7062"));
    probe(&w.ns, &c2, &["socket udp4", "sendto 127.0.0.1:7062"]);
    assert_eq!(ip_of(r.wait_for("recvfrom").addr()), lo2);
    // v4-mapped loopback on a dual-stack socket maps the same way.
    let s = probe_last(
        &w.ns,
        &c2,
        &["socket tcp6", "v6only 0", "bind [::ffff:127.0.0.1]:7063"],
    );
    assert_eq!(s.addr(), format!("[::ffff:{lo2}]:7063"));
}

// Containers are cgroup subtrees: a process in a nested child cgroup is in the container.
fn nested_cgroups_belong_to_their_container() {
    let (w, c1, _) = two_containers("nested");
    let deep = w.cgroups.child("c1/a/b/c");
    assert!(deep.starts_with(&c1));
    assert_eq!(
        probe_last(&w.ns, &deep, &["socket tcp4", "bind 0.0.0.0:7070"]).addr(),
        "192.0.2.10:7070"
    );
    assert_eq!(
        probe_last(&w.ns, &deep, &["socket tcp4", "bind 192.0.2.20:7070"]).err(),
        "EADDRNOTAVAIL"
    );
}

// 8. processes in unregistered cgroups are never affected.
fn unregistered_processes_are_untouched() {
    let (w, _, _) = two_containers("host");
    let host = w.host_cgroup();
    assert_eq!(
        probe_last(&w.ns, &host, &["socket tcp4", "bind 0.0.0.0:7080"]).addr(),
        "0.0.0.0:7080"
    );
    assert_eq!(
        probe_last(&w.ns, &host, &["socket tcp4", "bind 192.0.2.20:7080"]).addr(),
        "192.0.2.20:7080"
    );
    assert_eq!(
        probe_last(&w.ns, &host, &["socket tcp6", "bind [::]:7080"]).addr(),
        "[::]:7080"
    );
    assert!(probe_last(&w.ns, &host, &["socket raw4"]).ok);
    let s = probe_last(&w.ns, &host, &["socket udp4", "connect 127.0.0.1:7081"]);
    assert_eq!(ip_of(s.addr()), "127.0.0.1");
}

// 9. disable turns every hook into pass-through; enable restores enforcement.
fn disable_and_enable_switch_enforcement_globally() {
    let (w, c1, _) = two_containers("toggle");
    w.agent.cli(&["disable"]).ok();
    assert_eq!(
        w.agent.cli(&["--json", "status"]).ok().json()["enabled"],
        false
    );
    assert_eq!(
        probe_last(&w.ns, &c1, &["socket tcp4", "bind 192.0.2.20:7090"]).addr(),
        "192.0.2.20:7090"
    );
    assert_eq!(
        probe_last(&w.ns, &c1, &["socket tcp4", "bind 0.0.0.0:7090"]).addr(),
        "0.0.0.0:7090"
    );
    assert!(probe_last(&w.ns, &c1, &["socket raw4"]).ok);
    w.agent.cli(&["enable"]).ok();
    assert_eq!(
        probe_last(&w.ns, &c1, &["socket tcp4", "bind 192.0.2.20:7090"]).err(),
        "EADDRNOTAVAIL"
    );
}

// 9. audit mode allows (and rewrites nothing) but counts what enforce mode would refuse.
fn audit_mode_allows_and_counts() {
    let w = World::new("audit");
    let c = w.container("aud", &["192.0.2.10"], &["--mode", "audit"]);
    assert_eq!(
        probe_last(&w.ns, &c, &["socket tcp4", "bind 192.0.2.20:7100"]).addr(),
        "192.0.2.20:7100"
    );
    assert_eq!(
        probe_last(&w.ns, &c, &["socket tcp4", "bind 0.0.0.0:7101"]).addr(),
        "0.0.0.0:7101"
    );
    assert!(probe_last(&w.ns, &c, &["socket raw4"]).ok);
    assert_eq!(w.agent.counter("aud", "audited"), 2);
    assert_eq!(w.agent.counter("aud", "bind_refused"), 0);
    w.agent.cli(&["container", "mode", "aud", "enforce"]).ok();
    assert_eq!(
        probe_last(&w.ns, &c, &["socket tcp4", "bind 192.0.2.20:7100"]).err(),
        "EADDRNOTAVAIL"
    );
    assert_eq!(w.agent.counter("aud", "bind_refused"), 1);
}

// A socket belongs to the container it was created in, wherever it goes, as a socket made in a
// network namespace does: one made in a container and handed out keeps the container's
// restrictions (its bind, connect and packets are judged as the container's); one made on the
// host and handed into a container keeps the host's rights.
fn sockets_belong_where_they_were_created() {
    let (w, c1, _) = two_containers("fd");
    let host = w.host_cgroup();
    let c1s = c1.display().to_string();
    let hosts = host.display().to_string();
    // Created in c1, used on the host: still c1's.
    let s = probe_last(
        &w.ns,
        &c1,
        &[
            "socket tcp4",
            &format!("join-cgroup {hosts}"),
            "bind 192.0.2.20:7111",
        ],
    );
    assert_eq!(s.err(), "EADDRNOTAVAIL");
    let s = probe_last(
        &w.ns,
        &c1,
        &[
            "socket tcp4",
            &format!("join-cgroup {hosts}"),
            "bind 0.0.0.0:7113",
        ],
    );
    assert_eq!(
        s.addr(),
        "192.0.2.10:7113",
        "the wildcard bind is still rewritten"
    );
    // Created on the host, used in c1: the host's.
    let s = probe_last(
        &w.ns,
        &host,
        &[
            "socket tcp4",
            &format!("join-cgroup {c1s}"),
            "bind 192.0.2.20:7110",
        ],
    );
    assert_eq!(s.addr(), "192.0.2.20:7110");
    // A socket c1 creates after moving in is c1's again.
    let s = probe_last(
        &w.ns,
        &host,
        &[
            &format!("join-cgroup {c1s}"),
            "socket tcp4",
            "bind 192.0.2.20:7112",
        ],
    );
    assert_eq!(s.err(), "EADDRNOTAVAIL");
}

// listen() without bind and UDP autobind bind the wildcard with no hook involved: at the
// socket layer they stay wildcard (tests/packet.rs shows the packet layer closing the gap).
fn implicit_binds_are_wildcard_at_the_socket_layer() {
    let (w, c1, _) = two_containers("autobind");
    let s = probe_last(&w.ns, &c1, &["socket tcp4", "listen"]);
    assert!(s.addr().starts_with("0.0.0.0:"), "{:?}", s.value);
    // UDP: the socket autobinds to the wildcard, yet the datagram's source is owned.
    let host = w.host_cgroup();
    let r = Background::spawn(
        &w.ns,
        &host,
        &["socket udp4", "bind 198.51.100.1:7120", "recvfrom"],
    );
    r.wait_for("bind");
    let s = probe_last(&w.ns, &c1, &["socket udp4", "sendto 198.51.100.1:7120"]);
    assert!(s.addr().starts_with("0.0.0.0:"));
    assert_eq!(ip_of(r.wait_for("recvfrom").addr()), "192.0.2.10");
    // Connecting such an autobound socket would let routing pick the source: refused.
    let s = probe_last(
        &w.ns,
        &c1,
        &[
            "socket udp4",
            "sendto 198.51.100.1:7120",
            "connect 198.51.100.1:7120",
        ],
    );
    assert_eq!(s.err(), "EADDRNOTAVAIL");
}

netiso_testkit::privileged_tests![
    bind_to_owned_address_keeps_address_and_port,
    wildcard_bind_is_rewritten_to_the_primary_address,
    two_containers_share_a_wildcard_port,
    binds_to_foreign_addresses_are_refused,
    connect_uses_the_primary_address_as_source,
    ping_socket_connect_uses_the_primary_address,
    unconnected_udp_sends_use_an_owned_source,
    sticky_ipv6_pktinfo_cannot_choose_a_foreign_source,
    ungoverned_socket_types_are_refused_unless_allow_raw,
    loopback_is_private_to_each_container,
    nested_cgroups_belong_to_their_container,
    unregistered_processes_are_untouched,
    disable_and_enable_switch_enforcement_globally,
    audit_mode_allows_and_counts,
    sockets_belong_where_they_were_created,
    implicit_binds_are_wildcard_at_the_socket_layer,
];
