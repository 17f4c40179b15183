//! JSON Schema payloads (the `jsonschema` crate; drafts 4 to 2020-12, picked by `$schema`).
//!
//! The wire payload is UTF-8 JSON text. `format` keywords are checked (e.g. `email`,
//! `date-time`). Remote `$ref`s are not fetched: a schema must be self-contained.
//!
//! # Compatibility (a simplification)
//!
//! [`super::check_compatible`] compares a writer schema with a reader
//! schema, recursively through `properties` and `items`, and looks only at:
//! - `required`: a property the reader requires must be required by the writer (so adding a
//!   required property breaks backward compatibility, and removing one breaks forward);
//! - `type`: every type the writer allows must be allowed by the reader (`integer` fits in
//!   `number`); a side without `type` is not compared;
//! - `enum`: every writer value must be a reader value;
//! - `additionalProperties: false` on the reader: every writer property must be declared by the
//!   reader, and the writer must be closed too (otherwise its data may carry anything).
//!
//! `$ref`, `allOf`/`anyOf`/`oneOf`, `patternProperties`, and value constraints (`minimum`,
//! `maxLength`, `pattern`, `format`, ...) are not compared: a change to them is accepted.

use serde_json::{Map, Value};

use super::{canonical_json, push_segment, SchemaError, SchemaKind, Violation, Violations};

const KIND: SchemaKind = SchemaKind::JsonSchema;

/// A compiled JSON Schema.
pub(crate) struct JsonSchemaCodec {
    validator: jsonschema::Validator,
    schema: Value,
}

impl JsonSchemaCodec {
    /// Compiles the definition; returns the codec and the canonical text of the definition.
    pub(crate) fn compile(definition: &[u8]) -> Result<(Self, Vec<u8>), SchemaError> {
        let schema: Value =
            serde_json::from_slice(definition).map_err(|e| SchemaError::definition_with(KIND, "not valid JSON", e))?;
        if !matches!(schema, Value::Object(_) | Value::Bool(_)) {
            return Err(SchemaError::definition(KIND, "a JSON Schema must be an object or a boolean"));
        }
        let validator = jsonschema::options().should_validate_formats(true).build(&schema).map_err(|e| {
            let message = format!("{} (at {})", e, schema_location(&e));
            SchemaError::definition_with(KIND, message, e.to_owned())
        })?;
        let mut canonical = String::new();
        canonical_json(&schema, &mut canonical);
        Ok((JsonSchemaCodec { validator, schema }, canonical.into_bytes()))
    }

    pub(crate) fn validate(&self, payload: &[u8]) -> Result<(), SchemaError> {
        self.decode_to_json(payload).map(|_| ())
    }

    pub(crate) fn decode_to_json(&self, payload: &[u8]) -> Result<Value, SchemaError> {
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| SchemaError::payload_with(KIND, "", "payload is not valid JSON", e))?;
        self.check(&value)?;
        Ok(value)
    }

    pub(crate) fn encode_from_json(&self, value: &Value) -> Result<Vec<u8>, SchemaError> {
        self.check(value)?;
        serde_json::to_vec(value).map_err(|e| SchemaError::payload_with(KIND, "", "value cannot be serialized", e))
    }

    fn check(&self, value: &Value) -> Result<(), SchemaError> {
        if self.validator.is_valid(value) {
            return Ok(());
        }
        let mut violations = Violations::default();
        for error in self.validator.iter_errors(value) {
            violations.push(Violation::new(error.instance_path().as_str().to_string(), error.to_string()));
        }
        if violations.list.is_empty() {
            violations.push(Violation::new("", "value does not match the schema"));
        }
        Err(SchemaError::payload(KIND, violations))
    }
}

fn schema_location(error: &jsonschema::ValidationError<'_>) -> String {
    let path = error.schema_path().as_str();
    if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    }
}

