//! The `[connector]` section of the HTTP source: listener, endpoints, limits, admin API.
//!
//! Every field can be set from the environment with the `HTTP_SOURCE_` prefix, `__`
//! separating levels (`HTTP_SOURCE_LISTEN=0.0.0.0:8080`,
//! `HTTP_SOURCE_ENDPOINTS='[{path="/github", topic="/default/github"}]'`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use danube_connect_common::tls::ServerTls;
use danube_connect_core::config::{validate_topic, ConfigError, Validate};
use danube_connect_core::Secret;
use serde::{Deserialize, Serialize};

use crate::template::{PathTemplate, TopicTemplate};

/// The HTTP source's own configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSourceConfig {
    /// Address the webhook server listens on.
    pub listen: SocketAddr,
    /// Serve HTTPS with these PEM files instead of plain HTTP.
    pub tls: Option<ServerTls>,
    /// The configured endpoints; the first whose path matches a request handles it.
    pub endpoints: Vec<EndpointConfig>,
    /// Largest accepted request body in bytes (an endpoint may lower or raise it); larger → 413.
    pub max_body_bytes: usize,
    /// Longest time one request may take, body read and Danube ack included
    /// (reading too slowly → 408, waiting for Danube too long → 503).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests handled at once, at most; beyond it → 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// The `Retry-After` sent with 503 answers.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Records of `accepted` endpoints answered 202 and not yet acked by Danube, at most;
    /// beyond it → 503 with `Retry-After`. These records are lost if the process crashes
    /// (SIGTERM publishes them before exit, within the runtime's `shutdown.timeout`).
    pub accepted_buffer: usize,
    /// Bytes (payload, attributes, key) of those records, at most; beyond it → 503 with
    /// `Retry-After`. At least `max_body_bytes` of every `accepted` endpoint.
    pub accepted_buffer_bytes: usize,
    /// Connection limits of the webhook listener (and of the admin listener):
    /// header-read timeout, idle keep-alive timeout, open connections.
    pub connections: danube_connect_core::ConnectionLimits,
    /// The admin API for dynamic endpoints (disabled without a token).
    pub admin: AdminConfig,
    /// Dynamic endpoints (`/e/{id}`) created through the admin API.
    pub dynamic: DynamicConfig,
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls: None,
            endpoints: Vec::new(),
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
            retry_after: Duration::from_secs(5),
            accepted_buffer: 10_000,
            accepted_buffer_bytes: 64 << 20,
            connections: danube_connect_core::ConnectionLimits::default(),
            admin: AdminConfig::default(),
            dynamic: DynamicConfig::default(),
        }
    }
}

/// HTTP methods an endpoint may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AllowedMethod {
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
}

impl AllowedMethod {
    /// The method name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
        }
    }
}

/// When an endpoint answers its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMode {
    /// Answer only after Danube acked the record (no acknowledged request is ever lost).
    #[default]
    Durable,
    /// Answer 202 once the record is in the bounded in-memory buffer; buffered records
    /// are lost if the process crashes (SIGTERM still drains the buffer, within the
    /// runtime's `shutdown.timeout`).
    Accepted,
}

