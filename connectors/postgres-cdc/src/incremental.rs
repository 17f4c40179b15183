//! Incremental snapshots on signal (the DBLog watermark algorithm): the pure parts, kept
//! apart from the replication task so they can be tested without a server.
//!
//! A snapshot is asked for by inserting an `execute-snapshot` row into the signal table; its
//! tables are read in primary-key chunks between the stream's transactions. For each chunk a
//! *low* watermark is written (a non-transactional `pg_logical_emit_message`), the chunk is
//! selected in a snapshot of its own, and a *high* watermark is written. While the stream is
//! between the two, every streamed change to a key of the chunk removes that key from the
//! chunk; so does a streamed change, before the high watermark, of a transaction the chunk's
//! snapshot did not see (a commit written just before the low watermark but not yet visible).
//! At the high watermark the remaining rows are emitted as `READ` records. A row changed
//! during its chunk thus reaches Danube in its newest state, from the stream, and never in an
//! older one after it.
//!
//! Progress (the last key of the last acknowledged chunk per table) is the [`Plan`], kept as
//! JSON in the signal table's row `progress:<slot>`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// Prefix of the watermark messages (`pg_logical_emit_message`).
pub const WATERMARK_PREFIX: &str = "danube-cdc-watermark";

/// Type of the signal that starts an incremental snapshot.
pub const EXECUTE_SNAPSHOT: &str = "execute-snapshot";

/// Type of the signal that stops incremental snapshots.
pub const STOP_SNAPSHOT: &str = "stop-snapshot";

/// Type of the connector's own progress row in the signal table.
pub const PROGRESS_TYPE: &str = "snapshot-progress";

/// How many finished snapshot ids the plan remembers (a signal replayed after a crash is not
/// executed twice).
const FINISHED_KEPT: usize = 50;

/// One table of an incremental snapshot and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePlan {
    /// Id of the snapshot (the id of the signal that asked for it).
    pub snapshot: String,
    /// Schema of the table.
    pub schema: String,
    /// Name of the table.
    pub table: String,
    /// Optional SQL condition the rows must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Key column values (text) of the last row of the last finished chunk; `None` before the
    /// first chunk.
    #[serde(default)]
    pub last_key: Option<Vec<String>>,
    /// Rows emitted so far.
    #[serde(default)]
    pub rows: u64,
}

impl TablePlan {
    /// `schema.table`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// The queue of tables to snapshot, the first one being read; persisted as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Tables still to read, in order.
    #[serde(default)]
    pub tables: Vec<TablePlan>,
    /// Ids of the snapshots finished or stopped (the most recent ones).
    #[serde(default)]
    pub finished: Vec<String>,
}

impl Plan {
    /// Whether a snapshot with this id is queued, running or already over.
    pub fn knows(&self, id: &str) -> bool {
        self.finished.iter().any(|f| f == id) || self.tables.iter().any(|t| t.snapshot == id)
    }

    /// Applies a finished chunk: the table's last key and row count, and removes it when done.
    pub fn advance(&mut self, advance: &Advance) {
        let Some(index) = self
            .tables
            .iter()
            .position(|t| t.snapshot == advance.snapshot && t.schema == advance.schema && t.table == advance.table)
        else {
            // Stopped meanwhile.
            return;
        };
        if advance.done {
            self.tables.remove(index);
            if !self.tables.iter().any(|t| t.snapshot == advance.snapshot) {
                self.finish(&advance.snapshot);
            }
        } else {
            let table = &mut self.tables[index];
            table.last_key = advance.last_key.clone();
            table.rows = advance.rows;
        }
    }

    /// Removes the tables of a stop signal: all of them when `tables` is empty. Returns how
    /// many were removed.
    pub fn stop(&mut self, tables: &[(String, String)]) -> usize {
        let before = self.tables.len();
        let mut stopped = Vec::new();
        self.tables.retain(|t| {
            let keep = !tables.is_empty() && !tables.iter().any(|(s, n)| *s == t.schema && *n == t.table);
            if !keep {
                stopped.push(t.snapshot.clone());
            }
            keep
        });
        for id in stopped {
            if !self.tables.iter().any(|t| t.snapshot == id) {
                self.finish(&id);
            }
        }
        before - self.tables.len()
    }

