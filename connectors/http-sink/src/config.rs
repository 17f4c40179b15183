//! The `[connector]` section of the HTTP sink.
//!
//! ```toml
//! [connector]
//! url = "https://hooks.example.com/{topic_name}/{attr.tenant}"
//! method = "POST"
//! timeout = "10s"
//! headers = { "x-team" = "data" }
//!
//! [connector.auth]
//! type = "bearer"
//! token = { env = "HOOK_TOKEN" }
//!
//! [connector.body]
//! mode = "envelope"
//!
//! [connector.signing]
//! webhook_secret = { env = "WEBHOOK_SECRET" }   # whsec_...
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use danube_connect_common::tls::ClientTls;
use danube_connect_core::config::{ConfigError, RuntimeConfig, Validate};
use danube_connect_core::Secret;
use serde::{Deserialize, Serialize};

use crate::outcome::StatusPattern;
use crate::template::UrlTemplate;

/// The HTTP sink's own settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSinkConfig {
    /// Target URL; may hold placeholders filled per record: `{topic}` (`default/orders`),
    /// `{namespace}`, `{topic_name}`, `{partition}`, `{offset}`, `{key}` and `{attr.NAME}`
    /// (a record attribute). Values are percent-encoded. Must be `http://` or `https://`.
    /// A string, `{ env = "VAR" }` or `{ file = "/path" }`; shown with its path and query
    /// redacted in logs, errors and `--check` (they may hold a secret).
    pub url: TargetUrl,
    /// HTTP method: `POST` (default), `PUT` or `PATCH`.
    pub method: HttpMethod,
    /// Static headers added to every request. Values are a string, `{ env = "VAR" }` or
    /// `{ file = "/path" }`, and redacted in `--check` and logs (they often carry a key).
    pub headers: BTreeMap<String, Secret>,
    /// Authentication.
    pub auth: Option<AuthConfig>,
    /// Time allowed for one whole request (connect, send, response head and body).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time allowed to open a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Requests in flight at most, over every topic and lane of this connector.
    pub max_in_flight: usize,
    /// Whether to follow redirects (up to 5). Off by default: a 3xx is then a permanent failure.
    pub follow_redirects: bool,
    /// TLS options for `https://` targets.
    pub tls: ClientTls,
    /// What the request body holds.
    pub body: BodyConfig,
    /// Names of the delivery headers.
    pub delivery: DeliveryHeadersConfig,
    /// Standard Webhooks signing.
    pub signing: SigningConfig,
    /// An optional generic HMAC signature header over the body.
    pub hmac: Option<HmacConfig>,
    /// Which statuses are success and which are worth retrying.
    pub outcomes: OutcomesConfig,
    /// How `Retry-After` is honoured.
    pub retry_after: RetryAfterConfig,
    /// Per-endpoint circuit breaker.
    pub circuit_breaker: CircuitBreakerConfig,
    /// SSRF guard opt-out: also deliver to private, loopback, link-local, metadata and
    /// other internal addresses. Off by default: such a target is refused (the record goes
    /// to the failure policy), checked on the address actually connected to.
    pub allow_private_targets: bool,
    /// Internal networks (CIDR, e.g. `10.20.0.0/16`, `fd12::/64`) that may be reached
    /// while the rest of the SSRF guard stays on.
    pub allowed_target_networks: Vec<String>,
    /// An HTTP(S) proxy for every request (`http://proxy:3128`; a string,
    /// `{ env = "VAR" }` or `{ file = "/path" }`, redacted in output). The SSRF guard then
    /// checks the target (resolved here), not the proxy. Unset: direct connections;
    /// `HTTP_PROXY` and the like are ignored.
    pub proxy: Option<Secret>,
    /// No longer used: the runtime counts delivery attempts (for the last 100,000 records
    /// of each topic). Still accepted so that existing configurations load; a value other
    /// than the default gets a warning at start.
    pub attempts_tracked: usize,
}

