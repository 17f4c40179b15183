//! Record conversion between Kafka and Danube, and the import topic mapping.
//!
//! Kafka → Danube: key → routing key (UTF-8; other bytes as lowercase hex, flagged with
//! `kafka.key-encoding=hex`), headers → attributes (non-UTF-8 values go to
//! `kafka.header-hex.{name}` as hex), plus `kafka.topic`, `kafka.partition`,
//! `kafka.offset` and `kafka.timestamp` (milliseconds) attributes.
//!
//! Danube → Kafka: routing key → key (hex-decoded again when flagged), attributes →
//! headers, and the record's schema reference as `danube.schema-id` /
//! `danube.schema-version` headers (the payload itself is passed unchanged, so a consumer
//! fetches that schema from the Danube registry to decode it), and `danube.topic` naming the
//! Danube topic. Both directions add the origin attribute/header naming the bridge.

use std::collections::HashMap;

use danube_connect_core::config::ConfigError;
use danube_connect_core::template::Template;
use regex::Regex;

use crate::config::{ImportMapping, KafkaTopicName};

/// Attribute with the Kafka topic a record was read from.
pub const ATTR_TOPIC: &str = "kafka.topic";
/// Kafka header carrying the Danube schema-registry id of an exported record.
pub const HEADER_SCHEMA_ID: &str = "danube.schema-id";
/// Kafka header carrying the Danube schema version of an exported record.
pub const HEADER_SCHEMA_VERSION: &str = "danube.schema-version";
/// Kafka header naming the Danube topic an exported record came from (loop protection:
/// the import does not send it back to that topic).
pub const HEADER_DANUBE_TOPIC: &str = "danube.topic";
/// Attribute with the Kafka partition.
pub const ATTR_PARTITION: &str = "kafka.partition";
/// Attribute with the Kafka offset.
pub const ATTR_OFFSET: &str = "kafka.offset";
/// Attribute with the Kafka record timestamp (ms since the epoch).
pub const ATTR_TIMESTAMP: &str = "kafka.timestamp";
/// Attribute set to `hex` when the routing key is the hex form of a non-UTF-8 Kafka key.
pub const ATTR_KEY_ENCODING: &str = "kafka.key-encoding";
/// Attribute set to `true` when the Kafka record had no value (a tombstone).
pub const ATTR_TOMBSTONE: &str = "kafka.tombstone";
/// Prefix of attributes holding non-UTF-8 header values as hex.
pub const ATTR_HEADER_HEX_PREFIX: &str = "kafka.header-hex.";

/// One compiled import mapping.
#[derive(Debug, Clone)]
struct CompiledMapping {
    topics: Vec<String>,
    pattern: Option<Regex>,
    template: Template<KafkaTopicName>,
}

/// Maps a Kafka topic to its Danube topic (first matching mapping wins).
#[derive(Debug, Clone)]
pub struct TopicRouter {
    mappings: Vec<CompiledMapping>,
}

impl TopicRouter {
    /// Compiles the mappings (checked by config validation already); the error names the
    /// field.
    pub fn new(mappings: &[ImportMapping]) -> Result<Self, ConfigError> {
        let mut compiled = Vec::with_capacity(mappings.len());
        for (i, mapping) in mappings.iter().enumerate() {
            let field = format!("connector.import.mappings[{i}]");
            compiled.push(CompiledMapping {
                topics: mapping.topics.clone(),
                pattern: mapping
                    .pattern
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .map_err(|e| ConfigError::invalid(format!("{field}.pattern"), format!("not a valid regex: {e}")))?,
                template: mapping.compile_template().map_err(|e| e.for_field(format!("{field}.danube_topic")))?,
            });
        }
        Ok(Self { mappings: compiled })
    }

    /// What to subscribe to: topic names and `^regex` entries (librdkafka's syntax).
    pub fn subscription(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for mapping in &self.mappings {
            for topic in &mapping.topics {
                if !out.contains(topic) {
                    out.push(topic.clone());
                }
            }
            if let Some(pattern) = &mapping.pattern {
                let source = pattern.as_str();
                let entry = if source.starts_with('^') { source.to_string() } else { format!("^.*{source}") };
                if !out.contains(&entry) {
                    out.push(entry);
                }
            }
        }
        out
    }

