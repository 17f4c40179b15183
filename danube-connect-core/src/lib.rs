//! # Danube Connect core
//!
//! The SDK every Danube connector is built on:
//!
//! - [`PullSource`] / [`PushSource`] / [`Sink`]: the traits a connector implements, each
//!   started by a [`Factory`] with a [`Context`]; [`Parts`] gathers them for [`Runtime::run`];
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

pub mod cli;
mod client;
pub mod config;
mod connector;
pub mod error;
pub mod failure;
mod health;
mod metrics;
pub mod naming;
mod ops;
mod publisher;
mod record;
pub mod retry;
mod runtime;
pub mod schema;
mod stall;
mod telemetry;
pub mod template;
pub mod trace_context;
pub mod transform;

/// The dead-letter topic's format: its attributes, its durable subscription, and how a
/// dead letter is made (for operator tools such as the `danube-connect dlq` command).
pub mod dead_letter {
    pub use crate::runtime::dead_letter::*;
}

pub use client::{DanubeConnection, RegisteredSchema, SchemaRegistry};
pub use config::{ConnectorConfig, RuntimeConfig, Secret};
pub use connector::{Context, Factory, Parts, PullSource, PushSource, Ready, Sink};
pub use error::{ClientError, ConnectorError, ConnectorResult, PublishError, RuntimeError};
pub use health::Health;
pub use metrics::{
    ConnectorMetrics, Counter, CounterVec, FloatGauge, FloatGaugeVec, Gauge, GaugeVec, Histogram, HistogramVec,
    MetricsError,
};
pub use ops::{serve_http1, ConnectionLimits};
pub use publisher::{PendingPublish, PublishFailure, Publisher};
pub use record::{SinkRecord, SourceOffset, SourceRecord, MESSAGE_ID_ATTRIBUTE};
pub use runtime::{RunReport, Runtime};
pub use schema::SchemaBinding;
pub use telemetry::{TelemetryConfig, TelemetryError};

/// Re-exported so connectors implement the traits without a direct dependency.
pub use async_trait::async_trait;