/// Reasons why data valid for `writer` may be invalid for `reader` (empty: compatible),
/// following the simplified rules in the module docs.
pub(crate) fn can_read(writer: &JsonSchemaCodec, reader: &JsonSchemaCodec) -> Vec<String> {
    let mut reasons = Vec::new();
    let mut path = String::new();
    compare(&writer.schema, &reader.schema, &mut path, &mut reasons);
    reasons
}

fn compare(writer: &Value, reader: &Value, path: &mut String, reasons: &mut Vec<String>) {
    let (Value::Object(w), Value::Object(r)) = (writer, reader) else {
        // `true`/`false` schemas: a reader `false` rejects everything a non-false writer allows.
        if reader == &Value::Bool(false) && writer != &Value::Bool(false) {
            reasons.push(format!("{}: the reader accepts no value", display(path)));
        }
        return;
    };

    compare_types(w, r, path, reasons);
    compare_enums(w, r, path, reasons);

    let w_props = w.get("properties").and_then(Value::as_object);
    let r_props = r.get("properties").and_then(Value::as_object);
    let w_required = required(w);
    for field in required(r) {
        if !w_required.contains(&field) {
            let how = if w_props.is_some_and(|p| p.contains_key(field)) {
                "is optional in the writer"
            } else {
                "is not in the writer"
            };
            reasons.push(format!("{}: property `{field}` is required by the reader but {how}", display(path)));
        }
    }

    let reader_closed = r.get("additionalProperties") == Some(&Value::Bool(false));
    let writer_closed = w.get("additionalProperties") == Some(&Value::Bool(false));
    if let Some(w_props) = w_props {
        for (name, w_prop) in w_props {
            let len = path.len();
            push_segment(path, name);
            match r_props.and_then(|p| p.get(name)) {
                Some(r_prop) => compare(w_prop, r_prop, path, reasons),
                None if reader_closed => {
                    reasons.push(format!("{path}: property is not allowed by the reader (additionalProperties: false)"))
                }
                None => {}
            }
            path.truncate(len);
        }
    }
    if reader_closed && !writer_closed && w_props.is_some() | r_props.is_some() {
        reasons.push(format!("{}: the reader forbids additional properties but the writer allows them", display(path)));
    }

    if let (Some(w_items), Some(r_items)) = (w.get("items"), r.get("items")) {
        let len = path.len();
        path.push_str("/*");
        compare(w_items, r_items, path, reasons);
        path.truncate(len);
    }
}

fn compare_types(w: &Map<String, Value>, r: &Map<String, Value>, path: &str, reasons: &mut Vec<String>) {
    let (Some(w_types), Some(r_types)) = (types(w), types(r)) else {
        return;
    };
    for t in &w_types {
        let allowed = r_types.contains(t) || (*t == "integer" && r_types.contains(&"number"));
        if !allowed {
            reasons.push(format!(
                "{}: type `{t}` of the writer is not accepted by the reader (reader: {})",
                display(path),
                r_types.join(", ")
            ));
        }
    }
}

fn compare_enums(w: &Map<String, Value>, r: &Map<String, Value>, path: &str, reasons: &mut Vec<String>) {
    let Some(r_enum) = r.get("enum").and_then(Value::as_array) else {
        return;
    };
    match w.get("enum").and_then(Value::as_array) {
        Some(w_enum) => {
            for v in w_enum {
                if !r_enum.contains(v) {
                    reasons
                        .push(format!("{}: enum value {v} of the writer is not accepted by the reader", display(path)));
                }
            }
        }
        None => {
            reasons.push(format!("{}: the reader restricts values to an enum the writer does not have", display(path)))
        }
    }
}