/// One webhook endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Name used in logs, metrics and the `http.endpoint` attribute; default `endpoint-{index}`.
    #[serde(default)]
    pub id: Option<String>,
    /// Path template: literal segments and `{name}` segments (`/github/{repo}`).
    pub path: String,
    /// Topic template: `/namespace/topic` with `{name}` (a path segment) and
    /// `{header.Header-Name}` placeholders (`/default/github-{header.X-GitHub-Event}`).
    pub topic: String,
    /// Distinct topics a templated `topic` may render to, at most; a request that would
    /// open one more gets 400. Header values are not covered by most signatures, and
    /// every topic keeps producers open, so this bounds what a sender can create.
    #[serde(default = "default_max_topics")]
    pub max_topics: usize,
    /// Accepted methods (`POST`, `PUT`); others get 405 with `Allow`.
    #[serde(default = "default_methods")]
    pub methods: Vec<AllowedMethod>,
    /// `durable` (default): answer after Danube acked; `accepted`: answer 202 on buffering.
    #[serde(default)]
    pub ack: AckMode,
    /// Status sent on success in `durable` mode: 200 (default) or 202.
    #[serde(default = "default_success_status")]
    pub success_status: u16,
    /// How requests are authenticated; none when absent.
    #[serde(default)]
    pub verification: Option<VerificationConfig>,
    /// Request headers copied into attributes (`http.header.{lowercase name}`).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Query parameters copied into attributes (`http.query.{name}`).
    #[serde(default)]
    pub query: Vec<String>,
    /// Where the record's routing key comes from; none when absent.
    #[serde(default)]
    pub routing_key: Option<RoutingKeyConfig>,
    /// Reject bodies that are not JSON with 400.
    #[serde(default)]
    pub validate_json: bool,
    /// This endpoint's body limit in bytes; default the global `max_body_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Token-bucket rate limit; beyond it → 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Answer repeated deliveries of one delivery id within a window without publishing again.
    #[serde(default)]
    pub dedup: Option<DedupConfig>,
}

fn default_max_topics() -> usize {
    64
}

fn default_methods() -> Vec<AllowedMethod> {
    vec![AllowedMethod::Post]
}

fn default_success_status() -> u16 {
    200
}

/// Verification schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// A shared token in a header (`Authorization: Bearer …`, `X-Api-Key: …`).
    Token,
    /// HMAC-SHA256 of the body in a header (hex or base64, optional prefix).
    Hmac,
    /// GitHub: `X-Hub-Signature-256: sha256=<hex HMAC of the body>`.
    Github,
    /// Stripe: `Stripe-Signature: t=…,v1=…` over `{t}.{body}`.
    Stripe,
    /// Slack: `X-Slack-Signature: v0=…` over `v0:{X-Slack-Request-Timestamp}:{body}`.
    Slack,
    /// Standard Webhooks: `webhook-signature: v1,<base64>` over `{id}.{timestamp}.{body}`
    /// (`whsec_` secrets), and `v1a,<base64>` ed25519 (`whpk_` public keys).
    StandardWebhooks,
}

impl Scheme {
    /// The scheme's name as in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Hmac => "hmac",
            Self::Github => "github",
            Self::Stripe => "stripe",
            Self::Slack => "slack",
            Self::StandardWebhooks => "standard_webhooks",
        }
    }

    /// Whether the scheme signs a timestamp (replays outside the tolerance are refused).
    pub fn is_timestamped(self) -> bool {
        matches!(self, Self::Stripe | Self::Slack | Self::StandardWebhooks)
    }
}

/// Signature encodings for the generic `hmac` scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Lowercase or uppercase hex.
    #[default]
    Hex,
    /// Standard base64 (with or without padding).
    Base64,
}

/// How an endpoint authenticates requests. Failing → 401, nothing published.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationConfig {
    /// The scheme.
    pub scheme: Scheme,
    /// Active secrets; a request passes if any one matches (rotation: add the new one,
    /// then remove the old one). `standard_webhooks`: `whsec_…` (HMAC) or `whpk_…`
    /// (ed25519 public key) values.
    pub secrets: Vec<Secret>,
    /// `token`: header holding the token (default `Authorization`); `hmac`: header
    /// holding the signature (required).
    #[serde(default)]
    pub header: Option<String>,
    /// Text before the token or signature (`token` default `Bearer `, `hmac` default
    /// empty, e.g. `sha256=`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// `hmac`: signature encoding, `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
    /// Timestamped schemes: how far the signed timestamp may be from now.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    pub tolerance: Duration,
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

/// Where the routing key comes from: exactly one of the two.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingKeyConfig {
    /// A request header.
    #[serde(default)]
    pub header: Option<String>,
    /// A JSON pointer into the body (`/device/id`); the body must be JSON.
    #[serde(default)]
    pub json_pointer: Option<String>,
}

