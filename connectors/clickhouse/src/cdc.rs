//! CDC mode: danube-postgres-cdc change envelopes to `ReplacingMergeTree` rows.
//!
//! A record is `{"op", "schema", "table", "before", "after", "unchanged_toast"?, "lsn",
//! "commit_lsn", "seq", "xid", "commit_ts"}` (see `connectors/postgres-cdc/src/change.rs`).
//! `INSERT`, `UPDATE` and `READ` (snapshot) write the after image, `DELETE` writes the before
//! image (the key) with the deleted flag set; every row carries the version
//! `commit_lsn << 16 | min(seq, 65535)`: changes committed later get higher versions, and so
//! do later changes of one transaction (up to its 65,536th change; beyond, they share the
//! last version). Snapshot rows carry the slot's consistent point as commit LSN, below every
//! streamed commit. A redelivered record maps to the same row and version, so it changes
//! nothing after `FINAL` (or a merge).

use serde_json::{Map, Value};

/// Bits of the version below the commit LSN: the change's position in its transaction.
pub const SEQ_BITS: u32 = 16;

/// What a change does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `INSERT`, `UPDATE` or `READ`: write the after image.
    Upsert,
    /// `DELETE`: write the key with the deleted flag.
    Delete,
    /// `TRUNCATE`: every row of the table.
    Truncate,
}

/// A parsed change envelope.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// What it does.
    pub op: Op,
    /// Source schema.
    pub schema: String,
    /// Source table.
    pub table: String,
    /// Old image (the key, or the whole row with `REPLICA IDENTITY FULL`).
    pub before: Option<Map<String, Value>>,
    /// New image, unchanged TOAST columns filled from `before` when it has them.
    pub after: Option<Map<String, Value>>,
    /// Version of the rows written for it.
    pub version: u64,
}

/// Why a record is not a usable change envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The payload is not JSON.
    #[error("payload is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// A field is missing or has the wrong JSON type.
    #[error("change envelope field `{field}`: {message}")]
    Field {
        /// The envelope field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The commit LSN does not fit the version's 48 bits.
    #[error("commit_lsn {0} is beyond 2^48 and does not fit the version column's layout")]
    LsnTooLarge(String),
    /// An unchanged TOAST column is not in the before image.
    #[error(
        "column `{0}` is an unchanged TOAST value that the record does not carry; set REPLICA IDENTITY FULL on the source table"
    )]
    UnchangedToast(String),
}

fn field_error(field: &'static str, message: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Field { field, message: message.into() }
}

/// `16/B374D848` to its 64-bit value.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    if high > u64::from(u32::MAX) || low > u64::from(u32::MAX) {
        return None;
    }
    Some(high << 32 | low)
}

/// The version of the change at `seq` in the transaction committed at `commit_lsn`.
pub fn version(commit_lsn: u64, seq: u64) -> Option<u64> {
    if commit_lsn >> (64 - SEQ_BITS) != 0 {
        return None;
    }
    Some(commit_lsn << SEQ_BITS | seq.min((1 << SEQ_BITS) - 1))
}

fn image(object: &Map<String, Value>, field: &'static str) -> Result<Option<Map<String, Value>>, EnvelopeError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map.clone())),
        Some(other) => {
            Err(field_error(field, format!("expected an object or null, got {}", crate::mapping::kind(other))))
        }
    }
}

fn text<'a>(object: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, EnvelopeError> {
    object.get(field).and_then(Value::as_str).ok_or_else(|| field_error(field, "missing or not a string"))
}

