//! netiso-demo (`cargo xtask demo`): a short guided tour of netiso inside a namespace and
//! cgroup subtree it creates, cleaned up afterwards (also on Ctrl-C). It runs the `netiso`
//! and `netiso-probe` binaries built next to it.
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const NETNS: &str = "netiso-demo";
const TMP: &str = "/tmp/netiso-demo";
const BPFFS: &str = "/sys/fs/bpf/netiso-demo";

struct Paths {
    bin: PathBuf,
    probe: PathBuf,
    cgroup_root: PathBuf,
    socket: PathBuf,
}

static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());
static CGROUP_ROOT: Mutex<Option<PathBuf>> = Mutex::new(None);

fn say(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

fn cmd_line(args: &[&str]) {
    println!("\x1b[36m$ {}\x1b[0m", args.join(" "));
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `netiso ARGS` against the demo agent, echoing the command and its output.
fn netiso(p: &Paths, args: &[&str]) -> Result<()> {
    cmd_line(&[&["netiso"], args].concat());
    let out = Command::new(&p.bin)
        .arg("--socket")
        .arg(&p.socket)
        .args(args)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("netiso {} failed", args.join(" "));
    }
    Ok(())
}

fn teardown() {
    for mut c in CHILDREN.lock().unwrap().drain(..).rev() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    let bin = netiso_testkit::netiso_bin();
    let _ = Command::new(bin)
        .args([
            "agent",
            "--cleanup",
            "--bpffs",
            BPFFS,
            "--state-dir",
            &format!("{TMP}/state"),
            "--socket",
            &format!("{TMP}/netiso.sock"),
        ])
        .args(
            CGROUP_ROOT
                .lock()
                .unwrap()
                .iter()
                .flat_map(|r| ["--cgroup-root".into(), r.display().to_string()]),
        )
        .stderr(Stdio::null())
        .status();
    if let Some(root) = CGROUP_ROOT.lock().unwrap().take() {
        netiso_testkit::destroy_cgroup(&root, Duration::from_secs(5));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", NETNS])
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(TMP);
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo attaches eBPF programs and creates a network namespace: run it as root");
    }
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up");
        teardown();
        std::process::exit(130);
    })?;
    teardown(); // leftovers of an interrupted earlier run
    let r = tour();
    teardown();
    println!("\ncleaned up: namespace, cgroups, pins and state removed");
    r
}

fn spawn(cmd: &mut Command) -> Result<()> {
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    CHILDREN.lock().unwrap().push(child);
    Ok(())
}

/// Starts `netiso run` with a server that answers every connection with `text`; returns once
/// the server is listening, with the address it got.
fn start_server(p: &Paths, name: &str, ip: &str, text: &str) -> Result<String> {
    let args = [
        "run",
        "--name",
        name,
        "--ip",
        ip,
        "--",
        "netiso-probe",
        "socket tcp4",
        "bind 0.0.0.0:8080",
        "listen",
        &format!("serve {text}"),
    ];
    cmd_line(
        &[
            &["netiso"],
            &args[..5],
            &["--", "<server: bind 0.0.0.0:8080, listen>"],
        ]
        .concat(),
    );
    let mut child = Command::new(&p.bin)
        .arg("--socket")
        .arg(&p.socket)
        .args(args.iter().map(|a| {
            if *a == "netiso-probe" {
                p.probe.to_str().unwrap()
            } else {
                a
            }
        }))
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().unwrap();
    CHILDREN.lock().unwrap().push(child);
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        if v["op"] == "listen" {
            let addr = v["value"].as_str().unwrap_or("?").to_owned();
            println!("  {name} asked for 0.0.0.0:8080 and is listening on {addr}");
            thread::spawn(move || lines.for_each(drop));
            return Ok(addr);
        }
        if v["ok"] == false {
            bail!("{name}'s server failed: {v}");
        }
    }
    bail!("{name}'s server exited early")
}

fn fetch(addr: &str) -> String {
    match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5)) {
        Ok(mut s) => {
            let mut buf = String::new();
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read_to_string(&mut buf);
            buf.trim().to_owned()
        }
        Err(e) => format!("connection failed: {e}"),
    }
}

