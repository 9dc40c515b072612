//! Real container runtimes for tests: Podman (OCI hook) and a private dockerd (runtime
//! wrapper), both confined to a test's [`World`]: containers join the test's network
//! namespace (`--network ns:` / `--network host` of a dockerd inside it) and get their cgroups
//! below the test's cgroup subtree (`--cgroup-parent`), where the test's agent governs them.
//! All state (storage, run dirs, hooks dir, dockerd's data and exec roots) lives in a private
//! temporary directory; everything is removed on drop, also when the test fails.
//!
//! Images are never pulled: containers run a busybox rootfs with `netiso-probe` in it, used by
//! Podman directly (`--rootfs`) and imported into dockerd as an image.
use std::{
    fs,
    io::Write,
    os::unix::{fs::symlink, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{cgroup2_mount, netiso_bin, output, probe_bin, unique, CliOutput, World};

/// The Docker CLI of the docker.io package (another `docker` may come first in PATH).
pub const DOCKER_CLI: &str = "/usr/bin/docker";

/// The path of `program` in PATH, or None.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).exists().then(|| program.into());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Asserts that `program` is installed; a missing runtime fails the test (`cargo xtask
/// bootstrap` installs them).
#[track_caller]
pub fn require(program: &str) -> PathBuf {
    which(program).unwrap_or_else(|| {
        panic!("{program} is not installed; `cargo xtask bootstrap` installs the container runtimes the tests need")
    })
}

/// Builds a container root filesystem in `dir`: busybox (a few applets) and netiso-probe,
/// with the shared libraries either needs.
pub fn build_rootfs(dir: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    let busybox = fs::canonicalize(require("busybox")).unwrap();
    let probe = probe_bin();
    for (from, name) in [(&busybox, "busybox"), (&probe, "netiso-probe")] {
        fs::copy(from, dir.join("bin").join(name))
            .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
        copy_libraries(from, dir);
    }
    for applet in ["sh", "sleep", "touch", "cat", "true", "ls"] {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
}

/// Copies the shared libraries `ldd` lists for `binary` to the same paths below `root`
/// (a static binary has none).
fn copy_libraries(binary: &Path, root: &Path) {
    let Ok(out) = Command::new("ldd").arg(binary).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let target = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::copy(path, &target).unwrap_or_else(|e| panic!("copying {path}: {e}"));
    }
}

/// Lazily unmounts every mount point below `dir` (runtimes leave shm, netns and rootfs
/// mounts behind when they are stopped abruptly), deepest first.
pub fn unmount_below(dir: &Path) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("warning: unmounting {}: {e}", p.display());
        }
    }
}

/// Removes `rel` (a cgroup path relative to the hierarchy root) from every cgroup v1
/// hierarchy. On a hybrid host runtimes create a container's cgroup in every v1 controller
/// as well as in cgroup v2; the test's [`crate::CgroupTree`] removes only the v2 one.
pub fn remove_v1_cgroups(rel: &Path) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() != Some("cgroup") {
            continue;
        }
        let Some(mount) = pre.split_whitespace().nth(4) else {
            continue;
        };
        let dir = Path::new(mount).join(rel);
        // A process that is still leaving (conmon, a shim) keeps its cgroup busy briefly.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match netiso_user::cgroup::remove_tree(&dir) {
                Ok(()) => break,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    eprintln!("warning: {e}");
                    break;
                }
            }
        }
    }
}

