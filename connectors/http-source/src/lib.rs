//! # danube-http-source
//!
//! A webhook gateway: inbound HTTP requests (GitHub, Stripe, Slack, Standard Webhooks
//! senders, devices, CI systems) become Danube records. In the default `durable` mode a
//! request is answered 2xx only after Danube acked its record; otherwise the client gets
//! an error (503 with `Retry-After` when Danube is away) and keeps the event.
//!
//! Modules: [`config`] (the `[connector]` section), [`signature`] (verification schemes),
//! [`template`] (path and topic templates), [`server`] (the request path), [`admin`] and
//! [`registry`] (dynamic endpoints), [`tls`] (HTTPS), [`dedup`] (delivery-id memory).

pub mod admin;
pub mod config;
pub mod dedup;
pub mod endpoint;
pub mod registry;
pub mod server;
pub mod signature;
pub mod template;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use danube_connect_core::config::ConfigError;
use danube_connect_core::failure::{Delivery, FailureHandler, Handback};
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Context, Factory, PushSource, SourceRecord};
use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::AdminApi;
use crate::config::HttpSourceConfig;
use crate::endpoint::Endpoint;
use crate::registry::Registry;
use crate::server::{App, Buffered, HttpMetrics, WebhookService};
use danube_connect_core::serve_http1;

/// Records of `accepted` endpoints published at once from the buffer.
const BUFFER_PUBLISHERS: usize = 64;

/// Large-body signature checks running at once on the blocking pool: one per core.
fn verify_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// One connection's service on the admin listener (`admin.listen`): only admin routes.
#[derive(Clone)]
struct AdminService {
    admin: AdminApi,
    app: Arc<App>,
    remote: SocketAddr,
}

impl tower_service::Service<axum::extract::Request> for AdminService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if !this.admin.serves(request.uri().path()) {
                return Ok(axum::response::IntoResponse::into_response((
                    axum::http::StatusCode::NOT_FOUND,
                    "no admin route at this path",
                )));
            }
            Ok(this.admin.handle(&this.app, this.remote, request).await)
        })
    }
}

/// Readiness component name of the dynamic-endpoint registry.
const REGISTRY_COMPONENT: &str = "dynamic-endpoints";

/// The HTTP source, built (no I/O) from its configuration: the endpoints compiled, so a
/// bad path, topic template or verification fails `--check`. Started, it binds its
/// listeners and returns the running [`HttpSource`]; records Danube refuses follow
/// `failure.policy` (see the README).
pub struct HttpSourceFactory {
    config: Arc<HttpSourceConfig>,
    endpoints: Vec<Arc<Endpoint>>,
}

impl std::fmt::Debug for HttpSourceFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSourceFactory").field("listen", &self.config.listen).finish_non_exhaustive()
    }
}

