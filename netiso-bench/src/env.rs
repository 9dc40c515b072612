//! The benchmark's world: a "host" network namespace for the client, the four paths' containers,
//! the netiso agent, and their teardown (on return, on error and on Ctrl-C).
//!
//! Naming: everything carries `nbench-<pid>` so that leftovers of a killed run can be told
//! apart and swept by a later one. Interfaces live only inside the bench's namespaces.
use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use netiso_user::{
    api::{AddContainer, Mode},
    client::Client,
};
use serde::Serialize;

use crate::sys::{self, ip_batch, sh};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    Host,
    Netiso,
    VethBridge,
    VethRouted,
}

impl PathKind {
    pub const ALL: [PathKind; 4] = [
        PathKind::Host,
        PathKind::Netiso,
        PathKind::VethBridge,
        PathKind::VethRouted,
    ];
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Host => "host",
            PathKind::Netiso => "netiso",
            PathKind::VethBridge => "veth+bridge",
            PathKind::VethRouted => "veth routed",
        }
    }
    pub fn is_veth(self) -> bool {
        matches!(self, PathKind::VethBridge | PathKind::VethRouted)
    }
}

/// One server endpoint of a path.
pub struct Ctr {
    pub kind: PathKind,
    pub name: String,
    pub cgroup: PathBuf,
    /// Server namespace (veth paths); None = the host namespace.
    pub netns: Option<String>,
    /// Address the client targets.
    pub addr: IpAddr,
    /// Host-side veth of this container.
    pub ifname: Option<String>,
    pub server: Option<Child>,
}

/// What a cleanup needs, kept in a static so the Ctrl-C handler can reach it.
#[derive(Default, Clone)]
struct Cleanup {
    top: Option<PathBuf>,
    netns: Vec<String>,
    tmp: Option<PathBuf>,
    /// bpffs directories of the bench's own (the cost section's timing floor).
    bpf_dirs: Vec<PathBuf>,
    agent_pid: Option<i32>,
    agent_stop_args: Option<(PathBuf, Vec<String>)>,
}

static CLEANUP: Mutex<Option<Cleanup>> = Mutex::new(None);

fn with_cleanup(f: impl FnOnce(&mut Cleanup)) {
    let mut g = CLEANUP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(g.get_or_insert_with(Cleanup::default));
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The Ctrl-C / SIGTERM handler: tears down and exits with 130.
pub fn interrupted() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    eprintln!("\nnetiso-bench: interrupted, cleaning up");
    teardown();
    std::process::exit(130);
}

/// Called before the main thread ends on an error: when the error is the interruption's
/// doing (the teardown kills the running client), let the handler finish its teardown and
/// exit instead of ending the process under it.
pub fn wait_if_interrupted() {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        loop {
            thread::park();
        }
    }
}

