//! The JSON mapping of Avro values (see the module docs of [`super`]).

use apache_avro::schema::{DecimalSchema, Namespace};
use apache_avro::types::Value as AvroValue;
use apache_avro::Schema as AvroSchema;
use base64::Engine as _;
use num_bigint::BigInt;
use serde_json::{Map, Number, Value};

use super::{AvroCodec, Form, B64, KIND};
use crate::schema::{json_type_name, push_segment, SchemaError};

impl AvroCodec {
    /// Avro value (as decoded with the schema) to its JSON form.
    pub(super) fn avro_to_json(
        &self,
        schema: &AvroSchema,
        ns: &Namespace,
        value: &AvroValue,
        path: &mut String,
    ) -> Result<Value, SchemaError> {
        let schema = self.resolve(schema, ns);
        let unexpected = |path: &str| {
            SchemaError::payload_at(KIND, path.to_string(), format!("decoded value {value:?} does not fit the schema"))
        };
        Ok(match (schema, value) {
            (_, AvroValue::Null) => Value::Null,
            (_, AvroValue::Boolean(b)) => Value::Bool(*b),
            (_, AvroValue::Int(i)) | (_, AvroValue::Date(i)) | (_, AvroValue::TimeMillis(i)) => Value::from(*i),
            (_, AvroValue::Long(i))
            | (_, AvroValue::TimeMicros(i))
            | (_, AvroValue::TimestampMillis(i))
            | (_, AvroValue::TimestampMicros(i))
            | (_, AvroValue::TimestampNanos(i))
            | (_, AvroValue::LocalTimestampMillis(i))
            | (_, AvroValue::LocalTimestampMicros(i))
            | (_, AvroValue::LocalTimestampNanos(i)) => Value::from(*i),
            (_, AvroValue::Float(f)) => float_to_json(f64_from_f32(*f)),
            (_, AvroValue::Double(f)) => float_to_json(*f),
            (_, AvroValue::Bytes(b)) | (_, AvroValue::Fixed(_, b)) => Value::String(B64.encode(b)),
            (_, AvroValue::String(s)) => Value::String(s.clone()),
            (_, AvroValue::Enum(_, symbol)) => Value::String(symbol.clone()),
            (_, AvroValue::Uuid(u)) => Value::String(u.to_string()),
            (_, AvroValue::BigDecimal(d)) => Value::String(d.to_string()),
            (AvroSchema::Decimal(d), AvroValue::Decimal(dec)) => {
                let bytes = <Vec<u8>>::try_from(dec)
                    .map_err(|e| SchemaError::payload_with(KIND, path.clone(), "invalid decimal", e))?;
                Value::String(format_decimal(&BigInt::from_signed_bytes_be(&bytes), d.scale))
            }
            (_, AvroValue::Duration(d)) => {
                let mut map = Map::new();
                map.insert("months".into(), Value::from(u32::from(d.months())));
                map.insert("days".into(), Value::from(u32::from(d.days())));
                map.insert("millis".into(), Value::from(u32::from(d.millis())));
                Value::Object(map)
            }
            (AvroSchema::Union(u), AvroValue::Union(index, inner)) => {
                let branch =
                    usize::try_from(*index).ok().and_then(|i| u.variants().get(i)).ok_or_else(|| unexpected(path))?;
                self.avro_to_json(branch, ns, inner, path)?
            }
            (AvroSchema::Array(a), AvroValue::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    push_segment(path, &i.to_string());
                    out.push(self.avro_to_json(&a.items, ns, item, path)?);
                    path.truncate(len);
                }
                Value::Array(out)
            }
            (AvroSchema::Map(m), AvroValue::Map(entries)) => {
                let mut out = Map::new();
                for (key, item) in entries {
                    let len = path.len();
                    push_segment(path, key);
                    out.insert(key.clone(), self.avro_to_json(&m.types, ns, item, path)?);
                    path.truncate(len);
                }
                Value::Object(out)
            }
            (AvroSchema::Record(r), AvroValue::Record(fields)) => {
                let inner_ns = r.name.namespace.clone().or_else(|| ns.clone());
                let mut out = Map::new();
                for (name, item) in fields {
                    let field_schema = r
                        .lookup
                        .get(name)
                        .and_then(|i| r.fields.get(*i))
                        .map(|f| &f.schema)
                        .ok_or_else(|| unexpected(path))?;
                    let len = path.len();
                    push_segment(path, name);
                    out.insert(name.clone(), self.avro_to_json(field_schema, &inner_ns, item, path)?);
                    path.truncate(len);
                }
                Value::Object(out)
            }
            _ => return Err(unexpected(path)),
        })
    }
}

/// Names a union branch can be tagged with in Avro's JSON encoding.
pub(super) fn branch_names(schema: &AvroSchema) -> Vec<String> {
    match schema {
        AvroSchema::Record(r) => vec![r.name.fullname(None), r.name.name.clone()],
        AvroSchema::Enum(e) => vec![e.name.fullname(None), e.name.name.clone()],
        AvroSchema::Fixed(f) => vec![f.name.fullname(None), f.name.name.clone()],
        other => vec![type_name(other)],
    }
}

