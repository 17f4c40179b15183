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

use danube_connect_core::{ConnectorConfig, SinkConnector, SourceConnector};

pub use config::BridgeConfig;
pub use export::KafkaExport;
pub use import::KafkaImport;

/// The connectors one bridge process runs.
pub struct BridgeParts {
    /// The import source, when `import.mappings` is not empty.
    pub sources: Vec<Box<dyn SourceConnector>>,
    /// The export sink, when the runtime's `sink.topics` is not empty.
    pub sink: Option<Box<dyn SinkConnector>>,
}

impl std::fmt::Debug for BridgeParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeParts")
            .field("import", &!self.sources.is_empty())
            .field("export", &self.sink.is_some())
            .finish()
    }
}

/// The bridge id in effect: `connector.bridge_id`, else the connector name.
pub fn bridge_id(config: &ConnectorConfig<BridgeConfig>) -> String {
    config.connector.bridge_id.clone().unwrap_or_else(|| config.runtime.name.clone())
}

/// Builds the import and/or export from the whole configuration.
pub fn build(config: &ConnectorConfig<BridgeConfig>) -> Result<BridgeParts, danube_connect_core::RuntimeError> {
    let id = bridge_id(config);
    let import = !config.connector.import.mappings.is_empty();
    let export = !config.runtime.sink.topics.is_empty();
    // `BridgeConfig::validate_with_runtime` refused a bridge with neither direction at load.
    let mut sources: Vec<Box<dyn SourceConnector>> = Vec::new();
    if import {
        sources.push(Box::new(KafkaImport::new(config.connector.clone(), id.clone())?));
    }
    let sink: Option<Box<dyn SinkConnector>> =
        if export { Some(Box::new(KafkaExport::new(config.connector.clone(), id)?)) } else { None };
    Ok(BridgeParts { sources, sink })
}
