//! The bounds-checked pre-scan of a binary datum (no allocation, field paths).

use apache_avro::schema::Namespace;
use apache_avro::Schema as AvroSchema;

use super::{AvroCodec, KIND};
use crate::schema::{push_segment, SchemaError};

impl AvroCodec {
    /// Checks the datum without building values: every length, count, index and varint is
    /// checked against the schema and the remaining bytes, with the field path of the first
    /// problem. Runs before `from_avro_datum` so that a corrupt length cannot make it reserve
    /// gigabytes.
    pub(super) fn scan(&self, payload: &[u8]) -> Result<(), SchemaError> {
        let mut buf = payload;
        let mut path = String::new();
        self.scan_value(&self.schema, &None, &mut buf, &mut path, 0)
            .map_err(|(path, message)| SchemaError::payload_at(KIND, path, message))?;
        if !buf.is_empty() {
            return Err(SchemaError::payload_at(
                KIND,
                "",
                format!("{} trailing bytes after the Avro datum", buf.len()),
            ));
        }
        Ok(())
    }

    fn scan_value(
        &self,
        schema: &AvroSchema,
        ns: &Namespace,
        buf: &mut &[u8],
        path: &mut String,
        depth: usize,
    ) -> Result<(), (String, String)> {
        let fail = |path: &str, message: String| Err((path.to_string(), message));
        if depth > MAX_DEPTH {
            return fail(path, "nesting is too deep".into());
        }
        let schema = self.resolve(schema, ns);
        match schema {
            AvroSchema::Null => Ok(()),
            AvroSchema::Boolean => match take(buf, 1) {
                Some([0 | 1]) => Ok(()),
                Some(b) => fail(path, format!("invalid boolean byte {}", b[0])),
                None => fail(path, "truncated boolean".into()),
            },
            AvroSchema::Int | AvroSchema::Date | AvroSchema::TimeMillis => match read_long(buf) {
                Some(i) if i32::try_from(i).is_ok() => Ok(()),
                Some(i) => fail(path, format!("{i} does not fit an Avro int")),
                None => fail(path, "truncated or invalid varint".into()),
            },
            AvroSchema::Long
            | AvroSchema::TimeMicros
            | AvroSchema::TimestampMillis
            | AvroSchema::TimestampMicros
            | AvroSchema::TimestampNanos
            | AvroSchema::LocalTimestampMillis
            | AvroSchema::LocalTimestampMicros
            | AvroSchema::LocalTimestampNanos => match read_long(buf) {
                Some(_) => Ok(()),
                None => fail(path, "truncated or invalid varint".into()),
            },
            AvroSchema::Float => take(buf, 4).map(|_| ()).ok_or_else(|| (path.clone(), "truncated float".into())),
            AvroSchema::Double => take(buf, 8).map(|_| ()).ok_or_else(|| (path.clone(), "truncated double".into())),
            AvroSchema::Bytes => read_bytes(buf, path).map(|_| ()),
            AvroSchema::BigDecimal => {
                // bytes holding `bytes(unscaled) long(scale)`.
                let mut inner = read_bytes(buf, path)?;
                read_bytes(&mut inner, path)?;
                match read_long(&mut inner) {
                    Some(_) => Ok(()),
                    None => fail(path, "big-decimal has no valid scale".into()),
                }
            }
            AvroSchema::String => {
                let bytes = read_bytes(buf, path)?;
                std::str::from_utf8(bytes).map(|_| ()).map_err(|_| (path.clone(), "string is not valid UTF-8".into()))
            }
            AvroSchema::Uuid => {
                let bytes = read_bytes(buf, path)?;
                // 16 raw bytes, or the UUID text, as the decoder accepts.
                let text = std::str::from_utf8(bytes).ok();
                if bytes.len() == 16 || text.is_some_and(|t| apache_avro::Uuid::parse_str(t).is_ok()) {
                    Ok(())
                } else {
                    fail(path, "not a UUID string".into())
                }
            }
            AvroSchema::Fixed(f) => take(buf, f.size)
                .map(|_| ())
                .ok_or_else(|| (path.clone(), format!("truncated fixed of {} bytes", f.size))),
            AvroSchema::Duration => {
                take(buf, 12).map(|_| ()).ok_or_else(|| (path.clone(), "truncated duration".into()))
            }
            AvroSchema::Decimal(d) => self.scan_value(&d.inner, ns, buf, path, depth + 1),
            AvroSchema::Enum(e) => match read_long(buf) {
                Some(i) if usize::try_from(i).is_ok_and(|i| i < e.symbols.len()) => Ok(()),
                Some(i) => fail(path, format!("enum index {i} is out of range for {} symbols", e.symbols.len())),
                None => fail(path, "truncated or invalid varint".into()),
            },
            AvroSchema::Union(u) => match read_long(buf) {
                Some(i) => match usize::try_from(i).ok().and_then(|i| u.variants().get(i)) {
                    Some(branch) => self.scan_value(branch, ns, buf, path, depth + 1),
                    None => fail(path, format!("union branch {i} is out of range for {} branches", u.variants().len())),
                },
                None => fail(path, "truncated or invalid varint".into()),
            },
            AvroSchema::Record(r) => {
                let inner_ns = r.name.namespace.clone().or_else(|| ns.clone());
                for field in &r.fields {
                    let len = path.len();
                    push_segment(path, &field.name);
                    self.scan_value(&field.schema, &inner_ns, buf, path, depth + 1)?;
                    path.truncate(len);
                }
                Ok(())
            }
            AvroSchema::Array(a) => {
                let mut index = 0usize;
                self.scan_blocks(buf, path, |codec, buf, path| {
                    let len = path.len();
                    push_segment(path, &index.to_string());
                    index += 1;
                    codec.scan_value(&a.items, ns, buf, path, depth + 1)?;
                    path.truncate(len);
                    Ok(())
                })
            }
            AvroSchema::Map(m) => self.scan_blocks(buf, path, |codec, buf, path| {
                let key = read_bytes(buf, path)?;
                let key =
                    std::str::from_utf8(key).map_err(|_| (path.clone(), "map key is not valid UTF-8".to_string()))?;
                let len = path.len();
                push_segment(path, key);
                codec.scan_value(&m.types, ns, buf, path, depth + 1)?;
                path.truncate(len);
                Ok(())
            }),
            AvroSchema::Ref { name } => {
                fail(path, format!("schema reference `{}` cannot be resolved", name.fullname(None)))
            }
        }
    }

