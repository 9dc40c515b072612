//! Project automation: `cargo xtask bootstrap | build | lint | test | bench | demo | dist`.
mod bench;
mod bootstrap;
mod dist;

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and demonstrate netiso")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh machine lacks (nightly rust-src, bpf-linker, bpffs); idempotent.
    Bootstrap,
    /// Bootstrap, then build everything (the eBPF object is built by netiso-user's build.rs).
    Build,
    /// Check formatting and run clippy (user space, then the eBPF crate), warnings denied.
    Lint,
    /// Bootstrap, build, lint, then run every test: unit tests and the privileged
    /// integration tests.
    Test,
    /// Bootstrap, build, then show netiso at work in a throwaway namespace and cgroup
    /// (runs netiso-testkit's netiso-demo).
    Demo,
    /// Bootstrap, build the release binary and write what a package installs into
    /// target/dist: the binary, shell completions, man pages, the systemd unit, the OCI
    /// hooks.d file and Docker's daemon.json.
    Dist {
        /// Output directory (default target/dist; emptied first).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Bootstrap, build (release), then compare netiso with host networking and veth paths.
    Bench {
        /// Small and fast (under a minute), as a smoke test.
        #[arg(long)]
        quick: bool,
        /// Output directory (default target/bench).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Further options for `netiso-bench run` (see `netiso-bench run --help`).
        #[arg(last = true)]
        extra: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Bootstrap => bootstrap::run(),
        Cmd::Build => bootstrap::run().and_then(|()| build()),
        Cmd::Lint => bootstrap::run().and_then(|()| lint()),
        Cmd::Test => bootstrap::run()
            .and_then(|()| build())
            .and_then(|()| lint())
            .and_then(|()| test()),
        Cmd::Demo => bootstrap::run()
            .and_then(|()| build())
            .and_then(|()| demo()),
        Cmd::Dist { out } => bootstrap::run().and_then(|()| dist::run(out)),
        Cmd::Bench { quick, out, extra } => {
            bootstrap::run().and_then(|()| bench::run(quick, out, &extra))
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a cargo command from the workspace root, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn build() -> Result<()> {
    eprintln!("build: netiso (user space on stable, eBPF on nightly) and test helpers");
    cargo(&["build", "--bins"])
}

/// Runs a command from the workspace root, failing on a non-zero exit.
fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Formatting, and clippy with warnings denied: user space (stable) with every target, and
/// the eBPF crate on its own target (nightly), which the workspace pass cannot build.
fn lint() -> Result<()> {
    eprintln!("lint: rustfmt");
    cargo(&["fmt", "--all", "--check"])?;
    eprintln!("lint: clippy (user space)");
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "netiso-ebpf",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ])?;
    eprintln!("lint: clippy (eBPF crate, bpfel-unknown-none)");
    let target_dir = workspace_root().join("target/ebpf-clippy");
    run(
        "rustup",
        &[
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--quiet",
            "--manifest-path",
            "netiso-ebpf/Cargo.toml",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            target_dir.to_str().expect("UTF-8 path"),
            "--",
            "-D",
            "warnings",
        ],
    )
}

fn demo() -> Result<()> {
    let bin = workspace_root().join("target/debug/netiso-demo");
    run(bin.to_str().expect("UTF-8 path"), &[])
}

fn test() -> Result<()> {
    eprintln!("test: unit tests and privileged integration tests");
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "--workspace",
            "--exclude",
            "netiso-ebpf",
            "--no-fail-fast",
        ])
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through and add up cargo's "test result:" lines into one closing line.
    let (mut passed, mut failed, mut skipped) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match kind {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => skipped += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("summary: {passed} passed, {failed} failed, {skipped} skipped");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    Ok(())
}
