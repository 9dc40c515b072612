//! `netiso dist-files` (internal; `cargo xtask dist` runs it): what a package installs next to
//! the binary, generated from the clap definitions and the code, so it cannot drift from
//! them: shell completions, man pages, the systemd unit, the OCI hooks.d file and Docker's
//! daemon.json.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;
use clap::{CommandFactory, Parser};
use clap_complete::Shell;

use super::{docker_runtime, oci_hook, Cli, EXIT_RUNTIME};
use crate::agent::DEFAULT_SOCKET;

/// The command's name, recognised before the regular command line is parsed.
pub const COMMAND: &str = "dist-files";

/// The unit file; its ExecStart names this path, replaced by `--bin`.
const UNIT: &str = include_str!("../../dist/netiso.service");
const UNIT_BINARY: &str = "/usr/local/bin/netiso";

/// Write shell completions, man pages, the systemd unit, the OCI hooks.d file and Docker's
/// daemon.json into a directory.
#[derive(Parser)]
#[command(name = "netiso dist-files")]
pub struct DistArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Where the binary will be installed (named in the unit, hooks.d file and daemon.json).
    #[arg(long, value_name = "PATH", default_value = UNIT_BINARY)]
    pub bin: PathBuf,
}

/// `netiso dist-files ARGS` (`args` starts with the command's name).
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let a = match DistArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match write_all(&a.out, &a.bin) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            0
        }
        Err(e) => {
            eprintln!("netiso: error: {e:#}");
            EXIT_RUNTIME
        }
    }
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Writes everything below `out` and returns the files written.
pub fn write_all(out: &Path, bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let completions = out.join("completions");
    create_dir(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        files.push(
            clap_complete::generate_to(shell, &mut cmd, "netiso", &completions)
                .with_context(|| format!("writing {shell} completions"))?,
        );
    }
    let man = out.join("man");
    create_dir(&man)?;
    clap_mangen::generate_to(Cli::command(), &man).context("writing man pages")?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    files.extend(pages);

    let systemd = out.join("systemd");
    create_dir(&systemd)?;
    let unit = systemd.join("netiso.service");
    let bin_text = bin.to_str().context("the binary path is not UTF-8")?;
    fs::write(&unit, UNIT.replace(UNIT_BINARY, bin_text))
        .with_context(|| format!("writing {}", unit.display()))?;
    files.push(unit);

    files.push(oci_hook::write_hook_config(
        &out.join("hooks.d"),
        bin,
        Path::new(DEFAULT_SOCKET),
    )?);

    let docker = out.join("docker");
    create_dir(&docker)?;
    let daemon = docker.join("daemon.json");
    let runtime = bin.with_file_name(docker_runtime::ALIAS);
    let json = serde_json::json!({ "runtimes": { "netiso": { "path": runtime } } });
    fs::write(&daemon, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| format!("writing {}", daemon.display()))?;
    files.push(daemon);
    Ok(files)
}
