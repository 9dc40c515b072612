//! What the two container-runtime front ends share: `netiso oci-hook` (Podman, CRI-O and any
//! runtime that runs OCI hooks) and `netiso docker-runtime` (Docker). Both read the same keys,
//! as annotations (`io.netiso.ips`) or as environment variables of the container
//! (`NETISO_IPS`), register the container by the pid of its init (the agent finds the cgroup),
//! and unregister it once it has stopped.
use std::{fs, net::IpAddr, path::Path};

use anyhow::Context;
use log::{info, warn};
use thiserror::Error;

use crate::{
    api::{AddContainer, ContainerInfo, Mode},
    client::{Client, ClientError},
};

/// Where a container's netiso settings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// OCI annotations, `io.netiso.*` (Podman `--annotation`, CRI-O, Kubernetes).
    Annotation,
    /// The container's environment, `NETISO_*` (Docker `-e`).
    Env,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Ips,
    Name,
    Mode,
    Isolated,
    AllowRaw,
    AbstractAllow,
}

/// Every key: the field, its annotation and its environment variable.
const KEYS: [(Field, &str, &str); 6] = [
    (Field::Ips, "io.netiso.ips", "NETISO_IPS"),
    (Field::Name, "io.netiso.name", "NETISO_NAME"),
    (Field::Mode, "io.netiso.mode", "NETISO_MODE"),
    (Field::Isolated, "io.netiso.isolated", "NETISO_ISOLATED"),
    (Field::AllowRaw, "io.netiso.allow-raw", "NETISO_ALLOW_RAW"),
    (
        Field::AbstractAllow,
        "io.netiso.abstract-allow",
        "NETISO_ABSTRACT_ALLOW",
    ),
];

impl KeySource {
    fn prefix(self) -> &'static str {
        match self {
            KeySource::Annotation => "io.netiso.",
            KeySource::Env => "NETISO_",
        }
    }

    fn what(self) -> &'static str {
        match self {
            KeySource::Annotation => "annotation",
            KeySource::Env => "environment variable",
        }
    }

    fn key(self, field: Field) -> &'static str {
        let (_, annotation, env) = KEYS
            .iter()
            .find(|(f, _, _)| *f == field)
            .expect("every field has keys");
        match self {
            KeySource::Annotation => annotation,
            KeySource::Env => env,
        }
    }

    fn field(self, key: &str) -> Option<Field> {
        KEYS.iter()
            .find(|(_, a, e)| {
                key == if self == KeySource::Annotation {
                    *a
                } else {
                    *e
                }
            })
            .map(|(f, _, _)| *f)
    }

    fn all(self) -> String {
        KEYS.iter()
            .map(|(f, _, _)| self.key(*f))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A container's netiso settings, read from its annotations or environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub source: KeySource,
    /// `io.netiso.name`; None: the runtime's container id.
    pub name: Option<String>,
    /// `io.netiso.ips`: the first address of each family is its primary.
    pub ips: Vec<IpAddr>,
    /// The value of the ips key as given, for messages.
    pub ips_text: String,
    pub mode: Mode,
    pub isolated: bool,
    pub allow_raw: bool,
    /// `io.netiso.abstract-allow`: the abstract unix names it may reach (restricted; `none`
    /// for no name at all); None: shared with the host.
    pub abstract_unix: Option<Vec<String>>,
}

/// A key netiso cannot use; the message names the key.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("invalid {what} {key}={value:?}: {why}")]
    Invalid {
        what: &'static str,
        key: String,
        value: String,
        why: String,
    },
    #[error("unknown {what} {key}: netiso reads {known}")]
    Unknown {
        what: &'static str,
        key: String,
        known: String,
    },
    #[error("{what} {missing} is missing ({present} is set): give the container's addresses there, separated by spaces")]
    NoIps {
        what: &'static str,
        missing: &'static str,
        present: String,
    },
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("use true or false".into()),
    }
}

/// Addresses separated by spaces (Podman splits `--annotation` values on commas) or commas.
fn parse_ips(v: &str) -> Result<Vec<IpAddr>, String> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for word in v.split(|c: char| c == ',' || c.is_whitespace()) {
        if word.is_empty() {
            continue;
        }
        let ip: IpAddr = word
            .parse()
            .map_err(|_| format!("{word:?} is not an IP address"))?;
        if ips.contains(&ip) {
            return Err(format!("address {ip} is given twice"));
        }
        ips.push(ip);
    }
    if ips.is_empty() {
        return Err("no address given; separate addresses with spaces".into());
    }
    Ok(ips)
}

/// Abstract unix names (`@name`) separated by spaces or commas; `none` lists no name.
fn parse_abstract(v: &str) -> Result<Vec<String>, String> {
    if v == "none" {
        return Ok(Vec::new());
    }
    let names: Vec<String> = v
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err("no name given; write `@name ...`, or `none`".into());
    }
    crate::api::abstract_names(&names)
}