impl Default for HttpSinkConfig {
    fn default() -> Self {
        Self {
            url: TargetUrl::default(),
            method: HttpMethod::Post,
            headers: BTreeMap::new(),
            auth: None,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            follow_redirects: false,
            tls: ClientTls::default(),
            body: BodyConfig::default(),
            delivery: DeliveryHeadersConfig::default(),
            signing: SigningConfig::default(),
            hmac: None,
            outcomes: OutcomesConfig::default(),
            retry_after: RetryAfterConfig::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
            allow_private_targets: false,
            allowed_target_networks: Vec::new(),
            proxy: None,
            attempts_tracked: 100_000,
        }
    }
}

/// The configured target URL (template). `Debug`, `Display` and `Serialize` (the `--check`
/// output) show it redacted by [`redact_url`](crate::template::redact_url): scheme and
/// host, not the path, query or user info, which may hold a secret. Read from a string,
/// `{ env = "VAR" }` or `{ file = "/path" }`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TargetUrl(String);

impl TargetUrl {
    /// The URL as configured; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no URL is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for TargetUrl {
    fn from(url: &str) -> Self {
        Self(url.to_string())
    }
}

impl From<String> for TargetUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl std::fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::template::redact_url(&self.0))
    }
}

impl std::fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::template::redact_url(&self.0))
    }
}

impl Serialize for TargetUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&crate::template::redact_url(&self.0))
    }
}

impl<'de> Deserialize<'de> for TargetUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Secret::deserialize(deserializer).map(|secret| Self(secret.expose().to_string()))
    }
}

/// Methods a delivery may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
}

impl HttpMethod {
    /// The reqwest method.
    pub fn as_reqwest(self) -> reqwest::Method {
        match self {
            Self::Post => reqwest::Method::POST,
            Self::Put => reqwest::Method::PUT,
            Self::Patch => reqwest::Method::PATCH,
        }
    }
}

/// Authentication sent with every request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token (a string, `{ env = "VAR" }` or `{ file = "/path" }`).
        token: Secret,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// The user name.
        username: String,
        /// The password (a string, `{ env = "VAR" }` or `{ file = "/path" }`).
        password: Secret,
    },
    /// A custom header, e.g. `x-api-key`.
    Header {
        /// The header name.
        name: String,
        /// The header value (a string, `{ env = "VAR" }` or `{ file = "/path" }`).
        value: Secret,
    },
}

/// How the request body is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyMode {
    /// The payload as is, one request per record, with its content type.
    Raw,
    /// One request per record: a JSON object with the payload and its metadata.
    Envelope,
    /// One request per record: the record decoded as JSON (`application/json`), from
    /// [`SinkRecord::json`](danube_connect_core::SinkRecord::json): the value decoded with
    /// its registry schema, else the payload parsed as JSON. A record that does not decode
    /// is dead-lettered.
    Json,
    /// One request per batch (`sink.batch.*` bounds it): a JSON array or NDJSON.
    Batch,
}

/// How a batch body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchFormat {
    /// `[item, item, ...]`, `application/json`.
    JsonArray,
    /// One item per line, `application/x-ndjson`.
    Ndjson,
}

/// What one item of a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchItem {
    /// The JSON envelope (payload and metadata).
    Envelope,
    /// The payload only (JSON if it parses, else a string, else base64).
    Payload,
    /// The payload decoded as JSON; a record that does not decode is dead-lettered and
    /// the rest of the batch delivered.
    Json,
}

/// Body settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BodyConfig {
    /// `raw` (default), `envelope`, `json` or `batch`.
    pub mode: BodyMode,
    /// Content type of a raw body when the record has no `content-type` attribute.
    pub content_type: String,
    /// Batch layout: `json_array` (default) or `ndjson`.
    pub batch_format: BatchFormat,
    /// Batch item: `envelope` (default), `payload` or `json`.
    pub batch_item: BatchItem,
}

impl Default for BodyConfig {
    fn default() -> Self {
        Self {
            mode: BodyMode::Raw,
            content_type: "application/octet-stream".into(),
            batch_format: BatchFormat::JsonArray,
            batch_item: BatchItem::Envelope,
        }
    }
}

/// Names of the headers that let receivers de-duplicate and count attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryHeadersConfig {
    /// Header carrying the stable message id (`{partition_topic}:{offset}`; for a batch a
    /// hash of its records' ids).
    pub message_id_header: String,
    /// Header carrying the delivery attempt number (1 on the first try).
    pub attempt_header: String,
}

