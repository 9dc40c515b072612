//! Abstract unix sockets. Containers share the abstract namespace with the host (no unix bind
//! hook exists to separate it), so netiso offers an opt-in: a container with restricted
//! abstract sockets reaches only the names the operator listed; everything else gets
//! ECONNREFUSED, as in a network namespace where no socket has that name. Tried as the threat
//! model's attacker (`NO_CAPS`) and as nobody, with positive controls; the host and other
//! containers are not affected.
use std::{fs, os::unix::fs::PermissionsExt};

use netiso_testkit::{probe_last, with, Background, World, NOBODY, NO_CAPS};

/// Host (unregistered) unix sockets in the test's namespace: stream listeners and datagram
/// receivers on abstract names, and a stream listener on a path.
struct HostSockets {
    _streams: Vec<Background>,
    dgrams: Vec<Background>,
    path: String,
}

impl HostSockets {
    fn new(w: &World, tag: &str) -> HostSockets {
        let host = w.host_cgroup();
        let serve = |addr: &str, text: &str| {
            let b = Background::spawn(
                &w.ns,
                &host,
                &[
                    "socket unix-stream",
                    &format!("bind {addr}"),
                    "listen",
                    &format!("serve {text}"),
                ],
            );
            b.wait_for("serving");
            b
        };
        let receive = |addr: &str| {
            let b = Background::spawn(
                &w.ns,
                &host,
                &[
                    "socket unix-dgram",
                    &format!("bind {addr}"),
                    "recvfrom",
                    "recvfrom",
                    "recvfrom",
                ],
            );
            b.wait_for("bind");
            b
        };
        let path = format!("/tmp/netiso-{tag}-{}.sock", std::process::id());
        let _ = fs::remove_file(&path);
        let streams = vec![
            serve(&format!("@{tag}-host"), "host"),
            serve(&format!("@{tag}-listed"), "listed"),
            serve(&path, "path"),
        ];
        // nobody may connect to the path (file permissions are not what is tested).
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        let dgrams = vec![
            receive(&format!("@{tag}-host-dg")),
            receive(&format!("@{tag}-listed-dg")),
        ];
        HostSockets {
            _streams: streams,
            dgrams,
            path,
        }
    }
}

