//! ClickHouse column types and the conversion of JSON values into `JSONEachRow` text that
//! ClickHouse 18.16 and current versions both parse.
//!
//! Conversions check what ClickHouse would silently wrap or truncate (an `Int8` given 300,
//! a `Decimal(10, 2)` given `12.345`), so a bad value makes its record invalid at intake
//! instead of failing a whole insert later.

use clickhouse_types::DataTypeNode;
use serde_json::Value;
use time::{Date, Month};

/// A parsed column type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// `Int8`..`Int128`, `UInt8`..`UInt128`.
    Int {
        /// Width in bits.
        bits: u32,
        /// Signed or not.
        signed: bool,
    },
    /// `Float32` / `Float64`.
    Float {
        /// Width in bits.
        bits: u32,
    },
    /// `String`.
    String,
    /// `FixedString(n)`: at most `n` bytes.
    FixedString(usize),
    /// `Bool` (ClickHouse 22.x+).
    Bool,
    /// `Date`.
    Date,
    /// `Date32`.
    Date32,
    /// `DateTime` or `DateTime('tz')`.
    DateTime,
    /// `DateTime64(precision[, 'tz'])`.
    DateTime64(u32),
    /// `UUID`.
    Uuid,
    /// `Decimal(P, S)` and `DecimalNN(S)`.
    Decimal {
        /// Total digits.
        precision: u32,
        /// Digits after the point.
        scale: u32,
    },
    /// `Nullable(T)`.
    Nullable(Box<ColumnType>),
    /// `Array(T)`.
    Array(Box<ColumnType>),
    /// `Enum8(...)` / `Enum16(...)`: an element name, or its number (sent as the name).
    Enum {
        /// The type as ClickHouse spells it, for messages.
        spelled: String,
        /// `(name, value)` of every element.
        elements: Vec<(String, i16)>,
    },
    /// Any other type: the JSON value is passed through as is.
    Other(String),
}

/// Why a JSON value does not fit a column type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value} is not a valid {expected}: {reason}")]
pub struct ConvertError {
    /// The value, shortened.
    pub value: String,
    /// The column type.
    pub expected: String,
    /// What is wrong.
    pub reason: String,
}

impl ColumnType {
    /// Parses a type name as `system.columns.type` spells it (with the `clickhouse-types`
    /// parser). `LowCardinality(T)` is `T`; a type this sink does not convert (or one the
    /// parser does not know) is [`ColumnType::Other`], its values passed through.
    pub fn parse(name: &str) -> Self {
        let name = name.trim();
        let parsed = match parse_node(name) {
            Some(node) => Self::from_node(&node),
            // `DecimalNN(S)`: ClickHouse spells these `Decimal(P, S)` in `system.columns`,
            // but a mapping may name them in the short form.
            None => decimal_alias(name).unwrap_or_else(|| match name {
                "Boolean" => Self::Bool,
                _ => Self::Other(name.to_string()),
            }),
        };
        // Keep the spelling of the column's own type for messages.
        match parsed {
            Self::Other(_) => Self::Other(name.to_string()),
            Self::Enum { elements, .. } => Self::Enum { spelled: name.to_string(), elements },
            other => other,
        }
    }

    fn from_node(node: &DataTypeNode) -> Self {
        use DataTypeNode as N;
        let int = |bits, signed| Self::Int { bits, signed };
        match node {
            N::LowCardinality(inner) => Self::from_node(inner),
            N::Nullable(inner) => Self::Nullable(Box::new(Self::from_node(inner))),
            N::Array(inner) => Self::Array(Box::new(Self::from_node(inner))),
            N::Int8 => int(8, true),
            N::Int16 => int(16, true),
            N::Int32 => int(32, true),
            N::Int64 => int(64, true),
            N::Int128 => int(128, true),
            N::UInt8 => int(8, false),
            N::UInt16 => int(16, false),
            N::UInt32 => int(32, false),
            N::UInt64 => int(64, false),
            N::UInt128 => int(128, false),
            N::Float32 => Self::Float { bits: 32 },
            N::Float64 => Self::Float { bits: 64 },
            N::String => Self::String,
            N::FixedString(n) => Self::FixedString(*n),
            N::Bool => Self::Bool,
            N::Date => Self::Date,
            N::Date32 => Self::Date32,
            N::DateTime(_) => Self::DateTime,
            // The precision is one digit, 0 to 9.
            N::DateTime64(precision, _) => Self::DateTime64(precision.to_string().parse().unwrap_or(9)),
            N::UUID => Self::Uuid,
            N::Decimal(precision, scale, _) => {
                Self::Decimal { precision: u32::from(*precision), scale: u32::from(*scale) }
            }
            N::Enum(_, values) => {
                let mut elements: Vec<(String, i16)> = values.iter().map(|(v, name)| (name.clone(), *v)).collect();
                elements.sort_by_key(|(_, v)| *v);
                Self::Enum { spelled: node.to_string(), elements }
            }
            other => Self::Other(other.to_string()),
        }
    }

