//! Raw HTTP/1.1 over the agent's Unix socket, for tests that send what no well-behaved
//! client would: malformed requests, oversized heads, bodies that never come.
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// A parsed answer: status code, headers (lowercased names) and body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the body is JSON of the form `{"error": "..."}`.
    pub fn is_json_error(&self) -> bool {
        serde_json::from_str::<serde_json::Value>(&self.body).is_ok_and(|v| v["error"].is_string())
            && self
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
    }
}

/// Parses an HTTP/1.1 response (None when it is not one).
pub fn parse(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Sends `request` as is, reads until the agent closes the connection (or `timeout`), and
/// returns the raw bytes read (empty when the agent closed without answering).
pub fn exchange(socket: &Path, request: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // The agent may answer (and close) before it has read everything: ignore write errors.
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(out)
}

/// A complete request with a JSON body (or none).
pub fn request(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let body = body.unwrap_or("");
    format!(
        "{method} {path} HTTP/1.1\r\nhost: netiso\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends a well-formed request and parses the answer.
pub fn send(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Answer {
    let raw = exchange(
        socket,
        &request(method, path, body),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    parse(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {path}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}
