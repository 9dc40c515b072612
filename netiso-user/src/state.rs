//! The agent's persistent state: what is registered, written atomically so a crash at any
//! point leaves either the old or the new file.
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::api::Mode;

pub const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("reading state {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("state {path} is corrupt ({source}); fix or remove it (`netiso agent --cleanup` starts over)")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state {path} has version {found}, this netiso understands {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing state {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub id: u32,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub cgroup_level: u32,
    pub ips: Vec<IpAddr>,
    pub mode: Mode,
    pub allow_raw: bool,
    /// Reachable only from containers a policy rule allows.
    #[serde(default)]
    pub isolated: bool,
}

/// An explicit rule between two containers (by name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub from: String,
    pub to: String,
    pub allow: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub enabled: bool,
    /// The cgroup the programs are attached to; a restart must use the same one.
    pub cgroup_root: Option<PathBuf>,
    pub next_id: u32,
    pub containers: BTreeMap<String, ContainerSpec>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Interfaces the TC programs are attached to, sorted.
    #[serde(default)]
    pub ifaces: Vec<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            enabled: true,
            cgroup_root: None,
            next_id: 1,
            containers: BTreeMap::new(),
            rules: Vec::new(),
            ifaces: Vec::new(),
        }
    }
}

impl State {
    /// Loads the state in `dir`, or the empty state when there is none yet.
    pub fn load(dir: &Path) -> Result<State, StateError> {
        let path = dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: State = serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Version {
                path,
                found: state.version,
            });
        }
        Ok(state)
    }

    /// Writes the state to `dir` atomically: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(STATE_FILE);
        let err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        crate::failpoint::hit("state.save").map_err(err)?;
        let json = serde_json::to_vec_pretty(self).expect("state serializes");
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }

    /// The container owning `ip`, if any.
    pub fn owner_of(&self, ip: &IpAddr) -> Option<&str> {
        self.containers
            .iter()
            .find(|(_, c)| c.ips.contains(ip))
            .map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("netiso-state-{}", std::process::id()));
        let mut s = State::default();
        s.containers.insert(
            "web".into(),
            ContainerSpec {
                id: 1,
                cgroup: "/sys/fs/cgroup/web".into(),
                cgroup_id: 42,
                cgroup_level: 1,
                ips: vec!["192.0.2.1".parse().unwrap()],
                mode: Mode::Audit,
                allow_raw: false,
                isolated: true,
            },
        );
        s.ifaces = vec!["eth0.100".into(), "lo".into()];
        s.save(&dir).unwrap();
        assert_eq!(State::load(&dir).unwrap(), s);
        assert!(!dir.join(format!(".{STATE_FILE}.tmp")).exists());
        assert_eq!(s.owner_of(&"192.0.2.1".parse().unwrap()), Some("web"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_state_is_empty_and_corrupt_state_is_an_error() {
        let dir = std::env::temp_dir().join(format!("netiso-state-c-{}", std::process::id()));
        assert_eq!(State::load(&dir).unwrap(), State::default());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        assert!(matches!(State::load(&dir), Err(StateError::Corrupt { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