/// Reads the netiso keys among `pairs`. None: the container has none of them and is not
/// netiso's. A key with the netiso prefix that netiso does not know is an error, so a typo
/// cannot leave a container unconfined.
pub fn parse<'a>(
    source: KeySource,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Option<Keys>, KeyError> {
    let mut keys = Keys {
        source,
        name: None,
        ips: Vec::new(),
        ips_text: String::new(),
        mode: Mode::Enforce,
        isolated: false,
        allow_raw: false,
        abstract_unix: None,
    };
    let mut seen = Vec::new();
    for (key, value) in pairs {
        if !key.starts_with(source.prefix()) {
            continue;
        }
        let field = source.field(key).ok_or_else(|| KeyError::Unknown {
            what: source.what(),
            key: key.to_owned(),
            known: source.all(),
        })?;
        let invalid = |why: String| KeyError::Invalid {
            what: source.what(),
            key: key.to_owned(),
            value: value.to_owned(),
            why,
        };
        let value = value.trim();
        match field {
            Field::Ips => {
                keys.ips = parse_ips(value).map_err(invalid)?;
                value.clone_into(&mut keys.ips_text);
            }
            Field::Name => {
                crate::api::validate_name(value).map_err(invalid)?;
                keys.name = Some(value.to_owned());
            }
            Field::Mode => keys.mode = value.parse().map_err(invalid)?,
            Field::Isolated => keys.isolated = parse_bool(value).map_err(invalid)?,
            Field::AllowRaw => keys.allow_raw = parse_bool(value).map_err(invalid)?,
            Field::AbstractAllow => {
                keys.abstract_unix = Some(parse_abstract(value).map_err(invalid)?);
            }
        }
        seen.push(key);
    }
    if seen.is_empty() {
        return Ok(None);
    }
    if keys.ips.is_empty() {
        return Err(KeyError::NoIps {
            what: source.what(),
            missing: source.key(Field::Ips),
            present: seen.join(", "),
        });
    }
    Ok(Some(keys))
}

/// `KEY=VALUE` environment entries as pairs (an entry without '=' has an empty value).
pub fn env_pairs(env: &[String]) -> impl Iterator<Item = (&str, &str)> {
    env.iter()
        .map(|e| e.split_once('=').unwrap_or((e.as_str(), "")))
}

impl Keys {
    /// The name to register: the name key, or the runtime's container id.
    pub fn name(&self, container_id: &str) -> anyhow::Result<String> {
        if let Some(n) = &self.name {
            return Ok(n.clone());
        }
        crate::api::validate_name(container_id).map_err(|e| {
            anyhow::anyhow!(
                "the container id cannot be a netiso name ({e}); set {}",
                self.source.key(Field::Name)
            )
        })?;
        Ok(container_id.to_owned())
    }

    /// Registers the container whose init is `pid` with the agent.
    pub fn register(
        &self,
        client: &Client,
        container_id: &str,
        pid: u32,
    ) -> anyhow::Result<ContainerInfo> {
        let name = self.name(container_id)?;
        let req = AddContainer {
            name: name.clone(),
            cgroup: None,
            pid: Some(pid),
            ips: self.ips.clone(),
            mode: self.mode,
            allow_raw: self.allow_raw,
            isolated: self.isolated,
            abstract_unix: self.abstract_unix.clone(),
        };
        match client.add_container(&req) {
            Ok(c) => {
                info!(
                    "registered container {name} ({}) for {}",
                    c.cgroup.display(),
                    self.ips_text
                );
                Ok(c)
            }
            Err(e @ ClientError::Api { .. }) => Err(anyhow::anyhow!(
                "the netiso agent refused container {name:?} ({}={:?}): {e}",
                self.source.key(Field::Ips),
                self.ips_text
            )),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("registering container {name:?} with netiso"))),
        }
    }
}

/// What [`unregister`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Unregistered {
    Removed,
    /// No container of that name is registered (already removed, or never registered).
    NotRegistered,
    /// The registered container's cgroup still has processes: it is not the stopped
    /// container (another one registered under the same name), so it stays.
    StillRunning,
}

