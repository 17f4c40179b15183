//! # Danube MQTT bridge
//!
//! Moves MQTT messages into Danube and Danube messages out to MQTT:
//!
//! - [`client::Client`] (client mode, the default): subscribes to an external MQTT
//!   broker with a persistent session and manual acks; a QoS 1 message is PUBACKed only
//!   after Danube acked its record, in the order the messages arrived.
//! - [`embedded::Embedded`] (embedded mode): runs an MQTT broker (rumqttd) in
//!   process and publishes what devices send on mapped filters. rumqttd acks devices on
//!   receipt and keeps nothing on disk: see the README for what that means on a crash.
//! - [`outbound::Outbound`] (Danube -> MQTT): publishes each Danube message to an MQTT
//!   topic from a template and acks Danube only after the broker's PUBACK.
//!
//! [`mapping`] holds topic filter matching and the topic templates; [`config`] the
//! `[connector]` section; [`build`] makes the parts of one process from the configuration.

pub mod client;
pub mod config;
pub mod connection;
pub mod embedded;
pub mod inbound;
pub mod mapping;
pub mod outbound;

pub use client::{Client, ClientSource};
pub use config::MqttConfig;
pub use embedded::{Embedded, EmbeddedSource};
pub use outbound::{Outbound, OutboundSink};

use danube_connect_core::config::ConfigError;
use danube_connect_core::{ConnectorConfig, Parts};

/// The pure build (no I/O, `--check` runs it): the source of `connector.mode` and the
/// outbound sink when `connector.outbound` is set. The cross-section checks ran at load
/// (`MqttConfig::validate_with_runtime`).
pub fn build(config: &ConnectorConfig<MqttConfig>) -> Result<Parts, ConfigError> {
    let connector = &config.connector;
    let mut parts = Parts::new();
    match connector.mode {
        config::Mode::Client => parts = parts.with_push(Client::build(connector.clone())?),
        config::Mode::Embedded => parts = parts.with_push(Embedded::build(connector.clone())?),
        config::Mode::Off => {}
    }
    if let Some(outbound) = &connector.outbound {
        parts = parts.with_sink(Outbound::build(connector.broker.clone(), outbound.clone())?);
    }
    Ok(parts)
}
