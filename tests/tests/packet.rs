//! The per-container packet layer (cgroup_skb ingress/egress on container sockets): what the
//! socket hooks never see is closed by checking each packet's local address.
use netiso_testkit::{probe_last, Background, World};

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().0
}

// listen() without bind() autobinds the wildcard with no hook; ingress drops every packet
// whose destination the container does not own, so only its own address reaches it.
fn implicit_tcp_listener_only_receives_owned_destinations() {
    let w = World::new("p-listen");
    let c1 = w.container("c1", &["192.0.2.10"], &[]);
    let host = w.host_cgroup();
    let srv = Background::spawn(&w.ns, &c1, &["socket tcp4", "listen", "accept"]);
    let port = port_of(srv.wait_for("listen").addr()).to_owned();
    // The host's address: the SYN is dropped before it reaches the listener.
    let s = probe_last(
        &w.ns,
        &host,
        &[
            "socket tcp4",
            "timeout 1000",
            &format!("connect 198.51.100.1:{port}"),
        ],
    );
    assert!(
        !s.ok,
        "connected to a container through a non-owned address"
    );
    assert!(w.agent.counter("c1", "ingress_dropped") >= 1);
    // Its own address works.
    probe_last(
        &w.ns,
        &host,
        &["socket tcp4", &format!("connect 192.0.2.10:{port}")],
    )
    .addr();
    assert_eq!(ip_of(srv.wait_for("accept").addr()), "192.0.2.10");
}

// UDP autobind binds the wildcard too: datagrams to non-owned destinations are dropped.
fn implicit_udp_socket_only_receives_owned_destinations() {
    let w = World::new("p-udp");
    let c1 = w.container("c1", &["192.0.2.10"], &[]);
    let host = w.host_cgroup();
    let rx = Background::spawn(
        &w.ns,
        &c1,
        &["socket udp4", "sendto 198.51.100.1:9", "recvfrom"],
    );
    let port = port_of(rx.wait_for("sendto").addr()).to_owned();
    // First to a non-owned destination (from port 7201), then to the owned one (from 7202):
    // the container's single recvfrom must see the second.
    probe_last(
        &w.ns,
        &host,
        &[
            "socket udp4",
            "bind 198.51.100.1:7201",
            &format!("sendto 198.51.100.1:{port}"),
        ],
    )
    .addr();
    probe_last(
        &w.ns,
        &host,
        &[
            "socket udp4",
            "bind 198.51.100.1:7202",
            &format!("sendto 192.0.2.10:{port}"),
        ],
    )
    .addr();
    assert_eq!(rx.wait_for("recvfrom").addr(), "198.51.100.1:7202");
    assert!(w.agent.counter("c1", "ingress_dropped") >= 1);
}

// A raw socket (allowed with --allow-raw) can write any source address; egress drops a packet
// whose source the container does not own. Unregistered processes are untouched.
fn spoofed_sources_are_dropped_on_egress() {
    let w = World::new("p-spoof");
    let raw = w.container("raw", &["192.0.2.30"], &["--allow-raw"]);
    let host = w.host_cgroup();
    let rx = Background::spawn(
        &w.ns,
        &host,
        &[
            "socket udp4",
            "bind 198.51.100.1:7300",
            "recvfrom",
            "recvfrom",
        ],
    );
    rx.wait_for("bind");
    let s = probe_last(
        &w.ns,
        &raw,
        &["socket rawip4", "spoof-udp4 192.0.2.20 198.51.100.1:7300"],
    );
    assert!(!s.ok, "the spoofed packet must be refused");
    probe_last(
        &w.ns,
        &raw,
        &["socket rawip4", "spoof-udp4 192.0.2.30 198.51.100.1:7300"],
    );
    assert_eq!(ip_of(rx.wait_for("recvfrom").addr()), "192.0.2.30");
    assert!(w.agent.counter("raw", "egress_dropped") >= 1);
    // The host may send what it likes.
    probe_last(
        &w.ns,
        &host,
        &["socket rawip4", "spoof-udp4 192.0.2.20 198.51.100.1:7300"],
    );
    assert_eq!(ip_of(rx.wait_for("recvfrom").addr()), "192.0.2.20");
}

// Per-container rx/tx packets and bytes, shown by `netiso stats`.
fn traffic_is_counted_per_container() {
    let w = World::new("p-count");
    let c1 = w.container("c1", &["192.0.2.10", "2001:db8::10"], &[]);
    let c2 = w.container("c2", &["192.0.2.20"], &[]);
    let srv = Background::spawn(
        &w.ns,
        &c1,
        &["socket tcp4", "bind 0.0.0.0:7400", "listen", "accept"],
    );
    srv.wait_for("listen");
    probe_last(
        &w.ns,
        &c2,
        &["socket tcp4", "connect 192.0.2.10:7400", "send"],
    )
    .addr();
    srv.wait_for("accept");
    for (c, key) in [
        ("c1", "rx_packets"),
        ("c1", "tx_packets"),
        ("c2", "tx_packets"),
        ("c2", "rx_packets"),
    ] {
        assert!(w.agent.counter(c, key) >= 1, "{c} {key}");
    }
    assert!(w.agent.counter("c2", "tx_bytes") >= 40);
    let table = w.agent.cli(&["stats"]).ok();
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    assert!(table.stdout.contains("c1") && table.stdout.contains("c2"));
    let json = w.agent.cli(&["--json", "stats"]).ok().json();
    assert!(json[0]["counters"]["rx_bytes"].as_u64().unwrap() > 0);
}

// Audit mode lets the packet through and counts it; disable passes everything.
fn packet_layer_honours_audit_and_disable() {
    let w = World::new("p-audit");
    let c1 = w.container("c1", &["192.0.2.10"], &["--mode", "audit"]);
    let host = w.host_cgroup();
    let srv = Background::spawn(&w.ns, &c1, &["socket tcp4", "listen", "accept", "accept"]);
    let port = port_of(srv.wait_for("listen").addr()).to_owned();
    probe_last(
        &w.ns,
        &host,
        &["socket tcp4", &format!("connect 198.51.100.1:{port}")],
    )
    .addr();
    srv.wait_for("accept");
    assert!(w.agent.counter("c1", "audited") >= 1);
    assert_eq!(w.agent.counter("c1", "ingress_dropped"), 0);
    w.agent.cli(&["container", "mode", "c1", "enforce"]).ok();
    w.agent.cli(&["disable"]).ok();
    probe_last(
        &w.ns,
        &host,
        &["socket tcp4", &format!("connect 198.51.100.1:{port}")],
    )
    .addr();
    srv.wait_for("accept");
}

netiso_testkit::privileged_tests![
    implicit_tcp_listener_only_receives_owned_destinations,
    implicit_udp_socket_only_receives_owned_destinations,
    spoofed_sources_are_dropped_on_egress,
    traffic_is_counted_per_container,
    packet_layer_honours_audit_and_disable,
];
