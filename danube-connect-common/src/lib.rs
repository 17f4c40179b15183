//! Shared helpers for Danube connectors.
//!
//! [`schema`]: compile a schema of the Danube registry (JSON Schema, Avro, Protobuf, string,
//! number, bytes) once, then validate payloads, decode them to JSON, encode JSON into the wire
//! format, and check schema changes against a compatibility mode. See the crate README for the
//! wire encodings, JSON mappings and compatibility rules.
//!
//! [`tls`]: the process-wide rustls crypto provider that tonic's TLS needs, and the one TLS
//! configuration type for clients and one for servers.
//!
//! [`webhook`]: Standard Webhooks signatures, signed by http-sink and verified by
//! http-source with one implementation and one rule for `whsec_` secrets.

pub mod error;
pub mod schema;
pub mod tls;
pub mod webhook;

pub use error::error_chain;
pub use schema::{check_compatible, CompatibilityMode, Schema, SchemaError, SchemaKind, Violation, Violations};