impl Default for DeliveryHeadersConfig {
    fn default() -> Self {
        Self { message_id_header: "danube-message-id".into(), attempt_header: "danube-delivery-attempt".into() }
    }
}

/// Standard Webhooks (<https://www.standardwebhooks.com>) signing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// `whsec_` followed by the base64 key; when set, every request carries `webhook-id`,
    /// `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256>`.
    pub webhook_secret: Option<Secret>,
}

/// Hash of the generic HMAC header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

/// Encoding of the generic HMAC header's digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacEncoding {
    /// Lower-case hex.
    Hex,
    /// Standard base64.
    Base64,
}

/// A generic HMAC signature of the body, e.g. `x-signature: sha256=<hex>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    /// Header name.
    pub header: String,
    /// The key (a string, `{ env = "VAR" }` or `{ file = "/path" }`).
    pub secret: Secret,
    /// `sha256` (default) or `sha512`.
    #[serde(default = "default_hmac_algorithm")]
    pub algorithm: HmacAlgorithm,
    /// `hex` (default) or `base64`.
    #[serde(default = "default_hmac_encoding")]
    pub encoding: HmacEncoding,
    /// Text put before the digest, e.g. `sha256=`.
    #[serde(default)]
    pub prefix: String,
}

fn default_hmac_algorithm() -> HmacAlgorithm {
    HmacAlgorithm::Sha256
}

fn default_hmac_encoding() -> HmacEncoding {
    HmacEncoding::Hex
}

/// Outcome classes by status. A status in `success` acks the record; one in `retryable`
/// is retried (then the failure policy); any other is permanent (dead-lettered at once).
/// Network errors and timeouts are always retryable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesConfig {
    /// Statuses meaning delivered: exact codes (`"204"`) or classes (`"2xx"`).
    pub success: Vec<String>,
    /// Statuses worth retrying: exact codes or classes.
    pub retryable: Vec<String>,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        Self { success: vec!["2xx".into()], retryable: vec!["408".into(), "429".into(), "5xx".into()] }
    }
}

/// `Retry-After` handling (seconds or HTTP-date).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryAfterConfig {
    /// Longer hints are cut to this.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Hints longer than this are not waited for in process: the record is handed back to
    /// the broker (nack with that delay), so long waits pin no memory. In ordered mode
    /// (`sink.ordering = "key"`) a record with a routing key waits in process instead.
    #[serde(with = "humantime_serde")]
    pub defer_threshold: Duration,
    /// How many times one record may be deferred for a `Retry-After` past
    /// `defer_threshold` (counted in memory across redeliveries, like the attempt number).
    /// Beyond it the hint is handled like a short one: retried in process within
    /// `retry.max_attempts` / `retry.max_elapsed`, then `failure.policy` (dead-letter by
    /// default). Unset (the default): no limit, a receiver that always answers with a long
    /// `Retry-After` keeps the record cycling. Deferrals for an open circuit never count.
    pub max_defers: Option<u32>,
}

impl Default for RetryAfterConfig {
    fn default() -> Self {
        Self { max: Duration::from_secs(60), defer_threshold: Duration::from_secs(10), max_defers: None }
    }
}

/// Per-endpoint (scheme, host, port) circuit breaker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Whether the breaker is used.
    pub enabled: bool,
    /// Consecutive retryable failures (network, timeout, 408, 5xx; not 429) that open it.
    pub failure_threshold: u32,
    /// How long it stays open before one probe request is let through.
    #[serde(with = "humantime_serde")]
    pub cool_down: Duration,
    /// Endpoints tracked at most (only those with recent failures take room). Beyond it a
    /// closed entry is forgotten first, then an open circuit (which then lets requests
    /// through until it opens again). Bounds memory when a URL template spreads records
    /// over many hosts.
    pub max_endpoints: usize,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            cool_down: Duration::from_secs(10),
            max_endpoints: crate::breaker::DEFAULT_MAX_ENDPOINTS,
        }
    }
}

