//! The `netiso` command line: exit codes and messages of every refused container change (and
//! that a refused change changes nothing), an unreachable agent, output formats, `netiso run`
//! and the help texts.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use netiso_testkit::{cgroup2_mount, netiso_bin, output, probe_bin, probe_last, unique, World};
use serde_json::{json, Value};

const EXIT_RUNTIME: i32 = 1;
const EXIT_USAGE: i32 = 2;

/// `netiso ARGS` without an implicit --socket or NETISO_SOCKET.
fn netiso(args: &[&str]) -> Command {
    let mut c = Command::new(netiso_bin());
    c.args(args)
        .stdin(Stdio::null())
        .env_remove("NETISO_SOCKET");
    c
}

fn ls(w: &World) -> Value {
    w.cli("--json container ls").ok().json()
}

/// Runs a command that must fail with `code` and a message on stderr containing every
/// `needle`, and checks that the registered containers are exactly as before.
#[track_caller]
fn refused_args(w: &World, args: &[&str], code: i32, needles: &[&str]) {
    let before = ls(w);
    let out = w.agent.cli(args);
    assert_eq!(
        out.code, code,
        "netiso {args:?}: wrong exit status: {out:?}"
    );
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "netiso {args:?}: stderr lacks {n:?}: {}",
            out.stderr
        );
    }
    assert!(
        out.stdout.is_empty(),
        "netiso {args:?}: printed on stdout: {}",
        out.stdout
    );
    assert_eq!(
        ls(w),
        before,
        "netiso {args:?} failed but changed the containers"
    );
}

#[track_caller]
fn refused(w: &World, line: &str, code: i32, needles: &[&str]) {
    refused_args(
        w,
        &line.split_whitespace().collect::<Vec<_>>(),
        code,
        needles,
    );
}

/// A cgroup outside the test tree, removed on drop.
struct StrayCgroup(PathBuf);

impl Drop for StrayCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// Contract: malformed input is a usage error (exit 2), detected before the agent is asked.
fn usage_errors_exit_2() {
    let w = World::new("c-usage");
    w.container("a", &["192.0.2.10"], &[]);
    let fresh = w.cgroups.child("fresh").display().to_string();
    let add_b = format!("container add b --cgroup {fresh}");
    let cases = [
        // Malformed addresses.
        (format!("{add_b} --ip 300.1.1.1"), "300.1.1.1"),
        (format!("{add_b} --ip 2001:db8::zz"), "2001:db8::zz"),
        (format!("{add_b} --ip 192.0.2.11/32"), "192.0.2.11/32"),
        ("container ip add a 300.1.1.1".into(), "300.1.1.1"),
        ("container ip rm a not-an-ip".into(), "not-an-ip"),
        ("run --name r --ip 300.1.1.1 -- true".into(), "300.1.1.1"),
        // Missing arguments.
        (add_b.clone(), "--ip"),
        ("container add b --ip 192.0.2.11".into(), "--cgroup"),
        (
            format!("container add --cgroup {fresh} --ip 192.0.2.11"),
            "<NAME>",
        ),
        ("container mode a".into(), "<MODE>"),
        ("container ip add a".into(), "<ADDR>"),
        ("container rm".into(), "<NAME>"),
        ("container show".into(), "<NAME>"),
        ("run --name r -- true".into(), "--ip"),
        ("run --name r --ip 192.0.2.11".into(), "<CMD>"),
        // Unknown mode or command.
        (
            format!("{add_b} --ip 192.0.2.11 --mode permissive"),
            "permissive",
        ),
        ("container mode a permissive".into(), "permissive"),
        ("container bogus".into(), "bogus"),
        // The same address twice in one command (also in another spelling).
        (
            format!("{add_b} --ip 192.0.2.11 --ip 192.0.2.11"),
            "address 192.0.2.11 is given twice",
        ),
        (
            format!("{add_b} --ip 2001:db8::11 --ip 192.0.2.11 --ip 2001:0db8:0::11"),
            "address 2001:db8::11 is given twice",
        ),
        (
            "run --name r --ip 192.0.2.11 --ip 192.0.2.11 -- true".into(),
            "given twice",
        ),
    ];
    for (line, needle) in &cases {
        refused(&w, line, EXIT_USAGE, &[needle]);
    }
    assert!(
        !w.agent.cgroup_root.join("netiso").exists(),
        "a usage error created a cgroup"
    );
}

