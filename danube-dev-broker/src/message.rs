//! Messages as stored in a topic log.

use bytes::Bytes;
use danube_core::proto::{MsgId, StreamMessage};
use std::collections::HashMap;

/// A message as stored by the broker, for inspection by tests.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Topic the message is stored in (the partition name for a partitioned topic).
    pub topic: String,
    /// 0-based offset of the message in its topic.
    pub offset: u64,
    /// Payload as sent.
    pub payload: Bytes,
    /// User attributes as sent.
    pub attributes: HashMap<String, String>,
    /// Routing key as sent (`send_with_key`).
    pub routing_key: Option<String>,
    /// Publish time (milliseconds since the epoch) as sent by the producer.
    pub publish_time: u64,
    /// Name of the producer that sent it.
    pub producer_name: String,
    /// Schema id attached by the producer.
    pub schema_id: Option<u64>,
    /// Schema version attached by the producer.
    pub schema_version: Option<u32>,
}

/// A log entry: the stored message plus the id of the producer that sent it.
#[derive(Debug)]
pub(crate) struct LogEntry {
    pub message: StoredMessage,
    pub producer_id: u64,
}

impl LogEntry {
    /// Builds the wire message delivered to a consumer of `subscription`.
    pub(crate) fn to_stream_message(&self, broker_addr: &str, subscription: &str) -> StreamMessage {
        let m = &self.message;
        StreamMessage {
            request_id: m.offset,
            msg_id: Some(MsgId {
                producer_id: self.producer_id,
                topic_name: m.topic.clone(),
                broker_addr: broker_addr.to_string(),
                topic_offset: m.offset,
            }),
            payload: m.payload.clone(),
            publish_time: m.publish_time,
            producer_name: m.producer_name.clone(),
            subscription_name: subscription.to_string(),
            attributes: m.attributes.clone(),
            schema_id: m.schema_id,
            schema_version: m.schema_version,
            routing_key: m.routing_key.clone(),
        }
    }

    /// Wire form used by the persistence log (subscription name left empty).
    pub(crate) fn to_log_record(&self) -> StreamMessage {
        self.to_stream_message("", "")
    }

    /// Rebuilds an entry from a persisted record.
    pub(crate) fn from_log_record(record: StreamMessage) -> Option<LogEntry> {
        let msg_id = record.msg_id?;
        Some(LogEntry {
            producer_id: msg_id.producer_id,
            message: StoredMessage {
                topic: msg_id.topic_name,
                offset: msg_id.topic_offset,
                payload: record.payload,
                attributes: record.attributes,
                routing_key: record.routing_key,
                publish_time: record.publish_time,
                producer_name: record.producer_name,
                schema_id: record.schema_id,
                schema_version: record.schema_version,
            },
        })
    }
}