    fn finish(&mut self, id: &str) {
        if !self.finished.iter().any(|f| f == id) {
            self.finished.push(id.to_string());
        }
        if self.finished.len() > FINISHED_KEPT {
            let excess = self.finished.len() - FINISHED_KEPT;
            self.finished.drain(..excess);
        }
    }
}

/// The result of one chunk, applied to the persisted [`Plan`] once Danube acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// Snapshot id.
    pub snapshot: String,
    /// Schema of the table.
    pub schema: String,
    /// Name of the table.
    pub table: String,
    /// Last key read.
    pub last_key: Option<Vec<String>>,
    /// Rows emitted so far for the table.
    pub rows: u64,
    /// Whether the table is complete.
    pub done: bool,
}

/// A signal read from the signal table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Snapshot these tables (incrementally).
    Execute {
        /// Signal id (the snapshot id).
        id: String,
        /// `(schema, table, filter)`.
        tables: Vec<(String, String, Option<String>)>,
    },
    /// Stop the snapshot of these tables (all when empty).
    Stop {
        /// Signal id.
        id: String,
        /// `(schema, table)`.
        tables: Vec<(String, String)>,
    },
}

/// Why a signal row was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignalError {
    /// The `type` is not one this connector knows.
    #[error("unknown signal type `{0}` (expected execute-snapshot or stop-snapshot)")]
    UnknownType(String),
    /// The `data` column is not the expected JSON.
    #[error("signal data: {0}")]
    Data(String),
}

/// `schema.table` or `table` (schema `public`), as `(schema, table)`.
pub fn split_table(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((schema, table)) => (schema.to_string(), table.to_string()),
        None => ("public".to_string(), name.to_string()),
    }
}

/// Parses a signal row. `data` follows Debezium's format: `{"data-collections": ["public.t"],
/// "additional-conditions": [{"data-collection": "public.t", "filter": "..."}]}`; a top-level
/// `"filter"` applies to every listed table.
pub fn parse_signal(id: &str, kind: &str, data: Option<&str>) -> Result<Signal, SignalError> {
    let data: serde_json::Value = match data {
        Some(text) if !text.trim().is_empty() => {
            serde_json::from_str(text).map_err(|e| SignalError::Data(format!("not JSON: {e}")))?
        }
        _ => serde_json::Value::Null,
    };
    let collections: Vec<(String, String)> = match data.get("data-collections") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(names)) => names
            .iter()
            .map(|n| {
                n.as_str().map(split_table).ok_or_else(|| SignalError::Data("data-collections must be strings".into()))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(SignalError::Data("data-collections must be a list of table names".into())),
    };
    match kind {
        EXECUTE_SNAPSHOT => {
            if collections.is_empty() {
                return Err(SignalError::Data("execute-snapshot needs a non-empty data-collections list".into()));
            }
            if let Some(kind) = data.get("type").and_then(|t| t.as_str()) {
                if !kind.eq_ignore_ascii_case("incremental") {
                    return Err(SignalError::Data(format!("snapshot type `{kind}`: only `incremental` is supported")));
                }
            }
            let common = data.get("filter").and_then(|f| f.as_str()).map(str::to_string);
            let mut conditions: HashMap<(String, String), String> = HashMap::new();
            if let Some(list) = data.get("additional-conditions").and_then(|c| c.as_array()) {
                for condition in list {
                    let table = condition.get("data-collection").and_then(|t| t.as_str());
                    let filter = condition.get("filter").and_then(|f| f.as_str());
                    match (table, filter) {
                        (Some(table), Some(filter)) => {
                            conditions.insert(split_table(table), filter.to_string());
                        }
                        _ => {
                            return Err(SignalError::Data(
                                "each additional-conditions entry needs data-collection and filter".into(),
                            ))
                        }
                    }
                }
            }
            let tables = collections
                .into_iter()
                .map(|(schema, table)| {
                    let filter = conditions.get(&(schema.clone(), table.clone())).cloned().or_else(|| common.clone());
                    (schema, table, filter.filter(|f| !f.trim().is_empty()))
                })
                .collect();
            Ok(Signal::Execute { id: id.to_string(), tables })
        }
        STOP_SNAPSHOT => Ok(Signal::Stop { id: id.to_string(), tables: collections }),
        other => Err(SignalError::UnknownType(other.to_string())),
    }
}

