//! PostgreSQL change data capture into Danube: logical replication with `pgoutput`.
//!
//! - [`config`]: the `[connector]` section;
//! - [`setup`]: server checks, publication and slot;
//! - [`pgoutput`]: the protocol decoder;
//! - [`value`]: PostgreSQL text values to JSON;
//! - [`change`]: row changes to records;
//! - [`schema`]: a JSON Schema per table, registered and attached to its records;
//! - [`incremental`]: incremental snapshots on signal (watermarks, chunk, plan);
//! - [`marks`]: which LSN may be confirmed given Danube's acks;
//! - [`metrics`]: the connector's metrics and the slot monitor (lag, `wal_status`, readiness);
//! - [`stream`]: the replication task (snapshot, stream, confirmed LSN);
//! - [`tls`]: TLS for the query connection;
//! - [`source`]: the [`PullSource`](danube_connect_core::PullSource) and its factory.

pub mod change;
pub mod config;
pub mod error;
pub mod incremental;
pub mod marks;
pub mod metrics;
pub mod pgoutput;
pub mod schema;
pub mod setup;
pub mod source;
pub mod stream;
pub mod tls;
pub mod value;

pub use config::PostgresCdcConfig;
pub use source::{PostgresCdc, PostgresCdcSource};
