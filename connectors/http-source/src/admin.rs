//! The admin API for dynamic endpoints (bearer token of its own):
//!
//! - `POST {prefix}/endpoints` `{"topic": "/default/x", "verification": {...}, "ack": "durable"}`
//!   → 201 `{"id": "...", "path": "/e/{id}", ...}`;
//! - `GET {prefix}/endpoints` → 200 list (secrets left out);
//! - `DELETE {prefix}/endpoints/{id}` → 204 (404 if unknown). Takes effect at once here and
//!   at the next registry refresh on other instances.
//!
//! Served on the webhook listener, or on a listener of its own (`admin.listen`). Every
//! admin request takes a permit of `max_concurrent_requests` and is bounded by
//! `request_timeout`; the token is checked before any body is read, and bodies larger than
//! [`ADMIN_MAX_BODY`] are refused. Failed authentications are logged and throttled (at most
//! [`AUTH_FAILURES_PER_SECOND`] a second, burst [`AUTH_FAILURE_BURST`]; beyond → 429).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use danube_connect_core::config::validate_topic;
use danube_connect_core::Publisher;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::config::{AckMode, HttpSourceConfig};
use crate::registry::{alias, DynamicEndpoint, Event, Registry, StoredVerification};
use crate::server::App;

/// The largest admin request body (a create request is a few hundred bytes).
pub const ADMIN_MAX_BODY: usize = 64 * 1024;

/// Failed admin authentications answered 401 (and logged) per second; beyond → 429.
pub const AUTH_FAILURES_PER_SECOND: u32 = 5;

/// Failed admin authentications allowed in a burst.
pub const AUTH_FAILURE_BURST: u32 = 10;

/// How long creating an endpoint waits for its topic's producers.
const PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// State of the admin routes.
#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    config: Arc<HttpSourceConfig>,
    publisher: Publisher,
}

/// A create request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Target topic (`/namespace/topic`, namespace in `dynamic.allowed_namespaces`).
    pub topic: String,
    /// Verification, if any.
    #[serde(default)]
    pub verification: Option<StoredVerification>,
    /// `durable` (default) or `accepted`.
    #[serde(default)]
    pub ack: AckMode,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// The admin API: its routes under `{prefix}/endpoints`, and which paths they are. Cheap to
/// clone.
#[derive(Clone)]
pub struct AdminApi {
    router: Router,
    endpoints_path: Arc<str>,
    token_digest: [u8; 32],
    failures: Arc<DefaultDirectRateLimiter>,
}

impl AdminApi {
    /// The admin routes; `publisher` creates a new endpoint's topic before the endpoint is
    /// announced.
    pub fn new(token: &str, registry: Arc<Registry>, config: Arc<HttpSourceConfig>, publisher: Publisher) -> Self {
        let endpoints_path: Arc<str> = format!("{}/endpoints", config.admin.path_prefix).into();
        let state = Admin { registry, config, publisher };
        let router = Router::new()
            .route(&endpoints_path, get(list).post(create))
            .route(&format!("{endpoints_path}/{{id}}"), delete(revoke))
            .layer(DefaultBodyLimit::max(ADMIN_MAX_BODY))
            .with_state(state);
        let quota = Quota::per_second(NonZeroU32::new(AUTH_FAILURES_PER_SECOND).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(AUTH_FAILURE_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            router,
            endpoints_path,
            token_digest: Sha256::digest(token.as_bytes()).into(),
            failures: Arc::new(RateLimiter::direct(quota)),
        }
    }

    /// Answers an admin request from `remote`: a permit of `max_concurrent_requests`, the
    /// token checked before the body is read, then the route within `request_timeout`.
    pub async fn handle(&self, app: &App, remote: SocketAddr, request: Request) -> Response {
        let Ok(_permit) = app.concurrency.clone().try_acquire_owned() else {
            return crate::server::retry_after(
                StatusCode::SERVICE_UNAVAILABLE,
                app.retry_after,
                "too many concurrent requests",
            );
        };
        if let Err(response) = self.authorize(remote, request.method(), request.headers()) {
            return *response;
        }
        let mut router = self.router.clone();
        match tokio::time::timeout(app.request_timeout, router.call(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "admin request did not finish in time"),
        }
    }

    /// Checks the bearer token in constant time; a failure is logged and counted against
    /// the failure rate (429 beyond it, logged at debug level only).
    fn authorize(
        &self,
        remote: SocketAddr,
        method: &axum::http::Method,
        headers: &HeaderMap,
    ) -> Result<(), Box<Response>> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.get(..7).filter(|p| p.eq_ignore_ascii_case("bearer ")).map(|_| &v[7..]))
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        if bool::from(digest.ct_eq(&self.token_digest)) {
            return Ok(());
        }
        if self.failures.check().is_err() {
            debug!(%remote, %method, "admin authentication failed (throttled)");
            let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, "too many failed admin authentications");
            response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            return Err(Box::new(response));
        }
        // The path is not logged: it may hold an endpoint id.
        warn!(%remote, %method, "admin authentication failed");
        Err(Box::new(json_error(StatusCode::UNAUTHORIZED, "admin token required")))
    }

    /// Whether `path` is one of the admin routes: `{prefix}/endpoints` or
    /// `{prefix}/endpoints/{id}` (one non-empty segment).
    pub fn serves(&self, path: &str) -> bool {
        is_admin_route(&self.endpoints_path, path)
    }

    /// The router answering the admin routes.
    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

