//! One template grammar for every name a connector makes from data: Danube topics made from
//! MQTT topics, HTTP paths and headers, Kafka topics or database tables, and the URLs, MQTT
//! topics and Kafka topics a sink makes from a record. See `docs/templates.md`.
//!
//! # Grammar
//!
//! - Text is copied as it is, except `{...}`, a placeholder, and `{{` / `}}`, a literal
//!   `{` / `}`.
//! - A placeholder is `{name}` or `{name:modifier}`. A name is one word (`topic`, `key`,
//!   `1`) or a dotted path whose first word says where the value comes from
//!   (`attr.tenant`, `header.X-GitHub-Event`, `path.repo`); the rest of a dotted name is
//!   taken as it is (`attr.mqtt.topic` is the attribute `mqtt.topic`).
//! - A modifier changes how the value is written (`{key:levels}` keeps the `/` of an MQTT
//!   topic's levels); only the connector that documents one accepts it.
//! - Old spellings still read: `{attr:NAME}` is `{attr.NAME}`, `{attributes.NAME}` is
//!   `{attr.NAME}`, `{topic_name}` is `{topic}`.
//!
//! # The record's fields (every sink)
//!
//! | placeholder | value for a record of `/default/orders` |
//! |---|---|
//! | `{topic}` | the topic's name, `orders` |
//! | `{namespace}` | its namespace, `default` |
//! | `{partition}` | the partition's name, `orders-part-1` (`orders` when not partitioned) |
//! | `{offset}` | the offset within the partition |
//! | `{key}` | the routing key (a record without one is refused) |
//! | `{attr.NAME}` | the attribute `NAME` (a record without it is refused) |
//!
//! A source's placeholders name the outside message (an MQTT topic level, an HTTP header, a
//! database table); `{topic}` there is the name of the topic the message came from (the
//! MQTT topic with `/` as `-`, the Kafka topic). Every connector writes values in the form
//! its output needs (percent-encoded in a URL, one topic part in a Danube topic), so a
//! value cannot add a path segment, a topic level or a namespace.
//!
//! A template is parsed once, at configuration load: an unknown placeholder or a bad form
//! fails validation with the field's name ([`TemplateError::for_field`]).

use std::borrow::Cow;

use crate::config::ConfigError;
use crate::record::SinkRecord;

/// A placeholder as written: `{name}` or `{name:modifier}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// The name (`topic`, `attr.tenant`); old spellings already rewritten.
    pub name: String,
    /// The modifier after `:`, if any.
    pub modifier: Option<String>,
}

impl Placeholder {
    /// Reads the text between `{` and `}`, rewriting the old `attr:NAME` to `attr.NAME`.
    fn read(text: &str) -> Self {
        let text = match text.strip_prefix("attr:") {
            Some(rest) => Cow::Owned(format!("attr.{rest}")),
            None => Cow::Borrowed(text),
        };
        match text.split_once(':') {
            Some((name, modifier)) => Self { name: name.to_string(), modifier: Some(modifier.to_string()) },
            None => Self { name: text.into_owned(), modifier: None },
        }
    }

    /// The rest of the name after `prefix.` (`attr.tenant` with `attr` gives `tenant`).
    pub fn dotted(&self, prefix: &str) -> Option<&str> {
        self.name.strip_prefix(prefix)?.strip_prefix('.').filter(|rest| !rest.is_empty())
    }

    /// An error unless the placeholder has no modifier.
    pub fn no_modifier(&self) -> Result<(), String> {
        match &self.modifier {
            None => Ok(()),
            Some(modifier) => Err(format!("`:{modifier}` is not a modifier of `{{{}}}`", self.name)),
        }
    }
}

impl std::fmt::Display for Placeholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.modifier {
            Some(modifier) => write!(f, "{{{}:{modifier}}}", self.name),
            None => write!(f, "{{{}}}", self.name),
        }
    }
}

/// One piece of a template: literal text, or a value resolved per render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part<V> {
    /// Text copied as it is.
    Literal(String),
    /// A placeholder, as the connector's vocabulary compiled it.
    Value(V),
}

/// A parsed template; `V` is what the connector's vocabulary made of each placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<V> {
    parts: Vec<Part<V>>,
}

/// Why a template is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed `{{` at byte {0} (write `{{{{` for a literal `{{`)")]
    Unclosed(usize),
    /// A `}` without its `{`.
    #[error("`}}` without `{{` at byte {0} (write `}}}}` for a literal `}}`)")]
    Unopened(usize),
    /// `{}`.
    #[error("empty placeholder `{{}}` at byte {0}")]
    Empty(usize),
    /// A placeholder the connector does not know, or a modifier it does not take.
    #[error("{placeholder}: {message}")]
    Placeholder {
        /// The placeholder as written.
        placeholder: String,
        /// What is wrong and what to use.
        message: String,
    },
    /// The template's form is not acceptable (e.g. does not make a `/namespace/topic`).
    #[error("{0}")]
    Form(String),
}

