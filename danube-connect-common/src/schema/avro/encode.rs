//! JSON form -> Avro binary datum, in one pass with field-path violations.
//!
//! Written directly (not through `apache_avro::types::Value` and `to_avro_datum`, which
//! re-resolves and re-validates the schema on every call): the tests decode every output with
//! `apache_avro::from_avro_datum` and compare against hand-computed bytes.

use serde_json::Value;

use super::json::{branch_names, decimal_from_json, decode_base64, int_in_range, json_to_float, type_name};
use super::{AvroCodec, Form};
use apache_avro::schema::{Namespace, RecordSchema, UnionSchema};
use apache_avro::Schema as AvroSchema;

use crate::schema::{json_type_name, push_segment, Violation, Violations};

/// Appends a zigzag varint long.
pub(super) fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends a length-prefixed byte string.
fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_long(out, i64::try_from(bytes.len()).unwrap_or(i64::MAX));
    out.extend_from_slice(bytes);
}

fn write_index(out: &mut Vec<u8>, index: usize) {
    write_long(out, i64::try_from(index).unwrap_or(i64::MAX));
}

impl AvroCodec {
    /// Appends the JSON value as a datum of `schema` to `out`, recording violations (false
    /// when it does not fit; `out` then holds garbage the caller drops).
    pub(super) fn encode_json(
        &self,
        schema: &AvroSchema,
        ns: &Namespace,
        value: &Value,
        form: Form,
        enc: &mut Enc,
    ) -> bool {
        let schema = self.resolve(schema, ns);
        match schema {
            AvroSchema::Null => match value {
                Value::Null => true,
                other => enc.fail(format!("expected null, got {}", json_type_name(other))),
            },
            AvroSchema::Boolean => match value {
                Value::Bool(b) => {
                    enc.out.push(u8::from(*b));
                    true
                }
                other => enc.fail(format!("expected a boolean, got {}", json_type_name(other))),
            },
            AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => {
                match int_in_range(value, i64::from(i32::MIN), i64::from(i32::MAX)) {
                    Ok(i) => {
                        write_long(&mut enc.out, i);
                        true
                    }
                    Err(message) => enc.fail(format!("{message} (Avro {})", type_name(schema))),
                }
            }
            AvroSchema::Long
            | AvroSchema::TimeMicros
            | AvroSchema::TimestampMillis
            | AvroSchema::TimestampMicros
            | AvroSchema::TimestampNanos
            | AvroSchema::LocalTimestampMillis
            | AvroSchema::LocalTimestampMicros
            | AvroSchema::LocalTimestampNanos => match int_in_range(value, i64::MIN, i64::MAX) {
                Ok(i) => {
                    write_long(&mut enc.out, i);
                    true
                }
                Err(message) => enc.fail(format!("{message} (Avro {})", type_name(schema))),
            },
            AvroSchema::Float => match json_to_float(value) {
                Some(f) if f.is_finite() && (f as f32).is_infinite() => {
                    enc.fail(format!("{f} is out of the range of an Avro float"))
                }
                Some(f) => {
                    enc.out.extend_from_slice(&(f as f32).to_le_bytes());
                    true
                }
                None => enc.fail(format!("expected a number, got {}", json_type_name(value))),
            },
            AvroSchema::Double => match json_to_float(value) {
                Some(f) => {
                    enc.out.extend_from_slice(&f.to_le_bytes());
                    true
                }
                None => enc.fail(format!("expected a number, got {}", json_type_name(value))),
            },
            AvroSchema::String => match value {
                Value::String(s) => {
                    write_bytes(&mut enc.out, s.as_bytes());
                    true
                }
                other => enc.fail(format!("expected a string, got {}", json_type_name(other))),
            },
            AvroSchema::Bytes => match decode_base64(value, form) {
                Ok(b) => {
                    write_bytes(&mut enc.out, &b);
                    true
                }
                Err(message) => enc.fail(message),
            },
            AvroSchema::Fixed(f) => match decode_base64(value, form) {
                Ok(b) if b.len() == f.size => {
                    enc.out.extend_from_slice(&b);
                    true
                }
                Ok(b) => enc.fail(format!(
                    "expected {} bytes for fixed `{}`, got {}",
                    f.size,
                    f.name.fullname(None),
                    b.len()
                )),
                Err(message) => enc.fail(message),
            },
            AvroSchema::Uuid => match value {
                Value::String(s) => match apache_avro::Uuid::parse_str(s) {
                    Ok(u) => {
                        write_bytes(&mut enc.out, u.to_string().as_bytes());
                        true
                    }
                    Err(e) => enc.fail(format!("not a UUID: {e}")),
                },
                other => enc.fail(format!("expected a UUID string, got {}", json_type_name(other))),
            },
            AvroSchema::Decimal(d) => match decimal_from_json(value, d, ns, self, form) {
                Ok((bytes, fixed)) => {
                    if fixed {
                        enc.out.extend_from_slice(&bytes);
                    } else {
                        write_bytes(&mut enc.out, &bytes);
                    }
                    true
                }
                Err(message) => enc.fail(message),
            },
            AvroSchema::BigDecimal => {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => return enc.fail(format!("expected a decimal string, got {}", json_type_name(other))),
                };
                match text.parse::<apache_avro::BigDecimal>() {
                    Ok(d) => {
                        // bytes(bytes(unscaled) long(scale)), as apache-avro writes it.
                        let (unscaled, scale) = d.as_bigint_and_exponent();
                        let mut inner = Vec::new();
                        write_bytes(&mut inner, &unscaled.to_signed_bytes_be());
                        write_long(&mut inner, scale);
                        write_bytes(&mut enc.out, &inner);
                        true
                    }
                    Err(e) => enc.fail(format!("not a decimal number: {e}")),
                }
            }
            AvroSchema::Duration => self.encode_duration(value, enc),
            AvroSchema::Enum(e) => match value {
                Value::String(s) => match e.symbols.iter().position(|sym| sym == s) {
                    Some(i) => {
                        write_index(&mut enc.out, i);
                        true
                    }
                    None => enc.fail(format!(
                        "`{s}` is not a symbol of enum `{}` (expected one of {})",
                        e.name.fullname(None),
                        e.symbols.join(", ")
                    )),
                },
                other => enc.fail(format!("expected an enum symbol string, got {}", json_type_name(other))),
            },
            AvroSchema::Array(a) => match value {
                Value::Array(items) => {
                    if !items.is_empty() {
                        write_index(&mut enc.out, items.len());
                    }
                    let mut ok = true;
                    for (i, item) in items.iter().enumerate() {
                        let len = enc.path.len();
                        push_segment(&mut enc.path, &i.to_string());
                        ok &= self.encode_json(&a.items, ns, item, form, enc);
                        enc.path.truncate(len);
                    }
                    enc.out.push(0);
                    ok
                }
                other => enc.fail(format!("expected an array, got {}", json_type_name(other))),
            },
            AvroSchema::Map(m) => match value {
                Value::Object(entries) => {
                    if !entries.is_empty() {
                        write_index(&mut enc.out, entries.len());
                    }
                    let mut ok = true;
                    for (key, item) in entries {
                        write_bytes(&mut enc.out, key.as_bytes());
                        let len = enc.path.len();
                        push_segment(&mut enc.path, key);
                        ok &= self.encode_json(&m.types, ns, item, form, enc);
                        enc.path.truncate(len);
                    }
                    enc.out.push(0);
                    ok
                }
                other => enc.fail(format!("expected an object, got {}", json_type_name(other))),
            },
            AvroSchema::Record(r) => self.encode_record(r, ns, value, form, enc),
            AvroSchema::Union(u) => self.encode_union(u, ns, value, form, enc),
            AvroSchema::Ref { name } => {
                enc.fail(format!("schema reference `{}` cannot be resolved", name.fullname(None)))
            }
        }
    }

    fn encode_record(&self, r: &RecordSchema, ns: &Namespace, value: &Value, form: Form, enc: &mut Enc) -> bool {
        let Value::Object(map) = value else {
            return enc.fail(format!(
                "expected an object for record `{}`, got {}",
                r.name.fullname(None),
                json_type_name(value)
            ));
        };
        let inner_ns = r.name.namespace.clone().or_else(|| ns.clone());
        let mut ok = true;
        let mut present = 0usize;
        for field in &r.fields {
            let len = enc.path.len();
            push_segment(&mut enc.path, &field.name);
            let item = match (map.get(&field.name), &field.default) {
                (Some(item), _) => {
                    present += 1;
                    Some((item, form))
                }
                (None, Some(default)) => Some((default, Form::Default)),
                (None, None) => None,
            };
            ok &= match item {
                Some((item, item_form)) => self.encode_json(&field.schema, &inner_ns, item, item_form, enc),
                None => enc.fail("required field is missing (it has no default)".into()),
            };
            enc.path.truncate(len);
        }
        if map.len() > present {
            for key in map.keys() {
                if !r.lookup.contains_key(key) {
                    let len = enc.path.len();
                    push_segment(&mut enc.path, key);
                    enc.fail(format!("field is not in record `{}`", r.name.fullname(None)));
                    enc.path.truncate(len);
                    ok = false;
                }
            }
        }
        ok
    }

    fn encode_union(&self, u: &UnionSchema, ns: &Namespace, value: &Value, form: Form, enc: &mut Enc) -> bool {
        let variants = u.variants();
        let start = enc.out.len();
        let outer = std::mem::take(&mut enc.violations);
        let mut per_branch = Vec::with_capacity(variants.len());
        for (i, branch) in variants.iter().enumerate() {
            write_index(&mut enc.out, i);
            if self.encode_json(branch, ns, value, form, enc) {
                enc.violations = outer;
                return true;
            }
            enc.out.truncate(start);
            per_branch.push(std::mem::take(&mut enc.violations));
        }
        enc.violations = outer;
        // The tagged form of Avro's JSON encoding: {"<type name>": value}.
        if let Value::Object(map) = value {
            if map.len() == 1 {
                if let Some((tag, inner)) = map.iter().next() {
                    let found = variants.iter().enumerate().find(|(_, b)| {
                        let b = self.resolve(b, ns);
                        branch_names(b).iter().any(|n| n == tag)
                    });
                    if let Some((i, branch)) = found {
                        let len = enc.path.len();
                        push_segment(&mut enc.path, tag);
                        write_index(&mut enc.out, i);
                        let ok = self.encode_json(branch, ns, inner, form, enc);
                        enc.path.truncate(len);
                        return ok;
                    }
                }
            }
        }
        // A nullable type: report why the value does not fit the non-null branch.
        let non_null: Vec<usize> =
            variants.iter().enumerate().filter(|(_, b)| !matches!(b, AvroSchema::Null)).map(|(i, _)| i).collect();
        if let [only] = non_null.as_slice() {
            if !value.is_null() {
                for v in std::mem::take(&mut per_branch[*only]).list {
                    enc.violations.push(v);
                }
                return false;
            }
        }
        let names: Vec<String> = variants.iter().map(|b| type_name(self.resolve(b, ns))).collect();
        enc.fail(format!("{} matches none of the union branches [{}]", json_type_name(value), names.join(", ")))
    }

    fn encode_duration(&self, value: &Value, enc: &mut Enc) -> bool {
        let Value::Object(map) = value else {
            return enc.fail(format!("expected an object {{months, days, millis}}, got {}", json_type_name(value)));
        };
        let mut ok = true;
        for key in ["months", "days", "millis"] {
            let item = map.get(key).unwrap_or(&Value::Null);
            match int_in_range(item, 0, i64::from(u32::MAX)) {
                Ok(n) => enc.out.extend_from_slice(&u32::try_from(n).unwrap_or_default().to_le_bytes()),
                Err(message) => {
                    let len = enc.path.len();
                    push_segment(&mut enc.path, key);
                    enc.fail(message);
                    enc.path.truncate(len);
                    ok = false;
                }
            }
        }
        ok
    }
}

/// The state of one encode: the output, the current field path and the violations found.
#[derive(Default)]
pub(super) struct Enc {
    /// The datum written so far.
    pub(super) out: Vec<u8>,
    /// JSON pointer of the value being encoded.
    pub(super) path: String,
    /// Problems found so far.
    pub(super) violations: Violations,
}

impl Enc {
    /// Records a violation at the current path; returns false (the value does not fit).
    fn fail(&mut self, message: String) -> bool {
        self.violations.push(Violation::new(self.path.clone(), message));
        false
    }
}
