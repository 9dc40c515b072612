//! The HTTP face of the service: the router built from `api::routes`, JSON in and out, and
//! the only place service errors become status codes. Also the server around it, bounded in
//! every direction so that no client, slow or malicious, can hold the agent:
//!
//! - who: on the Unix socket every connection's peer credentials (SO_PEERCRED, and
//!   SO_PEERGROUPS for supplementary groups) are checked: root, or a member of
//!   `--socket-group`; anyone else gets 403;
//! - how many: at most [`Limits::connections`] connections at once, more get 503;
//! - how long and how big: the request head must arrive within a timeout and fit a size
//!   limit (408 and 431), the body too (408 and 413); one request per connection;
//! - every error answer, the server's own included, is `{"error": "..."}`;
//! - on SIGTERM the agent stops accepting, lets requests in progress finish for a short
//!   grace period and then drops whatever is left, stalled clients included.
use std::{
    future::Future,
    net::IpAddr,
    os::fd::AsRawFd,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        Path, Query, Request, State,
    },
    handler::Handler,
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Json, Router,
};
use http_body_util::BodyExt;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use log::{debug, warn};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    sync::{watch, Semaphore},
    task::JoinSet,
};

use super::{
    events::EventLog,
    service::{Service, ServiceError},
};
use crate::api::{
    routes::{self, Method, Route},
    AddContainer, AddIp, ContainerInfo, ErrorBody, EventsPage, IfaceInfo, MoveIp, Moved,
    PolicyRule, SetAbstractUnix, SetMode, Status,
};

/// Bounds of the API server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// Time for the request head (request line and headers) to arrive.
    pub head_timeout: Duration,
    /// Size of the request head.
    pub head_bytes: usize,
    /// Time for the body to arrive once the head has.
    pub body_timeout: Duration,
    /// Size of a request body.
    pub body_bytes: usize,
    /// Containers in one batch registration.
    pub batch: usize,
    /// How long requests in progress may take to finish at shutdown.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 64,
            head_timeout: Duration::from_secs(5),
            head_bytes: 16 * 1024,
            body_timeout: Duration::from_secs(10),
            body_bytes: 4 * 1024 * 1024,
            batch: 10_000,
            grace: Duration::from_secs(2),
        }
    }
}

/// What the handlers share: the service, and the event log the reader fills.
#[derive(Clone)]
pub struct Shared {
    pub service: Arc<Mutex<Service>>,
    pub events: Arc<Mutex<EventLog>>,
    pub limits: Limits,
}

impl Shared {
    fn service(&self) -> MutexGuard<'_, Service> {
        // A panicking handler leaves consistent data (every change is committed at its end).
        self.service
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An error answer: a status code and `{"error": "..."}`.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad_request(m: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, m.into())
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let status = match e {
            ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            ServiceError::Datapath(_) | ServiceError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {}", e.body_text())))
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
}

fn filter(m: Method) -> MethodFilter {
    match m {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
        Method::Delete => MethodFilter::DELETE,
    }
}

/// Adds `route` to the router, served by `handler`.
fn serve<H, T>(router: Router<Shared>, route: Route, handler: H) -> Router<Shared>
where
    H: Handler<T, Shared>,
    T: 'static,
{
    router.route(route.pattern, on(filter(route.method), handler))
}

pub fn router(shared: Shared) -> Router {
    let limits = shared.limits;
    let mut r = Router::new();
    r = serve(r, routes::STATUS, status);
    r = serve(r, routes::ENABLE, enable);
    r = serve(r, routes::DISABLE, disable);
    r = serve(r, routes::LIST_CONTAINERS, list);
    r = serve(r, routes::ADD_CONTAINER, add);
    r = serve(r, routes::SHOW_CONTAINER, show);
    r = serve(r, routes::REMOVE_CONTAINER, remove);
    r = serve(r, routes::SET_MODE, set_mode);
    r = serve(r, routes::SET_ABSTRACT_UNIX, set_abstract_unix);
    r = serve(r, routes::ADD_IP, add_ip);
    r = serve(r, routes::REMOVE_IP, remove_ip);
    r = serve(r, routes::MOVE_IP, move_ip);
    r = serve(r, routes::LIST_RULES, rules);
    r = serve(r, routes::SET_RULE, set_rule);
    r = serve(r, routes::EVENTS, events);
    r = serve(r, routes::LIST_IFACES, ifaces);
    r = serve(r, routes::ADD_IFACE, add_iface);
    r = serve(r, routes::REMOVE_IFACE, remove_iface);
    r = serve(r, routes::METRICS, metrics);
    finish(r, limits).with_state(shared)
}

/// The router of `--metrics-addr`: only the metrics.
pub fn metrics_router(shared: Shared) -> Router {
    let limits = shared.limits;
    let r = serve(Router::new(), routes::METRICS, metrics);
    finish(r, limits).with_state(shared)
}

/// The fallbacks and layers every router gets: JSON 404 and 405, the body bounds, and JSON
/// for any error answer that is not JSON yet.
fn finish(r: Router<Shared>, limits: Limits) -> Router<Shared> {
    r.fallback(|| async {
        ApiError(
            StatusCode::NOT_FOUND,
            "no such API path; see /v1/status".into(),
        )
    })
    .method_not_allowed_fallback(|| async {
        ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this path (see the API list in the README)".into(),
        )
    })
    // The body is bounded (and read) by `bounded_body`; the extractors must not cut it
    // again at their own default.
    .layer(axum::extract::DefaultBodyLimit::max(limits.body_bytes))
    .layer(middleware::from_fn(move |req, next| {
        bounded_body(limits, req, next)
    }))
    .layer(middleware::map_response(jsonify))
}

