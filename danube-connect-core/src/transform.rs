//! Transforms: `[[transforms]]` programs in VRL (Vector Remap Language) that reshape, route
//! or drop records in flight, in every connector, without connector code.
//!
//! A source's records are transformed after the connector produced them and before they
//! are validated against their topic's schema and published; a sink's records after they
//! were received (and schema-decoded) and before the connector processes them. Several
//! transforms run in order; each may be limited to some topics.
//!
//! The event a program sees (see docs/transforms.md):
//!
//! | path | what | writable |
//! |---|---|---|
//! | `.` | the payload: its JSON value when it parses as JSON (or the schema-decoded value), else its bytes as a string | yes |
//! | `%topic` | the topic (`/default/orders`); a source's record is published to the topic it holds after the program | yes |
//! | `%key` | the routing key, or `null` | yes (`null` removes it) |
//! | `%attributes` | the message attributes, an object of strings | yes |
//!
//! `abort` drops the record: it is still committed (sources) or acked (sinks), and counted in
//! `connector_transform_dropped_total`. A runtime error (a failing `!` call, an invalid
//! `%topic`) is a [`TransformError`]: the record follows `failure.policy`.
//!
//! Programs are compiled when the configuration is validated, so `--check` reports a
//! program that does not compile with its line, column and VRL's diagnostic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use vrl::compiler::runtime::{Runtime as VrlRuntime, Terminate};
use vrl::compiler::state::ExternalEnv;
use vrl::compiler::{CompileConfig, Function, Program, TargetValue, TimeZone};
use vrl::diagnostic::{DiagnosticList, Formatter};
use vrl::value::kind::Collection;
use vrl::value::{KeyString, Kind, ObjectMap, Secrets, Value};

use crate::config::{validate_topic, ConfigError, Validate};

/// One `[[transforms]]` entry: a named VRL program, inline or in a file, optionally limited
/// to some topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// A name for logs and metrics (`transform` label); unique among the transforms.
    pub name: String,
    /// The VRL program, inline. Set either `source` or `file`.
    #[serde(default)]
    pub source: Option<String>,
    /// A file holding the VRL program.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The topics it applies to (the record's topic when the transform runs; `/default/*`
    /// matches by prefix). Empty: every topic.
    #[serde(default)]
    pub topics: Vec<String>,
}

impl TransformConfig {
    /// A transform of every topic running `source`.
    pub fn inline(name: impl Into<String>, source: impl Into<String>) -> Self {
        Self { name: name.into(), source: Some(source.into()), file: None, topics: Vec::new() }
    }

    /// Limits the transform to `topics`.
    pub fn for_topics<I, T>(mut self, topics: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Reads (for `file`) and compiles the program; errors name `field` (`transforms[0]`).
    pub fn compile(&self, field: &str) -> Result<Transform, ConfigError> {
        if self.name.trim().is_empty() {
            return Err(ConfigError::invalid(format!("{field}.name"), "must not be empty"));
        }
        for (i, topic) in self.topics.iter().enumerate() {
            let pattern = topic.strip_suffix('*').unwrap_or(topic);
            if !pattern.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("{field}.topics[{i}]"),
                    format!("`{topic}` must be a topic (`/default/orders`) or a prefix ending in `*` (`/default/*`)"),
                ));
            }
        }
        let (source, origin) = match (&self.source, &self.file) {
            (Some(source), None) => (source.clone(), format!("{field}.source")),
            (None, Some(path)) => {
                let source = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::invalid(format!("{field}.file"), format!("cannot read {}: {e}", path.display()))
                })?;
                (source, format!("{field}.file"))
            }
            _ => {
                return Err(ConfigError::invalid(
                    field.to_string(),
                    "set either `source` (the VRL program) or `file` (a file holding it)",
                ))
            }
        };
        let program = compile_program(&source).map_err(|message| {
            let location = match &self.file {
                Some(path) => format!(" in {}", path.display()),
                None => String::new(),
            };
            ConfigError::invalid(origin, format!("VRL program `{}`{location} does not compile: {message}", self.name))
        })?;
        Ok(Transform {
            name: self.name.clone(),
            topics: self.topics.iter().map(|t| TopicMatch::parse(t)).collect(),
            program: Arc::new(program),
        })
    }
}

impl Validate for Vec<TransformConfig> {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, transform) in self.iter().enumerate() {
            let field = format!("transforms[{i}]");
            transform.compile(&field)?;
            if self[..i].iter().any(|t| t.name == transform.name) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!("`{}` is used by another transform", transform.name),
                ));
            }
        }
        Ok(())
    }
}

