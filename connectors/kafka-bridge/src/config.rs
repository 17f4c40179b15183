//! The `[connector]` section of the Kafka bridge: the Kafka connection, the import mappings
//! (Kafka → Danube) and the export settings (Danube → Kafka).
//!
//! Export reads the Danube topics listed in the runtime's `sink.topics`; import runs when
//! `import.mappings` is not empty. One process may do both.

use std::collections::BTreeMap;
use std::time::Duration;

use danube_connect_core::config::{validate_topic, ConfigError, RuntimeConfig, Validate};
use danube_connect_core::template::{self, Placeholder, RecordField, Template, TemplateError};
use danube_connect_core::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The attribute (Danube) and header (Kafka) that names the bridge a record came through.
pub const DEFAULT_ORIGIN_ATTRIBUTE: &str = "danube-connect-origin";

/// The whole `[connector]` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// The Kafka cluster and librdkafka properties shared by the consumer and the producer.
    pub kafka: KafkaConfig,
    /// This bridge's identity for loop protection; default: the connector `name`.
    /// Records carry it in the origin attribute/header, and a record that already carries
    /// it is not sent back to the topic it came from (export compares the `kafka.topic`
    /// attribute with its target, import the `danube.topic` header with its mapping).
    pub bridge_id: Option<String>,
    /// Name of the origin attribute (Danube) and header (Kafka).
    pub origin_attribute: OriginAttribute,
    /// Kafka → Danube.
    pub import: ImportConfig,
    /// Danube → Kafka (the Danube topics are the runtime's `sink.topics`).
    pub export: ExportConfig,
}

/// The origin attribute name (a newtype so it has its own default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OriginAttribute(/** The attribute/header name. */ pub String);

impl Default for OriginAttribute {
    fn default() -> Self {
        Self(DEFAULT_ORIGIN_ATTRIBUTE.to_string())
    }
}

/// How to reach Kafka.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]` (librdkafka `bootstrap.servers`).
    pub bootstrap_servers: String,
    /// Any librdkafka property, passed through to both the consumer and the producer
    /// (`security.protocol`, `sasl.mechanisms`, `ssl.ca.location`, ...). By environment:
    /// `KAFKA_BRIDGE_KAFKA__PROPERTIES__SECURITY_PROTOCOL=SASL_SSL` (`_` in the last part
    /// becomes `.`; librdkafka property names contain no `_`). The values of librdkafka's
    /// sensitive properties ([`SENSITIVE_PROPERTIES`]: `sasl.password`,
    /// `ssl.key.password`, ...) and every value read from `{ env = "VAR" }` or
    /// `{ file = "/path" }` are held as a [`Secret`]: redacted in `--check`, logs and `Debug`.
    pub properties: KafkaProperties,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self { bootstrap_servers: "127.0.0.1:9092".into(), properties: KafkaProperties::default() }
    }
}

/// Where a consumer group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest record still in the partition (what a migration usually wants).
    Earliest,
    /// Only records produced after the group first joined.
    Latest,
}

impl StartFrom {
    /// The librdkafka `auto.offset.reset` value.
    pub fn as_reset(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// Kafka → Danube.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportConfig {
    /// The Kafka consumer group (`group.id`); bridges sharing it split the partitions.
    pub group_id: String,
    /// Where a new group starts: `earliest` (default) or `latest`.
    pub start_from: StartFrom,
    /// Which Kafka topics go to which Danube topic; the first matching mapping wins.
    pub mappings: Vec<ImportMapping>,
    /// Records returned by one poll, at most.
    pub max_poll_records: usize,
    /// How long one poll waits for the first record when Kafka is idle.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// Extra librdkafka properties for the consumer only (override `kafka.properties`).
    pub properties: KafkaProperties,
}

impl Default for ImportConfig {
    fn default() -> Self {
        Self {
            group_id: "danube-kafka-bridge".into(),
            start_from: StartFrom::Earliest,
            mappings: Vec::new(),
            max_poll_records: 500,
            poll_timeout: Duration::from_millis(500),
            properties: KafkaProperties::default(),
        }
    }
}

/// One import mapping: Kafka topics (by name or regex) → a Danube topic template.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportMapping {
    /// Kafka topic names.
    pub topics: Vec<String>,
    /// A regex over Kafka topic names (e.g. `^orders\..*`); librdkafka re-checks it as
    /// topics appear.
    pub pattern: Option<String>,
    /// The Danube topic template (the shared grammar, `docs/templates.md`): `{topic}` is
    /// the Kafka topic name, sanitized to one topic part (default `/default/{topic}`).
    pub danube_topic: Option<String>,
}

