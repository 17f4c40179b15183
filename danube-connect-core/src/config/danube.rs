//! `[danube]`: how to reach the broker.

use super::*;
use danube_connect_common::tls;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where and how to reach Danube.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DanubeConfig {
    /// Broker URL, e.g. `http://127.0.0.1:6650` (`https://` with TLS).
    pub service_url: String,
    /// CA certificate (PEM) to verify the broker; enables TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `tls_key` and `tls_ca`.
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
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
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::invalid("danube.tls_cert", "mutual TLS needs both `tls_cert` and `tls_key`"));
        }
        if self.tls_cert.is_some() && self.tls_ca.is_none() {
            return Err(ConfigError::invalid("danube.tls_ca", "mutual TLS needs `tls_ca` too"));
        }
        // The PEM files are read once here with the loader every connector's TLS uses, so a
        // bad one fails `--check` with the field and the file.
        let pem = |e: tls::TlsError| ConfigError::invalid(e.field.clone(), e.reason());
        if let Some(path) = &self.tls_ca {
            tls::load_certificates("danube", "tls_ca", path).map_err(pem)?;
        }
        if let Some(path) = &self.tls_cert {
            tls::load_certificates("danube", "tls_cert", path).map_err(pem)?;
        }
        if let Some(path) = &self.tls_key {
            tls::load_private_key("danube", "tls_key", path).map_err(pem)?;
        }
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
