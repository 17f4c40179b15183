//! Row changes to Danube records: JSON payload, topic per table, primary-key routing key.

use std::sync::Arc;

use danube_connect_core::schema::BoundSchema;
use danube_connect_core::SourceRecord;
use serde_json::{Map, Value};

use crate::error::CdcError;
use crate::pgoutput::{Relation, Tuple, TupleValue};
use crate::value::to_json;

/// A relation with the primary-key columns looked up once.
#[derive(Debug, Clone)]
pub struct Table {
    /// The decoded relation.
    pub relation: Relation,
    /// Primary-key column indexes (replica-identity columns when there is no primary key).
    pub key: Vec<usize>,
    /// The Danube topic of the table.
    pub topic: String,
    /// Per column: the element type of an array type not known by OID (resolved from
    /// `pg_type.typelem`), so that e.g. enum arrays become JSON arrays.
    pub array_elements: Vec<Option<u32>>,
    /// The registered schema the table's records are published with (`connector.schema`).
    pub schema: Option<Arc<BoundSchema>>,
}

impl Table {
    /// Builds the table from a relation and its primary-key column names.
    pub fn new(relation: Relation, primary_key: &[String], topic: String) -> Self {
        let mut key: Vec<usize> =
            primary_key.iter().filter_map(|name| relation.columns.iter().position(|c| &c.name == name)).collect();
        if key.is_empty() && relation.replica_identity != b'f' {
            key = relation.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect();
        }
        let array_elements = vec![None; relation.columns.len()];
        Self { relation, key, topic, array_elements, schema: None }
    }

    /// Column type OIDs that are neither a mapped scalar nor a known array type: candidates
    /// for [`Table::resolve_arrays`].
    pub fn unresolved_types(&self) -> Vec<u32> {
        let mut oids: Vec<u32> = self
            .relation
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| crate::value::array_element(*oid).is_none())
            .collect();
        oids.sort_unstable();
        oids.dedup();
        oids
    }

    /// Records the element types of array columns (`array type -> element type`).
    pub fn resolve_arrays(&mut self, elements: &std::collections::HashMap<u32, u32>) {
        for (slot, column) in self.array_elements.iter_mut().zip(&self.relation.columns) {
            *slot = elements.get(&column.type_oid).copied();
        }
    }

    /// `schema.table`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.relation.namespace, self.relation.name)
    }

    /// A tuple as a JSON object; unchanged TOAST columns are left out and listed in `unchanged`.
    pub fn row(&self, tuple: &Tuple, only_present: bool, unchanged: &mut Vec<String>) -> Value {
        let mut map = Map::new();
        for ((column, value), element) in self.relation.columns.iter().zip(tuple.iter()).zip(&self.array_elements) {
            match value {
                TupleValue::Null => {
                    if !only_present {
                        map.insert(column.name.clone(), Value::Null);
                    }
                }
                TupleValue::UnchangedToast => unchanged.push(column.name.clone()),
                TupleValue::Text(bytes) => {
                    let text = String::from_utf8_lossy(bytes);
                    let json = match element {
                        Some(element) => crate::value::array_to_json_text(*element, &text),
                        None => to_json(column.type_oid, &text),
                    };
                    map.insert(column.name.clone(), json);
                }
                TupleValue::Binary(bytes) => {
                    use base64::Engine;
                    map.insert(
                        column.name.clone(),
                        Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
                    );
                }
            }
        }
        Value::Object(map)
    }

    /// The routing key of a row: the primary-key value (one column), or a JSON array of them.
    pub fn key_of(&self, tuple: &Tuple) -> Option<String> {
        if self.key.is_empty() {
            return None;
        }
        let mut parts = Vec::with_capacity(self.key.len());
        for &index in &self.key {
            match tuple.get(index) {
                Some(TupleValue::Text(bytes)) => parts.push(String::from_utf8_lossy(bytes).into_owned()),
                Some(TupleValue::Null) => parts.push(String::new()),
                _ => return None,
            }
        }
        if parts.len() == 1 {
            parts.pop()
        } else {
            serde_json::to_string(&parts).ok()
        }
    }
}

/// Transaction context stamped on every record of a transaction.
#[derive(Debug, Clone, Default)]
pub struct TxnInfo {
    /// Transaction id.
    pub xid: u32,
    /// Commit LSN (the `final_lsn` of Begin).
    pub commit_lsn: u64,
    /// Commit time (microseconds since 2000-01-01).
    pub commit_time: i64,
}

/// One row change ready to become a record.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// `INSERT`, `UPDATE`, `DELETE`, `TRUNCATE` or `READ` (snapshot).
    pub op: &'static str,
    /// The table.
    pub table: &'a Table,
    /// Old image (`K`ey only or `O`ld full row).
    pub before: Option<(u8, &'a Tuple)>,
    /// New image.
    pub after: Option<&'a Tuple>,
    /// LSN of the change.
    pub lsn: u64,
    /// Its transaction.
    pub txn: &'a TxnInfo,
    /// Position within the transaction (0-based), with `commit_lsn` a unique id for dedup.
    pub seq: u64,
}

impl Change<'_> {
    /// The Danube record.
    pub fn to_record(&self) -> Result<SourceRecord, CdcError> {
        let mut unchanged = Vec::new();
        let before = match self.before {
            Some((marker, tuple)) => self.table.row(tuple, marker == b'K', &mut Vec::new()),
            None => Value::Null,
        };
        let after = self.after.map_or(Value::Null, |t| self.table.row(t, false, &mut unchanged));
        let mut payload = Map::new();
        payload.insert("op".into(), Value::from(self.op));
        payload.insert("schema".into(), Value::from(self.table.relation.namespace.as_str()));
        payload.insert("table".into(), Value::from(self.table.relation.name.as_str()));
        payload.insert("before".into(), before);
        payload.insert("after".into(), after);
        if !unchanged.is_empty() {
            payload.insert("unchanged_toast".into(), Value::from(unchanged));
        }
        payload.insert("lsn".into(), Value::from(format_lsn(self.lsn)));
        payload.insert("commit_lsn".into(), Value::from(format_lsn(self.txn.commit_lsn)));
        payload.insert("seq".into(), Value::from(self.seq));
        payload.insert("xid".into(), Value::from(self.txn.xid));
        payload.insert("commit_ts".into(), Value::from(pg_time_iso(self.txn.commit_time)));
        let bytes = serde_json::to_vec(&Value::Object(payload)).map_err(CdcError::Serialize)?;
        let key = self.after.or(self.before.map(|(_, t)| t)).and_then(|t| self.table.key_of(t));
        let mut record = SourceRecord::new(self.table.topic.clone(), bytes)
            .with_attribute("content-type", "application/json")
            .with_attribute("table", self.table.full_name())
            .with_attribute("op", self.op)
            .with_attribute("lsn", format_lsn(self.lsn))
            .with_attribute("commit_lsn", format_lsn(self.txn.commit_lsn))
            .with_attribute("seq", self.seq.to_string());
        if let Some(key) = key {
            record = record.with_key(key);
        }
        if let Some(schema) = &self.table.schema {
            record = record.with_schema(schema.clone());
        }
        Ok(record)
    }
}

/// `16/B374D848` form of an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Microseconds since 2000-01-01 UTC as an RFC 3339 timestamp.
pub fn pg_time_iso(micros: i64) -> String {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let secs = micros.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS;
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_and_time_formats() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0x16B3748), "0/16B3748");
        assert_eq!(pg_time_iso(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(pg_time_iso(778_464_000_000_001), "2024-09-01T00:00:00.000001Z");
    }
}