    /// Whether `null` is a value of this type.
    pub fn is_nullable(&self) -> bool {
        matches!(self, Self::Nullable(_))
    }

    /// `UInt8`..`UInt128`.
    pub fn is_unsigned_integer(&self) -> bool {
        matches!(self, Self::Int { signed: false, .. })
    }

    /// Appends `value` converted to this type as `JSONEachRow` text.
    pub fn encode(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        match self {
            Self::Nullable(inner) => {
                if value.is_null() {
                    out.extend_from_slice(b"null");
                    Ok(())
                } else {
                    inner.encode(value, out)
                }
            }
            Self::Array(inner) => {
                let Value::Array(items) = value else { return Err(self.error(value, "expected a JSON array")) };
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if item.is_null() && !inner.is_nullable() {
                        return Err(self.error(value, "null element in an array of a non-Nullable type"));
                    }
                    inner.encode(item, out)?;
                }
                out.push(b']');
                Ok(())
            }
            Self::Int { bits, signed } => {
                let n = self.integer(value)?;
                let (min, max) = int_range(*bits, *signed);
                if n < min || n > max {
                    return Err(self.error(value, "out of range"));
                }
                out.extend_from_slice(n.to_string().as_bytes());
                Ok(())
            }
            Self::Float { bits } => {
                let f = match value {
                    Value::Number(n) => n.as_f64().ok_or_else(|| self.error(value, "not a number"))?,
                    Value::String(s) => s.trim().parse::<f64>().map_err(|_| self.error(value, "not a number"))?,
                    _ => return Err(self.error(value, "expected a number")),
                };
                if !f.is_finite() || (*bits == 32 && f.abs() > f64::from(f32::MAX)) {
                    return Err(self.error(value, "out of range"));
                }
                let number = serde_json::Number::from_f64(f).ok_or_else(|| self.error(value, "not finite"))?;
                out.extend_from_slice(number.to_string().as_bytes());
                Ok(())
            }
            Self::String => {
                match value {
                    Value::String(s) => write_str(s, out),
                    other => write_str(&other.to_string(), out),
                }
                Ok(())
            }
            Self::FixedString(n) => {
                let text = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if text.len() > *n {
                    return Err(self.error(value, &format!("longer than {n} bytes")));
                }
                write_str(&text, out);
                Ok(())
            }
            Self::Bool => {
                let b = match value {
                    Value::Bool(b) => *b,
                    Value::Number(n) if n.as_u64() == Some(0) => false,
                    Value::Number(n) if n.as_u64() == Some(1) => true,
                    Value::String(s) if s == "true" || s == "1" => true,
                    Value::String(s) if s == "false" || s == "0" => false,
                    _ => return Err(self.error(value, "expected true, false, 0 or 1")),
                };
                out.extend_from_slice(if b { b"true" } else { b"false" });
                Ok(())
            }
            Self::Date | Self::Date32 => {
                let days = match value {
                    Value::Number(_) => self.integer(value)?,
                    Value::String(s) => {
                        // A date-time string gives its date part, provided it is a valid date-time.
                        let date = match s.get(..10) {
                            Some(date) if s.len() > 10 && parse_datetime(s).is_some() => date,
                            _ => s.as_str(),
                        };
                        let date = parse_date(date).ok_or_else(|| self.error(value, "expected YYYY-MM-DD"))?;
                        i128::from(days_since_epoch(date))
                    }
                    _ => return Err(self.error(value, "expected YYYY-MM-DD or days since 1970-01-01")),
                };
                let (min, max) = if *self == Self::Date { (0, 65_535) } else { (-25_567, 120_529) };
                if days < min || days > max {
                    return Err(self.error(value, "out of range"));
                }
                let days = i32::try_from(days).map_err(|_| self.error(value, "out of range"))?;
                let date = Date::from_julian_day(UNIX_EPOCH_JULIAN_DAY + days)
                    .map_err(|_| self.error(value, "out of range"))?;
                let (y, m, d) = (date.year(), u8::from(date.month()), date.day());
                out.extend_from_slice(format!("\"{y:04}-{m:02}-{d:02}\"").as_bytes());
                Ok(())
            }
            Self::DateTime => match value {
                Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    let secs = self.integer(value)?;
                    self.write_epoch(secs, value, out)
                }
                Value::Number(_) => {
                    let secs = self.integer(value)?;
                    self.write_epoch(secs, value, out)
                }
                Value::String(s) => match parse_datetime(s) {
                    Some(DateTimeText::Naive(text)) => {
                        write_str(&text, out);
                        Ok(())
                    }
                    Some(DateTimeText::Instant { secs, .. }) => self.write_epoch(i128::from(secs), value, out),
                    None => Err(self.error(value, "expected YYYY-MM-DD hh:mm:ss, RFC 3339 or Unix seconds")),
                },
                _ => Err(self.error(value, "expected a date-time string or Unix seconds")),
            },
            Self::DateTime64(_) => match value {
                Value::Number(n) => {
                    write_str(&n.to_string(), out);
                    Ok(())
                }
                Value::String(s) => match parse_datetime(s) {
                    Some(DateTimeText::Naive(text)) => {
                        write_str(&text, out);
                        Ok(())
                    }
                    Some(DateTimeText::Instant { secs, nanos }) => {
                        write_str(&decimal_seconds(secs, nanos), out);
                        Ok(())
                    }
                    None if s.parse::<f64>().is_ok() => {
                        write_str(s, out);
                        Ok(())
                    }
                    None => Err(self.error(value, "expected YYYY-MM-DD hh:mm:ss[.fff], RFC 3339 or Unix seconds")),
                },
                _ => Err(self.error(value, "expected a date-time string or Unix seconds")),
            },
            Self::Uuid => {
                let Value::String(s) = value else { return Err(self.error(value, "expected a UUID string")) };
                let hex: String = s.chars().filter(|c| *c != '-').collect();
                let dashes_ok =
                    s.len() == 32 || (s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-'));
                if hex.len() != 32 || !dashes_ok || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(self.error(value, "expected 8-4-4-4-12 hex digits"));
                }
                let h = hex.to_ascii_lowercase();
                write_str(&format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]), out);
                Ok(())
            }
            Self::Decimal { precision, scale } => {
                let text = match value {
                    Value::String(s) => s.trim().to_string(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(self.error(value, "expected a decimal string or number")),
                };
                let normalized =
                    normalize_decimal(&text, *precision, *scale).map_err(|reason| self.error(value, reason))?;
                out.extend_from_slice(normalized.as_bytes());
                Ok(())
            }
            Self::Enum { elements, .. } => {
                // An unknown element fails the whole insert on the server (18.16 even with a
                // LOGICAL_ERROR code), so it is checked here. Numbers are sent as their name:
                // older servers read only names from JSON.
                let found = match value {
                    Value::String(s) => elements
                        .iter()
                        .find(|(name, _)| name == s)
                        .or_else(|| s.trim().parse::<i16>().ok().and_then(|n| elements.iter().find(|(_, v)| *v == n))),
                    Value::Number(n) => n
                        .as_i64()
                        .and_then(|n| i16::try_from(n).ok())
                        .and_then(|n| elements.iter().find(|(_, v)| *v == n)),
                    _ => return Err(self.error(value, "expected an element name or its number")),
                };
                let (name, _) = found.ok_or_else(|| self.error(value, "not an element of the enum"))?;
                write_str(name, out);
                Ok(())
            }
            Self::Other(_) => {
                out.extend_from_slice(value.to_string().as_bytes());
                Ok(())
            }
        }
    }

    fn write_epoch(&self, secs: i128, value: &Value, out: &mut Vec<u8>) -> Result<(), ConvertError> {
        if !(0..=i128::from(u32::MAX)).contains(&secs) {
            return Err(self.error(value, "out of range (1970 to 2106)"));
        }
        out.extend_from_slice(secs.to_string().as_bytes());
        Ok(())
    }

    /// An integer from a JSON number (integral), a decimal string or a bool.
    fn integer(&self, value: &Value) -> Result<i128, ConvertError> {
        match value {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(i128::from(i))
                } else if let Some(u) = n.as_u64() {
                    Ok(i128::from(u))
                } else {
                    let f = n.as_f64().unwrap_or(f64::NAN);
                    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
                        Ok(f as i128)
                    } else {
                        Err(self.error(value, "not an integer"))
                    }
                }
            }
            Value::String(s) => s.trim().parse::<i128>().map_err(|_| self.error(value, "not an integer")),
            Value::Bool(b) => Ok(i128::from(*b)),
            _ => Err(self.error(value, "expected an integer")),
        }
    }

    fn error(&self, value: &Value, reason: &str) -> ConvertError {
        let mut text = value.to_string();
        if text.len() > 64 {
            let mut end = 61;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        ConvertError { value: text, expected: self.name(), reason: reason.to_string() }
    }

    /// The type's name for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Int { bits, signed } => format!("{}Int{bits}", if *signed { "" } else { "U" }),
            Self::Float { bits } => format!("Float{bits}"),
            Self::String => "String".into(),
            Self::FixedString(n) => format!("FixedString({n})"),
            Self::Bool => "Bool".into(),
            Self::Date => "Date".into(),
            Self::Date32 => "Date32".into(),
            Self::DateTime => "DateTime".into(),
            Self::DateTime64(p) => format!("DateTime64({p})"),
            Self::Uuid => "UUID".into(),
            Self::Decimal { precision, scale } => format!("Decimal({precision}, {scale})"),
            Self::Nullable(inner) => format!("Nullable({})", inner.name()),
            Self::Array(inner) => format!("Array({})", inner.name()),
            Self::Enum { spelled, .. } => spelled.clone(),
            Self::Other(name) => name.clone(),
        }
    }
}

