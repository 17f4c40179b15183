//! Configuration: a TOML (or YAML) file plus environment overrides for every field.
//!
//! Layers, later wins:
//! 1. defaults,
//! 2. the file given with `--config` (`.toml`, `.yaml` or `.yml`),
//! 3. `DANUBE_*` for the `[danube]` section (`DANUBE_SERVICE_URL`, `DANUBE_TOKEN`, ...),
//! 4. `CONNECTOR_*` for the runtime sections, `__` separating levels
//!    (`CONNECTOR_NAME`, `CONNECTOR_RETRY__MAX_ATTEMPTS`, `CONNECTOR_SINK__BATCH__MAX_RECORDS`),
//! 5. `{PREFIX}_*` for the connector's own `[connector]` section
//!    (`HTTP_SOURCE_LISTEN`, `MQTT_MAPPINGS='[{filter="a/#", topic="/default/a"}]'`).
//!
//! List sections take an inline TOML array in the environment, e.g.
//! `CONNECTOR_TRANSFORMS='[{name="strip", source="del(.password)"}]'`.
//!
//! So a container can be configured with environment variables alone.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use danube_connect_common::tls;
use figment::providers::{Env, Format, Serialized, Toml, Yaml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration error that names the field and the expected form.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field is missing, has the wrong type or cannot be parsed.
    #[error("invalid configuration")]
    Parse(#[source] Box<figment::Error>),
    /// A field parsed but its value is not acceptable.
    #[error("invalid configuration: field `{field}`: {message}")]
    Invalid {
        /// The dotted path of the field (`sink.batch.max_records`).
        field: String,
        /// What is wrong and the expected form.
        message: String,
    },
    /// The configuration file could not be read.
    #[error("configuration file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// An invalid value for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }
}

/// Semantic checks after parsing; errors name the field.
pub trait Validate {
    /// Checks the values; the default accepts everything.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Checks that need the runtime sections too, e.g. a bridge that must have either
    /// mappings or `sink.topics`. It runs at load like [`validate`](Self::validate), so
    /// `--check` refuses every configuration the binary would refuse at start. The default
    /// accepts everything.
    fn validate_with_runtime(&self, runtime: &RuntimeConfig) -> Result<(), ConfigError> {
        let _ = runtime;
        Ok(())
    }
}

/// A secret string: redacted in `Debug`, `Display` and in `--check` output.
///
/// In config it is a plain string, `{ env = "VAR" }` or `{ file = "/run/secrets/x" }`
/// (trailing newline trimmed).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Source {
            Value(String),
            Env { env: String },
            File { file: PathBuf },
        }
        match Source::deserialize(deserializer)? {
            Source::Value(v) => Ok(Secret(v)),
            Source::Env { env } => std::env::var(&env)
                .map(Secret)
                .map_err(|_| serde::de::Error::custom(format!("secret environment variable `{env}` is not set"))),
            Source::File { file } => std::fs::read_to_string(&file)
                .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| serde::de::Error::custom(format!("secret file {}: {e}", file.display()))),
        }
    }
}

/// Where and how to reach Danube.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DanubeConfig {
    /// Broker URL, e.g. `http://127.0.0.1:6650` (`https://` with TLS).
    pub service_url: String,
    /// CA certificate (PEM) to verify the broker; enables TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `tls_key` and `tls_ca`.
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    pub tls_key: Option<PathBuf>,
    /// JWT for the broker (`Authorization: Bearer`); enables TLS.
    pub token: Option<Secret>,
    /// A file holding the JWT, re-read on every request (rotation without restart).
    pub token_file: Option<PathBuf>,
    /// How long to keep retrying the first connection before giving up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The broker's Prometheus exporter (`danube-broker --prom-exporter`), e.g.
    /// `http://127.0.0.1:9040` (`/metrics` is appended unless given): sinks read their subscription's lag from it to detect a
    /// subscription the broker stopped feeding (`sink.stall_timeout`). Unset: no detection.
    pub broker_metrics_url: Option<String>,
}

