//! The per-interface TC programs (`tc_ingress`/`tc_egress` on TCX links): traffic attributed
//! to the container owning its address, the inter-container policy enforced for new flows where
//! packets arrive, anti-spoofing of frames no socket hook sees, and the `netiso iface` /
//! `agent --iface` lifecycle (pins that outlive the agent, re-created interfaces, cleanup).
//!
//! Most tests wire the World's namespace to a second one, the outside peer, with a veth pair:
//! `nv0` (203.0.113.1, 2001:db8:2::1) in the World, `nvp0` (203.0.113.2, 2001:db8:2::2) in the
//! peer, which routes everything back over it. Containers own addresses on the World's `lo`.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use netiso_testkit::craft::{checksum, to_hex, Packet, Transport};
use netiso_testkit::{probe_last, wait_until, Agent, Background, Netns, Step, World};
use nix::sys::signal::Signal;
use serde_json::Value;

const VETH: &str = "nv0";
const PEER_VETH: &str = "nvp0";
/// The peer's MAC, so hand-made frames are for its stack (PACKET_HOST).
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The addresses a test uses in one family.
#[derive(Clone, Copy)]
struct Fam {
    udp: &'static str,
    tcp: &'static str,
    /// Owned by container c1 (also "a" in the policy test).
    c1: &'static str,
    /// Owned by container c2 (also "b").
    c2: &'static str,
    /// On the World's lo, owned by no container.
    host: &'static str,
    /// Owned by nobody, configured nowhere.
    stranger: &'static str,
    /// The World's end of the veth (a host address).
    world: &'static str,
    /// The peer's end of the veth.
    peer: &'static str,
}

const V4: Fam = Fam {
    udp: "udp4",
    tcp: "tcp4",
    c1: "192.0.2.10",
    c2: "192.0.2.20",
    host: "198.51.100.1",
    stranger: "192.0.2.99",
    world: "203.0.113.1",
    peer: "203.0.113.2",
};

const V6: Fam = Fam {
    udp: "udp6",
    tcp: "tcp6",
    c1: "2001:db8::10",
    c2: "2001:db8::20",
    host: "2001:db8:1::1",
    stranger: "2001:db8::99",
    world: "2001:db8:2::1",
    peer: "2001:db8:2::2",
};

