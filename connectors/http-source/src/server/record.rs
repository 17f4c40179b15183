//! The request's record: topic from the endpoint's template, the `http.*` attributes, the
//! delivery id and the routing key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use axum::extract::Query;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use danube_connect_core::trace_context;
use danube_connect_core::SourceRecord;
use tracing::debug;

use super::respond::error;
use super::Answered;
use crate::endpoint::{Endpoint, RoutingKey};
use crate::signature::Verified;
use crate::template::PathParams;

/// What a request brought besides its body.
pub(super) struct Incoming {
    /// Method, URI and headers.
    pub(super) parts: Parts,
    /// The values of the endpoint path's parameters.
    pub(super) params: PathParams,
    /// The client's address.
    pub(super) remote: SocketAddr,
    /// When the request arrived.
    pub(super) received_at: SystemTime,
}

/// The body as JSON, when the endpoint needs it (validation, a JSON-pointer key or delivery
/// id); a body that is not JSON is refused (400) only when `validate_json` is on.
pub(super) fn parse_json(endpoint: &Endpoint, body: &[u8]) -> Result<Option<serde_json::Value>, Answered> {
    let needs_json = endpoint.validate_json
        || matches!(endpoint.routing_key, Some(RoutingKey::JsonPointer(_)))
        || endpoint.dedup.as_ref().is_some_and(|d| d.id_pointer.is_some());
    if !needs_json {
        return Ok(None);
    }
    match serde_json::from_slice(body) {
        Ok(value) => Ok(Some(value)),
        Err(e) if endpoint.validate_json => {
            Err(error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")).into())
        }
        Err(_) => Ok(None),
    }
}

/// The delivery id dedup uses: from the configured header, JSON pointer, or the signature
/// scheme's id.
pub(super) fn delivery_id(
    endpoint: &Endpoint,
    headers: &HeaderMap,
    json: Option<&serde_json::Value>,
    verified: &Verified,
) -> Option<String> {
    endpoint.dedup.as_ref().and_then(|d| {
        if let Some(header) = &d.id_header {
            return header_text(headers, header.as_str());
        }
        if let Some(pointer) = &d.id_pointer {
            return json.and_then(|j| j.pointer(pointer)).map(json_text);
        }
        verified.delivery_id.clone()
    })
}

/// The record for the request: its topic rendered and admitted, attributes and key set.
pub(super) fn build(
    endpoint: &Endpoint,
    incoming: &Incoming,
    body: bytes::Bytes,
    delivery_id: Option<&String>,
    verified: &Verified,
    json: Option<&serde_json::Value>,
) -> Result<SourceRecord, Answered> {
    let Incoming { parts, params, remote, received_at } = incoming;
    let (remote, received_at) = (*remote, *received_at);
    let topic = match endpoint.topic.render(params, &parts.headers) {
        Ok(topic) => topic,
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, e).into()),
    };
    if let Err(e) = endpoint.admit_topic(&topic) {
        debug!(endpoint = %endpoint.id, %topic, "topic refused: endpoint at max_topics");
        return Err(error(StatusCode::BAD_REQUEST, e).into());
    }
    let mut record = SourceRecord::new(topic, body);
    // The fixed attributes below, then the path, header and query ones: one allocation.
    record.attributes.reserve(9 + params.len() + endpoint.headers.len() + endpoint.query.len());
    record = record
        .with_attribute("http.method", parts.method.as_str())
        .with_attribute("http.path", endpoint.record_path(parts.uri.path()))
        .with_attribute("http.remote_addr", display_text(remote, 48))
        .with_attribute("http.received_at", display_text(humantime::format_rfc3339_millis(received_at), 24))
        .with_attribute("http.endpoint", endpoint.id.as_str())
        .with_attribute("http.verification", endpoint.scheme_name());
    if let Some(content_type) = header_text(&parts.headers, header::CONTENT_TYPE.as_str()) {
        record = record
            .with_attribute("content-type", content_type.clone())
            .with_attribute("http.content_type", content_type);
    }
    if let Some(id) = verified.delivery_id.as_ref().or(delivery_id) {
        record = record.with_attribute("http.delivery_id", id.as_str());
    }
    for (name, value) in params {
        record = record.with_attribute(format!("http.path.{name}"), value.as_str());
    }
    // W3C trace context, so the request can be followed to the sink that delivers it.
    trace_context::copy_into_attributes(&parts.headers, &mut record.attributes);
    for name in &endpoint.headers {
        if let Some(value) = header_text(&parts.headers, name.as_str()) {
            record = record.with_attribute(format!("http.header.{name}"), value);
        }
    }
    if !endpoint.query.is_empty() {
        if let Ok(Query(query)) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri) {
            for name in &endpoint.query {
                if let Some(value) = query.get(name) {
                    record = record.with_attribute(format!("http.query.{name}"), value.as_str());
                }
            }
        }
    }
    match &endpoint.routing_key {
        Some(RoutingKey::Header(name)) => {
            if let Some(key) = header_text(&parts.headers, name.as_str()) {
                record = record.with_key(key);
            }
        }
        Some(RoutingKey::JsonPointer(pointer)) => {
            if let Some(key) = json.and_then(|j| j.pointer(pointer)).map(json_text) {
                record = record.with_key(key);
            }
        }
        None => {}
    }
    Ok(record)
}

/// A header's value, trimmed; `None` when absent, empty or not text.
pub(super) fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// `value` formatted into a string allocated once at `capacity` (`to_string` grows it
/// several times on the way).
fn display_text(value: impl std::fmt::Display, capacity: usize) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(capacity);
    let _ = write!(text, "{value}");
    text
}

/// A JSON value as text: a string as itself, anything else as JSON.
fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
