//! `netiso status`, `netiso enable`, `netiso disable`.
use super::{output, CmdResult};
use crate::{api::Status, client::Client};

fn print(s: &Status, json: bool) {
    if json {
        return output::json(s);
    }
    let capacity = s.capacity.as_ref().map_or_else(
        || "unknown".to_owned(),
        |c| {
            format!(
                "{} of {} containers, {} of {} addresses, {} per container",
                s.containers,
                c.containers,
                c.addresses_used,
                c.addresses,
                c.addresses_per_container
            )
        },
    );
    output::fields(&[
        (
            "enforcement",
            if s.enabled {
                "enabled".into()
            } else {
                "DISABLED (all hooks pass through)".into()
            },
        ),
        ("containers", s.containers.to_string()),
        ("capacity", capacity),
        ("cgroup root", s.cgroup_root.display().to_string()),
        ("pins", s.bpffs.display().to_string()),
        ("state", s.state_dir.display().to_string()),
        ("programs", s.programs.join(", ")),
        (
            "interfaces",
            if s.ifaces.is_empty() {
                "none (`netiso iface add IFACE` attaches the TC programs)".into()
            } else {
                s.ifaces.join(", ")
            },
        ),
        ("version", s.version.clone()),
    ]);
}

pub fn status(client: &Client, json: bool) -> CmdResult {
    let s = client.status()?;
    print(&s, json);
    Ok(0)
}

pub fn toggle(client: &Client, json: bool, enable: bool) -> CmdResult {
    let s = client.set_enabled(enable)?;
    print(&s, json);
    Ok(0)
}