impl Default for DanubeConfig {
    fn default() -> Self {
        Self {
            service_url: "http://127.0.0.1:6650".into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            token: None,
            token_file: None,
            connect_timeout: Duration::from_secs(300),
            broker_metrics_url: None,
        }
    }
}

impl Validate for DanubeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.service_url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "danube.service_url",
                format!("`{url}` must start with http:// or https:// (e.g. http://127.0.0.1:6650)"),
            ));
        }
        if url.parse::<tonic::transport::Uri>().is_err() {
            return Err(ConfigError::invalid("danube.service_url", format!("`{url}` is not a valid URL")));
        }
        if let Some(url) = &self.broker_metrics_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<tonic::transport::Uri>().is_err()
            {
                return Err(ConfigError::invalid(
                    "danube.broker_metrics_url",
                    format!("`{url}` must be an http:// or https:// URL (e.g. http://127.0.0.1:9040)"),
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::invalid("danube.tls_cert", "mutual TLS needs both `tls_cert` and `tls_key`"));
        }
        if self.tls_cert.is_some() && self.tls_ca.is_none() {
            return Err(ConfigError::invalid("danube.tls_ca", "mutual TLS needs `tls_ca` too"));
        }
        // The PEM files are read once here with the loader every connector's TLS uses, so a
        // bad one fails `--check` with the field and the file.
        let pem = |e: tls::TlsError| ConfigError::invalid(e.field.clone(), e.reason());
        if let Some(path) = &self.tls_ca {
            tls::load_certificates("danube", "tls_ca", path).map_err(pem)?;
        }
        if let Some(path) = &self.tls_cert {
            tls::load_certificates("danube", "tls_cert", path).map_err(pem)?;
        }
        if let Some(path) = &self.tls_key {
            tls::load_private_key("danube", "tls_key", path).map_err(pem)?;
        }
        if let Some(path) = &self.token_file {
            if !path.exists() {
                return Err(ConfigError::invalid(
                    "danube.token_file",
                    format!("file {} does not exist", path.display()),
                ));
            }
        }
        Ok(())
    }
}

/// How retry delays grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackoffStrategy {
    /// `initial_backoff`, then doubling, up to `max_backoff` (default).
    #[default]
    Exponential,
    /// `initial_backoff` × attempt number, up to `max_backoff`.
    Linear,
}

/// Backoff for retryable failures: exponential (or linear) with jitter, bounded by attempts
/// and time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// How delays grow: `exponential` (default) or `linear`; jitter is added to both.
    pub strategy: BackoffStrategy,
    /// Attempts in total (the first try included) before the failure policy applies.
    pub max_attempts: usize,
    /// Delay before the second attempt.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Upper bound of one delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Upper bound of the time spent retrying one operation.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            strategy: BackoffStrategy::Exponential,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

impl Validate for RetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid("retry.max_attempts", "must be at least 1"));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(ConfigError::invalid("retry.initial_backoff", "must not exceed `retry.max_backoff`"));
        }
        Ok(())
    }
}

/// What happens to a record that cannot be delivered (invalid, or retries exhausted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Publish it to the dead-letter topic with the error, then ack it.
    DeadLetter,
    /// Nack it: the broker redelivers it after `failure.nack_delay`.
    Nack,
    /// Stop the connector without acking; exit non-zero.
    Stop,
}

/// The failure policy and its settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureConfig {
    /// `dead_letter` (default), `nack` or `stop`.
    pub policy: FailurePolicy,
    /// Dead-letter topic; default `/default/dlq-{name}` (not `{name}-dlq`: Danube would then
    /// refuse a data topic `/default/{name}` created after it, see docs/running-on-danube.md).
    pub dead_letter_topic: Option<String>,
    /// Redelivery delay asked for with `nack`.
    #[serde(with = "humantime_serde")]
    pub nack_delay: Duration,
}

impl Default for FailureConfig {
    fn default() -> Self {
        Self { policy: FailurePolicy::DeadLetter, dead_letter_topic: None, nack_delay: Duration::from_secs(5) }
    }
}