/// Contract: requests the agent refuses exit 1 with a precise message, and change nothing
/// (neither the registrations nor the kernel's policy).
fn refused_requests_exit_1_and_change_nothing() {
    let w = World::new("c-refuse");
    let a = w.container("a", &["192.0.2.10", "2001:db8::10"], &[]);
    let b = w.container("b", &["192.0.2.11"], &[]);
    // A container below an intermediate cgroup "mid".
    w.agent
        .add("deep", &w.cgroups.child("mid/deep"), &["198.51.100.1"], &[]);
    let fresh = w.cgroups.child("fresh");
    let add_c = |cgroup: &Path| format!("container add c --cgroup {}", cgroup.display());
    let add_fresh = add_c(&fresh);

    // Address owned by another container: the message names the owner.
    let owned = "already owned by container \"a\"";
    refused(
        &w,
        &format!("{add_fresh} --ip 192.0.2.10"),
        1,
        &["192.0.2.10", owned],
    );
    refused(
        &w,
        &format!("{add_fresh} --ip 192.0.2.20 --ip 2001:db8::10"),
        1,
        &["2001:db8::10", owned],
    );
    refused(
        &w,
        "container ip add b 192.0.2.10",
        1,
        &["address 192.0.2.10", owned],
    );
    refused(
        &w,
        "container ip add a 192.0.2.10",
        1,
        &["container \"a\" already owns 192.0.2.10"],
    );

    // Unknown container, for every command that names one.
    for line in [
        "container rm nosuch",
        "container show nosuch",
        "container mode nosuch audit",
        "container ip add nosuch 192.0.2.20",
        "container ip rm nosuch 192.0.2.10",
    ] {
        refused(&w, line, 1, &["no container named \"nosuch\""]);
    }

    // Cgroups that cannot be registered: missing, not a cgroup, outside the agent's cgroup
    // root (the cgroup2 mount itself; a sibling of the test tree, absolute or relative to the
    // mount), the cgroup root itself.
    let missing = w.cgroups.root.join("no-such-cgroup");
    refused(
        &w,
        &format!("{} --ip 192.0.2.20", add_c(&missing)),
        1,
        &[&missing.display().to_string(), "does not exist"],
    );
    let file = fresh.join("cgroup.procs");
    refused(
        &w,
        &format!("{} --ip 192.0.2.20", add_c(&file)),
        1,
        &["not a cgroup v2 directory"],
    );
    let mount = cgroup2_mount().unwrap();
    let root = w.cgroups.root.display().to_string();
    refused(
        &w,
        &format!("{} --ip 192.0.2.20", add_c(&mount)),
        1,
        &["outside the cgroup root", &root],
    );
    let sibling = StrayCgroup(mount.join(unique("c-sibling")));
    fs::create_dir(&sibling.0).expect("creating sibling cgroup");
    let sibling_s = sibling.0.display().to_string();
    refused(
        &w,
        &format!("{} --ip 192.0.2.20", add_c(&sibling.0)),
        1,
        &[&sibling_s, "outside the cgroup root", &root],
    );
    let relative = sibling.0.strip_prefix(&mount).unwrap();
    refused(
        &w,
        &format!("{} --ip 192.0.2.20", add_c(relative)),
        1,
        &[&sibling_s, "outside the cgroup root"],
    );
    drop(sibling);
    refused(
        &w,
        &format!("{} --ip 192.0.2.20", add_c(&w.cgroups.root)),
        1,
        &["is the cgroup root itself"],
    );

    // Name clash, nesting (below a container, above one), invalid names.
    refused(
        &w,
        &format!(
            "container add a --cgroup {} --ip 192.0.2.20",
            fresh.display()
        ),
        1,
        &["a container named \"a\" already exists"],
    );
    let below = w.cgroups.child("a/inner");
    refused(
        &w,
        &format!("{} --ip 192.0.2.20", add_c(&below)),
        1,
        &["overlaps container \"a\"", "cannot nest"],
    );
    let above = w.cgroups.root.join("mid");
    refused(
        &w,
        &format!("{} --ip 192.0.2.20", add_c(&above)),
        1,
        &["overlaps container \"deep\"", "cannot nest"],
    );
    for name in ["x/y", ".hidden"] {
        let line = format!(
            "container add {name} --cgroup {} --ip 192.0.2.20",
            fresh.display()
        );
        refused(&w, &line, EXIT_USAGE, &["invalid container name"]);
    }

    // Address removal: not the last one, only owned ones.
    refused(
        &w,
        "container ip rm b 192.0.2.11",
        1,
        &["192.0.2.11 is the last address of container \"b\""],
    );
    refused(
        &w,
        "container ip rm a 192.0.2.20",
        1,
        &["container \"a\" does not own 192.0.2.20"],
    );
    refused(
        &w,
        "container ip rm a 192.0.2.11",
        1,
        &["container \"a\" does not own 192.0.2.11"],
    );

    // Addresses no container can own.
    for (ip, what) in [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("::ffff:192.0.2.20", "v4-mapped"),
    ] {
        let msg = format!("{ip} cannot be owned by a container");
        refused(&w, &format!("{add_fresh} --ip {ip}"), 1, &[&msg, what]);
        refused(&w, &format!("container ip add a {ip}"), 1, &[&msg, what]);
    }

    // The kernel saw none of it: a and b keep exactly their addresses, fresh is no container.
    let bind =
        |cg: &Path, addr: &str| probe_last(&w.ns, cg, &["socket tcp4", &format!("bind {addr}")]);
    assert_eq!(bind(&b, "0.0.0.0:7000").addr(), "192.0.2.11:7000");
    assert_eq!(bind(&b, "192.0.2.10:7000").err(), "EADDRNOTAVAIL");
    assert_eq!(bind(&a, "192.0.2.10:7000").addr(), "192.0.2.10:7000");
    assert_eq!(bind(&a, "192.0.2.20:7000").err(), "EADDRNOTAVAIL");
    assert_eq!(bind(&fresh, "192.0.2.20:7000").addr(), "192.0.2.20:7000");
}

