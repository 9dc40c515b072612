//! The JSON state file of netiso before the store (`state.json`): read once, when an agent
//! finds it and no store, and imported into the store (see `agent::start`). Nothing writes
//! it any more.
use std::{
    collections::BTreeMap,
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    api::Mode,
    registry::{loopback_of_slot, ContainerSpec as RegSpec, Registry},
};

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
    #[error("state {path} cannot be imported: {what}; fix or remove it")]
    Invalid { path: PathBuf, what: String },
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
    /// Loads the old state file in `dir`; None when there is none (a dangling symbolic link
    /// counts as none: the store, not this file, decides what is lost).
    pub fn load(dir: &Path) -> Result<Option<State>, StateError> {
        let path = dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
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
        Ok(Some(state))
    }

    /// The registry this state describes, and the corrections made on the way (each worth a
    /// log line). Old state files derived each private loopback from the container id
    /// (127.128.0.0 + (id & 0x7fffff)), so after 2^23 registrations two containers could
    /// share one: the first keeps its address, later ones get a free one.
    pub fn into_registry(self) -> Result<(Registry, Vec<String>), StateError> {
        let mut notes = Vec::new();
        let mut reg = Registry::new();
        reg.enabled = self.enabled;
        reg.cgroup_root = self.cgroup_root;
        reg.next_id = self.next_id.max(1);
        reg.ifaces = self.ifaces.into_iter().collect();
        let mut by_id: Vec<(String, ContainerSpec)> = self.containers.into_iter().collect();
        by_id.sort_by_key(|(_, c)| c.id);
        for (name, c) in by_id {
            // A container's loopback is slot `id`, and ids fit the socket mark's 23 bits.
            // The old agent wrapped loopbacks (id & 0x7fffff) past 2^23 registrations; such
            // a container gets a new id.
            let in_range = (1..=crate::registry::MAX_ID).contains(&c.id);
            let id = if in_range
                && reg.get(c.id).is_none()
                && !reg.loopback_taken(loopback_of_slot(c.id))
            {
                c.id
            } else {
                let id = reg.allocate_id();
                notes.push(format!(
                    "container {name}: its id {} does not fit the mark and loopback range, or its loopback is another container's; it gets id {id}",
                    c.id
                ));
                id
            };
            let loopback = loopback_of_slot(id);
            let spec = RegSpec {
                id,
                name: name.clone(),
                cgroup: c.cgroup,
                cgroup_id: c.cgroup_id,
                cgroup_level: c.cgroup_level,
                ips: c.ips,
                loopback,
                mode: c.mode,
                allow_raw: c.allow_raw,
                isolated: c.isolated,
                abstract_unix: None,
            };
            reg.insert(spec).map_err(|clash| StateError::Invalid {
                path: PathBuf::from(STATE_FILE),
                what: format!("container {name}: {clash}"),
            })?;
        }
        // The loopback cursor starts after the highest slot in use.
        reg.next_loopback = reg
            .iter()
            .filter_map(|c| crate::registry::loopback_slot(c.loopback))
            .max()
            .map_or(1, |s| s + 1);
        for r in self.rules {
            match (reg.by_name(&r.from), reg.by_name(&r.to)) {
                (Some(f), Some(t)) => {
                    let (f, t) = (f.id, t.id);
                    reg.set_rule(f, t, r.allow);
                }
                _ => notes.push(format!(
                    "dropping the rule {} -> {}: it names an unknown container",
                    r.from, r.to
                )),
            }
        }
        Ok((reg, notes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u32, path: &str, ip: &str) -> ContainerSpec {
        ContainerSpec {
            id,
            cgroup: path.into(),
            cgroup_id: 40 + u64::from(id),
            cgroup_level: 1,
            ips: vec![ip.parse().unwrap()],
            mode: Mode::Audit,
            allow_raw: false,
            isolated: true,
        }
    }

    #[test]
    fn old_state_is_imported_with_unique_loopbacks() {
        let mut s = State::default();
        s.containers
            .insert("old".into(), spec(1, "/sys/fs/cgroup/old", "192.0.2.1"));
        // Registered after 2^23 others: id & 0x7fffff collides with "old".
        s.containers.insert(
            "new".into(),
            spec(0x80_0001, "/sys/fs/cgroup/new", "192.0.2.2"),
        );
        s.next_id = 0x80_0002;
        s.rules.push(Rule {
            from: "new".into(),
            to: "old".into(),
            allow: false,
        });
        s.rules.push(Rule {
            from: "gone".into(),
            to: "old".into(),
            allow: true,
        });
        let (reg, notes) = s.into_registry().unwrap();
        let old = reg.by_name("old").unwrap();
        let new = reg.by_name("new").unwrap();
        assert_eq!(old.loopback, loopback_of_slot(1));
        assert_ne!(new.loopback, old.loopback);
        assert!((1..=crate::registry::MAX_ID).contains(&new.id));
        assert_eq!(new.loopback, loopback_of_slot(new.id));
        assert_eq!(reg.rule(new.id, old.id), Some(false));
        assert_eq!(reg.rule_count(), 1);
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn missing_state_is_none_and_corrupt_state_is_an_error() {
        let dir = std::env::temp_dir().join(format!("netiso-state-c-{}", std::process::id()));
        assert!(State::load(&dir).unwrap().is_none());
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(dir.join("nowhere"), dir.join(STATE_FILE)).unwrap();
        assert!(State::load(&dir).unwrap().is_none(), "dangling link");
        fs::remove_file(dir.join(STATE_FILE)).unwrap();
        fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        assert!(matches!(State::load(&dir), Err(StateError::Corrupt { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
