//! `danube-mqtt`: bridges MQTT and Danube. Configuration: `--config FILE` and/or `MQTT_*`
//! environment variables (see the README).

use std::process::ExitCode;

use danube_connect_core::cli;
use danube_connector_mqtt::{build, MqttConfig};

/// mimalloc as the process's global allocator: connectors allocate per record, and glibc's
/// malloc took nearly a quarter of the HTTP source's per-request instructions (callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cli::run::<MqttConfig, _>("danube-mqtt", "MQTT", build)
}
