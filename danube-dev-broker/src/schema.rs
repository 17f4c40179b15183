//! In-memory schema registry with simple structural compatibility checks.
//!
//! A subject has one `schema_id` (assigned at its first registration) and
//! numbered versions starting at 1. Registering a definition identical to an
//! existing version returns that version.
//!
//! Compatibility is checked structurally and only against the latest version
//! (all versions for the `*_transitive` modes):
//! - JSON Schema: the top-level `properties` / `required` are compared.
//!   Backward (new reads old) fails when the new schema requires a property
//!   that the old one did not require, unless the new property has a
//!   `default`; Forward is the same check in the other direction; a property
//!   present in both with a different `type` fails both.
//! - Avro: record `fields` are compared. Backward fails when a new field has
//!   no `default` and did not exist in the old schema; Forward fails when an
//!   old field has no default and is missing from the new schema; a field
//!   present in both with a different `type` fails both (no type promotion).
//! - Protobuf, string, number, bytes: any definition of the same type is
//!   compatible. Changing the schema type is incompatible unless the mode is
//!   `none`.
//!
//! Full = Backward and Forward. This is far simpler than the real registry.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

/// Schema types accepted by `RegisterSchema`.
pub(crate) const SCHEMA_TYPES: [&str; 6] = [
    "json_schema",
    "avro",
    "protobuf",
    "string",
    "number",
    "bytes",
];

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
    pub fn parse(s: &str) -> Option<CompatMode> {
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
        Some(CompatMode {
            backward,
            forward,
            transitive: transitive && (backward || forward),
        })
    }

    /// Upper-case name, e.g. `BACKWARD`.
    pub fn name(&self) -> String {
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
        CompatMode {
            backward: true,
            forward: false,
            transitive: false,
        }
    }
}

/// Errors of registry operations.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    #[error("unknown schema type '{0}' (expected one of json_schema, avro, protobuf, string, number, bytes)")]
    UnknownType(String),
    #[error("invalid {schema_type} definition: {reason}")]
    InvalidDefinition { schema_type: String, reason: String },
    #[error("subject '{0}' not found")]
    SubjectNotFound(String),
    #[error("schema id {0} not found")]
    IdNotFound(u64),
    #[error("version {version} not found for subject '{subject}'")]
    VersionNotFound { subject: String, version: u32 },
    #[error("invalid compatibility mode '{0}'")]
    InvalidMode(String),
    #[error("schema is incompatible with subject '{subject}' ({mode}): {}", errors.join("; "))]
    Incompatible {
        subject: String,
        mode: String,
        errors: Vec<String>,
    },
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

fn parse_json(schema_type: &str, def: &[u8]) -> Result<Value, SchemaError> {
    serde_json::from_slice(def).map_err(|e| SchemaError::InvalidDefinition {
        schema_type: schema_type.to_string(),
        reason: e.to_string(),
    })
}

fn validate(schema_type: &str, def: &[u8]) -> Result<(), SchemaError> {
    match schema_type {
        "json_schema" => parse_json(schema_type, def).map(|_| ()),
        "avro" => {
            let v = parse_json(schema_type, def)?;
            if v.is_object() || v.is_string() || v.is_array() {
                Ok(())
            } else {
                Err(SchemaError::InvalidDefinition {
                    schema_type: schema_type.into(),
                    reason: "expected a JSON object, string or array".into(),
                })
            }
        }
        _ => Ok(()),
    }
}

/// Property name -> (required, has default, type as JSON text).
type Shape = HashMap<String, (bool, bool, Option<String>)>;

fn json_schema_shape(v: &Value) -> Shape {
    let required: BTreeSet<&str> = v
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out = Shape::new();
    if let Some(props) = v.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            out.insert(
                name.clone(),
                (
                    required.contains(name.as_str()),
                    p.get("default").is_some(),
                    p.get("type").map(Value::to_string),
                ),
            );
        }
    }
    for r in required {
        out.entry(r.to_string()).or_insert((true, false, None));
    }
    out
}

fn avro_shape(v: &Value) -> Shape {
    let mut out = Shape::new();
    if let Some(fields) = v.get("fields").and_then(Value::as_array) {
        for f in fields {
            if let Some(name) = f.get("name").and_then(Value::as_str) {
                let has_default = f.get("default").is_some();
                // An Avro field without a default is required for a reader.
                out.insert(
                    name.to_string(),
                    (
                        !has_default,
                        has_default,
                        f.get("type").map(Value::to_string),
                    ),
                );
            }
        }
    }
    out
}

