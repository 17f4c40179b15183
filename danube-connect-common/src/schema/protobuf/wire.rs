//! Finds the field a binary payload fails at (the decoder's error has no path).

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};

use crate::schema::push_segment;

/// Walks the wire format of a payload that failed to decode to find the failing field.
/// Returns the JSON pointer of the field and what is wrong, or None when not found.
pub(super) fn locate_wire_error(message: &MessageDescriptor, payload: &[u8]) -> Option<(String, String)> {
    let mut path = String::new();
    walk_message(message, payload, &mut path, 0).err()
}

const MAX_DEPTH: usize = 100;

fn walk_message(
    message: &MessageDescriptor,
    mut buf: &[u8],
    path: &mut String,
    depth: usize,
) -> Result<(), (String, String)> {
    if depth > MAX_DEPTH {
        return Err((path.clone(), "message nesting is too deep".into()));
    }
    let mut occurrences: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    while !buf.is_empty() {
        let key = read_varint(&mut buf).ok_or_else(|| (path.clone(), "invalid field key varint".to_string()))?;
        let number = u32::try_from(key >> 3).unwrap_or(0);
        let wire = (key & 7) as u8;
        if number == 0 {
            return Err((path.clone(), "invalid field number 0".into()));
        }
        let field = message.get_field(number);
        let len = path.len();
        match &field {
            Some(f) => {
                push_segment(path, f.name());
                // One element of a repeated string/bytes/message field per occurrence.
                if f.is_list() && wire == 2 && expected_wire_type(f) == Some(2) {
                    let index = occurrences.entry(number).or_default();
                    push_segment(path, &index.to_string());
                    *index += 1;
                }
            }
            None => push_segment(path, &number.to_string()),
        }
        let fail = |path: &str, what: String| Err((path.to_string(), what));
        match wire {
            0 => {
                if read_varint(&mut buf).is_none() {
                    return fail(path, "truncated or invalid varint".into());
                }
            }
            1 | 5 => {
                let size = if wire == 1 { 8 } else { 4 };
                if buf.len() < size {
                    return fail(path, format!("truncated {size}-byte value"));
                }
                buf = &buf[size..];
            }
            2 => {
                let size = read_varint(&mut buf)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| (path.clone(), "invalid length varint".to_string()))?;
                if buf.len() < size {
                    return fail(path, format!("length {size} exceeds the {} remaining bytes", buf.len()));
                }
                let (body, rest) = buf.split_at(size);
                buf = rest;
                if let Some(f) = &field {
                    check_delimited(f, body, path, depth)?;
                }
            }
            3 | 4 => {
                // Groups (deprecated) are left to the decoder's own message.
                return Err((path.clone(), "group-encoded field could not be decoded".into()));
            }
            other => return fail(path, format!("invalid wire type {other}")),
        }
        if let Some(f) = &field {
            if let Some(expected) = expected_wire_type(f) {
                let packed = wire == 2 && f.is_list() && expected != 2;
                if wire != expected && !packed {
                    return fail(
                        path,
                        format!(
                            "wire type {wire} does not match the field type {} (expected wire type {expected})",
                            kind_name(&f.kind())
                        ),
                    );
                }
            }
        }
        path.truncate(len);
    }
    Ok(())
}

fn check_delimited(
    field: &FieldDescriptor,
    body: &[u8],
    path: &mut String,
    depth: usize,
) -> Result<(), (String, String)> {
    match field.kind() {
        Kind::String => {
            std::str::from_utf8(body).map(|_| ()).map_err(|_| (path.clone(), "string is not valid UTF-8".to_string()))
        }
        Kind::Message(inner) => walk_message(&inner, body, path, depth + 1),
        _ => Ok(()),
    }
}

fn expected_wire_type(field: &FieldDescriptor) -> Option<u8> {
    Some(match field.kind() {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => 1,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => 5,
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Bool
        | Kind::Enum(_) => 0,
        Kind::String | Kind::Bytes => 2,
        Kind::Message(_) if field.is_group() => return None,
        Kind::Message(_) => 2,
    })
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

pub(super) fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Uint32 => "uint32".into(),
        Kind::Uint64 => "uint64".into(),
        Kind::Sint32 => "sint32".into(),
        Kind::Sint64 => "sint64".into(),
        Kind::Fixed32 => "fixed32".into(),
        Kind::Fixed64 => "fixed64".into(),
        Kind::Sfixed32 => "sfixed32".into(),
        Kind::Sfixed64 => "sfixed64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => e.full_name().to_string(),
    }
}
