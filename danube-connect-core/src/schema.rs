//! Schemas in the runtime: topics bound to registry subjects, validated on the way in and
//! decoded on the way out.
//!
//! - **Sources**: each `[[schemas]]` binding ties a topic to a subject of the Danube schema
//!   registry. At start the runtime registers the binding's definition file (a new version
//!   when it changed; the registry refuses an incompatible change and the connector does not
//!   start) or looks up an existing version. Every record published to the topic is validated
//!   first: an invalid record never enters the topic, `publish` answers
//!   [`PublishError::Invalid`](crate::PublishError::Invalid) (an HTTP source answers 400) and a
//!   pull source's record follows the failure policy (dead-letter, `dlq.kind = invalid`). Its
//!   producers reference the subject version, so each message carries `schema_id` /
//!   `schema_version`.
//! - **Sinks**: a record carrying `schema_id` is decoded with the registry's schema (fetched
//!   once per id and version, then cached; a lookup without a version is asked again after
//!   [`LATEST_TTL`]) into [`SinkRecord::value`](crate::SinkRecord::value) before `process`; a
//!   record that does not decode follows the failure policy.
//!
//! - **Run-time registration**: a source that learns its record shapes while running (a CDC
//!   source reading table metadata) registers a definition with
//!   [`Publisher::register_schema`](crate::Publisher::register_schema) and attaches the
//!   returned [`BoundSchema`] to its records with
//!   [`SourceRecord::with_schema`](crate::SourceRecord::with_schema). Such a record is
//!   validated against that schema instead of the topic's `[[schemas]]` binding, and its
//!   producer references that subject version, so each message carries the version it was
//!   validated against (records queued before a new version keep theirs).
//!
//! The codecs themselves (JSON Schema, Avro, Protobuf, string, number, bytes) live in
//! [`danube_connect_common::schema`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use danube_client::errors::DanubeError;
use danube_client::SchemaType;
pub use danube_connect_common::schema::{CompatibilityMode, Schema, SchemaError, SchemaKind};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::client::{DanubeConnection, SchemaRegistry};
use crate::config::{validate_topic, ConfigError, Validate};
use crate::error::{ClientError, ConnectorError};
use crate::record::SinkRecord;

/// Binds a Danube topic to a schema-registry subject (`[[schemas]]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaBinding {
    /// The topic whose records use the schema (`/default/orders`).
    pub topic: String,
    /// The registry subject (`orders-value`).
    pub subject: String,
    /// The schema type: `json_schema`, `avro`, `protobuf`, `string`, `number` or `bytes`.
    /// Required with `file`; otherwise taken from the registry.
    #[serde(rename = "type", default)]
    pub schema_type: Option<SchemaKind>,
    /// A definition to register at start (a new version if it differs from the latest).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Use this existing version instead of the latest (only without `file`).
    #[serde(default)]
    pub version: Option<u32>,
    /// Validate each record before publishing (default true).
    #[serde(default = "default_true")]
    pub validate: bool,
    /// What sources hand in: `wire` (default) — payloads already in the schema's encoding;
    /// `json` — JSON payloads the runtime encodes into it (e.g. JSON webhooks into an Avro
    /// topic), validating them on the way.
    #[serde(default)]
    pub input: PayloadInput,
    /// Set the subject's compatibility mode before registering (`none`, `backward`,
    /// `forward`, `full`); unset keeps the registry's.
    #[serde(default)]
    pub compatibility: Option<CompatibilityMode>,
    /// Protobuf: the payload message's full name (default: the first message of the file).
    #[serde(default)]
    pub message: Option<String>,
}

/// The form in which a source hands payloads of a bound topic to the runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadInput {
    /// Already in the schema's wire encoding (Avro binary, Protobuf binary, JSON text, ...).
    #[default]
    Wire,
    /// JSON, encoded into the schema's wire encoding before publishing.
    Json,
}

