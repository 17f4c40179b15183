//! Request bodies: the raw payload, a JSON envelope, or a batch (JSON array or NDJSON).
//!
//! The envelope:
//! ```json
//! {"id": "/default/orders:42", "topic": "/default/orders", "partition": "/default/orders",
//!  "offset": 42, "publish_time": 1700000000000, "producer": "pg-cdc", "key": "17",
//!  "attributes": {"op": "insert"}, "payload": {"id": 17}, "payload_encoding": "json"}
//! ```
//! `payload` is the JSON value when the payload parses as JSON (`payload_encoding` =
//! `json`), else a string for UTF-8 text (`utf8`), else base64 (`base64`).
//!
//! The `json` mode (and the `json` batch item) sends the record decoded as JSON
//! ([`SinkRecord::json`]): the value the runtime decoded with the record's registry schema
//! (JSON Schema, Avro, Protobuf), else the payload parsed as JSON. A record that does not
//! decode is refused with [`BodyError::NotJson`] (dead-lettered by the failure policy).

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use danube_connect_core::{ConnectorError, SinkRecord};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::{BatchFormat, BatchItem, BodyConfig, BodyMode};

/// A body and its content type.
#[derive(Debug, Clone)]
pub struct Body {
    /// The bytes sent.
    pub bytes: Bytes,
    /// The `content-type` header.
    pub content_type: String,
}

/// Why a body could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Serialising the JSON body failed.
    #[error("encoding the JSON body")]
    Encode(#[from] serde_json::Error),
    /// The record does not decode as JSON (`json` body mode or batch item).
    #[error("the record {id} does not decode as JSON (body mode `json`)")]
    NotJson {
        /// The record's message id.
        id: String,
        /// The decode error.
        #[source]
        source: ConnectorError,
    },
}

/// The record decoded as a JSON value (the `json` body mode): the value the runtime decoded
/// with the record's registry schema, or else the payload parsed as JSON
/// ([`SinkRecord::json`]).
pub fn decode_json(record: &SinkRecord) -> Result<Cow<'_, serde_json::Value>, BodyError> {
    record.json().map_err(|source| BodyError::NotJson { id: record.message_id(), source })
}

/// The payload inside an envelope.
#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Json(&'a RawValue),
    Text(&'a str),
    Base64(String),
}

impl<'a> Payload<'a> {
    fn of(bytes: &'a [u8]) -> (Self, &'static str) {
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Ok(raw) = serde_json::from_str::<&RawValue>(text) {
                return (Self::Json(raw), "json");
            }
            return (Self::Text(text), "utf8");
        }
        (Self::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)), "base64")
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: String,
    topic: &'a str,
    partition: &'a str,
    offset: u64,
    publish_time: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    producer: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    attributes: BTreeMap<&'a str, &'a str>,
    payload: Payload<'a>,
    payload_encoding: &'static str,
}

fn envelope(record: &SinkRecord) -> Envelope<'_> {
    let (payload, payload_encoding) = Payload::of(&record.payload);
    Envelope {
        id: record.message_id(),
        topic: &record.topic,
        partition: &record.partition_topic,
        offset: record.offset,
        publish_time: record.publish_time,
        producer: &record.producer_name,
        key: record.routing_key.as_deref(),
        attributes: record.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        payload,
        payload_encoding,
    }
}

/// Builds bodies per the configured mode.
#[derive(Debug, Clone)]
pub struct BodyBuilder {
    config: BodyConfig,
}

impl BodyBuilder {
    /// A builder for `config`.
    pub fn new(config: BodyConfig) -> Self {
        Self { config }
    }

    /// Whether one request carries several records.
    pub fn is_batch(&self) -> bool {
        self.config.mode == BodyMode::Batch
    }

    /// Whether each record must decode as JSON before it can be sent.
    pub fn needs_json(&self) -> bool {
        match self.config.mode {
            BodyMode::Json => true,
            BodyMode::Batch => self.config.batch_item == BatchItem::Json,
            BodyMode::Raw | BodyMode::Envelope => false,
        }
    }

    /// The body of one request for `records` (exactly one unless in batch mode).
    pub fn build(&self, records: &[&SinkRecord]) -> Result<Body, BodyError> {
        match (self.config.mode, records) {
            (BodyMode::Raw, [record]) => Ok(Body {
                bytes: record.payload.clone(),
                content_type: record
                    .attribute("content-type")
                    .filter(|v| reqwest::header::HeaderValue::from_str(v).is_ok())
                    .unwrap_or(&self.config.content_type)
                    .to_string(),
            }),
            (BodyMode::Envelope, [record]) => Ok(Body {
                bytes: serde_json::to_vec(&envelope(record))?.into(),
                content_type: "application/json".into(),
            }),
            (BodyMode::Json, [record]) => Ok(Body {
                bytes: serde_json::to_vec(decode_json(record)?.as_ref())?.into(),
                content_type: "application/json".into(),
            }),
            _ => self.batch(records),
        }
    }

