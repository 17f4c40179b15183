//! Protobuf payloads (`prost-reflect` dynamic messages).
//!
//! The definition is either `.proto` source text (compiled in-process with the pure-Rust `protox`
//! compiler, feature `protobuf-source`; imports of the well-known `google/protobuf/*.proto`
//! files resolve, other imports do not) or a serialized `FileDescriptorSet` (raw bytes, or the
//! same as base64 text, e.g. the output of `protoc --include_imports -o set.pb`). One message
//! type of it is the payload: named explicitly, or the first message of the main file (the
//! source file, or the last file of the set).
//!
//! The wire payload is that message in the Protobuf binary encoding (no length prefix, no
//! Confluent magic byte / message index). A payload is invalid when it does not decode (bad
//! varint, truncated field, wrong wire type for a known field, invalid UTF-8 in a `string`), or
//! when a proto2 `required` field is missing; the violation names the field path
//! (`/customer/id`). Unknown field numbers are kept, as Protobuf readers do.
//!
//! # JSON mapping
//!
//! The proto3 JSON mapping with the **proto field names** (`order_id`, not `orderId`), default
//! values included, enums as names, 64-bit integers as strings, `bytes` as base64, well-known
//! types in their JSON form (`Timestamp` as RFC 3339). On encode both the proto and the JSON
//! (camelCase) names are accepted, and a key that is not a field is refused.
//!
//! # Compatibility
//!
//! [`super::check_compatible`] compares the payload messages field by field, by field number, recursively:
//! - a field both sides have must keep a wire-compatible type: `int32`/`uint32`/`int64`/
//!   `uint64`/`bool`/enum are interchangeable (as on the wire), and so are `sint32`/`sint64`,
//!   `fixed32`/`sfixed32`, `fixed64`/`sfixed64`, `string`/`bytes`; message fields are compared
//!   recursively; `float` and `double` are not interchangeable with anything;
//! - a field must not change between singular, repeated and map;
//! - a proto2 `required` field of the reader must be `required` in the writer too;
//! - a closed (proto2) enum of the reader must have every number of the writer's enum.
//!
//! Adding or removing an optional field is compatible both ways (old readers skip unknown
//! numbers). Renames are accepted (the wire only has numbers) although they change the JSON form,
//! and moving fields in or out of a `oneof` is not checked.

use std::collections::HashSet;

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{
    Cardinality, DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value as ProtoValue,
};
use serde_json::Value;

use super::{error_chain, push_segment, SchemaError, SchemaKind, Violation, Violations};

mod compat;
#[cfg(test)]
mod tests;
mod wire;

pub(crate) use compat::can_read;
use wire::locate_wire_error;

const KIND: SchemaKind = SchemaKind::Protobuf;

/// Name under which `.proto` source text is compiled.
#[cfg(feature = "protobuf-source")]
const SOURCE_FILE: &str = "schema.proto";

/// A compiled Protobuf schema: a descriptor pool and the payload message.
pub(crate) struct ProtobufCodec {
    message: MessageDescriptor,
    /// Whether any message reachable from the payload message has a `required` field (only
    /// then is the decoded message walked for missing ones).
    has_required: bool,
}

impl ProtobufCodec {
    /// Compiles the definition (`.proto` source, or a `FileDescriptorSet`, raw or base64) and
    /// picks the payload message (`message`, or the first message of the main file).
    pub(crate) fn compile(definition: &[u8], message: Option<&str>) -> Result<Self, SchemaError> {
        let (pool, main_file) = load_pool(definition)?;
        let descriptor = match message {
            Some(name) => {
                let name = name.trim_start_matches('.');
                pool.get_message_by_name(name).ok_or_else(|| {
                    let known: Vec<String> = pool.all_messages().map(|m| m.full_name().to_string()).collect();
                    SchemaError::definition(
                        KIND,
                        format!("message `{name}` is not defined (defined: {})", known.join(", ")),
                    )
                })?
            }
            None => pool
                .get_file_by_name(&main_file)
                .and_then(|f| f.messages().next())
                .ok_or_else(|| SchemaError::definition(KIND, format!("file `{main_file}` defines no message")))?,
        };
        let has_required = reaches_required(&descriptor, &mut HashSet::new());
        Ok(ProtobufCodec { message: descriptor, has_required })
    }

    /// Full name of the payload message (`shop.v1.Order`).
    pub(crate) fn message_name(&self) -> &str {
        self.message.full_name()
    }

    pub(crate) fn validate(&self, payload: &[u8]) -> Result<(), SchemaError> {
        self.decode(payload).map(|_| ())
    }

    pub(crate) fn decode_to_json(&self, payload: &[u8]) -> Result<Value, SchemaError> {
        let message = self.decode(payload)?;
        let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
        message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| SchemaError::payload_with(KIND, "", "message cannot be represented as JSON", e))
    }

    pub(crate) fn encode_from_json(&self, value: &Value) -> Result<Vec<u8>, SchemaError> {
        let options = DeserializeOptions::new().deny_unknown_fields(true);
        // Fast path without path tracking; an invalid value is deserialized again with it.
        let message = match DynamicMessage::deserialize_with_options(self.message.clone(), value, &options) {
            Ok(message) => message,
            Err(_) => {
                let mut track = serde_path_to_error::Track::new();
                let deserializer = serde_path_to_error::Deserializer::new(value, &mut track);
                let err = match DynamicMessage::deserialize_with_options(self.message.clone(), deserializer, &options) {
                    Ok(_) => return Err(SchemaError::payload_at(KIND, "", "value does not match the message")),
                    Err(e) => e,
                };
                let path = pointer_of(&track.path());
                return Err(SchemaError::payload_with(KIND, path, err.to_string(), err));
            }
        };
        if self.has_required {
            check_required(&message)?;
        }
        Ok(message.encode_to_vec())
    }

    fn decode(&self, payload: &[u8]) -> Result<DynamicMessage, SchemaError> {
        let message = DynamicMessage::decode(self.message.clone(), payload).map_err(|e| {
            let (path, detail) =
                locate_wire_error(&self.message, payload).unwrap_or_else(|| (String::new(), e.to_string()));
            SchemaError::payload_with(KIND, path, detail, e)
        })?;
        if self.has_required {
            check_required(&message)?;
        }
        Ok(message)
    }
}