impl Validate for HttpSinkConfig {
    fn validate_with_runtime(&self, runtime: &RuntimeConfig) -> Result<(), ConfigError> {
        runtime.require_sink_topics()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.url.is_empty() {
            return Err(ConfigError::invalid("connector.url", "is required (e.g. https://hooks.example.com/events)"));
        }
        let template =
            UrlTemplate::parse(self.url.expose()).map_err(|e| ConfigError::invalid("connector.url", e.to_string()))?;
        let policy = self.target_policy()?;
        if let Some(host) = template.static_host() {
            policy.check_host(&host).map_err(|e| ConfigError::invalid("connector.url", e.to_string()))?;
        }
        if let Some(proxy) = &self.proxy {
            let url = url::Url::parse(proxy.expose())
                .map_err(|e| ConfigError::invalid("connector.proxy", format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(ConfigError::invalid("connector.proxy", "must be http://host:port or https://host:port"));
            }
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::invalid(format!("connector.headers.{name}"), "is not a valid header name"));
            }
            if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
                return Err(ConfigError::invalid(format!("connector.headers.{name}"), "is not a valid header value"));
            }
        }
        if let Some(AuthConfig::Header { name, .. }) = &self.auth {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    "connector.auth.name",
                    format!("`{name}` is not a valid header name"),
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid("connector.timeout", "must be above zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::invalid("connector.connect_timeout", "must be above zero"));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::invalid("connector.max_in_flight", "must be at least 1"));
        }
        self.tls.validate("connector.tls").map_err(|e| ConfigError::invalid(e.field.clone(), e.reason()))?;
        if self.body.content_type.is_empty() || reqwest::header::HeaderValue::from_str(&self.body.content_type).is_err()
        {
            return Err(ConfigError::invalid("connector.body.content_type", "must be a valid content type"));
        }
        for (field, name) in [
            ("connector.delivery.message_id_header", &self.delivery.message_id_header),
            ("connector.delivery.attempt_header", &self.delivery.attempt_header),
        ] {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::invalid(field, format!("`{name}` is not a valid header name")));
            }
        }
        if let Some(secret) = &self.signing.webhook_secret {
            decode_webhook_secret(secret)
                .map_err(|message| ConfigError::invalid("connector.signing.webhook_secret", message))?;
        }
        if let Some(hmac) = &self.hmac {
            if reqwest::header::HeaderName::from_bytes(hmac.header.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    "connector.hmac.header",
                    format!("`{}` is not a valid header name", hmac.header),
                ));
            }
            if hmac.secret.expose().is_empty() {
                return Err(ConfigError::invalid("connector.hmac.secret", "must not be empty"));
            }
        }
        for (field, list) in [
            ("connector.outcomes.success", &self.outcomes.success),
            ("connector.outcomes.retryable", &self.outcomes.retryable),
        ] {
            for (i, pattern) in list.iter().enumerate() {
                StatusPattern::parse(pattern)
                    .map_err(|message| ConfigError::invalid(format!("{field}[{i}]"), message))?;
            }
        }
        if self.outcomes.success.is_empty() {
            return Err(ConfigError::invalid(
                "connector.outcomes.success",
                "must list at least one status (e.g. \"2xx\")",
            ));
        }
        if self.retry_after.defer_threshold > self.retry_after.max {
            return Err(ConfigError::invalid(
                "connector.retry_after.defer_threshold",
                "must not exceed `retry_after.max`",
            ));
        }
        if self.circuit_breaker.enabled {
            if self.circuit_breaker.failure_threshold == 0 {
                return Err(ConfigError::invalid("connector.circuit_breaker.failure_threshold", "must be at least 1"));
            }
            if self.circuit_breaker.cool_down.is_zero() {
                return Err(ConfigError::invalid("connector.circuit_breaker.cool_down", "must be above zero"));
            }
            if self.circuit_breaker.max_endpoints == 0 {
                return Err(ConfigError::invalid("connector.circuit_breaker.max_endpoints", "must be at least 1"));
            }
        }
        if self.attempts_tracked == 0 {
            return Err(ConfigError::invalid("connector.attempts_tracked", "must be at least 1"));
        }
        Ok(())
    }
}