fn types(schema: &Map<String, Value>) -> Option<Vec<&str>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn required(schema: &Map<String, Value>) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn display(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::super::{check_compatible, CompatibilityMode, Schema};
    use super::*;
    use serde_json::json;

    const USER: &str = r#"{
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "email": {"type": "string", "format": "email"},
            "tags": {"type": "array", "items": {"type": "string"}}
        },
        "required": ["name", "age"]
    }"#;

    fn compile(def: &str) -> Schema {
        Schema::compile(SchemaKind::JsonSchema, def).unwrap()
    }

    #[test]
    fn invalid_payload_names_the_field() {
        let schema = compile(USER);
        let err = schema.validate(br#"{"name": "ann", "age": "x"}"#).unwrap_err();
        assert!(err.is_invalid_payload());
        assert_eq!(err.violations()[0].path, "/age");
        assert!(err.to_string().contains(r#"/age: "x" is not of type "integer""#), "{err}");
    }

    #[test]
    fn nested_array_item_path_and_format_are_checked() {
        let schema = compile(USER);
        let err =
            schema.encode_from_json(&json!({"name": "a", "age": 1, "tags": ["ok", 3], "email": "nope"})).unwrap_err();
        let paths: Vec<&str> = err.violations().iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"/tags/1"), "{paths:?}");
        assert!(paths.contains(&"/email"), "{paths:?}");
    }

    #[test]
    fn missing_required_property_is_reported() {
        let schema = compile(USER);
        let err = schema.decode_to_json(br#"{"name": "a"}"#).unwrap_err();
        assert!(err.to_string().contains("\"age\" is a required property"), "{err}");
    }

    #[test]
    fn not_json_is_an_invalid_payload() {
        let schema = compile(USER);
        assert!(schema.validate(b"{not json").unwrap_err().is_invalid_payload());
    }

    #[test]
    fn invalid_definitions_are_refused() {
        for def in [r#"{"type": 12}"#, "{", "[1,2]", r#"{"$ref": "https://example.com/s.json"}"#] {
            let err = Schema::compile(SchemaKind::JsonSchema, def).unwrap_err();
            assert!(err.is_invalid_definition(), "{def}: {err}");
        }
    }

    #[test]
    fn round_trip_keeps_the_value() {
        let schema = compile(USER);
        let value = json!({"name": "a", "age": 3, "tags": ["x"], "email": "a@b.co"});
        let bytes = schema.encode_from_json(&value).unwrap();
        assert_eq!(schema.decode_to_json(&bytes).unwrap(), value);
    }

    #[test]
    fn compatibility_rules() {
        let old = compile(USER);
        let optional_added = compile(
            r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
                "city":{"type":"string"}},"required":["name","age"]}"#,
        );
        check_compatible(&old, &optional_added, CompatibilityMode::Full).unwrap();

        let required_added = compile(
            r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
                "city":{"type":"string"}},"required":["name","age","city"]}"#,
        );
        let err = check_compatible(&old, &required_added, CompatibilityMode::Backward).unwrap_err();
        assert!(err.to_string().contains("`city` is required by the reader"), "{err}");
        assert!(check_compatible(&old, &required_added, CompatibilityMode::Full).unwrap_err().is_incompatible());
        // Old readers still read new data: forward is fine.
        check_compatible(&old, &required_added, CompatibilityMode::Forward).unwrap();

        let widened = compile(
            r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"number"}},
                "required":["name","age"]}"#,
        );
        check_compatible(&old, &widened, CompatibilityMode::Backward).unwrap();
        let err = check_compatible(&old, &widened, CompatibilityMode::Forward).unwrap_err();
        assert!(err.to_string().contains("/age: type `number`"), "{err}");

        let closed_old = compile(
            r#"{"type":"object","additionalProperties":false,
                "properties":{"name":{"type":"string"}},"required":["name"]}"#,
        );
        let closed_new = compile(
            r#"{"type":"object","additionalProperties":false,
                "properties":{"name":{"type":"string"},"nick":{"type":"string"}},"required":["name"]}"#,
        );
        check_compatible(&closed_old, &closed_new, CompatibilityMode::Backward).unwrap();
        let err = check_compatible(&closed_old, &closed_new, CompatibilityMode::Forward).unwrap_err();
        assert!(err.to_string().contains("/nick: property is not allowed"), "{err}");
    }
}
