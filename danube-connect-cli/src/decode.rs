//! Turning messages into something to read: payload decoded through the schema registry where
//! a schema applies, else as JSON, text or base64; one JSON object per record.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use danube_connect_core::schema::{Schema, SchemaBinding, SchemaCache};
use danube_connect_core::SchemaRegistry;
use danube_core::message::StreamMessage;
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// A payload made readable.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The payload as JSON: the decoded value, the parsed JSON, a string, or base64 text.
    pub value: Value,
    /// How `value` was obtained: `schema`, `json`, `text` or `base64`.
    pub encoding: &'static str,
    /// Why a schema decode failed (the payload is then shown without it).
    pub error: Option<String>,
}

impl Decoded {
    /// The payload part of a record object made by [`message_object`].
    pub fn from_record(record: &Value) -> Self {
        let encoding = match record["payload_encoding"].as_str() {
            Some("schema") => "schema",
            Some("json") => "json",
            Some("base64") => "base64",
            _ => "text",
        };
        let error = record["decode_error"].as_str().map(str::to_string);
        Self { value: record["payload"].clone(), encoding, error }
    }
}

/// Decodes payloads: with the message's own schema (`schema_id`), else with the schema bound to
/// a topic in the configuration's `[[schemas]]` (dead letters lose the original message's
/// `schema_id`, so their source topic's binding is used), else without a schema.
pub struct Decoder {
    registry: SchemaRegistry,
    cache: SchemaCache,
    bindings: HashMap<String, SchemaBinding>,
    /// Schemas of bound topics, looked up once (`Err`: why not).
    bound: Mutex<HashMap<String, Result<Schema, String>>>,
}

impl Decoder {
    /// A decoder over `registry` and the configured `bindings`.
    pub fn new(registry: SchemaRegistry, bindings: &[SchemaBinding]) -> Self {
        Self {
            cache: SchemaCache::new(registry.clone()),
            registry,
            bindings: bindings.iter().map(|b| (b.topic.clone(), b.clone())).collect(),
            bound: Mutex::new(HashMap::new()),
        }
    }

    /// Decodes `payload`: with `schema_id`/`version` when set, else with the schema bound to
    /// `bound_topic` when there is one, else as JSON, UTF-8 text or base64.
    pub async fn payload(
        &self,
        payload: &[u8],
        schema_id: Option<u64>,
        version: Option<u32>,
        bound_topic: Option<&str>,
    ) -> Decoded {
        let schema = match schema_id {
            Some(id) => Some(self.cache.get(id, version).await.map_err(|e| e.chain())),
            None => match bound_topic {
                Some(topic) => self.bound_schema(topic).await,
                None => None,
            },
        };
        match schema {
            Some(Ok(schema)) => match schema.decode_to_json(payload) {
                Ok(value) => Decoded { value, encoding: "schema", error: None },
                Err(e) => Decoded { error: Some(e.to_string()), ..raw(payload) },
            },
            Some(Err(error)) => Decoded { error: Some(error), ..raw(payload) },
            None => raw(payload),
        }
    }

    /// The schema bound to `topic` in `[[schemas]]` (its `version`, else the subject's latest),
    /// from the registry, once.
    async fn bound_schema(&self, topic: &str) -> Option<Result<Schema, String>> {
        let binding = self.bindings.get(topic)?;
        let mut bound = self.bound.lock().await;
        if let Some(known) = bound.get(topic) {
            return Some(known.clone());
        }
        let registry = &self.registry;
        let lookup = async {
            let latest = registry.latest(&binding.subject).await?;
            match binding.version {
                Some(version) if version != latest.version => registry.version(latest.schema_id, Some(version)).await,
                _ => Ok(latest),
            }
        };
        let schema = match lookup.await {
            Ok(info) => Schema::from_registry(&info.schema_type, &info.definition())
                .map_err(|e| format!("schema of subject {} does not compile: {e}", binding.subject)),
            Err(e) => {
                Err(format!("schema of subject {}: {}", binding.subject, danube_connect_core::error::error_chain(&e)))
            }
        };
        bound.insert(topic.to_string(), schema.clone());
        Some(schema)
    }