/// A token bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed in a burst; default `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// De-duplication of repeated delivery ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a delivered id is remembered.
    #[serde(default = "default_dedup_window", with = "humantime_serde")]
    pub window: Duration,
    /// Ids remembered at most (oldest forgotten first).
    #[serde(default = "default_dedup_entries")]
    pub max_entries: usize,
    /// Header holding the delivery id; default per scheme (`X-GitHub-Delivery`,
    /// `webhook-id`).
    #[serde(default)]
    pub id_header: Option<String>,
    /// JSON pointer to the delivery id in the body (Stripe: `/id`).
    #[serde(default)]
    pub id_json_pointer: Option<String>,
}

fn default_dedup_window() -> Duration {
    Duration::from_secs(600)
}

fn default_dedup_entries() -> usize {
    100_000
}

/// The admin API (create, list, revoke dynamic endpoints).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token required on admin requests; the admin API is off without it.
    pub token: Option<Secret>,
    /// Path prefix of the admin API (`{prefix}/endpoints`).
    pub path_prefix: String,
    /// Serve the admin API on this address of its own (plain HTTP: bind it to loopback or
    /// a private network) instead of on the webhook listener.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { token: None, path_prefix: "/admin".into(), listen: None }
    }
}

/// Dynamic endpoints and their shared registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicConfig {
    /// The registry file (JSON lines, append-only). Every instance sharing it (a shared
    /// volume) sees the same endpoints. Required when the admin API is on.
    pub registry_path: Option<PathBuf>,
    /// How often the registry file is re-read for changes made by other instances.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Dynamic endpoints at most.
    pub max_endpoints: usize,
    /// Rate limit applied to each dynamic endpoint.
    pub rate_limit: Option<RateLimitConfig>,
    /// Namespaces dynamic endpoints may publish to.
    pub allowed_namespaces: Vec<String>,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        Self {
            registry_path: None,
            refresh_interval: Duration::from_secs(1),
            max_endpoints: 10_000,
            rate_limit: None,
            allowed_namespaces: vec!["default".into()],
        }
    }
}

impl Validate for HttpSourceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid("connector.max_body_bytes", "must be at least 1"));
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::invalid("connector.max_concurrent_requests", "must be at least 1"));
        }
        if self.accepted_buffer == 0 {
            return Err(ConfigError::invalid("connector.accepted_buffer", "must be at least 1"));
        }
        if self.accepted_buffer_bytes == 0 {
            return Err(ConfigError::invalid("connector.accepted_buffer_bytes", "must be at least 1"));
        }
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let max_body = endpoint.max_body_bytes.unwrap_or(self.max_body_bytes);
            if endpoint.ack == AckMode::Accepted && max_body > self.accepted_buffer_bytes {
                return Err(ConfigError::invalid(
                    "connector.accepted_buffer_bytes",
                    format!(
                        "must be at least the body limit ({max_body} bytes) of the accepted endpoint connector.endpoints[{index}]"
                    ),
                ));
            }
        }
        if self.admin.token.is_some() && self.max_body_bytes > self.accepted_buffer_bytes {
            return Err(ConfigError::invalid(
                "connector.accepted_buffer_bytes",
                "must be at least max_body_bytes (dynamic endpoints may be `accepted`)",
            ));
        }
        self.connections.validate("connector.connections")?;
        if self.admin.listen.is_some() && self.admin.token.is_none() {
            return Err(ConfigError::invalid(
                "connector.admin.listen",
                "needs connector.admin.token (the admin API is off)",
            ));
        }
        if self.admin.listen.is_some_and(|admin| admin == self.listen) {
            return Err(ConfigError::invalid("connector.admin.listen", "must differ from connector.listen"));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::invalid("connector.request_timeout", "must be more than 0s"));
        }
        if let Some(tls) = &self.tls {
            tls.validate("connector.tls").map_err(|e| ConfigError::invalid(e.field.clone(), e.reason()))?;
        }
        if self.endpoints.is_empty() && self.admin.token.is_none() {
            return Err(ConfigError::invalid(
                "connector.endpoints",
                "configure at least one endpoint (or the admin API for dynamic endpoints)",
            ));
        }
        let admin = &self.admin.path_prefix;
        if !admin.starts_with('/') || admin.len() < 2 || admin.ends_with('/') {
            return Err(ConfigError::invalid(
                "connector.admin.path_prefix",
                format!("`{admin}` must start with / and not end with / (e.g. /admin)"),
            ));
        }
        if self.admin.token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err(ConfigError::invalid("connector.admin.token", "must be at least 16 characters"));
        }
        if self.admin.token.is_some() && self.dynamic.registry_path.is_none() {
            return Err(ConfigError::invalid(
                "connector.dynamic.registry_path",
                "is required when the admin API is on (`connector.admin.token` set)",
            ));
        }
        if self.dynamic.refresh_interval.is_zero() {
            return Err(ConfigError::invalid("connector.dynamic.refresh_interval", "must be more than 0s"));
        }
        if let Some(limit) = &self.dynamic.rate_limit {
            limit.validate("connector.dynamic.rate_limit")?;
        }
        let mut ids = HashSet::new();
        let mut paths = HashSet::new();
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let field = format!("connector.endpoints[{index}]");
            endpoint.validate(&field, admin)?;
            if !ids.insert(endpoint.id_or(index)) {
                return Err(ConfigError::invalid(format!("{field}.id"), "is used by another endpoint"));
            }
            if !paths.insert(endpoint.path.clone()) {
                return Err(ConfigError::invalid(format!("{field}.path"), "is used by another endpoint"));
            }
        }
        Ok(())
    }
}