/// Errors found when `reader` reads data written with `writer`.
fn read_errors(schema_type: &str, reader: &Shape, writer: &Shape, dir: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let mut names: Vec<&String> = reader.keys().collect();
    names.sort();
    for name in names {
        let (required, has_default, ty) = &reader[name];
        match writer.get(name) {
            None if *required && !has_default => errors.push(format!(
                "{dir}: field '{name}' is required by the reader but absent from the writer schema"
            )),
            Some((w_required, _, _))
                if schema_type == "json_schema" && *required && !has_default && !w_required =>
            {
                errors.push(format!(
                    "{dir}: field '{name}' is required by the reader but optional in the writer schema"
                ))
            }
            Some((_, _, w_ty)) if ty.is_some() && w_ty.is_some() && ty != w_ty => {
                errors.push(format!("{dir}: field '{name}' changed type"))
            }
            _ => {}
        }
    }
    errors
}

fn compat_errors(
    mode: CompatMode,
    old: &SchemaVersionRecord,
    new_type: &str,
    new_def: &[u8],
) -> Result<Vec<String>, SchemaError> {
    if !mode.backward && !mode.forward {
        return Ok(Vec::new());
    }
    if old.schema_type != new_type {
        return Ok(vec![format!(
            "schema type changed from {} to {new_type} (version {})",
            old.schema_type, old.version
        )]);
    }
    let shape = |def: &[u8]| -> Result<Option<Shape>, SchemaError> {
        Ok(match new_type {
            "json_schema" => Some(json_schema_shape(&parse_json(new_type, def)?)),
            "avro" => Some(avro_shape(&parse_json(new_type, def)?)),
            _ => None,
        })
    };
    let (Some(old_shape), Some(new_shape)) = (shape(&old.definition)?, shape(new_def)?) else {
        return Ok(Vec::new());
    };
    let mut errors = Vec::new();
    if mode.backward {
        errors.extend(read_errors(new_type, &new_shape, &old_shape, "backward"));
    }
    if mode.forward {
        errors.extend(read_errors(new_type, &old_shape, &new_shape, "forward"));
    }
    Ok(errors
        .into_iter()
        .map(|e| format!("{e} (against version {})", old.version))
        .collect())
}

impl SchemaRegistry {
    fn subject(&self, name: &str) -> Result<&Subject, SchemaError> {
        self.subjects
            .get(name)
            .ok_or_else(|| SchemaError::SubjectNotFound(name.to_string()))
    }

    /// True when the subject has at least one version.
    pub fn has_subject(&self, name: &str) -> bool {
        self.subjects.contains_key(name)
    }

    fn check(
        &self,
        subject: &Subject,
        mode: CompatMode,
        schema_type: &str,
        def: &[u8],
    ) -> Result<Vec<String>, SchemaError> {
        let against: Vec<&SchemaVersionRecord> = if mode.transitive {
            subject.versions.iter().collect()
        } else {
            subject.versions.last().into_iter().collect()
        };
        let mut errors = Vec::new();
        for old in against {
            errors.extend(compat_errors(mode, old, schema_type, def)?);
        }
        Ok(errors)
    }

    /// Registers a schema version (or returns the identical existing one).
    pub fn register(&mut self, req: NewSchema) -> Result<Registered, SchemaError> {
        let schema_type = normalize_type(&req.schema_type)?;
        validate(&schema_type, &req.definition)?;
        let fp = fingerprint(&schema_type, &req.definition);
        if let Some(subject) = self.subjects.get(&req.subject) {
            if let Some(existing) = subject.versions.iter().find(|v| v.fingerprint == fp) {
                return Ok(Registered {
                    record: existing.clone(),
                    is_new: false,
                });
            }
            let errors = self.check(subject, subject.mode, &schema_type, &req.definition)?;
            if !errors.is_empty() {
                return Err(SchemaError::Incompatible {
                    subject: req.subject,
                    mode: subject.mode.name(),
                    errors,
                });
            }
        }
        let id = match self.subjects.get(&req.subject) {
            Some(s) => s.id,
            None => {
                self.next_id += 1;
                self.next_id
            }
        };
        let version = self
            .subjects
            .get(&req.subject)
            .and_then(|s| s.versions.last())
            .map_or(1, |v| v.version + 1);
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
        Ok(Registered {
            record,
            is_new: true,
        })
    }

    /// Inserts a version as-is (used at load and by `register`).
    pub fn restore(&mut self, record: SchemaVersionRecord) {
        self.next_id = self.next_id.max(record.schema_id);
        self.by_id.insert(record.schema_id, record.subject.clone());
        let subject = self
            .subjects
            .entry(record.subject.clone())
            .or_insert_with(|| Subject {
                id: record.schema_id,
                mode: CompatMode::backward_default(),
                versions: Vec::new(),
            });
        subject.versions.push(record);
    }

