//! `danube-kafka-bridge`: Kafka → Danube import and Danube → Kafka export in one process.

use std::process::ExitCode;

use danube_connect_core::cli;
use danube_connector_kafka_bridge::{build, BridgeConfig};

fn main() -> ExitCode {
    cli::run::<BridgeConfig, _, _>("danube-kafka-bridge", "KAFKA_BRIDGE", |config, runtime| async move {
        let parts = build(&config)?;
        runtime.run(parts.sources, parts.sink).await
    })
}
