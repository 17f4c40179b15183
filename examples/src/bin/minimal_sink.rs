//! The line sink as a connector binary: `CONNECTOR_SINK__TOPICS='[{topic="/default/n"}]' LINES_PATH=out.txt minimal_sink`.

use danube_connect_core::cli;
use danube_connect_examples::line_sink::{LineSink, LineSinkConfig};

fn main() -> std::process::ExitCode {
    cli::run::<LineSinkConfig, _, _>("minimal_sink", "LINES", |config, runtime| async move {
        let sink = LineSink::new(&config.connector)?;
        runtime.run_sink(sink).await
    })
}