/// Source-side publishing settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Producers per topic. `danube-client` allows one message in flight per producer,
    /// so several producers pipeline sends; one key always uses the same producer.
    pub producers_per_topic: usize,
    /// Reliable dispatch (persisted, acked) — the default; `false` is fire and forget.
    pub reliable: bool,
    /// Records published but not yet acked, at most; intake pauses beyond it.
    pub max_in_flight: usize,
    /// How long a push source's `publish` may wait for Danube before it fails
    /// (an HTTP client then gets 503).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Topics created partitioned, with their partition count (`{"/default/orders" = 8}`):
    /// the topic becomes `{topic}-part-0 .. {topic}-part-{n-1}`, records with a routing key
    /// always go to the key's partition (per-key order holds), others round robin. Sinks
    /// read every partition of a topic without any setting.
    pub partitions: std::collections::BTreeMap<String, u32>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            producers_per_topic: 4,
            reliable: true,
            max_in_flight: 1024,
            publish_timeout: Duration::from_secs(30),
            partitions: std::collections::BTreeMap::new(),
        }
    }
}

impl Validate for SourceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.producers_per_topic) {
            return Err(ConfigError::invalid("source.producers_per_topic", "must be 1 to 64"));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::invalid("source.max_in_flight", "must be at least 1"));
        }
        for (topic, count) in &self.partitions {
            let field = format!("source.partitions.\"{topic}\"");
            validate_topic(&field, topic)?;
            if !(1..=1024).contains(count) {
                return Err(ConfigError::invalid(&field, "must be 1 to 1024 partitions"));
            }
        }
        Ok(())
    }
}

/// Danube subscription types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionType {
    /// One consumer only.
    Exclusive,
    /// Round robin over consumers.
    Shared,
    /// One active consumer, others on standby.
    Failover,
    /// Same routing key to the same consumer, in order.
    KeyShared,
}

/// One topic a sink consumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkTopicConfig {
    /// The Danube topic (`/namespace/topic`).
    pub topic: String,
    /// Subscription name; default: the connector name.
    #[serde(default)]
    pub subscription: Option<String>,
    /// Subscription type; default `shared`.
    #[serde(default = "default_sub_type")]
    pub subscription_type: SubscriptionType,
    /// Consumer name; default `{connector name}-{index}`.
    #[serde(default)]
    pub consumer_name: Option<String>,
}

fn default_sub_type() -> SubscriptionType {
    SubscriptionType::Shared
}

impl SinkTopicConfig {
    /// A topic with default subscription settings.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            subscription: None,
            subscription_type: SubscriptionType::Shared,
            consumer_name: None,
        }
    }
}

/// Batch bounds: a batch is flushed at whichever comes first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Records per batch, at most.
    pub max_records: usize,
    /// Bytes per batch, at most (payloads and attributes).
    pub max_bytes: usize,
    /// How long the first record of a batch may wait for more.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_records: 1, max_bytes: 1 << 20, linger: Duration::from_millis(100) }
    }
}

/// In what order a sink may process the records of one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Records with the same routing key are processed one after another, in order.
    Key,
    /// No ordering promise; records spread over all lanes.
    None,
}

/// Sink-side settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Topics to consume, one consumer each.
    pub topics: Vec<SinkTopicConfig>,
    /// Batch bounds.
    pub batch: BatchConfig,
    /// Parallel lanes per topic; each lane processes its batches one at a time.
    pub concurrency: usize,
    /// `key` (default): one key stays on one lane, in order; `none`: spread freely.
    pub ordering: Ordering,
    /// Decode records carrying a `schema_id` with the registry's schema into
    /// `SinkRecord::value` before `process` (default true).
    pub decode_schemas: bool,
    /// How long a subscription may have a backlog at the broker while nothing of it reaches
    /// the sink before the sink reports itself stalled (not ready, metric, one error log).
    /// Needs `danube.broker_metrics_url`. Default 20 s (detection then fires within about
    /// 24 s of the cursor stopping).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Records a topic's lanes may hold queued ahead of processing. The broker never sends
    /// more than its dispatch window (`max_unacked_messages`, default 10, at most 10000)
    /// unacked, so this costs memory only when the broker's window is raised; it must be at
    /// least that window, or the broker's dispatcher blocks on this sink and skips messages
    /// after a burst (see `docs/running-on-danube.md`). Default 10000.
    pub prefetch: usize,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            topics: Vec::new(),
            batch: BatchConfig::default(),
            concurrency: 1,
            ordering: Ordering::Key,
            decode_schemas: true,
            stall_timeout: Duration::from_secs(20),
            prefetch: 10_000,
        }
    }
}

