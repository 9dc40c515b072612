//! Revoking an address ends its use: when an address leaves a container (`ip rm`,
//! `container rm`, `ip move`), the container's sockets that use it as their local address are
//! destroyed — TCP in every state (connections reset, listeners closed), UDP (connected
//! sockets cannot send any more), IPv4, IPv6 and v4-mapped — while sockets of processes
//! outside the container that use the same address are untouched. Container processes run as
//! an attacker would (no CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON).
use std::{
    fs,
    io::Read,
    net::TcpStream,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use netiso_testkit::{probe_as, wait_until, As, Background, Netns, Step, World};

/// Runs `f` in a thread that has joined `ns` (sockets it creates live there).
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    thread::spawn(move || {
        let file = fs::File::open(&path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Connects to `addr` from the namespace and reads the server's line (Err: the errno name).
fn fetch(ns: &Netns, addr: &'static str) -> Result<String, String> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
            .map_err(|e| format!("{:?}", e.kind()))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out)
            .map_err(|e| format!("{:?}", e.kind()))?;
        Ok(out.trim().to_owned())
    })
}

/// A background probe (a container's, as an attacker, or the host's) that has done every
/// step before its `pause` (each must succeed: the positive controls) and waits there.
fn paused(ns: &Netns, cg: &Path, steps: &[&str], who: As) -> Background {
    let bg = Background::spawn_as(ns, cg, steps, who);
    let i = steps
        .iter()
        .position(|s| *s == "pause")
        .expect("a pause step");
    let before = steps[i - 1].split_whitespace().next().unwrap();
    // The step before the pause may share its name with an earlier one (accept, send).
    let n = steps[..i]
        .iter()
        .filter(|s| s.split_whitespace().next() == Some(before))
        .count();
    for _ in 0..n {
        bg.wait_for(before);
    }
    bg
}

/// Resumes a paused probe and returns the step after its pause.
fn resume(bg: &mut Background) -> Step {
    bg.resume();
    bg.wait_for("pause");
    bg.next()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Revoke {
    IpRm,
    ContainerRm,
    Move,
}

/// One revocation of 192.0.2.10 (and with `container rm`, of 2001:db8::10 too) from
/// container a, with sockets of a and of an unregistered host process on the address.
fn revocation(how: Revoke) {
    let w = World::new("rv");
    let a = w.container("a", &["192.0.2.10", "2001:db8::10"], &[]);
    let b = w.container("b", &["192.0.2.11"], &[]);
    let host = w.host_cgroup();
    let attacker = As::Attacker;
    // A host server the container connects to, keeping each connection open.
    let mut peer = Background::spawn(
        &w.ns,
        &host,
        &[
            "socket tcp4",
            "bind 198.51.100.1:9001",
            "listen",
            "accept",
            "recv-held",
            "pause",
            "recv-held",
        ],
    );
    peer.wait_for("listen");
    // Receivers for every UDP socket below, so that no port unreachable fails a send.
    let _sinks: Vec<Background> = [
        "198.51.100.1:9002",
        "198.51.100.1:9003",
        "[2001:db8:1::1]:9004",
        "198.51.100.1:9005",
    ]
    .iter()
    .map(|addr| {
        let sock = if addr.starts_with('[') {
            "socket udp6"
        } else {
            "socket udp4"
        };
        let bg = Background::spawn(&w.ns, &host, &[sock, &format!("bind {addr}"), "wait"]);
        bg.wait_for("bind");
        bg
    })
    .collect();
    // The container's sockets on the address: TCP connection, TCP listener, connected UDP
    // (IPv4 and v4-mapped), and a connected UDP6 on the address that stays with it.
    let mut tcp = paused(
        &w.ns,
        &a,
        &[
            "socket tcp4",
            "bind 192.0.2.10:0",
            "connect 198.51.100.1:9001",
            "send",
            "pause",
            "recv",
        ],
        attacker,
    );
    // The peer got what the container sent.
    assert_eq!(peer.wait_for("recv-held").value.as_deref(), Some("probe"));
    let mut listener = Background::spawn_as(
        &w.ns,
        &a,
        &[
            "socket tcp4",
            "bind 192.0.2.10:8000",
            "listen",
            "accept",
            "pause",
            "accept",
        ],
        attacker,
    );
    listener.wait_for("listen");
    // The listener accepts one connection before.
    let first = in_ns(&w.ns, || TcpStream::connect("192.0.2.10:8000").map(drop));
    assert!(
        first.is_ok(),
        "{how:?}: the container's listener did not accept: {first:?}"
    );
    listener.wait_for("accept");
    let udp_steps = |sock: &str, bind: &str, to: &str| {
        vec![
            sock.to_owned(),
            format!("bind {bind}"),
            format!("connect {to}"),
            "send".into(),
            "pause".into(),
            "send".into(),
        ]
    };
    let spawn_udp = |steps: Vec<String>| {
        let refs: Vec<&str> = steps.iter().map(String::as_str).collect();
        paused(&w.ns, &a, &refs, attacker)
    };
    // Positive controls: every socket worked before (send steps succeeded, else no pause).
    let mut udp4 = spawn_udp(udp_steps(
        "socket udp4",
        "192.0.2.10:0",
        "198.51.100.1:9002",
    ));
    let mut mapped = spawn_udp(udp_steps(
        "socket udp6",
        "[::ffff:192.0.2.10]:0",
        "[::ffff:198.51.100.1]:9003",
    ));
    let mut udp6 = spawn_udp(udp_steps(
        "socket udp6",
        "[2001:db8::10]:0",
        "[2001:db8:1::1]:9004",
    ));
    // An unregistered process bound to the same address, listening.
    let _host_server = {
        let bg = Background::spawn(
            &w.ns,
            &host,
            &[
                "socket tcp4",
                "bind 192.0.2.10:9500",
                "listen",
                "serve host",
            ],
        );
        bg.wait_for("serving");
        bg
    };
    let mut host_udp = paused(
        &w.ns,
        &host,
        &[
            "socket udp4",
            "bind 192.0.2.10:9501",
            "connect 198.51.100.1:9005",
            "send",
            "pause",
            "send",
        ],
        As::Root,
    );

    match how {
        Revoke::IpRm => {
            w.agent
                .cli(&["container", "ip", "rm", "a", "192.0.2.10"])
                .ok();
        }
        Revoke::ContainerRm => {
            w.agent.cli(&["container", "rm", "a"]).ok();
        }
        Revoke::Move => {
            w.cli("container ip move 192.0.2.10 --from a --to b").ok();
        }
    }

    // The TCP connection was aborted: the container sees it, the peer got a reset.
    let s = resume(&mut tcp);
    assert_eq!(
        s.errno.as_deref(),
        Some("ECONNABORTED"),
        "{how:?}: the TCP connection still works: {s:?}"
    );
    let s = resume(&mut peer);
    assert_eq!(
        s.errno.as_deref(),
        Some("ECONNRESET"),
        "{how:?}: peer: {s:?}"
    );
    // The listener is gone: its accept fails, and nobody answers on the address and port.
    let s = resume(&mut listener);
    assert_eq!(
        s.errno.as_deref(),
        Some("EINVAL"),
        "{how:?}: the listener still accepts: {s:?}"
    );
    // Connected UDP sockets on the address cannot send.
    // (Disconnected by the abort: EDESTADDRREQ.)
    for (what, bg) in [("udp4", &mut udp4), ("v4-mapped udp6", &mut mapped)] {
        let s = resume(bg);
        assert_eq!(
            s.errno.as_deref(),
            Some("EDESTADDRREQ"),
            "{how:?}: {what} still sends: {s:?}"
        );
    }
    // The IPv6 address left only with `container rm`.
    let s = resume(&mut udp6);
    assert_eq!(
        s.ok,
        how != Revoke::ContainerRm,
        "{how:?}: udp6 on the address a keeps: {s:?}"
    );
    // The host process's sockets on the same address are untouched. Once the address is b's
    // (move), new connections to it reach only b's sockets (steering by destination), so the
    // host's listener is refused there, as in b's own namespace.
    let expected: Result<&str, &str> = if how == Revoke::Move {
        Err("ConnectionRefused")
    } else {
        Ok("host")
    };
    let got = fetch(&w.ns, "192.0.2.10:9500");
    assert_eq!(got.as_deref().map_err(String::as_str), expected);
    let s = resume(&mut host_udp);
    assert!(s.ok, "{how:?}: the host's UDP socket was touched: {s:?}");

    assert!(
        w.agent.log_text().contains("destroyed"),
        "{how:?}: the agent did not report destroyed sockets:\n{}",
        w.agent.log_text()
    );
    if how == Revoke::Move {
        // b owns it now: it can listen on the very address and port, and is the only one
        // reached there.
        let bg = Background::spawn_as(
            &w.ns,
            &b,
            &["socket tcp4", "bind 192.0.2.10:8000", "listen", "serve b"],
            attacker,
        );
        bg.wait_for("serving");
        for _ in 0..5 {
            assert_eq!(fetch(&w.ns, "192.0.2.10:8000").as_deref(), Ok("b"));
        }
        // And a can no longer bind it.
        let s = probe_as(
            &w.ns,
            &a,
            &["socket tcp4", "bind 192.0.2.10:8001"],
            attacker,
        );
        assert_eq!(s.last().unwrap().errno.as_deref(), Some("EADDRNOTAVAIL"));
    } else {
        assert_eq!(
            fetch(&w.ns, "192.0.2.10:8000"),
            Err("ConnectionRefused".into()),
            "{how:?}: someone still listens on the revoked address"
        );
    }
}

/// Contract: `container ip rm` destroys the container's sockets that use the revoked address
/// (TCP connection reset, listener closed, connected UDP and v4-mapped UDP unable to send),
/// keeps those on its other addresses, and never touches a host process's sockets.
fn ip_rm_ends_the_use_of_the_address() {
    revocation(Revoke::IpRm);
}

/// Contract: `container rm` does the same for every address of the container.
fn container_rm_ends_the_use_of_its_addresses() {
    revocation(Revoke::ContainerRm);
}

/// Contract: `container ip move` does the same for the moved address, after which the new
/// owner binds the same address and port and is the only one reached there.
fn ip_move_ends_the_use_by_the_old_owner() {
    revocation(Revoke::Move);
}

/// One connection attempt: when it started, when it ended, who answered (or the error).
type Attempt = (Instant, Instant, Result<String, String>);

/// Contract: an address moved while clients keep connecting to it is never served by the
/// wrong container: before the move only the old owner answers (the new one cannot even
/// bind it), after it only the new one.
fn ip_move_never_reaches_the_wrong_container() {
    let w = World::new("rv-move");
    let a = w.container("a", &["192.0.2.10", "2001:db8::10"], &[]);
    let b = w.container("b", &["192.0.2.11"], &[]);
    let serve = |cg: &Path, text: &str| {
        let bg = Background::spawn_as(
            &w.ns,
            cg,
            &[
                "socket tcp4",
                "bind 192.0.2.10:8100",
                "listen",
                &format!("serve {text}"),
            ],
            As::Attacker,
        );
        bg
    };
    let server_a = serve(&a, "a");
    server_a.wait_for("serving");
    // b cannot take the address before the move.
    let s = probe_as(
        &w.ns,
        &b,
        &["socket tcp4", "bind 192.0.2.10:8100"],
        As::Attacker,
    );
    assert_eq!(s.last().unwrap().errno.as_deref(), Some("EADDRNOTAVAIL"));

    // Clients keep connecting from the namespace; each answer is stamped.
    let log: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (log, stop, path) = (log.clone(), stop.clone(), w.ns.path());
        thread::spawn(move || {
            let file = fs::File::open(&path).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                let r = TcpStream::connect("192.0.2.10:8100")
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        let mut out = String::new();
                        s.read_to_string(&mut out)?;
                        Ok(out.trim().to_owned())
                    })
                    .map_err(|e| format!("{:?}", e.kind()));
                log.lock().unwrap().push((start, Instant::now(), r));
            }
        })
    };
    let seen = |who: &str| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(_, _, r)| r.as_deref() == Ok(who))
            .count()
    };
    wait_until("a to be reached", Duration::from_secs(10), || {
        seen("a") >= 20
    });
    let before_move = Instant::now();
    w.cli("container ip move 192.0.2.10 --from a --to b").ok();
    let moved = Instant::now();
    let server_b = serve(&b, "b");
    server_b.wait_for("serving");
    wait_until("b to be reached", Duration::from_secs(10), || {
        seen("b") >= 20
    });
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let log = log.lock().unwrap();
    let mut wrong = 0;
    for (start, end, r) in log.iter() {
        match r.as_deref() {
            // Answered by a, yet started after the move had returned: a wrong delivery.
            Ok("a") if *start >= moved => wrong += 1,
            // Answered by b before the move started.
            Ok("b") if *end <= before_move => wrong += 1,
            Ok("a" | "b") | Err(_) => {}
            Ok(other) => panic!("unexpected answer {other:?}"),
        }
    }
    eprintln!(
        "{} connections during the move: {} to a, {} to b, {} refused, {wrong} to the wrong container",
        log.len(),
        log.iter().filter(|(_, _, r)| r.as_deref() == Ok("a")).count(),
        log.iter().filter(|(_, _, r)| r.as_deref() == Ok("b")).count(),
        log.iter().filter(|(_, _, r)| r.is_err()).count()
    );
    assert_eq!(wrong, 0, "connections reached the wrong container");
    drop(server_a);
}

netiso_testkit::privileged_tests![
    ip_rm_ends_the_use_of_the_address,
    container_rm_ends_the_use_of_its_addresses,
    ip_move_ends_the_use_by_the_old_owner,
    ip_move_never_reaches_the_wrong_container,
];
