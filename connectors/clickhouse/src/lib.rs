//! # danube-clickhouse
//!
//! A Danube sink that batches JSON records into ClickHouse tables:
//!
//! - [`config`]: the `[connector]` section;
//! - [`types`] and [`mapping`]: JSON fields to typed columns, read from `system.columns`;
//! - [`spool`]: the local durable spool between the Danube ack and the ClickHouse insert;
//! - [`cdc`]: danube-postgres-cdc change envelopes (`mode = "cdc"`) and their versions;
//! - [`client`]: HTTP inserts (`JSONEachRow`) and schema reads;
//! - [`sink`]: the [`Sink`](danube_connect_core::Sink), its factory and its flushers.
//!
//! Guarantee: a record is acked to Danube only after its row is synced to the spool, and a
//! spool segment is deleted only after ClickHouse accepted its insert (at-least-once).

pub mod cdc;
pub mod client;
pub mod config;
pub mod mapping;
pub mod sink;
pub mod spool;
pub mod types;

pub use config::ClickHouseSinkConfig;
pub use sink::{ClickHouseSink, ClickHouseSinkFactory};
