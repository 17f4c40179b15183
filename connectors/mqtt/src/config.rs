//! The `[connector]` section of the MQTT bridge.
//!
//! ```toml
//! [connector]
//! mode = "client"                      # client | embedded | off (no inbound)
//!
//! [connector.broker]                   # the MQTT broker (client mode and outbound)
//! host = "127.0.0.1"
//! port = 1883
//! client_id = "danube-mqtt"
//!
//! [[connector.mappings]]
//! filter = "factory/+/temp"
//! topic = "/iot/factory-{1}-temp"
//! qos = 1
//! format = "json"
//!
//! [connector.outbound]                 # Danube -> MQTT (with `sink.topics`)
//! topic = "devices/{attr.device}/cmd"
//! qos = 1
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use danube_connect_common::tls::{ClientTls, ServerTls};
use danube_connect_core::config::{ConfigError, RuntimeConfig, Validate};
use danube_connect_core::Secret;
use serde::{Deserialize, Serialize};

use crate::mapping::{validate_filter, OutboundTemplate, TopicTemplate};

/// How MQTT messages come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Connect to an external MQTT broker and subscribe to the mapped filters (default).
    #[default]
    Client,
    /// Run an MQTT broker in-process (rumqttd) that devices connect to.
    Embedded,
    /// No inbound direction (outbound only).
    Off,
}

/// The MQTT bridge configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Inbound mode: `client` (default), `embedded` or `off`.
    pub mode: Mode,
    /// The external MQTT broker (client mode, and the outbound direction).
    pub broker: BrokerConfig,
    /// The in-process broker (embedded mode).
    pub embedded: EmbeddedConfig,
    /// MQTT topic filters and the Danube topics they feed (first match wins).
    pub mappings: Vec<Mapping>,
    /// Danube -> MQTT: enabled when set and `sink.topics` is not empty.
    pub outbound: Option<OutboundConfig>,
    /// Incoming messages taken from MQTT but not yet acked by Danube, at most; the
    /// intake pauses beyond it (the MQTT broker then holds QoS 1 messages).
    pub max_in_flight: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Client,
            broker: BrokerConfig::default(),
            embedded: EmbeddedConfig::default(),
            mappings: Vec::new(),
            outbound: None,
            max_in_flight: 256,
        }
    }
}

/// Connection to an external MQTT broker (MQTT 3.1.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883, or 8883 with TLS).
    pub port: u16,
    /// Client id; fixed so the broker keeps the persistent session across restarts.
    /// The outbound direction connects as `{client_id}-out`.
    pub client_id: String,
    /// `false` (default): persistent session, the broker keeps QoS 1 messages while the
    /// connector is down. `true`: a fresh session on every connect.
    pub clean_session: bool,
    /// Keep-alive interval (PINGREQ period).
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// User name, if the broker requires one.
    pub username: Option<String>,
    /// Password (a string, `{ env = "VAR" }` or `{ file = "/path" }`).
    pub password: Option<Secret>,
    /// TLS; when set the connection is encrypted.
    pub tls: Option<ClientTls>,
    /// Delay before the first reconnect attempt; doubles up to `reconnect_max_backoff`.
    #[serde(with = "humantime_serde")]
    pub reconnect_initial_backoff: Duration,
    /// Upper bound of the reconnect delay.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
    /// Largest MQTT packet accepted or sent, in bytes.
    pub max_packet_size: usize,
    /// How long connecting (TCP, TLS and CONNACK) may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "danube-mqtt".into(),
            clean_session: false,
            keep_alive: Duration::from_secs(30),
            username: None,
            password: None,
            tls: None,
            reconnect_initial_backoff: Duration::from_millis(200),
            reconnect_max_backoff: Duration::from_secs(10),
            max_packet_size: 1 << 20,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The in-process MQTT broker of embedded mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Where devices connect (MQTT 3.1.1; TCP, or TLS with `tls`). Default `127.0.0.1:1883`.
    /// A non-loopback address needs `users`, or `allow_anonymous = true`.
    pub listen: SocketAddr,
    /// Device logins, user name to password (a string, `{ env = "VAR" }` or
    /// `{ file = "/path" }`; redacted in `--check`). When set, a device must send one of
    /// them in CONNECT; others are disconnected.
    pub users: BTreeMap<String, Secret>,
    /// Run without `users` on a non-loopback `listen` (anyone who reaches the port may
    /// publish). Off by default: the connector then refuses to start.
    pub allow_anonymous: bool,
    /// TLS for device connections; when set, `listen` speaks MQTT over TLS only.
    pub tls: Option<ServerTls>,
    /// Connections at most.
    pub max_connections: usize,
    /// Largest accepted payload, in bytes.
    pub max_payload_size: usize,
    /// Unacked QoS 1 messages per device connection, at most.
    pub max_inflight_count: usize,
    /// How long a device may take to send CONNECT after connecting.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            users: BTreeMap::new(),
            allow_anonymous: false,
            tls: None,
            max_connections: 10_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 100,
            connection_timeout: Duration::from_secs(5),
        }
    }
}