/// Reads the whole body within the size and time limits before any handler runs.
async fn bounded_body(limits: Limits, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_big = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {} bytes", limits.body_bytes),
        )
        .into_response()
    };
    if declared.is_some_and(|n| n > limits.body_bytes as u64) {
        return too_big();
    }
    let read = http_body_util::Limited::new(body, limits.body_bytes).collect();
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Err(_) => {
            return ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} s",
                    limits.body_timeout.as_secs()
                ),
            )
            .into_response()
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_big(),
        Ok(Err(e)) => {
            return ApiError::bad_request(format!("reading the body: {e}")).into_response()
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Turns any error answer that is not JSON yet (from axum's extractors, say) into
/// `{"error": "..."}`, keeping its status and its text as the message.
async fn jsonify(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let json = serde_json::to_vec(&ErrorBody { error: message }).expect("serializes");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json))
}

/// Who may use the API socket: root, and members of one group.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    pub group: Option<u32>,
}

/// The peer of a Unix connection: (pid, uid, gid) and its supplementary groups.
fn peer(stream: &tokio::net::UnixStream) -> std::io::Result<(i32, u32, u32, Vec<u32>)> {
    let fd = stream.as_raw_fd();
    let cred = nix::sys::socket::getsockopt(
        &std::os::fd::AsFd::as_fd(stream),
        nix::sys::socket::sockopt::PeerCredentials,
    )?;
    // SO_PEERGROUPS: the peer's supplementary groups when it connected.
    let mut groups = vec![0u32; 256];
    let mut len = (groups.len() * 4) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the buffer we own.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    groups.truncate(if rc == 0 { len as usize / 4 } else { 0 });
    Ok((cred.pid(), cred.uid(), cred.gid(), groups))
}

impl Access {
    /// None when `stream`'s peer may use the API, else why not.
    fn check(self, stream: &tokio::net::UnixStream) -> Option<String> {
        let (pid, uid, gid, groups) = match peer(stream) {
            Ok(p) => p,
            Err(e) => return Some(format!("cannot read the peer's credentials: {e}")),
        };
        if uid == 0 {
            return None;
        }
        if let Some(g) = self.group {
            if gid == g || groups.contains(&g) {
                return None;
            }
            return Some(format!(
                "permission denied: the netiso API admits root and members of group {g} (--socket-group); this process (pid {pid}, uid {uid}, gid {gid}) is neither"
            ));
        }
        Some(format!(
            "permission denied: the netiso API admits root only (see --socket-group); this process is pid {pid}, uid {uid}"
        ))
    }
}

/// Writes a complete JSON error answer on a connection hyper never saw, then closes it.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, status: StatusCode, message: &str) {
    let body = serde_json::to_vec(&ErrorBody {
        error: message.to_owned(),
    })
    .expect("serializes");
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Why a request head could not be read.
enum HeadError {
    /// Closed before sending anything.
    Closed,
    /// Closed (or failed) part way through the head.
    Incomplete,
    TooLarge,
    Timeout,
}

/// Reads the request head (up to the blank line) within the limits.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S, limits: Limits) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) if buf.is_empty() => return Err(HeadError::Closed),
                Ok(0) | Err(_) => return Err(HeadError::Incomplete),
                Ok(n) => n,
            };
            let from = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if buf[from..].windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(());
            }
            if buf.len() > limits.head_bytes {
                return Err(HeadError::TooLarge);
            }
        }
    };
    match tokio::time::timeout(limits.head_timeout, read).await {
        Err(_) => Err(HeadError::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => {
            // The head may end before what was read does (the body's start).
            let end = buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(buf.len(), |p| p + 4);
            if end > limits.head_bytes {
                return Err(HeadError::TooLarge);
            }
            Ok(buf)
        }
    }
}