/// `ip:port`, bracketed for IPv6 (as netiso-probe prints addresses).
fn sa(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Connects `ns` to `peer` with the veth pair; the peer routes everything through it.
fn wire(ns: &Netns, peer: &Netns) {
    ns.veth(
        VETH,
        &["203.0.113.1/24", "2001:db8:2::1/64"],
        peer,
        PEER_VETH,
        &["203.0.113.2/24", "2001:db8:2::2/64"],
    );
    let mac = PEER_MAC.map(|b| format!("{b:02x}")).join(":");
    peer.ip(&["link", "set", PEER_VETH, "address", &mac]);
    peer.ip(&["route", "add", "default", "via", "203.0.113.1"]);
    peer.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"]);
}

/// A World with containers c1 and c2 (one address of each family), wired to an outside peer.
/// Dropping it deletes the World's namespace (and with it the veth pair), then the peer's.
struct Lan {
    w: World,
    peer: Netns,
    /// Where the peer's processes run: an unregistered cgroup.
    peer_cg: PathBuf,
    c1: PathBuf,
    c2: PathBuf,
    /// An unregistered cgroup in the World.
    host: PathBuf,
}

impl Lan {
    fn new(tag: &str) -> Lan {
        let w = World::new(tag);
        let peer = Netns::new(&format!("{tag}-peer"));
        wire(&w.ns, &peer);
        let c1 = w.container("c1", &[V4.c1, V6.c1], &[]);
        let c2 = w.container("c2", &[V4.c2, V6.c2], &[]);
        let peer_cg = w.cgroups.child("peer");
        let host = w.host_cgroup();
        Lan {
            w,
            peer,
            peer_cg,
            c1,
            c2,
            host,
        }
    }

    fn agent(&self) -> &Agent {
        &self.w.agent
    }

    /// Runs a probe in the peer namespace, returning its last step.
    fn peer(&self, steps: &[&str]) -> Step {
        probe_last(&self.peer, &self.peer_cg, steps)
    }

    fn peer_bg(&self, steps: &[&str]) -> Background {
        Background::spawn(&self.peer, &self.peer_cg, steps)
    }

    /// One datagram from the peer to `dst:port`, where a process of `cg` receives it; returns
    /// once it arrived.
    fn datagram(&self, cg: &Path, fam: Fam, dst: &str, port: u16) {
        let rx = Background::spawn(
            &self.w.ns,
            cg,
            &[
                &format!("socket {}", fam.udp),
                &format!("bind {}", sa(dst, port)),
                "recvfrom",
            ],
        );
        rx.wait_for("bind");
        self.peer(&[
            &format!("socket {}", fam.udp),
            &format!("bind {}", sa(fam.peer, port)),
            &format!("sendto {}", sa(dst, port)),
        ])
        .addr();
        assert_eq!(rx.wait_for("recvfrom").addr(), sa(fam.peer, port));
    }

    /// Sends `frame` out of the World's end of the veth (AF_PACKET) from a process in `cg`.
    fn send_frame(&self, cg: &Path, frame: &[u8]) -> Step {
        probe_last(
            &self.w.ns,
            cg,
            &[&format!("packet-send {VETH} {}", to_hex(frame))],
        )
    }

    /// `netiso --json iface ls`.
    fn ifaces(&self) -> Value {
        self.agent().cli(&["--json", "iface", "ls"]).ok().json()
    }

    /// Asserts that `iface ls` shows exactly the veth, in `state`, with the right ifindex.
    #[track_caller]
    fn assert_veth(&self, state: &str) {
        let ls = self.ifaces();
        let ifindex = match state {
            "attached" => Value::from(self.w.ns.ifindex(VETH)),
            _ => Value::Null,
        };
        assert_eq!(
            ls,
            serde_json::json!([{ "name": VETH, "state": state, "ifindex": ifindex }])
        );
    }
}

/// An Ethernet frame to the peer's MAC carrying a UDP datagram `src:sport -> dst:dport` with a
/// correct UDP checksum (IPv6 requires one).
fn udp_frame(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let payload = b"frame";
    let len = 8 + payload.len() as u16;
    let mut udp = [
        &sport.to_be_bytes()[..],
        &dport.to_be_bytes(),
        &len.to_be_bytes(),
        &[0, 0],
        payload,
    ]
    .concat();
    let pseudo = match (src.parse().unwrap(), dst.parse().unwrap()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            [&s.octets()[..], &d.octets(), &[0, 17], &len.to_be_bytes()].concat()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => [
            &s.octets()[..],
            &d.octets(),
            &u32::from(len).to_be_bytes(),
            &[0, 0, 0, 17],
        ]
        .concat(),
        _ => panic!("mixed address families"),
    };
    let sum = match checksum(&[pseudo, udp.clone()].concat()) {
        0 => 0xffff,
        s => s,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut f = Packet::new(
        src,
        dst,
        Transport::Raw {
            proto: 17,
            bytes: udp,
        },
    )
    .build();
    f[..6].copy_from_slice(&PEER_MAC);
    f
}

/// `netiso --json stats` as container name -> counters.
fn stats(agent: &Agent) -> BTreeMap<String, Value> {
    let v = agent.cli(&["--json", "stats"]).ok().json();
    v.as_array()
        .expect("stats is a list")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["counters"].clone(),
            )
        })
        .collect()
}

