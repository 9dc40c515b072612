//! `netiso events [--follow]`: what the datapath refused, audited or dropped.
use std::time::Duration;

use super::CmdResult;
use crate::{
    api::{EventInfo, EventsPage},
    client::Client,
};

fn line(e: &EventInfo) -> String {
    let secs = e.time_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}  {:<16} {:<18} {:<14} {}{}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        e.time_ms % 1000,
        e.container,
        e.what,
        e.errno.as_deref().unwrap_or("dropped"),
        e.address.as_deref().unwrap_or("-"),
        if e.audited { "  (audit: allowed)" } else { "" },
    )
}

pub fn run(client: &Client, json: bool, follow: bool) -> CmdResult {
    let mut after = 0;
    if !json {
        println!("TIME (UTC)    CONTAINER        WHAT               ERRNO          ADDRESS");
    }
    loop {
        let page: EventsPage = client.events(after)?;
        for e in &page.events {
            if json {
                println!("{}", serde_json::to_string(e).expect("serializable"));
            } else {
                println!("{}", line(e));
            }
        }
        after = page.last.max(after);
        if !follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