/// Contract: the same commands succeed where they are valid (the refusals above are not
/// blanket refusals); relative cgroup paths resolve against the cgroup2 mount.
fn valid_changes_succeed() {
    let w = World::new("c-valid");
    w.container("a", &["192.0.2.10"], &[]);
    w.cli("container ip add a 2001:db8::10").ok();
    w.cli("container ip rm a 192.0.2.10").ok();
    let v = w.cli("--json container mode a audit").ok().json();
    assert_eq!(v["mode"], "audit");
    assert_eq!(v["ips"], json!(["2001:db8::10"]));

    let rel = w.cgroups.child("rel");
    let rel_s = rel
        .strip_prefix(cgroup2_mount().unwrap())
        .unwrap()
        .display()
        .to_string();
    let v = w
        .cli(&format!(
            "--json container add r --cgroup {rel_s} --ip 192.0.2.10"
        ))
        .ok()
        .json();
    assert_eq!(Path::new(v["cgroup"].as_str().unwrap()), rel);
    assert_eq!(ls(&w).as_array().unwrap().len(), 2);
    assert_eq!(
        w.cli("--json container rm r").ok().json(),
        json!({"removed": "r"})
    );
    assert_eq!(ls(&w).as_array().unwrap().len(), 1);
}

/// Contract: without a reachable agent every command exits 1 saying so (and `run` creates
/// nothing); NETISO_SOCKET is the socket when --socket is not given, --socket wins over it.
fn unreachable_agent_and_netiso_socket_env() {
    let w = World::new("c-socket");
    let nowhere = std::env::temp_dir()
        .join(unique("nowhere"))
        .join("netiso.sock");
    let nowhere_s = nowhere.display().to_string();
    let cg = w.cgroups.child("x").display().to_string();
    let add = format!("container add x --cgroup {cg} --ip 192.0.2.20");
    let commands = [
        "status",
        "enable",
        "disable",
        "container ls",
        "container show x",
        &add,
        "container rm x",
        "container mode x audit",
        "container ip add x 192.0.2.20",
        "container ip rm x 192.0.2.20",
        "run --name x --ip 192.0.2.20 -- true",
    ];
    for line in commands {
        let args: Vec<&str> = line.split_whitespace().collect();
        for via_env in [false, true] {
            let mut cmd = netiso(&[]);
            if via_env {
                cmd.env("NETISO_SOCKET", &nowhere);
            } else {
                cmd.arg("--socket").arg(&nowhere);
            }
            let out = output(cmd.args(&args));
            assert_eq!(out.code, EXIT_RUNTIME, "{line} (env: {via_env}): {out:?}");
            assert!(
                out.stderr.contains("cannot reach the netiso agent")
                    && out.stderr.contains(&nowhere_s),
                "{line} (env: {via_env}): unclear message: {}",
                out.stderr
            );
        }
    }
    assert!(!nowhere.exists());
    assert!(
        !w.agent.cgroup_root.join("netiso").exists(),
        "`run` created a cgroup without an agent"
    );
    assert_eq!(ls(&w), json!([]));

    let agent_s = w.agent.socket.display().to_string();
    let out = output(netiso(&["--json", "status"]).env("NETISO_SOCKET", &agent_s)).ok();
    assert_eq!(
        Path::new(out.json()["bpffs"].as_str().unwrap()),
        w.agent.bpffs
    );
    let out = output(netiso(&["--socket", &nowhere_s, "status"]).env("NETISO_SOCKET", &agent_s));
    assert_eq!(
        out.code, EXIT_RUNTIME,
        "--socket did not win over NETISO_SOCKET: {out:?}"
    );
    output(netiso(&["--socket", &agent_s, "status"]).env("NETISO_SOCKET", &nowhere)).ok();
}

