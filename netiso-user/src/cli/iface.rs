//! `netiso iface add|rm|ls`: the interfaces carrying the TC programs.
use clap::Subcommand;

use super::{iface_arg, output, CmdResult};
use crate::{api::IfaceInfo, client::Client};

#[derive(Subcommand)]
pub enum IfaceCmd {
    /// Attach the ingress and egress TC programs to IFACE (in the agent's network namespace).
    /// Also repairs an interface whose programs are gone, e.g. after it was re-created.
    Add {
        #[arg(value_parser = iface_arg)]
        iface: String,
    },
    /// Detach the TC programs from IFACE.
    Rm {
        #[arg(value_parser = iface_arg)]
        iface: String,
    },
    /// List configured interfaces: attached, missing (no such interface) or detached.
    Ls,
}

fn print(ifaces: &[IfaceInfo], json: bool) {
    if json {
        return output::json(&ifaces);
    }
    let rows: Vec<Vec<String>> = ifaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.state.to_string(),
                i.ifindex.map_or_else(|| "-".into(), |x| x.to_string()),
            ]
        })
        .collect();
    output::table(&["IFACE", "STATE", "IFINDEX"], &rows);
}

pub fn run(client: &Client, json: bool, cmd: &IfaceCmd) -> CmdResult {
    match cmd {
        IfaceCmd::Add { iface } => {
            let info = client.add_iface(iface)?;
            print(&[info], json);
        }
        IfaceCmd::Rm { iface } => client.remove_iface(iface)?,
        IfaceCmd::Ls => {
            let ifaces = client.ifaces()?;
            print(&ifaces, json);
        }
    }
    Ok(0)
}