/// Unregisters container `name` after its container stopped. A registration whose cgroup
/// still has processes belongs to a running container and is left alone: unregistering
/// it would leave that container unconfined.
pub fn unregister(client: &Client, name: &str) -> anyhow::Result<Unregistered> {
    let info = match client.container(name) {
        Ok(c) => c,
        Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {
            return Ok(Unregistered::NotRegistered)
        }
        Err(e) => return Err(e).context(format!("looking up container {name:?}")),
    };
    if populated(&info.cgroup) {
        warn!(
            "container {name:?} is registered for {}, which still has processes: left registered",
            info.cgroup.display()
        );
        return Ok(Unregistered::StillRunning);
    }
    match client.remove_container(name) {
        Ok(()) => {
            info!("unregistered container {name}");
            Ok(Unregistered::Removed)
        }
        Err(ClientError::Api { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {
            Ok(Unregistered::NotRegistered)
        }
        Err(e) => Err(e).context(format!("unregistering container {name:?}")),
    }
}

/// Whether a cgroup exists and has processes in its subtree.
fn populated(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cgroup.events"))
        .is_ok_and(|s| s.lines().any(|l| l == "populated 1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Result<Option<Keys>, KeyError> {
        parse(KeySource::Annotation, pairs.iter().copied())
    }

    #[test]
    fn no_netiso_key_is_not_netisos() {
        assert!(annotations(&[("io.podman.x", "1")]).unwrap().is_none());
        let env = vec!["PATH=/bin".to_owned(), "HOME".to_owned()];
        assert!(parse(KeySource::Env, env_pairs(&env)).unwrap().is_none());
    }

    #[test]
    fn every_key_is_read() {
        let k = annotations(&[
            ("io.netiso.ips", " 192.0.2.10  2001:db8::10,192.0.2.11 "),
            ("io.netiso.name", "web"),
            ("io.netiso.mode", "audit"),
            ("io.netiso.isolated", "true"),
            ("io.netiso.allow-raw", "1"),
            ("io.netiso.abstract-allow", "@dbus @x"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            k.abstract_unix,
            Some(vec!["@dbus".to_owned(), "@x".to_owned()])
        );
        let ips: Vec<IpAddr> = ["192.0.2.10", "2001:db8::10", "192.0.2.11"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(k.ips, ips);
        assert_eq!(k.name.as_deref(), Some("web"));
        assert_eq!(k.mode, Mode::Audit);
        assert!(k.isolated && k.allow_raw);
        assert_eq!(k.name("ignored").unwrap(), "web");

        let env: Vec<String> = [
            "NETISO_IPS=192.0.2.10",
            "NETISO_MODE=enforce",
            "NETISO_ALLOW_RAW=false",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let k = parse(KeySource::Env, env_pairs(&env)).unwrap().unwrap();
        assert_eq!(k.ips, vec!["192.0.2.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            (k.mode, k.isolated, k.allow_raw),
            (Mode::Enforce, false, false)
        );
        assert_eq!(k.name("abc123").unwrap(), "abc123");
        assert_eq!(k.abstract_unix, None, "shared unless restricted");
        let env = vec![
            "NETISO_IPS=192.0.2.10".to_owned(),
            "NETISO_ABSTRACT_ALLOW=none".to_owned(),
        ];
        let k = parse(KeySource::Env, env_pairs(&env)).unwrap().unwrap();
        assert_eq!(k.abstract_unix, Some(Vec::new()));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: [(&[(&str, &str)], &str); 9] = [
            (
                &[
                    ("io.netiso.ips", "192.0.2.1"),
                    ("io.netiso.abstract-allow", "dbus"),
                ],
                "io.netiso.abstract-allow",
            ),
            (&[("io.netiso.ips", "192.0.2.999")], "io.netiso.ips"),
            (&[("io.netiso.ips", "")], "io.netiso.ips"),
            (&[("io.netiso.ips", "192.0.2.1 192.0.2.1")], "given twice"),
            (
                &[("io.netiso.ips", "192.0.2.1"), ("io.netiso.mode", "strict")],
                "io.netiso.mode",
            ),
            (
                &[
                    ("io.netiso.ips", "192.0.2.1"),
                    ("io.netiso.isolated", "yes!"),
                ],
                "io.netiso.isolated",
            ),
            (
                &[("io.netiso.ips", "192.0.2.1"), ("io.netiso.name", "a/b")],
                "io.netiso.name",
            ),
            (
                &[("io.netiso.ip", "192.0.2.1")],
                "unknown annotation io.netiso.ip",
            ),
            (&[("io.netiso.mode", "audit")], "io.netiso.ips is missing"),
        ];
        for (pairs, needle) in cases {
            let e = annotations(pairs).unwrap_err().to_string();
            assert!(e.contains(needle), "{pairs:?}: {e}");
        }
        let env = vec!["NETISO_IPS=nope".to_owned()];
        let e = parse(KeySource::Env, env_pairs(&env))
            .unwrap_err()
            .to_string();
        assert!(e.contains("environment variable NETISO_IPS"), "{e}");
    }

    #[test]
    fn an_id_that_is_no_name_asks_for_the_name_key() {
        let k = annotations(&[("io.netiso.ips", "192.0.2.1")])
            .unwrap()
            .unwrap();
        let e = k.name(&"x".repeat(65)).unwrap_err().to_string();
        assert!(e.contains("set io.netiso.name"), "{e}");
    }
}
