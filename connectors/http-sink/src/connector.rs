//! The HTTP sink: one request per record (or per batch), acked only after a success status.
//!
//! What the runtime gets back, per outcome:
//!
//! | outcome | error | runtime does |
//! |---|---|---|
//! | success status (2xx) | `Ok` | ack |
//! | retryable status (408, 429, 5xx), network error, timeout | `Retryable` (with the `Retry-After` hint) | retry with backoff, then the failure policy |
//! | `Retry-After` longer than `retry_after.defer_threshold` | `Defer` | nack with that delay |
//! | the same, once `retry_after.max_defers` is spent | `Retryable` (with the hint) | retry, then the failure policy |
//! | circuit open (or this failure opened it) | `Defer` | nack with the remaining cool-down |
//! | other status (4xx), unusable URL, SSRF guard | `InvalidRecord` | failure policy at once (dead-letter) |
//!
//! Per-key order across deferrals is the runtime's: with `sink.ordering = "key"` it holds a
//! deferred record's later records of the same key until it is delivered (or dead-lettered),
//! see `danube_connect_core::runtime`'s sink lane. Within one batch the sink sends a key's
//! records one after another and does not send the later ones once one failed.
//! The attempt number (`danube-delivery-attempt`) and the deferral count (for
//! `retry_after.max_defers`) are the runtime's ([`SinkRecord::attempt`],
//! [`SinkRecord::deferrals`]).
//!
//! Errors and logs show a target as `scheme://host:port/<redacted>` ([`target_of`]): the
//! path and query of a webhook URL often hold its secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use danube_connect_core::trace_context;
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, SinkConnector, SinkContext, SinkRecord};
use futures::future::join_all;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use url::Url;

use crate::body::{decode_json, BodyBuilder, BodyError};
use crate::breaker::{Admission, CircuitBreaker, Report};
use crate::config::{decode_webhook_secret, AuthConfig, HttpSinkConfig, RetryAfterConfig};
use crate::outcome::{parse_retry_after, Class, Outcomes};
use crate::signature::{self, BodySigner, WebhookSigner};
use crate::ssrf::{GuardedResolver, SsrfError, TargetPolicy};
use crate::template::{endpoint_of, target_of, RenderError, TemplateError, UrlTemplate};

/// Bytes of an error response kept for the error message (and the dead-letter record).
const ERROR_BODY_LIMIT: usize = 512;
/// Bytes of a success response read (so the connection can be reused) before it is dropped.
const SUCCESS_BODY_LIMIT: usize = 64 * 1024;
/// Shortest delay asked of the broker when deferring.
const MIN_DEFER: Duration = Duration::from_millis(100);

