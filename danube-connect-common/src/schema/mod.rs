//! Payload schemas shared by the runtime and the connectors.
//!
//! One [`Schema`] type covers the schema types of the Danube registry
//! ([`SchemaKind`]): it is compiled once from the registry's definition
//! ([`Schema::compile`]), is cheap to clone (an `Arc`), and then
//!
//! - [`Schema::validate`]s a payload in the format's wire encoding,
//! - [`Schema::decode_to_json`] turns a wire payload into a `serde_json::Value`,
//! - [`Schema::encode_from_json`] validates a JSON value and encodes it into the wire format.
//!
//! Wire encodings:
//!
//! | kind | wire payload | JSON form |
//! | --- | --- | --- |
//! | `json_schema` | UTF-8 JSON text | the same JSON |
//! | `avro` | Avro binary datum (no container header, no single-object prefix) | see [`avro`] |
//! | `protobuf` | Protobuf binary message | proto3 JSON mapping with proto field names |
//! | `string` | UTF-8 text | a JSON string |
//! | `number` | a JSON number as text (`42`, `-1.5`) | a JSON number |
//! | `bytes` | anything | a base64 (standard, padded) JSON string |
//!
//! Errors ([`SchemaError`]) tell an invalid definition from an invalid payload, and a payload
//! error lists [`Violation`]s with the JSON pointer of the failing field, e.g.
//! `/age: "x" is not of type "integer"`, ready for an HTTP 400 body or a dead-letter
//! `dlq.error` attribute.
//!
//! [`check_compatible`] tells whether a schema change keeps data readable in a
//! [`CompatibilityMode`] (Avro: the Avro resolution rules; JSON Schema: a documented
//! simplification, see [`json_schema`]; Protobuf: field-number/type checks, see [`protobuf`]).