/// The VRL functions programs may call: the standard library without the functions that
/// reach the network, the environment or the file system, or do cryptography.
fn functions() -> &'static [Box<dyn Function>] {
    static FUNCTIONS: std::sync::OnceLock<Vec<Box<dyn Function>>> = std::sync::OnceLock::new();
    FUNCTIONS.get_or_init(vrl::stdlib::all)
}

/// Compiles `source`; the error is the location of the first error and VRL's diagnostic.
fn compile_program(source: &str) -> Result<Program, String> {
    // The payload may be any JSON value or bytes, the metadata is an object.
    let external = ExternalEnv::new_with_kind(Kind::any(), Kind::object(Collection::any()));
    match vrl::compiler::compile_with_external(source, functions(), &external, CompileConfig::default()) {
        Ok(result) => Ok(result.program),
        Err(diagnostics) => Err(describe(source, diagnostics)),
    }
}

/// `line L, column C: message` of the first error, then VRL's full diagnostic.
fn describe(source: &str, diagnostics: DiagnosticList) -> String {
    let first = diagnostics.errors().first().map(|diagnostic| {
        let start = diagnostic
            .labels()
            .iter()
            .find(|label| label.primary)
            .or_else(|| diagnostic.labels().first())
            .map(|label| label.span.start());
        match start {
            Some(offset) => {
                let (line, column) = line_column(source, offset);
                format!("line {line}, column {column}: {}", diagnostic.message())
            }
            None => diagnostic.message().to_string(),
        }
    });
    let formatted = Formatter::new(source, diagnostics).to_string();
    match first {
        Some(first) => format!("{first}\n{}", formatted.trim_start_matches('\n')),
        None => formatted,
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `source`.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset.min(source.len())).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |tail| tail.chars().count()) + 1;
    (line, column)
}

/// A topic filter: one topic, or a prefix (`/default/*`).
#[derive(Debug, Clone)]
enum TopicMatch {
    Exact(String),
    Prefix(String),
}

impl TopicMatch {
    fn parse(topic: &str) -> Self {
        match topic.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_string()),
            None => Self::Exact(topic.to_string()),
        }
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(t) => t == topic,
            Self::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

/// One compiled transform. Cheap to clone.
#[derive(Clone)]
pub struct Transform {
    name: String,
    topics: Vec<TopicMatch>,
    program: Arc<Program>,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transform").field("name", &self.name).field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl Transform {
    /// The transform's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it applies to records of `topic`.
    pub fn applies_to(&self, topic: &str) -> bool {
        self.topics.is_empty() || self.topics.iter().any(|t| t.matches(topic))
    }
}

/// Why a transform failed on a record (the record follows `failure.policy`).
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The program stopped with an error (a failing `!` call, `assert!`).
    #[error("transform `{transform}` failed: {message}")]
    Runtime {
        /// The transform's name.
        transform: String,
        /// VRL's error message.
        message: String,
    },
    /// The program left the record in a shape that cannot be published or processed.
    #[error("transform `{transform}` produced an invalid {field}: {message}")]
    Output {
        /// The transform's name (the last one that ran).
        transform: String,
        /// `%topic`, `%key`, `%attributes` or `.`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl TransformError {
    /// The transform that failed.
    pub fn transform(&self) -> &str {
        match self {
            Self::Runtime { transform, .. } | Self::Output { transform, .. } => transform,
        }
    }
}

/// What a record looks like to a program, and what it looks like after.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The topic.
    pub topic: String,
    /// The routing key.
    pub key: Option<String>,
    /// The attributes.
    pub attributes: HashMap<String, String>,
    /// The payload (`.`).
    pub payload: Value,
    /// The last transform that ran on it, if any.
    pub transform: Option<String>,
}

/// The payload as a program sees it: its JSON value when it parses, else its bytes.
/// Returns the value and whether it was JSON.
pub fn payload_value(payload: &Bytes) -> (Value, bool) {
    match serde_json::from_slice::<Value>(payload) {
        Ok(value) => (value, true),
        Err(_) => (Value::Bytes(payload.clone()), false),
    }
}

/// The payload bytes of a program's result: JSON text, except that a payload which was not
/// JSON and is still a string stays raw bytes.
pub fn payload_bytes(value: &Value, was_json: bool) -> Result<Bytes, serde_json::Error> {
    if !was_json {
        if let Some(bytes) = value.as_bytes() {
            return Ok(bytes.clone());
        }
    }
    serde_json::to_vec(value).map(Bytes::from)
}

/// The transforms of a runtime, compiled, in order.
#[derive(Debug, Clone, Default)]
pub struct Transforms {
    list: Vec<Transform>,
}

