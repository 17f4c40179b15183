//! Delivery settings: `[retry]`, `[failure]`, `[source]` and `[sink]`.

use super::*;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// Needs `danube.broker_metrics_url` or `danube.broker_admin_url`. Default 20 s
    /// (detection then fires within about 24 s of the cursor stopping).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// When a stall is detected and `danube.broker_admin_url` is set, ask the cluster to move
    /// the stalled topic (or partition) to another broker (`UnloadTopic`): the new owner's
    /// dispatcher starts at the subscription's stored cursor and delivers what the old one
    /// skipped. It needs a cluster of at least 2 brokers whose storage lets another broker
    /// read the topic's history (`shared_fs` or `object_store`); see
    /// `docs/running-on-danube.md`. Default true.
    pub stall_recovery: bool,
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
            stall_recovery: true,
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
