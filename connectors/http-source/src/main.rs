//! `danube-http-source`: the webhook gateway binary. Configuration: `--config FILE` and/or
//! environment variables (`HTTP_SOURCE_*` for the `[connector]` section).

use danube_connect_core::cli;
use danube_connector_http_source::config::HttpSourceConfig;
use danube_connector_http_source::HttpSource;

fn main() -> std::process::ExitCode {
    cli::run::<HttpSourceConfig, _, _>("danube-http-source", "HTTP_SOURCE", |config, runtime| async move {
        runtime.run_source(HttpSource::new(config.connector)).await
    })
}
