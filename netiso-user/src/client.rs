//! The typed client of the agent's API (HTTP/1.1 over its Unix socket, hyper on a private
//! tokio runtime). One method per route of `api::routes`; the CLI, the tests and the
//! benchmark talk to the agent only through it.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

use crate::api::{
    routes::{self, Method, Route},
    AddContainer, AddIp, ContainerInfo, ErrorBody, EventsPage, IfaceInfo, Mode, MoveIp, Moved,
    PolicyRule, SetAbstractUnix, SetMode, Status,
};

#[derive(Debug, Error)]
pub enum ClientError {
    // The io error is part of the message, not a source: printed with its causes (`{:#}`),
    // it would appear twice.
    #[error("cannot reach the netiso agent at {path}: {error}. Is `netiso agent` running? (set --socket or NETISO_SOCKET)")]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("talking to the agent at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error(
        "the netiso agent at {path} did not answer within {after:?}; is it stuck or overloaded?"
    )]
    Timeout { path: PathBuf, after: Duration },
    /// The agent refused the request; `message` is its explanation.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
}

pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    /// A deadline for each request (connect to answer); None waits as long as it takes.
    timeout: Option<Duration>,
}

type Result<T> = std::result::Result<T, ClientError>;

impl Client {
    pub fn new(socket: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Client {
            socket: socket.to_owned(),
            rt,
            timeout: None,
        }
    }

    /// Gives every request a deadline (for callers that must not hang, like an OCI hook).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = Some(timeout);
        self
    }

    pub fn status(&self) -> Result<Status> {
        self.call(routes::STATUS, &[], None::<&()>)
    }
    /// Turns enforcement on (true) or off (false) globally.
    pub fn set_enabled(&self, enabled: bool) -> Result<Status> {
        let route = if enabled {
            routes::ENABLE
        } else {
            routes::DISABLE
        };
        self.call(route, &[], None::<&()>)
    }
    pub fn containers(&self) -> Result<Vec<ContainerInfo>> {
        self.call(routes::LIST_CONTAINERS, &[], None::<&()>)
    }
    pub fn add_container(&self, req: &AddContainer) -> Result<ContainerInfo> {
        self.call(routes::ADD_CONTAINER, &[], Some(req))
    }
    /// Registers a batch of containers, all or none.
    pub fn add_containers(&self, reqs: &[AddContainer]) -> Result<Vec<ContainerInfo>> {
        self.call(routes::ADD_CONTAINER, &[], Some(&reqs))
    }
    pub fn container(&self, name: &str) -> Result<ContainerInfo> {
        self.call(routes::SHOW_CONTAINER, &[name], None::<&()>)
    }
    pub fn remove_container(&self, name: &str) -> Result<()> {
        self.send(routes::REMOVE_CONTAINER, &[name], None).map(drop)
    }
    pub fn set_mode(&self, name: &str, mode: Mode) -> Result<ContainerInfo> {
        self.call(routes::SET_MODE, &[name], Some(&SetMode { mode }))
    }
    pub fn set_abstract_unix(
        &self,
        name: &str,
        names: Option<Vec<String>>,
    ) -> Result<ContainerInfo> {
        self.call(
            routes::SET_ABSTRACT_UNIX,
            &[name],
            Some(&SetAbstractUnix { names }),
        )
    }
    pub fn add_ip(&self, name: &str, ip: IpAddr) -> Result<ContainerInfo> {
        self.call(routes::ADD_IP, &[name], Some(&AddIp { ip }))
    }
    pub fn remove_ip(&self, name: &str, ip: IpAddr) -> Result<ContainerInfo> {
        self.call(routes::REMOVE_IP, &[name, &ip.to_string()], None::<&()>)
    }
    /// Moves `ip` from container `from` to container `to` in one step.
    pub fn move_ip(&self, ip: IpAddr, from: &str, to: &str) -> Result<Moved> {
        let body = MoveIp {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        self.call(routes::MOVE_IP, &[&ip.to_string()], Some(&body))
    }
    /// The Prometheus metrics text.
    pub fn metrics(&self) -> Result<String> {
        let b = self.send(routes::METRICS, &[], None)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    pub fn rules(&self) -> Result<Vec<PolicyRule>> {
        self.call(routes::LIST_RULES, &[], None::<&()>)
    }
    pub fn set_rule(&self, rule: &PolicyRule) -> Result<Vec<PolicyRule>> {
        self.call(routes::SET_RULE, &[], Some(rule))
    }
    /// Events with a sequence number above `after`.
    pub fn events(&self, after: u64) -> Result<EventsPage> {
        let path = format!("{}?after={after}", routes::EVENTS.path(&[]));
        self.request(routes::EVENTS.method, &path, None)
            .and_then(|b| self.decode(&b))
    }
    pub fn ifaces(&self) -> Result<Vec<IfaceInfo>> {
        self.call(routes::LIST_IFACES, &[], None::<&()>)
    }
    pub fn add_iface(&self, name: &str) -> Result<IfaceInfo> {
        self.call(routes::ADD_IFACE, &[name], None::<&()>)
    }
    pub fn remove_iface(&self, name: &str) -> Result<()> {
        self.send(routes::REMOVE_IFACE, &[name], None).map(drop)
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        route: Route,
        params: &[&str],
        body: Option<&B>,
    ) -> Result<T> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request serializes"));
        let bytes = self.send(route, params, body)?;
        self.decode(&bytes)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.protocol(format!("unexpected response: {e}")))
    }

    fn protocol(&self, message: String) -> ClientError {
        ClientError::Protocol {
            path: self.socket.clone(),
            message,
        }
    }

    fn send(&self, route: Route, params: &[&str], body: Option<Vec<u8>>) -> Result<Bytes> {
        self.request(route.method, &route.path(params), body)
    }

    fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes> {
        let method = match method {
            Method::Get => hyper::Method::GET,
            Method::Post => hyper::Method::POST,
            Method::Put => hyper::Method::PUT,
            Method::Delete => hyper::Method::DELETE,
        };
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|error| ClientError::Connect {
                    path: self.socket.clone(),
                    error,
                })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.protocol(e.to_string()))?;
            tokio::spawn(conn);
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "netiso")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .expect("valid request");
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.protocol(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.protocol(e.to_string()))?
                .to_bytes();
            if status.is_success() {
                return Ok(bytes);
            }
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map_or_else(|_| format!("agent answered {status}"), |e| e.error);
            Err(ClientError::Api { status, message })
        };
        match self.timeout {
            None => self.rt.block_on(exchange),
            Some(after) => self
                .rt
                .block_on(async { tokio::time::timeout(after, exchange).await })
                .unwrap_or_else(|_| {
                    Err(ClientError::Timeout {
                        path: self.socket.clone(),
                        after,
                    })
                }),
        }
    }
}
