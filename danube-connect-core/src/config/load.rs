//! Loading: the file and environment layers, and the redacted view `--check` prints.

use super::*;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml, Yaml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Keys of `[danube]` settable as `DANUBE_*` (other `DANUBE_*` variables are ignored).
const DANUBE_KEYS: &[&str] = &[
    "service_url",
    "tls",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "token",
    "token_file",
    "connect_timeout",
    "broker_metrics_url",
    "broker_admin_url",
];

/// An environment layer: `{prefix}{KEY}` → `{section}.{key}`, `__` separating levels;
/// variables whose first level `accept` refuses are ignored.
fn env_layer(prefix: &str, section: Option<&'static str>, accept: fn(&str) -> bool) -> Env {
    let prefix = prefix.to_ascii_lowercase();
    Env::raw().filter_map(move |key| {
        let key = key.as_str().to_ascii_lowercase();
        let rest = key.strip_prefix(&prefix)?;
        let first = rest.split("__").next().unwrap_or_default();
        if rest.is_empty() || !accept(first) {
            return None;
        }
        let path = rest.replace("__", ".");
        Some(match section {
            Some(section) => format!("{section}.{path}").into(),
            None => path.into(),
        })
    })
}

/// Turns a parse error into one naming the field as written in a file
/// (`connector.max_body_bytes`), whatever layer it came from; `section` is the prefix of an
/// inner extraction.
fn parse_error(error: figment::Error, section: Option<&str>) -> ConfigError {
    if error.path.is_empty() {
        return ConfigError::Parse(Box::new(error));
    }
    let mut keys: Vec<&str> = error.path.iter().map(String::as_str).collect();
    if let Some(section) = section {
        // `extract_inner` appends the section's keys after the inner path (`tls.connector`).
        let parts: Vec<&str> = section.split('.').collect();
        if keys.len() > parts.len() && keys.ends_with(&parts) {
            keys.truncate(keys.len() - parts.len());
        }
        if !keys.starts_with(&parts) {
            keys.splice(0..0, parts);
        }
    }
    let field = keys.join(".");
    let origin = error.metadata.as_ref().map(|m| format!(" (from {})", m.name)).unwrap_or_default();
    ConfigError::invalid(field.to_ascii_lowercase(), format!("{}{origin}", error.kind))
}

/// Top-level keys a configuration may have.
const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "danube",
    "retry",
    "failure",
    "source",
    "sink",
    "ops",
    "log",
    "shutdown",
    "runtime",
    "schemas",
    "transforms",
    "telemetry",
    "connector",
    "config_file",
];

/// A whole connector configuration: runtime sections plus the connector's `[connector]` section.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorConfig<C> {
    /// Runtime sections (flattened at the top level of the file).
    #[serde(flatten)]
    pub runtime: RuntimeConfig,
    /// The connector's own settings.
    pub connector: C,
}

impl<C> ConnectorConfig<C>
where
    C: DeserializeOwned + Serialize + Default + Validate,
{
    /// Loads defaults, then `file`, then the environment (see the module docs), and validates.
    /// `env_prefix` is the connector's prefix without the trailing `_`, e.g. `HTTP_SOURCE`.
    pub fn load(file: Option<&Path>, env_prefix: &str) -> Result<Self, ConfigError> {
        Self::load_from(file, env_prefix, Figment::new())
    }

    /// Like [`load`](Self::load), with extra layers merged last (tests, embedding).
    pub fn load_from(file: Option<&Path>, env_prefix: &str, extra: Figment) -> Result<Self, ConfigError> {
        let defaults = ConnectorConfig { runtime: RuntimeConfig::default(), connector: C::default() };
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            figment = match path.extension().and_then(|e| e.to_str()) {
                Some("yaml") | Some("yml") => figment.merge(Yaml::file(path)),
                _ => figment.merge(Toml::file(path)),
            };
        }
        figment = figment
            .merge(env_layer("DANUBE_", Some("danube"), |key| DANUBE_KEYS.contains(&key)))
            .merge(env_layer("CONNECTOR_", None, |key| TOP_LEVEL_KEYS.contains(&key)))
            .merge(env_layer(&format!("{env_prefix}_"), Some("connector"), |_| true))
            .merge(extra);
        let keys: std::collections::BTreeMap<String, figment::value::Value> =
            figment.extract().map_err(|e| parse_error(e, None))?;
        if let Some(unknown) = keys.keys().find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
            return Err(ConfigError::invalid(
                unknown.clone(),
                format!("unknown section; expected one of {}", TOP_LEVEL_KEYS[..TOP_LEVEL_KEYS.len() - 1].join(", ")),
            ));
        }
        let mut runtime: RuntimeConfig = figment.extract().map_err(|e| parse_error(e, None))?;
        runtime.danube.adopt_old_tls_keys()?;
        let connector: C = figment.extract_inner("connector").map_err(|e| parse_error(e, Some("connector")))?;
        let config = Self { runtime, connector };
        config.runtime.validate()?;
        config.connector.validate()?;
        config.connector.validate_with_runtime(&config.runtime)?;
        Ok(config)
    }

    /// The effective configuration as TOML, secrets redacted (for `--check`).
    pub fn to_redacted_toml(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        render_toml(&value)
    }
}

/// Renders a JSON value as TOML-like text for `--check` (nulls are left out).
fn render_toml(value: &serde_json::Value) -> String {
    fn scalar(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        }
    }
    fn table(out: &mut String, path: &str, map: &serde_json::Map<String, serde_json::Value>) {
        let mut nested = Vec::new();
        for (k, v) in map {
            match v {
                serde_json::Value::Null => {}
                serde_json::Value::Object(m) => nested.push((k, m)),
                other => out.push_str(&format!("{k} = {}\n", scalar(other))),
            }
        }
        for (k, m) in nested {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            out.push_str(&format!("\n[{p}]\n"));
            table(out, &p, m);
        }
    }
    let mut out = String::new();
    if let serde_json::Value::Object(map) = value {
        table(&mut out, "", map);
    }
    out
}