/// Whether `path` is `endpoints_path` or `endpoints_path/{id}` (one non-empty segment).
fn is_admin_route(endpoints_path: &str, path: &str) -> bool {
    match path.strip_prefix(endpoints_path) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('/').is_some_and(|id| !id.is_empty() && !id.contains('/')),
        None => false,
    }
}

fn json_error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": message.to_string() }))).into_response()
}

fn public_view(endpoint: &DynamicEndpoint) -> serde_json::Value {
    serde_json::json!({
        "id": endpoint.id,
        "alias": alias(&endpoint.id),
        "path": format!("/e/{}", endpoint.id),
        "topic": endpoint.topic,
        "ack": endpoint.ack,
        "verification": endpoint.verification.as_ref().map(|v| v.scheme.as_str()),
        "description": endpoint.description,
        "created_at": endpoint.created_at,
    })
}

async fn list(State(admin): State<Admin>) -> Response {
    let endpoints: Vec<serde_json::Value> = admin.registry.list().iter().map(public_view).collect();
    Json(serde_json::json!({ "endpoints": endpoints })).into_response()
}

async fn create(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    let request: CreateEndpoint = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invalid request: {e}")),
    };
    if let Err(e) = validate_topic("topic", &request.topic) {
        return json_error(StatusCode::BAD_REQUEST, e);
    }
    let namespace = request.topic.split('/').nth(1).unwrap_or_default();
    if !admin.config.dynamic.allowed_namespaces.iter().any(|n| n == namespace) {
        return json_error(StatusCode::BAD_REQUEST, format!("namespace `{namespace}` is not allowed"));
    }
    if let Some(verification) = &request.verification {
        if let Err(e) = verification.to_config().validate("verification") {
            return json_error(StatusCode::BAD_REQUEST, e);
        }
    }
    if admin.registry.len() >= admin.config.dynamic.max_endpoints {
        return json_error(StatusCode::CONFLICT, "dynamic endpoint limit reached");
    }
    let id = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
    let endpoint = DynamicEndpoint {
        id: id.clone(),
        topic: request.topic,
        verification: request.verification,
        ack: request.ack,
        description: request.description,
        created_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    };
    let view = public_view(&endpoint);
    // The topic exists before the path is handed out (a subscriber made now sees the first
    // request). Not fatal: the first record creates it too.
    match tokio::time::timeout(PREPARE_TIMEOUT, admin.publisher.prepare(&endpoint.topic)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(topic = %endpoint.topic, error = %danube_connect_core::error::error_chain(&e), "cannot create the dynamic endpoint's topic yet")
        }
        Err(_) => warn!(topic = %endpoint.topic, "the dynamic endpoint's topic was not created in time"),
    }
    if let Err(e) = admin.registry.append(&Event::Create { endpoint }).await {
        warn!(error = %danube_connect_core::error::error_chain(&e), "cannot write the endpoint registry");
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "registry unavailable");
    }
    info!(alias = %alias(&id), "dynamic endpoint created");
    (StatusCode::CREATED, Json(view)).into_response()
}

async fn revoke(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    if admin.registry.get(&id).is_none() {
        return json_error(StatusCode::NOT_FOUND, "no such endpoint");
    }
    if let Err(e) = admin.registry.append(&Event::Revoke { id: id.clone() }).await {
        warn!(error = %danube_connect_core::error::error_chain(&e), "cannot write the endpoint registry");
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "registry unavailable");
    }
    info!(alias = %alias(&id), "dynamic endpoint revoked");
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::is_admin_route;

    #[test]
    fn only_the_two_admin_routes_go_to_the_admin_api() {
        for path in ["/admin/endpoints", "/admin/endpoints/abc"] {
            assert!(is_admin_route("/admin/endpoints", path), "{path}");
        }
        for path in ["/admin/endpoints/", "/admin/endpoints/a/b", "/admin/endpointsx", "/admin", "/e/abc", "/hooks"] {
            assert!(!is_admin_route("/admin/endpoints", path), "{path}");
        }
    }
}