/// The one placeholder of an import template: `{topic}`, the Kafka topic name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaTopicName;

impl ImportMapping {
    /// The Danube topic template in effect.
    pub fn template(&self) -> &str {
        self.danube_topic.as_deref().unwrap_or("/default/{topic}")
    }

    /// The template in effect, parsed.
    pub fn compile_template(&self) -> Result<Template<KafkaTopicName>, TemplateError> {
        Template::parse(self.template(), |placeholder| {
            placeholder.no_modifier()?;
            match placeholder.name.as_str() {
                "topic" => Ok(KafkaTopicName),
                _ => Err("unknown placeholder; use {topic} (the Kafka topic name)".into()),
            }
        })
    }
}

/// Producer compression (librdkafka `compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Danube → Kafka.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// The Kafka topic for a record, a template of the shared grammar
    /// (`docs/templates.md`): `{namespace}` and `{topic}` (the Danube topic's name) of the
    /// record's topic (default `{topic}`).
    pub topic_template: String,
    /// Explicit Danube topic → Kafka topic names (win over `topic_template`).
    pub topics: BTreeMap<String, String>,
    /// `none` (default), `gzip`, `snappy`, `lz4` or `zstd`.
    pub compression: Compression,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long librdkafka may try to deliver one record (`message.timeout.ms`) before
    /// the delivery report fails; the runtime then retries it.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Extra librdkafka properties for the producer only (override `kafka.properties`).
    /// `enable.idempotence=true` and `acks=all` are set by the bridge; validation refuses
    /// other values for them here and in `kafka.properties`.
    pub properties: KafkaProperties,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            topic_template: "{topic}".into(),
            topics: BTreeMap::new(),
            compression: Compression::None,
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(30),
            properties: KafkaProperties::default(),
        }
    }
}

impl ExportConfig {
    /// The Kafka topic names, `topic_template` parsed.
    pub fn kafka_topics(&self) -> Result<KafkaTopics, TemplateError> {
        let template =
            Template::parse(&self.topic_template, |placeholder: &Placeholder| {
                match RecordField::parse_plain(placeholder)? {
                    field @ (RecordField::Topic | RecordField::Namespace) => Ok(field),
                    _ => Err("a Kafka topic is made of {namespace} and {topic} only".into()),
                }
            })?;
        Ok(KafkaTopics { template, topics: self.topics.clone() })
    }
}

/// The Kafka topic of each Danube topic: `export.topics`, else `export.topic_template`.
#[derive(Debug, Clone)]
pub struct KafkaTopics {
    template: Template<RecordField>,
    topics: BTreeMap<String, String>,
}

impl KafkaTopics {
    /// The Kafka topic a record of Danube topic `danube_topic` goes to.
    pub fn kafka_topic(&self, danube_topic: &str) -> String {
        if let Some(explicit) = self.topics.get(danube_topic) {
            return explicit.clone();
        }
        let (namespace, topic) = template::split_topic(danube_topic);
        let rendered: Result<String, std::convert::Infallible> = self.template.render(|field, out| {
            out.push_str(if *field == RecordField::Namespace { namespace } else { topic });
            Ok(())
        });
        rendered.unwrap_or_else(|never| match never {})
    }
}