impl TemplateError {
    /// The error as a configuration error naming `field`.
    pub fn for_field(&self, field: impl Into<String>) -> ConfigError {
        ConfigError::invalid(field, self.to_string())
    }
}

impl<V> Template<V> {
    /// Parses `text`; `vocabulary` compiles each placeholder or says why it is refused.
    pub fn parse(
        text: &str,
        mut vocabulary: impl FnMut(&Placeholder) -> Result<V, String>,
    ) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::Unopened(at)),
                '{' => {
                    let rest = &text[at + 1..];
                    let Some(end) = rest.find(['}', '{']).filter(|&end| rest[end..].starts_with('}')) else {
                        return Err(TemplateError::Unclosed(at));
                    };
                    if end == 0 {
                        return Err(TemplateError::Empty(at));
                    }
                    let placeholder = Placeholder::read(&rest[..end]);
                    let value = vocabulary(&placeholder).map_err(|message| TemplateError::Placeholder {
                        placeholder: format!("`{{{}}}`", &rest[..end]),
                        message,
                    })?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Value(value));
                    while chars.peek().is_some_and(|(i, _)| *i <= at + end + 1) {
                        chars.next();
                    }
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// A template of literal text only (no parsing: braces are kept as they are).
    pub fn literal(text: &str) -> Self {
        Self { parts: if text.is_empty() { Vec::new() } else { vec![Part::Literal(text.to_string())] } }
    }

    /// Its parts, in order.
    pub fn parts(&self) -> &[Part<V>] {
        &self.parts
    }

    /// The compiled placeholders, in order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(v) => Some(v),
            Part::Literal(_) => None,
        })
    }

    /// Whether it has no placeholder (every rendering is the same text).
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The text with every placeholder written as `sample`: to check the template's form
    /// at load (a URL that parses, a topic of the right shape).
    pub fn sample(&self, sample: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(text) => text.as_str(),
                Part::Value(_) => sample,
            })
            .collect()
    }

    /// The template split at the first `separator` in its literal text (`db.{table}` at
    /// `.` gives `db` and `{table}`), or `None` when no literal text has it. Values never
    /// move the split: a `.` in a rendered value stays in its half.
    pub fn split_once(&self, separator: char) -> Option<(Self, Self)>
    where
        V: Clone,
    {
        let (index, at) = self.parts.iter().enumerate().find_map(|(i, p)| match p {
            Part::Literal(text) => text.find(separator).map(|at| (i, at)),
            Part::Value(_) => None,
        })?;
        let Part::Literal(text) = &self.parts[index] else { return None };
        let mut before = self.parts[..index].to_vec();
        let mut after = Vec::new();
        let (head, tail) = (&text[..at], &text[at + separator.len_utf8()..]);
        if !head.is_empty() {
            before.push(Part::Literal(head.to_string()));
        }
        if !tail.is_empty() {
            after.push(Part::Literal(tail.to_string()));
        }
        after.extend(self.parts[index + 1..].iter().cloned());
        Some((Self { parts: before }, Self { parts: after }))
    }

    /// The text for one rendering: `write` appends a placeholder's value (in the form the
    /// output needs) or says why there is none.
    pub fn render<E>(&self, mut write: impl FnMut(&V, &mut String) -> Result<(), E>) -> Result<String, E> {
        let mut out = String::with_capacity(64);
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Value(value) => write(value, &mut out)?,
            }
        }
        Ok(out)
    }
}

/// A record field a sink's template names (the table in the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordField {
    /// `{topic}`: the topic's name.
    Topic,
    /// `{namespace}`: the topic's namespace.
    Namespace,
    /// `{partition}`: the partition's name.
    Partition,
    /// `{offset}`: the offset within the partition.
    Offset,
    /// `{key}`: the routing key.
    Key,
    /// `{attr.NAME}`: an attribute.
    Attr(String),
}

/// The record fields, as listed in errors about an unknown placeholder.
pub const RECORD_FIELDS: &str = "{topic}, {namespace}, {partition}, {offset}, {key} or {attr.NAME}";

/// Why a record has no value for a placeholder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MissingField {
    /// The record has no routing key.
    #[error("the record has no routing key for `{{key}}`")]
    Key,
    /// The record lacks the attribute.
    #[error("the record has no attribute `{0}`")]
    Attr(String),
}