impl Validate for SinkConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, t) in self.topics.iter().enumerate() {
            validate_topic(&format!("sink.topics[{i}].topic"), &t.topic)?;
        }
        if self.batch.max_records == 0 {
            return Err(ConfigError::invalid("sink.batch.max_records", "must be at least 1"));
        }
        if self.batch.max_bytes == 0 {
            return Err(ConfigError::invalid("sink.batch.max_bytes", "must be at least 1"));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(ConfigError::invalid("sink.concurrency", "must be 1 to 1024"));
        }
        if !(1..=1_000_000).contains(&self.prefetch) {
            return Err(ConfigError::invalid("sink.prefetch", "must be 1 to 1000000"));
        }
        if self.stall_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid("sink.stall_timeout", "must be at least 1s"));
        }
        Ok(())
    }
}

/// Checks the `/namespace/topic` form of a Danube topic name.
pub fn validate_topic(field: &str, topic: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = topic.split('/').collect();
    if parts.len() != 3 || !parts[0].is_empty() || parts[1].is_empty() || parts[2].is_empty() {
        return Err(ConfigError::invalid(field, format!("`{topic}` must have the form /namespace/topic")));
    }
    if let Some(bad) = parts[1..].iter().flat_map(|part| part.chars()).find(|c| !crate::naming::is_topic_char(*c)) {
        return Err(ConfigError::invalid(
            field,
            format!(
                "`{topic}` contains `{bad}`: Danube accepts only letters, digits, `_` and `-` in a namespace or topic name"
            ),
        ));
    }
    Ok(())
}

/// The ops HTTP port: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Whether to serve the ops port.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Connection limits (`[ops.connections]`); at most 64 connections by default.
    pub connections: crate::ops::ConnectionLimits,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            connections: crate::ops::ConnectionLimits { max: 64, ..Default::default() },
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`info`) or a filter (`info,danube_client=warn`).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info,danube_client=warn".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Shutdown behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long the drain (finish in-flight work, flush, ack, commit) may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30) }
    }
}

/// The async runtime (tokio) of the process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsyncRuntimeConfig {
    /// Worker threads of the tokio runtime; default tokio's own (`TOKIO_WORKER_THREADS`,
    /// else one per core). On a machine whose cores are shared with the broker or the
    /// load, fewer workers mean fewer cross-thread wake-ups per record.
    pub worker_threads: Option<usize>,
}

impl Validate for AsyncRuntimeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.worker_threads.is_some_and(|n| !(1..=1024).contains(&n)) {
            return Err(ConfigError::invalid(
                "runtime.worker_threads",
                "must be 1 to 1024 (or unset for tokio's default)",
            ));
        }
        Ok(())
    }
}

/// The runtime's own configuration (everything but the connector's section).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Connector instance name: producer/consumer names, metrics label, dead-letter topic.
    pub name: String,
    /// Danube connection.
    pub danube: DanubeConfig,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Failure policy.
    pub failure: FailureConfig,
    /// Source publishing.
    pub source: SourceConfig,
    /// Sink consuming and batching.
    pub sink: SinkConfig,
    /// Ops HTTP port.
    pub ops: OpsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Shutdown.
    pub shutdown: ShutdownConfig,
    /// The async runtime (worker threads).
    pub runtime: AsyncRuntimeConfig,
    /// Topics bound to schema-registry subjects (`[[schemas]]`).
    pub schemas: Vec<crate::schema::SchemaBinding>,
    /// VRL programs applied to every record in flight (`[[transforms]]`, see
    /// [`crate::transform`]).
    pub transforms: Vec<crate::transform::TransformConfig>,
    /// OpenTelemetry traces (`[telemetry]`); off unless an endpoint is set.
    pub telemetry: crate::telemetry::TelemetryConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            name: "connector".into(),
            danube: DanubeConfig::default(),
            retry: RetryConfig::default(),
            failure: FailureConfig::default(),
            source: SourceConfig::default(),
            sink: SinkConfig::default(),
            ops: OpsConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            runtime: AsyncRuntimeConfig::default(),
            schemas: Vec::new(),
            transforms: Vec::new(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
        }
    }
}