/// `name` parsed by `clickhouse-types`, or `None`. That parser expects the server's exact
/// spelling and panics on some malformed names (an unclosed `DateTime64(3, '`), so a name whose
/// parentheses and quotes do not balance is not handed to it, and a panic is caught.
fn parse_node(name: &str) -> Option<DataTypeNode> {
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in name.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '\'') => quoted = !quoted,
            (false, _, '(') => depth += 1,
            (false, _, ')') => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    if depth != 0 || quoted {
        return None;
    }
    std::panic::catch_unwind(|| DataTypeNode::new(name)).ok()?.ok()
}

/// `Decimal32(S)`, `Decimal64(S)`, `Decimal128(S)`, `Decimal256(S)` as `Decimal(P, S)`.
fn decimal_alias(name: &str) -> Option<ColumnType> {
    [("Decimal32", 9), ("Decimal64", 18), ("Decimal128", 38), ("Decimal256", 76)].into_iter().find_map(
        |(prefix, precision)| {
            let scale = name.strip_prefix(prefix)?.strip_prefix('(')?.strip_suffix(')')?.trim().parse().ok()?;
            Some(ColumnType::Decimal { precision, scale })
        },
    )
}

fn int_range(bits: u32, signed: bool) -> (i128, i128) {
    match (bits, signed) {
        (128, true) => (i128::MIN, i128::MAX),
        (128, false) => (0, i128::MAX),
        (bits, true) => (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1),
        (bits, false) => (0, (1i128 << bits) - 1),
    }
}

