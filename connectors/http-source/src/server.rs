//! The webhook request path: route, limit, read, verify, build the record, publish, answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Query, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use danube_connect_core::failure::{Delivery, FailureHandler, Handback, Undeliverable};
use danube_connect_core::health::Health;
use danube_connect_core::publisher::PublishFailure;
use danube_connect_core::trace_context;
use danube_connect_core::{PendingPublish, PublishError, Publisher, SourceRecord};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tower_service::Service;
use tracing::{debug, warn};

use crate::admin::AdminApi;
use crate::config::{AckMode, AllowedMethod};
use crate::dedup::{Reservation, Reserve};
use crate::endpoint::{Endpoint, RoutingKey};
use crate::registry::Registry;
use crate::signature::{Checked, Verified, Verifier, VerifyError};
use crate::template::PathParams;

/// The HTTP source's own metrics (labels bounded: endpoint id or `dynamic`, status code).
#[derive(Clone)]
pub struct HttpMetrics {
    connector: String,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers the metrics in the runtime's registry.
    pub fn new(metrics: &danube_connect_core::metrics::Metrics) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("http_source_requests_total", "Webhook requests by endpoint and status."),
            &["connector", "endpoint", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("http_source_request_duration_seconds", "Webhook request duration.")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["connector", "endpoint"],
        )?;
        metrics.registry().register(Box::new(requests.clone()))?;
        metrics.registry().register(Box::new(duration.clone()))?;
        Ok(Self { connector: metrics.connector().to_string(), requests, duration })
    }

    /// Counts a request no endpoint matched.
    fn observe_unmatched(&self, status: StatusCode, started: Instant) {
        self.requests.with_label_values(&[&self.connector, "unmatched", status.as_str()]).inc();
        self.duration.with_label_values(&[&self.connector, "unmatched"]).observe(started.elapsed().as_secs_f64());
    }

    /// Counts a request of `endpoint`. The endpoint's duration histogram and success counter
    /// are looked up once and kept on the endpoint; other statuses are looked up per request.
    fn observe(&self, endpoint: &Endpoint, status: StatusCode, started: Instant) {
        let handles = endpoint.metrics.get_or_init(|| EndpointMetrics {
            success_status: endpoint.success,
            success: self.requests.with_label_values(&[
                &self.connector,
                &endpoint.metric_label,
                endpoint.success.as_str(),
            ]),
            duration: self.duration.with_label_values(&[&self.connector, &endpoint.metric_label]),
        });
        if status == handles.success_status {
            handles.success.inc();
        } else {
            self.requests.with_label_values(&[&self.connector, &endpoint.metric_label, status.as_str()]).inc();
        }
        handles.duration.observe(started.elapsed().as_secs_f64());
    }
}

/// One endpoint's metric handles, resolved at its first request.
#[derive(Debug)]
pub struct EndpointMetrics {
    success_status: StatusCode,
    success: IntCounter,
    duration: Histogram,
}

/// A record of an `accepted` endpoint with its buffer slot, released once Danube acked it
/// (or it was dead-lettered).
pub type Buffered = (SourceRecord, BufferSlot);

