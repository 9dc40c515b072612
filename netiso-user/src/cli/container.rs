//! `netiso container ...`: register, list, inspect and change containers.
use std::net::IpAddr;

use super::{output, CmdResult, ContainerCmd, IpCmd};
use crate::{
    api::{AddContainer, ContainerInfo},
    client::Client,
};

fn ips(c: &ContainerInfo) -> String {
    c.ips
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn print_one(c: &ContainerInfo, json: bool) {
    if json {
        return output::json(c);
    }
    let mut pairs = vec![
        ("name", c.name.clone()),
        ("id", c.id.to_string()),
        (
            "cgroup",
            format!(
                "{}{}",
                c.cgroup.display(),
                if c.cgroup_present { "" } else { " (missing)" }
            ),
        ),
        ("addresses", ips(c)),
        ("loopback", format!("{} (127.0.0.1 inside)", c.loopback)),
        ("mode", c.mode.to_string()),
        (
            "allow-raw",
            if c.allow_raw {
                "yes (weakened isolation)".into()
            } else {
                "no".into()
            },
        ),
        (
            "isolated",
            if c.isolated {
                "yes (reachable only from allowed containers)".into()
            } else {
                "no".into()
            },
        ),
        (
            "abstract-unix",
            match &c.abstract_unix {
                None => "shared with the host".into(),
                Some(n) if n.is_empty() => "restricted: no name".into(),
                Some(n) => format!("restricted: {}", n.join(" ")),
            },
        ),
    ];
    for (k, v) in &c.counters {
        pairs.push((k.as_str(), v.to_string()));
    }
    output::fields(&pairs);
}

fn print_list(list: &[ContainerInfo], json: bool) {
    if json {
        return output::json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                ips(c),
                c.mode.to_string(),
                if c.allow_raw {
                    "yes".into()
                } else {
                    "no".into()
                },
                c.refused().to_string(),
                c.counter("audited").to_string(),
                format!(
                    "{}{}",
                    c.cgroup.display(),
                    if c.cgroup_present { "" } else { " (missing)" }
                ),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "ADDRESSES",
            "MODE",
            "RAW",
            "REFUSED",
            "AUDITED",
            "CGROUP",
        ],
        &rows,
    );
}

pub fn run(client: &Client, json: bool, cmd: &ContainerCmd) -> CmdResult {
    match cmd {
        ContainerCmd::Add(a) => {
            a.policy.check()?;
            let req = AddContainer {
                name: a.name.clone(),
                cgroup: a.cgroup.clone(),
                pid: a.pid,
                ips: a.policy.ips.clone(),
                mode: a.policy.mode,
                allow_raw: a.policy.allow_raw,
                isolated: a.policy.isolated,
                abstract_unix: a.policy.abstract_unix(),
            };
            let c = client.add_container(&req)?;
            print_one(&c, json);
        }
        ContainerCmd::Rm { name } => {
            client.remove_container(name)?;
            if json {
                output::json(&serde_json::json!({ "removed": name }));
            } else {
                println!("removed container {name}");
            }
        }
        ContainerCmd::Ls => {
            let list = client.containers()?;
            print_list(&list, json);
        }
        ContainerCmd::Show { name } => {
            let c = client.container(name)?;
            print_one(&c, json);
        }
        ContainerCmd::AbstractUnix {
            name,
            allow,
            none: _,
            shared,
        } => {
            let names = (!*shared).then(|| allow.clone());
            let c = client.set_abstract_unix(name, names)?;
            print_one(&c, json);
        }
        ContainerCmd::Mode { name, mode } => {
            let c = client.set_mode(name, *mode)?;
            print_one(&c, json);
        }
        ContainerCmd::Ip(IpCmd::Add { name, addr }) => {
            let c = client.add_ip(name, *addr)?;
            print_one(&c, json);
        }
        ContainerCmd::Ip(IpCmd::Rm { name, addr }) => {
            let c = client.remove_ip(name, *addr)?;
            print_one(&c, json);
        }
        ContainerCmd::Ip(IpCmd::Move { addr, from, to }) => {
            let m = client.move_ip(*addr, from, to)?;
            if json {
                output::json(&m);
            } else {
                println!("moved {addr} from {from} to {to}");
                print_one(&m.to, false);
            }
        }
    }
    Ok(0)
}
