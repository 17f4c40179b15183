//! `danube-dev-broker`: run the development broker as a process.

use clap::Parser;
use danube_dev_broker::{AuthToken, BrokerConfig, EmbeddedBroker, TlsConfig, DEFAULT_MAX_UNACKED};
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

/// A single-process, Danube-compatible DEVELOPMENT broker for tests, examples
/// and local trials. It is NOT a replacement for Danube: no cluster, no
/// retention, no admin API; TLS and a single bearer token are optional.
#[derive(Debug, Parser)]
#[command(name = "danube-dev-broker", version, about, long_about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6650", env = "DANUBE_DEV_BROKER_LISTEN")]
    listen: SocketAddr,
    /// Directory where topics, messages, subscriptions and schemas are kept
    /// across restarts (append-only files). In memory only when omitted.
    #[arg(long, env = "DANUBE_DEV_BROKER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Maximum unacknowledged messages per subscription (reliable topics).
    #[arg(long, default_value_t = DEFAULT_MAX_UNACKED)]
    max_unacked: usize,
    /// Server certificate chain (PEM): serve TLS (`https://`). Needs `--tls-key`.
    #[arg(long, env = "DANUBE_DEV_BROKER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM). Needs `--tls-cert`.
    #[arg(long, env = "DANUBE_DEV_BROKER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: mutual TLS. Needs `--tls-cert`.
    #[arg(long, env = "DANUBE_DEV_BROKER_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Accept only calls carrying `authorization: Bearer <TOKEN>`. Prefer the environment
    /// variable or `--auth-token-file`: a command-line argument is visible to every local
    /// user in the process list.
    #[arg(long, env = "DANUBE_DEV_BROKER_AUTH_TOKEN", hide_env_values = true, conflicts_with = "auth_token_file")]
    auth_token: Option<String>,
    /// A file holding the token (trailing newline trimmed), e.g. a mounted secret.
    #[arg(long, env = "DANUBE_DEV_BROKER_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
}

/// The bearer token from `--auth-token` / its variable, or from `--auth-token-file`.
fn auth_token(args: &Args) -> Result<Option<AuthToken>, String> {
    let token = match (&args.auth_token, &args.auth_token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("--auth-token-file {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => return Ok(None),
    };
    if token.trim().is_empty() {
        return Err("the auth token is empty (--auth-token, DANUBE_DEV_BROKER_AUTH_TOKEN or --auth-token-file)".into());
    }
    Ok(Some(AuthToken::new(token)))
}

/// Reads a PEM file named by a command-line option.
fn read_pem(option: &str, path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{option} {}: {e}", path.display()))
}

/// The TLS settings from the command line (`None` without `--tls-cert`).
fn tls_config(args: &Args) -> Result<Option<TlsConfig>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let client_ca_pem = match &args.tls_client_ca {
        Some(ca) => Some(read_pem("--tls-client-ca", ca)?),
        None => None,
    };
    Ok(Some(TlsConfig { cert_pem: read_pem("--tls-cert", cert)?, key_pem: read_pem("--tls-key", key)?, client_ca_pem }))
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
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let args = Args::parse();
    let (tls, auth_token) = match tls_config(&args).and_then(|tls| Ok((tls, auth_token(&args)?))) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("danube-dev-broker: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = BrokerConfig {
        tls,
        auth_token,
        listen: args.listen,
        data_dir: args.data_dir,
        max_unacked_messages: args.max_unacked.max(1),
        ..BrokerConfig::default()
    };
    let broker = match EmbeddedBroker::start(config).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("danube-dev-broker: {}", danube_connect_common::error_chain(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("danube-dev-broker listening on {}", broker.url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    broker.stop().await;
    std::process::ExitCode::SUCCESS
}
