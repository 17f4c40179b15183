//! The ops HTTP port (`/metrics` Prometheus text, `/healthz` alive, `/readyz` ready), and
//! [`serve_http1`]: the one hardened HTTP/1.1 serving loop every listener of the project
//! uses (the ops port, http-source's webhook and admin listeners).
//!
//! [`serve_http1`] bounds what a client can hold without sending a request:
//! - at most [`ConnectionLimits::max`] connections are open at once; beyond it new
//!   connections wait in the kernel's accept queue until one closes (nothing crashes, no
//!   file descriptor is spent on them);
//! - a request head must be complete within `header_read_timeout` of the connection opening
//!   or of the previous response (hyper's header-read timer, driven by tokio's timer), or
//!   the connection is closed (slowloris);
//! - a keep-alive connection that sends no byte of a next request within `idle_timeout` of
//!   the previous response (or of opening) is closed.
//!
//! Only HTTP/1.1 (and 1.0) is spoken: an HTTP/2 preface is refused and the connection closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::debug;

use crate::config::{ConfigError, OpsConfig};
use crate::error::RuntimeError;
use crate::health::Health;
use crate::metrics::Metrics;

/// Limits on the connections of one HTTP listener (`[ops.connections]`,
/// `[connector.connections]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// A request head (request line and headers) must be complete within this time of the
    /// connection opening or of the previous response; otherwise the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection that sends nothing for this long after its previous response
    /// (or after opening) is closed. At most `header_read_timeout`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections open at once, at most; more wait in the accept queue until one closes.
    pub max: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(5), max: 1024 }
    }
}

impl ConnectionLimits {
    /// Checks the limits; `field` is the dotted path of the section (`ops.connections`).
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::invalid(format!("{field}.header_read_timeout"), "must be more than 0s"));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::invalid(format!("{field}.idle_timeout"), "must be more than 0s"));
        }
        if self.idle_timeout > self.header_read_timeout {
            return Err(ConfigError::invalid(
                format!("{field}.idle_timeout"),
                "must be at most header_read_timeout (the header clock starts when the server waits for a request)",
            ));
        }
        if self.max == 0 {
            return Err(ConfigError::invalid(format!("{field}.max"), "must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Clone)]
struct OpsState {
    metrics: Metrics,
    health: Health,
}

/// The ops routes, for embedding in a connector's own server too.
pub(crate) fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(OpsState { metrics, health })
}

/// Binds `config.listen` and serves the ops routes with `config.connections` until
/// `shutdown`; returns the bound address.
pub(crate) async fn serve(
    config: &OpsConfig,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(std::net::SocketAddr, JoinHandle<()>), RuntimeError> {
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RuntimeError::Ops { addr: listen.to_string(), source })?;
    let addr = listener.local_addr().map_err(|source| RuntimeError::Ops { addr: listen.to_string(), source })?;
    let app = router(metrics, health);
    let limits = config.connections;
    let task = tokio::spawn(serve_http1(listener, move |_| app.clone(), limits, shutdown));
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

/// Serves HTTP/1.1 on `listener` under `limits` until `shutdown` is cancelled, then lets
/// every open connection finish its request in flight and waits for them.
///
/// `make` builds the service of each accepted connection from its address. The service
/// must always be ready (`poll_ready` is not called), as axum's `Router` and handlers are.
pub async fn serve_http1<L, M, S>(mut listener: L, mut make: M, limits: ConnectionLimits, shutdown: CancellationToken)
where
    L: Listener,
    M: FnMut(&L::Addr) -> S,
    S: Service<Request, Response = Response, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max.max(1)));
    let connections = TaskTracker::new();
    loop {
        // A free slot first: beyond the cap, connections wait in the accept queue.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let service = make(&addr);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(io, service, limits, shutdown).await;
            drop(slot);
        });
    }
    // Refuse new connections and let go of what the services share while the open ones
    // finish.
    drop(listener);
    drop(make);
    connections.close();
    connections.wait().await;
}