/// Contract: --json prints parseable JSON (before or after the subcommand); tables and field
/// lists have a header.
fn json_and_table_output() {
    let w = World::new("c-output");
    let cg = w.cgroups.child("web");
    let cg_s = cg.display().to_string();
    let v = w
        .cli(&format!(
            "container add web --cgroup {cg_s} --ip 192.0.2.10 --ip 2001:db8::10 --json"
        ))
        .ok()
        .json();
    assert_eq!(v["name"], "web");
    assert_eq!(v["ips"], json!(["192.0.2.10", "2001:db8::10"]));
    assert_eq!(v["mode"], "enforce");
    assert_eq!(v["allow_raw"], false);
    assert_eq!(v["cgroup_present"], true);
    assert!(v["counters"]["bind_refused"].is_u64(), "{v}");

    let list = ls(&w);
    assert_eq!(list, w.cli("container ls --json").ok().json());
    let list = list.as_array().expect("ls --json is an array");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["id"], v["id"]);

    let show = w.cli("container show web --json").ok().json();
    assert_eq!(show["name"], "web");
    assert_eq!(Path::new(show["cgroup"].as_str().unwrap()), cg);

    let st = w.cli("status --json").ok().json();
    assert_eq!(st["enabled"], true);
    assert_eq!(st["containers"], 1);
    assert_eq!(
        Path::new(st["cgroup_root"].as_str().unwrap()),
        w.agent.cgroup_root
    );
    assert!(
        st["programs"].as_array().is_some_and(|p| !p.is_empty()),
        "{st}"
    );

    let out = w.cli("container ls").ok();
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .expect("a header line")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "ADDRESSES",
            "MODE",
            "RAW",
            "REFUSED",
            "AUDITED",
            "CGROUP"
        ]
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(
        row,
        [
            "web",
            "192.0.2.10,2001:db8::10",
            "enforce",
            "no",
            "0",
            "0",
            &cg_s
        ]
    );
    assert_eq!(lines.next(), None);

    let out = w.cli("container show web").ok();
    let first = out.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("name:") && first.ends_with(" web"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("bind_refused:"), "{}", out.stdout);
    let out = w.cli("status").ok();
    assert!(out.stdout.starts_with("enforcement:"), "{}", out.stdout);

    // An empty list still has its header, and is an empty JSON array.
    w.cli("container rm web").ok();
    let out = w.cli("container ls").ok();
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(out.stdout.starts_with("NAME"), "{}", out.stdout);
    assert_eq!(ls(&w), json!([]));
}

/// The cgroup `netiso run --name NAME` uses.
fn run_cgroup(w: &World, name: &str) -> PathBuf {
    w.agent.cgroup_root.join("netiso").join(name)
}

#[track_caller]
fn assert_run_cleaned_up(w: &World, name: &str) {
    assert_eq!(ls(w), json!([]), "{name} still registered after run");
    let cg = run_cgroup(w, name);
    assert!(!cg.exists(), "{} left behind", cg.display());
}

