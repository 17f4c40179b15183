//! In-memory schema registry.
//!
//! A subject has one `schema_id` (assigned at its first registration) and
//! numbered versions starting at 1. Registering a definition identical to an
//! existing version returns that version.
//!
//! Every definition is compiled at registration (and at a compatibility check)
//! with [`danube_connect_common::Schema`], the code the connectors use, so an
//! Avro schema, JSON Schema or `.proto` source that does not compile is refused
//! with `InvalidArgument`.
//!
//! Compatibility is [`danube_connect_common::check_compatible`] against the
//! latest version (every version for the `*_transitive` modes):
//! - Avro: the Avro schema-resolution rules (type promotion `int` -> `long` ->
//!   `float` -> `double`, `string` <-> `bytes`; a reader field missing from the
//!   writer needs a `default`; unions, enums, nested records resolved recursively).
//! - JSON Schema: a simplification, recursive through `properties` / `items`:
//!   `required`, `type` (`integer` widens to `number`), `enum` and a closed
//!   `additionalProperties: false` are compared; other keywords are not.
//! - Protobuf: field by field by number: wire-compatible types only, no change
//!   between singular / repeated / map, proto2 `required` kept.
//! - string, number, bytes: always compatible with themselves.
//!
//! Changing the schema type is incompatible unless the mode is `none`. Backward
//! = the new schema reads data of the old; Forward = the old reads data of the
//! new; Full = both.

use danube_connect_common::{
    check_compatible, error_chain, CompatibilityMode, Schema, SchemaError as CommonSchemaError,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Schema types accepted by `RegisterSchema`.
pub(crate) const SCHEMA_TYPES: [&str; 6] = ["json_schema", "avro", "protobuf", "string", "number", "bytes"];

/// Compatibility mode of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CompatMode {
    backward: bool,
    forward: bool,
    transitive: bool,
}

impl CompatMode {
    /// Parses `none`, `backward`, `forward`, `full` and their `_transitive`
    /// variants (case-insensitive).
    pub(crate) fn parse(s: &str) -> Option<CompatMode> {
        let lower = s.trim().to_ascii_lowercase();
        let (base, transitive) = match lower.strip_suffix("_transitive") {
            Some(b) => (b.to_string(), true),
            None => (lower, false),
        };
        let (backward, forward) = match base.as_str() {
            "none" => (false, false),
            "backward" => (true, false),
            "forward" => (false, true),
            "full" => (true, true),
            _ => return None,
        };
        Some(CompatMode { backward, forward, transitive: transitive && (backward || forward) })
    }

    /// Upper-case name, e.g. `BACKWARD`.
    pub(crate) fn name(&self) -> String {
        let base = match (self.backward, self.forward) {
            (false, false) => "NONE",
            (true, false) => "BACKWARD",
            (false, true) => "FORWARD",
            (true, true) => "FULL",
        };
        if self.transitive {
            format!("{base}_TRANSITIVE")
        } else {
            base.to_string()
        }
    }

    fn backward_default() -> CompatMode {
        CompatMode { backward: true, forward: false, transitive: false }
    }
}

/// Errors of registry operations.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    #[error("unknown schema type '{0}' (expected one of json_schema, avro, protobuf, string, number, bytes)")]
    UnknownType(String),
    #[error("invalid {schema_type} definition: {}", error_chain(source))]
    InvalidDefinition {
        schema_type: String,
        #[source]
        source: CommonSchemaError,
    },
    #[error("subject '{0}' not found")]
    SubjectNotFound(String),
    #[error("schema id {0} not found")]
    IdNotFound(u64),
    #[error("version {version} not found for subject '{subject}'")]
    VersionNotFound { subject: String, version: u32 },
    #[error("invalid compatibility mode '{0}'")]
    InvalidMode(String),
    #[error("schema is incompatible with subject '{subject}' ({mode}): {}", errors.join("; "))]
    Incompatible { subject: String, mode: String, errors: Vec<String> },
}

/// One stored version; also the persisted form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SchemaVersionRecord {
    pub subject: String,
    pub schema_id: u64,
    pub version: u32,
    pub schema_type: String,
    pub definition: Vec<u8>,
    pub fingerprint: String,
    pub description: String,
    pub created_by: String,
    pub created_at: u64,
    pub tags: Vec<String>,
}

