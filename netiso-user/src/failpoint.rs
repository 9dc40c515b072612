//! Failure injection for the tests of "a request that fails changes nothing": the agent reads
//! `NETISO_FAILPOINTS` (comma-separated names) once, and once it serves requests each named
//! step fails as if the kernel or the disk had refused it. Unset in production; the agent
//! warns loudly when it is set.
use std::{
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
};

static ARMED: AtomicBool = AtomicBool::new(false);

/// The environment variable naming the steps to fail.
pub const ENV: &str = "NETISO_FAILPOINTS";

fn active() -> &'static [String] {
    static ACTIVE: OnceLock<Vec<String>> = OnceLock::new();
    ACTIVE.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| {
                v.split(',')
                    .map(str::to_owned)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The failpoints set for this process (for the startup warning).
pub fn configured() -> &'static [String] {
    active()
}

/// Makes the configured failpoints fire from now on (the agent calls it once it is up).
pub fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// Fails with an injected error when `name` is set and armed.
pub fn hit(name: &str) -> io::Result<()> {
    if ARMED.load(Ordering::SeqCst) && active().iter().any(|a| a == name) {
        return Err(io::Error::other(format!(
            "injected failure at {name} ({ENV})"
        )));
    }
    Ok(())
}