pub mod avro;
pub mod json_schema;
pub mod protobuf;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::error_chain;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A boxed error kept as the source of a [`SchemaError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Most violations listed in one [`SchemaError::InvalidPayload`] (the rest are counted).
pub const MAX_VIOLATIONS: usize = 16;

/// The schema types of the Danube schema registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    /// JSON Schema: payloads are JSON text validated against the schema.
    JsonSchema,
    /// Apache Avro: payloads are Avro binary datums written with the schema.
    Avro,
    /// Protocol Buffers: payloads are binary messages of one message type.
    Protobuf,
    /// UTF-8 text.
    String,
    /// A number, as JSON number text.
    Number,
    /// Any bytes (no validation).
    Bytes,
}

impl SchemaKind {
    /// Every kind, in registry order.
    pub const ALL: [SchemaKind; 6] = [
        SchemaKind::JsonSchema,
        SchemaKind::Avro,
        SchemaKind::Protobuf,
        SchemaKind::String,
        SchemaKind::Number,
        SchemaKind::Bytes,
    ];

    /// The registry's name of the kind (`json_schema`, `avro`, `protobuf`, `string`, `number`,
    /// `bytes`), as `danube_client::SchemaType::as_str` spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            SchemaKind::JsonSchema => "json_schema",
            SchemaKind::Avro => "avro",
            SchemaKind::Protobuf => "protobuf",
            SchemaKind::String => "string",
            SchemaKind::Number => "number",
            SchemaKind::Bytes => "bytes",
        }
    }

    /// A MIME type for payloads of this kind (for an HTTP `Content-Type` header).
    pub fn content_type(&self) -> &'static str {
        match self {
            SchemaKind::JsonSchema | SchemaKind::Number => "application/json",
            SchemaKind::Avro => "avro/binary",
            SchemaKind::Protobuf => "application/x-protobuf",
            SchemaKind::String => "text/plain; charset=utf-8",
            SchemaKind::Bytes => "application/octet-stream",
        }
    }
}

impl fmt::Display for SchemaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when a schema kind name is not one of the registry's.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown schema type `{0}` (expected one of json_schema, avro, protobuf, string, number, bytes)")]
pub struct UnknownSchemaKind(pub String);

impl FromStr for SchemaKind {
    type Err = UnknownSchemaKind;

    /// Parses the registry names, case-insensitively, plus the aliases the registry accepts
    /// (`jsonschema`, `json`, `proto`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json_schema" | "jsonschema" | "json" => Ok(SchemaKind::JsonSchema),
            "avro" => Ok(SchemaKind::Avro),
            "protobuf" | "proto" => Ok(SchemaKind::Protobuf),
            "string" => Ok(SchemaKind::String),
            "number" => Ok(SchemaKind::Number),
            "bytes" => Ok(SchemaKind::Bytes),
            _ => Err(UnknownSchemaKind(s.to_string())),
        }
    }
}

impl serde::Serialize for SchemaKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for SchemaKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Compatibility modes of the Danube registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CompatibilityMode {
    /// Any change is accepted.
    None,
    /// Data written with the old schema is readable with the new one (consumers upgrade first).
    #[default]
    Backward,
    /// Data written with the new schema is readable with the old one (producers upgrade first).
    Forward,
    /// Both backward and forward.
    Full,
}

impl CompatibilityMode {
    /// The registry's name of the mode (`none`, `backward`, `forward`, `full`).
    pub fn as_str(&self) -> &'static str {
        match self {
            CompatibilityMode::None => "none",
            CompatibilityMode::Backward => "backward",
            CompatibilityMode::Forward => "forward",
            CompatibilityMode::Full => "full",
        }
    }
}

impl fmt::Display for CompatibilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when a compatibility mode name is not one of the registry's.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown compatibility mode `{0}` (expected one of none, backward, forward, full)")]
pub struct UnknownCompatibilityMode(pub String);

impl FromStr for CompatibilityMode {
    type Err = UnknownCompatibilityMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(CompatibilityMode::None),
            "backward" => Ok(CompatibilityMode::Backward),
            "forward" => Ok(CompatibilityMode::Forward),
            "full" => Ok(CompatibilityMode::Full),
            _ => Err(UnknownCompatibilityMode(s.to_string())),
        }
    }
}

impl serde::Serialize for CompatibilityMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for CompatibilityMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// One reason a payload does not match its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer (RFC 6901) of the failing value in the JSON form of the payload; empty for
    /// the whole payload.
    pub path: String,
    /// What is wrong, e.g. `"x" is not of type "integer"`.
    pub message: String,
}

impl Violation {
    /// A violation at `path` (a JSON pointer, `""` for the root).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Violation { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The violations of one payload, displayed `; `-separated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Violations {
    /// The first [`MAX_VIOLATIONS`] violations.
    pub list: Vec<Violation>,
    /// How many more were found and left out.
    pub omitted: usize,
}

impl Violations {
    /// A single violation.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Violations { list: vec![Violation::new(path, message)], omitted: 0 }
    }

    /// Adds a violation, counting it as omitted past [`MAX_VIOLATIONS`].
    pub fn push(&mut self, violation: Violation) {
        if self.list.len() < MAX_VIOLATIONS {
            self.list.push(violation);
        } else {
            self.omitted += 1;
        }
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.list.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        if self.omitted > 0 {
            write!(f, "; and {} more", self.omitted)?;
        }
        Ok(())
    }
}

/// Errors of compiling schemas, checking payloads and checking compatibility.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema definition itself is invalid (not parseable, not a valid schema of its kind).
    #[error("invalid {kind} schema definition: {message}")]
    InvalidDefinition {
        /// Kind of the definition.
        kind: SchemaKind,
        /// What is wrong.
        message: String,
        /// Underlying parser error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A payload (or JSON value) does not match the schema.
    #[error("payload does not match the {kind} schema: {violations}")]
    InvalidPayload {
        /// Kind of the schema.
        kind: SchemaKind,
        /// What is wrong, with field paths.
        violations: Violations,
        /// Underlying decoder error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A new schema is not compatible with the old one in the requested mode.
    #[error("schema change is not {mode} compatible: {}", .reasons.join("; "))]
    Incompatible {
        /// The mode checked.
        mode: CompatibilityMode,
        /// Why, one entry per problem (with the field path where known).
        reasons: Vec<String>,
        /// Underlying checker error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl SchemaError {
    pub(crate) fn definition(kind: SchemaKind, message: impl Into<String>) -> Self {
        SchemaError::InvalidDefinition { kind, message: message.into(), source: None }
    }

    pub(crate) fn definition_with(kind: SchemaKind, message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        SchemaError::InvalidDefinition { kind, message: message.into(), source: Some(source.into()) }
    }

    pub(crate) fn payload(kind: SchemaKind, violations: Violations) -> Self {
        SchemaError::InvalidPayload { kind, violations, source: None }
    }

    pub(crate) fn payload_at(kind: SchemaKind, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::payload(kind, Violations::one(path, message))
    }

    pub(crate) fn payload_with(
        kind: SchemaKind,
        path: impl Into<String>,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        SchemaError::InvalidPayload { kind, violations: Violations::one(path, message), source: Some(source.into()) }
    }

    /// True when a payload (not the schema) was refused: the record is invalid and retrying it
    /// will not help (dead-letter it, or answer 400).
    pub fn is_invalid_payload(&self) -> bool {
        matches!(self, SchemaError::InvalidPayload { .. })
    }

    /// True when the schema definition was refused.
    pub fn is_invalid_definition(&self) -> bool {
        matches!(self, SchemaError::InvalidDefinition { .. })
    }

    /// True when a schema change was refused by [`check_compatible`].
    pub fn is_incompatible(&self) -> bool {
        matches!(self, SchemaError::Incompatible { .. })
    }

    /// The payload violations (empty for other errors).
    pub fn violations(&self) -> &[Violation] {
        match self {
            SchemaError::InvalidPayload { violations, .. } => &violations.list,
            _ => &[],
        }
    }
}

/// A compiled schema: compile once, share freely (cloning is an `Arc` bump).
#[derive(Clone)]
pub struct Schema {
    inner: Arc<Inner>,
}

struct Inner {
    kind: SchemaKind,
    definition: Vec<u8>,
    fingerprint: String,
    codec: Codec,
}

enum Codec {
    Json(json_schema::JsonSchemaCodec),
    Avro(avro::AvroCodec),
    Protobuf(protobuf::ProtobufCodec),
    String,
    Number,
    Bytes,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema")
            .field("kind", &self.inner.kind)
            .field("fingerprint", &self.inner.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Schema {
    /// Compiles a schema of `kind` from the registry's definition bytes.
    ///
    /// - `json_schema`, `avro`: the schema JSON text.
    /// - `protobuf`: `.proto` source text (with the `protobuf-source` feature), or a serialized
    ///   `FileDescriptorSet` (raw bytes or base64). The payload message is the first message of
    ///   the main file (the source file, or the last file of the set); use
    ///   [`Schema::compile_protobuf`] to name another one.
    /// - `string`, `number`, `bytes`: the definition is ignored (usually empty).
    pub fn compile(kind: SchemaKind, definition: impl AsRef<[u8]>) -> Result<Self, SchemaError> {
        Self::build(kind, definition.as_ref(), None)
    }

    /// Compiles a Protobuf schema whose payload message is `message` (a full name such as
    /// `shop.v1.Order`), or the default message when `None` (see [`Schema::compile`]).
    pub fn compile_protobuf(definition: &[u8], message: Option<&str>) -> Result<Self, SchemaError> {
        Self::build(SchemaKind::Protobuf, definition, message)
    }

    /// Compiles a schema from a registry answer: its `schema_type` name (see
    /// [`SchemaKind::from_str`]) and definition bytes.
    pub fn from_registry(schema_type: &str, definition: &[u8]) -> Result<Self, SchemaError> {
        let kind = schema_type
            .parse::<SchemaKind>()
            .map_err(|e| SchemaError::definition_with(SchemaKind::Bytes, "unknown schema type", e))?;
        Self::compile(kind, definition)
    }

    fn build(kind: SchemaKind, definition: &[u8], message: Option<&str>) -> Result<Self, SchemaError> {
        let (codec, canonical) = match kind {
            SchemaKind::JsonSchema => {
                let (codec, canonical) = json_schema::JsonSchemaCodec::compile(definition)?;
                (Codec::Json(codec), canonical)
            }
            SchemaKind::Avro => {
                let (codec, canonical) = avro::AvroCodec::compile(definition)?;
                (Codec::Avro(codec), canonical)
            }
            SchemaKind::Protobuf => {
                let codec = protobuf::ProtobufCodec::compile(definition, message)?;
                let mut canonical = definition.to_vec();
                canonical.push(0);
                canonical.extend_from_slice(codec.message_name().as_bytes());
                (Codec::Protobuf(codec), canonical)
            }
            SchemaKind::String => (Codec::String, Vec::new()),
            SchemaKind::Number => (Codec::Number, Vec::new()),
            SchemaKind::Bytes => (Codec::Bytes, Vec::new()),
        };
        let fingerprint = fingerprint_of(kind, &canonical);
        Ok(Schema { inner: Arc::new(Inner { kind, definition: definition.to_vec(), fingerprint, codec }) })
    }

    /// The kind of this schema.
    pub fn kind(&self) -> SchemaKind {
        self.inner.kind
    }

    /// The definition exactly as compiled (what to register in the registry).
    pub fn definition(&self) -> &[u8] {
        &self.inner.definition
    }

    /// A stable id of the definition: `sha256:<hex>` over the kind and a canonical form of the
    /// definition (JSON Schema and Avro: the JSON with sorted keys and no whitespace, so
    /// formatting does not matter; Protobuf: the definition bytes and the message name).
    /// It is not the broker's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// The Protobuf payload message's full name (None for other kinds).
    pub fn protobuf_message(&self) -> Option<&str> {
        match &self.inner.codec {
            Codec::Protobuf(c) => Some(c.message_name()),
            _ => None,
        }
    }

    /// Checks that `payload` (in the kind's wire encoding) matches the schema.
    pub fn validate(&self, payload: &[u8]) -> Result<(), SchemaError> {
        match &self.inner.codec {
            Codec::Json(c) => c.validate(payload),
            Codec::Avro(c) => c.validate(payload),
            Codec::Protobuf(c) => c.validate(payload),
            Codec::String => std::str::from_utf8(payload)
                .map(|_| ())
                .map_err(|e| SchemaError::payload_with(SchemaKind::String, "", "payload is not UTF-8", e)),
            Codec::Number => decode_number(payload).map(|_| ()),
            Codec::Bytes => Ok(()),
        }
    }

    /// Decodes a wire payload into its JSON form, validating it.
    pub fn decode_to_json(&self, payload: &[u8]) -> Result<Value, SchemaError> {
        match &self.inner.codec {
            Codec::Json(c) => c.decode_to_json(payload),
            Codec::Avro(c) => c.decode_to_json(payload),
            Codec::Protobuf(c) => c.decode_to_json(payload),
            Codec::String => std::str::from_utf8(payload)
                .map(|s| Value::String(s.to_string()))
                .map_err(|e| SchemaError::payload_with(SchemaKind::String, "", "payload is not UTF-8", e)),
            Codec::Number => decode_number(payload),
            Codec::Bytes => Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(payload))),
        }
    }

    /// Validates a JSON value against the schema and encodes it into the wire format.
    pub fn encode_from_json(&self, value: &Value) -> Result<Vec<u8>, SchemaError> {
        match &self.inner.codec {
            Codec::Json(c) => c.encode_from_json(value),
            Codec::Avro(c) => c.encode_from_json(value),
            Codec::Protobuf(c) => c.encode_from_json(value),
            Codec::String => match value {
                Value::String(s) => Ok(s.as_bytes().to_vec()),
                other => Err(SchemaError::payload_at(
                    SchemaKind::String,
                    "",
                    format!("expected a string, got {}", json_type_name(other)),
                )),
            },
            Codec::Number => match value {
                Value::Number(n) => Ok(n.to_string().into_bytes()),
                other => Err(SchemaError::payload_at(
                    SchemaKind::Number,
                    "",
                    format!("expected a number, got {}", json_type_name(other)),
                )),
            },
            Codec::Bytes => match value {
                Value::String(s) => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| SchemaError::payload_with(SchemaKind::Bytes, "", "expected a base64 string", e)),
                other => Err(SchemaError::payload_at(
                    SchemaKind::Bytes,
                    "",
                    format!("expected a base64 string, got {}", json_type_name(other)),
                )),
            },
        }
    }
}

/// Checks that replacing `old` with `new` keeps data readable in `mode`:
/// backward = data written with `old` is readable with `new`; forward = data written with `new`
/// is readable with `old`; full = both; none = always Ok.
///
/// A change of kind is incompatible (unless the mode is `none`). `string`, `number` and `bytes`
/// are always compatible with themselves. For the rules per format see [`avro`],
/// [`json_schema`] and [`protobuf`].
pub fn check_compatible(old: &Schema, new: &Schema, mode: CompatibilityMode) -> Result<(), SchemaError> {
    if mode == CompatibilityMode::None {
        return Ok(());
    }
    let mut reasons: Vec<String> = Vec::new();
    let mut check = |writer: &Schema, reader: &Schema, direction: &str| {
        let found = match (&writer.inner.codec, &reader.inner.codec) {
            (Codec::Json(w), Codec::Json(r)) => json_schema::can_read(w, r),
            (Codec::Avro(w), Codec::Avro(r)) => avro::can_read(w, r),
            (Codec::Protobuf(w), Codec::Protobuf(r)) => protobuf::can_read(w, r),
            _ if writer.kind() == reader.kind() => Vec::new(),
            _ => vec![format!("schema type changed from {} to {}", old.kind(), new.kind())],
        };
        for reason in found {
            // In full mode, say which direction failed.
            let reason = if mode == CompatibilityMode::Full { format!("{direction}: {reason}") } else { reason };
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
    };
    if matches!(mode, CompatibilityMode::Backward | CompatibilityMode::Full) {
        check(old, new, "backward");
    }
    if matches!(mode, CompatibilityMode::Forward | CompatibilityMode::Full) {
        check(new, old, "forward");
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Incompatible { mode, reasons, source: None })
    }
}

fn decode_number(payload: &[u8]) -> Result<Value, SchemaError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v @ Value::Number(_)) => Ok(v),
        Ok(other) => Err(SchemaError::payload_at(
            SchemaKind::Number,
            "",
            format!("expected a number, got {}", json_type_name(&other)),
        )),
        Err(e) => Err(SchemaError::payload_with(SchemaKind::Number, "", "payload is not a JSON number", e)),
    }
}

fn fingerprint_of(kind: SchemaKind, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_str().as_bytes());
    hasher.update([0u8]);
    hasher.update(canonical);
    let digest = hasher.finalize();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Writes `value` as compact JSON with object keys sorted (a canonical form for fingerprints,
/// independent of serde_json's `preserve_order` feature).
pub(crate) fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    canonical_json(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The JSON type name of a value, for messages.
pub(crate) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Appends one JSON-pointer segment (escaping `~` and `/`) to `path`.
pub(crate) fn push_segment(path: &mut String, segment: &str) {
    path.push('/');
    for c in segment.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_registry_names() {
        for kind in SchemaKind::ALL {
            assert_eq!(kind.as_str().parse::<SchemaKind>().unwrap(), kind);
        }
        assert_eq!("JSONSCHEMA".parse::<SchemaKind>().unwrap(), SchemaKind::JsonSchema);
        assert!("xml".parse::<SchemaKind>().is_err());
    }

    #[test]
    fn string_schema_refuses_invalid_utf8() {
        let schema = Schema::compile(SchemaKind::String, "").unwrap();
        schema.validate(b"hello").unwrap();
        let err = schema.validate(&[0xff, 0xfe]).unwrap_err();
        assert!(err.is_invalid_payload(), "{err}");
        assert_eq!(schema.encode_from_json(&"hi".into()).unwrap(), b"hi");
        assert_eq!(schema.decode_to_json(b"hi").unwrap(), Value::from("hi"));
        assert!(schema.encode_from_json(&Value::from(1)).is_err());
    }

    #[test]
    fn number_schema_accepts_only_json_numbers() {
        let schema = Schema::compile(SchemaKind::Number, "").unwrap();
        schema.validate(b"42").unwrap();
        schema.validate(b"-1.5e3").unwrap();
        assert!(schema.validate(b"\"42\"").unwrap_err().is_invalid_payload());
        assert!(schema.validate(b"4x").unwrap_err().is_invalid_payload());
        let encoded = schema.encode_from_json(&serde_json::json!(12.25)).unwrap();
        assert_eq!(schema.decode_to_json(&encoded).unwrap(), serde_json::json!(12.25));
    }

    #[test]
    fn bytes_schema_accepts_anything_and_uses_base64_json() {
        let schema = Schema::compile(SchemaKind::Bytes, "").unwrap();
        schema.validate(&[0, 159, 146, 150]).unwrap();
        let json = schema.decode_to_json(&[0, 1, 2]).unwrap();
        assert_eq!(json, Value::from("AAEC"));
        assert_eq!(schema.encode_from_json(&json).unwrap(), vec![0, 1, 2]);
        assert!(schema.encode_from_json(&Value::from("not base64!")).is_err());
    }

    #[test]
    fn fingerprint_ignores_json_formatting_but_not_content() {
        let a = Schema::compile(SchemaKind::JsonSchema, r#"{"type":"object","required":["a"]}"#).unwrap();
        let b =
            Schema::compile(SchemaKind::JsonSchema, "{\n  \"required\": [\"a\"],\n  \"type\": \"object\"\n}").unwrap();
        let c = Schema::compile(SchemaKind::JsonSchema, r#"{"type":"object"}"#).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert!(a.fingerprint().starts_with("sha256:"));
    }

    #[test]
    fn changing_kind_is_incompatible_unless_mode_none() {
        let s = Schema::compile(SchemaKind::String, "").unwrap();
        let n = Schema::compile(SchemaKind::Number, "").unwrap();
        let err = check_compatible(&s, &n, CompatibilityMode::Backward).unwrap_err();
        assert!(err.to_string().contains("schema type changed from string to number"), "{err}");
        check_compatible(&s, &n, CompatibilityMode::None).unwrap();
        check_compatible(&s, &s, CompatibilityMode::Full).unwrap();
    }

    #[test]
    fn schemas_are_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Schema>();
        assert_send_sync::<SchemaError>();
    }

    #[test]
    fn every_format_refuses_a_wrong_field_with_its_path() {
        let json = Schema::from_registry(
            "json_schema",
            br#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#,
        )
        .unwrap();
        let avro =
            Schema::from_registry("avro", br#"{"type":"record","name":"R","fields":[{"name":"n","type":"int"}]}"#)
                .unwrap();
        let proto = Schema::from_registry("protobuf", b"syntax = \"proto3\"; message R { int32 n = 1; }").unwrap();
        for schema in [&json, &avro, &proto] {
            let good = schema.encode_from_json(&serde_json::json!({"n": 5})).unwrap();
            assert_eq!(schema.decode_to_json(&good).unwrap()["n"], serde_json::json!(5));
            let err = schema.encode_from_json(&serde_json::json!({"n": "five"})).unwrap_err();
            assert!(err.is_invalid_payload(), "{}: {err}", schema.kind());
            assert_eq!(err.violations()[0].path, "/n", "{}: {err}", schema.kind());
        }
        assert!(Schema::from_registry("xml", b"").unwrap_err().is_invalid_definition());
    }

    #[test]
    fn violations_display_with_path_and_cap() {
        let mut v = Violations::default();
        for i in 0..(MAX_VIOLATIONS + 2) {
            v.push(Violation::new(format!("/f{i}"), "bad"));
        }
        let text = v.to_string();
        assert!(text.starts_with("/f0: bad; /f1: bad"), "{text}");
        assert!(text.ends_with("; and 2 more"), "{text}");
        let mut p = String::new();
        push_segment(&mut p, "a/b~c");
        assert_eq!(p, "/a~1b~0c");
    }
}
