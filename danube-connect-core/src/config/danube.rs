//! `[danube]`: how to reach the broker.

use super::*;
use danube_connect_common::tls::ClientTls;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where and how to reach Danube.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DanubeConfig {
    /// Broker URL, e.g. `http://127.0.0.1:6650` (`https://` with TLS).
    pub service_url: String,
    /// TLS to the broker, the shared client TLS type: `ca` (PEM) verifies the broker and
    /// enables TLS; `client_cert` and `client_key` are the identity for mutual TLS (they
    /// need `ca`). `builtin_roots` is refused: danube-client 0.16 trusts only the CA file it
    /// is given.
    pub tls: ClientTls,
    /// Old spelling of `tls.ca` (`DANUBE_TLS_CA`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Old spelling of `tls.client_cert` (`DANUBE_TLS_CERT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Old spelling of `tls.client_key` (`DANUBE_TLS_KEY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// JWT for the broker (`Authorization: Bearer`); enables TLS.
    pub token: Option<Secret>,
    /// A file holding the JWT, re-read on every request (rotation without restart).
    pub token_file: Option<PathBuf>,
    /// How long to keep retrying the first connection before giving up.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The broker's Prometheus exporter (`danube-broker --prom-exporter`), e.g.
    /// `http://127.0.0.1:9040` (`/metrics` is appended unless given): sinks read their subscription's lag from it to detect a
    /// subscription the broker stopped feeding (`sink.stall_timeout`). Unset: no detection.
    pub broker_metrics_url: Option<String>,
    /// The broker's admin gRPC API (`danube-broker --admin-addr`), e.g.
    /// `http://127.0.0.1:50051`, plain HTTP/2 without a token. With it, sinks read each
    /// topic's figures from the broker that owns it (any broker of a cluster answers), which
    /// also enables stall detection without `broker_metrics_url`, and can move a stalled
    /// topic to another broker of the cluster (`sink.stall_recovery`). Unset: neither.
    pub broker_admin_url: Option<String>,
}

impl Default for DanubeConfig {
    fn default() -> Self {
        Self {
            service_url: "http://127.0.0.1:6650".into(),
            tls: ClientTls::default(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            token: None,
            token_file: None,
            connect_timeout: Duration::from_secs(300),
            broker_metrics_url: None,
            broker_admin_url: None,
        }
    }
}

impl DanubeConfig {
    /// The broker TLS settings, with the old spellings (`tls_ca`, `tls_cert`, `tls_key`)
    /// taken into `tls`; one field set in both spellings is an error naming it.
    pub fn client_tls(&self) -> Result<ClientTls, ConfigError> {
        let mut tls = self.tls.clone();
        let pairs = [
            (&self.tls_ca, &mut tls.ca, "tls_ca", "ca"),
            (&self.tls_cert, &mut tls.client_cert, "tls_cert", "client_cert"),
            (&self.tls_key, &mut tls.client_key, "tls_key", "client_key"),
        ];
        for (old, new, old_name, new_name) in pairs {
            match (old, new.is_some()) {
                (Some(_), true) => {
                    return Err(ConfigError::invalid(
                        format!("danube.tls.{new_name}"),
                        format!("set twice: also as `danube.{old_name}`, its old spelling; keep one"),
                    ))
                }
                (Some(path), false) => *new = Some(path.clone()),
                _ => {}
            }
        }
        Ok(tls)
    }

    /// Moves the old spellings into `tls` (so `--check` prints the new ones).
    pub(crate) fn adopt_old_tls_keys(&mut self) -> Result<(), ConfigError> {
        self.tls = self.client_tls()?;
        (self.tls_ca, self.tls_cert, self.tls_key) = (None, None, None);
        Ok(())
    }
}

impl Validate for DanubeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.service_url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "danube.service_url",
                format!("`{url}` must start with http:// or https:// (e.g. http://127.0.0.1:6650)"),
            ));
        }
        if url.parse::<tonic::transport::Uri>().is_err() {
            return Err(ConfigError::invalid("danube.service_url", format!("`{url}` is not a valid URL")));
        }
        if let Some(url) = &self.broker_metrics_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<tonic::transport::Uri>().is_err()
            {
                return Err(ConfigError::invalid(
                    "danube.broker_metrics_url",
                    format!("`{url}` must be an http:// or https:// URL (e.g. http://127.0.0.1:9040)"),
                ));
            }
        }
        if let Some(url) = &self.broker_admin_url {
            if !url.starts_with("http://") || url.parse::<tonic::transport::Uri>().is_err() {
                return Err(ConfigError::invalid(
                    "danube.broker_admin_url",
                    format!("`{url}` must be an http:// URL (e.g. http://127.0.0.1:50051)"),
                ));
            }
        }
        let tls = self.client_tls()?;
        if tls.trusts_builtin_roots() && tls.ca.is_some() {
            let field = if tls.builtin_roots { "danube.tls.builtin_roots" } else { "danube.tls.ca_only" };
            return Err(ConfigError::invalid(
                field,
                "danube-client 0.16 trusts only the CA file it is given (`danube.tls.ca`); it cannot add the built-in roots",
            ));
        }
        if tls.client_cert.is_some() && tls.ca.is_none() {
            return Err(ConfigError::invalid("danube.tls.ca", "mutual TLS (`danube.tls.client_cert`) needs `ca` too"));
        }
        // Every PEM file is read once here with the loader every connector's TLS uses, so a
        // bad one fails `--check` with the field and the file.
        tls.validate("danube.tls").map_err(|e| ConfigError::invalid(e.field.clone(), e.reason()))?;
        if let Some(path) = &self.token_file {
            if !path.exists() {
                return Err(ConfigError::invalid(
                    "danube.token_file",
                    format!("file {} does not exist", path.display()),
                ));
            }
        }
        Ok(())
    }
}
