//! Registration by pid and idempotent registration (API and CLI), and `netiso oci-hook` fed
//! OCI states directly, as a runtime would: register at createRuntime, unregister at
//! poststop (never a container that still runs), fail closed, give up on a stuck agent.
use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use netiso_testkit::{netiso_bin, probe_last, wait_until, Background, CliOutput, World};
use netiso_user::{api::AddContainer, client::ClientError};
use serde_json::{json, Value};

/// A process waiting in `cgroup` (killed on drop), once it is there.
fn resident(w: &World, cgroup: &Path) -> Background {
    let bg = Background::spawn(&w.ns, cgroup, &["wait"]);
    let pid = bg.pid().to_string();
    wait_until(
        "the process joined its cgroup",
        Duration::from_secs(20),
        || {
            fs::read_to_string(cgroup.join("cgroup.procs"))
                .is_ok_and(|p| p.lines().any(|l| l == pid))
        },
    );
    bg
}

fn populated(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cgroup.events"))
        .is_ok_and(|s| s.lines().any(|l| l == "populated 1"))
}

/// Runs `netiso --socket AGENT oci-hook EXTRA` with `stdin` as the OCI state.
fn hook(w: &World, extra: &[&str], stdin: &str) -> CliOutput {
    let mut child = Command::new(netiso_bin())
        .arg("--socket")
        .arg(&w.agent.socket)
        .arg("oci-hook")
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running netiso oci-hook");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap().into()
}

/// An OCI state as runtimes pass it to hooks.
fn state(status: &str, pid: Option<u32>, annotations: &Value) -> String {
    let mut s = json!({
        "ociVersion": "1.0.2-dev",
        "id": "3f1c0ffee",
        "status": status,
        "bundle": "/nonexistent/bundle",
        "annotations": annotations,
    });
    if let Some(pid) = pid {
        s["pid"] = json!(pid);
    }
    s.to_string()
}

