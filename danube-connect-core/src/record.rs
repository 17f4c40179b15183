//! Records: what a source hands to Danube and what a sink receives from it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ConnectorError;
use crate::schema::BoundSchema;

/// A position in the outside system that a source can commit once Danube acked
/// every record up to it (a Kafka partition offset, a PostgreSQL LSN, an MQTT packet id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceOffset {
    /// The stream the position belongs to (`"orders/3"` for a Kafka partition, `"slot"` for CDC).
    pub partition: String,
    /// The position within that stream.
    pub position: u64,
}

impl SourceOffset {
    /// A position in a named stream.
    pub fn new(partition: impl Into<String>, position: u64) -> Self {
        Self { partition: partition.into(), position }
    }
}

/// The attribute that carries a record's stable id when the record is a re-publish of an
/// earlier message (`danube-connect dlq replay` sets it): [`SinkRecord::message_id`] returns it
/// instead of the message's own `{partition_topic}:{offset}`, so a record re-published twice
/// (after a crash of the replay) reaches sinks with the same id both times and receivers that
/// de-duplicate by id (http-sink's `danube-message-id`, `webhook-id`) drop the second one.
pub const MESSAGE_ID_ATTRIBUTE: &str = "connect.message_id";

/// A record on its way into Danube.
///
/// ```
/// use danube_connect_core::SourceRecord;
/// let record = SourceRecord::from_json("/default/users", &serde_json::json!({"id": 1}))
///     .unwrap()
///     .with_key("1")
///     .with_attribute("source", "example");
/// assert_eq!(record.routing_key.as_deref(), Some("1"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// The Danube topic (`/namespace/topic`); one connector may feed many topics.
    pub topic: String,
    /// The message body.
    pub payload: Bytes,
    /// Message attributes (headers).
    pub attributes: HashMap<String, String>,
    /// Routing key: records with the same key keep their order and reach the same
    /// KeyShared consumer.
    pub routing_key: Option<String>,
    /// The source position this record comes from; committed after Danube acked it and
    /// every other record carrying the same offset (consecutive records, possibly spread
    /// over two polls; see [`PullSource::poll`](crate::PullSource::poll)).
    pub offset: Option<SourceOffset>,
    /// A schema registered at run time ([`Publisher::register_schema`](crate::Publisher::register_schema)):
    /// the record is validated against it instead of the topic's `[[schemas]]` binding and
    /// published with its subject version.
    pub schema: Option<Arc<BoundSchema>>,
}

impl SourceRecord {
    /// A record with a raw payload.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            attributes: HashMap::new(),
            routing_key: None,
            offset: None,
            schema: None,
        }
    }

    /// A record whose payload is `value` serialized as JSON; sets `content-type`.
    pub fn from_json<T: Serialize + ?Sized>(topic: impl Into<String>, value: &T) -> Result<Self, ConnectorError> {
        let payload = serde_json::to_vec(value).map_err(|e| ConnectorError::invalid("serialize record as JSON", e))?;
        Ok(Self::new(topic, payload).with_attribute("content-type", "application/json"))
    }

    /// Sets the routing key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = Some(key.into());
        self
    }

    /// Adds one attribute.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Adds several attributes.
    pub fn with_attributes<I, K, V>(mut self, attributes: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.attributes.extend(attributes.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Sets the source offset that is committed once Danube acked this record.
    pub fn with_offset(mut self, offset: SourceOffset) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Publishes the record with `schema` (registered at run time) instead of the topic's
    /// static binding.
    pub fn with_schema(mut self, schema: Arc<BoundSchema>) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Approximate size in bytes (payload, attributes and key), for batching and metrics.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + self.routing_key.as_ref().map_or(0, String::len)
    }
}

/// A record delivered to a sink from a Danube subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    /// The message body.
    pub payload: Bytes,
    /// Message attributes.
    pub attributes: HashMap<String, String>,
    /// The topic the sink subscribed to (`/default/orders`).
    pub topic: String,
    /// The partition the message was read from (`/default/orders-part-1`; equals `topic`
    /// when the topic is not partitioned). `offset` counts within it.
    pub partition_topic: String,
    /// The message's offset within its partition.
    pub offset: u64,
    /// Publish time in milliseconds since the Unix epoch.
    pub publish_time: u64,
    /// Name of the producer that published it.
    pub producer_name: String,
    /// The routing key, if the producer set one.
    pub routing_key: Option<String>,
    /// Schema registry id, if the producer referenced a schema.
    pub schema_id: Option<u64>,
    /// Schema version, if the producer referenced a schema.
    pub schema_version: Option<u32>,
    /// The payload decoded with its registry schema (set by the runtime for records carrying
    /// a `schema_id` when `sink.decode_schemas` is on); see [`SinkRecord::json`].
    pub value: Option<serde_json::Value>,
    /// How many times this record has been handed to the connector, this time included (1
    /// on the first): the runtime's retries and the redeliveries after a deferral or a nack
    /// count. Counted by the runtime per message (Danube does not tell), since the start.
    pub attempt: u32,
    /// How many times this record was deferred ([`ConnectorError::Defer`]) or nacked before
    /// this delivery.
    pub deferrals: u32,
}