/// MQTT quality of service levels the bridge supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "u8", into = "u8")]
pub enum Qos {
    /// At most once.
    AtMostOnce,
    /// At least once (default).
    #[default]
    AtLeastOnce,
}

impl TryFrom<u8> for Qos {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            other => Err(format!("qos {other} is not supported (use 0 or 1)")),
        }
    }
}

impl From<Qos> for u8 {
    fn from(value: Qos) -> Self {
        match value {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
        }
    }
}

impl From<Qos> for rumqttc::QoS {
    fn from(value: Qos) -> Self {
        match value {
            Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        }
    }
}

/// What a mapped message's payload must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Any bytes (default).
    #[default]
    Any,
    /// Valid UTF-8 text.
    Utf8,
    /// A valid JSON document.
    Json,
}

/// One MQTT topic filter and the Danube topic its messages go to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// MQTT topic filter (`+` one level, `#` the rest, `a/#` also matches `a`).
    pub filter: String,
    /// Danube topic template (the shared grammar, `docs/templates.md`): `/namespace/topic`
    /// where `{N}` is MQTT topic level N (0-based) and `{topic}` the whole MQTT topic with
    /// `/` replaced by `-`.
    pub topic: String,
    /// Subscription QoS: 0 or 1 (default 1: end-to-end at least once).
    #[serde(default)]
    pub qos: Qos,
    /// Payload check; a message that fails it goes to the dead-letter topic.
    #[serde(default)]
    pub format: PayloadFormat,
    /// Distinct Danube topics a template with placeholders may render to, at most (each
    /// keeps producers open). A message for a further topic goes to the dead-letter
    /// topic (`mqtt_messages_total{outcome="topic_limit"}`). Default 64.
    #[serde(default = "default_max_topics")]
    pub max_topics: usize,
}

/// The default of [`Mapping::max_topics`].
pub fn default_max_topics() -> usize {
    64
}

/// Danube -> MQTT publishing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// MQTT topic template (the shared grammar, `docs/templates.md`): the record's fields,
    /// `{attr.NAME}` an attribute of the Danube message, `{key}` its routing key, `{topic}`
    /// the Danube topic's name and `{namespace}` its namespace (`{attr:NAME}` still reads).
    /// An attribute or key fills one level (`/`, `+`, `#` become `_`) unless written
    /// `{attr.NAME:levels}` / `{key:levels}` or it is the whole template.
    /// Default `{attr.mqtt.topic}` (the topic an inbound message came from).
    #[serde(default = "default_outbound_topic")]
    pub topic: String,
    /// QoS of the MQTT publish (1: the Danube message is acked after the broker's PUBACK).
    #[serde(default)]
    pub qos: Qos,
    /// Publish with the retain flag.
    #[serde(default)]
    pub retain: bool,
    /// How long to wait for the broker's PUBACK before the attempt counts as failed.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
}