/// The librdkafka properties whose values are secrets (those librdkafka itself marks
/// sensitive, and the OAuth/OIDC client secrets): always held as a [`Secret`].
pub const SENSITIVE_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
];

/// One property value: plain, or a [`Secret`] (redacted in `Debug` and serialized output).
#[derive(Clone, PartialEq, Eq)]
pub enum PropertyValue {
    /// A value that may be shown.
    Plain(String),
    /// A secret: a sensitive property, or a value read from the environment or a file.
    Secret(Secret),
}

impl PropertyValue {
    /// The value; never log it.
    pub fn expose(&self) -> &str {
        match self {
            Self::Plain(value) => value,
            Self::Secret(secret) => secret.expose(),
        }
    }

    /// Whether the value is redacted wherever it is shown.
    pub fn is_secret(&self) -> bool {
        matches!(self, Self::Secret(_))
    }
}

impl From<&str> for PropertyValue {
    fn from(value: &str) -> Self {
        Self::Plain(value.to_string())
    }
}

impl std::fmt::Debug for PropertyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(value) => value.fmt(f),
            Self::Secret(secret) => secret.fmt(f),
        }
    }
}

impl Serialize for PropertyValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Plain(value) => serializer.serialize_str(value),
            Self::Secret(secret) => secret.serialize(serializer),
        }
    }
}

/// librdkafka properties: a flat `name → value` map.
///
/// Accepts nested tables (`security = { protocol = "SSL" }` → `security.protocol`), and
/// turns `_` into `.` (for environment variables, which cannot hold dots), so
/// `SECURITY_PROTOCOL` becomes `security.protocol`. Numbers and booleans become strings.
/// A value may be read from elsewhere: `{ env = "VAR" }` or `{ file = "/run/secrets/x" }`
/// (then it is a secret, as are the values of [`SENSITIVE_PROPERTIES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KafkaProperties(/** Property name → value. */ pub BTreeMap<String, PropertyValue>);

impl KafkaProperties {
    /// Whether a property's value is always a secret (librdkafka's sensitive properties).
    pub fn is_sensitive(name: &str) -> bool {
        SENSITIVE_PROPERTIES.contains(&name)
    }

    /// The properties as `(name, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &str)> {
        self.0.iter().map(|(name, value)| (name, value.expose()))
    }

    /// The value of property `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(PropertyValue::expose)
    }

    /// Sets property `name` (a secret when [`is_sensitive`](Self::is_sensitive)).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        let value = if Self::is_sensitive(&name) {
            PropertyValue::Secret(Secret::new(value))
        } else {
            PropertyValue::Plain(value)
        };
        self.0.insert(name, value);
    }
}

impl<'de> Deserialize<'de> for KafkaProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = serde_json::Value::deserialize(deserializer)?;
        let mut flat = BTreeMap::new();
        flatten_properties("", &raw, &mut flat).map_err(serde::de::Error::custom)?;
        let mut out = Self::default();
        for (name, value) in flat {
            match value {
                PropertyValue::Plain(value) => out.insert(name, value),
                secret => {
                    out.0.insert(name, secret);
                }
            }
        }
        Ok(out)
    }
}

