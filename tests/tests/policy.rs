//! Policy between containers: by default they reach each other like hosts on a LAN; an
//! `--isolated` container accepts only containers a rule allows, enforced where a connection
//! or datagram starts (connect/sendmsg) and where it arrives (packet ingress).
use netiso_testkit::{probe_last, Background, World};

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

fn isolated_container_accepts_only_allowed_containers() {
    let w = World::new("pol");
    w.ns.add_addr("198.51.100.7/32");
    let a = w.container("a", &["192.0.2.10", "2001:db8::10"], &[]);
    let b = w.container("b", &["192.0.2.20", "2001:db8::20"], &["--isolated"]);
    let c = w.container("c", &["198.51.100.7"], &[]);
    let host = w.host_cgroup();
    let srv = Background::spawn(
        &w.ns,
        &b,
        &[
            "socket tcp6",
            "v6only 0",
            "listen",
            "accept",
            "accept",
            "accept",
        ],
    );
    let port = port_of(srv.wait_for("listen").addr()).to_owned();

    // a -> b refused at connect (v4, v6 and v4-mapped), and counted.
    for (kind, dst) in [
        ("tcp4", format!("192.0.2.20:{port}")),
        ("tcp6", format!("[2001:db8::20]:{port}")),
        ("tcp6", format!("[::ffff:192.0.2.20]:{port}")),
    ] {
        let s = probe_last(
            &w.ns,
            &a,
            &[&format!("socket {kind}"), &format!("connect {dst}")],
        );
        assert_eq!(s.err(), "EACCES", "{dst}");
    }
    let s = probe_last(
        &w.ns,
        &a,
        &["socket udp4", &format!("sendto 192.0.2.20:{port}")],
    );
    assert_eq!(s.err(), "EACCES");
    assert!(w.agent.counter("a", "policy_refused") >= 4);
    // Unregistered processes still reach it.
    probe_last(
        &w.ns,
        &host,
        &["socket tcp4", &format!("connect 192.0.2.20:{port}")],
    )
    .addr();
    srv.wait_for("accept");

    // An allow rule lets a in; c stays out.
    w.agent.cli(&["policy", "allow", "a", "b"]).ok();
    probe_last(
        &w.ns,
        &a,
        &["socket tcp4", &format!("connect 192.0.2.20:{port}")],
    )
    .addr();
    srv.wait_for("accept");
    let s = probe_last(
        &w.ns,
        &c,
        &["socket tcp4", &format!("connect 192.0.2.20:{port}")],
    );
    assert_eq!(s.err(), "EACCES");
    // b itself reaches out freely (isolation is about who may reach b).
    let out = Background::spawn(
        &w.ns,
        &c,
        &["socket tcp4", "bind 0.0.0.0:7500", "listen", "accept"],
    );
    out.wait_for("listen");
    probe_last(&w.ns, &b, &["socket tcp4", "connect 198.51.100.7:7500"]).addr();
    out.wait_for("accept");

    let ls = w.agent.cli(&["--json", "policy", "ls"]).ok().json();
    assert_eq!(ls[0]["from"], "a");
    assert_eq!(ls[0]["action"], "allow");
    // An explicit deny applies to a non-isolated container too.
    w.agent.cli(&["policy", "deny", "b", "c"]).ok();
    let s = probe_last(&w.ns, &b, &["socket tcp4", "connect 198.51.100.7:7500"]);
    assert_eq!(s.err(), "EACCES");
    // Removing a container drops its rules.
    w.agent.cli(&["container", "rm", "c"]).ok();
    let ls = w.agent.cli(&["--json", "policy", "ls"]).ok().json();
    assert_eq!(ls.as_array().unwrap().len(), 1);
}

// The receiving side: a packet from a container's address that the policy does not allow is
// dropped on arrival even when no socket hook of the sender stopped it. Here the sender is a
// host socket (hosts are never judged at the socket layer) bound to container a's address;
// container a's own sockets are refused earlier, at connect.
fn isolation_is_enforced_where_packets_arrive() {
    let w = World::new("pol-in");
    let a = w.container("a", &["192.0.2.10"], &[]);
    let b = w.container("b", &["192.0.2.20"], &["--isolated"]);
    let host = w.host_cgroup();
    let srv = Background::spawn(
        &w.ns,
        &b,
        &["socket tcp4", "bind 0.0.0.0:7510", "listen", "accept"],
    );
    srv.wait_for("listen");
    let from_a = |port: &str| {
        probe_last(
            &w.ns,
            &host,
            &[
                "socket tcp4",
                "timeout 1000",
                &format!("bind 192.0.2.10:{port}"),
                "connect 192.0.2.20:7510",
            ],
        )
    };
    let s = from_a("7511");
    assert!(
        !s.ok,
        "the isolated container accepted a packet from a's address"
    );
    assert!(w.agent.counter("b", "policy_dropped") >= 1);
    // Container a's own socket is refused at connect already.
    let s = probe_last(&w.ns, &a, &["socket tcp4", "connect 192.0.2.20:7510"]);
    assert_eq!(s.err(), "EACCES");
    // Allowed: the same path works.
    w.agent.cli(&["policy", "allow", "a", "b"]).ok();
    from_a("7512").addr();
    srv.wait_for("accept");
}