/// Appends `s` as a JSON string.
pub fn write_str(s: &str, out: &mut Vec<u8>) {
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `[-]digits[.digits]` checked against precision and scale, trailing fraction zeros dropped.
fn normalize_decimal(text: &str, precision: u32, scale: u32) -> Result<String, &'static str> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("expected [-]digits[.digits]");
    }
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize {
        return Err("more fraction digits than the scale");
    }
    if int.len() > precision.saturating_sub(scale) as usize {
        return Err("more integer digits than the precision allows");
    }
    let mut normalized = String::with_capacity(text.len() + 2);
    if negative && !(int.is_empty() && frac.is_empty()) {
        normalized.push('-');
    }
    normalized.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        normalized.push('.');
        normalized.push_str(frac);
    }
    Ok(normalized)
}

/// `YYYY-MM-DD`, a valid calendar date (leap years included).
fn parse_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    if !s.is_ascii()
        || b.len() != 10
        || b[4] != b'-'
        || b[7] != b'-'
        || !digits(0..4)
        || !digits(5..7)
        || !digits(8..10)
    {
        return None;
    }
    let y: i32 = s[..4].parse().ok()?;
    let m: u8 = s[5..7].parse().ok()?;
    let d: u8 = s[8..10].parse().ok()?;
    Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok()
}