fn default_true() -> bool {
    true
}

impl SchemaBinding {
    /// A binding of `topic` to the latest version of `subject`.
    pub fn new(topic: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            subject: subject.into(),
            schema_type: None,
            file: None,
            version: None,
            validate: true,
            input: PayloadInput::Wire,
            compatibility: None,
            message: None,
        }
    }

    /// Takes JSON payloads and encodes them into the schema's wire format.
    pub fn with_json_input(mut self) -> Self {
        self.input = PayloadInput::Json;
        self
    }

    /// Registers the definition in `file`, of `schema_type`, at start.
    pub fn with_file(mut self, schema_type: SchemaKind, file: impl Into<PathBuf>) -> Self {
        self.schema_type = Some(schema_type);
        self.file = Some(file.into());
        self
    }

    /// Checks the binding (`field` is its path, e.g. `schemas[0]`), compiling its file.
    pub fn check(&self, field: &str) -> Result<(), ConfigError> {
        validate_topic(&format!("{field}.topic"), &self.topic)?;
        if self.subject.trim().is_empty() {
            return Err(ConfigError::invalid(format!("{field}.subject"), "must not be empty"));
        }
        match &self.file {
            Some(_) if self.version.is_some() => Err(ConfigError::invalid(
                format!("{field}.version"),
                "set either `file` (register it) or `version` (use an existing one), not both",
            )),
            Some(_) => self.load_file(field).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Reads and compiles the definition file.
    fn load_file(&self, field: &str) -> Result<Option<Schema>, ConfigError> {
        let Some(path) = &self.file else { return Ok(None) };
        let kind = self.schema_type.ok_or_else(|| {
            ConfigError::invalid(format!("{field}.type"), "required with `file` (json_schema, avro, protobuf, ...)")
        })?;
        let definition = std::fs::read(path).map_err(|e| {
            ConfigError::invalid(format!("{field}.file"), format!("cannot read {}: {e}", path.display()))
        })?;
        compile(kind, &definition, self.message.as_deref())
            .map(Some)
            .map_err(|e| ConfigError::invalid(format!("{field}.file"), e.to_string()))
    }
}

impl Validate for Vec<SchemaBinding> {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, binding) in self.iter().enumerate() {
            binding.check(&format!("schemas[{i}]"))?;
            if self[..i].iter().any(|b| b.topic == binding.topic) {
                return Err(ConfigError::invalid(
                    format!("schemas[{i}].topic"),
                    format!("`{}` is bound twice", binding.topic),
                ));
            }
        }
        Ok(())
    }
}

/// The definition as it was registered. Danube v0.15's registry answers `GetSchema` and
/// `GetLatestSchema` with the JSON of its own `SchemaDefinition` enum
/// (`{"Avro":{"raw_schema":"...","fingerprint":"..."}}`, `{"JsonSchema":{...}}`,
/// `{"Protobuf":{"raw_proto":"...",...}}`) instead of the bytes that were registered; the
/// development broker answers with the bytes. Either form gives the registered text here.
pub fn registered_definition(answer: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    #[derive(Deserialize)]
    enum Wrapped {
        Avro { raw_schema: String },
        JsonSchema { raw_schema: String },
        Protobuf { raw_proto: String },
    }
    match serde_json::from_slice::<Wrapped>(answer) {
        Ok(Wrapped::Avro { raw_schema } | Wrapped::JsonSchema { raw_schema }) => raw_schema.into_bytes().into(),
        Ok(Wrapped::Protobuf { raw_proto }) => raw_proto.into_bytes().into(),
        Err(_) => answer.into(),
    }
}

fn compile(kind: SchemaKind, definition: &[u8], message: Option<&str>) -> Result<Schema, SchemaError> {
    match kind {
        SchemaKind::Protobuf => Schema::compile_protobuf(definition, message),
        other => Schema::compile(other, definition),
    }
}

