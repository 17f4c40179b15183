//! What client and embedded mode share: turning an MQTT message into a Danube record,
//! the payload check, publishing and dead-lettering.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use danube_connect_core::failure::{Delivery, FailureHandler, Handback, Undeliverable};
use danube_connect_core::CounterVec;
use danube_connect_core::MetricsError;
use danube_connect_core::{Context, SourceRecord};
use tracing::{debug, warn};

use crate::config::PayloadFormat;
use crate::mapping::Router;

/// Attribute holding the MQTT topic a message was published to.
pub const ATTR_TOPIC: &str = "mqtt.topic";
/// Attribute holding the QoS the message was delivered with (`0` or `1`).
pub const ATTR_QOS: &str = "mqtt.qos";
/// Attribute holding the retain flag (`true` / `false`).
pub const ATTR_RETAIN: &str = "mqtt.retain";
/// Attribute holding the DUP flag (`true` when the broker redelivered it).
pub const ATTR_DUP: &str = "mqtt.dup";

/// One MQTT message as received.
#[derive(Debug, Clone)]
pub struct Message {
    /// The MQTT topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was delivered with, when known.
    pub qos: Option<u8>,
    /// The retain flag, when known (rumqttd clears it before forwarding).
    pub retain: Option<bool>,
    /// The DUP flag, when known.
    pub dup: Option<bool>,
}

/// The Danube topics one mapping rendered so far.
#[derive(Debug, Default)]
struct TopicSet {
    topics: HashSet<String>,
    /// Whether reaching the limit was logged (once per mapping).
    warned: bool,
}

/// Why a message gets no Danube record of its own (it is dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmappable {
    /// What is wrong, for the dead-letter record.
    pub reason: String,
    /// The dead-letter kind and the `mqtt_messages_total` outcome: `invalid` or
    /// `topic_limit`.
    pub kind: &'static str,
}

/// Maps and publishes messages; shared by the intake tasks.
#[derive(Debug, Clone)]
pub struct Inbound {
    router: Router,
    /// Per mapping, the Danube topics its template rendered so far (bounded by the
    /// mapping's `max_topics`).
    topics: Arc<Vec<Mutex<TopicSet>>>,
    failures: FailureHandler,
    messages: CounterVec,
}

impl Inbound {
    /// An intake over `router` publishing through the context's `failure.policy` handle;
    /// registers `mqtt_messages_total`.
    pub fn new(router: Router, ctx: &Context) -> Result<Self, MetricsError> {
        let topics = Arc::new(router.routes().iter().map(|_| Mutex::new(TopicSet::default())).collect());
        let messages =
            ctx.metrics().counter_vec("mqtt_messages_total", "MQTT messages taken in, by outcome.", &["outcome"])?;
        Ok(Self { router, topics, failures: ctx.failures().clone(), messages })
    }

    /// The mapping table.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The Danube record for `message`, or why it cannot have one.
    pub fn record(&self, message: &Message) -> Result<SourceRecord, Unmappable> {
        let invalid = |reason: String| Unmappable { reason, kind: "invalid" };
        let route = self
            .router
            .route(&message.topic)
            .ok_or_else(|| invalid(format!("no mapping matches MQTT topic `{}`", message.topic)))?;
        check_format(route.mapping.format, &message.payload).map_err(invalid)?;
        let topic = route.template.render(&message.topic).map_err(invalid)?;
        if !route.template.is_static() {
            self.admit_topic(route.index, route.mapping.max_topics, &topic)?;
        }
        let mut record = SourceRecord::new(topic, message.payload.clone())
            .with_key(message.topic.clone())
            .with_attribute(ATTR_TOPIC, message.topic.clone());
        if let Some(retain) = message.retain {
            record = record.with_attribute(ATTR_RETAIN, retain.to_string());
        }
        if let Some(qos) = message.qos {
            record = record.with_attribute(ATTR_QOS, qos.to_string());
        }
        if let Some(dup) = message.dup {
            record = record.with_attribute(ATTR_DUP, dup.to_string());
        }
        Ok(record)
    }