impl Drop for HostSockets {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Contract (opt-in): a container whose abstract unix sockets are restricted connects and
/// sends only to the abstract names listed for it, by every path (stream connect, datagram
/// connect, sendto, sendmsg, sendmmsg); unlisted names get ECONNREFUSED. Pathname sockets,
/// the host and unrestricted containers are not affected.
fn restricted_containers_reach_only_listed_abstract_names() {
    let tag = "nu1";
    let w = World::new("unix");
    let a = w.container(
        "a",
        &["192.0.2.10"],
        &[
            "--abstract-allow",
            &format!("@{tag}-listed"),
            "--abstract-allow",
            &format!("@{tag}-listed-dg"),
        ],
    );
    let b = w.container("b", &["192.0.2.20"], &[]);
    let host = w.host_cgroup();
    let socks = HostSockets::new(&w, tag);
    let info = w.agent.client().container("a").unwrap();
    assert_eq!(
        info.abstract_unix,
        Some(vec![format!("@{tag}-listed"), format!("@{tag}-listed-dg")])
    );

    for flags in [NO_CAPS, NOBODY] {
        // Controls: listed names and paths are reached, and answer.
        for (dst, answer) in [
            (format!("@{tag}-listed"), "listed"),
            (socks.path.clone(), "path"),
        ] {
            let s = probe_last(
                &w.ns,
                &a,
                &with(
                    flags,
                    &["socket unix-stream", &format!("connect {dst}"), "recv"],
                ),
            );
            assert_eq!(s.value.as_deref(), Some(answer), "{dst}: {s:?}");
        }
        let s = probe_last(
            &w.ns,
            &a,
            &with(
                flags,
                &["socket unix-dgram", &format!("sendto @{tag}-listed-dg")],
            ),
        );
        s.done();

        // Unlisted names: refused by every path, at once.
        let host_dg = format!("@{tag}-host-dg");
        for steps in [
            vec![
                "socket unix-stream".to_owned(),
                format!("connect @{tag}-host"),
            ],
            vec![
                "socket unix-stream".to_owned(),
                format!("connect @{tag}-nowhere"),
            ],
            vec!["socket unix-dgram".to_owned(), format!("connect {host_dg}")],
            vec!["socket unix-dgram".to_owned(), format!("sendto {host_dg}")],
            vec!["socket unix-dgram".to_owned(), format!("sendmsg {host_dg}")],
            vec![
                "socket unix-dgram".to_owned(),
                format!("sendmmsg {host_dg}"),
            ],
        ] {
            let steps: Vec<&str> = steps.iter().map(String::as_str).collect();
            let s = probe_last(&w.ns, &a, &with(flags, &steps));
            assert_eq!(s.err(), "ECONNREFUSED", "{steps:?} as {flags:?}");
        }
    }
    // The listed receiver got the two datagrams sent to it (one per identity). The unlisted
    // one got none: the first datagram it receives is the host's control, sent after all
    // of the container's attempts (unix datagrams are queued in order, at once).
    for _ in 0..2 {
        socks.dgrams[1].next().done();
    }
    probe_last(
        &w.ns,
        &host,
        &[
            "socket unix-dgram",
            &format!("bind @{tag}-control"),
            &format!("sendto @{tag}-host-dg"),
        ],
    )
    .done();
    let first = socks.dgrams[0].next();
    assert!(
        first.addr().contains(&format!("{tag}-control")),
        "{first:?}"
    );

    // The host and an unrestricted container still reach the host's abstract sockets.
    for cg in [&b, &host] {
        let s = probe_last(
            &w.ns,
            cg,
            &with(
                NO_CAPS,
                &[
                    "socket unix-stream",
                    &format!("connect @{tag}-host"),
                    "recv",
                ],
            ),
        );
        assert_eq!(s.value.as_deref(), Some("host"), "{}", cg.display());
    }
    assert!(w.agent.counter("a", "unix_refused") >= 12);
    assert_eq!(w.agent.counter("b", "unix_refused"), 0);
}

/// The restriction changes at run time (a list, no name, shared again), survives an agent
/// restart, and its programs are attached only while a container is restricted.
fn abstract_restriction_changes_and_survives_a_restart() {
    let tag = "nu2";
    let w = World::new("unix2");
    let a = w.container("a", &["192.0.2.10"], &[]);
    let _socks = HostSockets::new(&w, tag);
    let connect = |name: &str| {
        probe_last(
            &w.ns,
            &a,
            &with(
                NO_CAPS,
                &["socket unix-stream", &format!("connect @{tag}-{name}")],
            ),
        )
    };
    let unix_links = |bpffs: &std::path::Path| {
        fs::read_dir(bpffs.join("links"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("unix-"))
            .count()
    };
    // Shared (the default): the host's names are reached; nothing attached.
    connect("host").done();
    assert_eq!(unix_links(&w.agent.bpffs), 0);

    let cli = |args: &[&str]| w.agent.cli(args);
    cli(&["container", "abstract-unix", "a", "--none"]).ok();
    assert_eq!(connect("host").err(), "ECONNREFUSED");
    assert_eq!(connect("listed").err(), "ECONNREFUSED");
    assert_eq!(unix_links(&w.agent.bpffs), 2);

    let listed = format!("@{tag}-listed");
    let out = cli(&["container", "abstract-unix", "a", "--allow", &listed]).ok();
    assert!(out.stdout.contains(&listed), "{}", out.stdout);
    connect("listed").done();
    assert_eq!(connect("host").err(), "ECONNREFUSED");

    // A name must be written as `ss -x` shows it.
    let bad = cli(&["container", "abstract-unix", "a", "--allow", "no-at-sign"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("must start with '@'"), "{}", bad.stderr);

    let mut w = w;
    w.agent.stop(nix::sys::signal::Signal::SIGTERM);
    // Stopped: the pinned programs keep enforcing.
    assert_eq!(connect_in(&w, &a, tag, "host").err(), "ECONNREFUSED");
    w.agent.start();
    assert_eq!(connect_in(&w, &a, tag, "host").err(), "ECONNREFUSED");
    connect_in(&w, &a, tag, "listed").done();
    let info = w.agent.client().container("a").unwrap();
    assert_eq!(info.abstract_unix, Some(vec![listed]));

    w.agent
        .cli(&["container", "abstract-unix", "a", "--shared"])
        .ok();
    connect_in(&w, &a, tag, "host").done();
    assert_eq!(unix_links(&w.agent.bpffs), 0);
    let info = w.agent.client().container("a").unwrap();
    assert_eq!(info.abstract_unix, None);
}

fn connect_in(w: &World, cg: &std::path::Path, tag: &str, name: &str) -> netiso_testkit::Step {
    probe_last(
        &w.ns,
        cg,
        &with(
            NO_CAPS,
            &["socket unix-stream", &format!("connect @{tag}-{name}")],
        ),
    )
}

netiso_testkit::privileged_tests![
    restricted_containers_reach_only_listed_abstract_names,
    abstract_restriction_changes_and_survives_a_restart,
];