/// Why a schema binding could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum SchemaSetupError {
    /// The definition file is unreadable or invalid.
    #[error("schema for {topic}")]
    Definition {
        /// The bound topic.
        topic: String,
        /// What is wrong.
        #[source]
        source: ConfigError,
    },
    /// The registry refused or failed a call (e.g. an incompatible new version).
    #[error("schema registry: {action} for subject {subject}")]
    Registry {
        /// What was being done.
        action: &'static str,
        /// The subject.
        subject: String,
        /// The client error.
        #[source]
        source: ClientError,
    },
    /// A definition handed in at run time does not compile.
    #[error("schema definition for subject {subject}")]
    InvalidDefinition {
        /// The subject it was meant for.
        subject: String,
        /// The compile error.
        #[source]
        source: SchemaError,
    },
    /// The registry's definition does not compile here.
    #[error("registry schema of subject {subject} version {version}")]
    Compile {
        /// The subject.
        subject: String,
        /// Its version.
        version: u32,
        /// The compile error.
        #[source]
        source: SchemaError,
    },
}

impl SchemaSetupError {
    /// Whether trying again later may help: the registry was unreachable or answered with a
    /// transient failure. A refused definition (incompatible, invalid) is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Registry { source, .. } => crate::publisher::is_transient(source.inner()),
            Self::Definition { .. } | Self::InvalidDefinition { .. } | Self::Compile { .. } => false,
        }
    }
}

/// A topic's resolved schema: what producers reference and records are validated against.
#[derive(Debug, Clone)]
pub struct BoundSchema {
    /// The registry subject.
    pub subject: String,
    /// The registry's id of the subject.
    pub schema_id: u64,
    /// The version in use.
    pub version: u32,
    /// The compiled schema.
    pub schema: Schema,
    /// Whether records are validated before publishing.
    pub validate: bool,
    /// The form sources hand payloads in.
    pub input: PayloadInput,
}

/// Equal when they name the same subject version with the same definition and settings.
impl PartialEq for BoundSchema {
    fn eq(&self, other: &Self) -> bool {
        self.subject == other.subject
            && self.schema_id == other.schema_id
            && self.version == other.version
            && self.validate == other.validate
            && self.input == other.input
            && self.schema.definition() == other.schema.definition()
    }
}

impl BoundSchema {
    /// Registers `definition` (of `kind`) under `subject` — a new version when it differs
    /// from every registered one, else the matching existing version — and returns it bound
    /// for validation of wire payloads. `compatibility`, when set, becomes the subject's mode
    /// before the registration is checked.
    pub async fn register(
        connection: &DanubeConnection,
        subject: impl Into<String>,
        kind: SchemaKind,
        definition: &[u8],
        compatibility: Option<CompatibilityMode>,
    ) -> Result<Self, SchemaSetupError> {
        Self::register_with(connection.inner(), subject, kind, definition, compatibility).await
    }

    /// [`register`](Self::register) through the runtime's client.
    pub(crate) async fn register_with(
        client: &danube_client::DanubeClient,
        subject: impl Into<String>,
        kind: SchemaKind,
        definition: &[u8],
        compatibility: Option<CompatibilityMode>,
    ) -> Result<Self, SchemaSetupError> {
        let subject = subject.into();
        let schema = compile(kind, definition, None)
            .map_err(|source| SchemaSetupError::InvalidDefinition { subject: subject.clone(), source })?;
        let (schema_id, version) = register_definition(client, &subject, &schema, compatibility).await?;
        Ok(Self { subject, schema_id, version, schema, validate: true, input: PayloadInput::Wire })
    }