impl RuntimeConfig {
    /// The dead-letter topic in effect.
    pub fn dead_letter_topic(&self) -> String {
        self.failure.dead_letter_topic.clone().unwrap_or_else(|| format!("/default/dlq-{}", self.name))
    }

    /// Refuses an empty `sink.topics`: a sink would consume nothing. Sink connectors call it
    /// from [`Validate::validate_with_runtime`] so that `--check` refuses what the start
    /// refuses; the runtime checks it again before it runs a sink.
    pub fn require_sink_topics(&self) -> Result<(), ConfigError> {
        if self.sink.topics.is_empty() {
            return Err(ConfigError::invalid(
                "sink.topics",
                "is empty: name at least one topic to consume, e.g. [{topic = \"/default/orders\"}] \
                 (CONNECTOR_SINK__TOPICS='[{topic=\"/default/orders\"}]')",
            ));
        }
        Ok(())
    }
}

impl Validate for RuntimeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        // The name becomes part of the dead-letter topic, so it follows Danube's topic rules.
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ConfigError::invalid(
                "name",
                format!("`{}` must be non-empty and use only letters, digits, '-' and '_'", self.name),
            ));
        }
        self.danube.validate()?;
        self.retry.validate()?;
        self.source.validate()?;
        self.sink.validate()?;
        self.runtime.validate()?;
        self.schemas.validate()?;
        self.transforms.validate()?;
        self.telemetry.validate()?;
        self.ops.connections.validate("ops.connections")?;
        if let Some(topic) = &self.failure.dead_letter_topic {
            validate_topic("failure.dead_letter_topic", topic)?;
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::invalid("log.level", format!("`{}` is not a level or filter", self.log.level)));
        }
        Ok(())
    }
}

/// Keys of `[danube]` settable as `DANUBE_*` (other `DANUBE_*` variables are ignored).
const DANUBE_KEYS: &[&str] =
    &["service_url", "tls_ca", "tls_cert", "tls_key", "token", "token_file", "connect_timeout", "broker_metrics_url"];

/// An environment layer: `{prefix}{KEY}` → `{section}.{key}`, `__` separating levels;
/// variables whose first level `accept` refuses are ignored.
fn env_layer(prefix: &str, section: Option<&'static str>, accept: fn(&str) -> bool) -> Env {
    let prefix = prefix.to_ascii_lowercase();
    Env::raw().filter_map(move |key| {
        let key = key.as_str().to_ascii_lowercase();
        let rest = key.strip_prefix(&prefix)?;
        let first = rest.split("__").next().unwrap_or_default();
        if rest.is_empty() || !accept(first) {
            return None;
        }
        let path = rest.replace("__", ".");
        Some(match section {
            Some(section) => format!("{section}.{path}").into(),
            None => path.into(),
        })
    })
}

/// Turns a parse error into one naming the field as written in a file
/// (`connector.max_body_bytes`), whatever layer it came from; `section` is the prefix of an
/// inner extraction.
fn parse_error(error: figment::Error, section: Option<&str>) -> ConfigError {
    let path = error.path.join(".");
    if path.is_empty() {
        return ConfigError::Parse(Box::new(error));
    }
    let field = match section {
        Some(section) if path != section && !path.starts_with(&format!("{section}.")) => format!("{section}.{path}"),
        _ => path,
    };
    let origin = error.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
    ConfigError::invalid(field.to_ascii_lowercase(), format!("{}{origin}", error.kind))
}