impl SinkRecord {
    /// A stable identifier, the same on every redelivery: `{partition_topic}:{offset}`, or the
    /// [`MESSAGE_ID_ATTRIBUTE`] attribute when the record carries one (a replayed dead letter).
    pub fn message_id(&self) -> String {
        match self.attributes.get(MESSAGE_ID_ATTRIBUTE) {
            Some(id) if !id.is_empty() => id.clone(),
            _ => format!("{}:{}", self.partition_topic, self.offset),
        }
    }

    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> Result<&str, ConnectorError> {
        std::str::from_utf8(&self.payload).map_err(|e| ConnectorError::invalid("payload is not UTF-8", e))
    }

    /// The payload parsed as JSON into `T`.
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, ConnectorError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| ConnectorError::invalid("payload is not the expected JSON", e))
    }

    /// The record as JSON: the schema-decoded [`value`](Self::value) when there is one
    /// (Avro and Protobuf payloads included), else the payload parsed as JSON.
    pub fn json(&self) -> Result<std::borrow::Cow<'_, serde_json::Value>, ConnectorError> {
        match &self.value {
            Some(value) => Ok(std::borrow::Cow::Borrowed(value)),
            None => self.payload_json().map(std::borrow::Cow::Owned),
        }
    }

    /// One attribute's value.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }

    /// Approximate size in bytes, for batching.
    pub fn size(&self) -> usize {
        self.payload.len() + self.attributes.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }

    /// A test or example record; real records come from the runtime.
    pub fn new(topic: impl Into<String>, offset: u64, payload: impl Into<Bytes>) -> Self {
        let topic = topic.into();
        Self {
            payload: payload.into(),
            attributes: HashMap::new(),
            partition_topic: topic.clone(),
            topic,
            offset,
            publish_time: 0,
            producer_name: String::new(),
            routing_key: None,
            schema_id: None,
            schema_version: None,
            value: None,
            attempt: 1,
            deferrals: 0,
        }
    }

    pub(crate) fn from_message(message: &danube_core::message::StreamMessage, topic: &str) -> Self {
        Self {
            payload: message.payload.clone(),
            attributes: message.attributes.clone(),
            topic: topic.to_string(),
            partition_topic: message.msg_id.topic_name.clone(),
            offset: message.msg_id.topic_offset,
            publish_time: message.publish_time,
            producer_name: message.producer_name.clone(),
            routing_key: message.routing_key.clone(),
            schema_id: message.schema_id,
            schema_version: message.schema_version,
            value: None,
            attempt: 1,
            deferrals: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_record_builder_sets_every_field() {
        let r = SourceRecord::new("/default/a", "x")
            .with_key("k")
            .with_attribute("a", "1")
            .with_offset(SourceOffset::new("p", 7));
        assert_eq!(r.topic, "/default/a");
        assert_eq!(r.routing_key.as_deref(), Some("k"));
        assert_eq!(r.attributes.get("a").map(String::as_str), Some("1"));
        assert_eq!(r.offset, Some(SourceOffset::new("p", 7)));
        assert_eq!(r.size(), 1 + 2 + 1);
    }

    #[test]
    fn sink_record_message_id_is_topic_and_offset() {
        let r = SinkRecord::new("/default/t", 42, "{\"a\":1}");
        assert_eq!(r.message_id(), "/default/t:42");
        let mut replayed = SinkRecord::new("/default/t", 43, "{}");
        replayed.attributes.insert(MESSAGE_ID_ATTRIBUTE.into(), "/default/dlq-x:7".into());
        assert_eq!(replayed.message_id(), "/default/dlq-x:7", "a replayed record keeps the id it was given");
        let v: serde_json::Value = r.payload_json().expect("json");
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn invalid_json_payload_is_an_invalid_record_error() {
        let r = SinkRecord::new("/default/t", 1, "not json");
        let err = r.payload_json::<serde_json::Value>().expect_err("must fail");
        assert_eq!(err.kind(), "invalid");
    }
}