/// Contract: `netiso run` runs CMD inside a fresh container at <cgroup root>/netiso/NAME with
/// the given policy, CMD's stdout passes through, and the container is unregistered and its
/// cgroup removed when CMD exits.
fn run_passes_stdout_through_and_cleans_up() {
    let w = World::new("c-run");
    let probe = probe_bin().display().to_string();
    let ns = w.ns.path();
    let run_probe = |bind: &str| {
        let args = [
            "run",
            "--name",
            "job",
            "--ip",
            "192.0.2.10",
            "--",
            &probe,
            "--netns",
            &ns,
            "socket tcp4",
            bind,
        ];
        w.agent.cli(&args).ok().stdout
    };
    let last_step = |stdout: &str| -> Value {
        serde_json::from_str(stdout.lines().last().expect("probe output")).expect("a probe line")
    };

    let step = last_step(&run_probe("bind 0.0.0.0:7400"));
    assert_eq!(step["op"], "bind");
    assert_eq!(
        step["value"], "192.0.2.10:7400",
        "CMD did not run inside the container"
    );
    assert_run_cleaned_up(&w, "job");

    let step = last_step(&run_probe("bind 192.0.2.20:7400"));
    assert_eq!(step["errno"], "EADDRNOTAVAIL", "{step}");
    assert_run_cleaned_up(&w, "job");

    // While CMD runs, the container is registered with its policy.
    let bin = netiso_bin().display().to_string();
    let sock = w.agent.socket.display().to_string();
    let args = [
        "run",
        "--name",
        "job2",
        "--ip",
        "192.0.2.11",
        "--mode",
        "audit",
        "--",
        &bin,
        "--socket",
        &sock,
        "--json",
        "container",
        "show",
        "job2",
    ];
    let v = w.agent.cli(&args).ok().json();
    assert_eq!(
        Path::new(v["cgroup"].as_str().unwrap()),
        run_cgroup(&w, "job2")
    );
    assert_eq!(v["cgroup_present"], true);
    assert_eq!(v["mode"], "audit");
    assert_eq!(v["ips"], json!(["192.0.2.11"]));
    assert_run_cleaned_up(&w, "job2");
}

/// Contract: CMD's exit status passes through, death by signal N exits 128+N; cleanup happens
/// either way, also of processes CMD left behind.
fn run_passes_exit_status_through() {
    let w = World::new("c-exit");
    for (name, ip, script, code) in [
        ("e7", "192.0.2.10", "exit 7", 7),
        ("k9", "192.0.2.10", "kill -9 $$", 137),
        ("t15", "2001:db8::10", "kill -TERM $$", 143),
        ("bg", "192.0.2.10", "sleep 600 >/dev/null 2>&1 & exit 3", 3),
    ] {
        let out = w
            .agent
            .cli(&["run", "--name", name, "--ip", ip, "--", "sh", "-c", script]);
        assert_eq!(out.code, code, "{script}: {out:?}");
        assert_run_cleaned_up(&w, name);
    }
    // A command that cannot be started is a runtime failure, cleaned up as well.
    let out = w.cli("run --name nx --ip 192.0.2.10 -- /nonexistent/cmd");
    assert_eq!(out.code, EXIT_RUNTIME, "{out:?}");
    assert!(out.stderr.contains("/nonexistent/cmd"), "{}", out.stderr);
    assert_run_cleaned_up(&w, "nx");
}

/// Contract: `netiso run`'s stdin is CMD's stdin.
fn run_passes_stdin_through() {
    let w = World::new("c-stdin");
    let mut child = Command::new(netiso_bin())
        .arg("--socket")
        .arg(&w.agent.socket)
        .args(["run", "--name", "cat", "--ip", "192.0.2.10", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("netiso run");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"hello through netiso\nsecond line\n")
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through netiso\nsecond line\n"
    );
    assert_run_cleaned_up(&w, "cat");
}

/// Contract: a `run` the agent refuses (address owned by another container, name clash) exits
/// 1 naming the reason, does not run CMD and leaves no cgroup behind; the existing container
/// is untouched.
fn run_refused_leaves_nothing_behind() {
    let w = World::new("c-runfail");
    let a = w.container("a", &["192.0.2.10"], &[]);
    let before = ls(&w);
    let marker = w.cgroups.root.join("ran");
    let touch = format!("touch {}", marker.display());
    for (name, ip, why) in [
        (
            "r",
            "192.0.2.10",
            "address 192.0.2.10 is already owned by container \"a\"",
        ),
        ("a", "192.0.2.11", "a container named \"a\" already exists"),
    ] {
        let out = w
            .agent
            .cli(&["run", "--name", name, "--ip", ip, "--", "sh", "-c", &touch]);
        assert_eq!(out.code, EXIT_RUNTIME, "{out:?}");
        assert!(out.stderr.contains(why), "{}", out.stderr);
        assert!(
            !run_cgroup(&w, name).exists(),
            "refused run left its cgroup behind"
        );
        assert!(
            !marker.exists(),
            "CMD ran although the container was refused"
        );
        assert_eq!(ls(&w), before);
    }
    assert_eq!(
        probe_last(&w.ns, &a, &["socket tcp4", "bind 0.0.0.0:7000"]).addr(),
        "192.0.2.10:7000"
    );
}