fn default_outbound_topic() -> String {
    "{attr.mqtt.topic}".into()
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Validate for MqttConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        if b.host.is_empty() {
            return Err(ConfigError::invalid("connector.broker.host", "must not be empty"));
        }
        if b.port == 0 {
            return Err(ConfigError::invalid("connector.broker.port", "must be 1 to 65535"));
        }
        if b.client_id.is_empty() || b.client_id.len() > 200 {
            return Err(ConfigError::invalid("connector.broker.client_id", "must be 1 to 200 characters"));
        }
        if b.keep_alive < Duration::from_secs(5) && !b.keep_alive.is_zero() {
            return Err(ConfigError::invalid("connector.broker.keep_alive", "must be 0 (off) or at least 5s"));
        }
        if b.password.is_some() && b.username.is_none() {
            return Err(ConfigError::invalid("connector.broker.password", "needs `username` too"));
        }
        if b.reconnect_initial_backoff.is_zero() || b.reconnect_initial_backoff > b.reconnect_max_backoff {
            return Err(ConfigError::invalid(
                "connector.broker.reconnect_initial_backoff",
                "must be above 0 and not exceed `reconnect_max_backoff`",
            ));
        }
        if b.max_packet_size < 128 {
            return Err(ConfigError::invalid("connector.broker.max_packet_size", "must be at least 128 bytes"));
        }
        if b.connect_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid("connector.broker.connect_timeout", "must be at least 1s"));
        }
        if let Some(tls) = &b.tls {
            tls.validate("connector.broker.tls").map_err(|e| ConfigError::invalid(e.field.clone(), e.reason()))?;
        }
        if self.mode == Mode::Embedded {
            let e = &self.embedded;
            if e.max_connections == 0 {
                return Err(ConfigError::invalid("connector.embedded.max_connections", "must be at least 1"));
            }
            if e.max_payload_size == 0 {
                return Err(ConfigError::invalid("connector.embedded.max_payload_size", "must be at least 1"));
            }
            if e.max_inflight_count == 0 || e.max_inflight_count > u16::MAX as usize {
                return Err(ConfigError::invalid("connector.embedded.max_inflight_count", "must be 1 to 65535"));
            }
            if e.connection_timeout.as_millis() == 0 || e.connection_timeout.as_millis() > u16::MAX as u128 {
                return Err(ConfigError::invalid("connector.embedded.connection_timeout", "must be 1ms to 65s"));
            }
            for (user, password) in &e.users {
                if user.is_empty() {
                    return Err(ConfigError::invalid("connector.embedded.users", "a user name must not be empty"));
                }
                if password.expose().is_empty() {
                    return Err(ConfigError::invalid(
                        format!("connector.embedded.users.{user}"),
                        "the password must not be empty",
                    ));
                }
            }
            if e.allow_anonymous && !e.users.is_empty() {
                return Err(ConfigError::invalid(
                    "connector.embedded.allow_anonymous",
                    "contradicts `users`: with users set, every device must log in",
                ));
            }
            if !e.listen.ip().is_loopback() && e.users.is_empty() && !e.allow_anonymous {
                return Err(ConfigError::invalid(
                    "connector.embedded.allow_anonymous",
                    format!(
                        "listen {} is not a loopback address and no `connector.embedded.users` are set: anyone \
                         reaching the port could publish; set users (and tls), or allow_anonymous = true to run \
                         open on purpose",
                        e.listen
                    ),
                ));
            }
            if let Some(tls) = &e.tls {
                tls.validate("connector.embedded.tls")
                    .map_err(|e| ConfigError::invalid(e.field.clone(), e.reason()))?;
            }
        }
        if self.mode != Mode::Off && self.mappings.is_empty() {
            return Err(ConfigError::invalid(
                "connector.mappings",
                "needs at least one mapping (e.g. [{filter=\"sensors/#\", topic=\"/default/sensors\"}]) unless mode = \"off\"",
            ));
        }
        for (i, m) in self.mappings.iter().enumerate() {
            validate_filter(&m.filter)
                .map_err(|message| ConfigError::invalid(format!("connector.mappings[{i}].filter"), message))?;
            TopicTemplate::parse(&m.topic, &m.filter)
                .map_err(|e| e.for_field(format!("connector.mappings[{i}].topic")))?;
            if m.max_topics == 0 {
                return Err(ConfigError::invalid(format!("connector.mappings[{i}].max_topics"), "must be at least 1"));
            }
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::invalid("connector.max_in_flight", "must be at least 1"));
        }
        if let Some(out) = &self.outbound {
            OutboundTemplate::parse(&out.topic).map_err(|e| e.for_field("connector.outbound.topic"))?;
            if out.ack_timeout.is_zero() {
                return Err(ConfigError::invalid("connector.outbound.ack_timeout", "must be above 0"));
            }
        }
        Ok(())
    }

    fn validate_with_runtime(&self, runtime: &RuntimeConfig) -> Result<(), ConfigError> {
        let sink_topics: Vec<String> = runtime.sink.topics.iter().map(|t| t.topic.clone()).collect();
        self.check_both_ways(&sink_topics)?;
        match (&self.outbound, sink_topics.is_empty()) {
            (Some(_), true) => Err(ConfigError::invalid(
                "sink.topics",
                "`connector.outbound` is set: name the Danube topics to send to MQTT (e.g. [{topic=\"/default/commands\"}])",
            )),
            (None, false) => Err(ConfigError::invalid(
                "connector.outbound",
                "`sink.topics` is set: configure `connector.outbound` (the MQTT topic template) too",
            )),
            (None, true) if self.mode == Mode::Off => {
                Err(ConfigError::invalid("connector.mode", "is `off` and no outbound is configured: nothing to do"))
            }
            _ => Ok(()),
        }
    }
}

