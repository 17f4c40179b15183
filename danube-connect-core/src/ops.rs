//! The ops HTTP port: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz` (ready).

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::RuntimeError;
use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    health: Health,
}

/// The ops routes, for embedding in a connector's own server too.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(OpsState { metrics, health })
}

/// Binds `listen` and serves the ops routes until `shutdown`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), RuntimeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RuntimeError::Ops { addr: listen.to_string(), source })?;
    let addr = listener.local_addr().map_err(|source| RuntimeError::Ops { addr: listen.to_string(), source })?;
    let app = router(metrics, health);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    });
    Ok((addr, task))
}

async fn metrics_handler(State(state): State<OpsState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn ready_handler(State(state): State<OpsState>) -> impl IntoResponse {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(problems) => (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n")),
    }
}
