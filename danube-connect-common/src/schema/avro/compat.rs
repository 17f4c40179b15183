//! Avro schema resolution: can a reader schema read a writer's data (see [`super`]).

use std::collections::HashSet;

use apache_avro::schema::{Name, Namespace, RecordSchema};
use apache_avro::Schema as AvroSchema;

use super::json::type_name;
use super::AvroCodec;
use crate::schema::push_segment;

/// Reasons why data written with `writer` cannot be read with `reader` (empty: compatible),
/// following the Avro schema-resolution rules (see the module docs), each with the JSON pointer
/// of the field.
pub(crate) fn can_read(writer: &AvroCodec, reader: &AvroCodec) -> Vec<String> {
    let mut checker = Checker { writer, reader, seen: HashSet::new(), reasons: Vec::new() };
    let mut path = String::new();
    checker.check(&writer.schema, &None, &reader.schema, &None, &mut path);
    checker.reasons
}

/// The Avro type a (possibly logical) schema is encoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array,
    Map,
    Union,
    Record,
    Enum,
    Fixed,
}

fn base_of(schema: &AvroSchema) -> Base {
    match schema {
        AvroSchema::Null => Base::Null,
        AvroSchema::Boolean => Base::Boolean,
        AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => Base::Int,
        AvroSchema::Long
        | AvroSchema::TimeMicros
        | AvroSchema::TimestampMillis
        | AvroSchema::TimestampMicros
        | AvroSchema::TimestampNanos
        | AvroSchema::LocalTimestampMillis
        | AvroSchema::LocalTimestampMicros
        | AvroSchema::LocalTimestampNanos => Base::Long,
        AvroSchema::Float => Base::Float,
        AvroSchema::Double => Base::Double,
        AvroSchema::Bytes | AvroSchema::BigDecimal => Base::Bytes,
        AvroSchema::String | AvroSchema::Uuid => Base::String,
        AvroSchema::Array(_) => Base::Array,
        AvroSchema::Map(_) => Base::Map,
        AvroSchema::Union(_) => Base::Union,
        AvroSchema::Record(_) => Base::Record,
        AvroSchema::Enum(_) => Base::Enum,
        AvroSchema::Fixed(_) | AvroSchema::Duration => Base::Fixed,
        AvroSchema::Decimal(d) => match d.inner.as_ref() {
            AvroSchema::Fixed(_) => Base::Fixed,
            _ => Base::Bytes,
        },
        // Resolved before use; a dangling reference matches nothing.
        AvroSchema::Ref { .. } => Base::Null,
    }
}

/// Whether a writer value of `w` can be read as `r` (equal, or an Avro promotion).
fn promotes(w: Base, r: Base) -> bool {
    w == r
        || matches!(
            (w, r),
            (Base::Int, Base::Long | Base::Float | Base::Double)
                | (Base::Long, Base::Float | Base::Double)
                | (Base::Float, Base::Double)
                | (Base::String, Base::Bytes)
                | (Base::Bytes, Base::String)
        )
}

struct Checker<'a> {
    writer: &'a AvroCodec,
    reader: &'a AvroCodec,
    /// Record pairs (writer, reader) already being compared (recursive types).
    seen: HashSet<(String, String)>,
    reasons: Vec<String>,
}