impl MqttConfig {
    /// Checks the both-ways setup against the Danube topics the outbound direction reads
    /// (`sink.topics`): an outbound template that is just `{attr.mqtt.topic}` (the default)
    /// or `{key}` sends a message back to the MQTT topic it came from, so when an inbound
    /// mapping feeds one of those Danube topics, every message would go round forever.
    pub fn check_both_ways(&self, sink_topics: &[String]) -> Result<(), ConfigError> {
        let Some(outbound) = &self.outbound else {
            return Ok(());
        };
        if self.mode == Mode::Off {
            return Ok(());
        }
        let Ok(template) = OutboundTemplate::parse(&outbound.topic) else {
            return Ok(()); // reported by `validate`
        };
        if !template.is_inbound_topic() {
            return Ok(());
        }
        for (i, m) in self.mappings.iter().enumerate() {
            let Ok(inbound) = TopicTemplate::parse(&m.topic, &m.filter) else {
                continue;
            };
            if let Some(topic) = sink_topics.iter().find(|t| inbound.can_render(t)) {
                return Err(ConfigError::invalid(
                    "connector.outbound.topic",
                    format!(
                        "`{}` sends each message of `{topic}` back to the MQTT topic it came from, where \
                         connector.mappings[{i}] (`{}`) takes it in again: an endless loop; \
                         set an MQTT topic template that no mapping's filter matches",
                        outbound.topic, m.filter
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_mapping(filter: &str, topic: &str) -> MqttConfig {
        MqttConfig {
            mappings: vec![Mapping {
                filter: filter.into(),
                topic: topic.into(),
                qos: Qos::AtLeastOnce,
                format: PayloadFormat::Any,
                max_topics: default_max_topics(),
            }],
            ..MqttConfig::default()
        }
    }

    fn field_of(error: ConfigError) -> String {
        match error {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn a_valid_mapping_passes() {
        with_mapping("factory/+/temp", "/iot/factory-{1}-temp").validate().expect("valid");
    }

    #[test]
    fn bad_filter_names_the_mapping_field() {
        let err = with_mapping("a/#/b", "/default/a").validate().expect_err("invalid");
        assert_eq!(field_of(err), "connector.mappings[0].filter");
    }

    #[test]
    fn template_level_beyond_a_wildcard_filter_is_rejected() {
        let err = with_mapping("a/+", "/default/x-{5}").validate().expect_err("invalid");
        assert_eq!(field_of(err), "connector.mappings[0].topic");
    }

    #[test]
    fn client_mode_needs_mappings() {
        let err = MqttConfig::default().validate().expect_err("invalid");
        assert_eq!(field_of(err), "connector.mappings");
    }

    #[test]
    fn qos_2_is_refused_when_parsing() {
        let parsed: Result<Mapping, _> =
            serde_json::from_value(serde_json::json!({"filter": "a", "topic": "/default/a", "qos": 2}));
        assert!(parsed.is_err());
    }

    #[test]
    fn both_ways_back_to_the_source_topic_is_refused() {
        let mut cfg = with_mapping("in/#", "/default/in-{1}");
        cfg.outbound = serde_json::from_value(serde_json::json!({})).expect("outbound");
        let err = cfg.check_both_ways(&["/default/in-x".to_string()]).expect_err("a loop");
        assert_eq!(field_of(err), "connector.outbound.topic");
        // Not fed by a mapping, another template, or no inbound: no loop.
        cfg.check_both_ways(&["/default/commands".to_string()]).expect("no mapping renders it");
        let mut echo = cfg.clone();
        echo.outbound = serde_json::from_value(serde_json::json!({"topic": "echo/{key}"})).expect("outbound");
        echo.check_both_ways(&["/default/in-x".to_string()]).expect("another MQTT topic");
        cfg.mode = Mode::Off;
        cfg.check_both_ways(&["/default/in-x".to_string()]).expect("outbound only");
    }

    #[test]
    fn embedded_on_a_public_address_needs_users_or_the_explicit_opt_in() {
        let mut cfg = with_mapping("a", "/default/a");
        cfg.mode = Mode::Embedded;
        assert_eq!(cfg.embedded.listen.to_string(), "127.0.0.1:1883", "loopback by default");
        cfg.validate().expect("loopback without users is fine");
        cfg.embedded.listen = "0.0.0.0:1883".parse().expect("addr");
        assert_eq!(field_of(cfg.validate().expect_err("open on 0.0.0.0")), "connector.embedded.allow_anonymous");
        cfg.embedded.allow_anonymous = true;
        cfg.validate().expect("explicitly open");
        cfg.embedded.users.insert("dev".into(), Secret::new("pw"));
        assert_eq!(field_of(cfg.validate().expect_err("both")), "connector.embedded.allow_anonymous");
        cfg.embedded.allow_anonymous = false;
        cfg.validate().expect("with users");
        cfg.embedded.users.insert("empty".into(), Secret::new(""));
        assert_eq!(field_of(cfg.validate().expect_err("empty password")), "connector.embedded.users.empty");
    }

    #[test]
    fn password_without_username_names_the_field() {
        let mut cfg = with_mapping("a", "/default/a");
        cfg.broker.password = Some(Secret::new("x"));
        assert_eq!(field_of(cfg.validate().expect_err("invalid")), "connector.broker.password");
    }
}
