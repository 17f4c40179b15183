//! W3C Trace Context carried through Danube, so one request can be followed from the
//! webhook that brought it to the HTTP call or Kafka record that delivered it.
//!
//! A source that receives a `traceparent` (and `tracestate`) copies them into record
//! attributes of the same names ([`copy_into_attributes`]); a sink that calls out copies
//! them from the attributes into its request headers ([`copy_into_headers`]). Attributes
//! are the carrier because they travel with the message through Danube unchanged, and
//! Kafka Connect, OpenTelemetry's messaging conventions and Debezium all use the header
//! names as they are.
//!
//! ```
//! use axum::http::HeaderMap;
//! use danube_connect_core::trace_context;
//!
//! let mut incoming = HeaderMap::new();
//! incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
//! let mut attributes = std::collections::HashMap::new();
//! trace_context::copy_into_attributes(&incoming, &mut attributes);
//! let mut outgoing = HeaderMap::new();
//! trace_context::copy_into_headers(&attributes, &mut outgoing);
//! assert_eq!(outgoing["traceparent"], incoming["traceparent"]);
//! ```

use std::collections::HashMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// The W3C `traceparent` header, and the record attribute that carries it.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` header, and the record attribute that carries it.
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` kept: 32 members of at most 256 characters each, as the W3C
/// recommendation allows, bounded so that a hostile header cannot bloat every record.
const MAX_TRACESTATE_LEN: usize = 512;

/// A parsed `traceparent` (version 00): trace id, parent span id and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The 16-byte trace id, never all zeros.
    pub trace_id: [u8; 16],
    /// The 8-byte id of the caller's span, never all zeros.
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value; `None` for anything the W3C recommendation says to
    /// ignore (wrong length or version `ff`, non-hex or upper-case digits, zero ids).
    /// Unknown future versions are read by their first four fields, as it asks.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let bytes = value.as_bytes();
        if !value.is_ascii() || bytes.len() < 55 || (bytes.len() > 55 && (&bytes[..2] == b"00" || bytes[55] != b'-')) {
            return None;
        }
        let mut fields = value[..55].split('-');
        let (version, trace, parent, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
        if version.len() != 2 || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 || version == "ff" {
            return None;
        }
        hex::<1>(version)?;
        let trace_id = hex::<16>(trace)?;
        let parent_id = hex::<8>(parent)?;
        let flags = hex::<1>(flags)?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, parent_id, flags })
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id_hex(&self) -> String {
        self.trace_id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{}-", self.trace_id_hex())?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// Lower-case hex of exactly `N` bytes.
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Copies a valid `traceparent` (normalised to version 00) and, with it, a bounded
/// `tracestate` from request headers into record attributes. An invalid `traceparent` is
/// dropped, and so is its `tracestate`, as the recommendation says.
pub fn copy_into_attributes(headers: &HeaderMap, attributes: &mut HashMap<String, String>) {
    let Some(parent) = headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceParent::parse) else {
        return;
    };
    attributes.insert(TRACEPARENT.to_string(), parent.to_string());
    let state = headers.get_all(TRACESTATE).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    if !state.is_empty() && state.len() <= MAX_TRACESTATE_LEN {
        attributes.insert(TRACESTATE.to_string(), state);
    }
}

/// Copies `traceparent` and `tracestate` from record attributes into outgoing headers
/// (a valid `traceparent` only; `tracestate` only beside it).
pub fn copy_into_headers(attributes: &HashMap<String, String>, headers: &mut HeaderMap) {
    let Some(parent) = attributes.get(TRACEPARENT).and_then(|v| TraceParent::parse(v)) else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(&parent.to_string()) {
        headers.insert(HeaderName::from_static(TRACEPARENT), value);
    }
    if let Some(state) = attributes.get(TRACESTATE).filter(|s| s.len() <= MAX_TRACESTATE_LEN) {
        if let Ok(value) = HeaderValue::from_str(state) {
            headers.insert(HeaderName::from_static(TRACESTATE), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let parent = TraceParent::parse(VALID).expect("valid");
        assert_eq!(parent.to_string(), VALID);
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.flags, 1);
    }

    #[test]
    fn values_the_recommendation_says_to_ignore_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
            "éé-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A future version may append fields; its first four are read.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert!(TraceParent::parse(future).is_some());
    }

    #[test]
    fn headers_to_attributes_and_back() {
        let mut incoming = HeaderMap::new();
        incoming.insert(TRACEPARENT, VALID.parse().expect("header"));
        incoming.append(TRACESTATE, "congo=t61rcWkgMzE".parse().expect("header"));
        incoming.append(TRACESTATE, "rojo=00f067aa0ba902b7".parse().expect("header"));
        let mut attributes = HashMap::new();
        copy_into_attributes(&incoming, &mut attributes);
        assert_eq!(attributes[TRACEPARENT], VALID);
        assert_eq!(attributes[TRACESTATE], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        let mut outgoing = HeaderMap::new();
        copy_into_headers(&attributes, &mut outgoing);
        assert_eq!(outgoing[TRACEPARENT], VALID);
        assert_eq!(outgoing[TRACESTATE], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    }

    #[test]
    fn an_invalid_traceparent_takes_its_tracestate_with_it_and_a_huge_tracestate_is_dropped() {
        let mut incoming = HeaderMap::new();
        incoming.insert(TRACEPARENT, "garbage".parse().expect("header"));
        incoming.insert(TRACESTATE, "a=b".parse().expect("header"));
        let mut attributes = HashMap::new();
        copy_into_attributes(&incoming, &mut attributes);
        assert!(attributes.is_empty());
        incoming.insert(TRACEPARENT, VALID.parse().expect("header"));
        incoming.insert(TRACESTATE, "k=".repeat(400).parse().expect("header"));
        copy_into_attributes(&incoming, &mut attributes);
        assert_eq!(attributes.get(TRACEPARENT).map(String::as_str), Some(VALID));
        assert!(!attributes.contains_key(TRACESTATE));
    }
}