impl HttpSourceFactory {
    /// Compiles the endpoints of `config`; the error names the endpoint.
    pub fn build(config: HttpSourceConfig) -> Result<Self, ConfigError> {
        let endpoints = config
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Endpoint::from_config(i, e, &config)
                    .map(Arc::new)
                    .map_err(|e| ConfigError::invalid(format!("connector.endpoints[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { config: Arc::new(config), endpoints })
    }
}

/// The running HTTP source.
pub struct HttpSource {
    local_addr: SocketAddr,
    /// Taken at shutdown.
    running: Option<Running>,
}

struct Running {
    server: JoinHandle<()>,
    admin_server: Option<JoinHandle<()>>,
    drain: JoinHandle<()>,
    refresher: Option<JoinHandle<()>>,
    stop_refresh: CancellationToken,
}

impl HttpSource {
    /// The address the webhook server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

#[async_trait]
impl Factory for HttpSourceFactory {
    type Connector = HttpSource;

    /// The endpoints' topics without a template: they exist before the first request (a
    /// subscriber made now sees it), and one Danube refuses (its name, its dispatch
    /// strategy, a name clash) stops the start instead of a 502 for every webhook.
    fn topics_at_start(&self) -> Vec<String> {
        let mut topics: Vec<String> = Vec::new();
        for endpoint in self.config.endpoints.iter().filter(|e| !e.topic.contains('{')) {
            if !topics.contains(&endpoint.topic) {
                topics.push(endpoint.topic.clone());
            }
        }
        topics
    }

    async fn start(self, ctx: Context) -> ConnectorResult<HttpSource> {
        let config = self.config.clone();
        let endpoints = self.endpoints;
        let metrics = HttpMetrics::new(ctx.metrics()).map_err(|e| ConnectorError::fatal("register metrics", e))?;

        let stop_refresh = CancellationToken::new();
        let mut refresher = None;
        let registry = match (&config.admin.token, &config.dynamic.registry_path) {
            (Some(_), Some(path)) => {
                let registry = Registry::new(path.clone(), config.clone());
                let problem = registry.refresh().await.err().map(|e| danube_connect_core::error::error_chain(&e));
                if let Some(problem) = &problem {
                    warn!(%problem, "cannot read the endpoint registry; readiness degraded");
                }
                ctx.health().set_component(REGISTRY_COMPONENT, problem);
                info!(path = %path.display(), endpoints = registry.len(), "dynamic endpoint registry loaded");
                refresher = Some(tokio::spawn(refresh_loop(
                    registry.clone(),
                    config.dynamic.refresh_interval,
                    ctx.health().clone(),
                    stop_refresh.clone(),
                )));
                Some(registry)
            }
            _ => None,
        };

        let (buffer, buffered) = mpsc::channel(config.accepted_buffer);
        let drain = tokio::spawn(drain_buffer(buffered, ctx.failures().clone()));
        let app = Arc::new(App {
            endpoints,
            registry: registry.clone(),
            publisher: ctx.publisher().clone(),
            failures: ctx.failures().clone(),
            health: ctx.health().clone(),
            concurrency: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            buffer,
            buffer_slots: Arc::new(Semaphore::new(config.accepted_buffer)),
            buffer_bytes: Arc::new(Semaphore::new(config.accepted_buffer_bytes.min(Semaphore::MAX_PERMITS))),
            verify_slots: Arc::new(Semaphore::new(verify_slots())),
            request_timeout: config.request_timeout,
            retry_after: config.retry_after,
            metrics,
        });
        let admin = match (&config.admin.token, registry) {
            (Some(token), Some(registry)) => {
                Some(AdminApi::new(token.expose(), registry, config.clone(), ctx.publisher().clone()))
            }
            _ => None,
        };

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| ConnectorError::fatal(format!("bind {}", config.listen), e))?;
        let addr = listener.local_addr().map_err(|e| ConnectorError::fatal("listener address", e))?;
        let shutdown = ctx.shutdown().clone();
        let limits = config.connections;
        // The admin API on a listener of its own, or on the webhook listener.
        let (public_admin, admin_server) = match (config.admin.listen, admin) {
            (Some(admin_listen), Some(admin)) => {
                let admin_listener = tokio::net::TcpListener::bind(admin_listen)
                    .await
                    .map_err(|e| ConnectorError::fatal(format!("bind {admin_listen} (connector.admin.listen)"), e))?;
                let admin_addr =
                    admin_listener.local_addr().map_err(|e| ConnectorError::fatal("admin listener address", e))?;
                info!(addr = %admin_addr, "admin API listening on its own address");
                let app = app.clone();
                let make =
                    move |remote: &SocketAddr| AdminService { admin: admin.clone(), app: app.clone(), remote: *remote };
                (None, Some(tokio::spawn(serve_http1(admin_listener, make, limits, shutdown.clone()))))
            }
            (_, admin) => (admin, None),
        };
        let make = move |remote: &SocketAddr| WebhookService::new(app.clone(), public_admin.clone(), *remote);
        let server = match &config.tls {
            Some(tls) => {
                let acceptor = tls::acceptor(tls).map_err(|e| ConnectorError::fatal("TLS", e))?;
                let listener = tls::TlsListener::new(listener, acceptor, limits.max)
                    .map_err(|e| ConnectorError::fatal("TLS listener", e))?;
                tokio::spawn(serve_http1(listener, make, limits, shutdown))
            }
            None => {
                let listener = listener.tap_io(|stream| {
                    let _ = stream.set_nodelay(true);
                });
                tokio::spawn(serve_http1(listener, make, limits, shutdown))
            }
        };
        info!(%addr, tls = config.tls.is_some(), endpoints = config.endpoints.len(), "webhook server listening");
        Ok(HttpSource {
            local_addr: addr,
            running: Some(Running { server, admin_server, drain, refresher, stop_refresh }),
        })
    }
}

#[async_trait]
impl PushSource for HttpSource {
    async fn shutdown(&mut self) -> ConnectorResult<()> {
        let Some(running) = self.running.take() else { return Ok(()) };
        // The server stopped accepting when the shutdown token was cancelled; this waits
        // until every in-flight request got its answer.
        if let Err(e) = running.server.await {
            warn!(error = %e, "webhook server task ended abnormally");
        }
        if let Some(admin_server) = running.admin_server {
            if let Err(e) = admin_server.await {
                warn!(error = %e, "admin server task ended abnormally");
            }
        }
        // The buffer's sender went away with the server: publish what is buffered.
        if let Err(e) = running.drain.await {
            warn!(error = %e, "buffer task ended abnormally");
        }
        running.stop_refresh.cancel();
        if let Some(refresher) = running.refresher {
            let _ = refresher.await;
        }
        info!("webhook server stopped");
        Ok(())
    }
}

async fn refresh_loop(
    registry: Arc<Registry>,
    every: Duration,
    health: danube_connect_core::Health,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let problem = registry.refresh().await.err().map(|e| danube_connect_core::error::error_chain(&e));
        if let Some(problem) = &problem {
            warn!(%problem, "cannot read the endpoint registry; readiness degraded");
        }
        health.set_component(REGISTRY_COMPONENT, problem);
    }
}

/// Publishes the records of `accepted` endpoints; ends when the buffer is closed and empty.
async fn drain_buffer(buffered: mpsc::Receiver<Buffered>, failures: FailureHandler) {
    tokio_stream::wrappers::ReceiverStream::new(buffered)
        .for_each_concurrent(BUFFER_PUBLISHERS, |(record, slot)| {
            let failures = failures.clone();
            async move {
                publish_buffered(&failures, record).await;
                drop(slot);
            }
        })
        .await;
}

/// Publishes one buffered record through core's failure handling: the client was answered
/// 202 already, so transient failures are retried until the publisher closes and a record
/// Danube refuses for good follows `failure.policy` (`nack` acts as `stop`: nothing can
/// hand the record back).
async fn publish_buffered(failures: &FailureHandler, record: SourceRecord) {
    let topic = record.topic.clone();
    match failures.publish_or_dead_letter(record, Handback::Impossible).await {
        Delivery::Published | Delivery::DeadLettered => {}
        Delivery::Refused | Delivery::Stopped => {
            error!(%topic, "a buffered record of an accepted endpoint cannot be delivered; the connector stops and the record is lost")
        }
        Delivery::NotDelivered { reason } => {
            error!(%topic, %reason, "the publisher closed before a buffered record was published; it is lost")
        }
    }
}
