//! Project automation: `cargo xtask bootstrap | build | test | demo`.
mod bench;
mod bootstrap;
mod demo;

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
    /// Bootstrap, build, then run every test: unit tests and the privileged integration tests.
    Test,
    /// Bootstrap, build, then show netiso at work in a throwaway namespace and cgroup.
    Demo,
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
        Cmd::Test => bootstrap::run()
            .and_then(|()| build())
            .and_then(|()| test()),
        Cmd::Demo => bootstrap::run()
            .and_then(|()| build())
            .and_then(|()| demo::run()),
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

fn test() -> Result<()> {
    eprintln!("test: unit tests and privileged integration tests");
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--no-fail-fast"])
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through and add up cargo's "test result:" lines into one closing line.
    let (mut passed, mut failed) = (0u64, 0u64);
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
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("summary: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("tests failed ({status})");
    }
    Ok(())
}