    fn batch(&self, records: &[&SinkRecord]) -> Result<Body, BodyError> {
        let mut out = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 160).sum());
        let write_item = |out: &mut Vec<u8>, record: &SinkRecord| -> Result<(), BodyError> {
            match self.config.batch_item {
                BatchItem::Envelope => serde_json::to_writer(out, &envelope(record))?,
                BatchItem::Payload => serde_json::to_writer(out, &Payload::of(&record.payload).0)?,
                BatchItem::Json => serde_json::to_writer(out, decode_json(record)?.as_ref())?,
            }
            Ok(())
        };
        let content_type = match self.config.batch_format {
            BatchFormat::JsonArray => {
                out.push(b'[');
                for (i, record) in records.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_item(&mut out, record)?;
                }
                out.push(b']');
                "application/json"
            }
            BatchFormat::Ndjson => {
                for record in records {
                    write_item(&mut out, record)?;
                    out.push(b'\n');
                }
                "application/x-ndjson"
            }
        };
        Ok(Body { bytes: out.into(), content_type: content_type.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64, payload: &'static [u8]) -> SinkRecord {
        let mut r = SinkRecord::new("/default/t", offset, payload);
        r.attributes.insert("op".into(), "insert".into());
        r
    }

    #[test]
    fn raw_body_keeps_payload_and_content_type_attribute() {
        let b = BodyBuilder::new(BodyConfig::default());
        let mut r = record(1, b"hello");
        assert_eq!(b.build(&[&r]).expect("body").content_type, "application/octet-stream");
        r.attributes.insert("content-type".into(), "text/plain".into());
        let body = b.build(&[&r]).expect("body");
        assert_eq!(body.bytes.as_ref(), b"hello");
        assert_eq!(body.content_type, "text/plain");
    }

    #[test]
    fn envelope_embeds_json_text_or_base64() {
        let b = BodyBuilder::new(BodyConfig { mode: BodyMode::Envelope, ..Default::default() });
        let json: serde_json::Value =
            serde_json::from_slice(&b.build(&[&record(3, br#"{"a":1}"#)]).expect("b").bytes).expect("json");
        assert_eq!(json["payload"]["a"], 1);
        assert_eq!(json["payload_encoding"], "json");
        assert_eq!(json["id"], "/default/t:3");
        assert_eq!(json["offset"], 3);
        assert_eq!(json["attributes"]["op"], "insert");
        let text: serde_json::Value =
            serde_json::from_slice(&b.build(&[&record(4, b"plain")]).expect("b").bytes).expect("json");
        assert_eq!(text["payload"], "plain");
        assert_eq!(text["payload_encoding"], "utf8");
        let bin: serde_json::Value =
            serde_json::from_slice(&b.build(&[&record(5, &[0xff, 0x00])]).expect("b").bytes).expect("json");
        assert_eq!(bin["payload"], "/wA=");
        assert_eq!(bin["payload_encoding"], "base64");
    }

    #[test]
    fn json_mode_sends_the_decoded_value_and_refuses_what_does_not_decode() {
        let b = BodyBuilder::new(BodyConfig { mode: BodyMode::Json, ..Default::default() });
        assert!(b.needs_json());
        let body = b.build(&[&record(7, br#" {"a": [1, 2]} "#)]).expect("body");
        assert_eq!(body.bytes.as_ref(), br#"{"a":[1,2]}"#);
        assert_eq!(body.content_type, "application/json");
        match b.build(&[&record(8, b"not json")]) {
            Err(BodyError::NotJson { id, .. }) => assert_eq!(id, "/default/t:8"),
            other => panic!("expected NotJson, got {other:?}"),
        }
        let batch =
            BodyBuilder::new(BodyConfig { mode: BodyMode::Batch, batch_item: BatchItem::Json, ..Default::default() });
        assert!(batch.needs_json());
        assert_eq!(batch.build(&[&record(1, b"1"), &record(2, b"[true]")]).expect("b").bytes.as_ref(), b"[1,[true]]");
        assert!(matches!(batch.build(&[&record(1, b"1"), &record(2, b"x")]), Err(BodyError::NotJson { .. })));
        assert!(!BodyBuilder::new(BodyConfig::default()).needs_json());
        // A value decoded by the runtime with the record's schema (e.g. Avro) is what is sent.
        let mut avro = record(9, &[0x02, 0x06]);
        avro.schema_id = Some(1);
        avro.value = Some(serde_json::json!({"id": 1, "name": "x"}));
        assert_eq!(b.build(&[&avro]).expect("body").bytes.as_ref(), br#"{"id":1,"name":"x"}"#);
    }

    #[test]
    fn batch_as_json_array_and_ndjson() {
        let (a, c) = (record(1, br#"{"n":1}"#), record(2, b"two"));
        let array = BodyBuilder::new(BodyConfig {
            mode: BodyMode::Batch,
            batch_item: BatchItem::Payload,
            ..Default::default()
        });
        let body = array.build(&[&a, &c]).expect("b");
        assert_eq!(body.bytes.as_ref(), br#"[{"n":1},"two"]"#);
        assert_eq!(body.content_type, "application/json");
        let nd = BodyBuilder::new(BodyConfig {
            mode: BodyMode::Batch,
            batch_format: BatchFormat::Ndjson,
            ..Default::default()
        });
        let body = nd.build(&[&a, &c]).expect("b");
        let lines: Vec<serde_json::Value> = body
            .bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["id"], "/default/t:2");
        assert_eq!(body.content_type, "application/x-ndjson");
    }
}
