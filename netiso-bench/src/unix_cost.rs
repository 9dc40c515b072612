//! What the abstract-unix program costs (`connect_unix`, attached only to the cgroups of
//! containers whose abstract unix names are restricted; `sendmsg_unix` runs the same body on
//! the sendmsg hook). A process in a container connects one datagram unix socket again and
//! again, each connect(2) running the hook once, and reads its own CPU time around the loop.
//! Rounds interleave the cases (the order rotated each round); the CPU per connect is taken
//! with program timing off, the program's runs and ns per run in rounds of their own with
//! timing on (`BPF_ENABLE_STATS`), so that figure includes the timing's own cost: an upper
//! bound. Every loop also checks its outcome: a listed name or a path must connect, an
//! unlisted one must be refused.
use std::{
    fmt::Write as _,
    fs,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{
    cost::{enable_run_time_stats, estimate, prog_stat, Est},
    env::World,
    sys::sh,
};

/// Arguments of the looping process (`netiso-bench unix-loop`).
#[derive(Args, Debug)]
pub struct LoopArgs {
    /// `@NAME` for an abstract name, otherwise a filesystem path.
    #[arg(long)]
    pub target: String,
    /// connect(2) calls to make.
    #[arg(long)]
    pub count: u64,
}

/// What one loop did; printed as one JSON line.
#[derive(Serialize, Deserialize)]
struct LoopResult {
    ok: u64,
    refused: u64,
    /// CPU time of the looping thread (user and system).
    cpu_ns: u64,
}

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the clock into `t`; this clock exists on every Linux netiso supports.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// `netiso-bench unix-loop`: started by `run` inside a container's cgroup.
pub fn unix_loop(a: &LoopArgs) -> Result<()> {
    let addr = match a.target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&a.target),
    }
    .with_context(|| format!("address {}", a.target))?;
    let sock = UnixDatagram::unbound().context("creating a unix datagram socket")?;
    let (mut ok, mut refused) = (0, 0);
    let start = thread_cpu_ns();
    for _ in 0..a.count {
        match sock.connect_addr(&addr) {
            Ok(()) => ok += 1,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => refused += 1,
            Err(e) => bail!("connect to {}: {e}", a.target),
        }
    }
    let cpu_ns = thread_cpu_ns() - start;
    println!(
        "{}",
        serde_json::to_string(&LoopResult {
            ok,
            refused,
            cpu_ns
        })?
    );
    Ok(())
}

#[derive(Serialize)]
pub struct Case {
    #[serde(rename = "case")]
    pub name: &'static str,
    pub refused: bool,
    /// CPU per connect(2), untimed rounds: median [min, max] over rounds.
    pub cpu_ns: [f64; 3],
    /// Per round, this case's CPU per connect minus the open container's to the same kind of
    /// address (no program attached there), mean and 95% interval; None for the baselines.
    pub over_open_ns: Option<Est>,
    /// connect_unix runs per connect(2) (timed rounds).
    pub runs_per_connect: f64,
    /// connect_unix ns per run, timing included: median [min, max] over the timed rounds.
    pub prog_ns_per_run: Option<[f64; 3]>,
}

#[derive(Serialize)]
pub struct UnixCost {
    pub rounds: usize,
    pub connects: u64,
    pub cases: Vec<Case>,
}

/// Binds the listeners inside the bench namespace (abstract names belong to a network
/// namespace).
fn listeners(w: &World, names: &[&str], path: &Path) -> Result<Vec<UnixDatagram>> {
    let ns = World::ns_path(&w.hostns);
    thread::scope(|s| {
        s.spawn(|| -> Result<Vec<UnixDatagram>> {
            crate::sys::enter_netns(&ns)?;
            let mut v = Vec::new();
            for n in names {
                let a = SocketAddr::from_abstract_name(n)?;
                v.push(UnixDatagram::bind_addr(&a).with_context(|| format!("binding @{n}"))?);
            }
            let _ = fs::remove_file(path);
            v.push(
                UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?,
            );
            Ok(v)
        })
        .join()
        .expect("binding thread")
    })
}

fn run_loop(w: &World, cgroup: &Path, target: &str, count: u64) -> Result<LoopResult> {
    let out = sh(Command::new(&w.me)
        .arg("exec")
        .arg("--netns")
        .arg(World::ns_path(&w.hostns))
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--")
        .arg(&w.me)
        .args(["unix-loop", "--target", target, "--count"])
        .arg(count.to_string())
        .stderr(Stdio::piped()))?;
    serde_json::from_str(out.trim()).with_context(|| format!("unix-loop printed {out:?}"))
}

fn median_min_max(xs: &[f64]) -> [f64; 3] {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    [v[v.len() / 2], v[0], v[v.len() - 1]]
}

