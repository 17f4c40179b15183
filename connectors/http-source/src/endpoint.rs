//! A compiled endpoint: path and topic templates, verifier, limiter, de-dup memory.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::{
    AckMode, AllowedMethod, EndpointConfig, HttpSourceConfig, RateLimitConfig, RoutingKeyConfig, Scheme,
};
use crate::dedup::Dedup;
use crate::registry::DynamicEndpoint;
use crate::server::EndpointMetrics;
use crate::signature::Verifier;
use crate::template::{PathTemplate, TopicTemplate};

/// De-duplication settings of one endpoint.
#[derive(Debug)]
pub struct DedupSpec {
    /// The memory of delivered ids (shared with reservations of requests in flight).
    pub memory: Arc<Dedup>,
    /// Header holding the id (overrides the scheme's own id).
    pub id_header: Option<HeaderName>,
    /// JSON pointer to the id in the body.
    pub id_pointer: Option<String>,
}

/// Where a routing key comes from.
#[derive(Debug, Clone)]
pub enum RoutingKey {
    /// A request header.
    Header(HeaderName),
    /// A JSON pointer into the body.
    JsonPointer(String),
}

/// One endpoint, ready to serve.
#[derive(Debug)]
pub struct Endpoint {
    /// Id in logs and the `http.endpoint` attribute; for a dynamic endpoint its alias
    /// (its id is a credential and stays out of logs and records).
    pub id: String,
    /// For a dynamic endpoint, the `http.path` attribute (`/e/{alias}`) in place of the
    /// request path, which holds the id.
    public_path: Option<String>,
    /// Bounded metric label: the configured id, or `dynamic`.
    pub metric_label: String,
    /// The path pattern.
    pub path: PathTemplate,
    /// The topic pattern.
    pub topic: TopicTemplate,
    /// Distinct topics a templated `topic` may render to, at most.
    pub max_topics: usize,
    /// The topics rendered so far (only for templates with placeholders).
    topics: Mutex<HashSet<String>>,
    /// Accepted methods.
    pub methods: Vec<AllowedMethod>,
    /// The `Allow` header value for 405 answers.
    pub allow: HeaderValue,
    /// When to answer.
    pub ack: AckMode,
    /// The success status in durable mode.
    pub success: StatusCode,
    /// Request verification, if any.
    pub verifier: Option<Arc<Verifier>>,
    /// Headers copied into attributes.
    pub headers: Vec<HeaderName>,
    /// Query parameters copied into attributes.
    pub query: Vec<String>,
    /// Routing key source.
    pub routing_key: Option<RoutingKey>,
    /// Whether the body must be JSON.
    pub validate_json: bool,
    /// Body limit in bytes.
    pub max_body: usize,
    /// Token bucket, if rate limited.
    pub limiter: Option<DefaultDirectRateLimiter>,
    /// De-duplication of delivery ids, if on.
    pub dedup: Option<DedupSpec>,
    /// Metric handles, resolved at the first request.
    pub metrics: OnceLock<EndpointMetrics>,
}

/// Why an endpoint could not be compiled.
#[derive(Debug, thiserror::Error)]
#[error("endpoint {endpoint}: {message}")]
pub struct EndpointError {
    /// The endpoint id.
    pub endpoint: String,
    /// What is wrong.
    pub message: String,
}

/// A templated topic beyond the endpoint's `max_topics` (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this endpoint already publishes to its limit of {max} distinct topics (max_topics); a new topic is refused")]
pub struct TopicLimit {
    /// The endpoint's `max_topics`.
    pub max: usize,
}

impl Endpoint {
    /// Compiles a configured endpoint (already validated).
    pub fn from_config(
        index: usize,
        config: &EndpointConfig,
        global: &HttpSourceConfig,
    ) -> Result<Self, EndpointError> {
        let id = config.id_or(index);
        let fail = |message: String| EndpointError { endpoint: id.clone(), message };
        let path = PathTemplate::parse(&config.path).map_err(fail)?;
        let topic = TopicTemplate::parse(&config.topic).map_err(fail)?;
        let verifier = config.verification.as_ref().map(Verifier::new).transpose().map_err(fail)?.map(Arc::new);
        let headers = config
            .headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| fail(format!("bad header `{h}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let routing_key = routing_key(config.routing_key.as_ref()).map_err(fail)?;
        let dedup = match &config.dedup {
            Some(d) => Some(DedupSpec {
                memory: Arc::new(Dedup::new(d.window, d.max_entries)),
                id_header: d
                    .id_header
                    .as_ref()
                    .map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()))
                    .transpose()
                    .map_err(|_| fail("bad dedup.id_header".into()))?,
                id_pointer: d.id_json_pointer.clone().or_else(|| {
                    let stripe = config.verification.as_ref().is_some_and(|v| v.scheme == Scheme::Stripe);
                    (stripe && d.id_header.is_none()).then(|| "/id".to_string())
                }),
            }),
            None => None,
        };
        let success = StatusCode::from_u16(config.success_status).map_err(|_| fail("bad success_status".into()))?;
        Ok(Self {
            metric_label: id.clone(),
            public_path: None,
            allow: allow_header(&config.methods),
            id,
            path,
            topic,
            max_topics: config.max_topics,
            topics: Mutex::new(HashSet::new()),
            methods: config.methods.clone(),
            ack: config.ack,
            success,
            verifier,
            headers,
            query: config.query.clone(),
            routing_key,
            validate_json: config.validate_json,
            max_body: config.max_body_bytes.unwrap_or(global.max_body_bytes),
            limiter: config.rate_limit.as_ref().map(limiter),
            dedup,
            metrics: OnceLock::new(),
        })
    }

