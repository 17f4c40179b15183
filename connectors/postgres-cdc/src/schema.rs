//! A JSON Schema per table, derived from its relation metadata, registered in the Danube
//! schema registry and attached to the table's records (`connector.schema = "json_schema"`).
//!
//! The schema describes the envelope exactly as [`change`](crate::change) writes it: `op`,
//! `schema`, `table`, `before`, `after`, the optional `unchanged_toast` list, `lsn`,
//! `commit_lsn`, `seq`, `xid` and `commit_ts`. Each column is typed as [`value`](crate::value)
//! maps it; every column is nullable (pgoutput carries no NOT NULL information), and no
//! column is required (a key-only `before` image or a TOAST column left out are valid). The
//! row objects stay open (no `additionalProperties: false`), so adding or dropping a column is
//! a compatible change; retyping one is not.
//!
//! A table's schema is registered when the table is first seen (its snapshot, or its first
//! Relation message in the stream) and again when a Relation message brings different
//! columns (ALTER TABLE): a new version, while records emitted before keep the old one. A
//! registration failure is a [`CdcError::Schema`]: transient when the registry is
//! unreachable (the session reconnects and the table is registered again), fatal when the
//! registry refuses the change. Either way no record of the table leaves without its schema
//! and the slot does not advance past the change.

use std::collections::HashMap;
use std::sync::Arc;

use danube_connect_core::schema::{BoundSchema, SchemaKind};
use danube_connect_core::Publisher;
use serde_json::{json, Map, Value};
use tracing::info;

use crate::change::Table;
use crate::config::{PostgresCdcConfig, SchemaMode};
use crate::error::CdcError;

/// Registers and remembers the schema of each table (by subject).
#[derive(Debug, Default)]
pub(crate) struct TableSchemas {
    publisher: Option<Publisher>,
    /// Whether schemas are registered (`connector.schema = "json_schema"`).
    registering: bool,
    config: Arc<PostgresCdcConfig>,
    /// Per subject: the definition last registered and what the registry made of it.
    bound: HashMap<String, (Vec<u8>, Arc<BoundSchema>)>,
}

impl TableSchemas {
    /// Schemas per `config.schema`, registered through `publisher` (disabled for `none`).
    pub(crate) fn new(config: Arc<PostgresCdcConfig>, publisher: Publisher) -> Self {
        Self {
            publisher: Some(publisher),
            registering: config.schema == SchemaMode::JsonSchema,
            config,
            bound: HashMap::new(),
        }
    }

    /// Attaches the table's schema, registering it first when it is new or its columns
    /// changed; the table is returned unchanged when schemas are off.
    pub(crate) async fn attach(&mut self, mut table: Table) -> Result<Table, CdcError> {
        let Some(publisher) = self.publisher.as_ref().filter(|_| self.registering) else { return Ok(table) };
        let subject = self.config.subject_for(&table.relation.namespace, &table.relation.name);
        let definition = serde_json::to_vec(&json_schema(&table)).map_err(CdcError::Serialize)?;
        if let Some((known, bound)) = self.bound.get(&subject) {
            if *known == definition {
                table.schema = Some(bound.clone());
                return Ok(table);
            }
        }
        let bound = publisher
            .register_schema(subject.clone(), SchemaKind::JsonSchema, &definition, self.config.schema_compatibility)
            .await
            .map_err(|source| CdcError::Schema { table: table.full_name().to_string(), source })?;
        info!(table = %table.full_name(), subject = %bound.subject, schema_id = bound.schema_id,
            version = bound.version, "table schema registered");
        table.schema = Some(bound.clone());
        self.bound.insert(subject, (definition, bound));
        Ok(table)
    }
}

impl TableSchemas {
    /// The runtime's publisher (none outside the runtime).
    pub(crate) fn publisher(&self) -> Option<&Publisher> {
        self.publisher.as_ref()
    }
}

