//! The error taxonomy the runtime acts on.
//!
//! Every error a connector returns says what the runtime should do with it:
//!
//! | variant | meaning | what the runtime does |
//! |---|---|---|
//! | [`ConnectorError::Retryable`] | the outside system is unavailable for now | retry with backoff, then the failure policy |
//! | [`ConnectorError::InvalidRecord`] | this record is bad, the system is fine | the failure policy at once (no retry) |
//! | [`ConnectorError::Defer`] | not now: hand the record back to the broker | nack with the given delay |
//! | [`ConnectorError::PartialBatch`] | some records of a batch failed, the rest were written | ack the written ones, handle each failure |
//! | [`ConnectorError::Fatal`] | the connector cannot go on | stop, without acking, exit non-zero |
//!
//! Each variant keeps its source so the full chain reaches the logs.

use std::time::Duration;

/// A boxed error source kept inside [`ConnectorError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used across the SDK.
pub type ConnectorResult<T> = Result<T, ConnectorError>;

/// What went wrong, classified by what the runtime should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A transient failure (network, timeout, overload): retry with backoff.
    #[error("retryable: {message}")]
    Retryable {
        /// What was being attempted.
        message: String,
        /// A hint from the outside system (e.g. `Retry-After`) for the next attempt.
        retry_after: Option<Duration>,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// The record cannot be processed however often it is retried.
    #[error("invalid record: {message}")]
    InvalidRecord {
        /// Why the record is invalid.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// Hand the record back to the broker for redelivery after `delay`
    /// (e.g. a circuit breaker is open, or a `Retry-After` too long to wait in process).
    #[error("deferred for {delay:?}: {message}")]
    Defer {
        /// The minimum delay before redelivery.
        delay: Duration,
        /// Why the record was deferred.
        message: String,
    },
    /// Some records of a batch failed; all the others were written.
    #[error("{} record(s) of the batch failed", failures.len())]
    PartialBatch {
        /// Index into the batch and the error of each failed record.
        failures: Vec<(usize, ConnectorError)>,
    },
    /// The connector cannot continue.
    #[error("fatal: {message}")]
    Fatal {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl ConnectorError {
    /// A retryable error with its source.
    pub fn retryable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Retryable { message: message.into(), retry_after: None, source: Some(source.into()) }
    }

    /// A retryable error without a source.
    pub fn retryable_msg(message: impl Into<String>) -> Self {
        Self::Retryable { message: message.into(), retry_after: None, source: None }
    }

    /// An invalid-record error with its source.
    pub fn invalid(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::InvalidRecord { message: message.into(), source: Some(source.into()) }
    }

    /// An invalid-record error without a source.
    pub fn invalid_msg(message: impl Into<String>) -> Self {
        Self::InvalidRecord { message: message.into(), source: None }
    }

    /// A fatal error with its source.
    pub fn fatal(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Fatal { message: message.into(), source: Some(source.into()) }
    }

    /// A fatal error without a source.
    pub fn fatal_msg(message: impl Into<String>) -> Self {
        Self::Fatal { message: message.into(), source: None }
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }

    /// A bounded label for metrics (never the error text).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Retryable { .. } => "retryable",
            Self::InvalidRecord { .. } => "invalid",
            Self::Defer { .. } => "deferred",
            Self::PartialBatch { .. } => "partial",
            Self::Fatal { .. } => "fatal",
        }
    }

    /// The full error chain on one line, for logs and dead-letter attributes.
    pub fn chain(&self) -> String {
        error_chain(self)
    }
}

/// Formats an error and all its sources as `outer: inner: innermost` (one implementation,
/// shared with the schema code and the development broker).
pub use danube_connect_common::error_chain;

/// An error of the Danube client (a connection, a broker's or the registry's answer), kept
/// whole: its message and source chain are the client's.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ClientError(danube_client::errors::DanubeError);

impl ClientError {
    pub(crate) fn new(error: danube_client::errors::DanubeError) -> Self {
        Self(error)
    }

    pub(crate) fn inner(&self) -> &danube_client::errors::DanubeError {
        &self.0
    }
}

/// Errors of the runtime itself (not of a connector).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A connector failed fatally.
    #[error("connector failed")]
    Connector(#[from] ConnectorError),
    /// Publishing to Danube failed for good.
    #[error("publish failed")]
    Publish(#[from] PublishError),
    /// The Danube client could not be built or connected.
    #[error("danube client")]
    Client(#[source] ClientError),
    /// A schema binding could not be registered or looked up.
    #[error("schema setup failed")]
    Schema(#[from] crate::schema::SchemaSetupError),
    /// The ops HTTP server could not start.
    #[error("ops server on {addr}")]
    Ops {
        /// The address it tried to bind.
        addr: String,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a publish through the runtime did not reach Danube.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker is unreachable or kept failing until the publish deadline.
    #[error("broker unavailable for topic {topic}")]
    Unavailable {
        /// The target topic.
        topic: String,
        /// The last client error.
        #[source]
        source: ClientError,
    },
    /// The broker refused the record for a reason retrying won't fix.
    #[error("broker rejected the record for topic {topic}")]
    Rejected {
        /// The target topic.
        topic: String,
        /// The client error.
        #[source]
        source: ClientError,
    },
    /// Danube refuses the topic itself (its name, its dispatch strategy, a name that clashes
    /// with another topic, a missing namespace): nothing can be published to it until the
    /// topic or the configuration changes. `fix` says what to change.
    #[error("Danube refuses topic {topic}: {fix}")]
    TopicRefused {
        /// The refused topic.
        topic: String,
        /// What the operator can do about it.
        fix: &'static str,
        /// The broker's answer.
        #[source]
        source: ClientError,
    },
    /// The record failed validation before publishing.
    #[error("invalid record for topic {topic}: {message}")]
    Invalid {
        /// The target topic.
        topic: String,
        /// What is wrong.
        message: String,
    },
    /// The publisher was closed (the runtime is shutting down).
    #[error("publisher closed")]
    Closed,
    /// The publish did not complete within the publish timeout.
    #[error("publish to {topic} timed out after {timeout:?}")]
    Timeout {
        /// The target topic.
        topic: String,
        /// The configured timeout.
        timeout: Duration,
    },
}

impl PublishError {
    /// The failure kind a dead-lettered record is labelled with (`dlq.error_kind`):
    /// `invalid` when the record failed its schema, `rejected` otherwise.
    pub fn dead_letter_kind(&self) -> &'static str {
        if matches!(self, Self::Invalid { .. }) {
            "invalid"
        } else {
            "rejected"
        }
    }

    /// Whether a later attempt may succeed (the broker, not the record, is the problem).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout { .. } | Self::Closed)
    }
}
