//! The counter source as a connector binary: `CONNECTOR_NAME=counter COUNTER_TOPIC=/default/n minimal_source`.

use danube_connect_core::cli;
use danube_connect_examples::counter_source::{CounterConfig, CounterSource};

fn main() -> std::process::ExitCode {
    cli::run::<CounterConfig, _, _>("minimal_source", "COUNTER", |config, runtime| async move {
        let source = CounterSource::new(config.connector)?;
        runtime.run_source(source).await
    })
}
