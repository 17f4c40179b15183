//! `danube-dev-broker`: run the development broker as a process.

use clap::Parser;
use danube_dev_broker::{BrokerConfig, EmbeddedBroker, DEFAULT_MAX_UNACKED};
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

/// A single-process, Danube-compatible DEVELOPMENT broker for tests, examples
/// and local trials. It is NOT a replacement for Danube: no cluster, no
/// authentication or TLS, no retention, no admin API.
#[derive(Debug, Parser)]
#[command(name = "danube-dev-broker", version, about, long_about)]
struct Args {
    /// Address to listen on.
    #[arg(
        long,
        default_value = "127.0.0.1:6650",
        env = "DANUBE_DEV_BROKER_LISTEN"
    )]
    listen: SocketAddr,
    /// Directory where topics, messages, subscriptions and schemas are kept
    /// across restarts (append-only files). In memory only when omitted.
    #[arg(long, env = "DANUBE_DEV_BROKER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Maximum unacknowledged messages per subscription (reliable topics).
    #[arg(long, default_value_t = DEFAULT_MAX_UNACKED)]
    max_unacked: usize,
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM, waiting for SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = BrokerConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        max_unacked_messages: args.max_unacked.max(1),
        ..BrokerConfig::default()
    };
    let broker = match EmbeddedBroker::start(config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("danube-dev-broker: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("danube-dev-broker listening on {}", broker.url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    broker.stop().await;
    std::process::ExitCode::SUCCESS
}
