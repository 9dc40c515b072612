//! Podman drives netiso through the OCI hook: `netiso oci-hook install` writes the hooks.d
//! file, and containers started with `podman run --annotation io.netiso.ips=...` are
//! registered at createRuntime and unregistered at poststop. Every test runs a private Podman
//! (configuration, storage, hooks dir) whose containers join the test's network namespace and
//! get their cgroups below the test's cgroup subtree, the root of the test's agent.
use std::{path::Path, time::Duration};

use netiso_testkit::{
    runtimes::{annotations, remove_v1_cgroups, Podman},
    served, unique, wait_until, Background, CliOutput, World,
};

/// Name, cgroup and addresses of every registered container.
fn registry(w: &World) -> Vec<(String, std::path::PathBuf, Vec<std::net::IpAddr>)> {
    w.agent
        .client()
        .containers()
        .expect("listing containers")
        .into_iter()
        .map(|c| (c.name, c.cgroup, c.ips))
        .collect()
}

fn server(text: &str) -> Vec<String> {
    [
        "netiso-probe",
        "socket tcp4",
        "bind 0.0.0.0:8080",
        "listen",
        &format!("serve {text}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Contract: two containers started with `podman run` both listen on *:8080, and each is
/// reached only at its own address; a bind to the other's address is refused, also from a
/// `podman exec` process; an outgoing connection leaves from the owned address.
fn podman_containers_get_their_own_addresses() {
    let w = World::new("pod-iso");
    let p = Podman::new(&w);
    let id_a = p.start(
        "web-a",
        &[
            ("io.netiso.ips", "192.0.2.10 2001:db8::10"),
            ("io.netiso.name", "web-a"),
        ],
        &strs(&server("A")),
    );
    let id_b = p.start(
        "web-b",
        &[("io.netiso.ips", "192.0.2.11")],
        &strs(&server("B")),
    );
    assert!(p.wait_log("web-a", "serving").contains("192.0.2.10:8080"));
    assert!(p.wait_log("web-b", "serving").contains("192.0.2.11:8080"));

    // Registered by the hook: A under its io.netiso.name, B under its container id, each
    // with the cgroup its init runs in (found by the agent from the pid).
    let client = w.agent.client();
    let a = client.container("web-a").expect("web-a registered");
    assert_eq!(a.cgroup, w.cgroups.root.join(format!("libpod-{id_a}")));
    assert_eq!(
        a.ips,
        vec![
            "192.0.2.10".parse::<std::net::IpAddr>().unwrap(),
            "2001:db8::10".parse().unwrap()
        ]
    );
    let b = client.container(&id_b).expect("web-b registered by id");
    assert_eq!(b.cgroup, w.cgroups.root.join(format!("libpod-{id_b}")));

    // Each is reached only at its own address; nobody listens on the wildcard.
    assert_eq!(served(&w, "192.0.2.10:8080"), "A");
    assert_eq!(served(&w, "192.0.2.11:8080"), "B");
    assert_eq!(served(&w, "192.0.2.20:8080"), "error ECONNREFUSED");

    // `podman exec` processes run in the container's cgroup and are governed.
    let out = p.podman(&["exec", "web-a", "cat", "/proc/self/cgroup"]);
    let own = format!("0::{}/libpod-{id_a}", p.cgroup_parent.display());
    assert!(out.stdout.lines().any(|l| l == own), "{out:?}");
    let refused_before = client.container("web-a").unwrap().counter("bind_refused");
    let out = p.podman(&[
        "exec",
        "web-a",
        "netiso-probe",
        "socket tcp4",
        "bind 192.0.2.11:0",
    ]);
    assert_eq!(
        out.steps().last().unwrap().err(),
        "EADDRNOTAVAIL",
        "{out:?}"
    );
    assert!(client.container("web-a").unwrap().counter("bind_refused") > refused_before);
    let out = p.podman(&[
        "exec",
        "web-a",
        "netiso-probe",
        "socket tcp4",
        "bind 0.0.0.0:0",
    ]);
    assert!(
        out.steps()
            .last()
            .unwrap()
            .addr()
            .starts_with("192.0.2.10:"),
        "{out:?}"
    );

    // The main process of a `podman run --rm` connects from its owned address, and the
    // container is unregistered when it is removed.
    let listener = Background::spawn(
        &w.ns,
        &w.host_cgroup(),
        &["socket tcp4", "bind 192.0.2.20:7000", "listen", "accept"],
    );
    listener.wait_for("listen");
    let mut opts = vec!["--rm".to_owned()];
    opts.extend(annotations(&[
        ("io.netiso.ips", "198.51.100.1"),
        ("io.netiso.name", "client"),
    ]));
    let out = p.run(
        &opts,
        &[
            "netiso-probe",
            "socket tcp4",
            "connect 192.0.2.20:7000",
            "name",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.steps()
            .last()
            .unwrap()
            .addr()
            .starts_with("198.51.100.1:"),
        "{out:?}"
    );
    assert!(listener
        .wait_for("accept")
        .addr()
        .starts_with("198.51.100.1:"));
    wait_until(
        "the removed container is unregistered",
        Duration::from_secs(30),
        || !w.agent.names().contains(&"client".to_owned()),
    );
}

/// Contract: `podman stop` and `podman rm` unregister (poststop); `podman start` registers
/// the container again.
fn podman_stop_start_and_rm_unregister() {
    let w = World::new("pod-stop");
    let p = Podman::new(&w);
    let ann = |ip| [("io.netiso.ips", ip)];
    let id_a = p.start("a", &ann("192.0.2.10"), &strs(&server("A")));
    let id_b = p.start("b", &ann("192.0.2.11"), &strs(&server("B")));
    p.wait_log("a", "serving");
    let mut both = vec![id_a.clone(), id_b.clone()];
    both.sort();
    assert_eq!(w.agent.names(), both);

    let out = p.podman(&["stop", "--time", "0", "a"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until(
        "podman stop unregistered a",
        Duration::from_secs(30),
        || w.agent.names() == vec![id_b.clone()],
    );
    assert_eq!(served(&w, "192.0.2.10:8080"), "error ECONNREFUSED");

    let out = p.podman(&["start", "a"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until(
        "podman start registered a again",
        Duration::from_secs(30),
        || w.agent.names().contains(&id_a),
    );
    wait_until("a serves again", Duration::from_secs(30), || {
        served(&w, "192.0.2.10:8080") == "A"
    });

    let out = p.podman(&["rm", "--force", "--time", "0", "b"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until("podman rm unregistered b", Duration::from_secs(30), || {
        w.agent.names() == vec![id_a.clone()]
    });
    let out = p.podman(&["rm", "--force", "--time", "0", "a"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until("podman rm unregistered a", Duration::from_secs(30), || {
        w.agent.names().is_empty()
    });
}

/// Runs `touch /tmp/MARKER` in a `podman run --rm` container with `opts` and returns the
/// outcome and whether the command ran.
fn try_run(p: &Podman, opts: &[String]) -> (CliOutput, bool) {
    let marker = unique("ran");
    let mut all = vec!["--rm".to_owned()];
    all.extend_from_slice(opts);
    let out = p.run(&all, &["touch", &format!("/tmp/{marker}")]);
    let ran = p.rootfs.join("tmp").join(&marker).exists();
    (out, ran)
}

/// Annotations as (key, value) pairs.
type Pairs<'a> = &'a [(&'a str, &'a str)];

/// Contract: a container whose annotations netiso cannot use, or that the agent refuses,
/// does not start: `podman run` fails with a message naming the annotation (or the
/// agent's reason) and the command never runs. Registered containers are unchanged.
fn podman_refusals_abort_the_container() {
    let w = World::new("pod-refuse");
    let p = Podman::new(&w);
    p.start(
        "web",
        &[("io.netiso.ips", "192.0.2.10"), ("io.netiso.name", "web")],
        &strs(&server("W")),
    );
    p.wait_log("web", "serving");
    let before = registry(&w);

    let cases: [(Pairs, &[&str]); 8] = [
        (
            &[("io.netiso.ips", "192.0.2.999")],
            &["invalid annotation io.netiso.ips", "192.0.2.999"],
        ),
        (
            &[
                ("io.netiso.ips", "192.0.2.11"),
                ("io.netiso.mode", "strict"),
            ],
            &["invalid annotation io.netiso.mode", "enforce or audit"],
        ),
        (
            &[
                ("io.netiso.ips", "192.0.2.11"),
                ("io.netiso.isolated", "maybe"),
            ],
            &["invalid annotation io.netiso.isolated"],
        ),
        (
            &[
                ("io.netiso.ips", "192.0.2.11"),
                ("io.netiso.name", "no/slash"),
            ],
            &["invalid annotation io.netiso.name"],
        ),
        // A misspelt key must not leave the container unconfined.
        (
            &[("io.netiso.ip", "192.0.2.11")],
            &["unknown annotation io.netiso.ip"],
        ),
        (
            &[("io.netiso.mode", "audit")],
            &["io.netiso.ips is missing"],
        ),
        // Refused by the agent: an address another container owns, a loopback address.
        (
            &[("io.netiso.ips", "192.0.2.10")],
            &["io.netiso.ips", "already owned by container \"web\""],
        ),
        (
            &[("io.netiso.ips", "127.0.0.5")],
            &["io.netiso.ips", "loopback"],
        ),
    ];
    for (pairs, needles) in cases {
        let (out, ran) = try_run(&p, &annotations(pairs));
        assert_ne!(out.code, 0, "{pairs:?} started: {out:?}");
        for n in needles {
            assert!(
                out.stderr.contains(n),
                "{pairs:?}: stderr lacks {n:?}: {}",
                out.stderr
            );
        }
        assert!(!ran, "{pairs:?}: the command ran");
    }

    // The name of a running container: refused, and the running one stays registered.
    let (out, ran) = try_run(
        &p,
        &annotations(&[("io.netiso.ips", "192.0.2.11"), ("io.netiso.name", "web")]),
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("a container named \"web\" already exists with cgroup"),
        "{}",
        out.stderr
    );
    assert!(!ran);

    // A cgroup outside the agent's cgroup root cannot be governed: refused.
    let outside = OutsideParent::new();
    let mut opts = annotations(&[("io.netiso.ips", "192.0.2.11")]);
    opts.extend(["--cgroup-parent".to_owned(), outside.rel.clone()]);
    let (out, ran) = try_run(&p, &opts);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("outside the cgroup root"),
        "{}",
        out.stderr
    );
    assert!(!ran);

    assert_eq!(registry(&w), before);
    assert_eq!(served(&w, "192.0.2.10:8080"), "W");
}

/// A cgroup parent next to (outside) the test's subtree, removed on drop.
struct OutsideParent {
    rel: String,
}

impl OutsideParent {
    fn new() -> OutsideParent {
        OutsideParent {
            rel: format!("/{}", unique("pod-outside")),
        }
    }
}

impl Drop for OutsideParent {
    fn drop(&mut self) {
        let mount = netiso_testkit::cgroup2_mount().unwrap();
        netiso_testkit::destroy_cgroup(
            &mount.join(self.rel.trim_start_matches('/')),
            Duration::from_secs(10),
        );
        remove_v1_cgroups(Path::new(&self.rel));
    }
}

/// Contract: with the agent down an annotated container does not start (fail closed); once
/// the agent is back it does.
fn podman_agent_down_fails_closed() {
    let mut w = World::new("pod-down");
    let p = Podman::new(&w);
    let opts = annotations(&[("io.netiso.ips", "192.0.2.10")]);
    w.agent.stop(nix::sys::signal::Signal::SIGTERM);
    let (out, ran) = try_run(&p, &opts);
    assert_ne!(out.code, 0, "started without the agent: {out:?}");
    assert!(
        out.stderr.contains("cannot reach the netiso agent"),
        "{}",
        out.stderr
    );
    assert!(!ran, "the command ran without the agent");

    w.agent.start();
    let (out, ran) = try_run(&p, &opts);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(ran);
    wait_until(
        "the removed container is unregistered",
        Duration::from_secs(30),
        || w.agent.names().is_empty(),
    );
}

/// Contract: a container without netiso annotations is not touched: nothing is registered
/// and its sockets bind wherever the host allows.
fn podman_unannotated_container_is_untouched() {
    let w = World::new("pod-plain");
    let p = Podman::new(&w);
    let out = p.run(
        &[
            "--rm".to_owned(),
            "--annotation".to_owned(),
            "org.example.x=1".to_owned(),
        ],
        &[
            "netiso-probe",
            "socket tcp4",
            "bind 0.0.0.0:9000",
            "name",
            "socket tcp4",
            "bind 192.0.2.20:9001",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let s = out.steps();
    assert_eq!(s[2].addr(), "0.0.0.0:9000", "{out:?}");
    assert_eq!(s.last().unwrap().addr(), "192.0.2.20:9001", "{out:?}");
    assert!(w.agent.names().is_empty());
}

/// Contract: a container that died without its poststop (the runtime crashed) leaves a
/// registration whose cgroup is gone; the agent removes it by itself.
fn podman_container_dead_without_poststop_is_removed() {
    let w = World::new("pod-dead");
    let p = Podman::new(&w);
    let id = p.start(
        "doomed",
        &[("io.netiso.ips", "192.0.2.10")],
        &["sleep", "1000"],
    );
    wait_until("doomed registered", Duration::from_secs(30), || {
        w.agent.names() == vec![id.clone()]
    });
    // Kill the monitor first, so nobody runs the poststop hook, then the container, and
    // remove its cgroup as a crashed runtime's cleanup would.
    let conmon: i32 = p
        .podman(&["inspect", "--format", "{{.State.ConmonPid}}", "doomed"])
        .stdout
        .trim()
        .parse()
        .expect("conmon pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(conmon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("killing conmon");
    let cg = w.cgroups.root.join(format!("libpod-{id}"));
    netiso_user::cgroup::destroy(&cg, Duration::from_secs(10)).expect("removing the cgroup");
    assert!(!cg.exists());
    wait_until(
        "the agent removed the registration of the dead container",
        Duration::from_mins(1),
        || w.agent.names().is_empty(),
    );
}

netiso_testkit::privileged_tests![
    podman_containers_get_their_own_addresses,
    podman_stop_start_and_rm_unregister,
    podman_refusals_abort_the_container,
    podman_agent_down_fails_closed,
    podman_unannotated_container_is_untouched,
    podman_container_dead_without_poststop_is_removed,
];