/// Polls `logs` (a runtime's `logs NAME`) until container `name`'s output contains `needle`,
/// for up to a minute.
#[track_caller]
fn wait_log(name: &str, needle: &str, logs: impl Fn() -> CliOutput) -> String {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let out = logs();
        if out.stdout.contains(needle) {
            return out.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "container {name} never printed {needle:?}: {out:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The test cgroup subtree as a runtime's `--cgroup-parent` (relative to the hierarchy root).
fn cgroup_parent(w: &World) -> PathBuf {
    let mount = cgroup2_mount().expect("cgroup2");
    Path::new("/").join(
        w.cgroups
            .root
            .strip_prefix(&mount)
            .expect("test tree below the mount"),
    )
}

/// `--annotation KEY=VALUE` arguments.
pub fn annotations(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| ["--annotation".to_owned(), format!("{k}={v}")])
        .collect()
}

/// Podman with a private configuration, storage and hooks directory (the netiso hook
/// installed with `netiso oci-hook install`, talking to the world's agent), running
/// containers in the world's network namespace below its cgroup subtree.
pub struct Podman {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub hooks: PathBuf,
    conf: PathBuf,
    netns: String,
    pub cgroup_parent: PathBuf,
}

impl Podman {
    pub fn new(w: &World) -> Podman {
        for p in ["podman", "runc", "conmon"] {
            require(p);
        }
        let dir = std::env::temp_dir().join(unique("podman"));
        fs::create_dir_all(&dir).unwrap();
        let p = Podman {
            rootfs: dir.join("rootfs"),
            hooks: dir.join("hooks.d"),
            conf: dir.join("containers.conf"),
            netns: w.ns.path(),
            cgroup_parent: cgroup_parent(w),
            dir,
        };
        build_rootfs(&p.rootfs);
        // Podman needs CAP_SYS_RESOURCE for its default rlimits, and crun refuses hybrid
        // cgroup layouts: explicit limits, runc, cgroupfs (there may be no systemd).
        let conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             runtime = \"runc\"\n\
             events_logger = \"file\"\n\
             hooks_dir = [\"{}\"]\n",
            p.hooks.display()
        );
        fs::write(&p.conf, conf).unwrap();
        let hooks = p.hooks.display().to_string();
        w.agent
            .cli(&["oci-hook", "install", "--hooks-dir", &hooks])
            .ok();
        p
    }

    /// `podman` with this instance's configuration and storage.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .env_remove("NETISO_SOCKET")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    /// `podman ARGS`.
    pub fn podman(&self, args: &[&str]) -> CliOutput {
        output(self.cmd().args(args))
    }

    /// `podman run OPTS --rootfs ROOTFS CMD` in the world's namespace and cgroup subtree.
    pub fn run(&self, opts: &[String], cmd: &[&str]) -> CliOutput {
        let mut c = self.cmd();
        c.arg("run")
            .arg("--network")
            .arg(format!("ns:{}", self.netns))
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(opts)
            .arg("--rootfs")
            .arg(&self.rootfs)
            .args(cmd);
        output(&mut c)
    }

    /// Starts container `name` in the background; returns its id.
    #[track_caller]
    pub fn start(&self, name: &str, annotations: &[(&str, &str)], cmd: &[&str]) -> String {
        let mut opts = vec!["-d".to_owned(), "--name".to_owned(), name.to_owned()];
        opts.extend(self::annotations(annotations));
        let out = self.run(&opts, cmd);
        assert_eq!(out.code, 0, "podman run {name}: {out:?}");
        out.stdout.trim().to_owned()
    }

    /// Waits until container `name`'s output contains `needle`.
    #[track_caller]
    pub fn wait_log(&self, name: &str, needle: &str) -> String {
        wait_log(name, needle, || self.podman(&["logs", name]))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let out = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        if out.code != 0 {
            eprintln!("warning: podman rm --all: {}", out.stderr);
        }
        unmount_below(&self.dir);
        remove_v1_cgroups(&self.cgroup_parent);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How a [`Dockerd`] learns about the netiso runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeConfig {
    /// `dockerd --add-runtime netiso=PATH`.
    Flag,
    /// `"runtimes": {"netiso": {"path": PATH}}` in daemon.json.
    DaemonJson,
}

/// A private dockerd running in the world's network namespace (so `--network host` is the
/// test's namespace) with its containers below the world's cgroup subtree, its own data and
/// exec roots, the netiso runtime wrapper as runtime `netiso` (`netiso-docker-runtime`, a
/// symlink to the netiso binary) and the world's agent as `NETISO_SOCKET`. An image
/// `netiso-test` holds the test rootfs.
pub struct Dockerd {
    pub dir: PathBuf,
    child: Option<Child>,
    cgroup_parent: PathBuf,
}

/// The image every docker test container runs.
pub const DOCKER_IMAGE: &str = "netiso-test";

impl Dockerd {
    pub fn start(w: &World, config: RuntimeConfig) -> Dockerd {
        for p in ["dockerd", "containerd", "runc", DOCKER_CLI] {
            require(p);
        }
        let dir = std::env::temp_dir().join(unique("docker"));
        fs::create_dir_all(&dir).unwrap();
        let mut d = Dockerd {
            child: None,
            cgroup_parent: cgroup_parent(w),
            dir,
        };
        let runtime = d.dir.join("netiso-docker-runtime");
        symlink(netiso_bin(), &runtime).unwrap();
        let daemon_json = match config {
            RuntimeConfig::Flag => serde_json::json!({}),
            RuntimeConfig::DaemonJson => {
                serde_json::json!({ "runtimes": { "netiso": { "path": runtime } } })
            }
        };
        fs::write(d.dir.join("daemon.json"), daemon_json.to_string()).unwrap();
        let log = fs::File::create(d.dir.join("dockerd.log")).unwrap();
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(d.dir.join("data"))
            .arg("--exec-root")
            .arg(d.dir.join("exec"))
            .arg("--pidfile")
            .arg(d.dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", d.socket().display()))
            .arg("--config-file")
            .arg(d.dir.join("daemon.json"))
            // No bridge, no iptables rules, no forwarding changes: containers use the host
            // (= the test's) network namespace.
            .args(["--bridge", "none", "--iptables=false", "--ip-forward=false"])
            .args(["--ip-masq=false", "--userland-proxy=false"])
            .args(["--storage-driver", "vfs"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .arg("--cgroup-parent")
            .arg(&d.cgroup_parent);
        if config == RuntimeConfig::Flag {
            cmd.arg("--add-runtime")
                .arg(format!("netiso={}", runtime.display()));
        }
        // The wrapper finds the agent through the environment dockerd passes down.
        cmd.env("NETISO_SOCKET", &w.agent.socket)
            .env_remove("NETISO_RUNC")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let ns = fs::File::open(w.ns.path()).expect("opening the test netns");
        // SAFETY: only setns(2) runs between fork and exec. (`ip netns exec` would remount
        // /sys and hide the cgroup mounts dockerd needs.)
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        d.child = Some(cmd.spawn().expect("starting dockerd"));
        let deadline = Instant::now() + Duration::from_mins(2);
        while d.docker(&["info"]).code != 0 {
            if let Some(Ok(Some(st))) = d.child.as_mut().map(Child::try_wait) {
                panic!("dockerd exited with {st}:\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up:\n{}",
                d.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        d.import_rootfs();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn cli(&self) -> Command {
        let mut c = Command::new(DOCKER_CLI);
        c.arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        c
    }

    /// `docker ARGS` against this daemon.
    pub fn docker(&self, args: &[&str]) -> CliOutput {
        output(self.cli().args(args))
    }

    /// `docker run --runtime netiso --network host OPTS netiso-test CMD`.
    pub fn run(&self, opts: &[&str], cmd: &[&str]) -> CliOutput {
        let mut args = vec!["run", "--runtime", "netiso", "--network", "host"];
        args.extend_from_slice(opts);
        args.push(DOCKER_IMAGE);
        args.extend_from_slice(cmd);
        self.docker(&args)
    }

    /// Waits until container `name`'s output contains `needle`.
    #[track_caller]
    pub fn wait_log(&self, name: &str, needle: &str) -> String {
        wait_log(name, needle, || self.docker(&["logs", name]))
    }

    /// Imports the test rootfs as image `netiso-test` (no registry: `docker import`).
    fn import_rootfs(&self) {
        let rootfs = self.dir.join("rootfs");
        build_rootfs(&rootfs);
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .output()
            .expect("running tar");
        assert!(tar.status.success(), "tar of the rootfs failed");
        let mut import = self
            .cli()
            .args(["import", "-", DOCKER_IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker import");
        import
            .stdin
            .take()
            .unwrap()
            .write_all(&tar.stdout)
            .expect("feeding docker import");
        let out = import.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "--all", "--quiet"]).stdout;
        for id in ids.split_whitespace() {
            let _ = self.docker(&["rm", "--force", id]);
        }
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount_below(&self.dir);
        remove_v1_cgroups(&self.cgroup_parent);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