impl RecordField {
    /// The field `placeholder` names (its modifier is the caller's to check), or `None`
    /// when it names no record field.
    pub fn parse(placeholder: &Placeholder) -> Option<Self> {
        match placeholder.name.as_str() {
            "topic" | "topic_name" => Some(Self::Topic),
            "namespace" => Some(Self::Namespace),
            "partition" => Some(Self::Partition),
            "offset" => Some(Self::Offset),
            "key" => Some(Self::Key),
            _ => placeholder
                .dotted("attr")
                .or_else(|| placeholder.dotted("attributes"))
                .map(|name| Self::Attr(name.to_string())),
        }
    }

    /// The field a placeholder without modifier names, or the error listing the fields.
    pub fn parse_plain(placeholder: &Placeholder) -> Result<Self, String> {
        placeholder.no_modifier()?;
        Self::parse(placeholder).ok_or_else(|| format!("unknown placeholder; use {RECORD_FIELDS}"))
    }

    /// The field's value in `record`, unencoded.
    pub fn value<'r>(&self, record: &'r SinkRecord) -> Result<Cow<'r, str>, MissingField> {
        let (namespace, name) = split_topic(&record.topic);
        Ok(match self {
            Self::Topic => Cow::Borrowed(name),
            Self::Namespace => Cow::Borrowed(namespace),
            Self::Partition => Cow::Borrowed(split_topic(&record.partition_topic).1),
            Self::Offset => Cow::Owned(record.offset.to_string()),
            Self::Key => Cow::Borrowed(record.routing_key.as_deref().ok_or(MissingField::Key)?),
            Self::Attr(attr) => Cow::Borrowed(record.attribute(attr).ok_or_else(|| MissingField::Attr(attr.clone()))?),
        })
    }
}

/// What the placeholders of a template-valued configuration field may name.
pub trait Vocabulary {
    /// What a placeholder compiles to.
    type Value: Clone + std::fmt::Debug + PartialEq;

    /// Compiles one placeholder or says why it is refused.
    fn compile(placeholder: &Placeholder) -> Result<Self::Value, String>;
}

/// A template-valued configuration field: the text as written, parsed once when the
/// configuration is loaded. A text that does not parse is kept with its error, which
/// [`check`](Self::check) reports naming the field at validation.
pub struct TemplateText<V: Vocabulary> {
    text: String,
    parsed: Result<Template<V::Value>, TemplateError>,
}

impl<V: Vocabulary> TemplateText<V> {
    /// Parses `text` with the vocabulary `V`.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let parsed = Template::parse(&text, V::compile);
        Self { text, parsed }
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed template, or the configuration error naming `field`.
    pub fn check(&self, field: &str) -> Result<&Template<V::Value>, ConfigError> {
        self.parsed.as_ref().map_err(|e| e.for_field(field))
    }

    /// The parsed template; `None` when it does not parse (refused by validation).
    pub fn template(&self) -> Option<&Template<V::Value>> {
        self.parsed.as_ref().ok()
    }
}

impl<V: Vocabulary> Clone for TemplateText<V> {
    fn clone(&self) -> Self {
        Self { text: self.text.clone(), parsed: self.parsed.clone() }
    }
}

impl<V: Vocabulary> PartialEq for TemplateText<V> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<V: Vocabulary> std::fmt::Debug for TemplateText<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.text.fmt(f)
    }
}

impl<V: Vocabulary> std::fmt::Display for TemplateText<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<V: Vocabulary> From<&str> for TemplateText<V> {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl<V: Vocabulary> From<String> for TemplateText<V> {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl<V: Vocabulary> serde::Serialize for TemplateText<V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de, V: Vocabulary> serde::Deserialize<'de> for TemplateText<V> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// A database table's names, in templates of tables' topics, subjects and target tables
/// (postgres-cdc, the ClickHouse sink in CDC mode): `{schema}` and `{table}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableField {
    /// `{schema}`: the table's schema (PostgreSQL namespace).
    Schema,
    /// `{table}`: the table's name.
    Table,
}

/// The [`Vocabulary`] of [`TableField`].
#[derive(Debug, Clone, Copy)]
pub struct TableFields;

impl Vocabulary for TableFields {
    type Value = TableField;