impl Transforms {
    /// Compiles `configs` (errors name the field, e.g. `transforms[1].source`).
    pub fn compile(configs: &[TransformConfig]) -> Result<Self, ConfigError> {
        let list = configs
            .iter()
            .enumerate()
            .map(|(i, config)| config.compile(&format!("transforms[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { list })
    }

    /// Whether there is no transform.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The transforms, in order.
    pub fn transforms(&self) -> &[Transform] {
        &self.list
    }

    /// Whether any transform applies to records of `topic`.
    pub fn applies_to(&self, topic: &str) -> bool {
        self.list.iter().any(|t| t.applies_to(topic))
    }

    /// Runs every transform that applies (by the topic the event holds when it runs), in
    /// order, on a record of `topic` with `key`, `attributes` and `payload` (see
    /// [`payload_value`]). The record's parts are only read: on an error the caller still
    /// holds the record as it was.
    pub fn apply(
        &self,
        topic: &str,
        key: Option<&str>,
        attributes: &HashMap<String, String>,
        payload: Value,
    ) -> Result<Applied, TransformError> {
        let mut target =
            TargetValue { value: payload, metadata: metadata(topic, key, attributes), secrets: Secrets::default() };
        let mut runtime = VrlRuntime::default();
        let mut last = None;
        let mut current = topic.to_string();
        for transform in &self.list {
            if !transform.applies_to(&current) {
                continue;
            }
            last = Some(transform);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.resolve(&mut target, &transform.program, &TimeZone::default())
            }));
            runtime.clear();
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(Terminate::Abort(_))) => return Ok(Applied::Dropped { transform: transform.name.clone() }),
                Ok(Err(error)) => {
                    return Err(TransformError::Runtime {
                        transform: transform.name.clone(),
                        message: error.to_string(),
                    })
                }
                Err(_) => {
                    return Err(TransformError::Runtime {
                        transform: transform.name.clone(),
                        message: "the program panicked".into(),
                    })
                }
            }
            current = read_topic(&target.metadata, &transform.name)?;
        }
        let Some(transform) = last else {
            return Ok(Applied::Kept(Event {
                topic: current,
                key: key.map(str::to_string),
                attributes: attributes.clone(),
                payload: target.value,
                transform: None,
            }));
        };
        let name = &transform.name;
        if current != topic {
            validate_topic("%topic", &current).map_err(|e| TransformError::Output {
                transform: name.clone(),
                field: "%topic",
                message: e.to_string(),
            })?;
        }
        let key = read_key(&target.metadata, name)?;
        let attributes = read_attributes(&target.metadata, name)?;
        Ok(Applied::Kept(Event {
            topic: current,
            key,
            attributes,
            payload: target.value,
            transform: Some(name.clone()),
        }))
    }
}

/// The outcome of [`Transforms::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The record goes on, as transformed.
    Kept(Event),
    /// A program dropped the record.
    Dropped {
        /// The transform that dropped it.
        transform: String,
    },
}

fn metadata(topic: &str, key: Option<&str>, attributes: &HashMap<String, String>) -> Value {
    let mut map = ObjectMap::new();
    map.insert(KeyString::from("topic"), Value::from(topic));
    map.insert(KeyString::from("key"), key.map_or(Value::Null, Value::from));
    let attributes: ObjectMap =
        attributes.iter().map(|(k, v)| (KeyString::from(k.as_str()), Value::from(v.as_str()))).collect();
    map.insert(KeyString::from("attributes"), Value::Object(attributes));
    Value::Object(map)
}

fn field<'a>(metadata: &'a Value, name: &str) -> Option<&'a Value> {
    metadata.as_object().and_then(|map| map.get(name))
}

fn read_topic(metadata: &Value, transform: &str) -> Result<String, TransformError> {
    match field(metadata, "topic").and_then(Value::to_str) {
        Some(topic) => Ok(topic.to_string()),
        None => Err(TransformError::Output {
            transform: transform.to_string(),
            field: "%topic",
            message: "must be a string (`/default/orders`)".into(),
        }),
    }
}

