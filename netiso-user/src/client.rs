//! A small HTTP/1.1 client for the agent's Unix socket (hyper over tokio's UnixStream).
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

use crate::api::ErrorBody;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the netiso agent at {path}: {source}. Is `netiso agent` running? (set --socket or NETISO_SOCKET)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    /// The agent refused the request; `message` is its explanation.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
}

pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Client {
            socket: socket.to_owned(),
            rt,
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>)
    }
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body))
    }
    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::PUT, path, Some(body))
    }
    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.raw(Method::DELETE, path, None).map(|_| ())
    }
    pub fn delete_returning<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None::<&()>)
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request serializes"));
        let bytes = self.raw(method, path, body)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| self.protocol(format!("unexpected response: {e}")))
    }

    fn protocol(&self, message: String) -> ClientError {
        ClientError::Protocol {
            path: self.socket.clone(),
            message,
        }
    }

    fn raw(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes, ClientError> {
        self.rt.block_on(async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
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
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("agent answered {status}"));
            Err(ClientError::Api { status, message })
        })
    }
}
