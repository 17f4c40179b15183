//! # Danube Connect core
//!
//! The SDK every Danube connector is built on:
//!
//! - [`SourceConnector`] / [`SinkConnector`]: the traits a connector implements;
//! - [`SourceRecord`] / [`SinkRecord`]: what flows in and out;
//! - [`Runtime`]: owns the Danube client, publishes through a producer pool with per-key
//!   order ([`Publisher`]), consumes with batching, retries with backoff, applies the
//!   failure policy (dead-letter, nack or stop), serves metrics and health, and drains on
//!   SIGTERM;
//! - [`schema`]: topics bound to schema-registry subjects, validated on publish and
//!   decoded for sinks;
//! - [`config`]: file + environment layering with validation that names the field;
//! - [`transform`]: `[[transforms]]`, VRL programs that reshape, route or drop records in
//!   flight in every connector;
//! - [`cli::run`]: the shared `main` of connector binaries.
//!
//! Delivery rule: a source's `commit` is called only for offsets whose every record Danube
//! acked; a sink record is acked only after `process` returned `Ok` or it was dead-lettered.

/// The global allocator of every program built on the SDK (feature `mimalloc`, on by
/// default): records are allocated and freed per message, where mimalloc's thread-local
/// free lists are several times cheaper than the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cli;
pub mod client;
pub mod config;
pub mod connector;
pub mod error;
pub mod failure;
pub mod health;
pub mod metrics;
pub mod naming;
pub mod ops;
pub mod publisher;
pub mod record;
pub mod retry;
pub mod runtime;
pub mod schema;
pub mod stall;
pub mod telemetry;
pub mod template;
pub mod trace_context;
pub mod transform;

pub use config::{ConnectorConfig, RuntimeConfig, Secret};
pub use connector::{SinkConnector, SinkContext, SourceConnector, SourceContext};
pub use error::{ConnectorError, ConnectorResult, PublishError, RuntimeError};
pub use publisher::{PendingPublish, Publisher};
pub use record::{SinkRecord, SourceOffset, SourceRecord};
pub use runtime::{RunReport, Runtime, SourceDrive};
pub use schema::SchemaBinding;

/// Re-exported so connectors implement the traits without a direct dependency.
pub use async_trait::async_trait;
