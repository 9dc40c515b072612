//! The HTTP API on the agent's Unix socket: JSON in and out, versioned under /v1.
use std::{
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    extract::{rejection::JsonRejection, Path, Query, State},
    http::StatusCode,
    routing::{delete, get, post, put},
    Json, Router,
};

use super::{service::Service, ApiError};
use crate::api::{
    AddContainer, AddIp, ContainerInfo, EventsPage, IfaceInfo, PolicyRule, SetMode, Status,
};

type Shared = Arc<Mutex<Service>>;
type ApiResult<T> = Result<Json<T>, ApiError>;

fn lock(s: &Shared) -> MutexGuard<'_, Service> {
    // A panicking handler leaves consistent data (every change is committed at its end).
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {}", e.body_text())))
}

pub fn router(service: Shared) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/enable", post(enable))
        .route("/v1/disable", post(disable))
        .route("/v1/containers", get(list).post(add))
        .route("/v1/containers/{name}", get(show).delete(remove))
        .route("/v1/containers/{name}/mode", put(set_mode))
        .route("/v1/containers/{name}/ips", post(add_ip))
        .route("/v1/containers/{name}/ips/{ip}", delete(remove_ip))
        .route("/v1/policy", get(rules).post(set_rule))
        .route("/v1/events", get(events))
        .route("/v1/ifaces", get(ifaces))
        .route("/v1/ifaces/{name}", put(add_iface).delete(remove_iface))
        .fallback(|| async { ApiError::not_found("no such API path; see /v1/status") })
        .with_state(service)
}

pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    service: Shared,
) -> anyhow::Result<()> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    axum::serve(listener, router(service))
        .with_graceful_shutdown(async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}

#[derive(serde::Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn events(State(s): State<Shared>, Query(q): Query<After>) -> Json<EventsPage> {
    Json(lock(&s).events_after(q.after))
}

async fn rules(State(s): State<Shared>) -> Json<Vec<PolicyRule>> {
    Json(lock(&s).rules())
}

async fn set_rule(
    State(s): State<Shared>,
    b: Result<Json<PolicyRule>, JsonRejection>,
) -> ApiResult<Vec<PolicyRule>> {
    let req = body(b)?;
    lock(&s).set_rule(req).map(Json)
}

async fn status(State(s): State<Shared>) -> Json<Status> {
    Json(lock(&s).status())
}

async fn enable(State(s): State<Shared>) -> ApiResult<Status> {
    lock(&s).set_enabled(true).map(Json)
}

async fn disable(State(s): State<Shared>) -> ApiResult<Status> {
    lock(&s).set_enabled(false).map(Json)
}

async fn list(State(s): State<Shared>) -> ApiResult<Vec<ContainerInfo>> {
    lock(&s).list().map(Json)
}

async fn add(
    State(s): State<Shared>,
    b: Result<Json<AddContainer>, JsonRejection>,
) -> Result<(StatusCode, Json<ContainerInfo>), ApiError> {
    let req = body(b)?;
    lock(&s).add(req).map(|c| (StatusCode::CREATED, Json(c)))
}

async fn show(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<ContainerInfo> {
    lock(&s).show(&name).map(Json)
}

async fn remove(State(s): State<Shared>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    lock(&s).remove(&name).map(|()| StatusCode::NO_CONTENT)
}

async fn set_mode(
    State(s): State<Shared>,
    Path(name): Path<String>,
    b: Result<Json<SetMode>, JsonRejection>,
) -> ApiResult<ContainerInfo> {
    let req = body(b)?;
    lock(&s).set_mode(&name, req.mode).map(Json)
}

async fn add_ip(
    State(s): State<Shared>,
    Path(name): Path<String>,
    b: Result<Json<AddIp>, JsonRejection>,
) -> ApiResult<ContainerInfo> {
    let req = body(b)?;
    lock(&s).add_ip(&name, req.ip).map(Json)
}

async fn remove_ip(
    State(s): State<Shared>,
    Path((name, ip)): Path<(String, String)>,
) -> ApiResult<ContainerInfo> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{ip:?} is not an IP address")))?;
    lock(&s).remove_ip(&name, ip).map(Json)
}

async fn ifaces(State(s): State<Shared>) -> Json<Vec<IfaceInfo>> {
    Json(lock(&s).ifaces())
}

async fn add_iface(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<IfaceInfo> {
    lock(&s).add_iface(&name).map(Json)
}

async fn remove_iface(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    lock(&s)
        .remove_iface(&name)
        .map(|()| StatusCode::NO_CONTENT)
}
