//! Avro payloads (the `apache-avro` crate).
//!
//! The wire payload is one Avro **binary datum** written with the registry's schema: no object
//! container header, no single-object-encoding prefix, no Confluent magic byte (the schema is
//! identified by the message's `schema_id`, not by the payload). Bytes left after the datum make
//! the payload invalid.
//!
//! # JSON mapping
//!
//! [`super::Schema::decode_to_json`] and [`super::Schema::encode_from_json`] use a plain JSON
//! form (not Avro's own JSON encoding, which wraps union values in `{"type": value}`):
//!
//! | Avro | JSON |
//! | --- | --- |
//! | `null`, `boolean`, `string` | `null`, `true`/`false`, a string |
//! | `int`, `long` | an integer (range-checked on encode) |
//! | `float`, `double` | a number; NaN and infinities as the strings `"NaN"`, `"Infinity"`, `"-Infinity"` |
//! | `bytes`, `fixed` | a base64 string (standard alphabet, padded) |
//! | `enum` | the symbol as a string |
//! | `array`, `map` | an array, an object |
//! | `record` | an object with one key per field; on encode a missing field takes its default, and a key that is not a field is refused |
//! | union | the value of the branch itself (`null`, or the plain value); on encode the first branch the value fits is taken, and the tagged form `{"<branch type name>": value}` is accepted too |
//! | `decimal` (bytes or fixed) | a decimal string such as `"12.30"` (encode also takes a JSON number; more fractional digits than the scale, or more digits than the precision, is refused) |
//! | `uuid` | the UUID string |
//! | `date`, `time-*`, `timestamp-*`, `local-timestamp-*` | the integer (days, or ms/µs/ns as the logical type says) |
//! | `duration` | `{"months": n, "days": n, "millis": n}` |
//!
//! # Compatibility
//!
//! [`super::check_compatible`] applies the Avro schema-resolution rules (the ones `apache-avro`'s own
//! `SchemaCompatibility` implements, re-done here so that logical types, named references and
//! enum defaults are handled and every reason carries the field path):
//! - a reader record field missing from the writer needs a default; writer fields the reader
//!   does not have are skipped; reader field aliases match writer field names;
//! - types may be promoted: `int` -> `long`/`float`/`double`, `long` -> `float`/`double`,
//!   `float` -> `double`, `string` <-> `bytes`;
//! - an enum reader must know every writer symbol, unless it has a `default`;
//! - records, enums and fixed keep their (unqualified) name or list the old one in `aliases`;
//!   fixed keeps its size;
//! - unions: every writer branch must be readable by the reader (a reader union reads a writer
//!   type if one of its branches does);
//! - logical types resolve by their underlying type (`timestamp-millis` reads as `long`), and a
//!   `decimal` read as a `decimal` must keep its scale and not shrink its precision (stricter
//!   than the spec, which leaves this open, because a silent rescale changes the numbers).
//!
//! Not checked: default values' types against their fields (the parser checks those), and
//! `doc`/custom attributes (they do not affect the data).

use std::collections::HashMap;

use apache_avro::schema::{Name, Namespace};
use apache_avro::types::Value as AvroValue;
use apache_avro::Schema as AvroSchema;
use serde_json::Value;

use super::{canonical_json, error_chain, SchemaError, SchemaKind, Violation};

mod compat;
mod encode;
mod json;
mod scan;
#[cfg(test)]
mod tests;

pub(crate) use compat::can_read;

const KIND: SchemaKind = SchemaKind::Avro;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Which JSON form a value is in: ours, or Avro's JSON encoding as used by field defaults
/// (`bytes`/`fixed` as strings of code points 0-255).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Plain,
    Default,
}

/// A compiled Avro schema.
pub(crate) struct AvroCodec {
    schema: AvroSchema,
    /// Named types (records, enums, fixed) by full name, to resolve references.
    names: HashMap<Name, AvroSchema>,
}

impl AvroCodec {
    /// Compiles the definition (Avro schema JSON); returns the codec and the canonical text of
    /// the definition (the JSON with sorted keys, no whitespace).
    pub(crate) fn compile(definition: &[u8]) -> Result<(Self, Vec<u8>), SchemaError> {
        let text = std::str::from_utf8(definition)
            .map_err(|e| SchemaError::definition_with(KIND, "definition is not UTF-8", e))?;
        let json: Value =
            serde_json::from_str(text).map_err(|e| SchemaError::definition_with(KIND, "not valid JSON", e))?;
        let schema = AvroSchema::parse_str(text).map_err(|e| {
            let message = error_chain(&e);
            SchemaError::definition_with(KIND, message, e)
        })?;
        let resolved = apache_avro::schema::ResolvedSchema::try_from(&schema).map_err(|e| {
            let message = error_chain(&e);
            SchemaError::definition_with(KIND, message, e)
        })?;
        let names = resolved.get_names().iter().map(|(name, schema)| (name.clone(), (*schema).clone())).collect();
        let mut canonical = String::new();
        canonical_json(&json, &mut canonical);
        Ok((AvroCodec { schema, names }, canonical.into_bytes()))
    }

    pub(crate) fn validate(&self, payload: &[u8]) -> Result<(), SchemaError> {
        self.scan(payload)
    }

    pub(crate) fn decode_to_json(&self, payload: &[u8]) -> Result<Value, SchemaError> {
        let value = self.decode_value(payload)?;
        let mut path = String::new();
        self.avro_to_json(&self.schema, &None, &value, &mut path)
    }

    pub(crate) fn encode_from_json(&self, value: &Value) -> Result<Vec<u8>, SchemaError> {
        let mut enc = encode::Enc::default();
        let ok = self.encode_json(&self.schema, &None, value, Form::Plain, &mut enc);
        if ok && enc.violations.list.is_empty() {
            return Ok(enc.out);
        }
        let mut violations = enc.violations;
        if violations.list.is_empty() {
            violations.push(Violation::new("", "value does not match the schema"));
        }
        Err(SchemaError::payload(KIND, violations))
    }

    fn decode_value(&self, payload: &[u8]) -> Result<AvroValue, SchemaError> {
        self.scan(payload)?;
        let mut reader = payload;
        let value = apache_avro::from_avro_datum(&self.schema, &mut reader, None).map_err(|e| {
            let message = format!("not a valid Avro datum of the schema: {}", error_chain(&e));
            SchemaError::payload_with(KIND, "", message, e)
        })?;
        if !reader.is_empty() {
            return Err(SchemaError::payload_at(
                KIND,
                "",
                format!("{} trailing bytes after the Avro datum", reader.len()),
            ));
        }
        Ok(value)
    }

    fn resolve<'a>(&'a self, schema: &'a AvroSchema, ns: &Namespace) -> &'a AvroSchema {
        match schema {
            AvroSchema::Ref { name } => {
                let full = name.fully_qualified_name(ns);
                self.names.get(&full).or_else(|| self.names.get(name)).unwrap_or(schema)
            }
            other => other,
        }
    }
}