/// The Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i32 = 2_440_588;

/// Days since 1970-01-01 (negative before).
fn days_since_epoch(date: Date) -> i64 {
    i64::from(date.to_julian_day() - UNIX_EPOCH_JULIAN_DAY)
}

/// `secs + nanos / 10^9` (an instant, `nanos` counted forwards even before 1970) as decimal
/// seconds with 9 fraction digits: `-1` and 500,000,000 ns is `-0.500000000`.
fn decimal_seconds(secs: i64, nanos: u32) -> String {
    let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let sign = if total < 0 { "-" } else { "" };
    let abs = total.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// A date-time string: naive (`2024-01-02 03:04:05`, left to the column's time zone) or
/// an instant (RFC 3339 with `Z` or an offset).
enum DateTimeText {
    Naive(String),
    Instant { secs: i64, nanos: u32 },
}

fn parse_datetime(s: &str) -> Option<DateTimeText> {
    // Every valid form is ASCII; checking first makes the byte-position slicing below
    // safe on any input (a multi-byte character would otherwise split a char boundary).
    if !s.is_ascii() {
        return None;
    }
    if s.len() == 10 {
        parse_date(s)?;
        return Some(DateTimeText::Naive(format!("{s} 00:00:00")));
    }
    if s.len() < 19 {
        return None;
    }
    let date = parse_date(&s[..10])?;
    let sep = s.as_bytes()[10];
    if sep != b' ' && sep != b'T' {
        return None;
    }
    let time = &s[11..19];
    let tb = time.as_bytes();
    if tb[2] != b':' || tb[5] != b':' {
        return None;
    }
    let hh: i64 = time[..2].parse().ok()?;
    let mm: i64 = time[3..5].parse().ok()?;
    let ss: i64 = time[6..8].parse().ok()?;
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut padded: String = frac[..digits.min(9)].to_string();
        while padded.len() < 9 {
            padded.push('0');
        }
        nanos = padded.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "" => {
            let base = format!("{} {}", &s[..10], time);
            return Some(DateTimeText::Naive(if nanos > 0 { format!("{base}.{nanos:09}") } else { base }));
        }
        "Z" | "z" => 0,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || (ob[0] != b'+' && ob[0] != b'-') || ob[3] != b':' {
                return None;
            }
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            let sign = if ob[0] == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_since_epoch(date) * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    Some(DateTimeText::Instant { secs, nanos })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(ty: &str, v: Value) -> Result<String, ConvertError> {
        let mut out = Vec::new();
        ColumnType::parse(ty).encode(&v, &mut out)?;
        Ok(String::from_utf8(out).expect("utf8"))
    }

    #[test]
    fn type_names_parse() {
        assert_eq!(ColumnType::parse("LowCardinality(String)"), ColumnType::String);
        assert_eq!(ColumnType::parse("Decimal(10, 2)"), ColumnType::Decimal { precision: 10, scale: 2 });
        assert_eq!(ColumnType::parse("Decimal64(4)"), ColumnType::Decimal { precision: 18, scale: 4 });
        assert_eq!(ColumnType::parse("DateTime('Europe/Berlin')"), ColumnType::DateTime);
        assert_eq!(ColumnType::parse("DateTime64(3, 'UTC')"), ColumnType::DateTime64(3));
        assert_eq!(
            ColumnType::parse("Array(Nullable(Int32))"),
            ColumnType::Array(Box::new(ColumnType::Nullable(Box::new(ColumnType::Int { bits: 32, signed: true }))))
        );
        assert_eq!(
            ColumnType::parse("Enum8('a' = 1, 'it\\'s' = -2)"),
            ColumnType::Enum {
                spelled: "Enum8('a' = 1, 'it\\'s' = -2)".into(),
                elements: vec![("it's".into(), -2), ("a".into(), 1)]
            }
        );
        assert_eq!(ColumnType::parse("Enum8(oops)"), ColumnType::Other("Enum8(oops)".into()));
        assert_eq!(ColumnType::parse("Tuple(UInt8, String)"), ColumnType::Other("Tuple(UInt8, String)".into()));
    }

    #[test]
    fn enums_accept_their_elements_only() {
        let ty = "Enum16('a' = 1, 'b' = 1000)";
        assert_eq!(enc(ty, json!("a")).unwrap(), "\"a\"");
        assert_eq!(enc(ty, json!(1000)).unwrap(), "\"b\"");
        assert_eq!(enc(ty, json!("1000")).unwrap(), "\"b\"");
        assert!(enc(ty, json!("zzz")).is_err());
        assert!(enc(ty, json!(2)).is_err());
        assert!(enc(ty, json!(true)).is_err());
        assert_eq!(enc("Nullable(Enum8('x' = 1))", json!(null)).unwrap(), "null");
        assert_eq!(enc("Array(Enum8('x' = 1))", json!(["x", 1])).unwrap(), "[\"x\",\"x\"]");
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(enc("Int8", json!(-128)).unwrap(), "-128");
        assert!(enc("Int8", json!(300)).is_err());
        assert!(enc("UInt32", json!(-1)).is_err());
        assert_eq!(enc("UInt64", json!(u64::MAX)).unwrap(), u64::MAX.to_string());
        assert_eq!(enc("UInt8", json!(true)).unwrap(), "1");
        assert_eq!(enc("Int64", json!("42")).unwrap(), "42");
        assert_eq!(enc("Int32", json!(3.0)).unwrap(), "3");
        assert!(enc("Int32", json!(3.5)).is_err());
        assert!(enc("Int32", json!({"a": 1})).is_err());
    }

    #[test]
    fn decimals_keep_their_digits_and_respect_the_scale() {
        assert_eq!(enc("Decimal(10, 2)", json!("12.30")).unwrap(), "12.3");
        assert_eq!(enc("Decimal(10, 2)", json!("-0.05")).unwrap(), "-0.05");
        assert_eq!(enc("Decimal(10, 2)", json!(7)).unwrap(), "7");
        assert!(enc("Decimal(10, 2)", json!("12.345")).is_err());
        assert!(enc("Decimal(10, 2)", json!("123456789.1")).is_err());
        assert!(enc("Decimal(10, 2)", json!("1e3")).is_err());
    }

    #[test]
    fn dates_and_times_convert() {
        assert_eq!(enc("Date", json!("2024-02-29")).unwrap(), "\"2024-02-29\"");
        assert!(enc("Date", json!("2023-02-29")).is_err());
        assert_eq!(enc("Date", json!("2024-02-29 10:11:12")).unwrap(), "\"2024-02-29\"");
        assert_eq!(enc("Date", json!("2024-02-29T10:11:12Z")).unwrap(), "\"2024-02-29\"");
        assert!(enc("Date", json!("2024-02-29 garbage")).is_err());
        assert_eq!(enc("Date", json!(19_000)).unwrap(), "\"2022-01-08\"");
        assert_eq!(enc("DateTime", json!(1_700_000_000)).unwrap(), "1700000000");
        assert_eq!(enc("DateTime", json!("2024-01-02 03:04:05")).unwrap(), "\"2024-01-02 03:04:05\"");
        assert_eq!(enc("DateTime", json!("2023-11-14T22:13:20Z")).unwrap(), "1700000000");
        assert_eq!(enc("DateTime", json!("2023-11-15T00:13:20+02:00")).unwrap(), "1700000000");
        assert!(enc("DateTime", json!("yesterday")).is_err());
        assert!(enc("DateTime", json!(-5)).is_err());
    }

    #[test]
    fn strings_uuids_bools_arrays_and_nulls() {
        assert_eq!(enc("String", json!("a\"b")).unwrap(), "\"a\\\"b\"");
        assert_eq!(enc("String", json!({"k": 1})).unwrap(), "\"{\\\"k\\\":1}\"");
        assert!(enc("FixedString(2)", json!("abc")).is_err());
        assert_eq!(
            enc("UUID", json!("123E4567E89B12D3A456426614174000")).unwrap(),
            "\"123e4567-e89b-12d3-a456-426614174000\""
        );
        assert!(enc("UUID", json!("not-a-uuid")).is_err());
        assert_eq!(enc("Bool", json!(1)).unwrap(), "true");
        assert_eq!(enc("Array(Int8)", json!([1, 2])).unwrap(), "[1,2]");
        assert!(enc("Array(Int8)", json!([1, null])).is_err());
        assert_eq!(enc("Array(Nullable(Int8))", json!([1, null])).unwrap(), "[1,null]");
        assert_eq!(enc("Nullable(String)", json!(null)).unwrap(), "null");
        assert_eq!(enc("Float32", json!(1.5)).unwrap(), "1.5");
        assert!(enc("Float32", json!(1e300)).is_err());
    }

    #[test]
    fn non_ascii_date_times_are_errors_not_panics() {
        for text in [
            "2024-01-02 03:04:0\u{e9}",
            "2024-01-0\u{e9} 03:04:05",
            "2024-01-02\u{e9}03:04:05",
            "2024-01-02T03:04:05.1\u{e9}",
            "2024-01-02T03:04:05+0\u{e9}:00",
            "2024-01-02T03:04:05\u{e9}",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            for ty in ["DateTime", "DateTime64(3)", "Date", "Nullable(DateTime)"] {
                assert!(enc(ty, json!(text)).is_err(), "{ty} accepted {text:?}");
            }
        }
    }

    #[test]
    fn a_multi_byte_character_anywhere_in_a_date_time_is_refused() {
        // Every position of valid inputs, each replaced by a 2-, 3- and 4-byte character.
        for valid in ["2024-01-02", "2024-01-02 03:04:05", "2024-01-02T03:04:05.123456+02:00", "2023-11-14T22:13:20Z"] {
            assert!(enc("DateTime64(6)", json!(valid)).is_ok(), "{valid}");
            for wide in ['\u{e9}', '\u{20ac}', '\u{1f600}'] {
                for at in 0..valid.len() {
                    let mut text = valid.to_string();
                    text.replace_range(at..=at, &wide.to_string());
                    for ty in ["DateTime", "DateTime64(6)", "Date"] {
                        assert!(enc(ty, json!(text)).is_err(), "{ty} accepted {text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn nested_and_zoned_type_names_parse() {
        assert_eq!(
            ColumnType::parse("LowCardinality(Nullable(String))"),
            ColumnType::Nullable(Box::new(ColumnType::String))
        );
        assert_eq!(ColumnType::parse("Nullable(DateTime64(6, 'Asia/Tokyo'))"), {
            ColumnType::Nullable(Box::new(ColumnType::DateTime64(6)))
        });
        assert_eq!(ColumnType::parse("DateTime64(0)"), ColumnType::DateTime64(0));
        assert_eq!(ColumnType::parse("DateTime64(9)"), ColumnType::DateTime64(9));
        assert_eq!(ColumnType::parse(" Decimal(38, 10) "), ColumnType::Decimal { precision: 38, scale: 10 });
        assert_eq!(ColumnType::parse("Decimal128(3)"), ColumnType::Decimal { precision: 38, scale: 3 });
        assert_eq!(ColumnType::parse("FixedString(16)"), ColumnType::FixedString(16));
        assert_eq!(ColumnType::parse("Boolean"), ColumnType::Bool);
        // Types without a conversion here are passed through, spelled as the server does.
        assert_eq!(ColumnType::parse("Int256"), ColumnType::Other("Int256".into()));
        assert_eq!(ColumnType::parse("Map(String, UInt64)"), ColumnType::Other("Map(String, UInt64)".into()));
        assert_eq!(ColumnType::parse("IPv4"), ColumnType::Other("IPv4".into()));
        assert_eq!(ColumnType::parse("Object('json')"), ColumnType::Other("Object('json')".into()));
        assert_eq!(
            ColumnType::parse("Array(Nullable(Enum8('x' = 1)))"),
            ColumnType::Array(Box::new(ColumnType::Nullable(Box::new(ColumnType::Enum {
                spelled: "Enum8('x' = 1)".into(),
                elements: vec![("x".into(), 1)]
            }))))
        );
    }

    #[test]
    fn truncated_and_odd_type_names_are_passed_through_not_panics() {
        for name in [
            "Nullable(DateTime64(3, 'UTC'))",
            "Array(LowCardinality(Nullable(FixedString(4))))",
            "Enum16('\u{e9}t\u{e9}' = -300, 'b' = 2)",
            "Decimal(76, 20)",
            "Map(String, Array(Tuple(Int8, String)))",
        ] {
            for end in (0..=name.len()).filter(|&i| name.is_char_boundary(i)) {
                let _ = ColumnType::parse(&name[..end]);
            }
        }
        assert_eq!(ColumnType::parse("Nullable("), ColumnType::Other("Nullable(".into()));
        assert_eq!(ColumnType::parse("Decimal(10)"), ColumnType::Other("Decimal(10)".into()));
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        for (date, valid) in [
            ("2024-02-29", true),
            ("2000-02-29", true),
            ("2023-02-29", false),
            ("2100-02-29", false),
            ("1900-02-29", false),
            ("2024-04-31", false),
            ("2024-13-01", false),
            ("2024-00-10", false),
            ("2024-01-00", false),
            ("2024-+1-05", false),
        ] {
            assert_eq!(enc("Date32", json!(date)).is_ok(), valid, "{date}");
            assert_eq!(enc("DateTime", json!(format!("{date} 00:00:00"))).is_ok(), valid, "{date}");
        }
        // Day numbers across a leap day and a century that is not a leap year.
        assert_eq!(enc("Date", json!(19_782)).unwrap(), "\"2024-02-29\"");
        assert_eq!(enc("Date", json!(19_783)).unwrap(), "\"2024-03-01\"");
        assert_eq!(enc("Date32", json!(47_541)).unwrap(), "\"2100-03-01\"");
        assert_eq!(enc("Date32", json!(47_540)).unwrap(), "\"2100-02-28\"");
        assert_eq!(enc("DateTime", json!("2000-03-01T00:00:00Z")).unwrap(), "951868800");
    }

    #[test]
    fn dates_before_1970_and_the_range_ends() {
        assert_eq!(enc("Date", json!(0)).unwrap(), "\"1970-01-01\"");
        assert_eq!(enc("Date", json!(65_535)).unwrap(), "\"2149-06-06\"");
        assert!(enc("Date", json!(65_536)).is_err());
        assert!(enc("Date", json!("1969-12-31")).is_err());
        assert_eq!(enc("Date32", json!("1969-12-31")).unwrap(), "\"1969-12-31\"");
        assert_eq!(enc("Date32", json!(-1)).unwrap(), "\"1969-12-31\"");
        assert_eq!(enc("Date32", json!(-25_567)).unwrap(), "\"1900-01-01\"");
        assert_eq!(enc("Date32", json!("1900-01-01")).unwrap(), "\"1900-01-01\"");
        assert!(enc("Date32", json!("1899-12-31")).is_err());
        assert_eq!(enc("Date32", json!(120_529)).unwrap(), "\"2299-12-31\"");
        assert!(enc("Date32", json!(120_530)).is_err());
        assert!(enc("Date32", json!(i64::MIN)).is_err());
        // DateTime is unsigned seconds: an instant before 1970 does not fit.
        assert!(enc("DateTime", json!("1969-12-31T23:59:59Z")).is_err());
        assert_eq!(enc("DateTime", json!("1970-01-01T01:00:00+01:00")).unwrap(), "0");
        assert_eq!(enc("DateTime", json!("2106-02-07T06:28:15Z")).unwrap(), u32::MAX.to_string());
        assert!(enc("DateTime", json!("2106-02-07T06:28:16Z")).is_err());
    }

    #[test]
    fn date_time64_keeps_nanoseconds_and_signs_instants_before_1970() {
        assert_eq!(enc("DateTime64(3)", json!("2023-11-14T22:13:20.123Z")).unwrap(), "\"1700000000.123000000\"");
        // Up to nanoseconds are kept; ClickHouse rounds to the column's precision.
        assert_eq!(
            enc("DateTime64(9, 'UTC')", json!("2023-11-14T22:13:20.123456789123Z")).unwrap(),
            "\"1700000000.123456789\""
        );
        assert_eq!(enc("DateTime64(6)", json!("1969-12-31T23:59:59.5Z")).unwrap(), "\"-0.500000000\"");
        assert_eq!(enc("DateTime64(0)", json!("1960-01-01T00:00:00Z")).unwrap(), "\"-315619200.000000000\"");
        assert_eq!(enc("DateTime64(3)", json!("1969-12-31T23:00:00.25-01:00")).unwrap(), "\"0.250000000\"");
        // Naive text is left to the column's time zone, fraction included.
        assert_eq!(enc("DateTime64(3)", json!("2024-01-02 03:04:05.5")).unwrap(), "\"2024-01-02 03:04:05.500000000\"");
        assert_eq!(enc("DateTime64(3)", json!(1_700_000_000.25)).unwrap(), "\"1700000000.25\"");
        assert!(enc("DateTime64(3)", json!("2024-01-02T03:04:05.Z")).is_err());
    }
}