/// Contract: the help texts document every option.
fn help_mentions_every_option() {
    let help = |line: &str| {
        let out = output(&mut netiso(&line.split_whitespace().collect::<Vec<_>>()));
        assert_eq!(out.code, 0, "{line}: {out:?}");
        out.stdout
    };
    let expected: [(&str, &[&str]); 4] = [
        (
            "--help",
            &["--socket", "NETISO_SOCKET", "--json", "--help", "--version"],
        ),
        (
            "container add --help",
            &[
                "<NAME>",
                "--cgroup",
                "--ip",
                "--mode",
                "enforce",
                "audit",
                "--allow-raw",
                "--socket",
                "--json",
            ],
        ),
        (
            "run --help",
            &[
                "--name",
                "--ip",
                "--mode",
                "--allow-raw",
                "<CMD>",
                "--socket",
                "--json",
            ],
        ),
        (
            "agent --help",
            &[
                "--cgroup-root",
                "--bpffs",
                "--state-dir",
                "--config",
                "--cleanup",
                "--socket",
            ],
        ),
    ];
    for (line, options) in expected {
        let text = help(line);
        for opt in options {
            assert!(text.contains(opt), "netiso {line} lacks {opt}:\n{text}");
        }
    }
    let top = help("--help");
    for cmd in ["agent", "status", "enable", "disable", "container", "run"] {
        assert!(
            top.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "netiso --help lacks the {cmd} command:\n{top}"
        );
    }
}

/// Contract: a container name is a name, never part of an API path: names that could be read
/// as paths or queries (`a/ips/ADDR`, `a?x`, `%61`, `a b`) are usage errors and change nothing.
fn names_are_not_interpreted_as_api_paths() {
    let w = World::new("c-names");
    w.container("a", &["192.0.2.10", "192.0.2.11"], &[]);
    for args in [
        &["container", "rm", "a/ips/192.0.2.11"][..],
        &["container", "rm", "a?x"],
        &["container", "show", "a?x"],
        &["container", "show", "%61"],
        &["container", "show", "a b"],
        &["container", "mode", "a?x", "audit"],
        &["container", "ip", "rm", "a?", "192.0.2.11"],
    ] {
        refused_args(&w, args, EXIT_USAGE, &["invalid container name"]);
    }
}

/// Contract: `netiso run` with an invalid name is a usage error and creates no cgroup (the
/// name is checked before `<root>/netiso/NAME` is made).
fn run_with_invalid_name_leaves_no_cgroup() {
    let w = World::new("c-runname");
    let out = w.cli("run --name x/y --ip 192.0.2.20 -- true");
    assert_eq!(out.code, EXIT_USAGE, "{out:?}");
    assert!(
        out.stderr.contains("invalid container name"),
        "{}",
        out.stderr
    );
    let x = run_cgroup(&w, "x");
    assert!(!x.exists(), "run left {} behind", x.display());
}

/// `netiso … | head` ends quietly when the reader goes away: killed by SIGPIPE like any Unix
/// tool, never a panic.
fn closed_pipe_ends_quietly() {
    let w = World::new("cli-pipe");
    w.container("web", &["192.0.2.10"], &[]);
    // A pipe whose read end is closed before netiso starts: its first write gets EPIPE.
    let (read, write) = nix::unistd::pipe().expect("pipe");
    drop(read);
    let out = netiso(&["--socket", w.agent.socket.to_str().unwrap()])
        .args(["container", "show", "web"])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .expect("netiso");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?} {stderr}",
        out.status
    );
}

netiso_testkit::privileged_tests![
    closed_pipe_ends_quietly,
    usage_errors_exit_2,
    refused_requests_exit_1_and_change_nothing,
    valid_changes_succeed,
    unreachable_agent_and_netiso_socket_env,
    json_and_table_output,
    run_passes_stdout_through_and_cleans_up,
    run_passes_exit_status_through,
    run_passes_stdin_through,
    run_refused_leaves_nothing_behind,
    help_mentions_every_option,
    names_are_not_interpreted_as_api_paths,
    run_with_invalid_name_leaves_no_cgroup,
];