/// Parses a change envelope.
pub fn parse(value: &Value) -> Result<Envelope, EnvelopeError> {
    let Value::Object(object) = value else {
        return Err(field_error(
            "op",
            format!("the record is a JSON {}, not a change envelope", crate::mapping::kind(value)),
        ));
    };
    let op = match text(object, "op")? {
        "INSERT" | "UPDATE" | "READ" => Op::Upsert,
        "DELETE" => Op::Delete,
        "TRUNCATE" => Op::Truncate,
        other => return Err(field_error("op", format!("unknown operation `{other}`"))),
    };
    let schema = text(object, "schema")?.to_string();
    let table = text(object, "table")?.to_string();
    let commit_lsn_text = text(object, "commit_lsn")?;
    let commit_lsn =
        parse_lsn(commit_lsn_text).ok_or_else(|| field_error("commit_lsn", "not an LSN like 16/B374D848"))?;
    let seq = object
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| field_error("seq", "missing or not a non-negative integer"))?;
    let version = version(commit_lsn, seq).ok_or_else(|| EnvelopeError::LsnTooLarge(commit_lsn_text.to_string()))?;
    let before = image(object, "before")?;
    let mut after = image(object, "after")?;
    match op {
        Op::Upsert if after.is_none() => {
            return Err(field_error("after", "an INSERT/UPDATE/READ needs the after image"))
        }
        Op::Delete if before.is_none() => {
            return Err(field_error("before", "a DELETE needs the old key (the table has REPLICA IDENTITY NOTHING?)"))
        }
        _ => {}
    }
    if let (Some(after), Some(Value::Array(unchanged))) = (after.as_mut(), object.get("unchanged_toast")) {
        for column in unchanged {
            let Some(column) = column.as_str() else {
                return Err(field_error("unchanged_toast", "not a list of names"));
            };
            match before.as_ref().and_then(|b| b.get(column)) {
                Some(value) => {
                    after.insert(column.to_string(), value.clone());
                }
                None => return Err(EnvelopeError::UnchangedToast(column.to_string())),
            }
        }
    }
    Ok(Envelope { op, schema, table, before, after, version })
}

/// Whether `before` names a different key than `after` (an UPDATE that changed the key).
pub fn key_changed(key: &[String], before: &Map<String, Value>, after: &Map<String, Value>) -> bool {
    !key.is_empty() && key.iter().any(|column| before.get(column).is_some_and(|old| after.get(column) != Some(old)))
}

/// The key columns a danube-postgres-cdc JSON Schema names in its description
/// (`...; key columns: a, b`, or `none`).
pub fn schema_key_columns(schema: &Value) -> Option<Vec<String>> {
    let description = schema.get("description")?.as_str()?;
    let list = description.rsplit_once("key columns: ")?.1.trim();
    if list == "none" || list.is_empty() {
        return Some(Vec::new());
    }
    Some(list.split(", ").map(str::to_string).collect())
}

/// The columns of the after image a danube-postgres-cdc JSON Schema describes.
pub fn schema_columns(schema: &Value) -> Option<&Map<String, Value>> {
    schema.get("properties")?.get("after")?.get("properties")?.as_object()
}

/// The ClickHouse type (without `Nullable`) for a column the JSON Schema describes: JSON
/// `boolean` -> `UInt8`, `integer` -> `Int64`, `number` -> `Float64`, everything else
/// (text, numeric as decimal text, temporal values, arrays, JSON) -> `String`.
pub fn type_from_schema(property: &Value) -> &'static str {
    let types: Vec<&str> = match property.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let non_null: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
    match non_null.as_slice() {
        ["boolean"] => "UInt8",
        ["integer"] => "Int64",
        // Floats also allow strings (NaN, Infinity); they stay Float64.
        ["number"] | ["number", "string"] => "Float64",
        _ => "String",
    }
}

/// The ClickHouse type (without `Nullable`) for a column known only by a value.
pub fn type_from_value(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "UInt8",
        Value::Number(n) if n.is_i64() || n.is_u64() => "Int64",
        Value::Number(_) => "Float64",
        _ => "String",
    }
}