/// A place in the `accepted` buffer: one of `accepted_buffer` records and the record's
/// bytes of `accepted_buffer_bytes`; both are given back on drop.
#[derive(Debug)]
pub struct BufferSlot {
    _record: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// Bodies up to this size are verified on the request's task (microseconds); larger ones
/// on the blocking pool, a bounded number at once, so hashing megabytes never holds a
/// worker that other requests (and `/healthz`) need.
const INLINE_VERIFY_BYTES: usize = 64 * 1024;

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

/// A fixed status answer (`{"status":"..."}`), built without serializing per request.
fn status_response(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json_response(status, serde_json::json!({ "error": message.to_string() }))
}

pub(crate) fn retry_after(status: StatusCode, wait: Duration, message: impl std::fmt::Display) -> Response {
    let mut response = error(status, message);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
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

async fn handle_endpoint(
    app: &App,
    endpoint: &Endpoint,
    params: PathParams,
    remote: SocketAddr,
    request: Request,
    started: Instant,
) -> Response {
    let method = match *request.method() {
        Method::POST => Some(AllowedMethod::Post),
        Method::PUT => Some(AllowedMethod::Put),
        _ => None,
    };
    if !method.is_some_and(|m| endpoint.methods.contains(&m)) {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response.headers_mut().insert(header::ALLOW, endpoint.allow.clone());
        return response;
    }
    let Ok(permit) = app.concurrency.clone().try_acquire_owned() else {
        return retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "too many concurrent requests");
    };
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > endpoint.max_body as u64) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {} bytes", endpoint.max_body));
    }
    let deadline = started + app.request_timeout;
    let (parts, body) = request.into_parts();
    let received_at = SystemTime::now();
    // Headers first: a malformed, over-long or unauthenticated (token) request is refused
    // before its body is read.
    let checked = match &endpoint.verifier {
        Some(verifier) => match verifier.check_headers(&parts.headers, received_at) {
            Ok(checked) => Some((verifier.clone(), checked)),
            Err(e) => {
                debug!(endpoint = %endpoint.id, %remote, error = %e, "verification failed");
                return error(StatusCode::UNAUTHORIZED, e);
            }
        },
        None => None,
    };
    let body = match read_body(body, endpoint.max_body, deadline).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let verified = match checked {
        Some((verifier, checked)) => match verify_body(app, verifier, checked, &body, deadline).await {
            Ok(verified) => verified,
            Err(response) => {
                debug!(endpoint = %endpoint.id, %remote, status = %response.status(), "verification failed");
                return response;
            }
        },
        None => Default::default(),
    };
    // After verification: requests that fail it cannot drain a legitimate sender's tokens.
    if let Err(wait) = endpoint.check_rate() {
        return retry_after(StatusCode::TOO_MANY_REQUESTS, wait, "rate limit exceeded");
    }
    let needs_json = endpoint.validate_json
        || matches!(endpoint.routing_key, Some(RoutingKey::JsonPointer(_)))
        || endpoint.dedup.as_ref().is_some_and(|d| d.id_pointer.is_some());
    let json: Option<serde_json::Value> = if needs_json {
        match serde_json::from_slice(&body) {
            Ok(value) => Some(value),
            Err(e) if endpoint.validate_json => {
                return error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}"))
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let delivery_id = endpoint.dedup.as_ref().and_then(|d| {
        if let Some(header) = &d.id_header {
            return header_text(&parts.headers, header.as_str());
        }
        if let Some(pointer) = &d.id_pointer {
            return json.as_ref().and_then(|j| j.pointer(pointer)).map(json_text);
        }
        verified.delivery_id.clone()
    });
    // Held until the client is answered 2xx (then remembered) or dropped with this
    // request (then released, so the sender's retry is published).
    if delivery_id.as_ref().is_some_and(|id| id.len() > MAX_DELIVERY_ID_BYTES) {
        return error(StatusCode::BAD_REQUEST, format!("delivery id longer than {MAX_DELIVERY_ID_BYTES} bytes"));
    }
    let reservation = match (&endpoint.dedup, &delivery_id) {
        (Some(dedup), Some(id)) => match dedup.memory.reserve(id, Instant::now()) {
            Reserve::Reserved(reservation) => Some(reservation),
            Reserve::Duplicate => return status_response(StatusCode::OK, r#"{"status":"duplicate"}"#),
            Reserve::InFlight => {
                return retry_after(
                    StatusCode::CONFLICT,
                    app.retry_after,
                    "a delivery with this id is being published; retry later",
                )
            }
        },
        _ => None,
    };
    let topic = match endpoint.topic.render(&params, &parts.headers) {
        Ok(topic) => topic,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = endpoint.admit_topic(&topic) {
        debug!(endpoint = %endpoint.id, %topic, "topic refused: endpoint at max_topics");
        return error(StatusCode::BAD_REQUEST, e);
    }
    let mut record = SourceRecord::new(topic, body);
    // The fixed attributes below, then the path, header and query ones: one allocation.
    record.attributes.reserve(9 + params.len() + endpoint.headers.len() + endpoint.query.len());
    record = record
        .with_attribute("http.method", parts.method.as_str())
        .with_attribute("http.path", endpoint.record_path(parts.uri.path()))
        .with_attribute("http.remote_addr", display_text(remote, 48))
        .with_attribute("http.received_at", display_text(humantime::format_rfc3339_millis(received_at), 24))
        .with_attribute("http.endpoint", endpoint.id.as_str())
        .with_attribute("http.verification", endpoint.scheme_name());
    if let Some(content_type) = header_text(&parts.headers, header::CONTENT_TYPE.as_str()) {
        record = record
            .with_attribute("content-type", content_type.clone())
            .with_attribute("http.content_type", content_type);
    }
    if let Some(id) = verified.delivery_id.as_ref().or(delivery_id.as_ref()) {
        record = record.with_attribute("http.delivery_id", id.as_str());
    }
    for (name, value) in &params {
        record = record.with_attribute(format!("http.path.{name}"), value.as_str());
    }
    // W3C trace context, so the request can be followed to the sink that delivers it.
    trace_context::copy_into_attributes(&parts.headers, &mut record.attributes);
    for name in &endpoint.headers {
        if let Some(value) = header_text(&parts.headers, name.as_str()) {
            record = record.with_attribute(format!("http.header.{name}"), value);
        }
    }
    if !endpoint.query.is_empty() {
        if let Ok(Query(query)) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri) {
            for name in &endpoint.query {
                if let Some(value) = query.get(name) {
                    record = record.with_attribute(format!("http.query.{name}"), value.as_str());
                }
            }
        }
    }
    match &endpoint.routing_key {
        Some(RoutingKey::Header(name)) => {
            if let Some(key) = header_text(&parts.headers, name.as_str()) {
                record = record.with_key(key);
            }
        }
        Some(RoutingKey::JsonPointer(pointer)) => {
            if let Some(key) = json.as_ref().and_then(|j| j.pointer(pointer)).map(json_text) {
                record = record.with_key(key);
            }
        }
        None => {}
    }
    if !app.health.broker_reachable() {
        return retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "danube is unreachable");
    }
    match endpoint.ack {
        AckMode::Accepted => {
            let Ok(record_slot) = app.buffer_slots.clone().try_acquire_owned() else {
                return retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "buffer full");
            };
            let size = u32::try_from(record_size(&record)).unwrap_or(u32::MAX);
            let Ok(bytes_slot) = app.buffer_bytes.clone().try_acquire_many_owned(size) else {
                return retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "buffer full (bytes)");
            };
            let slot = BufferSlot { _record: record_slot, _bytes: bytes_slot };
            // The channel has as many places as there are slots: it cannot be full here.
            match app.buffer.try_send((record, slot)) {
                Ok(()) => {
                    if let Some(reservation) = reservation {
                        reservation.confirm(Instant::now());
                    }
                    status_response(StatusCode::ACCEPTED, r#"{"status":"accepted"}"#)
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "buffer full")
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "shutting down")
                }
            }
        }
        AckMode::Durable => {
            let deadline = tokio::time::Instant::from_std(deadline);
            let pending = match tokio::time::timeout_at(deadline, app.publisher.submit_or_return(record)).await {
                Ok(Ok(pending)) => pending,
                Ok(Err(failure)) => return undelivered(app, failure, deadline).await,
                // Not queued: the record is not published, the client may send it again.
                Err(_) => {
                    return retry_after(
                        StatusCode::SERVICE_UNAVAILABLE,
                        app.retry_after,
                        "timed out waiting for danube",
                    )
                }
            };
            let mut in_flight = InFlight { pending: Some(pending), reservation, permit: Some(permit) };
            match tokio::time::timeout_at(deadline, in_flight.outcome()).await {
                Ok(Ok(())) => status_response(endpoint.success, r#"{"status":"published"}"#),
                Ok(Err(failure)) => {
                    warn!(endpoint = %endpoint.id, error = %danube_connect_core::error::error_chain(&failure.error), "record not published");
                    undelivered(app, failure, deadline).await
                }
                Err(_) => retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "timed out waiting for danube"),
            }
        }
    }
}