    /// One message as a JSON object: `topic`, `offset`, `id`, `publish_time`, `producer`,
    /// `key`, `attributes`, `schema_id`/`schema_version` when set, `payload` and
    /// `payload_encoding` (and `decode_error` when a schema decode failed).
    pub async fn message_json(&self, message: &StreamMessage, bound_topic: Option<&str>) -> Value {
        let decoded = self.payload(&message.payload, message.schema_id, message.schema_version, bound_topic).await;
        message_object(message, decoded)
    }
}

/// A message and its decoded payload as a JSON object (see [`Decoder::message_json`]).
pub fn message_object(message: &StreamMessage, decoded: Decoded) -> Value {
    let attributes: BTreeMap<&String, &String> = message.attributes.iter().collect();
    let mut object = json!({
        "topic": message.msg_id.topic_name,
        "offset": message.msg_id.topic_offset,
        "id": message_id(message),
        "publish_time": message.publish_time,
        "producer": message.producer_name,
        "key": message.routing_key,
        "attributes": attributes,
        "payload": decoded.value,
        "payload_encoding": decoded.encoding,
    });
    if let Some(map) = object.as_object_mut() {
        if let Some(id) = message.schema_id {
            map.insert("schema_id".into(), json!(id));
            map.insert("schema_version".into(), json!(message.schema_version));
        }
        if let Some(error) = decoded.error {
            map.insert("decode_error".into(), json!(error));
        }
    }
    object
}

/// A message's id: `{partition_topic}:{offset}`, the form sinks use
/// ([`SinkRecord::message_id`](danube_connect_core::SinkRecord::message_id)).
pub fn message_id(message: &StreamMessage) -> String {
    format!("{}:{}", message.msg_id.topic_name, message.msg_id.topic_offset)
}

/// A payload without a schema: parsed JSON, else UTF-8 text, else base64.
pub fn raw(payload: &[u8]) -> Decoded {
    if let Ok(value) = serde_json::from_slice::<Value>(payload) {
        return Decoded { value, encoding: "json", error: None };
    }
    match std::str::from_utf8(payload) {
        Ok(text) => Decoded { value: Value::String(text.to_string()), encoding: "text", error: None },
        Err(_) => Decoded {
            value: Value::String(base64::engine::general_purpose::STANDARD.encode(payload)),
            encoding: "base64",
            error: None,
        },
    }
}

/// A one-line rendering of a decoded payload for text output, cut at `max` characters.
pub fn short(decoded: &Decoded, max: usize) -> String {
    let text = match &decoded.value {
        Value::String(s) if decoded.encoding != "json" => s.clone(),
        other => other.to_string(),
    };
    let mut cut: String = text.chars().take(max).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    let prefix = if decoded.encoding == "base64" { "base64:" } else { "" };
    format!("{prefix}{cut}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_without_a_schema_are_json_then_text_then_base64() {
        assert_eq!(raw(br#"{"a":1}"#), Decoded { value: json!({"a": 1}), encoding: "json", error: None });
        assert_eq!(raw(b"hello").encoding, "text");
        assert_eq!(raw(b"hello").value, json!("hello"));
        let binary = raw(&[0xff, 0x00, 0x80]);
        assert_eq!(binary.encoding, "base64");
        assert_eq!(binary.value, json!("/wCA"));
    }

    #[test]
    fn short_renders_cut_and_marks_base64() {
        assert_eq!(short(&raw(b"abcdef"), 3), "abc...");
        assert_eq!(short(&raw(br#"{"a":1}"#), 80), r#"{"a":1}"#);
        assert_eq!(short(&raw(&[0xff]), 80), "base64:/w==");
    }
}