    /// Prepares a payload for publishing: encodes JSON input into the wire format, or
    /// validates wire input (when `validate` is on). Errors describe the violations.
    pub fn prepare(&self, payload: &bytes::Bytes) -> Result<Option<bytes::Bytes>, SchemaError> {
        match self.input {
            PayloadInput::Json => {
                let value: serde_json::Value =
                    serde_json::from_slice(payload).map_err(|e| SchemaError::InvalidPayload {
                        kind: self.schema.kind(),
                        violations: danube_connect_common::schema::Violations::one(
                            "",
                            format!("payload is not JSON: {e}"),
                        ),
                        source: None,
                    })?;
                self.schema.encode_from_json(&value).map(|encoded| Some(encoded.into()))
            }
            PayloadInput::Wire if self.validate => self.schema.validate(payload).map(|()| None),
            PayloadInput::Wire => Ok(None),
        }
    }
}

/// Resolved bindings by topic.
#[derive(Debug, Clone, Default)]
pub struct TopicSchemas {
    by_topic: HashMap<String, Arc<BoundSchema>>,
}

impl TopicSchemas {
    /// Registers or looks up every binding in the registry.
    pub async fn resolve(connection: &DanubeConnection, bindings: &[SchemaBinding]) -> Result<Self, SchemaSetupError> {
        let mut by_topic = HashMap::new();
        for (i, binding) in bindings.iter().enumerate() {
            let bound = resolve_one(connection.inner(), binding, &format!("schemas[{i}]")).await?;
            info!(topic = %binding.topic, subject = %bound.subject, schema_id = bound.schema_id,
                version = bound.version, "schema bound");
            by_topic.insert(binding.topic.clone(), Arc::new(bound));
        }
        Ok(Self { by_topic })
    }

    /// The schema bound to `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<&BoundSchema> {
        self.by_topic.get(topic).map(Arc::as_ref)
    }

    /// Whether no topic is bound.
    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

async fn resolve_one(
    client: &danube_client::DanubeClient,
    binding: &SchemaBinding,
    field: &str,
) -> Result<BoundSchema, SchemaSetupError> {
    let registry = client.schema();
    let subject = binding.subject.clone();
    let registry_error = |action: &'static str| {
        let subject = subject.clone();
        move |source: DanubeError| SchemaSetupError::Registry { action, subject, source: ClientError::new(source) }
    };
    let local = binding
        .load_file(field)
        .map_err(|source| SchemaSetupError::Definition { topic: binding.topic.clone(), source })?;
    if let Some(schema) = local {
        let (schema_id, version) = register_definition(client, &subject, &schema, binding.compatibility).await?;
        return Ok(BoundSchema {
            subject,
            schema_id,
            version,
            schema,
            validate: binding.validate,
            input: binding.input,
        });
    }
    let latest = registry.get_latest_schema(subject.clone()).await.map_err(registry_error("look up latest"))?;
    let info = match binding.version {
        Some(version) if version != latest.version => registry
            .get_schema_version(latest.schema_id, Some(version))
            .await
            .map_err(registry_error("look up version"))?,
        _ => latest,
    };
    let kind = info.schema_type.parse::<SchemaKind>().map_err(|e| SchemaSetupError::Compile {
        subject: subject.clone(),
        version: info.version,
        source: SchemaError::InvalidDefinition { kind: SchemaKind::Bytes, message: e.to_string(), source: None },
    })?;
    let schema = compile(kind, &registered_definition(&info.schema_definition), binding.message.as_deref())
        .map_err(|source| SchemaSetupError::Compile { subject: subject.clone(), version: info.version, source })?;
    Ok(BoundSchema {
        subject,
        schema_id: info.schema_id,
        version: info.version,
        schema,
        validate: binding.validate,
        input: binding.input,
    })
}