/// The transactions a chunk's snapshot saw (`pg_current_snapshot()`: `xmin:xmax:xip,...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidSnapshot {
    /// Every transaction below it had ended.
    pub xmin: u64,
    /// Every transaction from it on had not started.
    pub xmax: u64,
    /// Transactions in progress.
    pub in_progress: HashSet<u64>,
}

impl XidSnapshot {
    /// Parses the text form of `pg_snapshot`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = match parts.next() {
            Some(list) if !list.is_empty() => list.split(',').map(|x| x.parse().ok()).collect::<Option<_>>()?,
            _ => HashSet::new(),
        };
        Some(Self { xmin, xmax, in_progress })
    }

    /// The 64-bit id of a 32-bit xid from the stream, taking the epoch of `xmax` (an xid
    /// decoded now is at most 2^31 away from it).
    pub fn widen(&self, xid: u32) -> u64 {
        let epoch = self.xmax >> 32;
        let candidate = (epoch << 32) | u64::from(xid);
        if candidate > self.xmax + (1 << 31) && epoch > 0 {
            candidate - (1 << 32)
        } else if candidate + (1 << 31) < self.xmax {
            candidate + (1 << 32)
        } else {
            candidate
        }
    }

    /// Whether a committed transaction's changes are in the snapshot.
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }
}

/// One chunk between its watermarks.
#[derive(Debug)]
pub struct Chunk<T> {
    /// Unique id of its watermarks.
    pub nonce: String,
    /// Rows in key order: `(routing key, row)`.
    pub rows: Vec<(String, T)>,
    /// Key values of the last row read (the next chunk starts after it).
    pub last_key: Option<Vec<String>>,
    /// Fewer rows than asked for: the table is complete after this chunk.
    pub last: bool,
    /// The snapshot the chunk was read in.
    pub snapshot: XidSnapshot,
    /// Whether the stream passed the low watermark.
    pub window_open: bool,
    /// Keys changed in the stream between the watermarks.
    pub changed: HashSet<String>,
}

impl<T> Chunk<T> {
    /// The rows to emit at the high watermark: those whose key was not changed in the
    /// window, nor (per `touched`) by a streamed transaction the chunk's snapshot did not see.
    pub fn remaining(self, touched: &Touched) -> Vec<(String, T)> {
        let Self { rows, changed, snapshot, .. } = self;
        rows.into_iter().filter(|(key, _)| !changed.contains(key) && !touched.unseen_by(key, &snapshot)).collect()
    }
}

/// Keys of the table being snapshotted changed in the stream, with their transactions
/// (as 32-bit xids), kept until every snapshot sees those transactions.
#[derive(Debug, Default)]
pub struct Touched {
    keys: HashMap<String, Vec<u32>>,
}

impl Touched {
    /// Records that transaction `xid` changed `key`.
    pub fn record(&mut self, key: String, xid: u32) {
        let xids = self.keys.entry(key).or_default();
        if !xids.contains(&xid) {
            xids.push(xid);
        }
    }

    /// Whether a transaction that `snapshot` did not see changed `key`.
    pub fn unseen_by(&self, key: &str, snapshot: &XidSnapshot) -> bool {
        self.keys.get(key).is_some_and(|xids| xids.iter().any(|xid| !snapshot.sees(snapshot.widen(*xid))))
    }

    /// Forgets the transactions every later snapshot sees (below `snapshot.xmin`).
    pub fn prune(&mut self, snapshot: &XidSnapshot) {
        self.keys.retain(|_, xids| {
            xids.retain(|xid| snapshot.widen(*xid) >= snapshot.xmin);
            !xids.is_empty()
        });
    }