/// Loads the definition into a pool; returns it and the name of the main file.
fn load_pool(definition: &[u8]) -> Result<(DescriptorPool, String), SchemaError> {
    let from_set = |bytes: &[u8]| -> Result<(DescriptorPool, String), prost_reflect::DescriptorError> {
        let pool = DescriptorPool::decode(bytes)?;
        let main = pool.files().last().map(|f| f.name().to_string()).unwrap_or_default();
        Ok((pool, main))
    };
    let raw_error = match from_set(definition) {
        Ok((pool, main)) if !main.is_empty() => return Ok((pool, main)),
        Ok(_) => None,
        Err(e) => Some(e),
    };
    let Ok(text) = std::str::from_utf8(definition) else {
        return Err(match raw_error {
            Some(e) => {
                SchemaError::definition_with(KIND, format!("not a valid FileDescriptorSet: {}", error_chain(&e)), e)
            }
            None => SchemaError::definition(KIND, "the FileDescriptorSet has no file"),
        });
    };
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&compact) {
        if let Ok((pool, main)) = from_set(&bytes) {
            if !main.is_empty() {
                return Ok((pool, main));
            }
        }
    }
    compile_source(text)
}

#[cfg(feature = "protobuf-source")]
fn compile_source(text: &str) -> Result<(DescriptorPool, String), SchemaError> {
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(SourceResolver(text.to_string()));
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_file(SOURCE_FILE).map_err(|e| {
        let message = format!("not a valid .proto source: {}", error_chain(&e));
        SchemaError::definition_with(KIND, message, e)
    })?;
    Ok((compiler.descriptor_pool(), SOURCE_FILE.to_string()))
}

#[cfg(not(feature = "protobuf-source"))]
fn compile_source(_text: &str) -> Result<(DescriptorPool, String), SchemaError> {
    Err(SchemaError::definition(
        KIND,
        "not a serialized FileDescriptorSet (raw or base64); .proto source needs the \
         `protobuf-source` feature",
    ))
}

/// Resolves the in-memory source as [`SOURCE_FILE`].
#[cfg(feature = "protobuf-source")]
struct SourceResolver(String);

#[cfg(feature = "protobuf-source")]
impl protox::file::FileResolver for SourceResolver {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == SOURCE_FILE {
            protox::file::File::from_source(name, &self.0)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// Converts a serde path (`a.b[0]`) to a JSON pointer (`/a/b/0`).
fn pointer_of(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => push_segment(&mut out, &index.to_string()),
            serde_path_to_error::Segment::Map { key } => push_segment(&mut out, key),
            serde_path_to_error::Segment::Enum { variant } => push_segment(&mut out, variant),
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// Whether `message` or a message type reachable through its fields has a `required` field.
fn reaches_required(message: &MessageDescriptor, seen: &mut HashSet<String>) -> bool {
    if !seen.insert(message.full_name().to_string()) {
        return false;
    }
    message.fields().any(|f| {
        f.cardinality() == Cardinality::Required
            || matches!(f.kind(), Kind::Message(inner) if reaches_required(&inner, seen))
    })
}

/// Reports missing proto2 `required` fields, recursively, with their paths.
fn check_required(message: &DynamicMessage) -> Result<(), SchemaError> {
    let mut violations = Violations::default();
    let mut path = String::new();
    required_walk(message, &mut path, &mut violations);
    if violations.list.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::payload(KIND, violations))
    }
}

fn required_walk(message: &DynamicMessage, path: &mut String, violations: &mut Violations) {
    for field in message.descriptor().fields() {
        let len = path.len();
        push_segment(path, field.name());
        if field.cardinality() == Cardinality::Required && !message.has_field(&field) {
            violations.push(Violation::new(path.clone(), "required field is missing"));
        } else if matches!(field.kind(), Kind::Message(_)) && message.has_field(&field) {
            match message.get_field(&field).as_ref() {
                ProtoValue::Message(inner) => required_walk(inner, path, violations),
                ProtoValue::List(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let ProtoValue::Message(inner) = item {
                            let len = path.len();
                            push_segment(path, &i.to_string());
                            required_walk(inner, path, violations);
                            path.truncate(len);
                        }
                    }
                }
                ProtoValue::Map(entries) => {
                    for (key, item) in entries {
                        if let ProtoValue::Message(inner) = item {
                            let len = path.len();
                            push_segment(path, &map_key_text(key));
                            required_walk(inner, path, violations);
                            path.truncate(len);
                        }
                    }
                }
                _ => {}
            }
        }
        path.truncate(len);
    }
}

fn map_key_text(key: &prost_reflect::MapKey) -> String {
    match key {
        prost_reflect::MapKey::Bool(b) => b.to_string(),
        prost_reflect::MapKey::I32(i) => i.to_string(),
        prost_reflect::MapKey::I64(i) => i.to_string(),
        prost_reflect::MapKey::U32(i) => i.to_string(),
        prost_reflect::MapKey::U64(i) => i.to_string(),
        prost_reflect::MapKey::String(s) => s.clone(),
    }
}