/// Top-level keys a configuration may have.
const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "danube",
    "retry",
    "failure",
    "source",
    "sink",
    "ops",
    "log",
    "shutdown",
    "runtime",
    "schemas",
    "transforms",
    "telemetry",
    "connector",
    "config_file",
];

/// A whole connector configuration: runtime sections plus the connector's `[connector]` section.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorConfig<C> {
    /// Runtime sections (flattened at the top level of the file).
    #[serde(flatten)]
    pub runtime: RuntimeConfig,
    /// The connector's own settings.
    pub connector: C,
}

impl<C> ConnectorConfig<C>
where
    C: DeserializeOwned + Serialize + Default + Validate,
{
    /// Loads defaults, then `file`, then the environment (see the module docs), and validates.
    /// `env_prefix` is the connector's prefix without the trailing `_`, e.g. `HTTP_SOURCE`.
    pub fn load(file: Option<&Path>, env_prefix: &str) -> Result<Self, ConfigError> {
        Self::load_from(file, env_prefix, Figment::new())
    }

    /// Like [`load`](Self::load), with extra layers merged last (tests, embedding).
    pub fn load_from(file: Option<&Path>, env_prefix: &str, extra: Figment) -> Result<Self, ConfigError> {
        let defaults = ConnectorConfig { runtime: RuntimeConfig::default(), connector: C::default() };
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            figment = match path.extension().and_then(|e| e.to_str()) {
                Some("yaml") | Some("yml") => figment.merge(Yaml::file(path)),
                _ => figment.merge(Toml::file(path)),
            };
        }
        figment = figment
            .merge(env_layer("DANUBE_", Some("danube"), |key| DANUBE_KEYS.contains(&key)))
            .merge(env_layer("CONNECTOR_", None, |key| TOP_LEVEL_KEYS.contains(&key)))
            .merge(env_layer(&format!("{env_prefix}_"), Some("connector"), |_| true))
            .merge(extra);
        let keys: std::collections::BTreeMap<String, figment::value::Value> =
            figment.extract().map_err(|e| parse_error(e, None))?;
        if let Some(unknown) = keys.keys().find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
            return Err(ConfigError::invalid(
                unknown.clone(),
                format!("unknown section; expected one of {}", TOP_LEVEL_KEYS[..TOP_LEVEL_KEYS.len() - 1].join(", ")),
            ));
        }
        let runtime: RuntimeConfig = figment.extract().map_err(|e| parse_error(e, None))?;
        let connector: C = figment.extract_inner("connector").map_err(|e| parse_error(e, Some("connector")))?;
        let config = Self { runtime, connector };
        config.runtime.validate()?;
        config.connector.validate()?;
        config.connector.validate_with_runtime(&config.runtime)?;
        Ok(config)
    }

    /// The effective configuration as TOML, secrets redacted (for `--check`).
    pub fn to_redacted_toml(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        render_toml(&value)
    }
}