    /// The Danube topic for records of `kafka_topic`, or `None` if no mapping matches.
    /// The Kafka name is sanitized first: the Danube broker accepts only letters, digits,
    /// `_` and `-` in a topic name, so `orders.v1` becomes `orders_v1`.
    pub fn danube_topic(&self, kafka_topic: &str) -> Option<String> {
        self.mappings
            .iter()
            .find(|m| {
                m.topics.iter().any(|t| t == kafka_topic) || m.pattern.as_ref().is_some_and(|p| p.is_match(kafka_topic))
            })
            .map(|m| {
                let name = danube_connect_core::naming::sanitize_topic_part(kafka_topic);
                let rendered: Result<String, std::convert::Infallible> = m.template.render(|KafkaTopicName, out| {
                    out.push_str(&name);
                    Ok(())
                });
                rendered.unwrap_or_else(|never| match never {})
            })
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Bytes of a lowercase or uppercase hex string, or `None` if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() & 1 != 0 {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    text.as_bytes().chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// A Kafka key as a Danube routing key, and whether it had to be hex-encoded.
pub fn routing_key(key: &[u8]) -> (String, bool) {
    match std::str::from_utf8(key) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (to_hex(key), true),
    }
}

/// Adds one Kafka header to `attributes` (non-UTF-8 values as hex under a prefixed name).
pub fn add_header(attributes: &mut HashMap<String, String>, name: &str, value: Option<&[u8]>) {
    let value = value.unwrap_or_default();
    match std::str::from_utf8(value) {
        Ok(text) => {
            attributes.insert(name.to_string(), text.to_string());
        }
        Err(_) => {
            attributes.insert(format!("{ATTR_HEADER_HEX_PREFIX}{name}"), to_hex(value));
        }
    }
}

/// The Kafka key for a Danube record: the routing key, hex-decoded if it was flagged.
pub fn kafka_key(routing_key: Option<&str>, attributes: &HashMap<String, String>) -> Option<Vec<u8>> {
    let key = routing_key?;
    if attributes.get(ATTR_KEY_ENCODING).map(String::as_str) == Some("hex") {
        if let Some(bytes) = from_hex(key) {
            return Some(bytes);
        }
    }
    Some(key.as_bytes().to_vec())
}

/// The Kafka headers for a Danube record's attributes: `(name, value)` pairs, hex
/// attributes decoded back to their bytes, the key-encoding flag left out.
pub fn kafka_headers(attributes: &HashMap<String, String>) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::with_capacity(attributes.len());
    for (name, value) in attributes {
        if name == ATTR_KEY_ENCODING {
            continue;
        }
        if let Some(original) = name.strip_prefix(ATTR_HEADER_HEX_PREFIX) {
            if let Some(bytes) = from_hex(value) {
                headers.push((original.to_string(), bytes));
                continue;
            }
        }
        headers.push((name.clone(), value.as_bytes().to_vec()));
    }
    // Stable order: attribute maps have none, Kafka headers do.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_mapping_names_the_danube_topic() {
        let router = TopicRouter::new(&[
            ImportMapping {
                topics: vec!["orders".into()],
                pattern: None,
                danube_topic: Some("/default/k-{topic}".into()),
            },
            ImportMapping { topics: vec![], pattern: Some("^logs-.*".into()), danube_topic: None },
        ])
        .expect("compile");
        assert_eq!(router.danube_topic("orders").as_deref(), Some("/default/k-orders"));
        assert_eq!(router.danube_topic("logs-a").as_deref(), Some("/default/logs-a"));
        assert_eq!(router.danube_topic("other"), None);
        assert_eq!(
            router.danube_topic("logs-app.v1").as_deref(),
            Some("/default/logs-app_v1"),
            "the broker refuses `.`"
        );
        assert_eq!(router.subscription(), vec!["orders".to_string(), "^logs-.*".to_string()]);
    }

    #[test]
    fn non_utf8_key_round_trips_through_hex() {
        let raw = [0xff, 0x00, 0x10];
        let (key, hex) = routing_key(&raw);
        assert!(hex);
        let mut attributes = HashMap::new();
        attributes.insert(ATTR_KEY_ENCODING.to_string(), "hex".to_string());
        assert_eq!(kafka_key(Some(&key), &attributes), Some(raw.to_vec()));
        assert_eq!(kafka_key(Some("plain"), &HashMap::new()), Some(b"plain".to_vec()));
    }

    #[test]
    fn non_utf8_header_round_trips_through_hex() {
        let mut attributes = HashMap::new();
        add_header(&mut attributes, "trace", Some(&[0xc3, 0x28]));
        add_header(&mut attributes, "tenant", Some(b"acme"));
        add_header(&mut attributes, "empty", None);
        assert_eq!(attributes.get("kafka.header-hex.trace").map(String::as_str), Some("c328"));
        let headers = kafka_headers(&attributes);
        assert!(headers.contains(&("trace".to_string(), vec![0xc3, 0x28])));
        assert!(headers.contains(&("tenant".to_string(), b"acme".to_vec())));
        assert!(headers.contains(&("empty".to_string(), Vec::new())));
    }

    #[test]
    fn malformed_hex_is_not_decoded() {
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex("0aFF"), Some(vec![0x0a, 0xff]));
    }
}
