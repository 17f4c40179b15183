//! The counter source as a connector binary: `CONNECTOR_NAME=counter COUNTER_TOPIC=/default/n minimal_source`.

use danube_connect_core::{cli, Parts};
use danube_connect_examples::counter_source::CounterConfig;

fn main() -> std::process::ExitCode {
    cli::run::<CounterConfig, _>("minimal_source", "COUNTER", |config| {
        Ok(Parts::new().with_pull(config.connector.clone()))
    })
}