/// The Avro type name of a schema, for messages.
pub(super) fn type_name(schema: &AvroSchema) -> String {
    match schema {
        AvroSchema::Null => "null".into(),
        AvroSchema::Boolean => "boolean".into(),
        AvroSchema::Int => "int".into(),
        AvroSchema::Long => "long".into(),
        AvroSchema::Float => "float".into(),
        AvroSchema::Double => "double".into(),
        AvroSchema::Bytes | AvroSchema::BigDecimal => "bytes".into(),
        AvroSchema::String | AvroSchema::Uuid => "string".into(),
        AvroSchema::Array(_) => "array".into(),
        AvroSchema::Map(_) => "map".into(),
        AvroSchema::Union(_) => "union".into(),
        AvroSchema::Record(r) => r.name.fullname(None),
        AvroSchema::Enum(e) => e.name.fullname(None),
        AvroSchema::Fixed(f) => f.name.fullname(None),
        AvroSchema::Decimal(d) => match d.inner.as_ref() {
            AvroSchema::Fixed(f) => f.name.fullname(None),
            _ => "bytes".into(),
        },
        AvroSchema::Date | AvroSchema::TimeMillis => "int".into(),
        AvroSchema::TimeMicros
        | AvroSchema::TimestampMillis
        | AvroSchema::TimestampMicros
        | AvroSchema::TimestampNanos
        | AvroSchema::LocalTimestampMillis
        | AvroSchema::LocalTimestampMicros
        | AvroSchema::LocalTimestampNanos => "long".into(),
        AvroSchema::Duration => "fixed".into(),
        AvroSchema::Ref { name } => name.fullname(None),
    }
}

pub(super) fn int_in_range(value: &Value, min: i64, max: i64) -> Result<i64, String> {
    let Value::Number(n) = value else {
        return Err(format!("expected an integer, got {}", json_type_name(value)));
    };
    match n.as_i64() {
        Some(i) if (min..=max).contains(&i) => Ok(i),
        Some(i) => Err(format!("{i} is out of range {min}..={max}")),
        None if n.is_u64() => Err(format!("{n} is out of range {min}..={max}")),
        None => Err(format!("expected an integer, got {n}")),
    }
}

pub(super) fn json_to_float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// An `f32` widened without the binary noise (`0.1f32` -> `0.1`, not `0.10000000149011612`).
fn f64_from_f32(f: f32) -> f64 {
    if f.is_finite() {
        f.to_string().parse().unwrap_or(f64::from(f))
    } else {
        f64::from(f)
    }
}

fn float_to_json(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".into()),
        None if f > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

pub(super) fn decode_base64(value: &Value, form: Form) -> Result<Vec<u8>, String> {
    match value {
        Value::String(s) if form == Form::Default => s
            .chars()
            .map(|c| {
                u8::try_from(u32::from(c))
                    .map_err(|_| format!("default byte string has a character above U+00FF: {c:?}"))
            })
            .collect(),
        Value::String(s) => B64.decode(s).map_err(|e| format!("expected a base64 string: {e}")),
        other => Err(format!("expected a base64 string, got {}", json_type_name(other))),
    }
}

/// `unscaled / 10^scale` as a decimal string (`1230`, scale 2 -> `12.30`).
pub(super) fn format_decimal(unscaled: &BigInt, scale: usize) -> String {
    let digits = unscaled.magnitude().to_string();
    let negative = unscaled.sign() == num_bigint::Sign::Minus;
    let mut out = String::with_capacity(digits.len() + scale + 3);
    if negative {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    }
    out
}

/// Parses a plain decimal (`-12.3`) into its unscaled value at `scale`, refusing lost digits.
pub(super) fn parse_decimal(text: &str, scale: usize, precision: usize) -> Result<BigInt, String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !plain(int) || !plain(frac) {
        return Err(format!("`{text}` is not a plain decimal number"));
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale {
        return Err(format!("`{text}` has more than {scale} fractional digits (the decimal's scale)"));
    }
    let mut digits = String::with_capacity(int.len() + scale);
    digits.push_str(int.trim_start_matches('0'));
    digits.push_str(frac);
    digits.extend(std::iter::repeat_n('0', scale - frac.len()));
    let significant = digits.trim_start_matches('0');
    if significant.len() > precision {
        return Err(format!("`{text}` has more than {precision} digits (the decimal's precision)"));
    }
    let magnitude: BigInt = if significant.is_empty() {
        BigInt::from(0)
    } else {
        significant.parse().map_err(|e| format!("`{text}` is not a decimal number: {e}"))?
    };
    Ok(if negative { -magnitude } else { magnitude })
}

pub(super) fn decimal_from_json(
    value: &Value,
    d: &DecimalSchema,
    ns: &Namespace,
    codec: &AvroCodec,
    form: Form,
) -> Result<(Vec<u8>, bool), String> {
    let fixed_size = match codec.resolve(&d.inner, ns) {
        AvroSchema::Fixed(f) => Some(f.size),
        _ => None,
    };
    if form == Form::Default {
        // Defaults hold the raw two's-complement bytes.
        let bytes = decode_base64(value, form)?;
        return match fixed_size {
            Some(size) if size != bytes.len() => {
                Err(format!("default decimal has {} bytes, the fixed has {size}", bytes.len()))
            }
            _ => Ok((bytes, fixed_size.is_some())),
        };
    }
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("expected a decimal string or number, got {}", json_type_name(other))),
    };
    let unscaled = parse_decimal(&text, d.scale, d.precision)?;
    let bytes = unscaled.to_signed_bytes_be();
    match fixed_size {
        Some(size) => {
            if bytes.len() > size {
                return Err(format!("`{text}` does not fit in {size} bytes"));
            }
            let sign = if unscaled.sign() == num_bigint::Sign::Minus { 0xff } else { 0 };
            let mut padded = vec![sign; size - bytes.len()];
            padded.extend_from_slice(&bytes);
            Ok((padded, true))
        }
        None => Ok((bytes, false)),
    }
}