/// What is wrong with a request head hyper would refuse, if anything: a head that does not
/// parse, too many headers, a body length that is not one number, a transfer coding other
/// than chunked.
fn check_head(head: &[u8]) -> Option<(StatusCode, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Some((StatusCode::BAD_REQUEST, "incomplete request head".into()))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Some((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "more than 64 header fields".into(),
            ))
        }
        Err(e) => return Some((StatusCode::BAD_REQUEST, format!("malformed request: {e}"))),
    }
    if req
        .path
        .is_some_and(|p| p.parse::<axum::http::Uri>().is_err())
    {
        return Some((StatusCode::BAD_REQUEST, "malformed request target".into()));
    }
    if req.version != Some(1) && req.version != Some(0) {
        return Some((StatusCode::BAD_REQUEST, "use HTTP/1.1".into()));
    }
    let mut length: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = h.value.trim_ascii();
            let number = !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit);
            if !number || length.is_some_and(|l| l != v) {
                return Some((StatusCode::BAD_REQUEST, "invalid content-length".into()));
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked")
        {
            return Some((
                StatusCode::BAD_REQUEST,
                "only the chunked transfer coding is supported".into(),
            ));
        }
    }
    None
}

/// A stream with bytes already read from it put back in front.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one connection: the head within its bounds, then one request through `app`.
async fn connection<S>(
    mut stream: S,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = tokio::select! {
        h = read_head(&mut stream, limits) => h,
        _ = shutdown.changed() => return,
    };
    let head = match head {
        Ok(h) => h,
        Err(HeadError::Closed) => return,
        Err(HeadError::Incomplete) => {
            return refuse(
                &mut stream,
                StatusCode::BAD_REQUEST,
                "incomplete request head",
            )
            .await;
        }
        Err(HeadError::TooLarge) => {
            let m = format!("request head larger than {} bytes", limits.head_bytes);
            return refuse(&mut stream, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &m).await;
        }
        Err(HeadError::Timeout) => {
            let m = format!(
                "request head not received within {} s",
                limits.head_timeout.as_secs()
            );
            return refuse(&mut stream, StatusCode::REQUEST_TIMEOUT, &m).await;
        }
    };
    // hyper would answer a head it cannot use with a bare status line; check it here first so
    // that those answers are JSON too.
    if let Some((status, why)) = check_head(&head) {
        return refuse(&mut stream, status, &why).await;
    }
    let io = TokioIo::new(Prefixed {
        prefix: head,
        at: 0,
        inner: stream,
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        // A client may shut its sending side once the request is out and wait for the
        // answer; without this hyper would take that for an abort and answer nothing.
        .half_close(true)
        .max_buf_size(limits.head_bytes.max(8192) * 2)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!("API connection: {e}");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Accepts connections until `shutdown`, then gives those in progress `limits.grace` to end.
async fn accept_loop<L, S, F>(
    mut accept: L,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    L: FnMut() -> F,
    F: Future<Output = std::io::Result<(S, Option<String>)>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = accept() => a,
            _ = shutdown.changed() => break,
        };
        while tasks.try_join_next().is_some() {}
        let (mut stream, denied) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!("accepting an API connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tasks.spawn(async move {
                let m = format!(
                    "too many connections (at most {}); retry",
                    limits.connections
                );
                refuse(&mut stream, StatusCode::SERVICE_UNAVAILABLE, &m).await;
            });
            continue;
        };
        let app = app.clone();
        let rx = shutdown.clone();
        tasks.spawn(async move {
            if let Some(why) = denied {
                // Read the request first, so the client gets the answer, not a reset.
                let _ = read_head(&mut stream, limits).await;
                refuse(&mut stream, StatusCode::FORBIDDEN, &why).await;
            } else {
                connection(stream, app, limits, rx).await;
            }
            drop(slot);
        });
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.grace, drain).await.is_err() {
        tasks.abort_all();
    }
}

/// Serves the API on the Unix socket until `shutdown`.
pub async fn serve_unix(
    listener: std::os::unix::net::UnixListener,
    shared: Shared,
    access: Access,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let limits = shared.limits;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let app = router(shared);
    accept_loop(
        || async {
            let (s, _) = listener.accept().await?;
            let denied = access.check(&s);
            if let Some(why) = &denied {
                warn!("API: refused a connection: {why}");
            }
            Ok((s, denied))
        },
        app,
        limits,
        shutdown,
    )
    .await;
    Ok(())
}

