//! Events from the kernel's `EVENTS` ring buffer, kept in a bounded in-memory log that the API
//! pages through by sequence number.
use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use netiso_common::{
    counter,
    policy::{AF_INET, AF_INET6},
    Event, EVENT_AUDITED,
};
use tokio::io::unix::AsyncFd;

use super::service::Service;
use crate::api::EventInfo;

/// How many events the agent keeps.
const CAPACITY: usize = 4096;

#[derive(Default)]
pub struct EventLog {
    last: u64,
    events: VecDeque<(u64, u64, Event)>,
}

impl EventLog {
    pub fn push(&mut self, ev: Event) {
        self.last += 1;
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if self.events.len() == CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back((self.last, ms, ev));
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// Events after `seq`, oldest first, named with `name_of(container id)`.
    pub fn after(&self, seq: u64, name_of: impl Fn(u32) -> String) -> Vec<EventInfo> {
        self.events
            .iter()
            .filter(|(s, _, _)| *s > seq)
            .map(|(s, ms, ev)| describe(*s, *ms, ev, &name_of))
            .collect()
    }
}

fn errno_name(e: u32) -> String {
    match e {
        1 => "EPERM".into(),
        13 => "EACCES".into(),
        99 => "EADDRNOTAVAIL".into(),
        101 => "ENETUNREACH".into(),
        other => format!("errno {other}"),
    }
}

fn describe(seq: u64, time_ms: u64, ev: &Event, name_of: &impl Fn(u32) -> String) -> EventInfo {
    let ip = match ev.family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(ev.addr[0].to_ne_bytes()))),
        AF_INET6 => {
            let mut o = [0u8; 16];
            for (i, w) in ev.addr.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    };
    let address = ip.map(|ip| match (ip, ev.port) {
        (ip, 0) => ip.to_string(),
        (IpAddr::V6(a), p) => format!("[{a}]:{p}"),
        (a, p) => format!("{a}:{p}"),
    });
    EventInfo {
        seq,
        time_ms,
        container: name_of(ev.container),
        what: counter::NAMES
            .get(ev.kind as usize)
            .copied()
            .unwrap_or("unknown")
            .to_owned(),
        errno: (ev.errno != 0).then(|| errno_name(ev.errno)),
        address,
        audited: ev.flags & EVENT_AUDITED != 0,
    }
}

/// Moves events from the ring buffer into the service's log as they arrive.
pub async fn read(rb: RingBuf<MapData>, service: Arc<Mutex<Service>>) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and is moved into the AsyncFd, which outlives every
    // use of it; nothing else closes it.
    let mut fd = unsafe { AsyncFd::register(rb) }.map_err(std::io::Error::from)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let rb = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = rb.next() {
            if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: the kernel side writes whole `Event`s; read_unaligned copies one out.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const Event) });
            }
        }
        guard.clear_ready();
        let mut s = service.lock().unwrap_or_else(|p| p.into_inner());
        for ev in batch {
            s.events.push(ev);
        }
    }
}