/// A durable request's record, queued on its lane, with what the request holds until the
/// record's real outcome: its delivery-id reservation and its concurrency permit.
///
/// The record is published even when the request times out or its client goes away: a
/// record the client was not answered for may still reach Danube, so its delivery id stays
/// reserved (a retry gets 409, then `duplicate` once it landed) and its permit stays taken
/// (lingering publishes stay bounded). Dropped before the outcome, it hands the wait to a
/// task of its own; otherwise no task is spawned per request.
struct InFlight {
    pending: Option<PendingPublish>,
    reservation: Option<Reservation>,
    permit: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    /// Waits for Danube's answer and settles the reservation and permit; a failure hands
    /// the record back for the failure policy.
    async fn outcome(&mut self) -> Result<(), PublishFailure> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(PublishFailure {
                error: PublishError::Closed,
                record: SourceRecord::new(String::new(), Vec::new()),
            });
        };
        let result = pending.outcome().await;
        self.pending = None;
        settle(result.is_ok(), self.reservation.take(), self.permit.take());
        result
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(pending) = self.pending.take() else { return };
        let (reservation, permit) = (self.reservation.take(), self.permit.take());
        // Outside a runtime (process teardown) nobody is left to wait: both are released.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let result = pending.await;
                settle(result.is_ok(), reservation, permit);
            });
        }
    }
}