/// One connection: hyper's HTTP/1 server with the header-read timer, plus the idle watch.
async fn serve_connection<I, S>(io: I, service: S, limits: ConnectionLimits, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request, Response = Response, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(TrackedIo { inner: io, activity: activity.clone() });
    let service = TrackedService { inner: service, activity: activity.clone() };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let check_at = tokio::time::Instant::from_std(activity.idle_check_at(limits.idle_timeout));
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(check_at), if !closing => {
                if activity.idle_for(limits.idle_timeout) {
                    debug!("closing an idle connection");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The instant all activity times are measured from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// What a connection is doing, shared by its IO, its service and its idle watch.
struct Activity {
    /// Requests being handled.
    in_flight: AtomicU32,
    /// Bytes arrived since the last response (a request head is coming).
    reading: AtomicBool,
    /// When the last response was produced (or the connection opened), µs after [`epoch`].
    last_us: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { in_flight: AtomicU32::new(0), reading: AtomicBool::new(false), last_us: AtomicU64::new(now_us()) }
    }

    /// Whether the connection is idle (no request, no byte of one) for `timeout` or longer.
    fn idle_for(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && !self.reading.load(Ordering::Acquire)
            && now_us().saturating_sub(self.last_us.load(Ordering::Acquire)) >= timeout.as_micros() as u64
    }

    /// When to look again: `timeout` after the last response, or from now while busy.
    fn idle_check_at(&self, timeout: Duration) -> Instant {
        let busy = self.in_flight.load(Ordering::Acquire) > 0 || self.reading.load(Ordering::Acquire);
        let from = if busy { now_us() } else { self.last_us.load(Ordering::Acquire) };
        epoch() + Duration::from_micros(from) + timeout
    }
}

fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// The connection's IO, noting when bytes of a request arrive.
struct TrackedIo<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.reading.store(true, Ordering::Release);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection's service as hyper sees it, counting requests in flight.
#[derive(Clone)]
struct TrackedService<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for TrackedService<S>
where
    S: Service<Request, Response = Response, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Tracked<S::Future>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        self.activity.reading.store(false, Ordering::Release);
        let mut inner = self.inner.clone();
        Tracked { future: inner.call(request.map(Body::new)), _guard: InFlightGuard(self.activity.clone()) }
    }
}

/// Ends a request's activity when its response future is done or dropped.
struct InFlightGuard(Arc<Activity>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.last_us.store(now_us(), Ordering::Release);
        self.0.reading.store(false, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response future holding its request's [`InFlightGuard`].
    struct Tracked<F> {
        #[pin]
        future: F,
        _guard: InFlightGuard,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_validate_and_name_the_field() {
        ConnectionLimits::default().validate("ops.connections").expect("defaults are valid");
        let cases = [
            ConnectionLimits { max: 0, ..Default::default() },
            ConnectionLimits { header_read_timeout: Duration::ZERO, ..Default::default() },
            ConnectionLimits { idle_timeout: Duration::from_secs(60), ..Default::default() },
        ];
        for (limits, field) in cases.iter().zip(["max", "header_read_timeout", "idle_timeout"]) {
            let text = limits.validate("ops.connections").expect_err("invalid").to_string();
            assert!(text.contains(&format!("ops.connections.{field}")), "{text}");
        }
    }

    #[test]
    fn activity_is_idle_only_without_requests_or_bytes() {
        let activity = Arc::new(Activity::new());
        let timeout = Duration::from_millis(20);
        assert!(!activity.idle_for(timeout), "just opened");
        std::thread::sleep(Duration::from_millis(30));
        assert!(activity.idle_for(timeout));
        activity.reading.store(true, Ordering::Release);
        assert!(!activity.idle_for(timeout), "a request head is arriving");
        activity.reading.store(false, Ordering::Release);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlightGuard(activity.clone());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!activity.idle_for(timeout), "a request is in flight");
        drop(guard);
        assert!(!activity.idle_for(timeout), "the response just ended");
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 0);
        std::thread::sleep(Duration::from_millis(30));
        assert!(activity.idle_for(timeout));
    }
}