fn tour() -> Result<()> {
    let mount = netiso_testkit::cgroup2_mount().context("no cgroup v2 mount found")?;
    let cgroup_root = mount.join("netiso-demo");
    fs::create_dir_all(&cgroup_root)?;
    *CGROUP_ROOT.lock().unwrap() = Some(cgroup_root.clone());
    fs::create_dir_all(TMP)?;
    let p = Paths {
        bin: netiso_testkit::netiso_bin(),
        probe: netiso_testkit::probe_bin(),
        cgroup_root: cgroup_root.clone(),
        socket: PathBuf::from(TMP).join("netiso.sock"),
    };

    say("Setting the stage");
    println!("A network namespace `{NETNS}` with three addresses on lo (documentation ranges):");
    println!(
        "  192.0.2.10 for container web-a, 192.0.2.20 for web-b, 198.51.100.1 for a host service."
    );
    sh(Command::new("ip").args(["netns", "add", NETNS]))?;
    sh(Command::new("ip").args(["-n", NETNS, "link", "set", "lo", "up"]))?;
    for a in ["192.0.2.10/32", "192.0.2.20/32", "198.51.100.1/32"] {
        sh(Command::new("ip").args(["-n", NETNS, "addr", "add", a, "dev", "lo"]))?;
    }
    // Everything below runs in the namespace (children inherit it); we are single-threaded here.
    let ns = fs::File::open(format!("/run/netns/{NETNS}"))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the demo namespace")?;
    println!(
        "A cgroup subtree {} for the agent to govern.",
        p.cgroup_root.display()
    );

    say("Starting the agent");
    let agent_args = [
        "agent",
        "--cgroup-root",
        cgroup_root.to_str().unwrap(),
        "--bpffs",
        BPFFS,
        "--state-dir",
        &format!("{TMP}/state"),
    ];
    cmd_line(&[&["netiso"], &agent_args[..]].concat());
    let log = fs::File::create(format!("{TMP}/agent.log"))?;
    spawn(
        Command::new(&p.bin)
            .args(agent_args)
            .arg("--socket")
            .arg(&p.socket)
            .stdout(log.try_clone()?)
            .stderr(log),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new(&p.bin)
        .arg("--socket")
        .arg(&p.socket)
        .arg("status")
        .output()?
        .status
        .code()
        != Some(0)
    {
        if Instant::now() > deadline {
            bail!(
                "agent did not start:\n{}",
                fs::read_to_string(format!("{TMP}/agent.log"))?
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    println!("  agent up: programs attached at the cgroup root and pinned under {BPFFS}");

    say("Two containers, both listening on *:8080");
    start_server(&p, "web-a", "192.0.2.10", "hello from web-a")?;
    start_server(&p, "web-b", "192.0.2.20", "hello from web-b")?;

    say("Each is reached only at its own address");
    for addr in ["192.0.2.10:8080", "192.0.2.20:8080", "198.51.100.1:8080"] {
        println!("  connect {addr:<18} -> {}", fetch(addr));
    }

    say("A container cannot bind another's address");
    let web_a = cgroup_root.join("netiso/web-a");
    let out = Command::new(&p.probe)
        .arg("--cgroup")
        .arg(&web_a)
        .args(["socket tcp4", "bind 192.0.2.20:9090"])
        .output()?;
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
    println!(
        "  inside web-a: bind(192.0.2.20:9090) -> {}",
        v["errno"]
            .as_str()
            .map_or_else(|| format!("{v}"), |e| format!("refused with {e}"))
    );

    say("Outgoing connections leave from the container's own address");
    let listener = TcpListener::bind("198.51.100.1:9000")?;
    let out = Command::new(&p.probe)
        .arg("--cgroup")
        .arg(cgroup_root.join("netiso/web-b"))
        .args(["socket tcp4", "connect 198.51.100.1:9000"])
        .output()?;
    let _ = std::io::stdout().flush();
    listener.set_nonblocking(false)?;
    let (_, peer) = listener.accept()?;
    println!("  web-b connects to the host service 198.51.100.1:9000 without binding;");
    println!("  the service sees the connection coming from {peer}");
    drop(out);

    say("What the agent knows");
    netiso(&p, &["status"])?;
    println!();
    netiso(&p, &["container", "ls"])?;
    Ok(())
}
