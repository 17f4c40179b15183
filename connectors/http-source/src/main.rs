//! `danube-http-source`: the webhook gateway binary. Configuration: `--config FILE` and/or
//! environment variables (`HTTP_SOURCE_*` for the `[connector]` section).

/// mimalloc as the process's global allocator: connectors allocate per record, and glibc's
/// malloc took nearly a quarter of the HTTP source's per-request instructions (callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use danube_connect_core::cli;
use danube_connector_http_source::config::HttpSourceConfig;
use danube_connector_http_source::HttpSource;

fn main() -> std::process::ExitCode {
    cli::run::<HttpSourceConfig, _, _>("danube-http-source", "HTTP_SOURCE", |config, runtime| async move {
        runtime.run_source(HttpSource::new(config.connector)).await
    })
}
