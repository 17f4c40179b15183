//! Protobuf schema evolution by field number (see [`super`]).

use std::collections::HashSet;

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor, Syntax};

use super::wire::kind_name;
use super::ProtobufCodec;
use crate::schema::push_segment;

/// Wire-compatibility group of a scalar kind (kinds in one group read each other's data).
fn wire_group(kind: &Kind) -> u8 {
    match kind {
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Bool | Kind::Enum(_) => 1,
        Kind::Sint32 | Kind::Sint64 => 2,
        Kind::Fixed32 | Kind::Sfixed32 => 3,
        Kind::Fixed64 | Kind::Sfixed64 => 4,
        Kind::String | Kind::Bytes => 5,
        Kind::Float => 6,
        Kind::Double => 7,
        Kind::Message(_) => 8,
    }
}

/// Reasons why data written with `writer` may not be readable with `reader` (empty:
/// compatible), following the rules in the module docs.
pub(crate) fn can_read(writer: &ProtobufCodec, reader: &ProtobufCodec) -> Vec<String> {
    let mut reasons = Vec::new();
    let mut seen = HashSet::new();
    let mut path = String::new();
    compare_messages(&writer.message, &reader.message, &mut path, &mut seen, &mut reasons);
    reasons
}

fn compare_messages(
    writer: &MessageDescriptor,
    reader: &MessageDescriptor,
    path: &mut String,
    seen: &mut HashSet<(String, String)>,
    reasons: &mut Vec<String>,
) {
    if !seen.insert((writer.full_name().to_string(), reader.full_name().to_string())) {
        return;
    }
    for r_field in reader.fields() {
        let len = path.len();
        push_segment(path, r_field.name());
        match writer.get_field(r_field.number()) {
            Some(w_field) => compare_fields(&w_field, &r_field, path, seen, reasons),
            None if r_field.cardinality() == Cardinality::Required => reasons
                .push(format!("{path}: field {} is required by the reader but not in the writer", r_field.number())),
            None => {}
        }
        path.truncate(len);
    }
}

fn compare_fields(
    w: &FieldDescriptor,
    r: &FieldDescriptor,
    path: &mut String,
    seen: &mut HashSet<(String, String)>,
    reasons: &mut Vec<String>,
) {
    let shape = |f: &FieldDescriptor| {
        if f.is_map() {
            "map"
        } else if f.is_list() {
            "repeated"
        } else {
            "singular"
        }
    };
    if shape(w) != shape(r) {
        reasons.push(format!("{path}: field {} changed from {} to {}", r.number(), shape(w), shape(r)));
        return;
    }
    if r.cardinality() == Cardinality::Required && w.cardinality() != Cardinality::Required {
        reasons.push(format!("{path}: field {} is required by the reader but optional in the writer", r.number()));
    }
    if w.is_map() {
        if let (Kind::Message(wm), Kind::Message(rm)) = (w.kind(), r.kind()) {
            let (wk, rk) = (wm.map_entry_key_field(), rm.map_entry_key_field());
            if wire_group(&wk.kind()) != wire_group(&rk.kind()) {
                reasons.push(format!(
                    "{path}: map key type changed from {} to {}",
                    kind_name(&wk.kind()),
                    kind_name(&rk.kind())
                ));
            }
            let (wv, rv) = (wm.map_entry_value_field(), rm.map_entry_value_field());
            let len = path.len();
            path.push_str("/*");
            compare_kinds(&wv.kind(), &rv.kind(), path, seen, reasons);
            path.truncate(len);
        }
        return;
    }
    compare_kinds(&w.kind(), &r.kind(), path, seen, reasons);
}

fn compare_kinds(
    w: &Kind,
    r: &Kind,
    path: &mut String,
    seen: &mut HashSet<(String, String)>,
    reasons: &mut Vec<String>,
) {
    match (w, r) {
        (Kind::Message(wm), Kind::Message(rm)) => compare_messages(wm, rm, path, seen, reasons),
        (w, r) if wire_group(w) != wire_group(r) => reasons.push(format!(
            "{path}: type changed from {} to {}, which is not wire-compatible",
            kind_name(w),
            kind_name(r)
        )),
        (Kind::Enum(we), Kind::Enum(re)) if re.parent_file().syntax() == Syntax::Proto2 => {
            // A closed reader enum drops numbers it does not know.
            for value in we.values() {
                if re.get_value(value.number()).is_none() {
                    reasons.push(format!(
                        "{path}: enum value {} ({}) of the writer is unknown to the reader's closed enum {}",
                        value.name(),
                        value.number(),
                        re.full_name()
                    ));
                }
            }
        }
        _ => {}
    }
}
