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
//! Errors and logs show a target as `scheme://host:port/<redacted>` ([`target_of`](crate::template::target_of)): the
//! path and query of a webhook URL often hold its secret.

use std::sync::Arc;
use std::time::Duration;

use danube_connect_core::config::ConfigError;
use danube_connect_core::error::error_chain;
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Context, Factory, Sink, SinkRecord};
use reqwest::header::{HeaderMap, HeaderName};
use tokio::sync::Semaphore;

use self::client::{fixed_headers, header_name, http_client};
use crate::body::BodyBuilder;
use crate::breaker::CircuitBreaker;
use crate::config::{decode_webhook_secret, HttpSinkConfig, RetryAfterConfig};
use crate::metrics::SinkMetrics;
use crate::outcome::Outcomes;
use crate::signature::{BodySigner, WebhookSigner};
use crate::ssrf::TargetPolicy;
use crate::template::UrlTemplate;

pub use crate::error::{BuildError, DeliveryError};

mod client;
mod delivery;

/// Shortest delay asked of the broker when deferring.
const MIN_DEFER: Duration = Duration::from_millis(100);

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
    /// In a registry of its own until the runtime starts the sink.
    metrics: SinkMetrics,
}

/// The HTTP sink, built from its configuration (HTTP client, TLS, headers, signers: no
/// network I/O, so `--check` runs it); started, it registers its metrics.
#[derive(Debug)]
pub struct HttpSinkFactory {
    sink: HttpSink,
}

impl HttpSinkFactory {
    /// Builds the sink; the error names the field.
    pub fn build(config: HttpSinkConfig) -> Result<Self, BuildError> {
        Ok(Self { sink: HttpSink::new(config)? })
    }
}

#[async_trait]
impl Factory for HttpSinkFactory {
    type Connector = HttpSink;

    async fn start(mut self, ctx: Context) -> ConnectorResult<HttpSink> {
        self.sink.metrics = SinkMetrics::register(ctx.metrics())
            .map_err(|e| ConnectorError::fatal("register the HTTP sink metrics", BuildError::Metrics(e)))?;
        Ok(self.sink)
    }
}

impl From<BuildError> for ConfigError {
    /// A build error as the configuration error `--check` reports (its text names the field).
    fn from(error: BuildError) -> Self {
        match error {
            BuildError::Config(config) => config,
            other => ConfigError::invalid("connector", error_chain(&other)),
        }
    }
}

impl HttpSink {
    /// Builds the sink (HTTP client, TLS, headers, signers) from its configuration, with its
    /// metrics in a registry of its own (the runtime starts it through [`HttpSinkFactory`]).
    pub fn new(config: HttpSinkConfig) -> Result<Self, BuildError> {
        let template = UrlTemplate::parse(config.url.expose())?;
        let policy = Arc::new(config.target_policy().map_err(BuildError::Config)?);
        let client = http_client(&config, &policy)?;
        let headers = fixed_headers(&config)?;
        let proxied = config.proxy.is_some();
        let webhook = match &config.signing.webhook_secret {
            Some(secret) => {
                Some(WebhookSigner::from_key(decode_webhook_secret(secret).map_err(BuildError::WebhookSecret)?))
            }
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
            metrics: SinkMetrics::unregistered(),
        })
    }

    /// Counts one request of `outcome`.
    fn outcome(&self, outcome: &str) {
        self.metrics.outcome(outcome);
    }

    /// Sets the open-circuits gauge from the breaker.
    fn update_open_circuits(&self) {
        if let Some(breaker) = &self.breaker {
            self.metrics.set_open_circuits(i64::try_from(breaker.open_count()).unwrap_or(i64::MAX));
        }
    }
}

#[async_trait]
impl Sink for HttpSink {
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
        self.deliver_per_key(records).await
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
    use crate::config::AuthConfig;

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