/// Tears everything down; idempotent. Called on drop of [`World`] and from the Ctrl-C handler.
pub fn teardown() {
    let c = {
        let mut g = CLEANUP
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.take()
    };
    let Some(c) = c else { return };
    if let Some(pid) = c.agent_pid {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
            // Reap if it is our child (a zombie still answers kill(0)).
            let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            thread::sleep(Duration::from_millis(10));
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
    if let Some((bin, args)) = &c.agent_stop_args {
        let _ = Command::new(bin)
            .args(args)
            .arg("--cleanup")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if let Some(top) = &c.top {
        sys::remove_cgroup_tree(top);
    }
    delete_netns(&c.netns);
    for d in &c.bpf_dirs {
        let _ = fs::remove_dir_all(d);
    }
    if let Some(t) = &c.tmp {
        let _ = fs::remove_dir_all(t);
    }
}

/// Makes the teardown (also on Ctrl-C) delete a namespace the caller is about to create;
/// `World::destroy` of a container living in it forgets it again.
pub fn track_netns(name: &str) {
    with_cleanup(|c| c.netns.push(name.to_owned()));
}

/// Makes the teardown (also on Ctrl-C) remove a bpffs directory the caller is about to create.
pub fn track_bpf_dir(dir: &Path) {
    with_cleanup(|c| c.bpf_dirs.push(dir.to_owned()));
}

/// Forgets a bpffs directory its owner removed itself.
pub fn forget_bpf_dir(dir: &Path) {
    with_cleanup(|c| c.bpf_dirs.retain(|d| d != dir));
}

/// Deletes namespaces in one `ip -batch` (one process for many).
pub fn delete_netns(names: &[String]) {
    let lines: String = names
        .iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .fold(String::new(), |mut s, n| {
            s.push_str("netns del ");
            s.push_str(n);
            s.push('\n');
            s
        });
    if !lines.is_empty() {
        let _ = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut ch| {
                ch.stdin.take().unwrap().write_all(lines.as_bytes())?;
                ch.wait()
            });
    }
}

/// Removes what killed earlier runs left behind (their pid is gone).
fn sweep_stale(mount: &Path) {
    let dead = |name: &str| -> bool {
        name.strip_prefix("nbench-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let mut stale_ns = Vec::new();
    for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if dead(&n) {
            stale_ns.push(n);
        }
    }
    delete_netns(&stale_ns);
    for e in fs::read_dir(mount).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if dead(&n) {
            eprintln!("netiso-bench: removing stale cgroup {}", e.path().display());
            sys::remove_cgroup_tree(&e.path());
        }
    }
    // Pins, and the agent's state and socket directory.
    let dirs = [PathBuf::from("/sys/fs/bpf"), std::env::temp_dir()];
    for e in dirs.iter().flat_map(fs::read_dir).flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if dead(&n) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(long)]
    pub netns: Option<PathBuf>,
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[arg(trailing_var_arg = true, required = true)]
    pub cmd: Vec<String>,
}

pub fn exec(a: ExecArgs) -> Result<()> {
    // SAFETY: only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if let Some(ns) = &a.netns {
        sys::enter_netns(ns)?;
    }
    if let Some(cg) = &a.cgroup {
        sys::enter_cgroup(cg)?;
    }
    let e = Command::new(&a.cmd[0]).args(&a.cmd[1..]).exec();
    bail!("exec {}: {e}", a.cmd[0])
}

/// The bench's namespaces, cgroups and agent.
pub struct World {
    pub id: String,
    pub me: PathBuf,
    pub netiso_bin: PathBuf,
    pub top: PathBuf,
    /// The "host" namespace of the host and netiso paths (client and servers share it).
    pub hostns: String,
    /// The host namespaces of the veth paths: the client and the host ends of the veths.
    /// Each L2 path has its own, so that its thousands of interfaces tax only itself.
    pub bridge_ns: String,
    pub routed_ns: String,
    pub client_cgroup: PathBuf,
    pub netiso_root: PathBuf,
    pub socket: PathBuf,
    pub tmp: PathBuf,
    pub agent: Option<Child>,
    pub agent_pid: u32,
    /// The agent's API, through the same typed client the CLI uses.
    pub api: Client,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(a.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(a.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = a.kill();
            let _ = a.wait();
        }
        with_cleanup(|c| c.agent_pid = None);
        teardown();
    }
}

pub const V4_HOST: &str = "203.0.113.10";
pub const V4_NETISO: &str = "203.0.113.20";
pub const V4_BRIDGE_GW: &str = "192.0.2.1";
pub const V4_ROUTED_GW: &str = "198.51.100.1";
pub const V6_BRIDGE_GW: &str = "2001:db8:b::1";
pub const V6_ROUTED_GW: &str = "2001:db8:c::1";

/// Address of container `i` of group `g` on a path, IPv4 for the main matrix (g == 0),
/// IPv6 for the scale groups (the IPv4 documentation ranges hold only 768 addresses).
pub fn addr_for(kind: PathKind, g: usize, i: usize) -> IpAddr {
    if g == 0 {
        assert!(i < 200);
        match kind {
            PathKind::Host => format!("203.0.113.{}", 10 + i),
            PathKind::Netiso => format!("203.0.113.{}", 20 + i),
            PathKind::VethBridge => format!("192.0.2.{}", 2 + i),
            PathKind::VethRouted => format!("198.51.100.{}", 2 + i),
        }
        .parse()
        .unwrap()
    } else {
        let p = match kind {
            PathKind::Netiso => "a",
            PathKind::VethBridge => "b",
            PathKind::VethRouted => "c",
            PathKind::Host => "d",
        };
        format!("2001:db8:{p}::{g:x}:{:x}", i + 2).parse().unwrap()
    }
}