/// Serves the metrics on a TCP listener until `shutdown`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) {
    let limits = shared.limits;
    let app = metrics_router(shared);
    accept_loop(
        || async {
            let (s, _) = listener.accept().await?;
            Ok((s, None))
        },
        app,
        limits,
        shutdown,
    )
    .await;
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn events(
    State(s): State<Shared>,
    q: Result<Query<After>, QueryRejection>,
) -> ApiResult<EventsPage> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let names = s.service().names();
    let log = s
        .events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(Json(EventsPage {
        events: log.after(q.after, &names),
        last: log.last(),
    }))
}

async fn metrics(State(s): State<Shared>) -> Response {
    let text = super::metrics::render(&mut s.service());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn rules(State(s): State<Shared>) -> Json<Vec<PolicyRule>> {
    Json(s.service().rules())
}

async fn set_rule(
    State(s): State<Shared>,
    b: Result<Json<PolicyRule>, JsonRejection>,
) -> ApiResult<Vec<PolicyRule>> {
    let req = body(b)?;
    Ok(Json(s.service().set_rule(req)?))
}

async fn status(State(s): State<Shared>) -> Json<Status> {
    Json(s.service().status())
}

async fn enable(State(s): State<Shared>) -> ApiResult<Status> {
    Ok(Json(s.service().set_enabled(true)?))
}

async fn disable(State(s): State<Shared>) -> ApiResult<Status> {
    Ok(Json(s.service().set_enabled(false)?))
}

async fn list(State(s): State<Shared>) -> ApiResult<Vec<ContainerInfo>> {
    Ok(Json(s.service().list()?))
}

/// One container (an object) or a batch (an array of them).
async fn add(State(s): State<Shared>, raw: Bytes) -> Result<Response, ApiError> {
    let batch = raw
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[');
    let invalid =
        |e: serde_json::Error| ApiError::bad_request(format!("invalid request body: {e}"));
    if batch {
        let reqs: Vec<AddContainer> = serde_json::from_slice(&raw).map_err(invalid)?;
        if reqs.len() > s.limits.batch {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a batch holds at most {} containers; this one has {}",
                    s.limits.batch,
                    reqs.len()
                ),
            ));
        }
        let added = s.service().add_batch(reqs)?;
        return Ok((StatusCode::CREATED, Json(added)).into_response());
    }
    let req: AddContainer = serde_json::from_slice(&raw).map_err(invalid)?;
    let (c, created) = s.service().add_or_existing(req)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(c)).into_response())
}

async fn show(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<ContainerInfo> {
    let name = path(name)?;
    Ok(Json(s.service().show(&name)?))
}

async fn remove(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = path(name)?;
    s.service().remove(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_mode(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
    b: Result<Json<SetMode>, JsonRejection>,
) -> ApiResult<ContainerInfo> {
    let name = path(name)?;
    let req = body(b)?;
    Ok(Json(s.service().set_mode(&name, req.mode)?))
}

async fn set_abstract_unix(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
    b: Result<Json<SetAbstractUnix>, JsonRejection>,
) -> ApiResult<ContainerInfo> {
    let name = path(name)?;
    let req = body(b)?;
    Ok(Json(s.service().set_abstract_unix(&name, req.names)?))
}

async fn add_ip(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
    b: Result<Json<AddIp>, JsonRejection>,
) -> ApiResult<ContainerInfo> {
    let name = path(name)?;
    let req = body(b)?;
    Ok(Json(s.service().add_ip(&name, req.ip)?))
}

fn parse_ip(ip: &str) -> Result<IpAddr, ApiError> {
    ip.parse()
        .map_err(|_| ApiError::bad_request(format!("{ip:?} is not an IP address")))
}

async fn remove_ip(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<ContainerInfo> {
    let (name, ip) = path(p)?;
    let ip = parse_ip(&ip)?;
    Ok(Json(s.service().remove_ip(&name, ip)?))
}

async fn move_ip(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Json<MoveIp>, JsonRejection>,
) -> ApiResult<Moved> {
    let ip = parse_ip(&path(p)?)?;
    let req = body(b)?;
    let (from, to) = s.service().move_ip(ip, &req.from, &req.to)?;
    Ok(Json(Moved { ip, from, to }))
}

async fn ifaces(State(s): State<Shared>) -> Json<Vec<IfaceInfo>> {
    Json(s.service().ifaces())
}

async fn add_iface(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<IfaceInfo> {
    let name = path(name)?;
    Ok(Json(s.service().add_iface(&name)?))
}

async fn remove_iface(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = path(name)?;
    s.service().remove_iface(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
