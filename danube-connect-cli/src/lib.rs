//! # danube-connect
//!
//! The operator's command-line tool for Danube Connect, on the connectors' own configuration:
//! `--config FILE` (the connector's TOML/YAML file works as is) and the same environment
//! variables (`DANUBE_SERVICE_URL`, `DANUBE_TLS__CA`, `DANUBE_TOKEN`, `CONNECTOR_NAME`,
//! `CONNECTOR_FAILURE__DEAD_LETTER_TOPIC`, ...).
//!
//! - `dlq inspect [TOPIC]`: counts of dead letters by `dlq.error_kind`, `dlq.connector` and
//!   `dlq.source_topic`, and the last records with their error, payload decoded;
//! - `dlq replay [TOPIC]`: re-publishes dead letters to their original topic (or `--to`), each
//!   acked in the dead-letter topic only after Danube acked the re-publish;
//! - `tail TOPIC`: follows a topic and prints its records (`--json`: one object per line).
//!
//! The dead-letter commands read through the durable subscription the connector runtime
//! creates on its dead-letter topic at start
//! ([`DEAD_LETTER_SUBSCRIPTION`](danube_connect_core::dead_letter::DEAD_LETTER_SUBSCRIPTION));
//! see docs/operations.md, "Dead letters: inspect and replay".

pub mod decode;
pub mod dlq;
pub mod error;
pub mod tail;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use danube_connect_core::config::{ConnectorConfig, Validate};
use danube_connect_core::DanubeConnection;
use danube_connect_core::RuntimeConfig;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use error::CliError;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "danube-connect",
    version,
    about = "Inspect and replay dead letters, follow a topic. Configuration: --config FILE (a connector's own file \
             works) and/or the connectors' environment variables (DANUBE_SERVICE_URL, CONNECTOR_NAME, ...)."
)]
pub struct Cli {
    /// Configuration file (TOML, or YAML by extension): a connector's file, read for its
    /// `[danube]` section, `name`, `failure.dead_letter_topic` and `[[schemas]]`.
    #[arg(long, short, global = true, env = "CONNECTOR_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    /// How long to wait for the broker to answer before giving up.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dead letters: inspect and replay.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Follow a topic and print its records as they arrive (new records only).
    Tail(tail::TailArgs),
}

/// `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Count dead letters by error kind, connector and source topic, and show the last ones.
    Inspect(dlq::InspectArgs),
    /// Re-publish dead letters to their original topic (or `--to`), acking each only after
    /// Danube acked its re-publish.
    Replay(dlq::ReplayArgs),
}

/// The dead-letter topic argument shared by the `dlq` subcommands.
#[derive(Debug, Clone, Args)]
pub struct DlqTopic {
    /// The dead-letter topic; default: the configured one (`failure.dead_letter_topic`, else
    /// `/default/dlq-{name}` with `name` from the config or `CONNECTOR_NAME`).
    pub topic: Option<String>,
    /// How long to wait for the next dead letter before deciding the topic is read out.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

/// A connector's `[connector]` section, accepted and ignored: the tool reads a connector's
/// file for the runtime sections only.
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AnySection(serde_json::Value);

impl Default for AnySection {
    fn default() -> Self {
        Self(serde_json::Value::Object(serde_json::Map::new()))
    }
}

impl Validate for AnySection {}

/// The environment prefix of the `[connector]` section (unused by the tool, accepted).
const ENV_PREFIX: &str = "DANUBE_CONNECT_CLI";

/// The loaded configuration and a connected client.
pub struct Context {
    /// The runtime sections of the configuration.
    pub config: RuntimeConfig,
    /// A connection that reached the broker.
    pub connection: DanubeConnection,
    /// Cancelled on SIGINT or SIGTERM.
    pub cancel: CancellationToken,
}

impl Context {
    /// Loads the configuration like a connector does, builds the client and waits until the
    /// broker answers (at most `connect_timeout`).
    pub async fn connect(cli: &Cli, cancel: CancellationToken) -> Result<Self, CliError> {
        let mut config = ConnectorConfig::<AnySection>::load(cli.config.as_deref(), ENV_PREFIX)?.runtime;
        config.danube.connect_timeout = cli.connect_timeout;
        let connection = DanubeConnection::connect(&config.danube, &cancel).await.map_err(CliError::Connect)?;
        Ok(Self { config, connection, cancel })
    }
}

/// Runs the parsed command line to its end.
pub async fn run(cli: Cli, cancel: CancellationToken) -> Result<(), CliError> {
    let context = Context::connect(&cli, cancel).await?;
    match &cli.command {
        Command::Dlq(DlqCommand::Inspect(args)) => dlq::inspect(&context, args).await,
        Command::Dlq(DlqCommand::Replay(args)) => dlq::replay(&context, args).await,
        Command::Tail(args) => tail::tail(&context, args).await,
    }
}