    fn compile(placeholder: &Placeholder) -> Result<TableField, String> {
        placeholder.no_modifier()?;
        match placeholder.name.as_str() {
            "schema" => Ok(TableField::Schema),
            "table" => Ok(TableField::Table),
            _ => Err("unknown placeholder; use {schema} or {table}".into()),
        }
    }
}

impl Template<TableField> {
    /// The text for table `schema`.`table`, `write` appending each value to the text (e.g.
    /// sanitized to a topic part).
    pub fn render_table(&self, schema: &str, table: &str, write: impl Fn(&mut String, &str)) -> String {
        let rendered: Result<String, std::convert::Infallible> = self.render(|field, out| {
            write(out, if *field == TableField::Schema { schema } else { table });
            Ok(())
        });
        rendered.unwrap_or_else(|never| match never {})
    }
}

/// `/namespace/name` as `(namespace, name)`; a topic without a namespace is all name.
pub fn split_topic(topic: &str) -> (&str, &str) {
    let topic = topic.trim_start_matches('/');
    match topic.split_once('/') {
        Some((namespace, name)) => (namespace, name),
        None => ("", topic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_template(text: &str) -> Result<Template<RecordField>, TemplateError> {
        Template::parse(text, RecordField::parse_plain)
    }

    #[test]
    fn record_fields_are_rendered() {
        let mut record = SinkRecord::new("/default/orders", 7, "x");
        record.partition_topic = "/default/orders-part-1".into();
        record.routing_key = Some("k1".into());
        record.attributes.insert("mqtt.topic".into(), "a/b".into());
        let t = record_template("{namespace}/{topic}/{partition}/{offset}/{key}/{attr.mqtt.topic}").expect("parse");
        let out = t.render(|f, out| f.value(&record).map(|v| out.push_str(&v))).expect("render");
        assert_eq!(out, "default/orders/orders-part-1/7/k1/a/b");
    }

    #[test]
    fn old_spellings_read_as_the_new_ones() {
        let new = record_template("{attr.device}-{topic}").expect("parse");
        assert_eq!(record_template("{attr:device}-{topic_name}").expect("parse"), new);
        assert_eq!(record_template("{attributes.device}-{topic}").expect("parse"), new);
        let levels = Template::parse("{attr:device:levels}", |p| Ok::<_, String>(p.clone())).expect("parse");
        assert_eq!(
            levels.values().next(),
            Some(&Placeholder { name: "attr.device".into(), modifier: Some("levels".into()) })
        );
    }

    #[test]
    fn missing_values_are_named() {
        let record = SinkRecord::new("/default/orders", 1, "x");
        let t = record_template("{attr.region}").expect("parse");
        let err = t.render(|f, out| f.value(&record).map(|v| out.push_str(&v))).expect_err("missing");
        assert_eq!(err, MissingField::Attr("region".into()));
        let t = record_template("{key}").expect("parse");
        assert_eq!(t.render(|f, out| f.value(&record).map(|v| out.push_str(&v))), Err(MissingField::Key));
    }

    #[test]
    fn escapes_and_bad_forms() {
        let t = record_template("{{literal}}-{topic}").expect("parse");
        assert_eq!(t.sample("x"), "{literal}-x");
        assert!(matches!(record_template("a{topic"), Err(TemplateError::Unclosed(1))));
        assert!(matches!(record_template("a}b"), Err(TemplateError::Unopened(1))));
        assert!(matches!(record_template("a{}"), Err(TemplateError::Empty(1))));
        assert!(matches!(record_template("{a{topic}}"), Err(TemplateError::Unclosed(0))));
        let err = record_template("/x/{what}").expect_err("unknown");
        assert!(err.to_string().contains("`{what}`") && err.to_string().contains("{attr.NAME}"), "{err}");
        let err = record_template("{key:levels}").expect_err("modifier");
        assert!(err.to_string().contains(":levels"), "{err}");
        let config = err.for_field("connector.url").to_string();
        assert!(config.contains("connector.url"), "{config}");
    }

    #[test]
    fn template_text_parses_once_and_reports_the_field() {
        let good: TemplateText<TableFields> = "/default/{schema}-{table}".into();
        let t = good.check("connector.topic").expect("parses");
        assert_eq!(t.render_table("public", "a.b", |out, v| out.push_str(&v.replace('.', "_"))), "/default/public-a_b");
        let bad: TemplateText<TableFields> = serde_json::from_str(r#""/default/{tabel}""#).expect("deserializes");
        let db: TemplateText<TableFields> = "cdc_{schema}.t_{table}".into();
        let (database, table) = db.template().and_then(|t| t.split_once('.')).expect("split");
        assert_eq!(database.render_table("a.b", "c.d", String::push_str), "cdc_a.b");
        assert_eq!(table.render_table("a.b", "c.d", String::push_str), "t_c.d");
        let err = bad.check("connector.topic").expect_err("unknown placeholder").to_string();
        assert!(err.contains("connector.topic") && err.contains("{tabel}"), "{err}");
        assert_eq!(serde_json::to_string(&bad).expect("serialize"), r#""/default/{tabel}""#);
    }

    #[test]
    fn static_templates_and_samples() {
        assert!(record_template("/default/fixed").expect("parse").is_static());
        let t = record_template("/default/{topic}-x").expect("parse");
        assert!(!t.is_static());
        assert_eq!(t.sample("s"), "/default/s-x");
        assert_eq!(Template::<RecordField>::literal("/a/{b}").sample("x"), "/a/{b}");
        assert_eq!(split_topic("/default/orders"), ("default", "orders"));
        assert_eq!(split_topic("orders"), ("", "orders"));
    }
}
