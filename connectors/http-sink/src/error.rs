//! The sink's errors: why it could not be built ([`BuildError`]), why one delivery failed
//! ([`DeliveryError`]), and how a failure is handed to the runtime ([`Failure`]).

use std::sync::Arc;
use std::time::Duration;

use danube_connect_core::ConnectorError;

use crate::body::BodyError;
use crate::ssrf::SsrfError;
use crate::template::{RenderError, TemplateError};

/// Why the sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The URL template is not usable.
    #[error("connector.url: not a usable URL template")]
    Template(#[from] TemplateError),
    /// `connector.tls` is not usable (the error names the field and the file).
    #[error("TLS")]
    Tls(#[from] danube_connect_common::tls::TlsError),
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
    Metrics(#[source] danube_connect_core::MetricsError),
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
pub(crate) enum Failure {
    Retry { after: Option<Duration>, error: Arc<DeliveryError> },
    Permanent(Arc<DeliveryError>),
    Defer { delay: Duration, message: String },
}

impl Failure {
    pub(crate) fn to_error(&self) -> ConnectorError {
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
    pub(crate) fn held_back(&self) -> ConnectorError {
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