fn policy_errors_are_clear_and_change_nothing() {
    let w = World::new("pol-err");
    w.container("a", &["192.0.2.10"], &[]);
    let out = w.agent.cli(&["policy", "allow", "a", "nope"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no container named \"nope\""),
        "{}",
        out.stderr
    );
    let out = w.agent.cli(&["policy", "allow", "a", "a"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("reaches itself"), "{}", out.stderr);
    assert_eq!(w.agent.cli(&["policy", "frobnicate", "a", "a"]).code, 2);
    let ls = w.agent.cli(&["--json", "policy", "ls"]).ok().json();
    assert!(ls.as_array().unwrap().is_empty());
    let table = w.agent.cli(&["policy", "ls"]).ok();
    assert!(table.stdout.starts_with("FROM"));
}

// What the datapath refuses, audits or drops shows up in `netiso events`, with the container,
// the hook, the errno and the address.
fn refusals_are_reported_as_events() {
    let w = World::new("pol-ev");
    let a = w.container("a", &["192.0.2.10"], &[]);
    let b = w.container("b", &["192.0.2.20"], &["--isolated"]);
    let aud = w.container("aud", &["198.51.100.7"], &["--mode", "audit"]);
    let srv = Background::spawn(&w.ns, &b, &["socket tcp4", "bind 0.0.0.0:7520", "listen"]);
    srv.wait_for("listen");
    probe_last(&w.ns, &a, &["socket tcp4", "bind 192.0.2.20:7521"]).err();
    probe_last(&w.ns, &a, &["socket tcp4", "connect 192.0.2.20:7520"]).err();
    probe_last(&w.ns, &aud, &["socket tcp4", "bind 192.0.2.20:7522"]).addr();
    let want = [
        (
            "a",
            "bind_refused",
            Some("EADDRNOTAVAIL"),
            "192.0.2.20:7521",
            false,
        ),
        (
            "a",
            "connect_refused",
            Some("EACCES"),
            "192.0.2.20:7520",
            false,
        ),
        (
            "aud",
            "bind_refused",
            Some("EADDRNOTAVAIL"),
            "192.0.2.20:7522",
            true,
        ),
    ];
    let mut events = Vec::new();
    netiso_testkit::wait_until("three events", std::time::Duration::from_secs(10), || {
        let out = w.agent.cli(&["--json", "events"]).ok();
        events = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        events.len() >= 3
    });
    for (container, what, errno, addr, audited) in want {
        assert!(
            events.iter().any(|e| e["container"] == container
                && e["what"] == what
                && e["errno"].as_str() == errno
                && e["address"] == addr
                && e["audited"] == audited),
            "no event {container} {what} {addr} in {events:#?}"
        );
    }
    let table = w.agent.cli(&["events"]).ok();
    assert!(table.stdout.starts_with("TIME"), "{}", table.stdout);
    assert!(table.stdout.contains("connect_refused"));
}

// An isolated container that opens a UDP flow to another container gets its answers: the
// server's unconnected sendto back to it is a reply (the isolated side's socket is connected
// to the server), not a new flow, so neither its sendmsg hook nor the arrival refuses it.
// A send from the server to any other port of the isolated container is still refused.
fn isolated_container_gets_udp_replies_to_flows_it_opened() {
    let w = World::new("pol-udp");
    let a = w.container("a", &["192.0.2.10", "2001:db8::10"], &[]);
    let b = w.container("b", &["192.0.2.20", "2001:db8::20"], &["--isolated"]);
    for (kind, srv_addr, client, other) in [
        (
            "udp4",
            "192.0.2.10:7300",
            "192.0.2.20:7301",
            "192.0.2.20:7302",
        ),
        (
            "udp6",
            "[2001:db8::10]:7300",
            "[2001:db8::20]:7301",
            "[2001:db8::20]:7302",
        ),
    ] {
        let server = Background::spawn(
            &w.ns,
            &a,
            &[
                &format!("socket {kind}"),
                &format!("bind {srv_addr}"),
                "recvfrom",
                &format!("sendto {client}"),
                "wait",
            ],
        );
        server.wait_for("bind");
        let reply = Background::spawn(
            &w.ns,
            &b,
            &[
                &format!("socket {kind}"),
                &format!("bind {client}"),
                &format!("connect {srv_addr}"),
                "send",
                "recvfrom",
            ],
        );
        assert_eq!(server.wait_for("recvfrom").addr(), client);
        assert!(server.wait_for("sendto").ok, "reply refused");
        assert_eq!(reply.wait_for("recvfrom").addr(), srv_addr);
        // Not a reply: another port of b, where nothing is connected to a.
        let s = probe_last(
            &w.ns,
            &a,
            &[&format!("socket {kind}"), &format!("sendto {other}")],
        );
        assert_eq!(s.err(), "EACCES", "{kind}");
    }
    assert_eq!(w.agent.counter("b", "policy_dropped"), 0);
}

netiso_testkit::privileged_tests![
    isolated_container_accepts_only_allowed_containers,
    isolation_is_enforced_where_packets_arrive,
    policy_errors_are_clear_and_change_nothing,
    refusals_are_reported_as_events,
    isolated_container_gets_udp_replies_to_flows_it_opened,
];