impl Checker<'_> {
    fn reason(&mut self, path: &str, message: String) {
        let path = if path.is_empty() { "/" } else { path };
        let text = format!("{path}: {message}");
        if !self.reasons.contains(&text) {
            self.reasons.push(text);
        }
    }

    fn check(&mut self, w: &AvroSchema, w_ns: &Namespace, r: &AvroSchema, r_ns: &Namespace, path: &mut String) {
        let w = self.writer.resolve(w, w_ns);
        let r = self.reader.resolve(r, r_ns);
        let w_ns = &named_ns(w, w_ns);
        let r_ns = &named_ns(r, r_ns);
        match (w, r) {
            (AvroSchema::Union(wu), _) => {
                // Every writer branch must be readable.
                for branch in wu.variants() {
                    let before = self.reasons.len();
                    self.check(branch, w_ns, r, r_ns, path);
                    if self.reasons.len() > before {
                        return;
                    }
                }
            }
            (_, AvroSchema::Union(ru)) => {
                // The first reader branch that can read the writer type.
                let mut closest: Option<Vec<String>> = None;
                for branch in ru.variants() {
                    let mut probe = Checker {
                        writer: self.writer,
                        reader: self.reader,
                        seen: self.seen.clone(),
                        reasons: Vec::new(),
                    };
                    let mut p = path.clone();
                    probe.check(w, w_ns, branch, r_ns, &mut p);
                    if probe.reasons.is_empty() {
                        return;
                    }
                    // The branch of the same type explains the failure best.
                    let resolved = self.reader.resolve(branch, r_ns);
                    if closest.is_none() && type_name(resolved) == type_name(w) {
                        closest = Some(probe.reasons);
                    }
                }
                match closest {
                    Some(reasons) => {
                        for reason in reasons {
                            if !self.reasons.contains(&reason) {
                                self.reasons.push(reason);
                            }
                        }
                    }
                    None => {
                        let names: Vec<String> =
                            ru.variants().iter().map(|b| type_name(self.reader.resolve(b, r_ns))).collect();
                        self.reason(
                            path,
                            format!("writer type {} is not in the reader's union [{}]", type_name(w), names.join(", ")),
                        );
                    }
                }
            }
            (AvroSchema::Record(wr), AvroSchema::Record(rr)) => self.check_record(wr, w_ns, rr, r_ns, path),
            (AvroSchema::Enum(we), AvroSchema::Enum(re)) => {
                self.check_name(&we.name, &re.name, re.aliases.as_deref(), path);
                if re.default.is_none() {
                    for symbol in &we.symbols {
                        if !re.symbols.contains(symbol) {
                            self.reason(
                                path,
                                format!(
                                    "enum symbol `{symbol}` of the writer is unknown to the reader (and the reader enum has no default)"
                                ),
                            );
                        }
                    }
                }
            }
            (AvroSchema::Array(wa), AvroSchema::Array(ra)) => {
                let len = path.len();
                path.push_str("/*");
                self.check(&wa.items, w_ns, &ra.items, r_ns, path);
                path.truncate(len);
            }
            (AvroSchema::Map(wm), AvroSchema::Map(rm)) => {
                let len = path.len();
                path.push_str("/*");
                self.check(&wm.types, w_ns, &rm.types, r_ns, path);
                path.truncate(len);
            }
            _ => self.check_leaf(w, r, path),
        }
    }

    fn check_record(
        &mut self,
        wr: &RecordSchema,
        w_ns: &Namespace,
        rr: &RecordSchema,
        r_ns: &Namespace,
        path: &mut String,
    ) {
        self.check_name(&wr.name, &rr.name, rr.aliases.as_deref(), path);
        let key = (wr.name.fullname(None), rr.name.fullname(None));
        if !self.seen.insert(key.clone()) {
            return;
        }
        for field in &rr.fields {
            let len = path.len();
            push_segment(path, &field.name);
            let found = std::iter::once(&field.name)
                .chain(field.aliases.iter().flatten())
                .find_map(|name| wr.lookup.get(name).and_then(|i| wr.fields.get(*i)));
            match found {
                Some(w_field) => self.check(&w_field.schema, w_ns, &field.schema, r_ns, path),
                None if field.default.is_none() => {
                    self.reason(path, "field is not in the writer and has no default in the reader".into())
                }
                None => {}
            }
            path.truncate(len);
        }
        self.seen.remove(&key);
    }

    fn check_name(&mut self, w: &Name, r: &Name, r_aliases: Option<&[apache_avro::schema::Alias]>, path: &str) {
        let aliased =
            r_aliases.unwrap_or_default().iter().any(|a| a.name() == w.name || a.fullname(None) == w.fullname(None));
        if w.name != r.name && !aliased {
            self.reason(
                path,
                format!(
                    "named type `{}` of the writer does not match `{}` of the reader",
                    w.fullname(None),
                    r.fullname(None)
                ),
            );
        }
    }

    fn check_leaf(&mut self, w: &AvroSchema, r: &AvroSchema, path: &str) {
        let (wb, rb) = (base_of(w), base_of(r));
        if !promotes(wb, rb) {
            self.reason(path, format!("writer type {} cannot be read as {}", type_name(w), type_name(r)));
            return;
        }
        if let (Some((w_name, w_size)), Some((r_name, r_size))) = (fixed_of(w), fixed_of(r)) {
            if w_size != r_size {
                self.reason(path, format!("fixed size changed from {w_size} to {r_size}"));
            } else if let (Some(w_name), Some(r_name)) = (w_name, r_name) {
                self.check_name(w_name, r_name, None, path);
            }
        }
        // Logical decimals must keep their scale, and the reader's precision must hold the
        // writer's values (the Avro spec leaves this to implementations; silently rescaling
        // would change the numbers).
        if let (AvroSchema::Decimal(wd), AvroSchema::Decimal(rd)) = (w, r) {
            if wd.scale != rd.scale {
                self.reason(path, format!("decimal scale changed from {} to {}", wd.scale, rd.scale));
            }
            if rd.precision < wd.precision {
                self.reason(path, format!("decimal precision shrank from {} to {}", wd.precision, rd.precision));
            }
        }
    }
}

/// Name and size of a fixed-encoded schema (`None` name for `duration`).
fn fixed_of(schema: &AvroSchema) -> Option<(Option<&Name>, usize)> {
    match schema {
        AvroSchema::Fixed(f) => Some((Some(&f.name), f.size)),
        AvroSchema::Decimal(d) => match d.inner.as_ref() {
            AvroSchema::Fixed(f) => Some((Some(&f.name), f.size)),
            _ => None,
        },
        AvroSchema::Duration => Some((None, 12)),
        _ => None,
    }
}

/// The namespace inside a named schema (its own, or the enclosing one).
fn named_ns(schema: &AvroSchema, ns: &Namespace) -> Namespace {
    let name = match schema {
        AvroSchema::Record(r) => &r.name,
        AvroSchema::Enum(e) => &e.name,
        AvroSchema::Fixed(f) => &f.name,
        _ => return ns.clone(),
    };
    name.namespace.clone().or_else(|| ns.clone())
}