impl World {
    pub fn new(netiso_bin: PathBuf) -> Result<World> {
        let mount = sys::cgroup2_mount()?;
        sweep_stale(&mount);
        let id = format!("nbench-{}", std::process::id());
        let tmp = std::env::temp_dir().join(&id);
        let top = mount.join(&id);
        let hostns = format!("{id}-host");
        let bridge_ns = format!("{id}-hbr");
        let routed_ns = format!("{id}-hrt");
        with_cleanup(|c| {
            c.top = Some(top.clone());
            c.tmp = Some(tmp.clone());
            c.netns
                .extend([hostns.clone(), bridge_ns.clone(), routed_ns.clone()]);
        });
        fs::create_dir_all(&tmp)?;
        fs::create_dir(&top).with_context(|| format!("creating cgroup {}", top.display()))?;
        let me = std::env::current_exe()?;
        let api = Client::new(&tmp.join("netiso.sock"));
        let mut w = World {
            client_cgroup: top.join("client"),
            netiso_root: top.join("netiso"),
            socket: tmp.join("netiso.sock"),
            id,
            me,
            netiso_bin,
            top,
            hostns,
            bridge_ns,
            routed_ns,
            tmp,
            agent: None,
            agent_pid: 0,
            api,
        };
        for d in ["client", "host", "netiso", "veth"] {
            fs::create_dir(w.top.join(d))?;
        }
        w.setup_hostns()?;
        w.start_agent()?;
        Ok(w)
    }

    /// Registers an enforcing container `name` (a cgroup made under the agent's root) owning
    /// `ips`; `abstract_unix`: the abstract names it may reach (None: shared with the host).
    pub fn register(
        &self,
        name: &str,
        ips: &[&str],
        isolated: bool,
        abstract_unix: Option<Vec<String>>,
    ) -> Result<PathBuf> {
        let req = self.container_req(name, ips, isolated, abstract_unix)?;
        self.api
            .add_container(&req)
            .with_context(|| format!("registering {name}"))?;
        Ok(req.cgroup.expect("set by container_req"))
    }

    /// The registration request of an enforcing container `name` owning `ips`, its cgroup
    /// made under the agent's root (if not there yet); nothing is sent to the agent.
    pub fn container_req(
        &self,
        name: &str,
        ips: &[&str],
        isolated: bool,
        abstract_unix: Option<Vec<String>>,
    ) -> Result<AddContainer> {
        let cg = self.netiso_root.join(name);
        fs::create_dir_all(&cg).with_context(|| format!("creating {}", cg.display()))?;
        let ips = ips
            .iter()
            .map(|a| a.parse())
            .collect::<Result<Vec<_>, _>>()
            .context("container addresses")?;
        Ok(AddContainer {
            name: name.to_owned(),
            cgroup: Some(cg),
            pid: None,
            ips,
            mode: Mode::Enforce,
            allow_raw: false,
            isolated,
            abstract_unix,
        })
    }

    pub fn ns_path(name: &str) -> PathBuf {
        Path::new("/run/netns").join(name)
    }

    /// The namespace the client (and the host ends of the veths) of path `kind` lives in.
    pub fn client_ns(&self, kind: PathKind) -> &str {
        match kind {
            PathKind::Host | PathKind::Netiso => &self.hostns,
            PathKind::VethBridge => &self.bridge_ns,
            PathKind::VethRouted => &self.routed_ns,
        }
    }

