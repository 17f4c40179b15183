//! Building dead-letter records: the original payload and attributes plus what failed.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::record::SourceRecord;

/// Attribute names set on every dead-lettered record.
pub mod attributes {
    /// The error chain, one line.
    pub const ERROR: &str = "dlq.error";
    /// The error class (`invalid`, `retryable`, `rejected`, ...).
    pub const ERROR_KIND: &str = "dlq.error_kind";
    /// The connector instance name.
    pub const CONNECTOR: &str = "dlq.connector";
    /// The topic the record came from (sinks) or was meant for (sources).
    pub const SOURCE_TOPIC: &str = "dlq.source_topic";
    /// The record's offset in its source topic (sinks) or source system (sources).
    pub const SOURCE_OFFSET: &str = "dlq.source_offset";
    /// How many attempts were made.
    pub const ATTEMPTS: &str = "dlq.attempts";
    /// When it was dead-lettered, ms since the Unix epoch.
    pub const FAILED_AT: &str = "dlq.failed_at";
    /// Set (to the original payload's size in bytes) when the payload was left out because
    /// it is larger than [`super::MAX_DEAD_LETTER_PAYLOAD`].
    pub const PAYLOAD_OMITTED_BYTES: &str = "dlq.payload_omitted_bytes";
}

/// The durable subscription the runtime creates on the dead-letter topic at start, before any
/// record can be dead-lettered, and leaves without a consumer. A new Danube subscription starts
/// at the end of its topic, so a reader that subscribed only when it is needed would miss every
/// dead letter written before; through this one, `danube-connect dlq inspect` and
/// `danube-connect dlq replay` read every dead letter not yet replayed (docs/operations.md).
pub const DEAD_LETTER_SUBSCRIPTION: &str = "danube-connect-dlq";

/// The subscription type of [`DEAD_LETTER_SUBSCRIPTION`]: shared, so a reader that was killed
/// does not keep a later one out, and unacked dead letters go to the next reader.
pub(crate) const SUBSCRIPTION_TYPE: danube_client::SubType = danube_client::SubType::Shared;

/// The subscription type of [`DEAD_LETTER_SUBSCRIPTION`] (shared), for readers built on the
/// client itself (feature `raw-client`).
#[cfg(feature = "raw-client")]
pub const DEAD_LETTER_SUBSCRIPTION_TYPE: danube_client::SubType = SUBSCRIPTION_TYPE;

/// Creates [`DEAD_LETTER_SUBSCRIPTION`] on `topic` (which must exist) if it does not exist yet:
/// subscribes one consumer named `consumer_name`, opens its message stream and closes it. The
/// subscription stays, durable, and keeps every dead letter published from then on until a
/// reader acks it (verified on the development broker and Danube v0.15.1).
pub async fn ensure_dead_letter_subscription(
    connection: &crate::client::DanubeConnection,
    topic: &str,
    consumer_name: &str,
) -> Result<(), crate::error::ClientError> {
    subscribe_dead_letters(connection.inner(), topic, consumer_name).await.map_err(crate::error::ClientError::new)
}

/// [`ensure_dead_letter_subscription`] on the runtime's client.
pub(crate) async fn subscribe_dead_letters(
    client: &danube_client::DanubeClient,
    topic: &str,
    consumer_name: &str,
) -> Result<(), danube_client::errors::DanubeError> {
    let mut consumer = client
        .new_consumer()
        .with_topic(topic.to_string())
        .with_consumer_name(consumer_name.to_string())
        .with_subscription(DEAD_LETTER_SUBSCRIPTION.to_string())
        .with_subscription_type(SUBSCRIPTION_TYPE)
        .build()?;
    consumer.subscribe().await?;
    // Open the message stream before closing: Danube v0.15 takes a consumer that subscribed
    // but never streamed for a live one and hands it the dead letters (they would come to a
    // reader only after the ack timeout); a stream that ends marks the consumer gone.
    let _messages = consumer.receive().await?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    consumer.close().await;
    Ok(())
}

/// The largest payload a dead-letter record carries. Danube v0.15 refuses a message whose
/// request is over 4 MiB (gRPC's default decode limit): a record refused for its size would be
/// refused again as a dead letter and block its connector, so a larger payload is left out and
/// its size noted in [`attributes::PAYLOAD_OMITTED_BYTES`]; the error and every attribute stay.
pub const MAX_DEAD_LETTER_PAYLOAD: usize = 3 * 1024 * 1024;

/// What failed, for the dead-letter attributes.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// The error chain.
    pub error: String,
    /// The error class.
    pub kind: &'a str,
    /// The connector instance name.
    pub connector: &'a str,
    /// The source topic.
    pub source_topic: &'a str,
    /// The source offset, if any.
    pub source_offset: Option<String>,
    /// Attempts made.
    pub attempts: usize,
}

/// A record for `dead_letter_topic` carrying `payload`, `original` attributes and the failure.
/// Connectors do not call it: they go through [`crate::failure::FailureHandler`], which
/// applies `failure.policy` (tools that write dead letters themselves, e.g. tests, may).
pub fn dead_letter_record(
    dead_letter_topic: &str,
    payload: Bytes,
    original: &HashMap<String, String>,
    routing_key: Option<String>,
    failure: &Failure<'_>,
) -> SourceRecord {
    let failed_at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let omitted = (payload.len() > MAX_DEAD_LETTER_PAYLOAD).then_some(payload.len());
    let payload = if omitted.is_some() { Bytes::new() } else { payload };
    let mut record = SourceRecord::new(dead_letter_topic, payload)
        .with_attributes(original.clone())
        .with_attribute(attributes::ERROR, failure.error.clone())
        .with_attribute(attributes::ERROR_KIND, failure.kind)
        .with_attribute(attributes::CONNECTOR, failure.connector)
        .with_attribute(attributes::SOURCE_TOPIC, failure.source_topic)
        .with_attribute(attributes::ATTEMPTS, failure.attempts.to_string())
        .with_attribute(attributes::FAILED_AT, failed_at.to_string());
    if let Some(offset) = &failure.source_offset {
        record = record.with_attribute(attributes::SOURCE_OFFSET, offset.clone());
    }
    if let Some(size) = omitted {
        record = record.with_attribute(attributes::PAYLOAD_OMITTED_BYTES, size.to_string());
    }
    record.routing_key = routing_key;
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_too_large_for_danube_is_left_out_and_its_size_noted() {
        let failure = Failure {
            error: "too large".into(),
            kind: "rejected",
            connector: "c",
            source_topic: "/default/t",
            source_offset: None,
            attempts: 1,
        };
        let big = Bytes::from(vec![b'x'; MAX_DEAD_LETTER_PAYLOAD + 1]);
        let record = dead_letter_record("/default/dlq-c", big, &HashMap::new(), None, &failure);
        assert!(record.payload.is_empty());
        assert_eq!(record.attributes[attributes::PAYLOAD_OMITTED_BYTES], (MAX_DEAD_LETTER_PAYLOAD + 1).to_string());
        assert_eq!(record.attributes[attributes::ERROR], "too large");
        let small = dead_letter_record("/default/dlq-c", Bytes::from_static(b"ok"), &HashMap::new(), None, &failure);
        assert_eq!(&small.payload[..], b"ok");
        assert!(!small.attributes.contains_key(attributes::PAYLOAD_OMITTED_BYTES));
    }
}