    /// Compiles a dynamic endpoint from the registry (`/e/{id}`).
    pub fn from_dynamic(definition: &DynamicEndpoint, global: &HttpSourceConfig) -> Result<Self, EndpointError> {
        let alias = crate::registry::alias(&definition.id);
        let fail = |message: String| EndpointError { endpoint: alias.clone(), message };
        let verifier = definition
            .verification
            .as_ref()
            .map(|v| Verifier::new(&v.to_config()))
            .transpose()
            .map_err(fail)?
            .map(Arc::new);
        let methods = vec![AllowedMethod::Post, AllowedMethod::Put];
        // Requests reach a dynamic endpoint through the registry (by id); the path template
        // only describes it, with the alias.
        let public_path = format!("/e/{alias}");
        Ok(Self {
            id: alias,
            metric_label: "dynamic".into(),
            path: PathTemplate::literal(&public_path),
            public_path: Some(public_path),
            topic: TopicTemplate::literal(&definition.topic),
            max_topics: 1,
            topics: Mutex::new(HashSet::new()),
            allow: allow_header(&methods),
            methods,
            ack: definition.ack,
            success: if definition.ack == AckMode::Accepted { StatusCode::ACCEPTED } else { StatusCode::OK },
            verifier,
            headers: Vec::new(),
            query: Vec::new(),
            routing_key: None,
            validate_json: false,
            max_body: global.max_body_bytes,
            limiter: global.dynamic.rate_limit.as_ref().map(limiter),
            dedup: None,
            metrics: OnceLock::new(),
        })
    }

    /// Takes one token from the bucket; `Err(wait)` when empty.
    pub fn check_rate(&self) -> Result<(), Duration> {
        match &self.limiter {
            Some(limiter) => {
                limiter.check().map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
            }
            None => Ok(()),
        }
    }

    /// Admits a rendered topic: always for a template without placeholders; otherwise if
    /// the topic was rendered before or fewer than `max_topics` distinct topics were.
    /// Every admitted topic keeps producers open in the publisher, so the set is bounded
    /// against header values nobody signed.
    pub fn admit_topic(&self, topic: &str) -> Result<(), TopicLimit> {
        if self.topic.is_static() {
            return Ok(());
        }
        let Ok(mut topics) = self.topics.lock() else { return Err(TopicLimit { max: self.max_topics }) };
        if topics.contains(topic) {
            return Ok(());
        }
        if topics.len() >= self.max_topics {
            return Err(TopicLimit { max: self.max_topics });
        }
        topics.insert(topic.to_string());
        Ok(())
    }

    /// The `http.path` attribute of a request to `path`: the path itself, or for a dynamic
    /// endpoint `/e/{alias}`.
    pub fn record_path<'a>(&'a self, path: &'a str) -> &'a str {
        self.public_path.as_deref().unwrap_or(path)
    }

    /// The verification scheme's name, or `none`.
    pub fn scheme_name(&self) -> &'static str {
        self.verifier.as_ref().map_or("none", |v| v.scheme().as_str())
    }
}

fn routing_key(config: Option<&RoutingKeyConfig>) -> Result<Option<RoutingKey>, String> {
    let Some(config) = config else { return Ok(None) };
    match (&config.header, &config.json_pointer) {
        (Some(header), _) => HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
            .map(|h| Some(RoutingKey::Header(h)))
            .map_err(|_| format!("bad routing_key.header `{header}`")),
        (None, Some(pointer)) => Ok(Some(RoutingKey::JsonPointer(pointer.clone()))),
        (None, None) => Ok(None),
    }
}

fn limiter(config: &RateLimitConfig) -> DefaultDirectRateLimiter {
    let per_second = NonZeroU32::new(config.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = config.burst.and_then(NonZeroU32::new).unwrap_or(per_second);
    RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst))
}

fn allow_header(methods: &[AllowedMethod]) -> HeaderValue {
    let text = methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ");
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("POST"))
}
