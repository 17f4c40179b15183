//! Building MQTT client options (credentials, TLS, keep-alive).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{BrokerConfig, TlsConfig};

/// Capacity of rumqttc's request channel for a connection that only publishes (one
/// PUBLISH in flight at a time, plus DISCONNECT).
pub const PUBLISH_REQUEST_CHANNEL: usize = 64;

/// Capacity of rumqttc's request channel for the inbound connection: it carries the
/// PUBACKs. The broker can have at most 65535 unacknowledged QoS 1 messages out to us
/// (one per packet id), so the acks owed never exceed that and queueing one never waits
/// for the event loop. (A smaller channel deadlocks: the event loop task waits for the
/// ack pipeline to take a message while the pipeline waits for room for a PUBACK.)
pub const ACK_REQUEST_CHANNEL: usize = u16::MAX as usize + 64;

/// Why an MQTT connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionSetupError {
    /// A TLS file could not be read.
    #[error("reading {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file holds no usable PEM item.
    #[error("{path}: no usable PEM {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// The parse error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The TLS configuration was refused.
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
}

/// Client options for `broker` as `client_id`.
pub fn mqtt_options(
    broker: &BrokerConfig,
    client_id: &str,
    clean_session: bool,
    manual_acks: bool,
) -> Result<MqttOptions, ConnectionSetupError> {
    let mut options = MqttOptions::new(client_id, &broker.host, broker.port);
    options
        .set_keep_alive(broker.keep_alive)
        .set_clean_session(clean_session)
        .set_manual_acks(manual_acks)
        .set_max_packet_size(broker.max_packet_size, broker.max_packet_size);
    if let Some(username) = &broker.username {
        let password = broker.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
        options.set_credentials(username.clone(), password);
    }
    if let Some(tls) = &broker.tls {
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(rustls_config(tls)?))));
    }
    Ok(options)
}

/// The client and its event loop (request channel of `capacity`), with the connect
/// timeout applied.
pub fn client(options: MqttOptions, broker: &BrokerConfig, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let mut network = eventloop.network_options();
    network.set_connection_timeout(broker.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(network);
    (client, eventloop)
}

fn rustls_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, ConnectionSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(&tls.ca)? {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let key_bytes = read(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|source| ConnectionSetupError::Pem {
                path: key.clone(),
                what: "private key",
                source,
            })?;
            Ok(builder.with_client_auth_cert(read_certs(cert)?, key_der)?)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ConnectionSetupError> {
    std::fs::read(path).map_err(|source| ConnectionSetupError::ReadFile { path: path.to_path_buf(), source })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConnectionSetupError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ConnectionSetupError::Pem { path: path.to_path_buf(), what: "certificate", source })?;
    if certs.is_empty() {
        return Err(ConnectionSetupError::Pem {
            path: path.to_path_buf(),
            what: "certificate",
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_reported_with_its_path() {
        let broker = BrokerConfig {
            tls: Some(TlsConfig { ca: "/nonexistent/ca.pem".into(), client_cert: None, client_key: None }),
            ..BrokerConfig::default()
        };
        let err = mqtt_options(&broker, "x", false, true).expect_err("no CA file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