fn flatten_properties(
    prefix: &str,
    value: &serde_json::Value,
    out: &mut BTreeMap<String, PropertyValue>,
) -> Result<(), String> {
    use serde_json::Value;
    match value {
        // `{ env = "VAR" }` / `{ file = "/run/secrets/x" }`: the value comes from there
        // (no librdkafka property name ends in `.env` or `.file`).
        Value::Object(map)
            if !prefix.is_empty() && map.len() == 1 && (map.contains_key("env") || map.contains_key("file")) =>
        {
            let secret: Secret =
                serde_json::from_value(value.clone()).map_err(|e| format!("property `{prefix}`: {e}"))?;
            out.insert(prefix.to_string(), PropertyValue::Secret(secret));
            Ok(())
        }
        Value::Object(map) => {
            for (key, inner) in map {
                let key = key.replace('_', ".");
                let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                flatten_properties(&name, inner, out)?;
            }
            Ok(())
        }
        Value::Null if prefix.is_empty() => Ok(()),
        _ if prefix.is_empty() => Err("expected a table of librdkafka properties".into()),
        Value::String(s) => {
            out.insert(prefix.to_string(), PropertyValue::Plain(s.clone()));
            Ok(())
        }
        Value::Bool(b) => {
            out.insert(prefix.to_string(), PropertyValue::Plain(b.to_string()));
            Ok(())
        }
        Value::Number(n) => {
            out.insert(prefix.to_string(), PropertyValue::Plain(n.to_string()));
            Ok(())
        }
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => parts.push(s.clone()),
                    Value::Number(_) | Value::Bool(_) => parts.push(item.to_string()),
                    _ => return Err(format!("property `{prefix}`: list items must be scalars")),
                }
            }
            out.insert(prefix.to_string(), PropertyValue::Plain(parts.join(",")));
            Ok(())
        }
        Value::Null => Err(format!("property `{prefix}` has no value")),
    }
}

const OFFSETS_REASON: &str =
    "is set by the bridge (offsets are committed only after Danube acked); use import.group_id for the group";

/// Consumer properties the bridge sets itself, with why; overriding them would break its
/// guarantees.
const RESERVED_CONSUMER: &[(&str, &str)] = &[
    ("enable.auto.commit", OFFSETS_REASON),
    ("enable.auto.offset.store", OFFSETS_REASON),
    ("group.id", OFFSETS_REASON),
    (
        "auto.offset.reset",
        "is set by the bridge from connector.import.start_from (`earliest` or `latest`); use that instead",
    ),
];

/// Producer properties the export relies on, with the only values it accepts (first: the
/// one it sets). `request.required.acks` is librdkafka's other name for `acks`.
const PINNED_PRODUCER: &[(&str, &[&str])] =
    &[("enable.idempotence", &["true"]), ("acks", &["all", "-1"]), ("request.required.acks", &["all", "-1"])];

fn validate_properties(field: &str, properties: &KafkaProperties) -> Result<(), ConfigError> {
    for (name, value) in properties.iter() {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.') {
            return Err(ConfigError::invalid(
                format!("{field}.{name}"),
                "must be a librdkafka property name (lowercase, dot-separated)",
            ));
        }
        if value.is_empty() {
            return Err(ConfigError::invalid(format!("{field}.{name}"), "must not be empty"));
        }
    }
    Ok(())
}

