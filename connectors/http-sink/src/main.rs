//! `danube-http-sink`: wiring of the configuration to the core runtime.

/// mimalloc as the process's global allocator: connectors allocate per record, and glibc's
/// malloc took nearly a quarter of the HTTP source's per-request instructions (callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use danube_connect_core::{cli, ConnectorError};
use danube_connector_http_sink::{HttpSink, HttpSinkConfig};

fn main() -> std::process::ExitCode {
    cli::run::<HttpSinkConfig, _, _>("danube-http-sink", "HTTP_SINK", |config, runtime| async move {
        for warning in config.connector.warnings(&config.runtime.retry) {
            tracing::warn!(%warning, "configuration works against itself");
        }
        let sink = HttpSink::new(config.connector).map_err(|e| ConnectorError::fatal("build the HTTP sink", e))?;
        runtime.run_sink(sink).await
    })
}