/// The JSON Schema of the change records of `table`.
pub fn json_schema(table: &Table) -> Value {
    let mut columns = Map::new();
    for (column, element) in table.relation.columns.iter().zip(&table.array_elements) {
        let element = element.or_else(|| crate::value::array_element(column.type_oid));
        let schema = match element {
            Some(element) => array(scalar(element)),
            None => scalar(column.type_oid),
        };
        columns.insert(column.name.clone(), schema);
    }
    let key: Vec<&str> =
        table.key.iter().filter_map(|&i| table.relation.columns.get(i)).map(|c| c.name.as_str()).collect();
    let row = json!({ "type": ["object", "null"], "properties": columns });
    let lsn = json!({ "type": "string", "pattern": "^[0-9A-F]+/[0-9A-F]+$" });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": format!("{} change", table.full_name()),
        "description": format!("A row change of {} captured by danube-postgres-cdc; key columns: {}",
            table.full_name(), if key.is_empty() { "none".to_string() } else { key.join(", ") }),
        "type": "object",
        "additionalProperties": false,
        "required": ["op", "schema", "table", "before", "after", "lsn", "commit_lsn", "seq", "xid", "commit_ts"],
        "properties": {
            "op": { "type": "string", "enum": ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "READ"] },
            "schema": { "type": "string", "const": table.relation.namespace },
            "table": { "type": "string", "const": table.relation.name },
            "before": row,
            "after": row,
            "unchanged_toast": { "type": "array", "items": { "type": "string" } },
            "lsn": lsn,
            "commit_lsn": lsn,
            "seq": { "type": "integer", "minimum": 0 },
            "xid": { "type": "integer", "minimum": 0 },
            "commit_ts": { "type": "string", "format": "date-time" },
        },
    })
}

/// A nullable scalar column of type `oid`, as [`value::to_json`](crate::value::to_json) maps it.
fn scalar(oid: u32) -> Value {
    match oid {
        16 => json!({ "type": ["boolean", "null"] }),
        20 | 21 | 23 | 26 => json!({ "type": ["integer", "null"] }),
        // NaN and the infinities are strings.
        700 | 701 => json!({ "type": ["number", "string", "null"] }),
        1700 | 790 => json!({ "type": ["string", "null"], "description": "decimal text (no precision loss)" }),
        // Any JSON value.
        114 | 3802 => json!({}),
        17 => json!({ "type": ["string", "null"], "contentEncoding": "base64" }),
        1184 => temporal(json!({ "format": "date-time" })),
        1114 => temporal(json!({ "pattern": "^[0-9]{4,}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?$" })),
        1082 => temporal(json!({ "format": "date" })),
        2950 => json!({ "type": ["string", "null"], "format": "uuid" }),
        // Text, enums, times, intervals and every other type: their text form.
        _ => json!({ "type": ["string", "null"] }),
    }
}

/// A timestamp or date: the ISO form, or PostgreSQL's `infinity` / `-infinity` / `... BC` text.
fn temporal(iso: Value) -> Value {
    json!({
        "type": ["string", "null"],
        "anyOf": [iso, { "enum": ["infinity", "-infinity"] }, { "pattern": " BC$" }],
    })
}

/// An array column: a JSON array of `element` values (nested for more dimensions), or the
/// array's text when it does not parse.
fn array(element: Value) -> Value {
    json!({
        "type": ["array", "string", "null"],
        "items": { "anyOf": [element, { "type": "array" }] },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{Column, Relation};

    fn table(columns: &[(&str, u32)]) -> Table {
        let columns = columns
            .iter()
            .map(|(name, oid)| Column { key: *name == "id", name: name.to_string(), type_oid: *oid, type_modifier: -1 })
            .collect();
        let relation =
            Relation { oid: 1, namespace: "public".into(), name: "t".into(), replica_identity: b'd', columns };
        Table::new(relation, &["id".to_string()], "/default/public-t".into())
    }

    #[test]
    fn columns_are_typed_by_oid_and_nullable() {
        let schema = json_schema(&table(&[("id", 23), ("ok", 16), ("tags", 1009), ("meta", 3802), ("mood", 99999)]));
        let after = &schema["properties"]["after"]["properties"];
        assert_eq!(after["id"]["type"], json!(["integer", "null"]));
        assert_eq!(after["ok"]["type"], json!(["boolean", "null"]));
        assert_eq!(after["tags"]["items"]["anyOf"][0]["type"], json!(["string", "null"]));
        assert_eq!(after["meta"], json!({}));
        assert_eq!(after["mood"]["type"], json!(["string", "null"]));
        assert!(schema["description"].as_str().unwrap_or_default().contains("key columns: id"));
    }

    #[test]
    fn the_definition_changes_only_with_the_columns() {
        let one = json_schema(&table(&[("id", 23), ("name", 25)]));
        assert_eq!(one, json_schema(&table(&[("id", 23), ("name", 25)])));
        assert_ne!(one, json_schema(&table(&[("id", 23), ("name", 25), ("age", 23)])));
        assert_ne!(one, json_schema(&table(&[("id", 23), ("name", 23)])));
    }
}
