//! `netiso policy allow|deny|ls`: which containers may reach which.
use clap::Subcommand;

use super::{name_arg, output, CmdResult};
use crate::{
    api::{PolicyAction, PolicyRule},
    client::Client,
};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Let container FROM reach container TO (needed when TO is --isolated).
    Allow {
        #[arg(value_parser = name_arg)]
        from: String,
        #[arg(value_parser = name_arg)]
        to: String,
    },
    /// Stop container FROM from reaching container TO (isolated or not).
    Deny {
        #[arg(value_parser = name_arg)]
        from: String,
        #[arg(value_parser = name_arg)]
        to: String,
    },
    /// List the rules.
    Ls,
}

fn print(rules: &[PolicyRule], json: bool) {
    if json {
        return output::json(&rules);
    }
    let rows: Vec<Vec<String>> = rules
        .iter()
        .map(|r| {
            let action = match r.action {
                PolicyAction::Allow => "allow",
                PolicyAction::Deny => "deny",
            };
            vec![r.from.clone(), r.to.clone(), action.to_owned()]
        })
        .collect();
    output::table(&["FROM", "TO", "ACTION"], &rows);
}

pub fn run(client: &Client, json: bool, cmd: &PolicyCmd) -> CmdResult {
    let rules: Vec<PolicyRule> = match cmd {
        PolicyCmd::Allow { from, to } | PolicyCmd::Deny { from, to } => {
            let action = if matches!(cmd, PolicyCmd::Allow { .. }) {
                PolicyAction::Allow
            } else {
                PolicyAction::Deny
            };
            let rule = PolicyRule {
                from: from.clone(),
                to: to.clone(),
                action,
            };
            client.set_rule(&rule)?
        }
        PolicyCmd::Ls => client.rules()?,
    };
    print(&rules, json);
    Ok(0)
}
