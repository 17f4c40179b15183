//! The webhook request path: route, limit, read, verify, build the record, publish, answer.
//!
//! [`handle`] routes a request to its endpoint; the endpoint's request goes through named
//! steps, each of which may answer it early: [`admit`] (method, concurrency, declared
//! length), [`authenticate`] (headers, then the body read and verified, in [`verify`]),
//! the rate limit, [`record::parse_json`], [`reserve`] (dedup), [`record::build`], and the
//! hand-over to Danube in [`deliver`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::Response;
use danube_connect_core::failure::FailureHandler;
use danube_connect_core::Health;
use danube_connect_core::Publisher;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;
use tracing::debug;

use self::record::Incoming;
use self::respond::{error, status_response};
use crate::admin::AdminApi;
use crate::config::{AckMode, AllowedMethod};
use crate::dedup::{Reservation, Reserve};
use crate::endpoint::Endpoint;
use crate::registry::Registry;
use crate::signature::Verified;
use crate::template::PathParams;

mod deliver;
mod metrics;
mod record;
mod respond;
mod verify;

pub use self::deliver::{BufferSlot, Buffered};
pub use self::metrics::{EndpointMetrics, HttpMetrics};
pub use self::respond::publish_failure;
pub(crate) use self::respond::retry_after;

/// The longest delivery id (dedup) accepted; longer → 400.
pub const MAX_DELIVERY_ID_BYTES: usize = 256;

/// Everything a request handler needs.
pub struct App {
    /// Configured endpoints, in order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Dynamic endpoints, when the admin API is on.
    pub registry: Option<Arc<Registry>>,
    /// The acknowledged publish handle.
    pub publisher: Publisher,
    /// `failure.policy` for records Danube refuses.
    pub failures: FailureHandler,
    /// Readiness (broker reachability).
    pub health: Health,
    /// Bounds requests handled at once.
    pub concurrency: Arc<Semaphore>,
    /// The in-memory buffer of `accepted` endpoints.
    pub buffer: mpsc::Sender<Buffered>,
    /// One permit per record accepted and not yet acked by Danube (`accepted_buffer` in all).
    pub buffer_slots: Arc<Semaphore>,
    /// One permit per byte of those records (`accepted_buffer_bytes` in all).
    pub buffer_bytes: Arc<Semaphore>,
    /// Verifications of large bodies running on the blocking pool at once.
    pub verify_slots: Arc<Semaphore>,
    /// Whole-request deadline.
    pub request_timeout: Duration,
    /// `Retry-After` for 503 answers.
    pub retry_after: Duration,
    /// Metrics.
    pub metrics: HttpMetrics,
}

impl App {
    fn route(&self, path: &str) -> Option<(Arc<Endpoint>, PathParams)> {
        if let Some(id) = path.strip_prefix("/e/") {
            return self.registry.as_ref()?.get(id).map(|e| (e, Vec::new()));
        }
        self.endpoints.iter().find_map(|e| e.path.matches(path).map(|params| (e.clone(), params)))
    }
}

/// One connection's service on the webhook listener: admin routes (when the admin API
/// shares this listener) go to the admin API, every other request to [`handle`]. Webhook
/// requests skip a router: one endpoint list is matched once.
#[derive(Clone)]
pub struct WebhookService {
    app: Arc<App>,
    admin: Option<AdminApi>,
    remote: SocketAddr,
}

impl WebhookService {
    /// The service of a connection from `remote`; `admin` when the admin API shares the
    /// webhook listener.
    pub fn new(app: Arc<App>, admin: Option<AdminApi>, remote: SocketAddr) -> Self {
        Self { app, admin, remote }
    }
}

impl Service<Request> for WebhookService {
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if let Some(admin) = self.admin.as_ref().filter(|admin| admin.serves(request.uri().path())) {
            let (admin, app, remote) = (admin.clone(), self.app.clone(), self.remote);
            return Box::pin(async move { Ok(admin.handle(&app, remote, request).await) });
        }
        let (app, remote) = (self.app.clone(), self.remote);
        Box::pin(async move { Ok(handle(&app, remote, request).await) })
    }
}

/// Answers a request that is not for the admin API.
pub async fn handle(app: &App, remote: SocketAddr, request: Request) -> Response {
    let started = Instant::now();
    let Some((endpoint, params)) = app.route(request.uri().path()) else {
        let response = error(StatusCode::NOT_FOUND, "no endpoint at this path");
        app.metrics.observe_unmatched(response.status(), started);
        return response;
    };
    let response = handle_endpoint(app, &endpoint, params, remote, request, started).await;
    app.metrics.observe(&endpoint, response.status(), started);
    response
}

/// A step's early answer: the request is answered without going further (boxed: the
/// `Ok` path stays small).
pub(super) type Answered = Box<Response>;

async fn handle_endpoint(
    app: &App,
    endpoint: &Endpoint,
    params: PathParams,
    remote: SocketAddr,
    request: Request,
    started: Instant,
) -> Response {
    match receive(app, endpoint, params, remote, request, started).await {
        Ok(response) => response,
        Err(response) => *response,
    }
}