/// Contract: `container add --pid` registers the cgroup the process is in; registering
/// the same container again succeeds and changes nothing; a registration that differs is
/// refused naming the difference; exactly one of --cgroup and --pid.
fn registration_by_pid_is_idempotent() {
    let w = World::new("oci-pid");
    let cg = w.cgroups.child("ctr");
    let other = w.cgroups.child("other");
    let bg = resident(&w, &cg);
    let pid = bg.pid().to_string();
    let add = |extra: &[&str]| {
        let mut args = vec!["--json", "container", "add", "x", "--pid", &pid];
        args.extend_from_slice(extra);
        w.agent.cli(&args)
    };
    let first = add(&["--ip", "192.0.2.10"]).ok().json();
    assert_eq!(first["cgroup"], json!(cg));
    let again = add(&["--ip", "192.0.2.10"]).ok().json();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(w.agent.names(), vec!["x".to_owned()]);
    // The same by cgroup path is the same container too.
    let cg_s = cg.display().to_string();
    w.agent
        .cli(&[
            "container",
            "add",
            "x",
            "--cgroup",
            &cg_s,
            "--ip",
            "192.0.2.10",
        ])
        .ok();
    // Registered for real: a process there is confined.
    assert_eq!(
        probe_last(&w.ns, &cg, &["socket tcp4", "bind 0.0.0.0:7000"]).addr(),
        "192.0.2.10:7000"
    );

    let other_s = other.display().to_string();
    for (extra, needle) in [
        (
            vec!["--ip", "192.0.2.11"],
            "already exists with addresses 192.0.2.10 (requested: 192.0.2.11)",
        ),
        (
            vec!["--ip", "192.0.2.10", "--ip", "192.0.2.11"],
            "already exists with addresses",
        ),
        (
            vec!["--ip", "192.0.2.10", "--mode", "audit"],
            "already exists with mode enforce (requested: audit)",
        ),
        (
            vec!["--ip", "192.0.2.10", "--isolated"],
            "already exists with isolated false (requested: true)",
        ),
        (
            vec!["--ip", "192.0.2.10", "--allow-raw"],
            "already exists with allow-raw false (requested: true)",
        ),
    ] {
        let out = add(&extra);
        assert_eq!(out.code, 1, "{extra:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{extra:?}: {}", out.stderr);
    }
    let out = w.agent.cli(&[
        "container",
        "add",
        "x",
        "--cgroup",
        &other_s,
        "--ip",
        "192.0.2.10",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("a container named \"x\" already exists with cgroup"),
        "{}",
        out.stderr
    );
    assert_eq!(w.agent.names(), vec!["x".to_owned()]);

    // Pids the agent cannot use.
    for (p, needle) in [
        ("4294967295", "no process with pid 4294967295"),
        // This test process runs outside the agent's cgroup root.
        (&*std::process::id().to_string(), "outside the cgroup root"),
    ] {
        let out = w
            .agent
            .cli(&["container", "add", "y", "--pid", p, "--ip", "192.0.2.20"]);
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains(needle), "{}", out.stderr);
    }
    // Exactly one of --cgroup and --pid: a usage error on the CLI, 400 from the API.
    let out = w.agent.cli(&[
        "container",
        "add",
        "y",
        "--pid",
        &pid,
        "--cgroup",
        &other_s,
        "--ip",
        "192.0.2.20",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = w
        .agent
        .cli(&["container", "add", "y", "--ip", "192.0.2.20"]);
    assert_eq!(out.code, 2, "{out:?}");
    for (cgroup, pid) in [(Some(other.clone()), Some(bg.pid())), (None, None)] {
        let e = w
            .agent
            .client()
            .add_container(&AddContainer {
                name: "y".into(),
                cgroup,
                pid,
                ips: vec!["192.0.2.20".parse().unwrap()],
                mode: netiso_user::api::Mode::Enforce,
                allow_raw: false,
                isolated: false,
                abstract_unix: None,
            })
            .unwrap_err();
        match e {
            ClientError::Api { status, message } => {
                assert_eq!(status.as_u16(), 400);
                assert!(
                    message.contains("exactly one of cgroup and pid"),
                    "{message}"
                );
            }
            e => panic!("{e}"),
        }
    }
    assert_eq!(w.agent.names(), vec!["x".to_owned()]);
}

/// Contract: fed the OCI state at createRuntime, the hook registers the container whose
/// init has that pid (again: no change); at poststop it unregisters it, but never while the
/// registered cgroup still has processes. States of other containers are ignored; bad ones
/// fail with a message naming the problem.
fn oci_hook_registers_and_unregisters() {
    let w = World::new("oci-hook");
    let cg = w.cgroups.child("libpod-3f1c0ffee");
    let bg = resident(&w, &cg);
    let ann = json!({ "io.netiso.ips": "192.0.2.10 2001:db8::10", "io.netiso.name": "h1",
                      "io.podman.annotations.autoremove": "FALSE" });
    let create = state("creating", Some(bg.pid()), &ann);
    let out = hook(&w, &[], &create);
    assert_eq!(out.code, 0, "{out:?}");
    let c = w.agent.client().container("h1").expect("h1 registered");
    assert_eq!(c.cgroup, cg);
    assert_eq!(
        probe_last(&w.ns, &cg, &["socket tcp6", "bind [::]:7000"]).addr(),
        "[2001:db8::10]:7000"
    );
    // createRuntime and prestart both configured, or a retry: same registration.
    let out = hook(&w, &[], &create);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(w.agent.client().container("h1").unwrap().id, c.id);

    // A poststop for h1 while h1's cgroup still runs (another container of that name
    // stopped): refused, h1 stays confined.
    let stop = state("stopped", None, &ann);
    let out = hook(&w, &[], &stop);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("still has processes"), "{}", out.stderr);
    assert_eq!(w.agent.names(), vec!["h1".to_owned()]);

    drop(bg);
    wait_until(
        "the container's processes are gone",
        Duration::from_secs(20),
        || !populated(&cg),
    );
    let out = hook(&w, &[], &stop);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(w.agent.names().is_empty());
    // Twice (poststop after a failed create, or a retry): nothing to do.
    assert_eq!(hook(&w, &[], &stop).code, 0);

    // Not netiso's container: untouched, whatever the stage.
    let bg = resident(&w, &cg);
    let plain = json!({ "io.podman.annotations.autoremove": "FALSE" });
    for s in [
        state("creating", Some(bg.pid()), &plain),
        state("stopped", None, &plain),
    ] {
        let out = hook(&w, &[], &s);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(w.agent.names().is_empty());
    }

    // Failures name the problem and register nothing.
    let bad = json!({ "io.netiso.ips": "192.0.2.10", "io.netiso.allow-raw": "yes" });
    for (stdin, needle) in [
        (
            state("creating", Some(bg.pid()), &bad),
            "invalid annotation io.netiso.allow-raw",
        ),
        ("not json".to_owned(), "stdin is not an OCI state"),
        (
            state("creating", None, &ann),
            "has no pid (status creating)",
        ),
    ] {
        let out = hook(&w, &[], &stdin);
        assert_eq!(out.code, 1, "{stdin}: {out:?}");
        assert!(out.stderr.contains(needle), "{stdin}: {}", out.stderr);
        assert!(w.agent.names().is_empty());
    }
    // At poststop an invalid annotation means nothing was registered: nothing to do.
    assert_eq!(hook(&w, &[], &state("stopped", None, &bad)).code, 0);
}

/// SIGCONTs a stopped agent on drop, also when the test fails.
struct Continue(nix::unistd::Pid);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Contract: the hook gives up on an agent that does not answer (`--timeout`) instead of
/// hanging the runtime, and the container fails.
fn oci_hook_gives_up_on_a_stuck_agent() {
    let w = World::new("oci-stuck");
    let cg = w.cgroups.child("ctr");
    let bg = resident(&w, &cg);
    let pid = nix::unistd::Pid::from_raw(w.agent.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let resume = Continue(pid);
    let ann = json!({ "io.netiso.ips": "192.0.2.10" });
    let out = hook(
        &w,
        &["--timeout", "1"],
        &state("creating", Some(bg.pid()), &ann),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("did not answer within 1s"),
        "{}",
        out.stderr
    );
    // Resumed, the agent still serves the request it had queued; the runtime has removed
    // the aborted container's cgroup by then, and a registration of a removed cgroup goes.
    drop(resume);
}

netiso_testkit::privileged_tests![
    registration_by_pid_is_idempotent,
    oci_hook_registers_and_unregisters,
    oci_hook_gives_up_on_a_stuck_agent,
];
