//! # Danube MQTT bridge
//!
//! Moves MQTT messages into Danube and Danube messages out to MQTT:
//!
//! - [`client::ClientSource`] (client mode, the default): subscribes to an external MQTT
//!   broker with a persistent session and manual acks; a QoS 1 message is PUBACKed only
//!   after Danube acked its record, in the order the messages arrived.
//! - [`embedded::EmbeddedSource`] (embedded mode): runs an MQTT broker (rumqttd) in
//!   process and publishes what devices send on mapped filters. rumqttd acks devices on
//!   receipt and keeps nothing on disk: see the README for what that means on a crash.
//! - [`outbound::OutboundSink`] (Danube -> MQTT): publishes each Danube message to an MQTT
//!   topic from a template and acks Danube only after the broker's PUBACK.
//!
//! [`mapping`] holds topic filter matching and the topic templates; [`config`] the
//! `[connector]` section.

pub mod client;
pub mod config;
pub mod connection;
pub mod embedded;
pub mod inbound;
pub mod mapping;
pub mod outbound;

pub use client::ClientSource;
pub use config::MqttConfig;
pub use embedded::EmbeddedSource;
pub use outbound::OutboundSink;
