//! Maps a JSON record onto a table's columns (read from `system.columns`).
//!
//! A row is one `JSONEachRow` line holding the fields that name insertable columns, each
//! converted to its column type, plus the configured metadata columns. Fields that are
//! missing (or `null` for a non-`Nullable` column) are left out: a column with a
//! `DEFAULT` expression is then left out of the insert's column list too, so ClickHouse
//! computes its default; other columns get their type's default. Rows are grouped by that
//! column list (their *shape*).

use std::collections::HashMap;

use danube_connect_core::SinkRecord;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{TableMapping, TableMode, UnknownFields};
use crate::types::{write_str, ColumnType, ConvertError};

/// One column of the target table.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Parsed type.
    pub ty: ColumnType,
    /// Whether ClickHouse computes a default expression when the column is not inserted.
    pub has_default_expression: bool,
}

/// A row of `system.columns`.
#[derive(Debug, Deserialize)]
pub struct SystemColumn {
    /// Column name.
    pub name: String,
    /// Type name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `""`, `DEFAULT`, `MATERIALIZED`, `ALIAS` (or `EPHEMERAL`).
    pub default_kind: String,
}

/// Why a record cannot become a row.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The payload is not JSON.
    #[error("payload is not JSON")]
    NotJson(#[source] serde_json::Error),
    /// The payload is JSON but not an object.
    #[error("payload is a JSON {0}, expected an object")]
    NotObject(&'static str),
    /// A field names no column and unknown fields are errors.
    #[error("field `{0}` names no column of the table")]
    UnknownField(String),
    /// A value does not fit its column.
    #[error("column `{column}`")]
    Column {
        /// The column.
        column: String,
        /// The conversion error.
        #[source]
        source: ConvertError,
    },
}

/// A record turned into a `JSONEachRow` line.
#[derive(Debug, Clone)]
pub struct EncodedRow {
    /// The line, without the trailing newline.
    pub line: Vec<u8>,
    /// Indices of the present columns that have a default expression.
    pub shape: Vec<u16>,
}

/// Maps records for one table.
#[derive(Debug)]
pub struct Mapper {
    columns: Vec<Column>,
    by_name: HashMap<String, usize>,
    unknown: UnknownFields,
    topic_column: Option<usize>,
    offset_column: Option<usize>,
    publish_time_column: Option<usize>,
    key_column: Option<usize>,
    batch_column: Option<usize>,
    /// CDC mode: the deleted flag and version columns.
    cdc: Option<(usize, usize)>,
}

impl Mapper {
    /// A mapper over the insertable columns (MATERIALIZED and ALIAS columns are left out).
    pub fn new(system_columns: Vec<SystemColumn>, mapping: &TableMapping) -> Result<Self, String> {
        let columns: Vec<Column> = system_columns
            .into_iter()
            .filter(|c| c.default_kind.is_empty() || c.default_kind == "DEFAULT")
            .map(|c| Column {
                has_default_expression: c.default_kind == "DEFAULT",
                ty: ColumnType::parse(&c.type_name),
                name: c.name,
            })
            .collect();
        if columns.is_empty() {
            return Err(format!("table `{}` has no insertable columns (does it exist?)", mapping.table));
        }
        if columns.len() > usize::from(u16::MAX) {
            return Err(format!("table `{}` has too many columns", mapping.table));
        }
        let by_name: HashMap<String, usize> = columns.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        let lookup = |name: &Option<String>, field: &str| -> Result<Option<usize>, String> {
            match name {
                None => Ok(None),
                Some(name) => by_name
                    .get(name)
                    .copied()
                    .map(Some)
                    .ok_or_else(|| format!("{field} `{name}` is not an insertable column of `{}`", mapping.table)),
            }
        };
        let topic_column = lookup(&mapping.topic_column, "topic_column")?;
        let offset_column = lookup(&mapping.offset_column, "offset_column")?;
        let publish_time_column = lookup(&mapping.publish_time_column, "publish_time_column")?;
        let key_column = lookup(&mapping.key_column, "key_column")?;
        let batch_column = lookup(&mapping.batch_id_column, "batch_id_column")?;
        if let Some(i) = batch_column {
            if columns[i].ty != ColumnType::String || columns[i].has_default_expression {
                return Err(format!(
                    "batch_id_column `{}` must be a String column without a DEFAULT expression",
                    columns[i].name
                ));
            }
        }
        let cdc = match mapping.mode {
            TableMode::Rows => None,
            TableMode::Cdc => {
                let deleted = lookup(&Some(mapping.deleted_column.clone()), "deleted_column")?
                    .ok_or_else(|| "deleted_column is missing".to_string())?;
                let version = lookup(&Some(mapping.version_column.clone()), "version_column")?
                    .ok_or_else(|| "version_column is missing".to_string())?;
                if !columns[version].ty.base().is_unsigned_integer() {
                    return Err(format!(
                        "version_column `{}` must be an unsigned integer column (UInt64)",
                        columns[version].name
                    ));
                }
                Some((deleted, version))
            }
        };
        Ok(Self {
            cdc,
            batch_column,
            topic_column,
            offset_column,
            publish_time_column,
            key_column,
            unknown: mapping.unknown_fields,
            by_name,
            columns,
        })
    }

    /// The insertable columns.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Maps a record and its metadata: the value the runtime decoded with the record's
    /// registry schema when it has one, otherwise the payload parsed as JSON.
    pub fn map_record(&self, record: &SinkRecord) -> Result<EncodedRow, MapError> {
        if let Some(value) = &record.value {
            return self.map_value(value, record);
        }
        let value: Value = serde_json::from_slice(&record.payload).map_err(MapError::NotJson)?;
        self.map_value(&value, record)
    }

    /// Maps an already decoded value of a record (e.g. a schema-registry payload decoded to
    /// JSON) and the record's metadata.
    pub fn map_value(&self, value: &Value, record: &SinkRecord) -> Result<EncodedRow, MapError> {
        let Value::Object(object) = value else { return Err(MapError::NotObject(kind(value))) };
        let metadata = self.metadata(record);
        self.map_object(object, &metadata, self.unknown)
    }

    /// The configured metadata columns of `record`.
    fn metadata(&self, record: &SinkRecord) -> Vec<(usize, Value)> {
        let mut metadata: Vec<(usize, Value)> = Vec::new();
        if let Some(i) = self.topic_column {
            metadata.push((i, Value::String(record.topic.clone())));
        }
        if let Some(i) = self.offset_column {
            metadata.push((i, Value::from(record.offset)));
        }
        if let Some(i) = self.publish_time_column {
            let ms = record.publish_time;
            let value = match self.columns[i].ty.base() {
                ColumnType::DateTime => Value::from(ms / 1000),
                ColumnType::DateTime64(_) => Value::String(format!("{}.{:03}", ms / 1000, ms % 1000)),
                _ => Value::from(ms),
            };
            metadata.push((i, value));
        }
        if let Some(i) = self.key_column {
            metadata.push((i, record.routing_key.clone().map_or(Value::Null, Value::String)));
        }
        metadata
    }

    /// Maps one CDC row image (an after image, or the key of a deleted row) with its deleted
    /// flag and version, plus the record's metadata columns.
    pub fn map_change(
        &self,
        image: &Map<String, Value>,
        record: &SinkRecord,
        deleted: bool,
        version: u64,
    ) -> Result<EncodedRow, MapError> {
        let mut metadata = self.metadata(record);
        if let Some((deleted_column, version_column)) = self.cdc {
            metadata.push((deleted_column, Value::from(u8::from(deleted))));
            metadata.push((version_column, Value::from(version)));
        }
        self.map_object(image, &metadata, self.unknown)
    }

    /// The CDC deleted flag and version column names (CDC mode only).
    pub fn cdc_columns(&self) -> Option<(&str, &str)> {
        self.cdc.map(|(d, v)| (self.columns[d].name.as_str(), self.columns[v].name.as_str()))
    }

    /// Whether the table has an insertable column `name`.
    pub fn has_column(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Maps a JSON object (e.g. a spooled row re-mapped after a schema change).
    pub fn map_object(
        &self,
        object: &Map<String, Value>,
        metadata: &[(usize, Value)],
        unknown: UnknownFields,
    ) -> Result<EncodedRow, MapError> {
        let mut slots: Vec<Option<&Value>> = vec![None; self.columns.len()];
        for (name, value) in object {
            match self.by_name.get(name) {
                Some(&i) if !value.is_null() || self.columns[i].ty.is_nullable() => slots[i] = Some(value),
                Some(_) => {}
                None if unknown == UnknownFields::Error => return Err(MapError::UnknownField(name.clone())),
                None => {}
            }
        }
        for (i, value) in metadata {
            slots[*i] = Some(value);
        }
        if let Some(i) = self.batch_column {
            // Filled per insert with the batch token.
            slots[i] = None;
        }
        let mut line = Vec::with_capacity(64 + object.len() * 16);
        let mut shape = Vec::new();
        line.push(b'{');
        let mut first = true;
        for (i, (column, slot)) in self.columns.iter().zip(slots).enumerate() {
            let Some(value) = slot else { continue };
            if !first {
                line.push(b',');
            }
            first = false;
            write_str(&column.name, &mut line);
            line.push(b':');
            column
                .ty
                .encode(value, &mut line)
                .map_err(|source| MapError::Column { column: column.name.clone(), source })?;
            if column.has_default_expression {
                // The constructor bounds the column count by u16::MAX.
                shape.push(i as u16);
            }
        }
        line.push(b'}');
        Ok(EncodedRow { line, shape })
    }

    /// The insert column list of a shape: every column without a default expression and
    /// the shape's columns with one, in table order.
    pub fn insert_columns(&self, shape: &[u16]) -> Vec<String> {
        self.columns
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                Some(*i) != self.batch_column && (!c.has_default_expression || shape.contains(&(*i as u16)))
            })
            .map(|(_, c)| c.name.clone())
            .collect()
    }
}