/// Registers a compiled definition under `subject` (setting its compatibility mode first
/// when the subject exists, right after its first version otherwise) and returns the
/// subject's id and the version holding the definition.
async fn register_definition(
    client: &danube_client::DanubeClient,
    subject: &str,
    schema: &Schema,
    compatibility: Option<CompatibilityMode>,
) -> Result<(u64, u32), SchemaSetupError> {
    let registry = client.schema();
    let registry_error = |action: &'static str| {
        move |source: DanubeError| SchemaSetupError::Registry {
            action,
            subject: subject.to_string(),
            source: ClientError::new(source),
        }
    };
    let existing = registry.get_latest_schema(subject.to_string()).await.ok();
    if let (Some(mode), Some(_)) = (compatibility, &existing) {
        registry
            .set_compatibility_mode(subject.to_string(), client_mode(mode))
            .await
            .map_err(registry_error("set compatibility mode"))?;
    }
    let schema_id = registry
        .register_schema(subject.to_string())
        .with_type(client_type(schema.kind()))
        .with_schema_data(schema.definition().to_vec())
        .execute()
        .await
        .map_err(registry_error("register"))?;
    if let (Some(mode), None) = (compatibility, &existing) {
        registry
            .set_compatibility_mode(subject.to_string(), client_mode(mode))
            .await
            .map_err(registry_error("set compatibility mode"))?;
    }
    let version = matching_version(client, subject, schema_id, schema.definition()).await?;
    Ok((schema_id, version))
}

/// The version of `subject` whose definition is `definition` (registering an existing
/// definition returns the subject id, not its version).
async fn matching_version(
    client: &danube_client::DanubeClient,
    subject: &str,
    schema_id: u64,
    definition: &[u8],
) -> Result<u32, SchemaSetupError> {
    let registry = client.schema();
    let lookup = |source| SchemaSetupError::Registry {
        action: "look up version",
        subject: subject.to_string(),
        source: ClientError::new(source),
    };
    let latest = registry.get_latest_schema(subject.to_string()).await.map_err(lookup)?;
    if *registered_definition(&latest.schema_definition) == *definition {
        return Ok(latest.version);
    }
    let versions = registry.list_versions(subject.to_string()).await.map_err(lookup)?;
    for version in versions.into_iter().rev() {
        let info = registry.get_schema_version(schema_id, Some(version)).await.map_err(lookup)?;
        if *registered_definition(&info.schema_definition) == *definition {
            return Ok(version);
        }
    }
    Ok(latest.version)
}

fn client_type(kind: SchemaKind) -> SchemaType {
    match kind {
        SchemaKind::JsonSchema => SchemaType::JsonSchema,
        SchemaKind::Avro => SchemaType::Avro,
        SchemaKind::Protobuf => SchemaType::Protobuf,
        SchemaKind::String => SchemaType::String,
        SchemaKind::Number => SchemaType::Number,
        SchemaKind::Bytes => SchemaType::Bytes,
    }
}

fn client_mode(mode: CompatibilityMode) -> danube_client::CompatibilityMode {
    match mode {
        CompatibilityMode::None => danube_client::CompatibilityMode::None,
        CompatibilityMode::Backward => danube_client::CompatibilityMode::Backward,
        CompatibilityMode::Forward => danube_client::CompatibilityMode::Forward,
        CompatibilityMode::Full => danube_client::CompatibilityMode::Full,
    }
}

/// How long a "latest version" lookup is trusted before the registry is asked again.
pub const LATEST_TTL: Duration = Duration::from_secs(30);

/// Registry schemas by id and version (sink side). A schema at a given version never
/// changes, so it is fetched once and kept; a lookup without a version ("latest") only
/// remembers which version was the latest, for [`LATEST_TTL`], so a newly registered
/// version is seen after that.
pub struct SchemaCache {
    registry: SchemaRegistry,
    latest_ttl: Duration,
    entries: Mutex<CacheEntries>,
}

#[derive(Default)]
struct CacheEntries {
    /// Compiled schemas by (id, version).
    schemas: HashMap<(u64, u32), Schema>,
    /// The latest version of an id and when the registry said so.
    latest: HashMap<u64, (u32, Instant)>,
}

impl std::fmt::Debug for SchemaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaCache").field("latest_ttl", &self.latest_ttl).finish_non_exhaustive()
    }
}