/// Renders a JSON value as TOML-like text for `--check` (nulls are left out).
fn render_toml(value: &serde_json::Value) -> String {
    fn scalar(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        }
    }
    fn table(out: &mut String, path: &str, map: &serde_json::Map<String, serde_json::Value>) {
        let mut nested = Vec::new();
        for (k, v) in map {
            match v {
                serde_json::Value::Null => {}
                serde_json::Value::Object(m) => nested.push((k, m)),
                other => out.push_str(&format!("{k} = {}\n", scalar(other))),
            }
        }
        for (k, m) in nested {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            out.push_str(&format!("\n[{p}]\n"));
            table(out, &p, m);
        }
    }
    let mut out = String::new();
    if let serde_json::Value::Object(map) = value {
        table(&mut out, "", map);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        listen: String,
        password: Option<Secret>,
    }
    impl Validate for Demo {}

    #[test]
    fn file_then_extra_layers_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "name = \"demo\"\n[retry]\nmax_attempts = 9\n[connector]\nlisten = \"a\"\n")
            .expect("write");
        let extra = Figment::new().merge(Serialized::default("connector.listen", "b"));
        let cfg = ConnectorConfig::<Demo>::load_from(Some(&file), "DEMO_TEST_NONE", extra).expect("load");
        assert_eq!(cfg.runtime.name, "demo");
        assert_eq!(cfg.runtime.retry.max_attempts, 9);
        assert_eq!(cfg.connector.listen, "b");
    }

    #[test]
    fn yaml_files_are_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "name: yaml-demo\nsink:\n  batch:\n    max_records: 7\n    linger: 250ms\nconnector:\n  listen: y\n",
        )
        .expect("write");
        let cfg = ConnectorConfig::<Demo>::load_from(Some(&file), "DEMO_TEST_NONE", Figment::new()).expect("load");
        assert_eq!(cfg.runtime.name, "yaml-demo");
        assert_eq!(cfg.runtime.sink.batch.max_records, 7);
        assert_eq!(cfg.runtime.sink.batch.linger, Duration::from_millis(250));
        assert_eq!(cfg.connector.listen, "y");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let extra = Figment::new().merge(Serialized::default("retry.max_attempts", "many"));
        let err = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect_err("must fail");
        let text = crate::error::error_chain(&err);
        assert!(text.contains("retry.max_attempts"), "{text}");
    }

    #[test]
    fn bad_service_url_names_the_field() {
        let extra = Figment::new().merge(Serialized::default("danube.service_url", "127.0.0.1:6650"));
        let err = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect_err("must fail");
        assert!(err.to_string().contains("danube.service_url"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_check_output() {
        let extra = Figment::new().merge(Serialized::default("connector.password", "hunter2"));
        let cfg = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect("load");
        assert_eq!(cfg.connector.password.as_ref().map(Secret::expose), Some("hunter2"));
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let text = cfg.to_redacted_toml();
        assert!(!text.contains("hunter2") && text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn secret_from_file_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s");
        std::fs::write(&file, "s3cret\n").expect("write");
        let extra =
            Figment::new().merge(Serialized::default("connector.password", serde_json::json!({ "file": file })));
        let cfg = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect("load");
        assert_eq!(cfg.connector.password.as_ref().map(Secret::expose), Some("s3cret"));
    }

    #[test]
    fn connector_prefix_variables_override_nested_fields() {
        std::env::set_var("DEMOENVTEST_LISTEN", "from-env");
        std::env::set_var("DEMOENVTEST_PASSWORD", "pw");
        let cfg = ConnectorConfig::<Demo>::load_from(None, "DEMOENVTEST", Figment::new()).expect("load");
        assert_eq!(cfg.connector.listen, "from-env");
        assert_eq!(cfg.connector.password.as_ref().map(Secret::expose), Some("pw"));
        std::env::remove_var("DEMOENVTEST_LISTEN");
        std::env::remove_var("DEMOENVTEST_PASSWORD");
    }

    #[test]
    fn unknown_top_level_section_is_refused() {
        let extra = Figment::new().merge(Serialized::default("retyr.max_attempts", 3));
        let err = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect_err("typo");
        assert!(err.to_string().contains("retyr"), "{err}");
    }

    #[test]
    fn worker_threads_outside_its_range_names_the_field() {
        let extra = Figment::new().merge(Serialized::default("runtime.worker_threads", 0));
        let err = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect_err("zero workers");
        assert!(err.to_string().contains("runtime.worker_threads"), "{err}");
        let extra = Figment::new().merge(Serialized::default("runtime.worker_threads", 2));
        let cfg = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect("two workers");
        assert_eq!(cfg.runtime.runtime.worker_threads, Some(2));
        assert_eq!(
            ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", Figment::new())
                .expect("default")
                .runtime
                .runtime
                .worker_threads,
            None
        );
    }

    #[test]
    fn topic_names_must_have_a_namespace() {
        assert!(validate_topic("f", "/default/t").is_ok());
        assert!(validate_topic("f", "default/t").is_err());
        assert!(validate_topic("f", "/t").is_err());
        let error = validate_topic("connector.topic", "/default/public.users").unwrap_err().to_string();
        assert!(error.contains("connector.topic") && error.contains("`.`"), "{error}");
        assert!(validate_topic("f", "/default/a_b-9").is_ok());
    }
}
