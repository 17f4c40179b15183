//! PostgreSQL text values to JSON, by type OID.
//!
//! integers and floats -> numbers (NaN/Infinity as strings), numeric and money -> strings
//! (no precision loss), bool -> true/false, json/jsonb -> embedded JSON, timestamps and dates
//! -> ISO-8601 strings, bytea -> base64, arrays of the above -> JSON arrays, everything else
//! (uuid, enums, text, intervals, geometric types, ...) -> its text form. Never panics: an
//! unparsable value falls back to its text.
//!
//! The replication session pins `DateStyle=ISO` and `TimeZone=UTC` so the text forms are
//! the ones this module expects.

use base64::Engine;
use serde_json::Value;

/// Element type OIDs of the built-in array types mapped here, or `None` for a non-array (or
/// an array type not listed: those are resolved from `pg_type.typelem`, see [`array_to_json_text`]).
pub fn array_element(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,
        1001 => 17,
        1005 => 21,
        1007 => 23,
        1016 => 20,
        1009 => 25,
        1014 => 1042,
        1015 => 1043,
        1021 => 700,
        1022 => 701,
        1115 => 1114,
        1182 => 1082,
        1185 => 1184,
        1231 => 1700,
        2951 => 2950,
        3807 => 3802,
        199 => 114,
        1028 => 26,
        _ => return None,
    })
}

/// Converts one text value of type `oid` to JSON.
pub fn to_json(oid: u32, text: &str) -> Value {
    if let Some(element) = array_element(oid) {
        return match parse_array(text) {
            Some(items) => array_to_json(element, &items),
            None => Value::String(text.to_string()),
        };
    }
    scalar(oid, text)
}

/// Converts the text form of an array whose element type is `element` (an array type not
/// known by OID, e.g. of an enum, resolved through `pg_type.typelem`) to a JSON array; an
/// unparsable literal stays text.
pub fn array_to_json_text(element: u32, text: &str) -> Value {
    match parse_array(text) {
        Some(items) => array_to_json(element, &items),
        None => Value::String(text.to_string()),
    }
}

/// Writes one text value of type `oid` as JSON into `out`: the same mapping as [`to_json`];
/// a value whose JSON is its text as a string is written without building a [`Value`].
pub fn write_json(oid: u32, text: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    if is_plain_text(oid) {
        push_json_str(out, text);
        return Ok(());
    }
    // The common cases written without a `Value` (the same output as through `to_json`).
    match (oid, text.parse::<i64>()) {
        (20 | 21 | 23 | 26, Ok(number)) => serde_json::to_writer(out, &number),
        (1114 | 1184, _) if write_iso_timestamp(text, out) => Ok(()),
        _ => serde_json::to_writer(out, &to_json(oid, text)),
    }
}

/// Writes [`iso_timestamp`] of `text` as a JSON string when `text` is a plain ISO timestamp
/// (digits and `-:.+`, one space); false, writing nothing, otherwise.
fn write_iso_timestamp(text: &str, out: &mut Vec<u8>) -> bool {
    let Some((date, time)) = text.split_once(' ') else { return false };
    let plain = |part: &str| part.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'+'));
    if date.len() < 10 || !plain(date) || !plain(time) {
        return false;
    }
    out.push(b'"');
    out.extend_from_slice(date.as_bytes());
    out.push(b'T');
    out.extend_from_slice(time.as_bytes());
    if let Some(pos) = time.rfind(['+', '-']) {
        let offset = &time[pos + 1..];
        if offset.len() == 2 && offset.bytes().all(|b| b.is_ascii_digit()) {
            out.extend_from_slice(b":00");
        }
    }
    out.push(b'"');
    true
}

/// Whether [`to_json`] maps every value of `oid` to its text unchanged (the last arm of
/// [`scalar`]).
fn is_plain_text(oid: u32) -> bool {
    array_element(oid).is_none()
        && !matches!(oid, 16 | 20 | 21 | 23 | 26 | 700 | 701 | 114 | 3802 | 17 | 1114 | 1184 | 1266)
}

/// Appends `text` as a JSON string (quoted and escaped by `serde_json`).
pub fn push_json_str(out: &mut Vec<u8>, text: &str) {
    // Serializing a `str` into a `Vec` has no failure case.
    let _ = serde_json::to_writer(out, text);
}

