//! Building MQTT client options (credentials, TLS, keep-alive).

use std::sync::Arc;

use danube_connect_common::tls::TlsError;
use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};

use crate::config::BrokerConfig;

/// Capacity of rumqttc's request channel for a connection that only publishes (one
/// PUBLISH in flight at a time, plus DISCONNECT).
pub const PUBLISH_REQUEST_CHANNEL: usize = 64;

/// Capacity of rumqttc's request channel for the inbound connection: it carries the
/// PUBACKs. The broker can have at most 65535 unacknowledged QoS 1 messages out to us
/// (one per packet id), so the acks owed never exceed that and queueing one never waits
/// for the event loop. (A smaller channel deadlocks: the event loop task waits for the
/// ack pipeline to take a message while the pipeline waits for room for a PUBACK.)
pub const ACK_REQUEST_CHANNEL: usize = u16::MAX as usize + 64;

/// Why an MQTT connection could not be set up: `connector.broker.tls` is not usable
/// (the error names the field and the file).
pub type ConnectionSetupError = TlsError;

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
        let config = tls.rustls_config("connector.broker.tls")?;
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
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

#[cfg(test)]
mod tests {
    use super::*;
    use danube_connect_common::tls::ClientTls;

    #[test]
    fn missing_ca_file_is_reported_with_its_path() {
        let broker = BrokerConfig {
            tls: Some(ClientTls { ca: Some("/nonexistent/ca.pem".into()), ..ClientTls::default() }),
            ..BrokerConfig::default()
        };
        let err = mqtt_options(&broker, "x", false, true).expect_err("no CA file");
        assert_eq!(err.field, "connector.broker.tls.ca");
        assert!(err.reason().contains("/nonexistent/ca.pem"), "{}", err.reason());
    }
}
