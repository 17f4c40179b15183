//! # Danube Kafka bridge
//!
//! Runs Danube beside Kafka (the "strangler fig" migration): **import** reads Kafka topics
//! through a consumer group into Danube topics, **export** writes Danube subscriptions to
//! Kafka topics. One process may run both.
//!
//! - [`config`]: the `[connector]` section (Kafka connection, mappings, properties);
//! - [`import`]: the pull source; Kafka offsets are committed only after Danube acked;
//! - [`export`]: the sink; Danube messages are acked only after Kafka's delivery report;
//! - [`mapping`]: record conversion (key, headers, Kafka metadata) and topic routing;
//! - [`offsets`]: which offset to commit per partition;
//! - [`kafka`]: librdkafka configuration, contexts and error classification.
//!
//! Loop protection: both directions stamp records with an origin attribute/header
//! (`danube-connect-origin = <bridge id>`; export also writes `danube.topic`). Neither
//! direction sends a record carrying its own bridge id back to the topic it came from
//! (export compares the `kafka.topic` attribute, import the `danube.topic` header), so a
//! bidirectional setup does not echo, and records routed to other topics still flow.

pub mod config;
pub mod export;
pub mod import;
pub mod kafka;
pub mod mapping;
pub mod offsets;

use danube_connect_core::config::ConfigError;
use danube_connect_core::{ConnectorConfig, Parts};

pub use config::BridgeConfig;
pub use export::{Export, KafkaExport};
pub use import::{Import, KafkaImport};

/// The bridge id in effect: `connector.bridge_id`, else the connector name.
pub fn bridge_id(config: &ConnectorConfig<BridgeConfig>) -> String {
    config.connector.bridge_id.clone().unwrap_or_else(|| config.runtime.name.clone())
}

/// The pure build of the bridge (no I/O, `--check` runs it): the import when
/// `import.mappings` is not empty, the export when the runtime's `sink.topics` is not.
pub fn build(config: &ConnectorConfig<BridgeConfig>) -> Result<Parts, ConfigError> {
    let id = bridge_id(config);
    // `BridgeConfig::validate_with_runtime` refused a bridge with neither direction at load.
    let mut parts = Parts::new();
    if !config.connector.import.mappings.is_empty() {
        parts = parts.with_pull(Import::build(config.connector.clone(), id.clone())?);
    }
    if !config.runtime.sink.topics.is_empty() {
        parts = parts.with_sink(Export::build(config.connector.clone(), id)?);
    }
    Ok(parts)
}
