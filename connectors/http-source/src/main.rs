//! `danube-http-source`: the webhook gateway binary. Configuration: `--config FILE` and/or
//! environment variables (`HTTP_SOURCE_*` for the `[connector]` section).

use danube_connect_core::{cli, Parts};
use danube_connector_http_source::config::HttpSourceConfig;
use danube_connector_http_source::HttpSourceFactory;

/// mimalloc as the process's global allocator: connectors allocate per record, and glibc's
/// malloc took nearly a quarter of the HTTP source's per-request instructions (callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run::<HttpSourceConfig, _>("danube-http-source", "HTTP_SOURCE", |config| {
        Ok(Parts::new().with_push(HttpSourceFactory::build(config.connector.clone())?))
    })
}
