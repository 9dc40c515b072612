//! Docker drives netiso through the runtime wrapper: a private dockerd runs in the test's
//! network namespace with `netiso-docker-runtime` as runtime `netiso`, and
//! `docker run --runtime netiso --network host -e NETISO_IPS=...` registers the container
//! between runc's create and start, `delete` unregisters it. Containers get their cgroups
//! below the test's cgroup subtree (dockerd `--cgroup-parent`), the root of the test's agent.
use std::{fs, time::Duration};

use netiso_testkit::{
    runtimes::{Dockerd, RuntimeConfig},
    served, unique, wait_until, Background, CliOutput, World,
};

/// Starts a detached container `name` serving TEXT on *:8080 with the given `-e` settings
/// and returns its id.
#[track_caller]
fn start_server(d: &Dockerd, name: &str, env: &[&str], text: &str) -> String {
    let mut opts = vec!["-d", "--name", name];
    for e in env {
        opts.extend(["-e", e]);
    }
    let serve = format!("serve {text}");
    let out = d.run(
        &opts,
        &[
            "netiso-probe",
            "socket tcp4",
            "bind 0.0.0.0:8080",
            "listen",
            &serve,
        ],
    );
    assert_eq!(out.code, 0, "docker run {name}: {out:?}");
    out.stdout.trim().to_owned()
}