/// Remembers the delivery id once Danube acked the record, and frees the permit either way.
fn settle(acked: bool, reservation: Option<Reservation>, permit: Option<OwnedSemaphorePermit>) {
    if let (true, Some(reservation)) = (acked, reservation) {
        reservation.confirm(Instant::now());
    }
    drop(permit);
}

/// The answer for a durable record Danube did not take, after `failure.policy` for a record
/// it refuses for good (`deadline` bounds a dead-letter publish):
///
/// - transient (Danube unavailable, shutting down): 503 with `Retry-After`, whatever the
///   policy — the broker, not the record, is the problem;
/// - `dead_letter`: 202 `{"status":"dead_lettered","error":...}` once Danube acked the dead
///   letter (the record is in Danube, so the sender is done with it);
/// - `nack`: refused, as [`publish_failure`] answers (400 for an invalid record, 502 for one
///   the broker refuses): the sender keeps the event;
/// - `stop`: the connector stops; 503 with `Retry-After`, so the sender sends it again to
///   the connector once it runs again.
async fn undelivered(app: &App, failure: PublishFailure, deadline: tokio::time::Instant) -> Response {
    let PublishFailure { error, record } = failure;
    if error.is_transient() {
        return publish_failure(&error, app.retry_after);
    }
    let failed = Undeliverable::refused(record, &error, 1);
    let reason = failed.error.clone();
    match tokio::time::timeout_at(deadline, app.failures.undeliverable(failed, Handback::Possible)).await {
        Ok(Delivery::Published) => status_response(StatusCode::OK, r#"{"status":"published"}"#),
        Ok(Delivery::DeadLettered) => {
            json_response(StatusCode::ACCEPTED, serde_json::json!({"status": "dead_lettered", "error": reason}))
        }
        Ok(Delivery::Refused) => publish_failure(&error, app.retry_after),
        Ok(Delivery::Stopped) => {
            retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "the connector is stopping (failure.policy)")
        }
        Ok(Delivery::NotDelivered { .. }) | Err(_) => {
            retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "the dead letter was not published in time")
        }
    }
}