impl HttpSinkConfig {
    /// The SSRF guard's policy from `allow_private_targets` and `allowed_target_networks`.
    pub fn target_policy(&self) -> Result<crate::ssrf::TargetPolicy, ConfigError> {
        let networks = self
            .allowed_target_networks
            .iter()
            .enumerate()
            .map(|(i, net)| {
                net.parse::<ipnet::IpNet>().map_err(|e| {
                    ConfigError::invalid(
                        format!("connector.allowed_target_networks[{i}]"),
                        format!("`{net}` is not a network in CIDR form (e.g. 10.20.0.0/16): {e}"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::ssrf::TargetPolicy::new(self.allow_private_targets, networks))
    }

    /// Settings that are valid but work against each other given the runtime's retry
    /// policy, one sentence each (the binary logs them as warnings at start):
    ///
    /// - `circuit_breaker.failure_threshold` above `retry.max_attempts`: a record failing
    ///   alone uses up its attempts before the circuit can open, and is dead-lettered
    ///   (`failure.policy`) instead of handed back.
    /// - `timeout` × (`failure_threshold` − 1) not below `retry.max_elapsed`: against a
    ///   receiver that hangs, the retries of one record run out of time before the circuit
    ///   can open.
    pub fn warnings(&self, retry: &danube_connect_core::config::RetryConfig) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.attempts_tracked != Self::default().attempts_tracked {
            warnings.push(format!(
                "connector.attempts_tracked ({}) is no longer used: the runtime counts delivery attempts",
                self.attempts_tracked
            ));
        }
        if !self.circuit_breaker.enabled {
            return warnings;
        }
        let threshold = self.circuit_breaker.failure_threshold;
        if usize::try_from(threshold).is_ok_and(|t| t > retry.max_attempts) {
            warnings.push(format!(
                "connector.circuit_breaker.failure_threshold ({threshold}) is above retry.max_attempts ({}): \
                 a record failing alone runs out of attempts and follows failure.policy (dead-letter by default) \
                 before the circuit opens",
                retry.max_attempts
            ));
        }
        let hanging = self.timeout.saturating_mul(threshold.saturating_sub(1));
        if hanging >= retry.max_elapsed {
            warnings.push(format!(
                "connector.timeout ({:?}) x (failure_threshold - 1) = {hanging:?} is not below retry.max_elapsed ({:?}): \
                 against a receiver that hangs, a record runs out of retry time and follows failure.policy \
                 before the circuit opens",
                self.timeout, retry.max_elapsed
            ));
        }
        warnings
    }
}

/// Decodes a Standard Webhooks secret: `whsec_` followed by the base64 key.
pub fn decode_webhook_secret(secret: &Secret) -> Result<Vec<u8>, String> {
    danube_connect_common::webhook::secret_key(secret.expose()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> HttpSinkConfig {
        HttpSinkConfig { url: "http://127.0.0.1:8080/hook".into(), allow_private_targets: true, ..Default::default() }
    }

    fn field_of(config: &HttpSinkConfig) -> String {
        match config.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_url_is_valid() {
        assert!(valid().validate().is_ok());
    }

    #[test]
    fn missing_or_bad_url_names_the_field() {
        assert_eq!(field_of(&HttpSinkConfig::default()), "connector.url");
        assert_eq!(field_of(&HttpSinkConfig { url: "ftp://x/y".into(), ..valid() }), "connector.url");
        assert_eq!(field_of(&HttpSinkConfig { url: "http://".into(), ..valid() }), "connector.url");
        assert_eq!(field_of(&HttpSinkConfig { url: "http://h/{nope}".into(), ..valid() }), "connector.url");
    }

    #[test]
    fn ssrf_guard_refuses_internal_static_targets_at_start_by_default() {
        let strict = |url: &str| HttpSinkConfig { url: url.into(), allow_private_targets: false, ..valid() };
        assert_eq!(field_of(&strict("http://127.0.0.1:8080/hook")), "connector.url");
        assert_eq!(field_of(&strict("http://localhost:1/x")), "connector.url");
        assert_eq!(field_of(&strict("http://169.254.169.254/latest/meta-data/")), "connector.url");
        assert!(strict("https://93.184.215.14/x").validate().is_ok());
        assert!(strict("http://{attr.host}/x").validate().is_ok(), "templated hosts are checked per record");
        let listed =
            HttpSinkConfig { allowed_target_networks: vec!["127.0.0.0/8".into()], ..strict("http://127.0.0.1/") };
        assert!(listed.validate().is_ok());
        let bad = HttpSinkConfig { allowed_target_networks: vec!["10.0.0.0/33".into()], ..strict("http://h/") };
        assert_eq!(field_of(&bad), "connector.allowed_target_networks[0]");
        let proxy = HttpSinkConfig { proxy: Some(Secret::new("socks9://p")), ..valid() };
        assert_eq!(field_of(&proxy), "connector.proxy");
    }

    #[test]
    fn static_header_values_are_redacted_in_check_output() {
        let mut config = valid();
        config.headers.insert("x-api-key".into(), Secret::new("hdr-s3cret"));
        let serialized = serde_json::to_string(&config).expect("serialize");
        assert!(serialized.contains("x-api-key") && !serialized.contains("hdr-s3cret"), "{serialized}");
        assert!(!format!("{config:?}").contains("hdr-s3cret"));
    }

    #[test]
    fn webhook_secret_must_be_whsec_base64() {
        let mut config = valid();
        config.signing.webhook_secret = Some(Secret::new("plain"));
        assert_eq!(field_of(&config), "connector.signing.webhook_secret");
        config.signing.webhook_secret = Some(Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert!(config.validate().is_ok());
    }

    #[test]
    fn bad_status_pattern_names_the_index() {
        let mut config = valid();
        config.outcomes.retryable = vec!["503".into(), "9xx".into()];
        assert_eq!(field_of(&config), "connector.outcomes.retryable[1]");
    }

    #[test]
    fn bad_header_names_the_header() {
        let mut config = valid();
        config.headers.insert("bad header".into(), Secret::new("v"));
        assert_eq!(field_of(&config), "connector.headers.bad header");
    }

    #[test]
    fn breaker_settings_that_retries_would_outrun_are_warned_about() {
        use danube_connect_core::config::RetryConfig;
        let retry = RetryConfig::default();
        assert!(valid().warnings(&retry).is_empty(), "the defaults agree: {:?}", valid().warnings(&retry));
        let mut config = valid();
        config.circuit_breaker.failure_threshold = 8;
        let warnings = config.warnings(&RetryConfig { max_elapsed: Duration::from_secs(600), ..retry.clone() });
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("failure_threshold (8)") && warnings[0].contains("max_attempts (5)"),
            "{warnings:?}"
        );
        let mut config = valid();
        config.timeout = Duration::from_secs(30);
        let warnings = config.warnings(&retry);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("connector.timeout") && warnings[0].contains("hangs"), "{warnings:?}");
        config.circuit_breaker.enabled = false;
        assert!(config.warnings(&retry).is_empty());
    }

    #[test]
    fn the_url_is_redacted_in_debug_display_and_serialized_output_but_read_from_env() {
        let config =
            HttpSinkConfig { url: "https://hooks.slack.com/services/T0/B0/s3cr3tPath?k=s3cr3tQ".into(), ..valid() };
        let serialized = serde_json::to_string(&config).expect("serialize");
        for text in [format!("{config:?}"), config.url.to_string(), serialized] {
            assert!(text.contains("hooks.slack.com") && !text.contains("s3cr3t"), "{text}");
        }
        assert!(config.url.expose().ends_with("?k=s3cr3tQ"));
        let from_json: TargetUrl = serde_json::from_str(r#""http://h/x""#).expect("plain string");
        assert_eq!(from_json.expose(), "http://h/x");
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), "http://h/from-file\n").expect("write");
        let json = format!(r#"{{"file": {:?}}}"#, file.path().display().to_string());
        let read: TargetUrl = serde_json::from_str(&json).expect("from a file");
        assert_eq!(read.expose(), "http://h/from-file");
    }

    #[test]
    fn client_cert_needs_key() {
        let mut config = valid();
        config.tls.client_cert = Some("/etc/hostname".into());
        assert_eq!(field_of(&config), "connector.tls.client_cert");
    }
}