/// Why the sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The URL template is not usable.
    #[error("connector.url: not a usable URL template")]
    Template(#[from] TemplateError),
    /// A TLS file could not be read.
    #[error("{field}: cannot read {path}")]
    File {
        /// The config field.
        field: &'static str,
        /// The file.
        path: String,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file is not usable PEM.
    #[error("{field}: not a usable PEM file")]
    Pem {
        /// The config field.
        field: &'static str,
        /// The parse error.
        #[source]
        source: reqwest::Error,
    },
    /// A header is not valid.
    #[error("{field}: not a valid header")]
    Header {
        /// The config field.
        field: String,
    },
    /// The webhook secret is not a `whsec_` secret.
    #[error("connector.signing.webhook_secret: {0}")]
    WebhookSecret(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    /// A metric could not be registered.
    #[error("registering metrics")]
    Metrics(#[source] prometheus::Error),
    /// A setting is not valid (the SSRF guard's networks).
    #[error("invalid configuration")]
    Config(#[source] danube_connect_core::config::ConfigError),
    /// `connector.proxy` is not a usable proxy URL.
    #[error("connector.proxy: not a usable proxy URL")]
    Proxy(#[source] Option<reqwest::Error>),
}

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver answered with a status that is not success.
    #[error("{method} {target} answered {status}: {body}")]
    Status {
        /// The method.
        method: reqwest::Method,
        /// `scheme://host:port/<redacted>` ([`target_of`]): path and query may hold secrets.
        target: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The start of the response body, one line.
        body: String,
    },
    /// The request did not get an answer (connect, reset, timeout).
    #[error("{method} {target} {what}")]
    Transport {
        /// The method.
        method: reqwest::Method,
        /// `scheme://host:port/<redacted>` ([`target_of`]).
        target: String,
        /// `timed out` or `failed`.
        what: &'static str,
        /// The client error, its URL removed (`reqwest::Error::without_url`).
        #[source]
        source: reqwest::Error,
    },
    /// No URL could be made for the record.
    #[error("no target URL for the record")]
    Url(#[source] RenderError),
    /// The SSRF guard refused the target.
    #[error("target refused by the SSRF guard")]
    Refused(#[source] SsrfError),
    /// Through a proxy, the target's name could not be resolved for the SSRF check.
    #[error("resolving {target} for the SSRF check")]
    Lookup {
        /// `scheme://host:port/<redacted>` ([`target_of`]).
        target: String,
        /// The lookup error.
        #[source]
        source: std::io::Error,
    },
    /// The body could not be built (e.g. the payload does not decode as JSON).
    #[error("building the request body")]
    Body(#[source] BodyError),
}

/// A failed delivery, shareable between the records of one request.
#[derive(Debug, Clone)]
enum Failure {
    Retry { after: Option<Duration>, error: Arc<DeliveryError> },
    Permanent(Arc<DeliveryError>),
    Defer { delay: Duration, message: String },
}

impl Failure {
    fn to_error(&self) -> ConnectorError {
        match self {
            Self::Retry { after, error } => ConnectorError::Retryable {
                message: "HTTP delivery".into(),
                retry_after: *after,
                source: Some(Box::new(Shared(error.clone()))),
            },
            Self::Permanent(error) => ConnectorError::invalid("HTTP delivery", Shared(error.clone())),
            Self::Defer { delay, message } => ConnectorError::Defer { delay: *delay, message: message.clone() },
        }
    }

    /// The failure of a record held back behind an earlier record of its key.
    fn held_back(&self) -> ConnectorError {
        match self {
            Self::Defer { delay, .. } => ConnectorError::Defer {
                delay: *delay,
                message: "held back behind an earlier record of the same key".into(),
            },
            _ => ConnectorError::retryable_msg("held back behind an earlier record of the same key"),
        }
    }
}

/// One [`DeliveryError`] as the source of several records' errors.
#[derive(Debug)]
struct Shared(Arc<DeliveryError>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.0.as_ref())
    }
}

/// The connector's own metrics (labels: connector and bounded outcome names).
#[derive(Debug, Clone)]
struct SinkMetrics {
    connector: String,
    requests: IntCounterVec,
    duration: HistogramVec,
    open_circuits: IntGaugeVec,
}

impl SinkMetrics {
    fn register(metrics: &danube_connect_core::metrics::Metrics) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "http_sink_requests_total",
                "HTTP requests by outcome (success, retryable, permanent, network, deferred, refused by the SSRF guard).",
            ),
            &["connector", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("http_sink_request_duration_seconds", "Duration of one HTTP request.")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["connector"],
        )?;
        let open_circuits =
            IntGaugeVec::new(Opts::new("http_sink_open_circuits", "Endpoints whose circuit is open."), &["connector"])?;
        let registry = metrics.registry();
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(open_circuits.clone()))?;
        Ok(Self { connector: metrics.connector().to_string(), requests, duration, open_circuits })
    }

    fn outcome(&self, outcome: &str) {
        self.requests.with_label_values(&[&self.connector, outcome]).inc();
    }
}

/// Delivers records to an HTTP endpoint.
#[derive(Debug)]
pub struct HttpSink {
    client: reqwest::Client,
    method: reqwest::Method,
    template: UrlTemplate,
    headers: HeaderMap,
    body: BodyBuilder,
    message_id_header: HeaderName,
    attempt_header: HeaderName,
    webhook: Option<WebhookSigner>,
    hmac: Option<(HeaderName, BodySigner)>,
    outcomes: Outcomes,
    retry_after: RetryAfterConfig,
    breaker: Option<CircuitBreaker>,
    /// The SSRF guard's policy.
    policy: Arc<TargetPolicy>,
    /// Whether requests go through `connector.proxy` (the target is then resolved and
    /// checked before each request).
    proxied: bool,
    in_flight: Semaphore,
    metrics: Option<SinkMetrics>,
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, BuildError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| BuildError::Header { field: field.to_string() })
}

fn header_value(field: &str, value: &str, sensitive: bool) -> Result<HeaderValue, BuildError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| BuildError::Header { field: field.to_string() })?;
    value.set_sensitive(sensitive);
    Ok(value)
}

