//! Shared helpers for Danube connectors.
//!
//! [`schema`]: compile a schema of the Danube registry (JSON Schema, Avro, Protobuf, string,
//! number, bytes) once, then validate payloads, decode them to JSON, encode JSON into the wire
//! format, and check schema changes against a compatibility mode. See the crate README for the
//! wire encodings, JSON mappings and compatibility rules.
//!
//! [`tls`]: the process-wide rustls crypto provider that tonic's TLS needs.

pub mod error;
pub mod schema;
pub mod tls;

pub use error::error_chain;
pub use schema::{check_compatible, CompatibilityMode, Schema, SchemaError, SchemaKind, Violation, Violations};