    /// Version `version` (latest when `None`) of the subject with id `id`.
    pub fn by_id(
        &self,
        id: u64,
        version: Option<u32>,
    ) -> Result<(&SchemaVersionRecord, String), SchemaError> {
        let name = self.by_id.get(&id).ok_or(SchemaError::IdNotFound(id))?;
        self.version(name, version)
    }

    /// Version `version` (latest when `None`) of `subject`, with its mode name.
    pub fn version(
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
            .ok_or_else(|| SchemaError::VersionNotFound {
                subject: subject.to_string(),
                version: version.unwrap_or(0),
            })
    }

    /// All versions of `subject`.
    pub fn versions(&self, subject: &str) -> Result<&[SchemaVersionRecord], SchemaError> {
        Ok(&self.subject(subject)?.versions)
    }

    /// Checks `def` against the subject (compatible when the subject does not exist).
    pub fn check_compatibility(
        &self,
        subject: &str,
        schema_type: &str,
        def: &[u8],
        mode: Option<&str>,
    ) -> Result<Vec<String>, SchemaError> {
        let schema_type = normalize_type(schema_type)?;
        validate(&schema_type, def)?;
        let Some(s) = self.subjects.get(subject) else {
            return Ok(Vec::new());
        };
        let mode = match mode {
            Some(m) => {
                CompatMode::parse(m).ok_or_else(|| SchemaError::InvalidMode(m.to_string()))?
            }
            None => s.mode,
        };
        self.check(s, mode, &schema_type, def)
    }

    /// Sets the subject's compatibility mode; returns the canonical mode name.
    pub fn set_mode(&mut self, subject: &str, mode: &str) -> Result<String, SchemaError> {
        let m =
            CompatMode::parse(mode).ok_or_else(|| SchemaError::InvalidMode(mode.to_string()))?;
        let s = self
            .subjects
            .get_mut(subject)
            .ok_or_else(|| SchemaError::SubjectNotFound(subject.to_string()))?;
        s.mode = m;
        Ok(m.name())
    }

    /// Deletes one version; the subject disappears with its last version.
    pub fn delete_version(&mut self, subject: &str, version: u32) -> Result<(), SchemaError> {
        let s = self
            .subjects
            .get_mut(subject)
            .ok_or_else(|| SchemaError::SubjectNotFound(subject.to_string()))?;
        let before = s.versions.len();
        s.versions.retain(|v| v.version != version);
        if s.versions.len() == before {
            return Err(SchemaError::VersionNotFound {
                subject: subject.to_string(),
                version,
            });
        }
        if s.versions.is_empty() {
            let id = s.id;
            self.subjects.remove(subject);
            self.by_id.remove(&id);
        }
        Ok(())
    }

    /// Subject summaries: (subject, type, latest version, mode, id, tags).
    pub fn subjects(&self) -> Vec<(&str, &SchemaVersionRecord, String)> {
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
            .register(new("s", "json_schema", r#"{"type":"object","properties":{"a":{"type":"string"},"b":{"type":"integer"}},"required":["a"]}"#))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (v2.record.version, v2.record.schema_id),
            (2, v1.record.schema_id)
        );
        // A newly required field without default is not.
        let err = r
            .register(new("s", "json_schema", r#"{"type":"object","properties":{"a":{"type":"string"},"c":{"type":"integer"}},"required":["a","c"]}"#))
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
        r.register(new("s", "avro", v1))
            .unwrap_or_else(|e| panic!("{e}"));
        // Removing a field without default: backward ok, forward broken.
        assert!(r
            .check_compatibility("s", "avro", v2.as_bytes(), Some("backward"))
            .map(|e| e.is_empty())
            .unwrap_or(false));
        assert!(!r
            .check_compatibility("s", "avro", v2.as_bytes(), Some("forward"))
            .map(|e| e.is_empty())
            .unwrap_or(true));
        assert!(!r
            .check_compatibility("s", "avro", v2.as_bytes(), Some("full"))
            .map(|e| e.is_empty())
            .unwrap_or(true));
        let v3 = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"},{"name":"b","type":"int"},{"name":"c","type":"int"}]}"#;
        assert!(!r
            .check_compatibility("s", "avro", v3.as_bytes(), None)
            .map(|e| e.is_empty())
            .unwrap_or(true));
        assert!(r.set_mode("s", "none").is_ok());
        assert!(r.register(new("s", "avro", v3)).is_ok());
    }
}