fn scalar(oid: u32, text: &str) -> Value {
    match oid {
        16 => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        20 | 21 | 23 | 26 => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_string())),
        700 | 701 => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => {
                serde_json::Number::from_f64(f).map_or_else(|| Value::String(text.to_string()), Value::Number)
            }
            _ => Value::String(text.to_string()),
        },
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())),
        17 => Value::String(bytea_base64(text)),
        1114 | 1184 => Value::String(iso_timestamp(text)),
        1266 => Value::String(iso_offset(text)),
        _ => Value::String(text.to_string()),
    }
}

/// `\x0a0b` (hex output) to base64; other forms are kept as given.
fn bytea_base64(text: &str) -> String {
    let Some(hex) = text.strip_prefix("\\x") else { return text.to_string() };
    if hex.len() % 2 != 0 {
        return text.to_string();
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.as_bytes().chunks(2) {
        let digits = std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok());
        match digits {
            Some(b) => bytes.push(b),
            None => return text.to_string(),
        }
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `2024-01-02 03:04:05.12+00` -> `2024-01-02T03:04:05.12+00:00` (ISO DateStyle input).
fn iso_timestamp(text: &str) -> String {
    match text.split_once(' ') {
        Some((date, time)) if date.len() >= 10 && !time.contains(' ') => format!("{date}T{}", iso_offset(time)),
        _ => text.to_string(),
    }
}

/// Extends a `+hh` offset at the end of a time to `+hh:mm`.
fn iso_offset(time: &str) -> String {
    if let Some(pos) = time.rfind(['+', '-']) {
        let offset = &time[pos + 1..];
        if offset.len() == 2 && offset.bytes().all(|b| b.is_ascii_digit()) {
            return format!("{time}:00");
        }
    }
    time.to_string()
}

/// A parsed array literal: nested lists, NULL as `None`.
#[derive(Debug, PartialEq)]
enum Item {
    Value(Option<String>),
    List(Vec<Item>),
}

fn array_to_json(element: u32, items: &[Item]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|item| match item {
                Item::Value(None) => Value::Null,
                Item::Value(Some(text)) => scalar(element, text),
                Item::List(inner) => array_to_json(element, inner),
            })
            .collect(),
    )
}

/// Parses `{1,2,NULL}`, `{"a b","c\"d"}`, `{{1,2},{3,4}}` (an optional `[1:2]=` prefix is skipped).
fn parse_array(text: &str) -> Option<Vec<Item>> {
    let body = match text.find('=') {
        Some(pos) if text.starts_with('[') => &text[pos + 1..],
        _ => text,
    };
    let chars: Vec<char> = body.chars().collect();
    let mut pos = 0;
    let items = parse_list(&chars, &mut pos)?;
    (pos == chars.len()).then_some(items)
}