#[derive(Debug)]
struct Subject {
    id: u64,
    mode: CompatMode,
    versions: Vec<SchemaVersionRecord>,
}

/// Input of a registration.
pub(crate) struct NewSchema {
    pub subject: String,
    pub schema_type: String,
    pub definition: Vec<u8>,
    pub description: String,
    pub created_by: String,
    pub tags: Vec<String>,
}

/// Result of a registration.
#[derive(Debug)]
pub(crate) struct Registered {
    pub record: SchemaVersionRecord,
    pub is_new: bool,
}

/// The registry.
#[derive(Debug, Default)]
pub(crate) struct SchemaRegistry {
    subjects: HashMap<String, Subject>,
    by_id: HashMap<u64, String>,
    next_id: u64,
}

fn fingerprint(schema_type: &str, def: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(schema_type.as_bytes());
    h.update([0u8]);
    h.update(def);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn normalize_type(t: &str) -> Result<String, SchemaError> {
    let lower = t.trim().to_ascii_lowercase();
    let canonical = match lower.as_str() {
        "jsonschema" | "json" => "json_schema".to_string(),
        "proto" => "protobuf".to_string(),
        other => other.to_string(),
    };
    if SCHEMA_TYPES.contains(&canonical.as_str()) {
        Ok(canonical)
    } else {
        Err(SchemaError::UnknownType(t.to_string()))
    }
}

/// Compiles a definition with the shared schema code, so a definition the connectors could
/// not use (bad JSON, an Avro or JSON Schema that does not compile, `.proto` source that does
/// not compile) is refused here rather than at the first record.
fn compile(schema_type: &str, def: &[u8]) -> Result<Schema, SchemaError> {
    Schema::from_registry(schema_type, def)
        .map_err(|source| SchemaError::InvalidDefinition { schema_type: schema_type.to_string(), source })
}

/// The shared crate's mode for the backward/forward part of `mode`.
fn common_mode(mode: CompatMode) -> CompatibilityMode {
    match (mode.backward, mode.forward) {
        (false, false) => CompatibilityMode::None,
        (true, false) => CompatibilityMode::Backward,
        (false, true) => CompatibilityMode::Forward,
        (true, true) => CompatibilityMode::Full,
    }
}

/// Reasons why `new` may not replace the stored version `old` under `mode` (empty:
/// compatible), per [`check_compatible`].
fn compat_errors(mode: CompatMode, old: &SchemaVersionRecord, new: &Schema) -> Vec<String> {
    let mode = common_mode(mode);
    if mode == CompatibilityMode::None {
        return Vec::new();
    }
    let old_schema = match Schema::from_registry(&old.schema_type, &old.definition) {
        Ok(s) => s,
        // A stored version that no longer compiles (e.g. restored from a data dir written by
        // an older broker) cannot vouch for anything: say so rather than accept blindly.
        Err(e) => return vec![format!("stored version {} does not compile: {e}", old.version)],
    };
    match check_compatible(&old_schema, new, mode) {
        Ok(()) => Vec::new(),
        Err(CommonSchemaError::Incompatible { reasons, .. }) => {
            reasons.into_iter().map(|r| format!("{r} (against version {})", old.version)).collect()
        }
        Err(other) => vec![format!("against version {}: {other}", old.version)],
    }
}

impl SchemaRegistry {
    fn subject(&self, name: &str) -> Result<&Subject, SchemaError> {
        self.subjects.get(name).ok_or_else(|| SchemaError::SubjectNotFound(name.to_string()))
    }

    /// True when the subject has at least one version.
    pub(crate) fn has_subject(&self, name: &str) -> bool {
        self.subjects.contains_key(name)
    }

    fn check(&self, subject: &Subject, mode: CompatMode, new: &Schema) -> Vec<String> {
        let against: Vec<&SchemaVersionRecord> = if mode.transitive {
            subject.versions.iter().collect()
        } else {
            subject.versions.last().into_iter().collect()
        };
        let mut errors = Vec::new();
        for old in against {
            errors.extend(compat_errors(mode, old, new));
        }
        errors
    }

    /// Registers a schema version (or returns the identical existing one).
    pub(crate) fn register(&mut self, req: NewSchema) -> Result<Registered, SchemaError> {
        let schema_type = normalize_type(&req.schema_type)?;
        let compiled = compile(&schema_type, &req.definition)?;
        let fp = fingerprint(&schema_type, &req.definition);
        if let Some(subject) = self.subjects.get(&req.subject) {
            if let Some(existing) = subject.versions.iter().find(|v| v.fingerprint == fp) {
                return Ok(Registered { record: existing.clone(), is_new: false });
            }
            let errors = self.check(subject, subject.mode, &compiled);
            if !errors.is_empty() {
                return Err(SchemaError::Incompatible { subject: req.subject, mode: subject.mode.name(), errors });
            }
        }
        let id = match self.subjects.get(&req.subject) {
            Some(s) => s.id,
            None => {
                self.next_id += 1;
                self.next_id
            }
        };
        let version = self.subjects.get(&req.subject).and_then(|s| s.versions.last()).map_or(1, |v| v.version + 1);
        let record = SchemaVersionRecord {
            subject: req.subject,
            schema_id: id,
            version,
            schema_type,
            definition: req.definition,
            fingerprint: fp,
            description: req.description,
            created_by: req.created_by,
            created_at: now_secs(),
            tags: req.tags,
        };
        self.restore(record.clone());
        Ok(Registered { record, is_new: true })
    }

    /// Inserts a version as-is (used at load and by `register`).
    pub(crate) fn restore(&mut self, record: SchemaVersionRecord) {
        self.next_id = self.next_id.max(record.schema_id);
        self.by_id.insert(record.schema_id, record.subject.clone());
        let subject = self.subjects.entry(record.subject.clone()).or_insert_with(|| Subject {
            id: record.schema_id,
            mode: CompatMode::backward_default(),
            versions: Vec::new(),
        });
        subject.versions.push(record);
    }

    /// Version `version` (latest when `None`) of the subject with id `id`.
    pub(crate) fn by_id(&self, id: u64, version: Option<u32>) -> Result<(&SchemaVersionRecord, String), SchemaError> {
        let name = self.by_id.get(&id).ok_or(SchemaError::IdNotFound(id))?;
        self.version(name, version)
    }

    /// Version `version` (latest when `None`) of `subject`, with its mode name.
    pub(crate) fn version(
        &self,
        subject: &str,
        version: Option<u32>,
    ) -> Result<(&SchemaVersionRecord, String), SchemaError> {
        let s = self.subject(subject)?;
        let found = match version {
            None => s.versions.last(),
            Some(v) => s.versions.iter().find(|r| r.version == v),
        };
        found
            .map(|r| (r, s.mode.name()))
            .ok_or_else(|| SchemaError::VersionNotFound { subject: subject.to_string(), version: version.unwrap_or(0) })
    }

    /// All versions of `subject`.
    pub(crate) fn versions(&self, subject: &str) -> Result<&[SchemaVersionRecord], SchemaError> {
        Ok(&self.subject(subject)?.versions)
    }

    /// Checks `def` against the subject (compatible when the subject does not exist).
    pub(crate) fn check_compatibility(
        &self,
        subject: &str,
        schema_type: &str,
        def: &[u8],
        mode: Option<&str>,
    ) -> Result<Vec<String>, SchemaError> {
        let schema_type = normalize_type(schema_type)?;
        let compiled = compile(&schema_type, def)?;
        let Some(s) = self.subjects.get(subject) else {
            return Ok(Vec::new());
        };
        let mode = match mode {
            Some(m) => CompatMode::parse(m).ok_or_else(|| SchemaError::InvalidMode(m.to_string()))?,
            None => s.mode,
        };
        Ok(self.check(s, mode, &compiled))
    }

    /// Sets the subject's compatibility mode; returns the canonical mode name.
    pub(crate) fn set_mode(&mut self, subject: &str, mode: &str) -> Result<String, SchemaError> {
        let m = CompatMode::parse(mode).ok_or_else(|| SchemaError::InvalidMode(mode.to_string()))?;
        let s = self.subjects.get_mut(subject).ok_or_else(|| SchemaError::SubjectNotFound(subject.to_string()))?;
        s.mode = m;
        Ok(m.name())
    }

    /// Deletes one version; the subject disappears with its last version.
    pub(crate) fn delete_version(&mut self, subject: &str, version: u32) -> Result<(), SchemaError> {
        let s = self.subjects.get_mut(subject).ok_or_else(|| SchemaError::SubjectNotFound(subject.to_string()))?;
        let before = s.versions.len();
        s.versions.retain(|v| v.version != version);
        if s.versions.len() == before {
            return Err(SchemaError::VersionNotFound { subject: subject.to_string(), version });
        }
        if s.versions.is_empty() {
            let id = s.id;
            self.subjects.remove(subject);
            self.by_id.remove(&id);
        }
        Ok(())
    }

    /// Subject summaries: (subject, type, latest version, mode, id, tags).
    pub(crate) fn subjects(&self) -> Vec<(&str, &SchemaVersionRecord, String)> {
        let mut out: Vec<_> = self
            .subjects
            .iter()
            .filter_map(|(name, s)| s.versions.last().map(|v| (name.as_str(), v, s.mode.name())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(subject: &str, t: &str, def: &str) -> NewSchema {
        NewSchema {
            subject: subject.into(),
            schema_type: t.into(),
            definition: def.as_bytes().to_vec(),
            description: String::new(),
            created_by: "test".into(),
            tags: vec![],
        }
    }

    #[test]
    fn json_schema_backward() {
        let mut r = SchemaRegistry::default();
        let v1 = r
            .register(new(
                "s",
                "json_schema",
                r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}"#,
            ))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v1.record.version, 1);
        // Adding an optional field is backward compatible.
        let v2 = r
            .register(new(
                "s",
                "json_schema",
                r#"{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"integer"}},"required":["a"]}"#,
            ))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((v2.record.version, v2.record.schema_id), (2, v1.record.schema_id));
        // A newly required field without default is not.
        let err = r
            .register(new(
                "s",
                "json_schema",
                r#"{"type":"object","properties":{"a":{"type":"string"},"c":{"type":"integer"}},"required":["a","c"]}"#,
            ))
            .err();
        assert!(matches!(err, Some(SchemaError::Incompatible { .. })));
        // Same definition again: same version.
        let again = r
            .register(new(
                "s",
                "json_schema",
                r#"{"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}"#,
            ))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!again.is_new);
        assert_eq!(again.record.version, 1);
    }

    #[test]
    fn avro_forward_and_full() {
        let mut r = SchemaRegistry::default();
        let v1 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"}]}"#;
        let v2 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
        r.register(new("s", "avro", v1)).unwrap_or_else(|e| panic!("{e}"));
        // Removing a field without default: backward ok, forward broken.
        assert!(r
            .check_compatibility("s", "avro", v2.as_bytes(), Some("backward"))
            .map(|e| e.is_empty())
            .unwrap_or(false));
        assert!(!r
            .check_compatibility("s", "avro", v2.as_bytes(), Some("forward"))
            .map(|e| e.is_empty())
            .unwrap_or(true));
        assert!(!r.check_compatibility("s", "avro", v2.as_bytes(), Some("full")).map(|e| e.is_empty()).unwrap_or(true));
        let v3 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"},{"name":"c","type":"int"}]}"#;
        assert!(!r.check_compatibility("s", "avro", v3.as_bytes(), None).map(|e| e.is_empty()).unwrap_or(true));
        assert!(r.set_mode("s", "none").is_ok());
        assert!(r.register(new("s", "avro", v3)).is_ok());
    }

    fn compatible(r: &SchemaRegistry, t: &str, def: &str, mode: Option<&str>) -> Vec<String> {
        r.check_compatibility("s", t, def.as_bytes(), mode).unwrap_or_else(|e| panic!("check: {e}"))
    }

    const AVRO_INT: &str =
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"n","type":"int"}]}"#;
    const AVRO_LONG: &str =
        r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"n","type":"long"}]}"#;

    #[test]
    fn avro_int_to_long_is_backward_but_not_forward() {
        let mut r = SchemaRegistry::default();
        r.register(new("s", "avro", AVRO_INT)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(compatible(&r, "avro", AVRO_LONG, Some("forward")).len(), 1);
        let errors = compatible(&r, "avro", AVRO_LONG, Some("forward"));
        assert!(errors[0].contains("/n"), "{errors:?}");
        let v2 = r.register(new("s", "avro", AVRO_LONG)).unwrap_or_else(|e| panic!("int -> long under BACKWARD: {e}"));
        assert_eq!(v2.record.version, 2);
        // Narrowing back is refused: data written with `long` does not fit an `int` reader.
        let narrowed = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"n","type":"int"}],"doc":"narrowed"}"#;
        match r.register(new("s", "avro", narrowed)) {
            Err(SchemaError::Incompatible { mode, errors, .. }) => {
                assert_eq!(mode, "BACKWARD");
                assert!(errors.iter().any(|e| e.contains("/n")), "{errors:?}");
            }
            other => panic!("expected incompatible, got {other:?}"),
        }
    }

    #[test]
    fn avro_type_change_and_removed_field_refused() {
        let mut r = SchemaRegistry::default();
        r.register(new("s", "avro", AVRO_INT)).unwrap_or_else(|e| panic!("{e}"));
        let typed = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"n","type":"int"}]}"#;
        let errors = compatible(&r, "avro", typed, Some("backward"));
        assert!(errors.iter().any(|e| e.contains("/a")), "string -> int must be refused: {errors:?}");
        let removed = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
        assert!(compatible(&r, "avro", removed, Some("backward")).is_empty());
        let errors = compatible(&r, "avro", removed, Some("forward"));
        assert!(errors.iter().any(|e| e.contains("n")), "{errors:?}");
        assert!(r.set_mode("s", "full").is_ok());
        assert!(matches!(r.register(new("s", "avro", removed)), Err(SchemaError::Incompatible { .. })));
    }

    #[test]
    fn json_schema_integer_widens_to_number() {
        let mut r = SchemaRegistry::default();
        let int = r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#;
        let num = r#"{"type":"object","properties":{"n":{"type":"number"}},"required":["n"]}"#;
        r.register(new("s", "json_schema", int)).unwrap_or_else(|e| panic!("{e}"));
        assert!(!compatible(&r, "json_schema", num, Some("forward")).is_empty());
        r.register(new("s", "json_schema", num)).unwrap_or_else(|e| panic!("integer -> number under BACKWARD: {e}"));
        let string = r#"{"type":"object","properties":{"n":{"type":"string"}},"required":["n"]}"#;
        let errors = compatible(&r, "json_schema", string, None);
        assert!(errors.iter().any(|e| e.contains("/n")), "{errors:?}");
    }

    #[test]
    fn protobuf_field_type_change_refused() {
        let mut r = SchemaRegistry::default();
        let v1 = "syntax = \"proto3\";\nmessage Order { string id = 1; int64 qty = 2; }\n";
        let added = "syntax = \"proto3\";\nmessage Order { string id = 1; int64 qty = 2; string note = 3; }\n";
        let retyped = "syntax = \"proto3\";\nmessage Order { string id = 1; string qty = 2; }\n";
        r.register(new("s", "protobuf", v1)).unwrap_or_else(|e| panic!("{e}"));
        assert!(compatible(&r, "protobuf", added, Some("full")).is_empty());
        match r.register(new("s", "protobuf", retyped)) {
            Err(SchemaError::Incompatible { errors, .. }) => {
                assert!(errors.iter().any(|e| e.contains("qty")), "{errors:?}");
            }
            other => panic!("expected incompatible, got {other:?}"),
        }
        assert_eq!(r.versions("s").map(<[_]>::len).unwrap_or(0), 1);
    }

    #[test]
    fn invalid_definitions_refused_at_registration() {
        let mut r = SchemaRegistry::default();
        let cases = [
            ("avro", r#"{"type":"record","name":"R","fields":[{"name":"a","type":"nope"}]}"#),
            ("avro", "not json"),
            ("json_schema", r#"{"type": 12}"#),
            ("protobuf", "syntax = \"proto3\";\nmessage Order { string id = ; }\n"),
            ("protobuf", "syntax = \"proto3\";\n"),
        ];
        for (t, def) in cases {
            match r.register(new("bad", t, def)) {
                Err(e @ SchemaError::InvalidDefinition { .. }) => {
                    assert!(e.to_string().contains(t), "{e}");
                }
                other => panic!("{t} {def:?}: expected invalid definition, got {other:?}"),
            }
            assert!(r.check_compatibility("bad", t, def.as_bytes(), None).is_err());
        }
        assert!(!r.has_subject("bad"));
    }
}
