//! `netiso oci-hook`: the OCI hook Podman, CRI-O (and runc, crun) run for containers with
//! `io.netiso.*` annotations. At `createRuntime` (host namespaces, the container's init
//! already in its cgroup, the user program not started) it registers the container by the
//! pid of its init; at `poststop` it unregisters it. A failed registration exits non-zero,
//! so the runtime aborts the container: it fails closed.
//!
//! `netiso oci-hook install` writes the hooks.d file that makes the runtime call it.
use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use oci_spec::runtime::{ContainerState, State};
use serde_json::json;

use super::{
    oci::{self, KeySource, Unregistered},
    CmdResult,
};
use crate::client::Client;

/// Where Podman and CRI-O look for hooks unless configured otherwise.
pub const DEFAULT_HOOKS_DIR: &str = "/usr/share/containers/oci/hooks.d";
/// The file `install` writes in the hooks directory.
pub const HOOK_FILE: &str = "netiso.json";
/// What the runtime allows the hook before killing it (seconds); the hook itself gives up on
/// the agent well before (`--timeout`).
const RUNTIME_TIMEOUT_SECS: u64 = 30;
/// The largest OCI state the hook reads (a state is a few KiB).
const MAX_STATE: u64 = 1 << 20;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct OciHookArgs {
    #[command(subcommand)]
    pub action: Option<OciHookAction>,
    /// Give up on the agent after SECS seconds; the container then fails to start.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Subcommand)]
pub enum OciHookAction {
    /// Write DIR/netiso.json: the runtime then runs this binary (by its absolute path, with
    /// the agent socket given by --socket or NETISO_SOCKET) at createRuntime and poststop for
    /// every container with an io.netiso.* annotation.
    Install {
        /// The runtime's hooks directory (Podman: `hooks_dir` in containers.conf; CRI-O:
        /// `hooks_dir` in crio.conf).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_HOOKS_DIR)]
        hooks_dir: PathBuf,
    },
    /// Remove DIR/netiso.json again (running containers stay registered until they stop).
    Uninstall {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_HOOKS_DIR)]
        hooks_dir: PathBuf,
    },
}

pub fn run(socket: &Path, args: &OciHookArgs) -> CmdResult {
    match &args.action {
        Some(OciHookAction::Install { hooks_dir }) => install(socket, hooks_dir),
        Some(OciHookAction::Uninstall { hooks_dir }) => uninstall(hooks_dir),
        None => Ok(hook(socket, Duration::from_secs(args.timeout))?),
    }
}

/// The hook itself: reads the OCI state from stdin and registers or unregisters.
fn hook(socket: &Path, timeout: Duration) -> anyhow::Result<i32> {
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_STATE)
        .read_to_string(&mut text)
        .context("reading the OCI state from stdin")?;
    let state: State = serde_json::from_str(&text).context(
        "stdin is not an OCI state; `netiso oci-hook` is run by the container runtime (see `netiso oci-hook install`)",
    )?;
    let annotations = state.annotations().clone().unwrap_or_default();
    let stopped = *state.status() == ContainerState::Stopped;
    let keys = match oci::parse(
        KeySource::Annotation,
        annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        Ok(Some(k)) => k,
        // Not netiso's container.
        Ok(None) => return Ok(0),
        // Refused at createRuntime already: nothing was registered.
        Err(_) if stopped => return Ok(0),
        Err(e) => bail!("container {}: {e}", state.id()),
    };
    let client = Client::new(socket).with_timeout(timeout);
    if stopped {
        let name = keys.name(state.id())?;
        if oci::unregister(&client, &name)? == Unregistered::StillRunning {
            bail!("container {name:?} was not unregistered: its registered cgroup still has processes (two containers with the same io.netiso.name?)");
        }
        return Ok(0);
    }
    let Some(pid) = state.pid().filter(|p| *p > 0) else {
        bail!(
            "the OCI state of container {} has no pid (status {}); run `netiso oci-hook` at the createRuntime and poststop stages",
            state.id(),
            state.status()
        );
    };
    keys.register(&client, state.id(), pid as u32)?;
    Ok(0)
}

/// The hooks.d file for `binary` talking to the agent at `socket`.
pub fn hook_config(binary: &Path, socket: &Path) -> serde_json::Value {
    json!({
        "version": "1.0.0",
        "hook": {
            "path": binary,
            "args": ["netiso", "--socket", socket, "oci-hook"],
            "timeout": RUNTIME_TIMEOUT_SECS,
        },
        // Any netiso key, so that a misspelt one fails the container instead of leaving it
        // unconfined.
        "when": { "annotations": { "^io\\.netiso\\.": ".*" } },
        "stages": ["createRuntime", "poststop"],
    })
}

/// Writes `hook_config` into `dir/netiso.json`, atomically (a runtime may read it any time).
pub fn write_hook_config(dir: &Path, binary: &Path, socket: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(HOOK_FILE);
    let tmp = dir.join(format!(".{HOOK_FILE}.tmp"));
    let text = serde_json::to_string_pretty(&hook_config(binary, socket))? + "\n";
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    Ok(std::env::current_dir()
        .context("finding the current directory")?
        .join(p))
}

fn install(socket: &Path, dir: &Path) -> CmdResult {
    let binary = std::env::current_exe()
        .and_then(fs::canonicalize)
        .context("finding the path of this netiso binary")?;
    let socket = absolute(socket)?;
    let path = write_hook_config(dir, &binary, &socket)?;
    println!(
        "installed {}: the runtime runs {} for containers with io.netiso.* annotations (agent socket {})",
        path.display(),
        binary.display(),
        socket.display()
    );
    Ok(0)
}

fn uninstall(dir: &Path) -> CmdResult {
    let path = dir.join(HOOK_FILE);
    match fs::remove_file(&path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{} is not installed; nothing to remove", path.display());
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("removing {}", path.display()))
                .into())
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_config_runs_both_stages_for_netiso_annotations() {
        let c = hook_config(Path::new("/usr/bin/netiso"), Path::new("/run/n.sock"));
        assert_eq!(c["hook"]["path"], "/usr/bin/netiso");
        assert_eq!(
            c["hook"]["args"],
            json!(["netiso", "--socket", "/run/n.sock", "oci-hook"])
        );
        assert_eq!(c["stages"], json!(["createRuntime", "poststop"]));
        assert!(c["when"]["annotations"]["^io\\.netiso\\."].is_string());
    }
}