fn read_file(field: &'static str, path: &std::path::Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::File { field, path: path.display().to_string(), source })
}

impl HttpSink {
    /// Builds the sink (HTTP client, TLS, headers, signers) from its configuration.
    pub fn new(config: HttpSinkConfig) -> Result<Self, BuildError> {
        let template = UrlTemplate::parse(config.url.expose())?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.max_in_flight)
            .user_agent(concat!("danube-http-sink/", env!("CARGO_PKG_VERSION")));
        let policy = Arc::new(config.target_policy().map_err(BuildError::Config)?);
        let proxy_host = match &config.proxy {
            Some(proxy) => {
                let url = Url::parse(proxy.expose()).map_err(|_| BuildError::Proxy(None))?;
                builder = builder.proxy(reqwest::Proxy::all(url.as_str()).map_err(|e| BuildError::Proxy(Some(e)))?);
                url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            }
            // No proxy from HTTP_PROXY and the like: the guard must know which host is
            // the proxy and which the target.
            None => {
                builder = builder.no_proxy();
                None
            }
        };
        let proxied = config.proxy.is_some();
        let redirect_policy = policy.clone();
        builder = builder.redirect(if config.follow_redirects {
            reqwest::redirect::Policy::custom(move |attempt| {
                let refused = attempt.url().host().is_some_and(|h| redirect_policy.check_host(&h.to_owned()).is_err());
                // Through a proxy a redirect's host name cannot be resolved here (this
                // callback is synchronous): follow only to the same host, or to a
                // literal address the guard permits.
                let unchecked = proxied
                    && !redirect_policy.allows_all()
                    && matches!(attempt.url().host(), Some(url::Host::Domain(_)))
                    && attempt.previous().last().map(Url::host_str) != Some(attempt.url().host_str());
                if attempt.previous().len() >= 5 || refused || unchecked {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            })
        } else {
            reqwest::redirect::Policy::none()
        });
        if !policy.allows_all() {
            builder = builder.dns_resolver(Arc::new(GuardedResolver::new(policy.clone(), proxy_host)));
        }
        if let Some(path) = &config.tls.ca_file {
            let pem = read_file("connector.tls.ca_file", path)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|source| BuildError::Pem { field: "connector.tls.ca_file", source })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
            if config.tls.ca_only {
                builder = builder.tls_built_in_root_certs(false);
            }
        }
        if let (Some(cert), Some(key)) = (&config.tls.client_cert, &config.tls.client_key) {
            let mut pem = read_file("connector.tls.client_cert", cert)?;
            pem.push(b'\n');
            pem.extend(read_file("connector.tls.client_key", key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|source| BuildError::Pem { field: "connector.tls.client_cert", source })?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(BuildError::Client)?;

        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let field = format!("connector.headers.{name}");
            headers.insert(header_name(&field, name)?, header_value(&field, value.expose(), true)?);
        }
        match &config.auth {
            None => {}
            Some(AuthConfig::Bearer { token }) => {
                let value = format!("Bearer {}", token.expose());
                headers.insert(reqwest::header::AUTHORIZATION, header_value("connector.auth.token", &value, true)?);
            }
            Some(AuthConfig::Basic { username, password }) => {
                use base64::Engine;
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                headers.insert(
                    reqwest::header::AUTHORIZATION,
                    header_value("connector.auth.password", &format!("Basic {encoded}"), true)?,
                );
            }
            Some(AuthConfig::Header { name, value }) => {
                headers.insert(
                    header_name("connector.auth.name", name)?,
                    header_value("connector.auth.value", value.expose(), true)?,
                );
            }
        }
        let webhook = match &config.signing.webhook_secret {
            Some(secret) => Some(WebhookSigner::new(decode_webhook_secret(secret).map_err(BuildError::WebhookSecret)?)),
            None => None,
        };
        let hmac = match &config.hmac {
            Some(hmac) => Some((header_name("connector.hmac.header", &hmac.header)?, BodySigner::new(hmac))),
            None => None,
        };
        let breaker = config.circuit_breaker.enabled.then(|| {
            CircuitBreaker::with_max_endpoints(
                config.circuit_breaker.failure_threshold,
                config.circuit_breaker.cool_down,
                config.circuit_breaker.max_endpoints,
            )
        });
        Ok(Self {
            client,
            method: config.method.as_reqwest(),
            template,
            headers,
            body: BodyBuilder::new(config.body.clone()),
            message_id_header: header_name("connector.delivery.message_id_header", &config.delivery.message_id_header)?,
            attempt_header: header_name("connector.delivery.attempt_header", &config.delivery.attempt_header)?,
            webhook,
            hmac,
            outcomes: Outcomes::new(&config.outcomes),
            retry_after: config.retry_after.clone(),
            breaker,
            policy,
            proxied,
            in_flight: Semaphore::new(config.max_in_flight),
            metrics: None,
        })
    }

