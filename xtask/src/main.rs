//! Project automation: `cargo xtask bootstrap | build | test | demo`.
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
    cargo(&["test", "--no-fail-fast"])
}