/// The column list of an `ORDER BY` in a table's `engine_full` (`... ORDER BY (a, b) SETTINGS ...`);
/// expressions other than plain column names are left out.
pub fn sorting_key(engine_full: &str) -> Vec<String> {
    let Some((_, rest)) = engine_full.split_once(" ORDER BY ") else { return Vec::new() };
    let end = [" SETTINGS ", " SAMPLE BY ", " TTL ", " PRIMARY KEY "]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min()
        .unwrap_or(rest.len());
    let mut list = rest[..end].trim();
    if list.starts_with('(') && list.ends_with(')') {
        list = &list[1..list.len() - 1];
    }
    list.split(',')
        .map(|part| part.trim().trim_matches('`').to_string())
        .filter(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_order_by_commit_then_position() {
        let v = |lsn: &str, seq| version(parse_lsn(lsn).expect("lsn"), seq).expect("fits");
        assert!(v("0/16B37A0", 5) < v("0/16B37A8", 0));
        assert!(v("0/16B37A0", 1) < v("0/16B37A0", 2));
        assert!(v("1/0", 0) > v("0/FFFFFFFF", 70_000));
        // Positions past 65,535 share the last version of their transaction.
        assert_eq!(v("0/10", 65_535), v("0/10", 1_000_000));
        assert_eq!(version(1 << 48, 0), None);
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn envelopes_parse_and_toast_is_filled_from_before() {
        let e = parse(&json!({"op": "UPDATE", "schema": "s", "table": "t", "before": {"id": 1, "big": "x"},
            "after": {"id": 1, "n": 2}, "unchanged_toast": ["big"], "lsn": "0/1", "commit_lsn": "0/2", "seq": 3,
            "xid": 1, "commit_ts": "2000-01-01T00:00:00.000000Z"}))
        .expect("parses");
        assert_eq!(e.op, Op::Upsert);
        assert_eq!(e.after.expect("after")["big"], json!("x"));
        assert_eq!(e.version, 2 << 16 | 3);
        let err = parse(&json!({"op": "UPDATE", "schema": "s", "table": "t", "before": null, "after": {"id": 1},
            "unchanged_toast": ["big"], "commit_lsn": "0/2", "seq": 0}))
        .unwrap_err();
        assert!(matches!(err, EnvelopeError::UnchangedToast(ref c) if c == "big"), "{err}");
        let err = parse(&json!({"op": "DELETE", "schema": "s", "table": "t", "before": null, "after": null,
            "commit_lsn": "0/2", "seq": 0}))
        .unwrap_err();
        assert!(err.to_string().contains("`before`"), "{err}");
        let err = parse(&json!({"op": "BEGIN", "xid": 1, "commit_lsn": "0/2"})).unwrap_err();
        assert!(err.to_string().contains("`op`"), "{err}");
        assert!(parse(&json!([1])).is_err());
    }

    #[test]
    fn keys_types_and_sorting_keys() {
        let key = vec!["id".to_string()];
        let obj = |v: Value| v.as_object().cloned().expect("object");
        assert!(key_changed(&key, &obj(json!({"id": 1})), &obj(json!({"id": 2, "n": 1}))));
        assert!(!key_changed(&key, &obj(json!({"id": 1, "n": 0})), &obj(json!({"id": 1, "n": 1}))));
        let schema =
            json!({"description": "A row change of public.t captured by danube-postgres-cdc; key columns: id, k"});
        assert_eq!(schema_key_columns(&schema), Some(vec!["id".to_string(), "k".to_string()]));
        assert_eq!(type_from_schema(&json!({"type": ["integer", "null"]})), "Int64");
        assert_eq!(type_from_schema(&json!({"type": ["number", "string", "null"]})), "Float64");
        assert_eq!(type_from_schema(&json!({})), "String");
        assert_eq!(type_from_value(&json!(1.5)), "Float64");
        assert_eq!(
            sorting_key("ReplacingMergeTree(_version) ORDER BY (id, `k`) SETTINGS index_granularity = 8192"),
            vec!["id", "k"]
        );
        assert_eq!(sorting_key("MergeTree ORDER BY id"), vec!["id"]);
        assert!(sorting_key("MergeTree ORDER BY tuple()").is_empty());
    }
}
