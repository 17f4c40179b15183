//! The line sink as a connector binary: `CONNECTOR_SINK__TOPICS='[{topic="/default/n"}]' LINES_PATH=out.txt minimal_sink`.

use danube_connect_core::{cli, Parts};
use danube_connect_examples::line_sink::LineSinkConfig;

fn main() -> std::process::ExitCode {
    cli::run::<LineSinkConfig, _>(
        "minimal_sink",
        "LINES",
        |config| Ok(Parts::new().with_sink(config.connector.clone())),
    )
}
