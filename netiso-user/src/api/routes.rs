//! Every route of the API, once: the server builds its router from this table and the client
//! builds its requests from it, so the two cannot drift apart.

/// An HTTP method the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

/// A route: method and path pattern; `{name}` segments are parameters (axum's syntax).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub pattern: &'static str,
}

const fn route(method: Method, pattern: &'static str) -> Route {
    Route { method, pattern }
}

use Method::{Delete, Get, Post, Put};

pub const STATUS: Route = route(Get, "/v1/status");
pub const ENABLE: Route = route(Post, "/v1/enable");
pub const DISABLE: Route = route(Post, "/v1/disable");
pub const LIST_CONTAINERS: Route = route(Get, "/v1/containers");
pub const ADD_CONTAINER: Route = route(Post, "/v1/containers");
pub const SHOW_CONTAINER: Route = route(Get, "/v1/containers/{name}");
pub const REMOVE_CONTAINER: Route = route(Delete, "/v1/containers/{name}");
pub const SET_MODE: Route = route(Put, "/v1/containers/{name}/mode");
pub const SET_ABSTRACT_UNIX: Route = route(Put, "/v1/containers/{name}/abstract-unix");
pub const ADD_IP: Route = route(Post, "/v1/containers/{name}/ips");
pub const REMOVE_IP: Route = route(Delete, "/v1/containers/{name}/ips/{ip}");
pub const LIST_RULES: Route = route(Get, "/v1/policy");
pub const SET_RULE: Route = route(Post, "/v1/policy");
pub const EVENTS: Route = route(Get, "/v1/events");
pub const LIST_IFACES: Route = route(Get, "/v1/ifaces");
pub const ADD_IFACE: Route = route(Put, "/v1/ifaces/{name}");
pub const REMOVE_IFACE: Route = route(Delete, "/v1/ifaces/{name}");
pub const MOVE_IP: Route = route(Post, "/v1/ips/{ip}/move");
/// Prometheus metrics (text format); also served on `--metrics-addr`.
pub const METRICS: Route = route(Get, "/metrics");

/// Every route, for documentation and tests.
pub const ALL: [Route; 19] = [
    STATUS,
    ENABLE,
    DISABLE,
    LIST_CONTAINERS,
    ADD_CONTAINER,
    SHOW_CONTAINER,
    REMOVE_CONTAINER,
    SET_MODE,
    SET_ABSTRACT_UNIX,
    ADD_IP,
    REMOVE_IP,
    LIST_RULES,
    SET_RULE,
    EVENTS,
    LIST_IFACES,
    ADD_IFACE,
    REMOVE_IFACE,
    MOVE_IP,
    METRICS,
];

impl Route {
    /// The path with each `{...}` parameter replaced, in order, by `params` (percent-encoded,
    /// so a value can never add path segments). Panics when the counts differ: a bug.
    pub fn path(&self, params: &[&str]) -> String {
        let mut out = String::new();
        let mut rest = self.pattern;
        let mut params = params.iter();
        while let Some(start) = rest.find('{') {
            let end = rest[start..].find('}').expect("closed parameter") + start;
            out.push_str(&rest[..start]);
            encode(
                params.next().expect("a value for every parameter"),
                &mut out,
            );
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        assert!(params.next().is_none(), "more values than parameters");
        out
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (and ':', which IPv6
/// addresses need and paths allow).
fn encode(value: &str, out: &mut String) {
    use std::fmt::Write;
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_and_encode_parameters() {
        assert_eq!(STATUS.path(&[]), "/v1/status");
        assert_eq!(
            REMOVE_IP.path(&["web", "2001:db8::1"]),
            "/v1/containers/web/ips/2001:db8::1"
        );
        assert_eq!(ADD_IFACE.path(&["a/b?c"]), "/v1/ifaces/a%2Fb%3Fc");
    }

    #[test]
    fn each_method_and_pattern_is_unique() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
