//! Row changes to Danube records: JSON payload, topic per table, primary-key routing key.
//!
//! The payload is written straight into its buffer (no intermediate JSON tree): per table the
//! escaped column names and the `schema`/`table` fields are prepared once, per transaction the
//! commit LSN and time are formatted once.

use std::collections::HashMap;

use std::sync::Arc;

use danube_connect_core::schema::BoundSchema;
use danube_connect_core::SourceRecord;

use crate::error::CdcError;
use crate::pgoutput::{Relation, Tuple, TupleValue};
use crate::value::{push_json_str, write_json};

/// Attributes per record (`content-type`, `table`, `op`, `lsn`, `commit_lsn`, `seq`).
const ATTRIBUTES: usize = 6;

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
    /// What an UPDATE's unchanged TOAST columns become (`connector.toast`).
    pub toast: ToastFill,
    /// The table's `postgres_cdc_records_total` counters (none outside the connector).
    pub counters: Option<crate::metrics::TableCounters>,
    full_name: String,
    /// `,"schema":"..","table":".."`, escaped.
    names_json: Vec<u8>,
    /// Per column `"name":`, escaped.
    column_keys: Vec<Vec<u8>>,
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
        let full_name = format!("{}.{}", relation.namespace, relation.name);
        let mut names_json = b",\"schema\":".to_vec();
        push_json_str(&mut names_json, &relation.namespace);
        names_json.extend_from_slice(b",\"table\":");
        push_json_str(&mut names_json, &relation.name);
        let column_keys = relation
            .columns
            .iter()
            .map(|column| {
                let mut key = Vec::with_capacity(column.name.len() + 3);
                push_json_str(&mut key, &column.name);
                key.push(b':');
                key
            })
            .collect();
        Self {
            relation,
            key,
            topic,
            array_elements,
            schema: None,
            toast: ToastFill::List,
            counters: None,
            full_name,
            names_json,
            column_keys,
        }
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
    pub fn resolve_arrays(&mut self, elements: &HashMap<u32, u32>) {
        for (slot, column) in self.array_elements.iter_mut().zip(&self.relation.columns) {
            *slot = elements.get(&column.type_oid).copied();
        }
    }

    /// `schema.table`.
    pub fn full_name(&self) -> &str {
        &self.full_name
    }

    /// Counts one record of `op` in the table's counters.
    pub fn count(&self, op: &str) {
        if let Some(counters) = &self.counters {
            counters.count(op);
        }
    }

    /// Writes a tuple as a JSON object in column order; with `only_present`, NULLs are left
    /// out (a key-only old image). An unchanged TOAST column is handled by [`Table::toast`]:
    /// left out, set to the placeholder, or taken from `old` (a full old row); a column left
    /// out or set to the placeholder has its index pushed to `unchanged`.
    fn write_row(
        &self,
        tuple: &Tuple,
        only_present: bool,
        old: Option<&Tuple>,
        unchanged: &mut Vec<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), CdcError> {
        out.push(b'{');
        let mut first = true;
        let columns = self.relation.columns.iter().zip(&self.array_elements).zip(&self.column_keys);
        for (index, (((column, element), key), value)) in columns.zip(tuple.iter()).enumerate() {
            let mut value = value;
            match value {
                TupleValue::Null if only_present => continue,
                TupleValue::UnchangedToast => match &self.toast {
                    ToastFill::Placeholder(_) => unchanged.push(index),
                    ToastFill::Before => match old.and_then(|old| old.get(index)) {
                        Some(previous) if *previous != TupleValue::UnchangedToast => value = previous,
                        _ => {
                            unchanged.push(index);
                            continue;
                        }
                    },
                    ToastFill::List => {
                        unchanged.push(index);
                        continue;
                    }
                },
                _ => {}
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(key);
            match value {
                TupleValue::Text(bytes) => {
                    let text = String::from_utf8_lossy(bytes);
                    match element {
                        Some(element) => {
                            let json = crate::value::array_to_json_text(*element, &text);
                            serde_json::to_writer(&mut *out, &json).map_err(CdcError::Serialize)?;
                        }
                        None => write_json(column.type_oid, &text, out).map_err(CdcError::Serialize)?,
                    }
                }
                TupleValue::Binary(bytes) => {
                    use base64::Engine;
                    push_json_str(out, &base64::engine::general_purpose::STANDARD.encode(bytes));
                }
                TupleValue::UnchangedToast => match &self.toast {
                    ToastFill::Placeholder(placeholder) => push_json_str(out, placeholder),
                    _ => out.extend_from_slice(b"null"),
                },
                TupleValue::Null => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
        Ok(())
    }

    /// The routing key of a row: the primary-key value (one column), or a JSON array of them.
    pub fn key_of(&self, tuple: &Tuple) -> Option<String> {
        if let [index] = self.key[..] {
            return match tuple.get(index) {
                Some(TupleValue::Text(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
                Some(TupleValue::Null) => Some(String::new()),
                _ => None,
            };
        }
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

/// What an UPDATE's unchanged TOAST columns become in `after` (see
/// [`ToastMode`](crate::config::ToastMode)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToastFill {
    /// Left out, listed in `unchanged_toast`.
    #[default]
    List,
    /// Set to this text, listed in `unchanged_toast`.
    Placeholder(Arc<str>),
    /// Taken from the full old row (`REPLICA IDENTITY FULL`); listed when there is none.
    Before,
}

impl ToastFill {
    /// The fill of `mode` with `placeholder`.
    pub fn new(mode: crate::config::ToastMode, placeholder: &str) -> Self {
        match mode {
            crate::config::ToastMode::List => Self::List,
            crate::config::ToastMode::Placeholder => Self::Placeholder(placeholder.into()),
            crate::config::ToastMode::Before => Self::Before,
        }
    }
}

/// Transaction context stamped on every record of a transaction, with its text forms
/// formatted once.
#[derive(Debug, Clone)]
pub struct TxnInfo {
    /// Transaction id.
    pub xid: u32,
    /// Commit LSN (the `final_lsn` of Begin).
    pub commit_lsn: u64,
    /// Commit time (microseconds since 2000-01-01).
    pub commit_time: i64,
    /// `commit_lsn` as [`format_lsn`] writes it.
    commit_lsn_text: String,
    /// `xid` in decimal.
    xid_text: String,
    /// `commit_time` as [`pg_time_iso`] writes it.
    commit_ts_text: String,
}

impl TxnInfo {
    /// The context of transaction `xid` committed at `commit_lsn` and `commit_time`
    /// (microseconds since 2000-01-01).
    pub fn new(xid: u32, commit_lsn: u64, commit_time: i64) -> Self {
        Self {
            xid,
            commit_lsn,
            commit_time,
            commit_lsn_text: format_lsn(commit_lsn),
            xid_text: xid.to_string(),
            commit_ts_text: pg_time_iso(commit_time),
        }
    }
}

impl Default for TxnInfo {
    fn default() -> Self {
        Self::new(0, 0, 0)
    }
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
    /// The Danube record (counted in the table's counters).
    pub fn to_record(&self) -> Result<SourceRecord, CdcError> {
        let table = self.table;
        let txn = self.txn;
        let lsn = format_lsn(self.lsn);
        let seq = self.seq.to_string();
        let mut out = Vec::with_capacity(192 + 40 * table.relation.columns.len());
        out.extend_from_slice(b"{\"op\":");
        push_json_str(&mut out, self.op);
        out.extend_from_slice(&table.names_json);
        out.extend_from_slice(b",\"before\":");
        match self.before {
            Some((marker, tuple)) => table.write_row(tuple, marker == b'K', None, &mut Vec::new(), &mut out)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"after\":");
        let mut unchanged = Vec::new();
        match self.after {
            Some(tuple) => {
                let old = self.before.filter(|(marker, _)| *marker == b'O').map(|(_, old)| old);
                table.write_row(tuple, false, old, &mut unchanged, &mut out)?
            }
            None => out.extend_from_slice(b"null"),
        }
        if !unchanged.is_empty() {
            out.extend_from_slice(b",\"unchanged_toast\":[");
            for (i, &index) in unchanged.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_json_str(&mut out, &table.relation.columns[index].name);
            }
            out.push(b']');
        }
        // LSNs and the timestamp are hex digits, `/`, `-`, `:`, `.`, `T`, `Z`: no escaping.
        out.extend_from_slice(b",\"lsn\":\"");
        out.extend_from_slice(lsn.as_bytes());
        out.extend_from_slice(b"\",\"commit_lsn\":\"");
        out.extend_from_slice(txn.commit_lsn_text.as_bytes());
        out.extend_from_slice(b"\",\"seq\":");
        out.extend_from_slice(seq.as_bytes());
        out.extend_from_slice(b",\"xid\":");
        out.extend_from_slice(txn.xid_text.as_bytes());
        out.extend_from_slice(b",\"commit_ts\":\"");
        out.extend_from_slice(txn.commit_ts_text.as_bytes());
        out.extend_from_slice(b"\"}");
        let key = self.after.or(self.before.map(|(_, t)| t)).and_then(|t| table.key_of(t));
        let mut record = SourceRecord::new(table.topic.clone(), out);
        record.attributes.reserve(ATTRIBUTES);
        record.attributes.insert("content-type".into(), "application/json".into());
        record.attributes.insert("table".into(), table.full_name.clone());
        record.attributes.insert("op".into(), self.op.into());
        record.attributes.insert("lsn".into(), lsn);
        record.attributes.insert("commit_lsn".into(), txn.commit_lsn_text.clone());
        record.attributes.insert("seq".into(), seq);
        record.routing_key = key;
        if let Some(schema) = &self.table.schema {
            record = record.with_schema(schema.clone());
        }
        table.count(self.op);
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
    use crate::pgoutput::Column;
    use bytes::Bytes;
    use serde_json::json;

    fn text(value: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(value.as_bytes()))
    }

    #[test]
    fn record_payload_attributes_and_key() {
        let column =
            |name: &str, type_oid: u32, key: bool| Column { key, name: name.into(), type_oid, type_modifier: -1 };
        let relation = Relation {
            oid: 1,
            namespace: "sales".into(),
            name: "or\"ders".into(),
            replica_identity: b'd',
            columns: vec![
                column("id", 23, true),
                column("note", 25, false),
                column("big", 25, false),
                column("n", 23, false),
            ],
        };
        let table = Table::new(relation, &["id".to_string()], "/default/sales_orders".into());
        let old = vec![text("7"), TupleValue::Null, TupleValue::Null, TupleValue::Null];
        let new = vec![text("8"), text("line\nbreak \"q\""), TupleValue::UnchangedToast, TupleValue::Null];
        let txn = TxnInfo::new(750, 0x16B37A0, 0);
        let change = Change {
            op: "UPDATE",
            table: &table,
            before: Some((b'K', &old)),
            after: Some(&new),
            lsn: 0x16B3748,
            txn: &txn,
            seq: 3,
        };
        let record = change.to_record().expect("record");
        let payload: serde_json::Value = serde_json::from_slice(&record.payload).expect("valid JSON");
        assert_eq!(
            payload,
            json!({"op": "UPDATE", "schema": "sales", "table": "or\"ders", "before": {"id": 7},
                   "after": {"id": 8, "note": "line\nbreak \"q\"", "n": null}, "unchanged_toast": ["big"],
                   "lsn": "0/16B3748", "commit_lsn": "0/16B37A0", "seq": 3, "xid": 750,
                   "commit_ts": "2000-01-01T00:00:00.000000Z"})
        );
        let text = String::from_utf8_lossy(&record.payload);
        assert!(text.starts_with("{\"op\":\"UPDATE\",\"schema\""), "fields in the documented order: {text}");
        assert_eq!(record.routing_key.as_deref(), Some("8"));
        assert_eq!(record.topic, "/default/sales_orders");
        let attribute = |name: &str| record.attributes.get(name).map(String::as_str);
        assert_eq!(attribute("table"), Some("sales.or\"ders"));
        assert_eq!(attribute("op"), Some("UPDATE"));
        assert_eq!(attribute("lsn"), Some("0/16B3748"));
        assert_eq!(attribute("commit_lsn"), Some("0/16B37A0"));
        assert_eq!(attribute("seq"), Some("3"));
        assert_eq!(attribute("content-type"), Some("application/json"));
        assert_eq!(record.attributes.len(), 6);

        let delete =
            Change { op: "DELETE", table: &table, before: Some((b'K', &old)), after: None, lsn: 1, txn: &txn, seq: 0 };
        let payload: serde_json::Value =
            serde_json::from_slice(&delete.to_record().expect("record").payload).expect("JSON");
        assert_eq!((payload["before"].clone(), payload["after"].clone()), (json!({"id": 7}), json!(null)));
        assert!(payload.get("unchanged_toast").is_none());
    }

    #[test]
    fn unchanged_toast_is_listed_replaced_or_taken_from_the_old_row() {
        let column =
            |name: &str, type_oid: u32, key: bool| Column { key, name: name.into(), type_oid, type_modifier: -1 };
        let relation = Relation {
            oid: 1,
            namespace: "public".into(),
            name: "docs".into(),
            replica_identity: b'f',
            columns: vec![column("id", 23, true), column("body", 25, false)],
        };
        let mut table = Table::new(relation, &["id".to_string()], "/default/public-docs".into());
        let old = vec![text("1"), text("long old body")];
        let new = vec![text("1"), TupleValue::UnchangedToast];
        let txn = TxnInfo::default();
        let payload = |table: &Table, before: Option<(u8, &Tuple)>| -> serde_json::Value {
            let change = Change { op: "UPDATE", table, before, after: Some(&new), lsn: 1, txn: &txn, seq: 0 };
            serde_json::from_slice(&change.to_record().expect("record").payload).expect("JSON")
        };
        let listed = payload(&table, Some((b'O', &old)));
        assert_eq!((listed["after"].clone(), listed["unchanged_toast"].clone()), (json!({"id": 1}), json!(["body"])));

        table.toast = ToastFill::Placeholder("__unavailable".into());
        let placed = payload(&table, Some((b'O', &old)));
        assert_eq!(placed["after"], json!({"id": 1, "body": "__unavailable"}));
        assert_eq!(placed["unchanged_toast"], json!(["body"]));

        table.toast = ToastFill::Before;
        let filled = payload(&table, Some((b'O', &old)));
        assert_eq!(filled["after"], json!({"id": 1, "body": "long old body"}));
        assert!(filled.get("unchanged_toast").is_none(), "{filled}");
        let key_only = payload(&table, Some((b'K', &old)));
        assert_eq!(key_only["after"], json!({"id": 1}), "no full old row: the column stays out");
        assert_eq!(key_only["unchanged_toast"], json!(["body"]));
        assert_eq!(payload(&table, None)["unchanged_toast"], json!(["body"]));
    }

    #[test]
    fn lsn_and_time_formats() {
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0x16B3748), "0/16B3748");
        assert_eq!(pg_time_iso(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(pg_time_iso(778_464_000_000_001), "2024-09-01T00:00:00.000001Z");
    }
}