    /// Publishes `message` and reports the outcome; a message that cannot be mapped or that
    /// Danube refuses follows `failure.policy`. `handback` says whether the MQTT broker still
    /// holds the message (client mode, QoS 1: no PUBACK yet) or not (embedded mode, QoS 0).
    pub async fn deliver(&self, message: Message, handback: Handback) -> Delivery {
        let outcome = match self.record(&message) {
            Ok(record) => self.failures.publish_or_dead_letter(record, handback).await,
            Err(Unmappable { reason, kind }) => {
                if kind == "topic_limit" {
                    // Also counted by its outcome below.
                    self.count(kind);
                }
                debug!(topic = %message.topic, %reason, "message cannot be mapped");
                self.failures.undeliverable(unmappable(&message, reason, kind), handback).await
            }
        };
        self.count(match &outcome {
            Delivery::Published => "published",
            Delivery::DeadLettered => "dead_lettered",
            Delivery::Refused => "refused",
            Delivery::Stopped => "stopped",
            Delivery::NotDelivered { .. } => "not_delivered",
        });
        outcome
    }

    /// Admits `topic` for mapping `index`: known already, or fewer than `max` distinct
    /// topics so far. Every admitted topic keeps producers open in the publisher, so the
    /// set is bounded against devices publishing on ever new MQTT topics.
    fn admit_topic(&self, index: usize, max: usize, topic: &str) -> Result<(), Unmappable> {
        let limit = || Unmappable {
            reason: format!(
                "connector.mappings[{index}] already publishes to its limit of {max} distinct Danube topics \
                 (max_topics); `{topic}` is refused"
            ),
            kind: "topic_limit",
        };
        let Some(set) = self.topics.get(index) else { return Err(limit()) };
        let mut set = set.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.topics.contains(topic) {
            return Ok(());
        }
        if set.topics.len() >= max {
            if !set.warned {
                set.warned = true;
                warn!(
                    mapping = index,
                    max, "mapping reached max_topics: messages for further Danube topics are dead-lettered"
                );
            }
            return Err(limit());
        }
        set.topics.insert(topic.to_string());
        Ok(())
    }

    /// Counts a message by outcome (`published`, `dead_lettered`, `not_delivered`, ...;
    /// `topic_limit` is counted besides the `dead_lettered` of the same message).
    pub fn count(&self, outcome: &str) {
        self.messages.with_label_values(&[outcome]).inc();
    }
}

/// The dead letter's content for a message that cannot be mapped: its payload, its MQTT
/// topic as attribute and key.
fn unmappable(message: &Message, reason: String, kind: &'static str) -> Undeliverable {
    let mut attributes = std::collections::HashMap::new();
    attributes.insert(ATTR_TOPIC.to_string(), message.topic.clone());
    Undeliverable {
        payload: message.payload.clone(),
        attributes,
        routing_key: Some(message.topic.clone()),
        source_topic: message.topic.clone(),
        source_offset: None,
        error: reason,
        kind,
        attempts: 1,
    }
}

/// Checks `payload` against `format`.
pub fn check_format(format: PayloadFormat, payload: &[u8]) -> Result<(), String> {
    match format {
        PayloadFormat::Any => Ok(()),
        PayloadFormat::Utf8 => {
            std::str::from_utf8(payload).map(|_| ()).map_err(|e| format!("payload is not UTF-8: {e}"))
        }
        PayloadFormat::Json => serde_json::from_slice::<serde::de::IgnoredAny>(payload)
            .map(|_| ())
            .map_err(|e| format!("payload is not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_checks() {
        assert!(check_format(PayloadFormat::Any, &[0xff]).is_ok());
        assert!(check_format(PayloadFormat::Utf8, "é".as_bytes()).is_ok());
        assert!(check_format(PayloadFormat::Utf8, &[0xff]).is_err());
        assert!(check_format(PayloadFormat::Json, br#"{"t":1}"#).is_ok());
        assert!(check_format(PayloadFormat::Json, b"{t:1").is_err());
    }
}
