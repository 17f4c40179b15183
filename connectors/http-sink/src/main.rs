//! `danube-http-sink`: wiring of the configuration to the core runtime.

use danube_connect_core::{cli, Parts};
use danube_connector_http_sink::{HttpSinkConfig, HttpSinkFactory};

/// mimalloc as the process's global allocator: connectors allocate per record, and glibc's
/// malloc took nearly a quarter of the HTTP source's per-request instructions (callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run::<HttpSinkConfig, _>("danube-http-sink", "HTTP_SINK", |config| {
        for warning in config.connector.warnings(&config.runtime.retry) {
            tracing::warn!(%warning, "configuration works against itself");
        }
        Ok(Parts::new().with_sink(HttpSinkFactory::build(config.connector.clone())?))
    })
}