fn read_key(metadata: &Value, transform: &str) -> Result<Option<String>, TransformError> {
    match field(metadata, "key") {
        None | Some(Value::Null) => Ok(None),
        Some(value) if value.is_bytes() => Ok(value.to_str_lossy().map(|s| s.into_owned())),
        Some(Value::Integer(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(TransformError::Output {
            transform: transform.to_string(),
            field: "%key",
            message: "must be a string, an integer or null".into(),
        }),
    }
}

fn read_attributes(metadata: &Value, transform: &str) -> Result<HashMap<String, String>, TransformError> {
    match field(metadata, "attributes") {
        None | Some(Value::Null) => Ok(HashMap::new()),
        Some(Value::Object(map)) => Ok(map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned()))
            .collect()),
        Some(_) => Err(TransformError::Output {
            transform: transform.to_string(),
            field: "%attributes",
            message: "must be an object of strings".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `transforms` on a record of `/default/in` with key `k1`, attribute `a=1`.
    fn run(transforms: &Transforms, payload: &str) -> Result<Applied, TransformError> {
        let attributes = HashMap::from([("a".to_string(), "1".to_string())]);
        transforms.apply("/default/in", Some("k1"), &attributes, payload_value(&Bytes::from(payload.to_string())).0)
    }

    fn compile(source: &str) -> Transforms {
        Transforms::compile(&[TransformConfig::inline("t", source)]).expect("compiles")
    }

    #[test]
    fn a_program_rewrites_payload_topic_key_and_attributes() {
        let transforms = compile(
            "del(.secret)\n.n = 2\n%topic = \"/default/out\"\n%key = \"k2\"\n%attributes.b = \"x\"\ndel(%attributes.a)",
        );
        let Applied::Kept(out) = run(&transforms, r#"{"secret":"s","n":1}"#).expect("runs") else { panic!("dropped") };
        assert_eq!(out.topic, "/default/out");
        assert_eq!(out.key.as_deref(), Some("k2"));
        assert_eq!(out.attributes, HashMap::from([("b".to_string(), "x".to_string())]));
        assert_eq!(&payload_bytes(&out.payload, true).expect("json")[..], br#"{"n":2}"#);
    }

    #[test]
    fn abort_drops_and_a_failing_call_is_an_error() {
        let transforms = compile("if .test == true { abort }\n.v = parse_json!(.raw)");
        assert_eq!(run(&transforms, r#"{"test":true}"#).expect("runs"), Applied::Dropped { transform: "t".into() });
        let error = run(&transforms, r#"{"raw":"{nope"}"#).expect_err("fails");
        assert!(error.to_string().contains("transform `t` failed"), "{error}");
        assert!(matches!(run(&transforms, r#"{"raw":"[1]"}"#), Ok(Applied::Kept(_))));
    }

    #[test]
    fn a_bad_topic_or_key_is_an_output_error() {
        let error = run(&compile("%topic = \"nope\""), "{}").expect_err("invalid topic");
        assert!(matches!(error, TransformError::Output { field: "%topic", .. }), "{error}");
        let error = run(&compile("%key = [1]"), "{}").expect_err("invalid key");
        assert!(matches!(error, TransformError::Output { field: "%key", .. }), "{error}");
    }

    #[test]
    fn non_json_payloads_stay_bytes() {
        let transforms = compile(". = upcase(string!(.))");
        let (value, was_json) = payload_value(&Bytes::from_static(b"plain text"));
        assert!(!was_json);
        let Applied::Kept(out) = transforms.apply("/default/in", None, &HashMap::new(), value).expect("runs") else {
            panic!("dropped")
        };
        assert_eq!(&payload_bytes(&out.payload, false).expect("bytes")[..], b"PLAIN TEXT");
    }

    #[test]
    fn topic_filters_are_read_as_each_transform_runs() {
        let transforms = Transforms::compile(&[
            TransformConfig::inline("route", "%topic = \"/default/other\"").for_topics(["/default/in"]),
            TransformConfig::inline("mark", ".marked = true").for_topics(["/default/oth*"]),
            TransformConfig::inline("never", ".never = true").for_topics(["/default/in"]),
        ])
        .expect("compiles");
        let Applied::Kept(out) = run(&transforms, "{}").expect("runs") else { panic!("dropped") };
        assert_eq!(&payload_bytes(&out.payload, true).expect("json")[..], br#"{"marked":true}"#);
        assert!(transforms.applies_to("/default/in") && !transforms.applies_to("/default/x"));
    }

    #[test]
    fn a_compile_error_names_the_field_line_and_column() {
        let configs = vec![
            TransformConfig::inline("ok", ".a = 1"),
            TransformConfig::inline("broken", ".a = 1\n.b = nosuchfn(.a)"),
        ];
        let error = configs.validate().expect_err("does not compile").to_string();
        assert!(error.contains("transforms[1].source"), "{error}");
        assert!(error.contains("line 2, column 6"), "{error}");
        assert!(error.contains("nosuchfn"), "{error}");
    }

    #[test]
    fn source_or_file_is_required_and_names_are_unique() {
        let none = TransformConfig { name: "x".into(), source: None, file: None, topics: vec![] };
        assert!(vec![none].validate().expect_err("no program").to_string().contains("transforms[0]"));
        let twice = vec![TransformConfig::inline("x", ".a = 1"), TransformConfig::inline("x", ".b = 1")];
        assert!(twice.validate().expect_err("twice").to_string().contains("transforms[1].name"));
        let bad_topic = vec![TransformConfig::inline("x", ".a = 1").for_topics(["orders"])];
        assert!(bad_topic.validate().expect_err("topic").to_string().contains("transforms[0].topics[0]"));
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab", 0), (1, 1));
        assert_eq!(line_column("é\nx", 3), (2, 1));
    }
}
