//! `danube-kafka-bridge`: Kafka → Danube import and Danube → Kafka export in one process.

use std::process::ExitCode;

use danube_connect_core::cli;
use danube_connector_kafka_bridge::{build, BridgeConfig};

/// mimalloc as the process's global allocator: connectors allocate per record, and glibc's
/// malloc took nearly a quarter of the HTTP source's per-request instructions (callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cli::run::<BridgeConfig, _>("danube-kafka-bridge", "KAFKA_BRIDGE", build)
}