impl ColumnType {
    /// The type under `Nullable`.
    pub fn base(&self) -> &ColumnType {
        match self {
            ColumnType::Nullable(inner) => inner.base(),
            other => other,
        }
    }
}

/// The JSON kind of `value` (`object`, `array`, ...), for messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: &str, kind: &str) -> SystemColumn {
        SystemColumn { name: name.into(), type_name: ty.into(), default_kind: kind.into() }
    }

    fn mapping(unknown: UnknownFields) -> TableMapping {
        TableMapping {
            unknown_fields: unknown,
            topic_column: Some("_topic".into()),
            offset_column: Some("_offset".into()),
            batch_id_column: Some("_batch".into()),
            ..TableMapping::new("/default/t", "t")
        }
    }

    fn mapper(unknown: UnknownFields) -> Mapper {
        Mapper::new(
            vec![
                column("id", "UInt32", ""),
                column("name", "String", ""),
                column("n", "UInt32", "DEFAULT"),
                column("m", "UInt32", "MATERIALIZED"),
                column("_topic", "LowCardinality(String)", ""),
                column("_offset", "UInt64", ""),
                column("_batch", "String", ""),
            ],
            &mapping(unknown),
        )
        .expect("mapper")
    }

    #[test]
    fn present_fields_and_metadata_make_the_line() {
        let m = mapper(UnknownFields::Ignore);
        let record = SinkRecord::new("/default/t", 7, r#"{"name":"x","id":1,"extra":true,"_batch":"forged"}"#);
        let row = m.map_record(&record).expect("row");
        assert_eq!(String::from_utf8(row.line).unwrap(), r#"{"id":1,"name":"x","_topic":"/default/t","_offset":7}"#);
        assert!(row.shape.is_empty());
        assert_eq!(m.insert_columns(&row.shape), vec!["id", "name", "_topic", "_offset"]);
    }

    #[test]
    fn a_present_default_column_joins_the_shape() {
        let m = mapper(UnknownFields::Ignore);
        let row = m.map_record(&SinkRecord::new("/default/t", 1, r#"{"id":1,"n":5}"#)).expect("row");
        assert_eq!(row.shape, vec![2]);
        assert_eq!(m.insert_columns(&row.shape), vec!["id", "name", "n", "_topic", "_offset"]);
    }

    #[test]
    fn a_schema_decoded_value_is_mapped_instead_of_the_payload() {
        let m = mapper(UnknownFields::Ignore);
        let mut record = SinkRecord::new("/default/t", 3, vec![0x02, 0x0a, 0xff]);
        record.value = Some(serde_json::json!({"id": 9, "name": "avro"}));
        let row = m.map_record(&record).expect("row");
        assert_eq!(String::from_utf8(row.line).unwrap(), r#"{"id":9,"name":"avro","_topic":"/default/t","_offset":3}"#);
    }

    #[test]
    fn unknown_fields_can_be_errors() {
        let m = mapper(UnknownFields::Error);
        let err = m.map_record(&SinkRecord::new("/default/t", 1, r#"{"id":1,"zzz":2}"#)).unwrap_err();
        assert!(matches!(err, MapError::UnknownField(ref f) if f == "zzz"), "{err}");
    }

    #[test]
    fn bad_payloads_and_values_are_map_errors() {
        let m = mapper(UnknownFields::Ignore);
        assert!(matches!(m.map_record(&SinkRecord::new("/default/t", 1, "nope")), Err(MapError::NotJson(_))));
        assert!(matches!(m.map_record(&SinkRecord::new("/default/t", 1, "[1]")), Err(MapError::NotObject("array"))));
        let err = m.map_record(&SinkRecord::new("/default/t", 1, r#"{"id":-1}"#)).unwrap_err();
        assert!(matches!(err, MapError::Column { ref column, .. } if column == "id"), "{err}");
    }

    #[test]
    fn metadata_columns_must_exist() {
        let mut map = mapping(UnknownFields::Ignore);
        map.topic_column = None;
        map.offset_column = Some("nope".into());
        let err = Mapper::new(vec![column("id", "UInt32", "")], &map).unwrap_err();
        assert!(err.contains("offset_column"), "{err}");
        let mut map = mapping(UnknownFields::Ignore);
        map.topic_column = None;
        map.offset_column = None;
        let err = Mapper::new(vec![column("id", "UInt32", ""), column("_batch", "UInt64", "")], &map).unwrap_err();
        assert!(err.contains("batch_id_column"), "{err}");
    }

    #[test]
    fn a_bad_date_names_its_column_and_value() {
        let m = Mapper::new(
            vec![column("id", "UInt32", ""), column("born", "Nullable(Date32)", ""), column("at", "DateTime64(3)", "")],
            &TableMapping::new("/default/t", "t"),
        )
        .expect("mapper");
        for (payload, column, value) in [
            (r#"{"id":1,"born":"1900-02-29"}"#, "born", "1900-02-29"),
            (r#"{"id":1,"at":"2024-02-30T00:00:00Z"}"#, "at", "2024-02-30T00:00:00Z"),
        ] {
            let err = m.map_record(&SinkRecord::new("/default/t", 1, payload)).unwrap_err();
            let chain = danube_connect_core::error::error_chain(&err);
            assert!(matches!(err, MapError::Column { column: ref c, .. } if c == column), "{chain}");
            assert!(chain.contains(&format!("column `{column}`")) && chain.contains(value), "{chain}");
        }
        let row = m.map_record(&SinkRecord::new("/default/t", 1, r#"{"id":1,"born":"1900-03-01"}"#)).expect("row");
        assert_eq!(String::from_utf8(row.line).unwrap(), r#"{"id":1,"born":"1900-03-01"}"#);
    }
}
