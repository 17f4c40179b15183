//! `danube-connect`: inspect and replay dead letters, follow a topic (see the crate docs).

use std::process::ExitCode;

use clap::Parser;
use danube_connect_cli::{run, Cli};
use danube_connect_core::error::error_chain;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr, warnings only unless RUST_LOG says otherwise: stdout is the output.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn,danube_client=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
    let tokio = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(tokio) => tokio,
        Err(e) => {
            eprintln!("danube-connect: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = tokio.block_on(async move {
        let cancel = CancellationToken::new();
        danube_connect_core::cli::cancel_on_signals(cancel.clone());
        match run(cli, cancel).await {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("danube-connect: {}", error_chain(&error));
                error.exit_code()
            }
        }
    });
    tokio.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}
