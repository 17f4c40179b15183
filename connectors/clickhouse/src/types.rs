//! ClickHouse column types and the conversion of JSON values into `JSONEachRow` text that
//! ClickHouse 18.16 and current versions both parse.
//!
//! Conversions check what ClickHouse would silently wrap or truncate (an `Int8` given 300,
//! a `Decimal(10, 2)` given `12.345`), so a bad value makes its record invalid at intake
//! instead of failing a whole insert later.

use serde_json::Value;

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
    /// Parses a type name as `system.columns.type` spells it. `LowCardinality(T)` is `T`.
    pub fn parse(name: &str) -> Self {
        let name = name.trim();
        if let Some(inner) = wrapped(name, "LowCardinality") {
            return Self::parse(inner);
        }
        if let Some(inner) = wrapped(name, "Nullable") {
            return Self::Nullable(Box::new(Self::parse(inner)));
        }
        if let Some(inner) = wrapped(name, "Array") {
            return Self::Array(Box::new(Self::parse(inner)));
        }
        if let Some(args) = wrapped(name, "FixedString") {
            if let Ok(n) = args.trim().parse() {
                return Self::FixedString(n);
            }
        }
        if let Some(args) = wrapped(name, "Decimal") {
            let parts: Vec<&str> = args.split(',').map(str::trim).collect();
            if let [p, s] = parts.as_slice() {
                if let (Ok(precision), Ok(scale)) = (p.parse(), s.parse()) {
                    return Self::Decimal { precision, scale };
                }
            }
        }
        for (prefix, precision) in [("Decimal32", 9), ("Decimal64", 18), ("Decimal128", 38), ("Decimal256", 76)] {
            if let Some(args) = wrapped(name, prefix) {
                if let Ok(scale) = args.trim().parse() {
                    return Self::Decimal { precision, scale };
                }
            }
        }
        for prefix in ["Enum8", "Enum16"] {
            if let Some(elements) = wrapped(name, prefix).and_then(parse_enum_elements) {
                return Self::Enum { spelled: name.to_string(), elements };
            }
        }
        if name == "DateTime" || wrapped(name, "DateTime").is_some() {
            return Self::DateTime;
        }
        if let Some(args) = wrapped(name, "DateTime64") {
            if let Some(Ok(p)) = args.split(',').next().map(|p| p.trim().parse()) {
                return Self::DateTime64(p);
            }
        }
        match name {
            "Int8" => Self::Int { bits: 8, signed: true },
            "Int16" => Self::Int { bits: 16, signed: true },
            "Int32" => Self::Int { bits: 32, signed: true },
            "Int64" => Self::Int { bits: 64, signed: true },
            "Int128" => Self::Int { bits: 128, signed: true },
            "UInt8" => Self::Int { bits: 8, signed: false },
            "UInt16" => Self::Int { bits: 16, signed: false },
            "UInt32" => Self::Int { bits: 32, signed: false },
            "UInt64" => Self::Int { bits: 64, signed: false },
            "UInt128" => Self::Int { bits: 128, signed: false },
            "Float32" => Self::Float { bits: 32 },
            "Float64" => Self::Float { bits: 64 },
            "String" => Self::String,
            "Bool" | "Boolean" => Self::Bool,
            "Date" => Self::Date,
            "Date32" => Self::Date32,
            "UUID" => Self::Uuid,
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
                        let (y, m, d) = parse_date(date).ok_or_else(|| self.error(value, "expected YYYY-MM-DD"))?;
                        i128::from(days_from_civil(y, m, d))
                    }
                    _ => return Err(self.error(value, "expected YYYY-MM-DD or days since 1970-01-01")),
                };
                let (min, max) = if *self == Self::Date { (0, 65_535) } else { (-25_567, 120_529) };
                if days < min || days > max {
                    return Err(self.error(value, "out of range"));
                }
                let days = i64::try_from(days).map_err(|_| self.error(value, "out of range"))?;
                let (y, m, d) = civil_from_days(days);
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
                        write_str(&format!("{secs}.{nanos:09}"), out);
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

fn wrapped<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?.strip_prefix('(')?.strip_suffix(')')
}

/// `'a' = 1, 'b\'c' = -2` as `system.columns` spells enum elements; `None` when it is not
/// in that form (the type is then passed through unchecked).
fn parse_enum_elements(args: &str) -> Option<Vec<(String, i16)>> {
    let mut elements = Vec::new();
    let mut chars = args.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next()? != '\'' {
            return None;
        }
        let mut name = String::new();
        loop {
            match chars.next()? {
                '\'' => break,
                '\\' => name.push(match chars.next()? {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    other => other,
                }),
                c => name.push(c),
            }
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next()? != '=' {
            return None;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut number = String::new();
        while let Some(c) = chars.next_if(|c| *c == '-' || c.is_ascii_digit()) {
            number.push(c);
        }
        elements.push((name, number.parse().ok()?));
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next() {
            None => return (!elements.is_empty()).then_some(elements),
            Some(',') => {}
            Some(_) => return None,
        }
    }
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

fn parse_date(s: &str) -> Option<(i64, u32, u32)> {
    let b = s.as_bytes();
    if !s.is_ascii() || b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s[..4].parse().ok()?;
    let m: u32 = s[5..7].parse().ok()?;
    let d: u32 = s[8..10].parse().ok()?;
    let days_in_month = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days_in_month).contains(&d).then_some((y, m, d))
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
    let (y, m, d) = parse_date(&s[..10])?;
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
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    Some(DateTimeText::Instant { secs, nanos })
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
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
                elements: vec![("a".into(), 1), ("it's".into(), -2)]
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
}