impl SchemaCache {
    /// An empty cache over `registry`; "latest" lookups are kept for [`LATEST_TTL`]
    /// (e.g. `SchemaCache::new(runtime.schema_registry())`).
    pub fn new(registry: SchemaRegistry) -> Self {
        Self::with_latest_ttl(registry, LATEST_TTL)
    }

    /// An empty cache whose "latest" lookups are kept for `ttl` (zero: always asked).
    pub fn with_latest_ttl(registry: SchemaRegistry, ttl: Duration) -> Self {
        Self { registry, latest_ttl: ttl, entries: Mutex::new(CacheEntries::default()) }
    }

    /// The schema of `schema_id` at `version` (latest when `None`), from the cache or the
    /// registry. A registry failure is retryable; a definition that does not compile is not.
    pub async fn get(&self, schema_id: u64, version: Option<u32>) -> Result<Schema, ConnectorError> {
        let known = {
            let entries = self.lock();
            let version = match version {
                Some(version) => Some(version),
                None => entries
                    .latest
                    .get(&schema_id)
                    .filter(|(_, at)| at.elapsed() < self.latest_ttl)
                    .map(|(version, _)| *version),
            };
            version.and_then(|version| entries.schemas.get(&(schema_id, version)).cloned())
        };
        if let Some(schema) = known {
            return Ok(schema);
        }
        let info = self
            .registry
            .version(schema_id, version)
            .await
            .map_err(|e| ConnectorError::retryable(format!("fetch schema {schema_id} from the registry"), e))?;
        let schema = Schema::from_registry(&info.schema_type, &registered_definition(&info.schema_definition))
            .map_err(|e| {
                ConnectorError::invalid(format!("schema {schema_id} version {} does not compile", info.version), e)
            })?;
        let mut entries = self.lock();
        if version.is_none() {
            entries.latest.insert(schema_id, (info.version, Instant::now()));
        }
        entries.schemas.insert((schema_id, info.version), schema.clone());
        Ok(schema)
    }

    /// Decodes `record` with its schema into [`SinkRecord::value`]; records without a
    /// `schema_id` are left as they are.
    pub async fn decode(&self, record: &mut SinkRecord) -> Result<(), ConnectorError> {
        let Some(schema_id) = record.schema_id else { return Ok(()) };
        let schema = self.get(schema_id, record.schema_version).await?;
        let value = schema
            .decode_to_json(&record.payload)
            .map_err(|e| ConnectorError::invalid(format!("payload does not decode with schema {schema_id}"), e))?;
        record.value = Some(value);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheEntries> {
        match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::registered_definition;

    #[test]
    fn the_real_registrys_wrapped_definitions_give_the_registered_text() {
        let avro = r#"{"type":"record","name":"T","fields":[{"name":"id","type":"long"}]}"#;
        let wrapped = serde_json::json!({"Avro": {"raw_schema": avro, "fingerprint": "sha256:x"}}).to_string();
        assert_eq!(&*registered_definition(wrapped.as_bytes()), avro.as_bytes());
        let json = r#"{"type":"object"}"#;
        let wrapped = serde_json::json!({"JsonSchema": {"raw_schema": json, "fingerprint": "f"}}).to_string();
        assert_eq!(&*registered_definition(wrapped.as_bytes()), json.as_bytes());
        let proto = "syntax = \"proto3\"; message M { int64 id = 1; }";
        let wrapped =
            serde_json::json!({"Protobuf": {"raw_proto": proto, "message_name": "M", "fingerprint": "f"}}).to_string();
        assert_eq!(&*registered_definition(wrapped.as_bytes()), proto.as_bytes());
        // What the development broker answers: the registered bytes, kept as they are.
        assert_eq!(&*registered_definition(avro.as_bytes()), avro.as_bytes());
        assert_eq!(&*registered_definition(b"\"String\""), b"\"String\"");
    }
}