    fn setup_hostns(&self) -> Result<()> {
        let lo = format!(
            "link set lo up\n\
             addr add {V4_HOST}/32 dev lo\n\
             addr add {V4_NETISO}/32 dev lo\n\
             route add local 2001:db8:a::/64 dev lo\n\
             route add local 2001:db8:d::/64 dev lo\n\
             addr add 2001:db8:ffff::1/128 dev lo nodad\n"
        );
        let br = format!(
            "link set lo up\n\
             link add br0 type bridge\n\
             link set br0 up\n\
             addr add {V4_BRIDGE_GW}/24 dev br0\n\
             addr add {V6_BRIDGE_GW}/64 dev br0 nodad\n"
        );
        for (ns, lines) in [
            (&self.hostns, lo),
            (&self.bridge_ns, br),
            (&self.routed_ns, "link set lo up\n".into()),
        ] {
            sh(Command::new("ip").args(["netns", "add", ns]))?;
            ip_batch(Some(ns), &lines)?;
            // More room for the connection-rate workloads.
            sh(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_local_port_range=10000 65000",
            ]))?;
        }
        // The local /64 routes above are AnyIP: IPv6 needs non-local bind to bind to them.
        sh(Command::new("ip").args([
            "netns",
            "exec",
            &self.hostns,
            "sysctl",
            "-qw",
            "net.ipv6.ip_nonlocal_bind=1",
        ]))?;
        Ok(())
    }

    fn agent_args(&self) -> Vec<String> {
        vec![
            "--socket".into(),
            self.socket.display().to_string(),
            "agent".into(),
            "--cgroup-root".into(),
            self.netiso_root.display().to_string(),
            "--bpffs".into(),
            format!("/sys/fs/bpf/{}", self.id),
            "--state-dir".into(),
            self.tmp.join("state").display().to_string(),
        ]
    }

    fn start_agent(&mut self) -> Result<()> {
        let log = fs::File::create(self.tmp.join("agent.log"))?;
        with_cleanup(|c| c.agent_stop_args = Some((self.netiso_bin.clone(), self.agent_args())));
        let mut cmd = Command::new(&self.netiso_bin);
        cmd.args(self.agent_args())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The agent lives in the bench's host namespace: the interfaces it attaches the TC
        // programs to (`lo` for the TC cost measurement) are the bench's, never the machine's.
        let ns = fs::File::open(World::ns_path(&self.hostns))?;
        // SAFETY: prctl and setns are async-signal-safe; the agent dies with the bench.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.netiso_bin.display()))?;
        self.agent_pid = child.id();
        with_cleanup(|c| c.agent_pid = Some(child.id() as i32));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.api.status().is_ok() {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                bail!(
                    "agent exited with {st}: {}",
                    fs::read_to_string(self.tmp.join("agent.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "agent did not come up: {}",
                    fs::read_to_string(self.tmp.join("agent.log")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.agent = Some(child);
        Ok(())
    }

    /// Kernel memory the agent's BPF maps hold (sum of `memlock` in its fdinfo), KiB.
    pub fn agent_map_kib(&self) -> u64 {
        let dir = format!("/proc/{}/fdinfo", self.agent_pid);
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let t = fs::read_to_string(e.path()).ok()?;
                if !t.contains("map_type:") {
                    return None;
                }
                t.lines().find_map(|l| {
                    l.strip_prefix("memlock:")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
            })
            .sum::<u64>()
            / 1024
    }

    /// Creates one container (cgroup + network plumbing) of `kind`; returns it with no server.
    pub fn create(&self, kind: PathKind, g: usize, i: usize) -> Result<Ctr> {
        let name = format!(
            "{}{g}x{i}",
            match kind {
                PathKind::Host => "h",
                PathKind::Netiso => "n",
                PathKind::VethBridge => "b",
                PathKind::VethRouted => "r",
            }
        );
        let addr = addr_for(kind, g, i);
        let v6 = addr.is_ipv6();
        let parent = match kind {
            PathKind::Host => "host",
            PathKind::Netiso => "netiso",
            _ => "veth",
        };
        let cgroup = self.top.join(parent).join(&name);
        fs::create_dir(&cgroup).with_context(|| format!("creating {}", cgroup.display()))?;
        let mut c = Ctr {
            kind,
            name: name.clone(),
            cgroup: cgroup.clone(),
            netns: None,
            addr,
            ifname: None,
            server: None,
        };
        match kind {
            PathKind::Host => {
                if !v6 {
                    ip_batch(Some(&self.hostns), &format!("addr add {addr}/32 dev lo\n")).ok();
                }
            }
            PathKind::Netiso => {
                // The cgroup is there already (made above, the same path under the agent's root).
                let req = self.container_req(&name, &[&addr.to_string()], false, None)?;
                self.api
                    .add_container(&req)
                    .with_context(|| format!("registering {name}"))?;
                if !v6 && i > 0 {
                    ip_batch(Some(&self.hostns), &format!("addr add {addr}/32 dev lo\n"))?;
                }
            }
            PathKind::VethBridge | PathKind::VethRouted => {
                let ns = format!("{}-{name}", self.id);
                let ifname = name.clone();
                with_cleanup(|cl| cl.netns.push(ns.clone()));
                sh(Command::new("ip").args(["netns", "add", &ns]))?;
                c.netns = Some(ns.clone());
                c.ifname = Some(ifname.clone());
                let nodad = if v6 { " nodad" } else { "" };
                let (host, inner) = if kind == PathKind::VethBridge {
                    let (plen, gw) = if v6 {
                        (64, V6_BRIDGE_GW)
                    } else {
                        (24, V4_BRIDGE_GW)
                    };
                    (
                        format!(
                            "link add {ifname} type veth peer name eth0 netns {ns}\nlink set {ifname} master br0 up\n"
                        ),
                        format!(
                            "link set lo up\naddr add {addr}/{plen} dev eth0{nodad}\nlink set eth0 up\nroute add default via {gw}\n"
                        ),
                    )
                } else {
                    let (plen, gw) = if v6 {
                        (128, V6_ROUTED_GW)
                    } else {
                        (32, V4_ROUTED_GW)
                    };
                    (
                        format!(
                            "link add {ifname} type veth peer name eth0 netns {ns}\nlink set {ifname} up\n\
                             addr add {gw}/{plen} dev {ifname}{nodad}\nroute add {addr}/{plen} dev {ifname}\n"
                        ),
                        format!(
                            "link set lo up\naddr add {addr}/{plen} dev eth0{nodad}\nlink set eth0 up\n\
                             route add {gw} dev eth0\nroute add default via {gw} dev eth0\n"
                        ),
                    )
                };
                ip_batch(Some(self.client_ns(kind)), &host)?;
                ip_batch(Some(&ns), &inner)?;
            }
        }
        Ok(c)
    }

    /// Removes containers (servers, registrations, namespaces, cgroups).
    pub fn destroy(&self, ctrs: Vec<Ctr>) {
        let mut ns = Vec::new();
        for mut c in ctrs {
            if let Some(mut s) = c.server.take() {
                let _ = s.kill();
                let _ = s.wait();
            }
            if c.kind == PathKind::Netiso {
                let _ = self.api.remove_container(&c.name);
            }
            sys::remove_cgroup_tree(&c.cgroup);
            if let Some(n) = c.netns.take() {
                ns.push(n);
            }
        }
        delete_netns(&ns);
        with_cleanup(|cl| cl.netns.retain(|n| !ns.contains(n)));
    }

    /// Starts the load-generator server in a container; returns the address it bound.
    pub fn start_server(&self, c: &mut Ctr) -> Result<IpAddr> {
        let bind: IpAddr = match c.kind {
            // Host servers share the namespace: explicit address. The others bind the wildcard
            // (netiso rewrites it to the container's primary address).
            PathKind::Host => c.addr,
            _ if c.addr.is_ipv6() => "::".parse().unwrap(),
            _ => "0.0.0.0".parse().unwrap(),
        };
        let ns = World::ns_path(c.netns.as_deref().unwrap_or(&self.hostns));
        let mut child = Command::new(&self.me)
            .arg("server")
            .arg("--netns")
            .arg(&ns)
            .arg("--cgroup")
            .arg(&c.cgroup)
            .arg("--bind")
            .arg(bind.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        let got = line
            .strip_prefix("ready ")
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        c.server = Some(child);
        let Some(got) = got else {
            bail!("server in {} did not start (printed {line:?})", c.name);
        };
        // netiso must have rewritten the wildcard to the container's address; elsewhere the
        // kernel keeps what was asked for.
        let want = if c.kind == PathKind::Netiso {
            c.addr
        } else {
            bind
        };
        if got != want {
            bail!("server in {} bound {got}, expected {want}", c.name);
        }
        Ok(got)
    }
}
