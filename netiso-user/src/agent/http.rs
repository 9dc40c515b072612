//! The HTTP face of the service: the router built from `api::routes`, JSON in and out, and
//! the only place service errors become status codes.
use std::{
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    extract::{rejection::JsonRejection, Path, Query, State},
    handler::Handler,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{on, MethodFilter},
    Json, Router,
};

use super::{
    events::EventLog,
    service::{Service, ServiceError},
};
use crate::api::{
    routes::{self, Method, Route},
    AddContainer, AddIp, ContainerInfo, ErrorBody, EventsPage, IfaceInfo, PolicyRule, SetMode,
    Status,
};

/// What the handlers share: the service, and the event log the reader fills.
#[derive(Clone)]
pub struct Shared {
    pub service: Arc<Mutex<Service>>,
    pub events: Arc<Mutex<EventLog>>,
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
    let mut r = Router::new();
    r = serve(r, routes::STATUS, status);
    r = serve(r, routes::ENABLE, enable);
    r = serve(r, routes::DISABLE, disable);
    r = serve(r, routes::LIST_CONTAINERS, list);
    r = serve(r, routes::ADD_CONTAINER, add);
    r = serve(r, routes::SHOW_CONTAINER, show);
    r = serve(r, routes::REMOVE_CONTAINER, remove);
    r = serve(r, routes::SET_MODE, set_mode);
    r = serve(r, routes::ADD_IP, add_ip);
    r = serve(r, routes::REMOVE_IP, remove_ip);
    r = serve(r, routes::LIST_RULES, rules);
    r = serve(r, routes::SET_RULE, set_rule);
    r = serve(r, routes::EVENTS, events);
    r = serve(r, routes::LIST_IFACES, ifaces);
    r = serve(r, routes::ADD_IFACE, add_iface);
    r = serve(r, routes::REMOVE_IFACE, remove_iface);
    r.fallback(|| async {
        ApiError(
            StatusCode::NOT_FOUND,
            "no such API path; see /v1/status".into(),
        )
    })
    .with_state(shared)
}

/// Serves the API until SIGINT or SIGTERM; `on_shutdown` runs when one arrives.
pub async fn serve_on(
    listener: std::os::unix::net::UnixListener,
    shared: Shared,
    on_shutdown: fn(),
) -> anyhow::Result<()> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            on_shutdown();
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
    let names = s.service().names();
    let log = s
        .events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Json(EventsPage {
        events: log.after(q.after, &names),
        last: log.last(),
    })
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

async fn add(
    State(s): State<Shared>,
    b: Result<Json<AddContainer>, JsonRejection>,
) -> Result<(StatusCode, Json<ContainerInfo>), ApiError> {
    let req = body(b)?;
    let (c, created) = s.service().add_or_existing(req)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(c)))
}

async fn show(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<ContainerInfo> {
    Ok(Json(s.service().show(&name)?))
}

async fn remove(State(s): State<Shared>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    s.service().remove(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_mode(
    State(s): State<Shared>,
    Path(name): Path<String>,
    b: Result<Json<SetMode>, JsonRejection>,
) -> ApiResult<ContainerInfo> {
    let req = body(b)?;
    Ok(Json(s.service().set_mode(&name, req.mode)?))
}

async fn add_ip(
    State(s): State<Shared>,
    Path(name): Path<String>,
    b: Result<Json<AddIp>, JsonRejection>,
) -> ApiResult<ContainerInfo> {
    let req = body(b)?;
    Ok(Json(s.service().add_ip(&name, req.ip)?))
}

async fn remove_ip(
    State(s): State<Shared>,
    Path((name, ip)): Path<(String, String)>,
) -> ApiResult<ContainerInfo> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{ip:?} is not an IP address")))?;
    Ok(Json(s.service().remove_ip(&name, ip)?))
}

async fn ifaces(State(s): State<Shared>) -> Json<Vec<IfaceInfo>> {
    Json(s.service().ifaces())
}

async fn add_iface(State(s): State<Shared>, Path(name): Path<String>) -> ApiResult<IfaceInfo> {
    Ok(Json(s.service().add_iface(&name)?))
}

async fn remove_iface(
    State(s): State<Shared>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.service().remove_iface(&name)?;
    Ok(StatusCode::NO_CONTENT)
}