impl EndpointConfig {
    /// The endpoint's id, defaulting to `endpoint-{index}`.
    pub fn id_or(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| format!("endpoint-{index}"))
    }

    fn validate(&self, field: &str, admin_prefix: &str) -> Result<(), ConfigError> {
        if let Some(id) = &self.id {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(ConfigError::invalid(
                    format!("{field}.id"),
                    format!("`{id}` must be non-empty and use only letters, digits, '-', '_' and '.'"),
                ));
            }
        }
        let path = PathTemplate::parse(&self.path)
            .map_err(|message| ConfigError::invalid(format!("{field}.path"), message))?;
        if self.path == "/e" || self.path.starts_with("/e/") {
            return Err(ConfigError::invalid(format!("{field}.path"), "/e/ is reserved for dynamic endpoints"));
        }
        if self.path == admin_prefix || self.path.starts_with(&format!("{admin_prefix}/")) {
            return Err(ConfigError::invalid(
                format!("{field}.path"),
                format!("{admin_prefix} is reserved for the admin API"),
            ));
        }
        let topic = TopicTemplate::parse(&self.topic)
            .map_err(|message| ConfigError::invalid(format!("{field}.topic"), message))?;
        for name in topic.path_names() {
            if !path.names().any(|n| n == name) {
                return Err(ConfigError::invalid(
                    format!("{field}.topic"),
                    format!("`{{{name}}}` is not a segment of the path `{}`", self.path),
                ));
            }
        }
        validate_topic(&format!("{field}.topic"), &topic.example())?;
        if self.max_topics == 0 {
            return Err(ConfigError::invalid(format!("{field}.max_topics"), "must be at least 1"));
        }
        if self.methods.is_empty() {
            return Err(ConfigError::invalid(format!("{field}.methods"), "list at least one of POST, PUT"));
        }
        if ![200, 202].contains(&self.success_status) {
            return Err(ConfigError::invalid(format!("{field}.success_status"), "must be 200 or 202"));
        }
        for (i, header) in self.headers.iter().enumerate() {
            if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    format!("{field}.headers[{i}]"),
                    format!("`{header}` is not a header name"),
                ));
            }
        }
        if let Some(verification) = &self.verification {
            verification.validate(&format!("{field}.verification"))?;
        }
        if let Some(key) = &self.routing_key {
            match (&key.header, &key.json_pointer) {
                (Some(header), None) => {
                    if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                        return Err(ConfigError::invalid(
                            format!("{field}.routing_key.header"),
                            "is not a header name",
                        ));
                    }
                }
                (None, Some(pointer)) => {
                    if !pointer.starts_with('/') {
                        return Err(ConfigError::invalid(
                            format!("{field}.routing_key.json_pointer"),
                            "must start with / (e.g. /device/id)",
                        ));
                    }
                }
                _ => {
                    return Err(ConfigError::invalid(
                        format!("{field}.routing_key"),
                        "set exactly one of `header` or `json_pointer`",
                    ))
                }
            }
        }
        if self.max_body_bytes == Some(0) {
            return Err(ConfigError::invalid(format!("{field}.max_body_bytes"), "must be at least 1"));
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate(&format!("{field}.rate_limit"))?;
        }
        if let Some(dedup) = &self.dedup {
            if dedup.window.is_zero() {
                return Err(ConfigError::invalid(format!("{field}.dedup.window"), "must be more than 0s"));
            }
            if dedup.max_entries == 0 {
                return Err(ConfigError::invalid(format!("{field}.dedup.max_entries"), "must be at least 1"));
            }
            let scheme_default = self
                .verification
                .as_ref()
                .is_some_and(|v| matches!(v.scheme, Scheme::Github | Scheme::StandardWebhooks | Scheme::Stripe));
            if dedup.id_header.is_none() && dedup.id_json_pointer.is_none() && !scheme_default {
                return Err(ConfigError::invalid(
                    format!("{field}.dedup.id_header"),
                    "set `id_header` or `id_json_pointer` (only github, stripe and standard_webhooks have a default)",
                ));
            }
        }
        Ok(())
    }
}