    fn outcome(&self, outcome: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.outcome(outcome);
        }
    }

    fn update_open_circuits(&self) {
        if let (Some(metrics), Some(breaker)) = (&self.metrics, &self.breaker) {
            let open = i64::try_from(breaker.open_count()).unwrap_or(i64::MAX);
            metrics.open_circuits.with_label_values(&[&metrics.connector]).set(open);
        }
    }

    /// Sends one request carrying `records` (one, or a batch) to `url`.
    async fn deliver(&self, records: &[&SinkRecord], url: Url) -> Result<(), Failure> {
        let endpoint = endpoint_of(&url);
        let target = target_of(&url);
        if !self.policy.allows_all() {
            if let Some(host) = url.host() {
                let host = host.to_owned();
                let mut verdict = self.policy.check_host(&host);
                if verdict.is_ok() && self.proxied {
                    verdict = match self.policy.check_proxied(&host).await {
                        Ok(verdict) => verdict,
                        Err(error) => {
                            self.outcome("network");
                            return Err(Failure::Retry {
                                after: None,
                                error: Arc::new(DeliveryError::Lookup { target: target.clone(), source: error }),
                            });
                        }
                    };
                }
                if let Err(error) = verdict {
                    self.outcome("refused");
                    return Err(Failure::Permanent(Arc::new(DeliveryError::Refused(error))));
                }
            }
        }
        let body = self.body.build(records).map_err(|e| {
            self.outcome("permanent");
            Failure::Permanent(Arc::new(DeliveryError::Body(e)))
        })?;
        let probe = match self.breaker.as_ref().map(|b| b.admit(&endpoint)) {
            Some(Admission::Rejected(wait)) => {
                self.outcome("deferred");
                return Err(Failure::Defer {
                    delay: wait.max(MIN_DEFER),
                    message: format!("circuit open for {endpoint}"),
                });
            }
            Some(Admission::Probe) => true,
            _ => false,
        };
        let ids: Vec<String> = records.iter().map(|r| r.message_id()).collect();
        let attempt = records.iter().map(|r| r.attempt).max().unwrap_or(1);
        let deferrals = records.iter().map(|r| r.deferrals).max().unwrap_or(0);
        let message_id = match ids.as_slice() {
            [one] => one.clone(),
            many => batch_id(many),
        };

        let mut headers = self.headers.clone();
        let mut dynamic = |name: HeaderName, value: &str| {
            // Values made here are ASCII (ids from topic names and numbers, base64, hex);
            // one that is not is left out rather than failing the delivery.
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        dynamic(CONTENT_TYPE, &body.content_type);
        dynamic(self.message_id_header.clone(), &message_id);
        dynamic(self.attempt_header.clone(), &attempt.to_string());
        if let Some(signer) = &self.webhook {
            let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            dynamic(HeaderName::from_static(signature::headers::ID), &message_id);
            dynamic(HeaderName::from_static(signature::headers::TIMESTAMP), &timestamp.to_string());
            dynamic(
                HeaderName::from_static(signature::headers::SIGNATURE),
                &signer.sign(&message_id, timestamp, &body.bytes),
            );
        }
        if let Some((name, signer)) = &self.hmac {
            dynamic(name.clone(), &signer.sign(&body.bytes));
        }
        // The W3C trace context the record brought (e.g. from the webhook http-source took
        // it from): a batch carries it only when every record shares it.
        if let [first, rest @ ..] = records {
            let parent = first.attributes.get(trace_context::TRACEPARENT);
            if rest.iter().all(|r| r.attributes.get(trace_context::TRACEPARENT) == parent) {
                trace_context::copy_into_headers(&first.attributes, &mut headers);
            }
        }

        // Closing the semaphore never happens: acquire fails only when closed.
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| Failure::Defer { delay: MIN_DEFER, message: "sink is shutting down".into() })?;
        let started = Instant::now();
        let sent = self.client.request(self.method.clone(), url).headers(headers).body(body.bytes).send().await;
        let result = match sent {
            Ok(response) => self.on_response(response, &endpoint, &target, deferrals, attempt).await,
            Err(error) => Err(self.on_transport_error(error, &endpoint, &target)),
        };
        if let Some(metrics) = &self.metrics {
            metrics.duration.with_label_values(&[&metrics.connector]).observe(started.elapsed().as_secs_f64());
        }
        if probe {
            debug!(%endpoint, ok = result.is_ok(), "circuit probe finished");
        }
        self.update_open_circuits();
        result
    }

    async fn on_response(
        &self,
        mut response: reqwest::Response,
        endpoint: &str,
        target: &str,
        deferrals: u32,
        attempt: u32,
    ) -> Result<(), Failure> {
        let status = response.status();
        let class = self.outcomes.classify(status.as_u16());
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .map(|hint| hint.min(self.retry_after.max));
        let limit = if class == Class::Success { SUCCESS_BODY_LIMIT } else { ERROR_BODY_LIMIT };
        let mut snippet = Vec::new();
        while snippet.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => snippet.extend_from_slice(&chunk[..chunk.len().min(limit - snippet.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        match class {
            Class::Success => {
                self.outcome("success");
                self.report(endpoint, Report::Healthy);
                Ok(())
            }
            Class::Permanent => {
                self.outcome("permanent");
                self.report(endpoint, Report::Healthy);
                Err(Failure::Permanent(Arc::new(DeliveryError::Status {
                    method: self.method.clone(),
                    target: target.to_string(),
                    status,
                    body: one_line(&snippet),
                })))
            }
            Class::Retryable => {
                let report =
                    if status == reqwest::StatusCode::TOO_MANY_REQUESTS { Report::Neutral } else { Report::Failed };
                let opened = self.report(endpoint, report);
                let error = Arc::new(DeliveryError::Status {
                    method: self.method.clone(),
                    target: target.to_string(),
                    status,
                    body: one_line(&snippet),
                });
                debug!(%target, %status, attempt, ?retry_after, "retryable answer");
                if opened {
                    self.outcome("deferred");
                    return Err(self.opened(endpoint, &error));
                }
                self.outcome("retryable");
                match retry_after {
                    Some(hint) if hint > self.retry_after.defer_threshold => {
                        if self.may_defer(deferrals) {
                            Err(Failure::Defer {
                                delay: hint.max(MIN_DEFER),
                                message: format!("{error}; Retry-After {hint:?} is past the defer threshold"),
                            })
                        } else {
                            warn!(%target, ?hint, "retry_after.max_defers spent: retrying in process, then the failure policy");
                            Err(Failure::Retry { after: Some(hint), error })
                        }
                    }
                    after => Err(Failure::Retry { after, error }),
                }
            }
        }
    }

    /// Whether one more deferral of records deferred `deferrals` times before (the
    /// runtime's count, [`SinkRecord::deferrals`]) stays within `retry_after.max_defers`.
    fn may_defer(&self, deferrals: u32) -> bool {
        self.retry_after.max_defers.is_none_or(|max| deferrals.saturating_add(1) <= max)
    }

    fn on_transport_error(&self, error: reqwest::Error, endpoint: &str, target: &str) -> Failure {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(current) = source {
            if let Some(refused) = current.downcast_ref::<SsrfError>() {
                self.outcome("refused");
                return Failure::Permanent(Arc::new(DeliveryError::Refused(refused.clone())));
            }
            source = current.source();
        }
        let error = Arc::new(DeliveryError::Transport {
            method: self.method.clone(),
            target: target.to_string(),
            what: if error.is_timeout() { "timed out" } else { "failed" },
            // Its text would repeat the whole URL, query and all.
            source: error.without_url(),
        });
        if self.report(endpoint, Report::Failed) {
            self.outcome("deferred");
            return self.opened(endpoint, &error);
        }
        self.outcome("network");
        Failure::Retry { after: None, error }
    }

    fn report(&self, endpoint: &str, report: Report) -> bool {
        self.breaker.as_ref().is_some_and(|b| b.report(endpoint, report))
    }

    /// The failure that opened the circuit: hand the record back instead of retrying it,
    /// so an outage never exhausts retries into the dead-letter topic.
    fn opened(&self, endpoint: &str, error: &DeliveryError) -> Failure {
        let cool_down = self.breaker.as_ref().map_or(MIN_DEFER, CircuitBreaker::cool_down);
        warn!(%endpoint, ?cool_down, error = %danube_connect_core::error::error_chain(error), "circuit opened");
        Failure::Defer { delay: cool_down.max(MIN_DEFER), message: format!("circuit opened for {endpoint}: {error}") }
    }

    /// One request for one record.
    async fn deliver_one(&self, record: &SinkRecord) -> Result<(), Failure> {
        let url = self.template.render(record).map_err(|e| {
            self.outcome("permanent");
            Failure::Permanent(Arc::new(DeliveryError::Url(e)))
        })?;
        self.deliver(&[record], url).await
    }

    /// Records of one key, one after another; after a retryable failure or a deferral the
    /// later records of the key are held back so they cannot overtake it.
    async fn deliver_in_order(&self, records: &[SinkRecord], indexes: &[usize]) -> Vec<(usize, ConnectorError)> {
        let mut failures = Vec::new();
        let mut blocked: Option<Failure> = None;
        for &index in indexes {
            if let Some(failure) = &blocked {
                failures.push((index, failure.held_back()));
                continue;
            }
            match self.deliver_one(&records[index]).await {
                Ok(()) => {}
                Err(failure @ Failure::Permanent(_)) => failures.push((index, failure.to_error())),
                Err(failure) => {
                    failures.push((index, failure.to_error()));
                    blocked = Some(failure);
                }
            }
        }
        failures
    }

    /// Batch mode: one request per target URL.
    async fn deliver_batches(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        let mut failures: Vec<(usize, ConnectorError)> = Vec::new();
        let mut groups: Vec<(Url, Vec<usize>)> = Vec::new();
        for (index, record) in records.iter().enumerate() {
            if self.body.needs_json() {
                if let Err(error) = decode_json(record) {
                    self.outcome("permanent");
                    failures.push((index, Failure::Permanent(Arc::new(DeliveryError::Body(error))).to_error()));
                    continue;
                }
            }
            match self.template.render(record) {
                Ok(url) => match groups.iter_mut().find(|(u, _)| *u == url) {
                    Some((_, members)) => members.push(index),
                    None => groups.push((url, vec![index])),
                },
                Err(error) => {
                    self.outcome("permanent");
                    failures.push((index, Failure::Permanent(Arc::new(DeliveryError::Url(error))).to_error()));
                }
            }
        }
        if failures.is_empty() && groups.len() == 1 {
            // The whole batch in one request: let the runtime retry it as a whole.
            let refs: Vec<&SinkRecord> = records.iter().collect();
            let Some((url, _)) = groups.pop() else { return Ok(()) };
            return self.deliver(&refs, url).await.map_err(|f| f.to_error());
        }
        let sends = groups.into_iter().map(|(url, members)| async move {
            let refs: Vec<&SinkRecord> = members.iter().map(|&i| &records[i]).collect();
            (members.clone(), self.deliver(&refs, url).await)
        });
        for (members, result) in join_all(sends).await {
            if let Err(failure) = result {
                failures.extend(members.into_iter().map(|i| (i, failure.to_error())));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::PartialBatch { failures })
        }
    }
}

/// A stable id for a batch: a hash of its records' ids.
fn batch_id(ids: &[String]) -> String {
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.as_bytes());
        hasher.update(b"\n");
    }
    format!("batch_{}", hex::encode(&hasher.finalize()[..16]))
}