/// Registers an open and a restricted container and measures `rounds` rounds of `count`
/// connects per case.
pub fn measure(w: &World, rounds: usize, count: u64) -> Result<UnixCost> {
    ensure!(rounds >= 2 && count > 0, "unix cost: at least 2 rounds");
    let listed = format!("{}-unix-listed", w.id);
    let unlisted = format!("{}-unix-unlisted", w.id);
    let path: PathBuf = w.tmp.join("unix-cost.sock");
    let _listeners = listeners(w, &[&listed, &unlisted], &path)?;
    let open = w.register("ux-open", &["203.0.113.230"], false, None)?;
    let restricted = w.register(
        "ux-restricted",
        &["203.0.113.231"],
        false,
        Some(vec![format!("@{listed}")]),
    )?;
    let pin = Path::new("/sys/fs/bpf")
        .join(&w.id)
        .join("progs/connect_unix");
    let (at_listed, at_unlisted) = (format!("@{listed}"), format!("@{unlisted}"));
    let path_s = path.to_string_lossy().into_owned();
    // (name, cgroup, target, refused, the case it is compared with)
    let cases: [(&'static str, &Path, &str, bool, Option<usize>); 5] = [
        (
            "open container, abstract name (no program attached)",
            &open,
            &at_listed,
            false,
            None,
        ),
        (
            "open container, filesystem path (no program attached)",
            &open,
            &path_s,
            false,
            None,
        ),
        (
            "restricted container, listed abstract name",
            &restricted,
            &at_listed,
            false,
            Some(0),
        ),
        (
            "restricted container, unlisted abstract name: refused",
            &restricted,
            &at_unlisted,
            true,
            Some(0),
        ),
        (
            "restricted container, filesystem path",
            &restricted,
            &path_s,
            false,
            Some(1),
        ),
    ];
    let n = cases.len();
    let mut cpu = vec![Vec::new(); n];
    let mut prog = vec![(Vec::new(), 0u64); n];
    for round in 0..rounds {
        for timed in [false, true] {
            let _stats = if timed {
                Some(enable_run_time_stats()?)
            } else {
                None
            };
            for k in 0..n {
                let i = (k + round) % n;
                let (name, cg, target, refused, _) = cases[i];
                // connect_unix's counters, read only where timing is on.
                let before = if timed { Some(prog_stat(&pin)?) } else { None };
                let r = run_loop(w, cg, target, count)?;
                let after = if timed { Some(prog_stat(&pin)?) } else { None };
                let want = if refused { (0, count) } else { (count, 0) };
                ensure!(
                    (r.ok, r.refused) == want,
                    "{name}: {} connects succeeded and {} were refused, expected {want:?}",
                    r.ok,
                    r.refused
                );
                if let (Some(before), Some(after)) = (before, after) {
                    let runs = after.run_cnt - before.run_cnt;
                    prog[i].1 += runs;
                    if runs > 0 {
                        prog[i]
                            .0
                            .push((after.run_time_ns - before.run_time_ns) as f64 / runs as f64);
                    }
                } else {
                    cpu[i].push(r.cpu_ns as f64 / count as f64);
                }
            }
        }
    }
    let total = count * rounds as u64;
    let cases = cases
        .iter()
        .enumerate()
        .map(|(i, (name, _, _, refused, base))| Case {
            name,
            refused: *refused,
            cpu_ns: median_min_max(&cpu[i]),
            over_open_ns: base.and_then(|b| {
                let d: Vec<f64> = cpu[i].iter().zip(&cpu[b]).map(|(a, b)| a - b).collect();
                estimate(&d)
            }),
            runs_per_connect: prog[i].1 as f64 / total as f64,
            prog_ns_per_run: (!prog[i].0.is_empty()).then(|| median_min_max(&prog[i].0)),
        })
        .collect();
    Ok(UnixCost {
        rounds,
        connects: count,
        cases,
    })
}

pub fn table(c: &UnixCost) -> String {
    let mut t = format!(
        "Abstract-unix program (connect_unix), per connect(2) of a datagram unix socket ({} connects x {} rounds per case)\n",
        c.connects, c.rounds
    );
    let _ = writeln!(
        t,
        "{:<56} {:>15} {:>22} {:>13} {:>20}",
        "case", "CPU ns/connect", "over open [95%]", "runs/connect", "ns/run (timed)"
    );
    for x in &c.cases {
        let over = x.over_open_ns.map_or_else(
            || "-".to_owned(),
            |e| format!("{:+.0} [{:+.0}, {:+.0}]", e.mean, e.lo, e.hi),
        );
        let run = x.prog_ns_per_run.map_or_else(
            || "-".to_owned(),
            |p| format!("{:.0} [{:.0}..{:.0}]", p[0], p[1], p[2]),
        );
        let _ = writeln!(
            t,
            "{:<56} {:>15.0} {:>22} {:>13.2} {:>20}",
            x.name, x.cpu_ns[0], over, x.runs_per_connect, run
        );
    }
    t.push_str(
        "  CPU: the looping thread's own clock, untimed rounds (median); over open: minus the open container's CPU for the same kind of address, paired per round, mean [95% t-interval].\n  \
         ns/run: run_time_ns / run_cnt in rounds with BPF_ENABLE_STATS held, so it includes the timing's own cost.\n",
    );
    t
}