/// The endpoint's request, step by step.
async fn receive(
    app: &App,
    endpoint: &Endpoint,
    params: PathParams,
    remote: SocketAddr,
    request: Request,
    started: Instant,
) -> Result<Response, Answered> {
    let permit = admit(app, endpoint, &request)?;
    let deadline = started + app.request_timeout;
    let (parts, body) = request.into_parts();
    let incoming = Incoming { parts, params, remote, received_at: SystemTime::now() };
    let (body, verified) = authenticate(app, endpoint, &incoming, body, deadline).await?;
    // After verification: requests that fail it cannot drain a legitimate sender's tokens.
    if let Err(wait) = endpoint.check_rate() {
        return Err(retry_after(StatusCode::TOO_MANY_REQUESTS, wait, "rate limit exceeded").into());
    }
    let json = record::parse_json(endpoint, &body)?;
    let delivery_id = record::delivery_id(endpoint, &incoming.parts.headers, json.as_ref(), &verified);
    let reservation = reserve(app, endpoint, delivery_id.as_deref())?;
    let record = record::build(endpoint, &incoming, body, delivery_id.as_ref(), &verified, json.as_ref())?;
    if !app.health.broker_reachable() {
        return Err(retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "danube is unreachable").into());
    }
    Ok(match endpoint.ack {
        AckMode::Accepted => deliver::accept(app, record, reservation),
        AckMode::Durable => deliver::publish(app, endpoint, record, reservation, permit, deadline).await,
    })
}

/// Refuses a request before anything is read: a method the endpoint does not take (405),
/// too many requests at once (503), a declared body over `max_body` (413). The permit
/// returned bounds the requests handled at once.
fn admit(app: &App, endpoint: &Endpoint, request: &Request) -> Result<OwnedSemaphorePermit, Answered> {
    let method = match *request.method() {
        Method::POST => Some(AllowedMethod::Post),
        Method::PUT => Some(AllowedMethod::Put),
        _ => None,
    };
    if !method.is_some_and(|m| endpoint.methods.contains(&m)) {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response.headers_mut().insert(header::ALLOW, endpoint.allow.clone());
        return Err(response.into());
    }
    let Ok(permit) = app.concurrency.clone().try_acquire_owned() else {
        return Err(
            retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "too many concurrent requests").into()
        );
    };
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > endpoint.max_body as u64) {
        return Err(
            error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {} bytes", endpoint.max_body)).into()
        );
    }
    Ok(permit)
}

/// Checks the signature headers, then reads the body and checks it against them (401 when
/// either fails). Headers first: a malformed, over-long or unauthenticated (token) request
/// is refused before its body is read.
async fn authenticate(
    app: &App,
    endpoint: &Endpoint,
    incoming: &Incoming,
    body: Body,
    deadline: Instant,
) -> Result<(bytes::Bytes, Verified), Answered> {
    let remote = incoming.remote;
    let checked = match &endpoint.verifier {
        Some(verifier) => match verifier.check_headers(&incoming.parts.headers, incoming.received_at) {
            Ok(checked) => Some((verifier.clone(), checked)),
            Err(e) => {
                debug!(endpoint = %endpoint.id, %remote, error = %e, "verification failed");
                return Err(error(StatusCode::UNAUTHORIZED, e).into());
            }
        },
        None => None,
    };
    let body = verify::read_body(body, endpoint.max_body, deadline).await?;
    let verified = match checked {
        Some((verifier, checked)) => match verify::verify_body(app, verifier, checked, &body, deadline).await {
            Ok(verified) => verified,
            Err(response) => {
                debug!(endpoint = %endpoint.id, %remote, status = %response.status(), "verification failed");
                return Err(response.into());
            }
        },
        None => Default::default(),
    };
    Ok((body, verified))
}

/// Reserves the delivery id with the endpoint's dedup memory: a delivery already published
/// is answered 200 `duplicate`, one being published 409. The reservation is held until the
/// client is answered 2xx (then remembered) or dropped with this request (then released,
/// so the sender's retry is published).
fn reserve(app: &App, endpoint: &Endpoint, delivery_id: Option<&str>) -> Result<Option<Reservation>, Answered> {
    if delivery_id.is_some_and(|id| id.len() > MAX_DELIVERY_ID_BYTES) {
        return Err(
            error(StatusCode::BAD_REQUEST, format!("delivery id longer than {MAX_DELIVERY_ID_BYTES} bytes")).into()
        );
    }
    match (&endpoint.dedup, delivery_id) {
        (Some(dedup), Some(id)) => match dedup.memory.reserve(id, Instant::now()) {
            Reserve::Reserved(reservation) => Ok(Some(reservation)),
            Reserve::Duplicate => Err(status_response(StatusCode::OK, r#"{"status":"duplicate"}"#).into()),
            Reserve::InFlight => Err(retry_after(
                StatusCode::CONFLICT,
                app.retry_after,
                "a delivery with this id is being published; retry later",
            )
            .into()),
        },
        _ => Ok(None),
    }
}