    /// Walks the blocks of an array or map: `count [byte size if count < 0] item*` until 0.
    fn scan_blocks(
        &self,
        buf: &mut &[u8],
        path: &mut String,
        mut item: impl FnMut(&Self, &mut &[u8], &mut String) -> Result<(), (String, String)>,
    ) -> Result<(), (String, String)> {
        let mut total = 0usize;
        loop {
            let count = read_long(buf).ok_or_else(|| (path.clone(), "truncated or invalid block count".to_string()))?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 && read_long(buf).is_none_or(|size| size < 0) {
                return Err((path.clone(), "invalid block byte size".into()));
            }
            let count = usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX);
            total = total.saturating_add(count);
            // Items of zero bytes (null, empty records) make any count fit; bound it.
            if total > buf.len().max(MAX_EMPTY_ITEMS) {
                return Err((path.clone(), format!("block count {count} exceeds the {} remaining bytes", buf.len())));
            }
            for _ in 0..count {
                item(self, buf, path)?;
            }
        }
    }
}

/// Deepest nesting of a datum the scanner follows.
const MAX_DEPTH: usize = 128;

/// Most items of an array or map beyond the payload's byte count (items of zero bytes).
const MAX_EMPTY_ITEMS: usize = 65_536;

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Some(head)
}

/// A zigzag varint long (at most 10 bytes).
fn read_long(buf: &mut &[u8]) -> Option<i64> {
    let mut raw = 0u64;
    for i in 0..10 {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    None
}

/// A length-prefixed byte string, bounds-checked.
fn read_bytes<'a>(buf: &mut &'a [u8], path: &str) -> Result<&'a [u8], (String, String)> {
    let len = read_long(buf).ok_or_else(|| (path.to_string(), "truncated or invalid length".to_string()))?;
    let n = usize::try_from(len).map_err(|_| (path.to_string(), format!("negative length {len}")))?;
    take(buf, n).ok_or_else(|| (path.to_string(), format!("length {n} exceeds the {} remaining bytes", buf.len())))
}