fn ctr(stats: &BTreeMap<String, Value>, c: &str, key: &str) -> u64 {
    stats[c][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {c} {key}"))
}

const IFACE_COUNTERS: [&str; 4] = [
    "iface_rx_packets",
    "iface_rx_bytes",
    "iface_tx_packets",
    "iface_tx_bytes",
];

fn iface_counters(stats: &BTreeMap<String, Value>, c: &str) -> [u64; 4] {
    IFACE_COUNTERS.map(|k| ctr(stats, c, k))
}

fn wait_counter(agent: &Agent, c: &str, key: &str, at_least: u64) {
    wait_until(
        &format!("{c} {key} >= {at_least}"),
        Duration::from_secs(10),
        || agent.counter(c, key) >= at_least,
    );
}

/// The TCX link pins under the agent's bpffs directory, sorted.
fn tcx_pins(agent: &Agent) -> Vec<String> {
    let mut pins: Vec<String> = std::fs::read_dir(agent.bpffs.join("links"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tcx-"))
                .collect()
        })
        .unwrap_or_default();
    pins.sort();
    pins
}

fn veth_pins() -> Vec<String> {
    vec![format!("tcx-egress@{VETH}"), format!("tcx-ingress@{VETH}")]
}

// Ingress traffic is attributed to the container owning its destination, egress traffic (the
// replies) to the owner of its source; an unregistered process talking over the interface from
// a host address changes no container counter. UDP and TCP, IPv4 and IPv6.
fn interface_traffic_is_attributed_to_the_address_owner() {
    let lan = Lan::new("if-attr");
    let info = lan
        .agent()
        .cli(&["--json", "iface", "add", VETH])
        .ok()
        .json();
    assert_eq!(info[0]["state"], "attached");
    let ns = &lan.w.ns;

    // A host process, from the World's address on the link: not a container's business.
    let before = stats(lan.agent());
    for (fam, port) in [(V4, 7100), (V6, 7200)] {
        let srv = lan.peer_bg(&[
            &format!("socket {}", fam.tcp),
            &format!("bind {}", sa(fam.peer, port)),
            "listen",
            "serve outside",
        ]);
        srv.wait_for("serving");
        probe_last(
            ns,
            &lan.host,
            &[
                &format!("socket {}", fam.tcp),
                &format!("bind {}", sa(fam.world, 0)),
                &format!("connect {}", sa(fam.peer, port)),
                "send",
            ],
        )
        .addr();
        let echo = lan.peer_bg(&[
            &format!("socket {}", fam.udp),
            &format!("bind {}", sa(fam.peer, port + 1)),
            "recvfrom",
            &format!("sendto {}", sa(fam.world, port + 2)),
        ]);
        echo.wait_for("bind");
        let s = probe_last(
            ns,
            &lan.host,
            &[
                &format!("socket {}", fam.udp),
                &format!("bind {}", sa(fam.world, port + 2)),
                &format!("sendto {}", sa(fam.peer, port + 1)),
                "recvfrom",
            ],
        );
        assert_eq!(s.addr(), sa(fam.peer, port + 1));
    }
    assert_eq!(
        stats(lan.agent()),
        before,
        "host traffic changed container counters"
    );

    // UDP from the peer to c1, answered by c1.
    for (fam, port) in [(V4, 7110), (V6, 7210)] {
        let before = stats(lan.agent());
        let srv = Background::spawn(
            ns,
            &lan.c1,
            &[
                &format!("socket {}", fam.udp),
                &format!("bind {}", sa(fam.c1, port)),
                "recvfrom",
                &format!("sendto {}", sa(fam.peer, port + 1)),
            ],
        );
        srv.wait_for("bind");
        let s = lan.peer(&[
            &format!("socket {}", fam.udp),
            &format!("bind {}", sa(fam.peer, port + 1)),
            &format!("sendto {}", sa(fam.c1, port)),
            "recvfrom",
        ]);
        assert_eq!(s.addr(), sa(fam.c1, port), "c1's answer");
        let after = stats(lan.agent());
        let [rx, rx_bytes, tx, tx_bytes] = iface_counters(&after, "c1");
        let [rx0, rx_bytes0, tx0, tx_bytes0] = iface_counters(&before, "c1");
        // Ethernet + IP + UDP + "probe"
        let min_len = if fam.c1.contains(':') {
            14 + 40
        } else {
            14 + 20
        } + 8
            + 5;
        assert!(rx > rx0 && rx_bytes >= rx_bytes0 + min_len, "{after:?}");
        assert!(tx > tx0 && tx_bytes >= tx_bytes0 + min_len, "{after:?}");
    }
    let after_udp = stats(lan.agent());
    assert_eq!(
        iface_counters(&after_udp, "c2"),
        [0; 4],
        "c2 was charged for c1's traffic"
    );

    // TCP from the peer to c2, which answers every connection.
    for (fam, port) in [(V4, 7120), (V6, 7220)] {
        let before = stats(lan.agent());
        let srv = Background::spawn(
            ns,
            &lan.c2,
            &[
                &format!("socket {}", fam.tcp),
                &format!("bind {}", sa(fam.c2, port)),
                "listen",
                "serve hello",
            ],
        );
        srv.wait_for("serving");
        lan.peer(&[
            &format!("socket {}", fam.tcp),
            &format!("connect {}", sa(fam.c2, port)),
            "send",
        ])
        .addr();
        // In: SYN, ACK, data. Out: SYN-ACK, "hello".
        wait_counter(
            lan.agent(),
            "c2",
            "iface_rx_packets",
            ctr(&before, "c2", "iface_rx_packets") + 3,
        );
        wait_counter(
            lan.agent(),
            "c2",
            "iface_tx_packets",
            ctr(&before, "c2", "iface_tx_packets") + 2,
        );
    }
    assert_eq!(
        iface_counters(&stats(lan.agent()), "c1"),
        iface_counters(&after_udp, "c1"),
        "c1 was charged for c2's traffic"
    );

    // The table shows the interface columns.
    let table = lan.agent().cli(&["stats"]).ok().stdout;
    let mut lines = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    let header = lines.next().expect("header");
    for col in ["IF_RX_PKTS", "IF_RX_BYTES", "IF_TX_PKTS", "IF_TX_BYTES"] {
        let i = header
            .iter()
            .position(|h| *h == col)
            .unwrap_or_else(|| panic!("no column {col} in {table}"));
        for row in lines.clone() {
            let n: u64 = row[i].parse().expect("a number");
            assert!(n > 0, "{col} of {} is 0:\n{table}", row[0]);
        }
    }
}

// `iface add lo` puts the TC programs where containers of one host meet. An isolated container
// refuses new flows (TCP SYN, UDP to an unconnected socket) from another container already at
// the interface, even when the sender's socket hooks were bypassed; replies to flows it opened
// itself pass; an allow rule lets the same packets in.
fn isolated_container_drops_new_flows_at_the_interface() {
    let w = World::new("if-lo");
    w.agent.cli(&["iface", "add", "lo"]).ok();
    let a = w.container("a", &[V4.c1, V6.c1], &[]);
    let b = w.container("b", &[V4.c2, V6.c2], &["--isolated"]);
    let host = w.host_cgroup();
    // Host sockets bound to a's addresses: no socket hook judges the host, the packets still
    // carry a's address. (a's own sockets are refused at connect and send already.)
    let fams = [(V4, 7500), (V6, 7600)];

    let mut listeners = Vec::new();
    let mut receivers = Vec::new();
    for (fam, port) in fams {
        let l = Background::spawn(
            &w.ns,
            &b,
            &[
                &format!("socket {}", fam.tcp),
                &format!("bind {}", sa(fam.c2, port)),
                "listen",
                "accept",
            ],
        );
        let r = Background::spawn(
            &w.ns,
            &b,
            &[
                &format!("socket {}", fam.udp),
                &format!("bind {}", sa(fam.c2, port + 1)),
                "recvfrom",
                "recvfrom",
            ],
        );
        l.wait_for("listen");
        r.wait_for("bind");
        listeners.push(l);
        receivers.push(r);
    }

    // Refused: dropped at the interface, before it counts the packet for b and before b's
    // sockets see it.
    let before = stats(&w.agent);
    for (fam, port) in fams {
        let s = probe_last(
            &w.ns,
            &host,
            &[
                &format!("socket {}", fam.tcp),
                "timeout 500",
                &format!("bind {}", sa(fam.c1, 0)),
                &format!("connect {}", sa(fam.c2, port)),
            ],
        );
        assert!(!s.ok, "b accepted a connection from a ({})", fam.tcp);
        probe_last(
            &w.ns,
            &host,
            &[
                &format!("socket {}", fam.udp),
                &format!("bind {}", sa(fam.c1, port + 2)),
                &format!("sendto {}", sa(fam.c2, port + 1)),
            ],
        )
        .addr();
    }
    wait_counter(
        &w.agent,
        "b",
        "policy_dropped",
        ctr(&before, "b", "policy_dropped") + 4,
    );
    let after = stats(&w.agent);
    for key in ["iface_rx_packets", "rx_packets", "ingress_dropped"] {
        assert_eq!(ctr(&after, "b", key), ctr(&before, "b", key), "b {key}");
    }
    // The host may reach b; its datagram is the first b's sockets receive.
    for ((fam, port), r) in fams.into_iter().zip(&receivers) {
        probe_last(
            &w.ns,
            &host,
            &[
                &format!("socket {}", fam.udp),
                &format!("bind {}", sa(fam.host, port + 3)),
                &format!("sendto {}", sa(fam.c2, port + 1)),
            ],
        )
        .addr();
        assert_eq!(r.wait_for("recvfrom").addr(), sa(fam.host, port + 3));
    }
    // ... and the interface counted those for b: it sees b's traffic, it dropped a's.
    assert!(w.agent.counter("b", "iface_rx_packets") >= ctr(&before, "b", "iface_rx_packets") + 2);

    // b opens flows to a: a's answers pass (TCP handshake and data; UDP to b's connected
    // socket: a's unconnected send to isolated b passes as the answer it is).
    let dropped = w.agent.counter("b", "policy_dropped");
    for (fam, port) in fams {
        let srv = Background::spawn(
            &w.ns,
            &a,
            &[
                &format!("socket {}", fam.tcp),
                &format!("bind {}", sa(fam.c1, port + 4)),
                "listen",
                "serve hello b",
            ],
        );
        srv.wait_for("serving");
        probe_last(
            &w.ns,
            &b,
            &[
                &format!("socket {}", fam.tcp),
                &format!("connect {}", sa(fam.c1, port + 4)),
                "send",
            ],
        )
        .addr();
        let echo = Background::spawn(
            &w.ns,
            &a,
            &[
                &format!("socket {}", fam.udp),
                &format!("bind {}", sa(fam.c1, port + 5)),
                "recvfrom",
                &format!("sendto {}", sa(fam.c2, port + 6)),
            ],
        );
        echo.wait_for("bind");
        let s = probe_last(
            &w.ns,
            &b,
            &[
                &format!("socket {}", fam.udp),
                &format!("bind {}", sa(fam.c2, port + 6)),
                &format!("connect {}", sa(fam.c1, port + 5)),
                "send",
                "recvfrom",
            ],
        );
        assert_eq!(s.addr(), sa(fam.c1, port + 5), "a's answer to b");
    }
    assert_eq!(w.agent.counter("b", "policy_dropped"), dropped);

    // Allowed: the same packets get in.
    w.agent.cli(&["policy", "allow", "a", "b"]).ok();
    for (((fam, port), l), r) in fams.into_iter().zip(&listeners).zip(&receivers) {
        probe_last(
            &w.ns,
            &a,
            &[
                &format!("socket {}", fam.tcp),
                &format!("bind {}", sa(fam.c1, 0)),
                &format!("connect {}", sa(fam.c2, port)),
            ],
        )
        .addr();
        assert_eq!(
            l.wait_for("accept").addr().rsplit_once(':').unwrap().0,
            sa(fam.c1, 0).rsplit_once(':').unwrap().0
        );
        probe_last(
            &w.ns,
            &a,
            &[
                &format!("socket {}", fam.udp),
                &format!("bind {}", sa(fam.c1, port + 2)),
                &format!("sendto {}", sa(fam.c2, port + 1)),
            ],
        )
        .addr();
        assert_eq!(r.wait_for("recvfrom").addr(), sa(fam.c1, port + 2));
    }
    assert_eq!(w.agent.counter("b", "policy_dropped"), dropped);
}

// A container process writing frames straight to the interface (AF_PACKET: no socket hook and
// no cgroup_skb program sees them) cannot use a source it does not own; its own source passes.
// An unregistered process may send anything, also a container's source.
fn spoofed_frames_are_dropped_on_the_wire() {
    let lan = Lan::new("if-spoof");
    lan.agent().cli(&["iface", "add", VETH]).ok();
    for (fam, port) in [(V4, 7300), (V6, 7400)] {
        let rx = lan.peer_bg(&[
            &format!("socket {}", fam.udp),
            &format!("bind {}", sa(fam.peer, port)),
            "recvfrom",
            "recvfrom",
        ]);
        rx.wait_for("bind");
        let dropped = lan.agent().counter("c1", "egress_dropped");
        for src in [fam.c2, fam.stranger] {
            let s = lan.send_frame(&lan.c1, &udp_frame(src, 4000, fam.peer, port));
            assert_eq!(s.err(), "ENOBUFS", "c1 sent a frame from {src}");
        }
        assert_eq!(lan.agent().counter("c1", "egress_dropped"), dropped + 2);
        assert_eq!(lan.agent().counter("c2", "egress_dropped"), 0);

        let tx = lan.agent().counter("c1", "iface_tx_packets");
        lan.send_frame(&lan.c1, &udp_frame(fam.c1, 4001, fam.peer, port))
            .addr();
        // The first datagram the peer gets is c1's own: the spoofed ones never arrived.
        assert_eq!(rx.wait_for("recvfrom").addr(), sa(fam.c1, 4001));
        assert_eq!(lan.agent().counter("c1", "iface_tx_packets"), tx + 1);

        // The host is not judged; its frame is charged to the owner of the source.
        let c2_tx = lan.agent().counter("c2", "iface_tx_packets");
        lan.send_frame(&lan.host, &udp_frame(fam.c2, 4002, fam.peer, port))
            .addr();
        assert_eq!(rx.wait_for("recvfrom").addr(), sa(fam.c2, 4002));
        assert_eq!(lan.agent().counter("c2", "iface_tx_packets"), c2_tx + 1);
    }
    // Not IP at all (an ARP-typed frame): a container has no business sending it.
    let mut arp = PEER_MAC.to_vec();
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(lan.send_frame(&lan.c1, &arp).err(), "ENOBUFS");
    assert_eq!(lan.agent().counter("c1", "malformed_dropped"), 1);
    lan.send_frame(&lan.host, &arp).addr();
}

// Errors: an unknown or non-Ethernet interface is refused with its name (exit 1) and nothing
// is configured or pinned; a malformed name is a usage error (exit 2); removing an interface
// that is not configured is an error (exit 1).
fn iface_errors_are_clear_and_change_nothing() {
    let w = World::new("if-err");
    let out = w.agent.cli(&["iface", "add", "nosuch0"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("\"nosuch0\""), "{}", out.stderr);
    w.ns.ip(&["tuntap", "add", "mode", "tun", "name", "ntun0"]);
    let out = w.agent.cli(&["iface", "add", "ntun0"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("\"ntun0\"") && out.stderr.contains("Ethernet"),
        "{}",
        out.stderr
    );
    let long = "x".repeat(16);
    for bad in ["a/b", "", "a b", "a:b", "..", long.as_str()] {
        for verb in ["add", "rm"] {
            let out = w.agent.cli(&["iface", verb, bad]);
            assert_eq!(out.code, 2, "iface {verb} {bad:?}: {out:?}");
        }
    }
    let out = w.agent.cli(&["iface", "rm", "nosuch0"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not configured"), "{}", out.stderr);
    let out = w.agent.cli(&["iface", "rm", "lo"]);
    assert_eq!(out.code, 1, "{out:?}");

    let ls = w.agent.cli(&["--json", "iface", "ls"]).ok().json();
    assert_eq!(ls, serde_json::json!([]));
    assert!(tcx_pins(&w.agent).is_empty(), "{:?}", tcx_pins(&w.agent));
    let status = w.agent.cli(&["--json", "status"]).ok().json();
    assert_eq!(status["ifaces"], serde_json::json!([]));
}

// `iface add` twice attaches once (each packet counted once); `iface ls` (table and JSON);
// `iface rm` unpins and detaches: the interface's traffic is no longer counted.
fn iface_add_is_idempotent_and_rm_detaches() {
    let lan = Lan::new("if-add");
    let ifindex = lan.w.ns.ifindex(VETH);
    for _ in 0..2 {
        let out = lan
            .agent()
            .cli(&["--json", "iface", "add", VETH])
            .ok()
            .json();
        assert_eq!(
            out,
            serde_json::json!([{ "name": VETH, "state": "attached", "ifindex": ifindex }])
        );
    }
    lan.assert_veth("attached");
    assert_eq!(tcx_pins(lan.agent()), veth_pins());
    let table = lan.agent().cli(&["iface", "ls"]).ok().stdout;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["IFACE", "STATE", "IFINDEX"],
            vec![VETH, "attached", &ifindex.to_string()]
        ]
    );
    let status = lan.agent().cli(&["--json", "status"]).ok().json();
    assert_eq!(status["ifaces"], serde_json::json!([VETH]));

    for (fam, port) in [(V4, 7700), (V6, 7710)] {
        let rx = lan.agent().counter("c1", "iface_rx_packets");
        lan.datagram(&lan.c1, fam, fam.c1, port);
        assert_eq!(
            lan.agent().counter("c1", "iface_rx_packets"),
            rx + 1,
            "one datagram, counted once"
        );
    }

    lan.agent().cli(&["iface", "rm", VETH]).ok();
    assert_eq!(lan.ifaces(), serde_json::json!([]));
    assert!(tcx_pins(lan.agent()).is_empty());
    let before = stats(lan.agent());
    for (fam, port) in [(V4, 7720), (V6, 7730)] {
        lan.datagram(&lan.c1, fam, fam.c1, port);
    }
    assert_eq!(
        iface_counters(&stats(lan.agent()), "c1"),
        iface_counters(&before, "c1"),
        "counted after iface rm"
    );
    assert_eq!(lan.agent().cli(&["iface", "rm", VETH]).code, 1);
}

// `agent --iface`: the programs are pinned and keep enforcing and counting while the agent is
// killed; a restarted agent (without --iface) adopts them from its state; `agent --cleanup`
// detaches them.
fn tc_programs_outlive_the_agent_until_cleanup() {
    let mut lan = Lan::new("if-life");
    let spoofed = udp_frame(V4.c2, 4000, V4.peer, 7800);
    lan.w.agent.stop(Signal::SIGTERM);
    lan.w.agent.start_with(&["--iface", VETH]);
    lan.assert_veth("attached");
    assert_eq!(tcx_pins(lan.agent()), veth_pins());
    lan.datagram(&lan.c1, V4, V4.c1, 7810);
    let rx = lan.agent().counter("c1", "iface_rx_packets");
    assert!(rx >= 1);

    lan.w.agent.stop(Signal::SIGKILL);
    assert_eq!(lan.send_frame(&lan.c1, &spoofed).err(), "ENOBUFS");
    for (fam, port) in [(V4, 7820), (V6, 7830)] {
        lan.datagram(&lan.c1, fam, fam.c1, port);
    }

    lan.w.agent.start();
    lan.assert_veth("attached");
    assert!(
        lan.w.agent.log_text().contains("adopted the pinned link"),
        "{}",
        lan.w.agent.log_text()
    );
    assert!(
        lan.agent().counter("c1", "iface_rx_packets") >= rx + 2,
        "not counted while the agent was down"
    );
    let rx = lan.agent().counter("c1", "iface_rx_packets");
    lan.datagram(&lan.c1, V6, V6.c1, 7840);
    assert!(lan.agent().counter("c1", "iface_rx_packets") > rx);
    let dropped = lan.agent().counter("c1", "egress_dropped");
    assert_eq!(lan.send_frame(&lan.c1, &spoofed).err(), "ENOBUFS");
    assert_eq!(lan.agent().counter("c1", "egress_dropped"), dropped + 1);

    lan.w.agent.stop(Signal::SIGTERM);
    assert_eq!(
        tcx_pins(lan.agent()),
        veth_pins(),
        "stopping detaches nothing"
    );
    let out = lan.w.agent.cleanup();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(tcx_pins(lan.agent()).is_empty());
    assert!(!lan.w.agent.bpffs.exists());
    // Detached: the spoofed frame now reaches the peer.
    let rx = lan.peer_bg(&[
        "socket udp4",
        &format!("bind {}", sa(V4.peer, 7800)),
        "recvfrom",
    ]);
    rx.wait_for("bind");
    // The kernel detaches a link whose last reference is gone in deferred work: wait for it.
    wait_until(
        "the TC programs to be detached",
        Duration::from_secs(20),
        || lan.send_frame(&lan.c1, &spoofed).ok,
    );
    assert_eq!(rx.wait_for("recvfrom").addr(), sa(V4.c2, 4000));
}

// An interface deleted and created again under the same name: `iface ls` tells missing and
// detached (and detached means not enforced), `iface add` repairs it; an agent (re)started
// after the interface was re-created re-attaches it from its state by itself.
fn recreated_interface_is_reported_and_repaired() {
    let mut lan = Lan::new("if-recreate");
    let spoofed = udp_frame(V6.stranger, 4000, V6.peer, 7900);
    lan.agent().cli(&["iface", "add", VETH]).ok();
    assert_eq!(lan.send_frame(&lan.c1, &spoofed).err(), "ENOBUFS");

    // While the agent runs.
    lan.w.ns.ip(&["link", "del", VETH]);
    lan.assert_veth("missing");
    wire(&lan.w.ns, &lan.peer);
    lan.assert_veth("detached");
    lan.send_frame(&lan.c1, &spoofed).addr();
    let out = lan
        .agent()
        .cli(&["--json", "iface", "add", VETH])
        .ok()
        .json();
    assert_eq!(out[0]["state"], "attached");
    lan.assert_veth("attached");
    assert_eq!(lan.send_frame(&lan.c1, &spoofed).err(), "ENOBUFS");
    let rx = lan.agent().counter("c1", "iface_rx_packets");
    lan.datagram(&lan.c1, V4, V4.c1, 7910);
    assert_eq!(lan.agent().counter("c1", "iface_rx_packets"), rx + 1);

    // While the agent is down: the next agent re-attaches by itself.
    lan.w.agent.stop(Signal::SIGKILL);
    lan.w.ns.ip(&["link", "del", VETH]);
    wire(&lan.w.ns, &lan.peer);
    lan.send_frame(&lan.c1, &spoofed).addr();
    lan.w.agent.start();
    lan.assert_veth("attached");
    assert_eq!(tcx_pins(lan.agent()), veth_pins());
    assert_eq!(lan.send_frame(&lan.c1, &spoofed).err(), "ENOBUFS");

    // Gone when the agent starts: it starts anyway and keeps the interface configured.
    lan.w.agent.stop(Signal::SIGKILL);
    lan.w.ns.ip(&["link", "del", VETH]);
    lan.w.agent.start();
    lan.assert_veth("missing");
    wire(&lan.w.ns, &lan.peer);
    lan.assert_veth("detached");
    lan.agent().cli(&["iface", "add", VETH]).ok();
    lan.assert_veth("attached");
    assert_eq!(lan.send_frame(&lan.c1, &spoofed).err(), "ENOBUFS");
    let rx = lan.agent().counter("c1", "iface_rx_packets");
    lan.datagram(&lan.c1, V6, V6.c1, 7920);
    assert_eq!(lan.agent().counter("c1", "iface_rx_packets"), rx + 1);
}

netiso_testkit::privileged_tests![
    interface_traffic_is_attributed_to_the_address_owner,
    isolated_container_drops_new_flows_at_the_interface,
    spoofed_frames_are_dropped_on_the_wire,
    iface_errors_are_clear_and_change_nothing,
    iface_add_is_idempotent_and_rm_detaches,
    tc_programs_outlive_the_agent_until_cleanup,
    recreated_interface_is_reported_and_repaired,
];