/// Contract: through `docker run --runtime netiso`, two containers both listen on *:8080
/// and each is reached only at its own address; a bind to the other's address is refused,
/// also from `docker exec`; an outgoing connection leaves from the owned address;
/// `docker stop` and `docker rm` unregister, `docker start` registers again.
fn docker_containers_get_their_own_addresses() {
    let w = World::new("dock-iso");
    let d = Dockerd::start(&w, RuntimeConfig::Flag);
    let id_a = start_server(
        &d,
        "web-a",
        &["NETISO_IPS=192.0.2.10 2001:db8::10", "NETISO_NAME=web-a"],
        "A",
    );
    let id_b = start_server(&d, "web-b", &["NETISO_IPS=192.0.2.11"], "B");
    assert!(d.wait_log("web-a", "serving").contains("192.0.2.10:8080"));
    assert!(d.wait_log("web-b", "serving").contains("192.0.2.11:8080"));

    // Registered by the wrapper: A under NETISO_NAME, B under its container id, each with
    // the cgroup its init runs in.
    let client = w.agent.client();
    let a = client.container("web-a").expect("web-a registered");
    assert_eq!(a.cgroup, w.cgroups.root.join(&id_a));
    let b = client.container(&id_b).expect("web-b registered by id");
    assert_eq!(b.cgroup, w.cgroups.root.join(&id_b));

    assert_eq!(served(&w, "192.0.2.10:8080"), "A");
    assert_eq!(served(&w, "192.0.2.11:8080"), "B");
    assert_eq!(served(&w, "192.0.2.20:8080"), "error ECONNREFUSED");

    // `docker exec` processes are governed.
    let out = d.docker(&[
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
    let out = d.docker(&[
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

    // The main process of a `docker run --rm` connects from its owned address; removing
    // the container unregisters it.
    let listener = Background::spawn(
        &w.ns,
        &w.host_cgroup(),
        &["socket tcp4", "bind 192.0.2.20:7000", "listen", "accept"],
    );
    listener.wait_for("listen");
    let out = d.run(
        &[
            "--rm",
            "-e",
            "NETISO_IPS=198.51.100.1",
            "-e",
            "NETISO_NAME=client",
        ],
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
    let mut ab = vec![id_b.clone(), "web-a".to_owned()];
    ab.sort();
    wait_until(
        "the removed container is unregistered",
        Duration::from_secs(30),
        || w.agent.names() == ab,
    );

    // stop unregisters, start registers again, rm unregisters.
    let out = d.docker(&["stop", "--time", "0", "web-a"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until(
        "docker stop unregistered web-a",
        Duration::from_secs(30),
        || w.agent.names() == vec![id_b.clone()],
    );
    assert_eq!(served(&w, "192.0.2.10:8080"), "error ECONNREFUSED");
    let out = d.docker(&["start", "web-a"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until("web-a serves again", Duration::from_secs(30), || {
        served(&w, "192.0.2.10:8080") == "A"
    });
    assert_eq!(w.agent.names(), ab);
    let out = d.docker(&["rm", "--force", "web-b"]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_until(
        "docker rm unregistered web-b",
        Duration::from_secs(30),
        || w.agent.names() == vec!["web-a".to_owned()],
    );
}

/// Runs `touch /out/MARKER` in a `docker run --rm --runtime netiso` container with `env`
/// and returns the outcome and whether the command ran.
fn try_run(d: &Dockerd, out_dir: &std::path::Path, env: &[&str]) -> (CliOutput, bool) {
    let marker = unique("ran");
    let volume = format!("{}:/out", out_dir.display());
    let mut opts = vec!["--rm", "-v", &volume];
    for e in env {
        opts.extend(["-e", e]);
    }
    let out = d.run(&opts, &["touch", &format!("/out/{marker}")]);
    (out, out_dir.join(&marker).exists())
}

/// Contract (runtime configured in daemon.json): a container whose NETISO_* settings
/// netiso cannot use, or that the agent refuses, does not start, with a message naming the
/// variable or the agent's reason; with the agent down an annotated container does not
/// start; a container without NETISO_* variables is not touched.
fn docker_refusals_fail_closed() {
    let mut w = World::new("dock-refuse");
    let d = Dockerd::start(&w, RuntimeConfig::DaemonJson);
    let out_dir = d.dir.join("out");
    fs::create_dir_all(&out_dir).unwrap();
    start_server(
        &d,
        "web",
        &["NETISO_IPS=192.0.2.10", "NETISO_NAME=web"],
        "W",
    );
    d.wait_log("web", "serving");

    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["NETISO_IPS=192.0.2.999"],
            &["invalid environment variable NETISO_IPS", "192.0.2.999"],
        ),
        (
            &["NETISO_IPS=192.0.2.11", "NETISO_MODE=strict"],
            &["invalid environment variable NETISO_MODE"],
        ),
        (
            &["NETISO_IP=192.0.2.11"],
            &["unknown environment variable NETISO_IP"],
        ),
        (
            &["NETISO_ALLOW_RAW=true"],
            &["environment variable NETISO_IPS is missing"],
        ),
        (
            &["NETISO_IPS=192.0.2.10"],
            &["NETISO_IPS", "already owned by container \"web\""],
        ),
        (
            &["NETISO_IPS=192.0.2.11", "NETISO_NAME=web"],
            &["a container named \"web\" already exists with cgroup"],
        ),
    ];
    for (env, needles) in cases {
        let (out, ran) = try_run(&d, &out_dir, env);
        assert_ne!(out.code, 0, "{env:?} started: {out:?}");
        for n in needles {
            assert!(
                out.stderr.contains(n),
                "{env:?}: stderr lacks {n:?}: {}",
                out.stderr
            );
        }
        assert!(!ran, "{env:?}: the command ran");
    }
    assert_eq!(w.agent.names(), vec!["web".to_owned()]);
    assert_eq!(served(&w, "192.0.2.10:8080"), "W");

    // No NETISO_* variable: runc alone, nothing registered, binds are the host's.
    let out = d.run(
        &["--rm", "-e", "OTHER=1"],
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
    assert_eq!(w.agent.names(), vec!["web".to_owned()]);

    // Agent down: the container does not start; once it is back, it does.
    w.agent.stop(nix::sys::signal::Signal::SIGTERM);
    let (out, ran) = try_run(&d, &out_dir, &["NETISO_IPS=192.0.2.11"]);
    assert_ne!(out.code, 0, "started without the agent: {out:?}");
    assert!(
        out.stderr.contains("cannot reach the netiso agent"),
        "{}",
        out.stderr
    );
    assert!(!ran, "the command ran without the agent");
    w.agent.start();
    let (out, ran) = try_run(&d, &out_dir, &["NETISO_IPS=192.0.2.11"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(ran);
    wait_until(
        "the removed container is unregistered",
        Duration::from_secs(30),
        || w.agent.names() == vec!["web".to_owned()],
    );
}

netiso_testkit::privileged_tests![
    docker_containers_get_their_own_addresses,
    docker_refusals_fail_closed,
];