fn parse_list(chars: &[char], pos: &mut usize) -> Option<Vec<Item>> {
    if chars.get(*pos) != Some(&'{') {
        return None;
    }
    *pos += 1;
    let mut items = Vec::new();
    if chars.get(*pos) == Some(&'}') {
        *pos += 1;
        return Some(items);
    }
    loop {
        match chars.get(*pos)? {
            '{' => items.push(Item::List(parse_list(chars, pos)?)),
            '"' => {
                *pos += 1;
                let mut value = String::new();
                loop {
                    match chars.get(*pos)? {
                        '\\' => {
                            value.push(*chars.get(*pos + 1)?);
                            *pos += 2;
                        }
                        '"' => {
                            *pos += 1;
                            break;
                        }
                        c => {
                            value.push(*c);
                            *pos += 1;
                        }
                    }
                }
                items.push(Item::Value(Some(value)));
            }
            _ => {
                let start = *pos;
                while !matches!(chars.get(*pos)?, ',' | '}') {
                    *pos += 1;
                }
                let raw: String = chars[start..*pos].iter().collect();
                let raw = raw.trim();
                items.push(Item::Value(if raw.eq_ignore_ascii_case("NULL") { None } else { Some(raw.to_string()) }));
            }
        }
        match chars.get(*pos)? {
            ',' => *pos += 1,
            '}' => {
                *pos += 1;
                return Some(items);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_map_to_json_types() {
        assert_eq!(to_json(23, "42"), json!(42));
        assert_eq!(to_json(20, "-9000000000"), json!(-9_000_000_000i64));
        assert_eq!(to_json(16, "t"), json!(true));
        assert_eq!(to_json(1700, "3.14159265358979323846"), json!("3.14159265358979323846"));
        assert_eq!(to_json(701, "1.5"), json!(1.5));
        assert_eq!(to_json(701, "NaN"), json!("NaN"));
        assert_eq!(to_json(3802, r#"{"a": [1, 2]}"#), json!({"a": [1, 2]}));
        assert_eq!(to_json(17, "\\x0102ff"), json!("AQL/"));
        assert_eq!(to_json(1184, "2024-01-02 03:04:05.5+00"), json!("2024-01-02T03:04:05.5+00:00"));
        assert_eq!(to_json(1114, "2024-01-02 03:04:05"), json!("2024-01-02T03:04:05"));
        assert_eq!(to_json(1082, "2024-01-02"), json!("2024-01-02"));
        assert_eq!(
            to_json(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(to_json(99999, "whatever"), json!("whatever"));
    }

    #[test]
    fn arrays_nested_quoted_and_null() {
        assert_eq!(to_json(1007, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(to_json(1009, r#"{"a b","c\"d",e}"#), json!(["a b", "c\"d", "e"]));
        assert_eq!(to_json(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(to_json(1007, "{}"), json!([]));
        assert_eq!(to_json(1007, "[0:1]={5,6}"), json!([5, 6]));
        assert_eq!(to_json(1007, "{1,2"), json!("{1,2"));
        assert_eq!(array_to_json_text(99999, "{sad,happy}"), json!(["sad", "happy"]));
        assert_eq!(array_to_json_text(99999, "{sad"), json!("{sad"));
    }

    #[test]
    fn written_json_is_what_to_json_serializes_to() {
        let cases: &[(u32, &str)] = &[
            (16, "t"),
            (16, "f"),
            (16, "maybe"),
            (20, "-9000000000"),
            (23, "42"),
            (23, "x"),
            (26, "4294967295"),
            (700, "1.25"),
            (701, "-0.1"),
            (701, "1e300"),
            (701, "NaN"),
            (701, "-Infinity"),
            (1700, "3.14159265358979323846"),
            (3802, r#"{"b": 1, "a": [true, null]}"#),
            (114, "not json"),
            (17, "\\x0102ff"),
            (1184, "2024-01-02 03:04:05.5+00"),
            (1114, "2024-01-02 03:04:05"),
            (1114, "2024-01-02 03:04:05.123456"),
            (1184, "2024-01-02 03:04:05-07"),
            (1184, "2024-01-02 03:04:05+05:30"),
            (1184, "infinity"),
            (1184, "0044-03-15 12:00:00+00 BC"),
            (1184, "2024-01-02 \"x"),
            (20, "+5"),
            (21, "99999999999999999999"),
            (1266, "03:04:05+02"),
            (1007, "{1,2,NULL}"),
            (1009, r#"{"a b","c\"d"}"#),
            (25, "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f} é 😀"),
        ];
        for (oid, text) in cases {
            let mut out = Vec::new();
            write_json(*oid, text, &mut out).expect("writes");
            let expected = serde_json::to_vec(&to_json(*oid, text)).expect("serializes");
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expected), "oid {oid} {text:?}");
        }
    }

    #[test]
    fn the_plain_text_shortcut_agrees_with_to_json_for_every_builtin_oid() {
        for oid in 0..10_000u32 {
            for text in ["t", "42", "1.5", "\\x01", "2024-01-02 03:04:05+00", "{1,2}", "[1]"] {
                let mut out = Vec::new();
                write_json(oid, text, &mut out).expect("writes");
                assert_eq!(out, serde_json::to_vec(&to_json(oid, text)).expect("serializes"), "oid {oid} {text:?}");
            }
        }
    }

    #[test]
    fn malformed_values_fall_back_to_text() {
        assert_eq!(to_json(23, "x"), json!("x"));
        assert_eq!(to_json(17, "\\xzz"), json!("\\xzz"));
        assert_eq!(to_json(3802, "{"), json!("{"));
    }
}