impl Validate for BridgeConfig {
    fn validate_with_runtime(&self, runtime: &RuntimeConfig) -> Result<(), ConfigError> {
        if self.import.mappings.is_empty() && runtime.sink.topics.is_empty() {
            return Err(ConfigError::invalid(
                "connector.import.mappings",
                "nothing to do: add an import mapping (Kafka → Danube) or `sink.topics` (Danube → Kafka)",
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::invalid(
                "connector.kafka.bootstrap_servers",
                "must list at least one host:port (e.g. 127.0.0.1:9092)",
            ));
        }
        for server in self.kafka.bootstrap_servers.split(',') {
            let server = server.trim();
            let server = server.rsplit_once("://").map_or(server, |(_, rest)| rest);
            let port_ok =
                server.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(ConfigError::invalid(
                    "connector.kafka.bootstrap_servers",
                    format!("`{server}` must have the form host:port"),
                ));
            }
        }
        validate_properties("connector.kafka.properties", &self.kafka.properties)?;
        validate_properties("connector.import.properties", &self.import.properties)?;
        validate_properties("connector.export.properties", &self.export.properties)?;
        let consumer_sides = [
            ("connector.kafka.properties", &self.kafka.properties),
            ("connector.import.properties", &self.import.properties),
        ];
        for (field, props) in consumer_sides {
            if let Some((name, reason)) = RESERVED_CONSUMER.iter().find(|(name, _)| props.0.contains_key(*name)) {
                return Err(ConfigError::invalid(format!("{field}.{name}"), *reason));
            }
        }
        let producer_sides = [
            ("connector.kafka.properties", &self.kafka.properties),
            ("connector.export.properties", &self.export.properties),
        ];
        for (field, props) in producer_sides {
            for (name, allowed) in PINNED_PRODUCER {
                if let Some(value) = props.get(name) {
                    if !allowed.contains(&value.trim().to_ascii_lowercase().as_str()) {
                        return Err(ConfigError::invalid(
                            format!("{field}.{name}"),
                            format!(
                                "must stay `{}` (the export acks a Danube message only after Kafka stored it durably \
                                 and without duplicates from librdkafka retries); remove the property",
                                allowed[0]
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(id) = &self.bridge_id {
            if id.is_empty() {
                return Err(ConfigError::invalid("connector.bridge_id", "must not be empty"));
            }
        }
        if self.origin_attribute.0.is_empty() {
            return Err(ConfigError::invalid("connector.origin_attribute", "must not be empty"));
        }
        if !self.import.mappings.is_empty() && self.import.group_id.is_empty() {
            return Err(ConfigError::invalid("connector.import.group_id", "must not be empty"));
        }
        if self.import.max_poll_records == 0 {
            return Err(ConfigError::invalid("connector.import.max_poll_records", "must be at least 1"));
        }
        if self.import.poll_timeout.is_zero() || self.import.poll_timeout > Duration::from_secs(5) {
            return Err(ConfigError::invalid("connector.import.poll_timeout", "must be between 1ms and 5s"));
        }
        for (i, mapping) in self.import.mappings.iter().enumerate() {
            let field = format!("connector.import.mappings[{i}]");
            if mapping.topics.is_empty() && mapping.pattern.is_none() {
                return Err(ConfigError::invalid(format!("{field}.topics"), "set `topics` or `pattern`"));
            }
            for (j, topic) in mapping.topics.iter().enumerate() {
                if !is_kafka_topic_name(topic) {
                    return Err(ConfigError::invalid(
                        format!("{field}.topics[{j}]"),
                        format!("`{topic}` is not a Kafka topic name (letters, digits, '.', '_', '-')"),
                    ));
                }
            }
            if let Some(pattern) = &mapping.pattern {
                if let Err(e) = regex::Regex::new(pattern) {
                    return Err(ConfigError::invalid(format!("{field}.pattern"), format!("not a valid regex: {e}")));
                }
            }
            let example =
                mapping.compile_template().map_err(|e| e.for_field(format!("{field}.danube_topic")))?.sample("t");
            validate_topic(&format!("{field}.danube_topic"), &example)?;
            if !danube_connect_core::naming::is_valid_topic(&example) {
                return Err(ConfigError::invalid(
                    format!("{field}.danube_topic"),
                    format!(
                        "`{}`: the Danube broker accepts only letters, digits, `_` and `-` in the namespace and \
                         the topic name (`{{topic}}` is sanitized to them)",
                        mapping.template()
                    ),
                ));
            }
        }
        if self.export.topic_template.is_empty() {
            return Err(ConfigError::invalid("connector.export.topic_template", "must not be empty"));
        }
        let example = self
            .export
            .kafka_topics()
            .map_err(|e| e.for_field("connector.export.topic_template"))?
            .kafka_topic("/default/t");
        if !is_kafka_topic_name(&example) {
            return Err(ConfigError::invalid(
                "connector.export.topic_template",
                format!(
                    "`{}` does not expand to a Kafka topic name (e.g. `{example}`): use letters, digits, '.', '_', '-' \
                     around `{{namespace}}` and `{{topic}}`",
                    self.export.topic_template
                ),
            ));
        }
        for (danube, kafka) in &self.export.topics {
            validate_topic(&format!("connector.export.topics.\"{danube}\""), danube)?;
            if !is_kafka_topic_name(kafka) {
                return Err(ConfigError::invalid(
                    format!("connector.export.topics.\"{danube}\""),
                    format!("`{kafka}` is not a Kafka topic name"),
                ));
            }
        }
        if self.export.delivery_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid("connector.export.delivery_timeout", "must be at least 1s"));
        }
        if self.export.linger > Duration::from_secs(10) {
            return Err(ConfigError::invalid("connector.export.linger", "must be at most 10s"));
        }
        Ok(())
    }
}

/// Whether `name` is a legal Kafka topic name.
pub fn is_kafka_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_mapping(mapping: ImportMapping) -> BridgeConfig {
        let mut config = BridgeConfig::default();
        config.import.mappings.push(mapping);
        config
    }

    #[test]
    fn mapping_without_topics_or_pattern_names_the_field() {
        let err = with_mapping(ImportMapping::default()).validate().expect_err("must fail");
        assert!(err.to_string().contains("connector.import.mappings[0].topics"), "{err}");
    }

    #[test]
    fn bad_regex_names_the_field() {
        let err = with_mapping(ImportMapping { pattern: Some("(".into()), ..Default::default() })
            .validate()
            .expect_err("must fail");
        assert!(err.to_string().contains("connector.import.mappings[0].pattern"), "{err}");
    }

    #[test]
    fn danube_template_the_broker_would_refuse_is_rejected() {
        let err = with_mapping(ImportMapping {
            topics: vec!["a".into()],
            danube_topic: Some("/default/kafka.{topic}".into()),
            ..Default::default()
        })
        .validate()
        .expect_err("`.` is refused by the broker");
        assert!(err.to_string().contains("connector.import.mappings[0].danube_topic"), "{err}");
    }

    #[test]
    fn danube_template_without_namespace_is_rejected() {
        let err = with_mapping(ImportMapping {
            topics: vec!["a".into()],
            danube_topic: Some("{topic}".into()),
            ..Default::default()
        })
        .validate()
        .expect_err("must fail");
        assert!(err.to_string().contains("danube_topic"), "{err}");
    }

    #[test]
    fn auto_commit_cannot_be_turned_on() {
        let mut config = BridgeConfig::default();
        config.kafka.properties.insert("enable.auto.commit", "true");
        let err = config.validate().expect_err("must fail");
        assert!(err.to_string().contains("enable.auto.commit"), "{err}");
    }

    #[test]
    fn reserved_consumer_property_in_import_properties_names_that_field() {
        let mut config = BridgeConfig::default();
        config.import.properties.insert("group.id", "other");
        let err = config.validate().expect_err("must fail");
        assert!(err.to_string().contains("connector.import.properties.group.id"), "{err}");
    }

    #[test]
    fn auto_offset_reset_is_refused_pointing_to_start_from() {
        for field in ["kafka", "import"] {
            let mut config = BridgeConfig::default();
            let props = if field == "kafka" { &mut config.kafka.properties } else { &mut config.import.properties };
            props.0.insert("auto.offset.reset".into(), "latest".into());
            let err = config.validate().expect_err("must fail").to_string();
            assert!(err.contains(&format!("connector.{field}.properties.auto.offset.reset")), "{err}");
            assert!(err.contains("start_from"), "{err}");
        }
    }

    #[test]
    fn export_guarantee_overrides_are_refused_naming_the_field() {
        for (name, value) in
            [("enable.idempotence", "false"), ("acks", "1"), ("acks", "0"), ("request.required.acks", "1")]
        {
            for field in ["kafka", "export"] {
                let mut config = BridgeConfig::default();
                let props = if field == "kafka" { &mut config.kafka.properties } else { &mut config.export.properties };
                props.0.insert(name.into(), value.into());
                let err = config.validate().expect_err("must fail").to_string();
                assert!(err.contains(&format!("connector.{field}.properties.{name}")), "{name}={value}: {err}");
            }
        }
    }

    #[test]
    fn export_guarantee_properties_may_repeat_the_bridge_values() {
        let mut config = BridgeConfig::default();
        config.export.properties.0.insert("enable.idempotence".into(), "true".into());
        config.export.properties.0.insert("acks".into(), "all".into());
        config.kafka.properties.0.insert("request.required.acks".into(), "-1".into());
        config.validate().expect("the values the bridge sets itself are accepted");
    }

    #[test]
    fn export_template_that_expands_to_an_invalid_kafka_name_is_refused() {
        for template in ["{namespace}/{topic}", "kafka {topic}", "{topic}:x"] {
            let mut config = BridgeConfig::default();
            config.export.topic_template = template.into();
            let err = config.validate().expect_err("must fail").to_string();
            assert!(err.contains("connector.export.topic_template"), "{template}: {err}");
        }
        let mut config = BridgeConfig::default();
        config.export.topic_template = "danube.{namespace}.{topic}".into();
        config.validate().expect("a dotted template is a valid kafka name");
    }

    #[test]
    fn bootstrap_without_port_names_the_field() {
        let mut config = BridgeConfig::default();
        config.kafka.bootstrap_servers = "localhost".into();
        let err = config.validate().expect_err("must fail");
        assert!(err.to_string().contains("connector.kafka.bootstrap_servers"), "{err}");
    }

    #[test]
    fn properties_flatten_nested_tables_and_underscores() {
        let props: KafkaProperties = serde_json::from_value(serde_json::json!({
            "security_protocol": "SASL_SSL",
            "sasl": { "mechanisms": "PLAIN", "password": "hunter2" },
            "fetch.max.bytes": 1048576,
        }))
        .expect("parse");
        assert_eq!(props.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(props.get("sasl.mechanisms"), Some("PLAIN"));
        assert_eq!(props.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(props.get("sasl.password"), Some("hunter2"));
        let shown = serde_json::to_string(&props).expect("serialize");
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
        assert!(!format!("{props:?}").contains("hunter2"), "Debug redacts too");
    }

    #[test]
    fn secrets_are_typed_not_guessed_from_the_name() {
        let props: KafkaProperties = serde_json::from_value(serde_json::json!({
            "ssl.key.password": "k-pass",
            "sasl.oauthbearer.client.secret": "oidc-secret",
            "ssl.key.location": "/etc/kafka/client.key",
            "client.id": { "env": "PATH" },
        }))
        .expect("parse");
        assert!(props.0["ssl.key.password"].is_secret() && props.0["sasl.oauthbearer.client.secret"].is_secret());
        assert!(!props.0["ssl.key.location"].is_secret(), "a path is not a secret because its name holds `key`");
        assert!(props.0["client.id"].is_secret(), "a value read from the environment is");
        let shown = serde_json::to_string(&props).expect("serialize");
        assert!(shown.contains("/etc/kafka/client.key"), "{shown}");
        assert!(!shown.contains("k-pass") && !shown.contains("oidc-secret"), "{shown}");
    }

    #[test]
    fn property_value_can_come_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        let props: KafkaProperties =
            serde_json::from_value(serde_json::json!({ "sasl.password": { "file": file } })).expect("parse");
        assert_eq!(props.get("sasl.password"), Some("s3cret"));
        assert!(props.0["sasl.password"].is_secret());
    }

    #[test]
    fn export_topic_template_uses_namespace_and_topic() {
        let mut export = ExportConfig { topic_template: "{namespace}.{topic}".into(), ..Default::default() };
        assert_eq!(export.kafka_topics().expect("parse").kafka_topic("/default/orders"), "default.orders");
        export.topics.insert("/default/orders".into(), "legacy-orders".into());
        assert_eq!(export.kafka_topics().expect("parse").kafka_topic("/default/orders"), "legacy-orders");
        assert_eq!(ExportConfig::default().kafka_topics().expect("parse").kafka_topic("/default/x"), "x");
        let bad = ExportConfig { topic_template: "{key}".into(), ..Default::default() };
        assert!(bad.kafka_topics().is_err());
    }
}
