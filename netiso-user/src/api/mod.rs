//! The agent's HTTP API: the route table ([`routes`]) and the JSON bodies, shared by the
//! agent's server and the typed client (`crate::client`) that the CLI, the tests and the
//! benchmark use.
pub mod routes;

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse what the contract forbids (default).
    #[default]
    Enforce,
    /// Allow everything, count what enforce mode would refuse.
    Audit,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        })
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "audit" => Ok(Mode::Audit),
            other => Err(format!("unknown mode {other:?}: use enforce or audit")),
        }
    }
}

/// Checks a container name: 1-64 letters, digits, '-', '_' or '.', not starting with '.'.
/// Names become URL path segments and cgroup directory names, so nothing else is allowed.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid container name {name:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

/// Checks an interface name the way the kernel does (dev_valid_name): 1-15 bytes, not "."
/// or "..", no '/', ':' or whitespace.
pub fn validate_iface(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid interface name {name:?}: 1-15 characters, no '/', ':' or spaces"
        ))
    }
}

/// POST /v1/containers (one object, or an array of them: a batch, registered all or none).
/// Exactly one of `cgroup` and `pid` names the container's cgroup. Registering the same
/// container again (same name, cgroup, addresses and options) succeeds and returns it
/// unchanged; anything that differs is refused.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddContainer {
    pub name: String,
    /// The cgroup v2 directory: absolute, or relative to the cgroup2 mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// A process (in the agent's pid namespace) whose cgroup v2 directory, read from the
    /// `0::` line of /proc/PID/cgroup, is the container's: what an OCI hook knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub allow_raw: bool,
    #[serde(default)]
    pub isolated: bool,
    /// Restricts the container's abstract unix sockets to these names (see
    /// [`SetAbstractUnix`]); absent: shared with the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abstract_unix: Option<Vec<String>>,
}

/// Longest abstract unix name netiso can list (bytes after the `@`).
pub const ABSTRACT_NAME_MAX: usize = 107;
/// Most names one container may list.
pub const ABSTRACT_NAMES_PER_CONTAINER: usize = 256;

/// Checks an abstract unix socket name as `ss -x` prints it: `@` (the leading NUL) and 0-107
/// more bytes, none of them NUL. Returns the bytes after the `@`.
pub fn abstract_name(name: &str) -> Result<&[u8], String> {
    let Some(rest) = name.strip_prefix('@') else {
        return Err(format!(
            "abstract unix name {name:?} must start with '@' (written as `ss -x` shows it)"
        ));
    };
    if rest.len() > ABSTRACT_NAME_MAX || rest.contains('\0') {
        return Err(format!(
            "abstract unix name {name:?}: at most {ABSTRACT_NAME_MAX} bytes after the '@', no NUL"
        ));
    }
    Ok(rest.as_bytes())
}

/// Checks a list of abstract names (each valid, no more than
/// [`ABSTRACT_NAMES_PER_CONTAINER`]) and returns it sorted, without duplicates.
pub fn abstract_names(names: &[String]) -> Result<Vec<String>, String> {
    if names.len() > ABSTRACT_NAMES_PER_CONTAINER {
        return Err(format!(
            "{} abstract unix names given; a container may list at most {ABSTRACT_NAMES_PER_CONTAINER}",
            names.len()
        ));
    }
    for n in names {
        abstract_name(n)?;
    }
    let mut out = names.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// PUT /v1/containers/{name}/abstract-unix: `names` Some restricts the container's abstract
/// unix sockets to those names (connect and send; none at all when empty), None shares the
/// host's abstract namespace again.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAbstractUnix {
    pub names: Option<Vec<String>>,
}

/// POST /v1/policy: may container `from` reach container `to`?
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    pub from: String,
    pub to: String,
    pub action: PolicyAction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// PUT /v1/containers/{name}/mode
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMode {
    pub mode: Mode,
}

/// POST /v1/containers/{name}/ips
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddIp {
    pub ip: IpAddr,
}

/// POST /v1/ips/{ip}/move: move an owned address from one container to another.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveIp {
    pub from: String,
    pub to: String,
}

/// The answer to a move: both containers after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Moved {
    pub ip: IpAddr,
    pub from: ContainerInfo,
    pub to: ContainerInfo,
}

/// The limits in force (flags capped by the capacity of the pinned maps) and their use.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CapacityInfo {
    pub containers: u32,
    pub addresses: u32,
    pub addresses_per_container: u32,
    pub addresses_used: usize,
}

/// A registered container as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub id: u32,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    /// False when the cgroup directory has disappeared since registration.
    pub cgroup_present: bool,
    /// Owned addresses; the first of each family is its primary.
    pub ips: Vec<IpAddr>,
    /// The container's private loopback address (127.0.0.1 inside maps to it).
    pub loopback: IpAddr,
    pub mode: Mode,
    pub allow_raw: bool,
    /// Reachable only from containers a policy rule allows.
    pub isolated: bool,
    /// The abstract unix names it may reach; absent: the namespace is shared with the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abstract_unix: Option<Vec<String>>,
    /// Counter name -> value, summed over CPUs.
    pub counters: BTreeMap<String, u64>,
}

impl ContainerInfo {
    /// One counter's value (0 when unknown).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Every packet dropped, at the sockets and at the interfaces.
    pub fn dropped(&self) -> u64 {
        self.counters
            .iter()
            .filter(|(k, _)| k.ends_with("_dropped"))
            .map(|(_, v)| v)
            .sum()
    }

    /// Everything refused at the socket layer, all hooks together.
    pub fn refused(&self) -> u64 {
        self.counters
            .iter()
            .filter(|(k, _)| k.ends_with("_refused"))
            .map(|(_, v)| v)
            .sum()
    }
}

/// GET /v1/status
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub enabled: bool,
    pub cgroup_root: PathBuf,
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub containers: usize,
    /// Attached programs (hook names), each pinned under `bpffs/links`.
    pub programs: Vec<String>,
    /// Interfaces with the TC programs (see GET /v1/ifaces for their state).
    #[serde(default)]
    pub ifaces: Vec<String>,
    /// Limits and their use (absent from older agents).
    #[serde(default)]
    pub capacity: Option<CapacityInfo>,
}

/// Whether the TC programs are on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfaceState {
    /// Both programs are attached.
    Attached,
    /// No such interface in the agent's network namespace (it stays configured).
    Missing,
    /// The interface exists without the programs (re-created?): `netiso iface add` repairs it.
    Detached,
}

impl fmt::Display for IfaceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IfaceState::Attached => "attached",
            IfaceState::Missing => "missing",
            IfaceState::Detached => "detached",
        })
    }
}

/// A configured interface (GET /v1/ifaces, PUT /v1/ifaces/{name}).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IfaceInfo {
    pub name: String,
    pub state: IfaceState,
    pub ifindex: Option<u32>,
}

/// One refused, audited or dropped operation (GET /v1/events).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventInfo {
    /// Increasing sequence number; ask for `?after=SEQ` to get newer ones.
    pub seq: u64,
    /// When the agent read it, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub container: String,
    /// The counter it was counted under, e.g. "bind_refused" or "ingress_dropped".
    pub what: String,
    /// The errno the process got (absent for dropped packets).
    pub errno: Option<String>,
    /// The address involved, when there is one.
    pub address: Option<String>,
    /// Audit mode let it through.
    pub audited: bool,
}

/// GET /v1/events?after=SEQ
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventsPage {
    pub events: Vec<EventInfo>,
    /// Pass as `after` to get only newer events.
    pub last: u64,
}

/// Body of every error response.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