impl RateLimitConfig {
    fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.per_second == 0 {
            return Err(ConfigError::invalid(format!("{field}.per_second"), "must be at least 1"));
        }
        if self.burst == Some(0) {
            return Err(ConfigError::invalid(format!("{field}.burst"), "must be at least 1"));
        }
        Ok(())
    }
}

impl VerificationConfig {
    /// Checks the scheme's settings; `field` is the dotted path of this section.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.secrets.is_empty() {
            return Err(ConfigError::invalid(format!("{field}.secrets"), "list at least one secret"));
        }
        for (i, secret) in self.secrets.iter().enumerate() {
            if secret.expose().is_empty() {
                return Err(ConfigError::invalid(format!("{field}.secrets[{i}]"), "must not be empty"));
            }
            if self.scheme == Scheme::StandardWebhooks {
                crate::signature::standard_webhooks_key(secret.expose())
                    .map_err(|message| ConfigError::invalid(format!("{field}.secrets[{i}]"), message))?;
            }
        }
        match self.scheme {
            Scheme::Hmac if self.header.is_none() => {
                return Err(ConfigError::invalid(
                    format!("{field}.header"),
                    "the hmac scheme needs the signature header",
                ));
            }
            Scheme::Token | Scheme::Hmac => {}
            _ if self.header.is_some() || self.prefix.is_some() => {
                return Err(ConfigError::invalid(
                    format!("{field}.header"),
                    format!("the {} scheme has fixed headers; remove `header`/`prefix`", self.scheme.as_str()),
                ));
            }
            _ => {}
        }
        if let Some(header) = &self.header {
            if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    format!("{field}.header"),
                    format!("`{header}` is not a header name"),
                ));
            }
        }
        if self.scheme.is_timestamped() && self.tolerance.is_zero() {
            return Err(ConfigError::invalid(format!("{field}.tolerance"), "must be more than 0s"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(path: &str, topic: &str) -> EndpointConfig {
        serde_json::from_value(serde_json::json!({ "path": path, "topic": topic })).expect("endpoint")
    }

    fn config(endpoints: Vec<EndpointConfig>) -> HttpSourceConfig {
        HttpSourceConfig { endpoints, ..HttpSourceConfig::default() }
    }

    fn error_of(config: &HttpSourceConfig) -> String {
        config.validate().expect_err("must be invalid").to_string()
    }

    #[test]
    fn valid_endpoint_passes() {
        let c = config(vec![endpoint("/github/{repo}", "/default/gh-{repo}-{header.X-GitHub-Event}")]);
        c.validate().expect("valid");
    }

    #[test]
    fn path_without_slash_names_the_field() {
        let text = error_of(&config(vec![endpoint("github", "/default/gh")]));
        assert!(text.contains("connector.endpoints[0].path"), "{text}");
    }

    #[test]
    fn topic_placeholder_not_in_path_names_the_field() {
        let text = error_of(&config(vec![endpoint("/a", "/default/{repo}")]));
        assert!(text.contains("connector.endpoints[0].topic") && text.contains("repo"), "{text}");
    }

    #[test]
    fn topic_without_namespace_names_the_field() {
        let text = error_of(&config(vec![endpoint("/a", "topic")]));
        assert!(text.contains("connector.endpoints[0].topic"), "{text}");
    }

    #[test]
    fn duplicate_paths_are_refused() {
        let text = error_of(&config(vec![endpoint("/a", "/default/a"), endpoint("/a", "/default/b")]));
        assert!(text.contains("connector.endpoints[1].path"), "{text}");
    }

    #[test]
    fn hmac_without_header_names_the_field() {
        let mut e = endpoint("/a", "/default/a");
        e.verification = Some(VerificationConfig {
            scheme: Scheme::Hmac,
            secrets: vec![Secret::new("s")],
            header: None,
            prefix: None,
            encoding: Encoding::Hex,
            tolerance: default_tolerance(),
        });
        let text = error_of(&config(vec![e]));
        assert!(text.contains("connector.endpoints[0].verification.header"), "{text}");
    }

    #[test]
    fn standard_webhooks_secret_must_be_base64() {
        let mut e = endpoint("/a", "/default/a");
        e.verification = Some(VerificationConfig {
            scheme: Scheme::StandardWebhooks,
            secrets: vec![Secret::new("whsec_!!!")],
            header: None,
            prefix: None,
            encoding: Encoding::Hex,
            tolerance: default_tolerance(),
        });
        let text = error_of(&config(vec![e]));
        assert!(text.contains("connector.endpoints[0].verification.secrets[0]"), "{text}");
    }

    #[test]
    fn admin_needs_a_registry() {
        let mut c = config(vec![]);
        c.admin.token = Some(Secret::new("0123456789abcdef"));
        let text = error_of(&c);
        assert!(text.contains("connector.dynamic.registry_path"), "{text}");
    }

    #[test]
    fn max_topics_defaults_to_64_and_must_be_positive() {
        assert_eq!(endpoint("/a", "/default/{a}").max_topics, 64);
        let mut e = endpoint("/a/{a}", "/default/{a}");
        e.max_topics = 0;
        let text = error_of(&config(vec![e]));
        assert!(text.contains("connector.endpoints[0].max_topics"), "{text}");
    }

    #[test]
    fn new_limits_name_their_fields() {
        let mut c = config(vec![endpoint("/a", "/default/a")]);
        c.connections.idle_timeout = Duration::from_secs(60);
        assert!(error_of(&c).contains("connector.connections.idle_timeout"));
        let mut c = config(vec![endpoint("/a", "/default/a")]);
        c.admin.listen = Some(SocketAddr::from(([127, 0, 0, 1], 9999)));
        assert!(error_of(&c).contains("connector.admin.listen"));
        let mut e = endpoint("/a", "/default/a");
        e.ack = AckMode::Accepted;
        let mut c = config(vec![e]);
        c.accepted_buffer_bytes = 1000;
        assert!(error_of(&c).contains("connector.accepted_buffer_bytes"));
    }

    #[test]
    fn no_endpoints_and_no_admin_is_refused() {
        let text = error_of(&config(vec![]));
        assert!(text.contains("connector.endpoints"), "{text}");
    }
}