    /// Forgets everything (another table is being read).
    pub fn clear(&mut self) {
        self.keys.clear();
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(snapshot: &str, name: &str) -> TablePlan {
        TablePlan {
            snapshot: snapshot.into(),
            schema: "public".into(),
            table: name.into(),
            filter: None,
            last_key: None,
            rows: 0,
        }
    }

    #[test]
    fn signals_parse_in_debezium_form() {
        let signal = parse_signal(
            "s1",
            "execute-snapshot",
            Some(
                r#"{"data-collections":["public.a","b"],"type":"incremental",
                    "additional-conditions":[{"data-collection":"b","filter":"id > 5"}]}"#,
            ),
        )
        .expect("valid");
        assert_eq!(
            signal,
            Signal::Execute {
                id: "s1".into(),
                tables: vec![("public".into(), "a".into(), None), ("public".into(), "b".into(), Some("id > 5".into()))]
            }
        );
        let common = parse_signal("s2", "execute-snapshot", Some(r#"{"data-collections":["x.y"],"filter":"v = 1"}"#));
        assert_eq!(
            common,
            Ok(Signal::Execute { id: "s2".into(), tables: vec![("x".into(), "y".into(), Some("v = 1".into()))] })
        );
        assert_eq!(parse_signal("s3", "stop-snapshot", None), Ok(Signal::Stop { id: "s3".into(), tables: vec![] }));
        assert!(matches!(parse_signal("s4", "execute-snapshot", Some("{}")), Err(SignalError::Data(_))));
        assert!(matches!(
            parse_signal("s5", "execute-snapshot", Some(r#"{"data-collections":["a"],"type":"blocking"}"#)),
            Err(SignalError::Data(_))
        ));
        assert_eq!(parse_signal("s6", "log", None), Err(SignalError::UnknownType("log".into())));
    }

    #[test]
    fn the_plan_advances_finishes_and_stops() {
        let mut plan = Plan { tables: vec![table("s1", "a"), table("s1", "b"), table("s2", "c")], finished: vec![] };
        let advance = |table: &str, done: bool| Advance {
            snapshot: "s1".into(),
            schema: "public".into(),
            table: table.into(),
            last_key: Some(vec!["10".into()]),
            rows: 10,
            done,
        };
        plan.advance(&advance("a", false));
        assert_eq!((plan.tables[0].last_key.clone(), plan.tables[0].rows), (Some(vec!["10".to_string()]), 10));
        plan.advance(&advance("a", true));
        assert!(!plan.knows("s0"));
        assert!(plan.finished.is_empty(), "s1 still has b");
        plan.advance(&advance("b", true));
        assert_eq!(plan.finished, vec!["s1".to_string()]);
        assert!(plan.knows("s1") && plan.knows("s2"));
        plan.advance(&advance("b", false)); // stopped or done already: ignored
        assert_eq!(plan.tables.len(), 1);
        assert_eq!(plan.stop(&[("public".into(), "zzz".into())]), 0);
        assert_eq!(plan.stop(&[]), 1);
        assert_eq!(plan.finished, vec!["s1".to_string(), "s2".to_string()]);
        let json = serde_json::to_string(&plan).expect("json");
        assert_eq!(serde_json::from_str::<Plan>(&json).expect("parses"), plan);
    }

    #[test]
    fn a_chunk_keeps_only_rows_nobody_changed_since_its_snapshot() {
        let snapshot = XidSnapshot::parse("100:110:103,105").expect("parses");
        assert!(snapshot.sees(99) && snapshot.sees(104) && !snapshot.sees(103) && !snapshot.sees(110));
        let mut touched = Touched::default();
        touched.record("1".into(), 104); // seen by the snapshot: the chunk has its result
        touched.record("2".into(), 103); // committed before the low watermark, not seen: stale
        touched.record("9".into(), 90);
        let chunk = Chunk {
            nonce: "n".into(),
            rows: vec![("1".into(), 'a'), ("2".into(), 'b'), ("3".into(), 'c'), ("4".into(), 'd')],
            last_key: Some(vec!["4".into()]),
            last: false,
            snapshot: snapshot.clone(),
            window_open: true,
            changed: HashSet::from(["3".to_string()]),
        };
        let keys: Vec<char> = chunk.remaining(&touched).into_iter().map(|(_, row)| row).collect();
        assert_eq!(keys, vec!['a', 'd']);
        touched.prune(&snapshot);
        assert_eq!(touched.len(), 2, "xid 90 is seen by every later snapshot");
    }

    #[test]
    fn stream_xids_widen_to_the_snapshot_epoch() {
        let snapshot = XidSnapshot::parse(&format!("{}:{}:", (5u64 << 32) + 10, (5u64 << 32) + 20)).expect("parses");
        assert_eq!(snapshot.widen(15), (5u64 << 32) + 15);
        assert_eq!(snapshot.widen(u32::MAX - 3), (4u64 << 32) + u64::from(u32::MAX - 3), "before the wrap");
        assert!(XidSnapshot::parse("garbage").is_none());
    }
}