/// The answer for a record Danube did not take: the client keeps the event and learns
/// whether to send it again.
///
/// - [`PublishError::Invalid`] (e.g. the record fails its topic's schema): 400 with the
///   reason, since sending the same body again cannot succeed;
/// - [`PublishError::Unavailable`], [`PublishError::Timeout`], [`PublishError::Closed`]:
///   503 with `Retry-After`;
/// - [`PublishError::Rejected`] (the broker refused the record, e.g. too large or not
///   permitted): 502, the gateway's upstream refused; the sender should retry later,
///   after an operator fixed the cause.
pub fn publish_failure(error: &PublishError, wait: Duration) -> Response {
    if matches!(error, PublishError::Invalid { .. }) {
        self::error(StatusCode::BAD_REQUEST, error)
    } else if matches!(error, PublishError::Closed) {
        retry_after(StatusCode::SERVICE_UNAVAILABLE, wait, "shutting down")
    } else if error.is_transient() {
        retry_after(StatusCode::SERVICE_UNAVAILABLE, wait, "danube is unavailable")
    } else {
        self::error(StatusCode::BAD_GATEWAY, error)
    }
}

/// The bytes a buffered record holds: payload, attributes and key.
fn record_size(record: &SourceRecord) -> usize {
    let attributes: usize = record.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    record.payload.len() + attributes + record.routing_key.as_ref().map_or(0, |k| k.len())
}

/// Checks the body against the signature candidates: on this task for small bodies, on the
/// blocking pool (at most `verify_slots` at once) for large ones, within the deadline.
async fn verify_body(
    app: &App,
    verifier: Arc<Verifier>,
    checked: Checked,
    body: &bytes::Bytes,
    deadline: Instant,
) -> Result<Verified, Response> {
    let unauthorized = |e: VerifyError| error(StatusCode::UNAUTHORIZED, e);
    if !checked.needs_body() || body.len() <= INLINE_VERIFY_BYTES {
        return checked.verify_body(&verifier, body).map_err(unauthorized);
    }
    let deadline = tokio::time::Instant::from_std(deadline);
    let too_slow =
        || retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "verification did not finish in time");
    let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, app.verify_slots.clone().acquire_owned()).await else {
        return Err(too_slow());
    };
    let body = body.clone();
    let task = tokio::task::spawn_blocking(move || {
        let result = checked.verify_body(&verifier, &body);
        drop(slot);
        result
    });
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(result)) => result.map_err(unauthorized),
        Ok(Err(_)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "verification failed to run")),
        Err(_) => Err(too_slow()),
    }
}

async fn read_body(body: Body, limit: usize, deadline: Instant) -> Result<bytes::Bytes, Response> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {limit} bytes")))
        }
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"))),
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "body not received in time")),
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// `value` formatted into a string allocated once at `capacity` (`to_string` grows it
/// several times on the way).
fn display_text(value: impl std::fmt::Display, capacity: usize) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(capacity);
    let _ = write!(text, "{value}");
    text
}

fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_text(response: Response) -> String {
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn invalid_record_is_a_400_naming_the_reason() {
        let error = PublishError::Invalid { topic: "/default/orders".into(), message: "field `id` is required".into() };
        let response = publish_failure(&error, Duration::from_secs(3));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let text = body_text(response).await;
        assert!(text.contains("field `id` is required") && text.contains("/default/orders"), "{text}");
    }

    #[tokio::test]
    async fn broker_trouble_is_a_503_with_retry_after() {
        let timeout = PublishError::Timeout { topic: "/default/orders".into(), timeout: Duration::from_secs(30) };
        for error in [timeout, PublishError::Closed] {
            let response = publish_failure(&error, Duration::from_millis(2500));
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{error}");
            assert_eq!(response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("3"));
        }
    }
}
