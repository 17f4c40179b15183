//! Configuration: a TOML (or YAML) file plus environment overrides for every field.
//!
//! Layers, later wins:
//! 1. defaults,
//! 2. the file given with `--config` (`.toml`, `.yaml` or `.yml`),
//! 3. `DANUBE_*` for the `[danube]` section (`DANUBE_SERVICE_URL`, `DANUBE_TOKEN`, ...),
//! 4. `CONNECTOR_*` for the runtime sections, `__` separating levels
//!    (`CONNECTOR_NAME`, `CONNECTOR_RETRY__MAX_ATTEMPTS`, `CONNECTOR_SINK__BATCH__MAX_RECORDS`),
//! 5. `{PREFIX}_*` for the connector's own `[connector]` section
//!    (`HTTP_SOURCE_LISTEN`, `MQTT_MAPPINGS='[{filter="a/#", topic="/default/a"}]'`).
//!
//! List sections take an inline TOML array in the environment, e.g.
//! `CONNECTOR_TRANSFORMS='[{name="strip", source="del(.password)"}]'`.
//!
//! So a container can be configured with environment variables alone.
mod danube;
mod delivery;
mod load;
mod runtime;
#[cfg(test)]
mod tests;

pub use danube::*;
pub use delivery::*;
pub use load::*;
pub use runtime::*;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration error that names the field and the expected form.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field is missing, has the wrong type or cannot be parsed.
    #[error("invalid configuration")]
    Parse(#[source] Box<figment::Error>),
    /// A field parsed but its value is not acceptable.
    #[error("invalid configuration: field `{field}`: {message}")]
    Invalid {
        /// The dotted path of the field (`sink.batch.max_records`).
        field: String,
        /// What is wrong and the expected form.
        message: String,
    },
    /// The configuration file could not be read.
    #[error("configuration file {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// An invalid value for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }
}

/// Semantic checks after parsing; errors name the field.
pub trait Validate {
    /// Checks the values; the default accepts everything.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Checks that need the runtime sections too, e.g. a bridge that must have either
    /// mappings or `sink.topics`. It runs at load like [`validate`](Self::validate), so
    /// `--check` refuses every configuration the binary would refuse at start. The default
    /// accepts everything.
    fn validate_with_runtime(&self, runtime: &RuntimeConfig) -> Result<(), ConfigError> {
        let _ = runtime;
        Ok(())
    }
}

/// A secret string: redacted in `Debug`, `Display` and in `--check` output.
///
/// In config it is a plain string, `{ env = "VAR" }` or `{ file = "/run/secrets/x" }`
/// (trailing newline trimmed).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Source {
            Value(String),
            Env { env: String },
            File { file: PathBuf },
        }
        match Source::deserialize(deserializer)? {
            Source::Value(v) => Ok(Secret(v)),
            Source::Env { env } => std::env::var(&env)
                .map(Secret)
                .map_err(|_| serde::de::Error::custom(format!("secret environment variable `{env}` is not set"))),
            Source::File { file } => std::fs::read_to_string(&file)
                .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| serde::de::Error::custom(format!("secret file {}: {e}", file.display()))),
        }
    }
}