/// The start of a response body as one printable line.
fn one_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(200).collect();
    if text.chars().count() > 200 {
        line.push_str("...");
    }
    line.trim().to_string()
}

#[async_trait]
impl SinkConnector for HttpSink {
    async fn initialize(&mut self, ctx: SinkContext) -> ConnectorResult<()> {
        let metrics = SinkMetrics::register(&ctx.metrics)
            .map_err(|e| ConnectorError::fatal("register the HTTP sink metrics", BuildError::Metrics(e)))?;
        self.metrics = Some(metrics);
        Ok(())
    }

    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()> {
        self.deliver_one(record).await.map_err(|f| f.to_error())
    }

    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        if self.body.is_batch() {
            return self.deliver_batches(records).await;
        }
        if let [record] = records {
            return self.process(record).await;
        }
        // One request per record: keys in parallel, each key in order.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            match record.routing_key.as_deref() {
                Some(key) => {
                    let group = *by_key.entry(key).or_insert_with(|| {
                        groups.push(Vec::new());
                        groups.len() - 1
                    });
                    groups[group].push(index);
                }
                None => groups.push(vec![index]),
            }
        }
        let failures: Vec<(usize, ConnectorError)> =
            join_all(groups.iter().map(|g| self.deliver_in_order(records, g))).await.into_iter().flatten().collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::PartialBatch { failures })
        }
    }

    async fn health_check(&self) -> ConnectorResult<()> {
        self.update_open_circuits();
        let Some(breaker) = &self.breaker else { return Ok(()) };
        match breaker.open_count() {
            0 => Ok(()),
            count => {
                let some = breaker.open_endpoints(5).join(", ");
                let more = if count > 5 { format!(" and {} more", count - 5) } else { String::new() };
                Err(ConnectorError::retryable_msg(format!("circuit open for {some}{more}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_id_is_stable_and_order_sensitive() {
        let a = vec!["/default/t:1".to_string(), "/default/t:2".to_string()];
        let b = vec!["/default/t:2".to_string(), "/default/t:1".to_string()];
        assert_eq!(batch_id(&a), batch_id(&a.clone()));
        assert_ne!(batch_id(&a), batch_id(&b));
        assert!(batch_id(&a).starts_with("batch_"));
    }

    #[test]
    fn one_line_strips_control_characters_and_truncates() {
        assert_eq!(one_line(b"a\nb\tc"), "a b c");
        assert!(one_line(&[b'x'; 500]).ends_with("..."));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = HttpSinkConfig {
            url: "http://127.0.0.1:1/x".into(),
            auth: Some(AuthConfig::Bearer { token: danube_connect_core::Secret::new("tok-123") }),
            ..Default::default()
        };
        let sink = HttpSink::new(config).expect("build");
        assert!(!format!("{sink:?}").contains("tok-123"));
    }
}
