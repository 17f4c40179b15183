//! `[ops]`, `[log]`, `[shutdown]`, `[runtime]` and the whole runtime section.

use super::*;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
