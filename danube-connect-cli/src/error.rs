//! The tool's errors, each keeping its source.

use danube_client::errors::DanubeError;
use danube_connect_core::config::ConfigError;
use danube_connect_core::error::RuntimeError;

/// Why a command could not run (or not completely).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration (file or environment) is invalid; the message names the field.
    #[error("configuration")]
    Config(#[from] ConfigError),
    /// The broker could not be reached or refused the credentials.
    #[error("connecting to Danube")]
    Connect(#[source] RuntimeError),
    /// A `[[schemas]]` binding could not be resolved in the registry.
    #[error("schema bindings ([[schemas]])")]
    Schemas(#[source] danube_connect_core::schema::SchemaSetupError),
    /// An argument is invalid.
    #[error("argument `{argument}`: {message}")]
    Argument {
        /// The argument, as written on the command line.
        argument: &'static str,
        /// What is wrong and the expected form.
        message: String,
    },
    /// Subscribing to a topic failed.
    #[error("subscribing to {topic} (subscription {subscription})")]
    Subscribe {
        /// The topic.
        topic: String,
        /// The subscription.
        subscription: String,
        /// The client error.
        #[source]
        source: DanubeError,
    },
    /// Writing the output failed (e.g. a closed pipe).
    #[error("writing the output")]
    Output(#[from] std::io::Error),
    /// Some dead letters could not be replayed; they stay in the dead-letter topic.
    #[error("{failed} dead letter(s) could not be replayed and stay in the dead-letter topic")]
    ReplayIncomplete {
        /// How many failed.
        failed: usize,
    },
}

impl CliError {
    /// The process exit code: 1 for configuration, connection and argument errors, 4 when some
    /// dead letters could not be replayed (clap itself exits 2 on a usage error).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::ReplayIncomplete { .. } => 4,
            _ => 1,
        }
    }
}
