//! The `main` every connector binary shares: arguments, config, logs, signals, exit code.
//!
//! ```no_run
//! # use danube_connect_core::{cli, ConnectorError, Parts, Ready, Sink, SinkRecord};
//! # #[derive(Default, serde::Serialize, serde::Deserialize, Debug)] struct MyConfig {}
//! # impl danube_connect_core::config::Validate for MyConfig {}
//! # struct MySink;
//! # #[async_trait::async_trait] impl Sink for MySink {
//! #   async fn process(&self, _: &SinkRecord) -> Result<(), ConnectorError> { Ok(()) } }
//! fn main() -> std::process::ExitCode {
//!     // The build is pure: `--check` runs it too.
//!     cli::run::<MyConfig, _>("my-sink", "MY_SINK", |config| {
//!         let _ = &config.connector;
//!         Ok(Parts::new().with_sink(Ready(MySink)))
//!     })
//! }
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{AsyncRuntimeConfig, ConfigError, ConnectorConfig, LogConfig, LogFormat, Validate};
use crate::connector::Parts;
use crate::error::error_chain;
use crate::runtime::Runtime;

/// Command-line arguments shared by every connector.
#[derive(Debug, Parser)]
#[command(version, about = "A Danube Connect connector. Configuration: --config FILE and/or environment variables.")]
pub struct Args {
    /// Configuration file (TOML, or YAML by extension).
    #[arg(long, short, env = "CONNECTOR_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit 0, or 1 if invalid.
    #[arg(long)]
    pub check: bool,
}

/// Installs the `tracing` subscriber (text or JSON, level from config or `RUST_LOG`).
pub fn init_logging(config: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.level));
    // Colours only on a terminal: files and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match config.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
                _ = term.recv() => info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}

/// Builds the process's multi-threaded tokio runtime with `runtime.worker_threads` workers
/// (tokio's default when unset).
pub fn build_tokio(config: &AsyncRuntimeConfig) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.worker_threads {
        builder.worker_threads(workers);
    }
    builder.enable_all().build()
}

/// The pure build of `config` and the checks between its parts and the runtime sections
/// ([`Parts::check`]): everything that can refuse a configuration before any I/O. `--check`
/// runs it, and so does the start.
pub fn build<C, B>(config: &ConnectorConfig<C>, build: B) -> Result<Parts, ConfigError>
where
    B: FnOnce(&ConnectorConfig<C>) -> Result<Parts, ConfigError>,
{
    let parts = build(config)?;
    parts.check(&config.runtime)?;
    Ok(parts)
}

/// Parses arguments, loads and validates the config, runs the pure `build` (with `--check`
/// too, so `--check` refuses every configuration the start refuses), starts the runtime and
/// runs the parts. Exit codes: 0 clean, 1 bad config or startup failure, 2 fatal connector
/// error, 3 shutdown deadline reached before the drain completed.
pub fn run<C, B>(binary: &str, env_prefix: &str, build: B) -> ExitCode
where
    C: DeserializeOwned + Serialize + Default + Validate + std::fmt::Debug + Send + 'static,
    B: FnOnce(&ConnectorConfig<C>) -> Result<Parts, ConfigError>,
{
    let args = Args::parse();
    let config = match ConnectorConfig::<C>::load(args.config.as_deref(), env_prefix) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{binary}: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    // Before the build, so the warnings it logs are shown (on stderr, also with `--check`).
    init_logging(&config.runtime.log);
    let parts = match self::build(&config, build) {
        Ok(parts) => parts,
        Err(e) => {
            eprintln!("{binary}: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    if args.check {
        println!("# {binary}: configuration is valid\n{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    // Before the async runtime: the OTLP exporter's HTTP client is a blocking one.
    let telemetry = match crate::telemetry::init(&config.runtime.telemetry, &config.runtime.name) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("{binary}: {}", error_chain(&e));
            return ExitCode::from(1);
        }
    };
    let tokio = match build_tokio(&config.runtime.runtime) {
        Ok(tokio) => tokio,
        Err(e) => {
            eprintln!("{binary}: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = tokio.block_on(async move {
        let shutdown = CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        info!(binary, name = %config.runtime.name, "starting");
        let runtime = match Runtime::start(config.runtime.clone(), shutdown).await {
            Ok(runtime) => runtime,
            Err(e) => {
                error!(error = %error_chain(&e), "startup failed");
                return 1;
            }
        };
        match runtime.run(parts).await {
            Ok(report) => {
                if let Some(fatal) = &report.fatal {
                    error!(error = %fatal.chain(), "stopped by a fatal error");
                }
                report.exit_code()
            }
            Err(e) => {
                error!(error = %error_chain(&e), "connector failed");
                1
            }
        }
    });
    tokio.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RuntimeConfig, SinkTopicConfig};
    use crate::connector::{Ready, Sink};
    use crate::error::ConnectorResult;
    use crate::record::SinkRecord;

    struct Nothing;

    #[async_trait::async_trait]
    impl Sink for Nothing {
        async fn process(&self, _record: &SinkRecord) -> ConnectorResult<()> {
            Ok(())
        }
    }

    fn field_of(error: ConfigError) -> String {
        match error {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn the_build_refuses_a_sink_without_topics_and_a_process_with_nothing_to_run() {
        let mut config = ConnectorConfig { runtime: RuntimeConfig::default(), connector: () };
        let sink = |_: &ConnectorConfig<()>| Ok(Parts::new().with_sink(Ready(Nothing)));
        let refused = build(&config, sink).expect_err("no sink.topics");
        assert_eq!(field_of(refused), "sink.topics");
        let nothing = build(&config, |_| Ok(Parts::new())).expect_err("nothing to run");
        assert_eq!(field_of(nothing), "connector");
        let failing = build(&config, |_| Err(ConfigError::invalid("connector.url", "bad")));
        assert_eq!(field_of(failing.expect_err("the connector's own build error")), "connector.url");
        config.runtime.sink.topics = vec![SinkTopicConfig::new("/default/t")];
        let parts = build(&config, sink).expect("a sink with topics builds");
        assert!(parts.has_sink());
    }

    #[test]
    fn the_runtime_gets_the_configured_worker_threads() {
        for workers in [1, 3] {
            let runtime = build_tokio(&AsyncRuntimeConfig { worker_threads: Some(workers) }).expect("runtime");
            assert_eq!(runtime.metrics().num_workers(), workers);
        }
        let default = build_tokio(&AsyncRuntimeConfig::default()).expect("runtime");
        assert!(default.metrics().num_workers() >= 1);
    }
}
