//! Events flow one way: the kernel's `EVENTS` ring buffer -> [`read`] -> the bounded
//! in-memory [`EventLog`] -> the API, which pages through it by sequence number and names
//! containers as it answers.
use std::{
    collections::{BTreeMap, VecDeque},
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
            .map_or(0, |d| d.as_millis() as u64);
        if self.events.len() == CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back((self.last, ms, ev));
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// Events after `seq`, oldest first, with container names from `names` (by id).
    pub fn after(&self, seq: u64, names: &BTreeMap<u32, String>) -> Vec<EventInfo> {
        let name_of = |id: u32| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        // The log is in sequence order: skip to the first newer event.
        let start = self.events.partition_point(|(s, _, _)| *s <= seq);
        self.events
            .range(start..)
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
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(ev.addr.held_v4()))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(ev.addr))),
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
        container: name_of(ev.container.0),
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

/// Moves events from the ring buffer into `log` as they arrive.
pub async fn read(rb: RingBuf<MapData>, log: Arc<Mutex<EventLog>>) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and is moved into the AsyncFd, which outlives every
    // use of it; nothing else closes it.
    let mut fd = unsafe { AsyncFd::register(rb) }.map_err(std::io::Error::from)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let rb = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = rb.next() {
            if item.len() >= size_of::<Event>() {
                // SAFETY: the kernel side writes whole `Event`s; read_unaligned copies one out.
                batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
            }
        }
        guard.clear_ready();
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for ev in batch {
            log.push(ev);
        }
    }
}
