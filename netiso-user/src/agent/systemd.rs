//! systemd's readiness protocol (`Type=notify`): READY=1 once the API is served, STOPPING=1
//! when a shutdown begins. Without $NOTIFY_SOCKET (not started by systemd) nothing is sent.
use log::{debug, warn};
use sd_notify::NotifyState;

/// Tells the service manager the agent serves its API.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the agent is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(states) {
        Ok(()) => debug!("notified the service manager: {states:?}"),
        Err(e) => warn!("notifying the service manager (NOTIFY_SOCKET) failed: {e}"),
    }
}
