//! CDC mode intake: change envelopes to versioned rows in the table's spool (the same spool,
//! flusher and insert path as plain rows), tables opened per source table from the
//! mapping's template, created and widened on demand, and `TRUNCATE` applied as deleted
//! rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use danube_connect_core::{ConnectorError, ConnectorResult, SinkRecord};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::flusher::supervise_flusher;
use super::{spool_dir_name, Inner, Table};
use crate::cdc::{self, Envelope, Op};
use crate::client::{quote_ident, ClickHouseError};
use crate::config::{TableMapping, TruncateMode};
use crate::mapping::{MapError, Mapper};
use crate::spool::{record_id, RowGroup, Spool};

/// The file in a table's spool directory naming its topic and target table, so that a
/// templated table with rows left in its spool is found again at start.
const TARGET_FILE: &str = "target.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Target {
    topic: String,
    database: String,
    table: String,
}

/// Spool directory of a templated table: its name made file-safe, plus a hash of the exact
/// name when that changed it (two source tables must not share a spool).
fn template_dir_name(database: &str, table: &str) -> String {
    let safe = spool_dir_name(database, table);
    let exact = format!("{database}.{table}");
    if safe == exact {
        return safe;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(exact.as_bytes());
    format!("{safe}-{:02x}{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2], digest[3])
}

/// `(database, table)` of every spool directory a previous run opened for `topic`.
pub(super) fn recovered_targets(dir: &Path, topic: &str) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut targets = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read(entry.path().join(TARGET_FILE)) else { continue };
        match serde_json::from_slice::<Target>(&text) {
            Ok(target) if target.topic == topic => targets.push((target.database, target.table)),
            Ok(_) => {}
            Err(e) => warn!(dir = %entry.path().display(), error = %e, "unreadable spool target file; skipping it"),
        }
    }
    targets.sort();
    targets
}

/// Rows mapped so far for one table, waiting to be appended to its spool.
#[derive(Default)]
struct Chunk {
    groups: HashMap<Vec<String>, Vec<(u128, Vec<u8>)>>,
    spooled: Vec<usize>,
}

fn defer(message: String) -> ConnectorError {
    ConnectorError::Defer { delay: Duration::from_secs(2), message }
}

impl Inner {
    /// The open table `database.table`.
    pub(super) fn table(&self, label: &str) -> Option<Arc<Table>> {
        self.tables.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(label).cloned()
    }

    /// Every open table.
    pub(super) fn all_tables(&self) -> Vec<Arc<Table>> {
        self.tables.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }

    /// Opens (once) the spool of `database.name` for the mapping at `index` and starts its
    /// flusher.
    pub(super) async fn open_table(
        self: &Arc<Self>,
        index: usize,
        mapping: &TableMapping,
        database: String,
        name: String,
    ) -> ConnectorResult<Arc<Table>> {
        let label = format!("{database}.{name}");
        let _opening = self.opening.lock().await;
        if let Some(table) = self.table(&label) {
            return Ok(table);
        }
        let dir_name =
            if mapping.is_template() { template_dir_name(&database, &name) } else { spool_dir_name(&database, &name) };
        let dir: PathBuf = self.config.spool.dir.join(dir_name);
        let spool_config = self.config.spool.clone();
        let batch = self.config.batch.clone();
        let target = serde_json::to_vec(&Target {
            topic: mapping.topic.clone(),
            database: database.clone(),
            table: name.clone(),
        })
        .map_err(|e| ConnectorError::fatal("describe the spool target", e))?;
        let spool = tokio::task::spawn_blocking(move || -> Result<Spool, crate::spool::SpoolError> {
            let spool = Spool::open(dir.clone(), &spool_config, batch)?;
            let path = dir.join(TARGET_FILE);
            if std::fs::read(&path).ok().as_deref() != Some(target.as_slice()) {
                std::fs::write(&path, &target).map_err(|source| crate::spool::SpoolError::Io {
                    what: "write",
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(spool)
        })
        .await
        .map_err(|e| ConnectorError::fatal("open the spool", e))?
        .map_err(|e| ConnectorError::fatal(format!("open the spool of {label}"), e))?;
        info!(table = %label, topic = %mapping.topic, pending_rows = spool.pending_ids(), "spool opened");
        let table = Arc::new(Table {
            index,
            mapping: mapping.clone(),
            database,
            name,
            label: label.clone(),
            spool: Arc::new(spool),
            mapper: RwLock::new(None),
            last_refresh: Mutex::new(None),
            wake: Notify::new(),
            space: Notify::new(),
            keys: Mutex::new(mapping.key_columns.clone()),
            ddl: tokio::sync::Mutex::new(()),
        });
        self.tables.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(label, table.clone());
        let flusher = tokio::spawn(supervise_flusher(self.clone(), table.clone(), self.stop.clone()));
        self.flushers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(flusher);
        Ok(table)
    }

    /// Maps and spools the change records at `indices` (all of the mapping's topic), in
    /// order; a `TRUNCATE` is applied after the rows before it reached ClickHouse.
    pub(super) async fn spool_changes(
        self: &Arc<Self>,
        mapping_index: usize,
        mapping: &TableMapping,
        records: &[SinkRecord],
        indices: &[usize],
        failures: &mut Vec<(usize, ConnectorError)>,
    ) {
        let mut chunks: HashMap<String, (Arc<Table>, Chunk)> = HashMap::new();
        for &index in indices {
            let record = &records[index];
            let envelope = match parse_record(record) {
                Ok(envelope) => envelope,
                Err(error) => {
                    failures.push((index, ConnectorError::invalid("not a change record", error)));
                    continue;
                }
            };
            let (database, name) = if mapping.is_template() {
                mapping.resolve(&self.config.database, &envelope.schema, &envelope.table)
            } else {
                mapping.qualified(&self.config.database)
            };
            let table = match self.table(&format!("{database}.{name}")) {
                Some(table) => table,
                None => match self.open_table(mapping_index, mapping, database, name).await {
                    Ok(table) => table,
                    Err(error) => {
                        failures.push((index, error));
                        continue;
                    }
                },
            };
            if envelope.op == Op::Truncate {
                let failed_before = failures.len();
                if let Some((table, chunk)) = chunks.remove(&table.label) {
                    self.append_chunk(&table, chunk, failures).await;
                }
                if failures.len() > failed_before {
                    // Rows before it come back later: the truncate must not pass them.
                    failures
                        .push((index, defer(format!("rows before a TRUNCATE of {} were not spooled", table.label))));
                    continue;
                }
                if let Err(error) = self.truncate(&table, envelope.version).await {
                    failures.push((index, error));
                }
                continue;
            }
            match self.change_rows(&table, record, &envelope).await {
                Ok(rows) => {
                    let (_, chunk) =
                        chunks.entry(table.label.clone()).or_insert_with(|| (table.clone(), Chunk::default()));
                    for (columns, id, line) in rows {
                        chunk.groups.entry(columns).or_default().push((id, line));
                    }
                    chunk.spooled.push(index);
                }
                Err(error) => failures.push((index, error)),
            }
        }
        for (_, (table, chunk)) in chunks {
            self.append_chunk(&table, chunk, failures).await;
        }
    }

    async fn append_chunk(&self, table: &Arc<Table>, chunk: Chunk, failures: &mut Vec<(usize, ConnectorError)>) {
        let groups: Vec<RowGroup> = chunk.groups.into_iter().collect();
        self.append_rows(table, groups, chunk.spooled, failures).await;
    }

    /// The rows of one change: `(insert columns, spool id, JSONEachRow line)`. An UPDATE
    /// that changed the key also writes the old key as deleted.
    async fn change_rows(
        &self,
        table: &Table,
        record: &SinkRecord,
        envelope: &Envelope,
    ) -> ConnectorResult<Vec<(Vec<String>, u128, Vec<u8>)>> {
        let (image, deleted) = match (envelope.op, &envelope.after, &envelope.before) {
            (Op::Upsert, Some(after), _) => (after, false),
            (Op::Delete, _, Some(before)) => (before, true),
            _ => return Err(ConnectorError::invalid_msg("a change without the image its operation needs")),
        };
        let mapper = self.cdc_mapper(table, record, image).await?;
        let invalid =
            |error: MapError| ConnectorError::invalid(format!("change does not fit table {}", table.label), error);
        let message_id = record.message_id();
        let mut rows = Vec::with_capacity(2);
        if let (Op::Upsert, Some(before)) = (envelope.op, &envelope.before) {
            let keys = table.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if cdc::key_changed(&keys, before, image) {
                let old = mapper.map_change(before, record, true, envelope.version).map_err(invalid)?;
                let id = record_id(&format!("{message_id}#old-key"), record.publish_time, &record.producer_name);
                rows.push((mapper.insert_columns(&old.shape), id, old.line));
            }
        }
        let row = mapper.map_change(image, record, deleted, envelope.version).map_err(invalid)?;
        let id = record_id(&message_id, record.publish_time, &record.producer_name);
        rows.push((mapper.insert_columns(&row.shape), id, row.line));
        Ok(rows)
    }

    /// The table's mapper, with the table created and missing columns added first when
    /// `create_tables` is on.
    async fn cdc_mapper(
        &self,
        table: &Table,
        record: &SinkRecord,
        image: &Map<String, Value>,
    ) -> ConnectorResult<Arc<Mapper>> {
        let manage = table.mapping.create_tables;
        let current = table.mapper.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(mapper) = &current {
            if image.keys().all(|name| mapper.has_column(name)) {
                return Ok(mapper.clone());
            }
            if !manage {
                // Perhaps a column was just added: look again (rate limited).
                if self.may_refresh(table, self.config.schema_refresh_interval) {
                    if let Ok(fresh) = self.refresh_schema(table).await {
                        return Ok(fresh);
                    }
                }
                return Ok(mapper.clone());
            }
        }
        let _ddl = table.ddl.lock().await;
        debug!(table = %table.label, "checking the table before DDL");
        let unavailable = |e: ClickHouseError| defer(danube_connect_core::error::error_chain(&e));
        let columns = self.ch.columns(&table.database, &table.name).await.map_err(unavailable)?;
        if columns.is_empty() {
            if !manage {
                return Err(defer(format!(
                    "table {} does not exist (create it, or set connector.tables[{}].create_tables = true)",
                    table.label, table.index
                )));
            }
            self.create_table(table, record, image).await?;
        } else if manage {
            let missing: Vec<&String> = image.keys().filter(|name| !columns.iter().any(|c| &c.name == *name)).collect();
            if !missing.is_empty() {
                let schema = self.record_schema(record).await?;
                for name in missing {
                    let base = schema
                        .as_deref()
                        .and_then(cdc::schema_columns)
                        .and_then(|columns| columns.get(name.as_str()))
                        .map_or_else(|| cdc::type_from_value(&image[name.as_str()]), cdc::type_from_schema);
                    let sql = format!(
                        "ALTER TABLE {}.{} ADD COLUMN {} Nullable({base})",
                        quote_ident(&table.database),
                        quote_ident(&table.name),
                        quote_ident(name)
                    );
                    match self.ch.execute(&sql, &table.label).await {
                        Ok(()) => {
                            info!(table = %table.label, column = %name, r#type = %format!("Nullable({base})"), "column added")
                        }
                        // Added meanwhile by someone else.
                        Err(ClickHouseError::Rejected { code: 15 | 44, .. }) => {}
                        Err(error @ ClickHouseError::Rejected { .. }) => {
                            warn!(table = %table.label, column = %name, error = %danube_connect_core::error::error_chain(&error), "ClickHouse refused to add the column; the record goes to the failure policy");
                            return Err(ConnectorError::invalid(
                                format!("cannot add column `{name}` to {}", table.label),
                                error,
                            ));
                        }
                        Err(error) => return Err(unavailable(error)),
                    }
                }
            }
        }
        match self.refresh_schema(table).await {
            Ok(mapper) => Ok(mapper),
            Err(error @ ConnectorError::Fatal { .. }) => Err(error),
            Err(error) => Err(defer(error.chain())),
        }
    }

    /// The registry schema of `record` (`None` when it carries none), cached.
    async fn record_schema(&self, record: &SinkRecord) -> ConnectorResult<Option<Arc<Value>>> {
        let Some(id) = record.schema_id else { return Ok(None) };
        let key = (id, record.schema_version);
        if let Some(schema) = self.schemas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key) {
            return Ok(Some(schema.clone()));
        }
        let definition =
            self.publisher.fetch_schema_definition(id, record.schema_version).await.map_err(|e| defer(e.chain()))?;
        let schema: Value = serde_json::from_slice(&definition)
            .map_err(|e| ConnectorError::invalid(format!("schema {id} is not a JSON Schema"), e))?;
        let schema = Arc::new(schema);
        self.schemas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key, schema.clone());
        Ok(Some(schema))
    }

    /// `CREATE TABLE IF NOT EXISTS ... ENGINE = ReplacingMergeTree(version) ORDER BY (key)`:
    /// columns and types from the record's registry schema (or its values), the key from
    /// `key_columns` or the schema.
    async fn create_table(
        &self,
        table: &Table,
        record: &SinkRecord,
        image: &Map<String, Value>,
    ) -> ConnectorResult<()> {
        let mapping = &table.mapping;
        let schema = self.record_schema(record).await?;
        debug!(table = %table.label, schema = schema.is_some(), "creating the table");
        let mut keys = mapping.key_columns.clone();
        if keys.is_empty() {
            keys = schema.as_deref().and_then(cdc::schema_key_columns).unwrap_or_default();
        }
        let field = format!("connector.tables[{}].key_columns", table.index);
        if keys.is_empty() {
            return Err(ConnectorError::fatal_msg(format!(
                "{field}: cannot create {}: its key columns are unknown (the records carry no schema naming them); list them",
                table.label
            )));
        }
        let mut columns: Vec<(String, &'static str)> = Vec::new();
        if let Some(properties) = schema.as_deref().and_then(cdc::schema_columns) {
            for (name, property) in properties {
                columns.push((name.clone(), cdc::type_from_schema(property)));
            }
        }
        for (name, value) in image {
            if !columns.iter().any(|(c, _)| c == name) {
                columns.push((name.clone(), cdc::type_from_value(value)));
            }
        }
        if let Some(missing) = keys.iter().find(|k| !columns.iter().any(|(c, _)| c == *k)) {
            return Err(ConnectorError::fatal_msg(format!("{field}: `{missing}` is not a column of {}", table.label)));
        }
        let mut definitions: Vec<String> = columns
            .iter()
            .map(|(name, base)| {
                let ty = if keys.contains(name) { (*base).to_string() } else { format!("Nullable({base})") };
                format!("{} {ty}", quote_ident(name))
            })
            .collect();
        let metadata = [
            (&mapping.topic_column, "String"),
            (&mapping.offset_column, "UInt64"),
            (&mapping.publish_time_column, "UInt64"),
            (&mapping.key_column, "Nullable(String)"),
            (&mapping.batch_id_column, "String"),
        ];
        for (column, ty) in metadata {
            if let Some(column) = column {
                definitions.push(format!("{} {ty}", quote_ident(column)));
            }
        }
        definitions.push(format!("{} UInt8", quote_ident(&mapping.deleted_column)));
        definitions.push(format!("{} UInt64", quote_ident(&mapping.version_column)));
        let order_by: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {}.{} ({}) ENGINE = ReplacingMergeTree({}) ORDER BY ({})",
            quote_ident(&table.database),
            quote_ident(&table.name),
            definitions.join(", "),
            quote_ident(&mapping.version_column),
            order_by.join(", ")
        );
        let database = format!("CREATE DATABASE IF NOT EXISTS {}", quote_ident(&table.database));
        let created = match self.ch.execute_in_system(&database, &table.database).await {
            Ok(()) => self.ch.execute(&sql, &table.label).await,
            Err(error) => Err(error),
        };
        match created {
            Ok(()) => {
                info!(table = %table.label, key = %keys.join(", "), columns = columns.len(), "table created");
                *table.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
                Ok(())
            }
            Err(error @ ClickHouseError::Rejected { .. }) => {
                warn!(table = %table.label, error = %danube_connect_core::error::error_chain(&error), "ClickHouse refused to create the table; the record goes to the failure policy");
                Err(ConnectorError::invalid(format!("cannot create {}", table.label), error))
            }
            Err(error) => Err(defer(danube_connect_core::error::error_chain(&error))),
        }
    }

    /// Applies a `TRUNCATE` at `version`: once every row spooled before it is in ClickHouse,
    /// each row older than it gets a deleted copy at its version. Repeating it changes nothing.
    async fn truncate(&self, table: &Table, version: u64) -> ConnectorResult<()> {
        if table.mapping.truncate == TruncateMode::Ignore {
            info!(table = %table.label, "TRUNCATE ignored (truncate = \"ignore\")");
            return Ok(());
        }
        let columns = self
            .ch
            .columns(&table.database, &table.name)
            .await
            .map_err(|e| defer(danube_connect_core::error::error_chain(&e)))?;
        if columns.is_empty() {
            info!(table = %table.label, "TRUNCATE of a table that does not exist here: nothing to do");
            return Ok(());
        }
        let spool = table.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.seal_lingering(None)).await;
        table.wake.notify_one();
        let deadline = Instant::now() + self.config.insert_timeout;
        while !table.spool.is_empty() {
            if Instant::now() >= deadline {
                return Err(defer(format!("the rows before a TRUNCATE of {} are not in ClickHouse yet", table.label)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mapper = match self.refresh_schema(table).await {
            Ok(mapper) => mapper,
            Err(error @ ConnectorError::Fatal { .. }) => return Err(error),
            Err(error) => return Err(defer(error.chain())),
        };
        let Some((deleted, version_column)) = mapper.cdc_columns() else {
            return Err(ConnectorError::fatal_msg("a CDC table without its CDC columns"));
        };
        let copied: Vec<String> = mapper
            .columns()
            .iter()
            .map(|c| c.name.clone())
            .filter(|name| name != deleted && name != version_column)
            .map(|name| quote_ident(&name))
            .collect();
        let mut into = copied.clone();
        into.push(quote_ident(deleted));
        into.push(quote_ident(version_column));
        let mut select = copied;
        select.push("toUInt8(1)".into());
        select.push(format!("toUInt64({version})"));
        let target = format!("{}.{}", quote_ident(&table.database), quote_ident(&table.name));
        let sql = format!(
            "INSERT INTO {target} ({}) SELECT {} FROM {target} FINAL WHERE {} < {version} AND {} = 0",
            into.join(", "),
            select.join(", "),
            quote_ident(version_column),
            quote_ident(deleted)
        );
        match self.ch.execute(&sql, &table.label).await {
            Ok(()) => {
                info!(table = %table.label, version, "TRUNCATE applied: every older row is marked deleted");
                Ok(())
            }
            Err(error @ ClickHouseError::Rejected { .. }) => {
                Err(ConnectorError::invalid(format!("cannot apply a TRUNCATE to {}", table.label), error))
            }
            Err(error) => Err(defer(danube_connect_core::error::error_chain(&error))),
        }
    }
}

/// The record's change envelope: its schema-decoded value, or its payload parsed.
fn parse_record(record: &SinkRecord) -> Result<Envelope, cdc::EnvelopeError> {
    match &record.value {
        Some(value) => cdc::parse(value),
        None => {
            let value: Value = serde_json::from_slice(&record.payload).map_err(cdc::EnvelopeError::NotJson)?;
            cdc::parse(&value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_dirs_are_safe_and_distinct() {
        assert_eq!(template_dir_name("db", "public_orders"), "db.public_orders");
        let a = template_dir_name("db", "a b");
        let b = template_dir_name("db", "a/b");
        assert!(a.starts_with("db.a_b-") && b.starts_with("db.a_b-") && a != b, "{a} {b}");
    }

    #[test]
    fn spool_targets_are_found_by_topic() {
        let dir = tempfile::tempdir().expect("dir");
        for (sub, topic, table) in [("x", "/default/a", "t1"), ("y", "/default/b", "t2")] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
            let target = Target { topic: topic.into(), database: "db".into(), table: table.into() };
            std::fs::write(dir.path().join(sub).join(TARGET_FILE), serde_json::to_vec(&target).expect("json"))
                .expect("write");
        }
        assert_eq!(recovered_targets(dir.path(), "/default/a"), vec![("db".to_string(), "t1".to_string())]);
        assert!(recovered_targets(&dir.path().join("missing"), "/default/a").is_empty());
    }
}
