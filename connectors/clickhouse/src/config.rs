//! The `[connector]` section of the ClickHouse sink (env prefix `CLICKHOUSE_`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use danube_connect_core::config::{validate_topic, ConfigError, RuntimeConfig, Validate};
use danube_connect_core::template::{TableField, TableFields, Template, TemplateText};
use danube_connect_core::Secret;
use serde::{Deserialize, Serialize};

/// ClickHouse sink configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSinkConfig {
    /// ClickHouse HTTP endpoint (`http://127.0.0.1:8123`, or `https://` for TLS).
    pub url: String,
    /// Database holding the target tables (used when a table name has no `db.` prefix).
    pub database: String,
    /// User name; ClickHouse's `default` user when unset.
    pub user: Option<String>,
    /// Password: a string, `{ env = "VAR" }` or `{ file = "/path" }`; redacted in output.
    pub password: Option<Secret>,
    /// Insert body compression: `lz4` (default) or `none`.
    pub compression: CompressionMode,
    /// ClickHouse settings sent with every insert and query (`max_insert_block_size = "100000"`).
    pub settings: BTreeMap<String, String>,
    /// Per-topic target tables.
    pub tables: Vec<TableMapping>,
    /// When a spooled batch is inserted.
    pub batch: InsertBatchConfig,
    /// The local durable spool between Danube acks and ClickHouse inserts.
    pub spool: SpoolConfig,
    /// `insert_deduplication_token` on inserts: `auto` (when the server supports it,
    /// ClickHouse 22.2+), `always` or `never`.
    pub deduplication_token: DedupMode,
    /// Send inserts with `async_insert = 1, wait_for_async_insert = 1` (ClickHouse 21.11+).
    pub async_insert: bool,
    /// Upper bound of one insert request (send and server-side processing).
    #[serde(with = "humantime_serde")]
    pub insert_timeout: Duration,
    /// At least this long between two schema reloads triggered by unknown fields.
    #[serde(with = "humantime_serde")]
    pub schema_refresh_interval: Duration,
    /// How long `shutdown` keeps inserting spooled batches before leaving the rest in the
    /// spool for the next start.
    #[serde(with = "humantime_serde")]
    pub shutdown_flush_timeout: Duration,
}

impl Default for ClickHouseSinkConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "default".into(),
            user: None,
            password: None,
            compression: CompressionMode::Lz4,
            settings: BTreeMap::new(),
            tables: Vec::new(),
            batch: InsertBatchConfig::default(),
            spool: SpoolConfig::default(),
            deduplication_token: DedupMode::Auto,
            async_insert: false,
            insert_timeout: Duration::from_secs(60),
            schema_refresh_interval: Duration::from_secs(10),
            shutdown_flush_timeout: Duration::from_secs(10),
        }
    }
}

/// Insert body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionMode {
    /// No compression.
    None,
    /// ClickHouse's LZ4 block framing (`decompress=1`).
    Lz4,
}

/// Whether inserts carry an `insert_deduplication_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupMode {
    /// When `SELECT version()` is 22.2 or later.
    Auto,
    /// Always (the server must know the setting).
    Always,
    /// Never.
    Never,
}

/// What to do with a JSON field that names no column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownFields {
    /// Drop the field, insert the rest.
    Ignore,
    /// The record is invalid (dead-lettered by the failure policy).
    Error,
}

/// One Danube topic written to one ClickHouse table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// The Danube topic (`/default/events`); it must also be listed in `sink.topics`.
    pub topic: String,
    /// The target table (`events` or `db.events`); in CDC mode a template of the shared
    /// grammar (`docs/templates.md`) with `{schema}` and `{table}` of each record's source.
    pub table: TemplateText<TableFields>,
    /// Fields without a column: `ignore` (default) or `error`.
    #[serde(default = "default_unknown")]
    pub unknown_fields: UnknownFields,
    /// Column receiving the Danube topic name (String).
    #[serde(default)]
    pub topic_column: Option<String>,
    /// Column receiving the message offset within its partition (UInt64).
    #[serde(default)]
    pub offset_column: Option<String>,
    /// Column receiving the publish time (DateTime: seconds; DateTime64: ms; integers: ms).
    #[serde(default)]
    pub publish_time_column: Option<String>,
    /// Column receiving the routing key (String or Nullable(String)).
    #[serde(default)]
    pub key_column: Option<String>,
    /// A `String` column receiving each insert's batch token. With it, an insert whose
    /// outcome is unknown (a retry, or a segment found at start) first asks ClickHouse
    /// whether that batch is already there, so no batch is inserted twice, on any server
    /// version and without replication.
    #[serde(default)]
    pub batch_id_column: Option<String>,
    /// `rows` (default: each record is one row) or `cdc` (records are danube-postgres-cdc
    /// change envelopes applied to a `ReplacingMergeTree` table; see the README).
    #[serde(default)]
    pub mode: TableMode,
    /// CDC mode: the `UInt8` column set to 1 on rows that record a delete.
    #[serde(default = "default_deleted_column")]
    pub deleted_column: String,
    /// CDC mode: the `UInt64` version column (`ReplacingMergeTree(version)`), from the
    /// change's commit LSN and its position in the transaction.
    #[serde(default = "default_version_column")]
    pub version_column: String,
    /// CDC mode: create a missing table and add columns that appear in the change records.
    #[serde(default)]
    pub create_tables: bool,
    /// CDC mode: the source table's key columns (the `ORDER BY` of a created table, and how
    /// a key change is recognised). Default: the key the registered schema names, or the
    /// existing table's `ORDER BY`.
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// CDC mode: what a `TRUNCATE` does: `delete` (default: every row older than it is
    /// marked deleted) or `ignore`.
    #[serde(default)]
    pub truncate: TruncateMode,
}

fn default_unknown() -> UnknownFields {
    UnknownFields::Ignore
}

fn default_deleted_column() -> String {
    "_deleted".into()
}

fn default_version_column() -> String {
    "_version".into()
}

/// How a topic's records become rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TableMode {
    /// Each record (a JSON object) is one row.
    #[default]
    Rows,
    /// Each record is a danube-postgres-cdc change envelope (`op`, `before`, `after`, ...):
    /// the after image (or the deleted key) is written with a version and a deleted flag.
    Cdc,
}

/// What a CDC `TRUNCATE` record does to the target table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TruncateMode {
    /// Every row whose version is below the truncate's gets a deleted row at the
    /// truncate's version (`INSERT ... SELECT ... FINAL`), after the rows spooled before it
    /// are inserted. Re-applying it changes nothing.
    #[default]
    Delete,
    /// Acknowledge it and leave the table as it is.
    Ignore,
}

/// Flush bounds of one table's spool segment: it is inserted at whichever comes first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InsertBatchConfig {
    /// Rows per insert, at most.
    pub max_rows: usize,
    /// Bytes of row data per insert, at most.
    pub max_bytes: usize,
    /// How long the first row of a batch may wait for more.
    #[serde(with = "humantime_serde")]
    pub max_linger: Duration,
}

impl Default for InsertBatchConfig {
    fn default() -> Self {
        Self { max_rows: 10_000, max_bytes: 16 << 20, max_linger: Duration::from_secs(1) }
    }
}

/// When the spool forces appended rows to disk before Danube is acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// `fdatasync` after every append (survives power loss).
    Always,
    /// Leave it to the page cache (survives a crash of the connector, not of the machine).
    Never,
}

/// The local durable spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of spool segments (one sub-directory per table). Keep it on a persistent
    /// volume: rows in it are already acked to Danube.
    pub dir: PathBuf,
    /// `always` (default) or `never`; see [`SyncMode`].
    pub sync: SyncMode,
    /// Spooled bytes per table, at most; intake waits (then defers records back to the
    /// broker) while ClickHouse is behind.
    pub max_bytes: u64,
    /// How long intake waits for spool space before handing records back to the broker.
    #[serde(with = "humantime_serde")]
    pub full_wait: Duration,
    /// After a start, how long records the previous run had already spooled or inserted
    /// are recognised and skipped when the broker redelivers them (their ack was lost in a
    /// crash). Longer than the broker's ack timeout plus redelivery delay.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Rows of inserted segments kept on disk for that recognition; at least the broker's
    /// dispatch window (`max_unacked_messages`) times `sink.concurrency`.
    pub dedup_rows: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("clickhouse-spool"),
            sync: SyncMode::Always,
            max_bytes: 256 << 20,
            full_wait: Duration::from_secs(5),
            dedup_window: Duration::from_secs(600),
            dedup_rows: 10_000,
        }
    }
}

impl Validate for ClickHouseSinkConfig {
    fn validate_with_runtime(&self, runtime: &RuntimeConfig) -> Result<(), ConfigError> {
        runtime.require_sink_topics()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "connector.url",
                format!("`{}` must start with http:// or https:// (e.g. http://127.0.0.1:8123)", self.url),
            ));
        }
        let authority =
            self.url.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
        if authority.contains('@') {
            // Credentials in the URL would be shown wherever the URL is (`--check`, logs).
            return Err(ConfigError::invalid(
                "connector.url",
                "must not hold credentials (user:password@); set `user` and `password` (a secret) instead",
            ));
        }
        if self.database.is_empty() {
            return Err(ConfigError::invalid("connector.database", "must not be empty"));
        }
        if self.tables.is_empty() {
            return Err(ConfigError::invalid(
                "connector.tables",
                "needs at least one mapping, e.g. [{ topic = \"/default/events\", table = \"events\" }]",
            ));
        }
        for (i, mapping) in self.tables.iter().enumerate() {
            validate_topic(&format!("connector.tables[{i}].topic"), &mapping.topic)?;
            let text = mapping.table.as_str();
            if text.is_empty() || text.split('.').count() > 2 || text.split('.').any(str::is_empty) {
                return Err(ConfigError::invalid(
                    format!("connector.tables[{i}].table"),
                    format!("`{}` must be `table` or `database.table`", mapping.table),
                ));
            }
            if mapping.batch_id_column.as_deref() == Some("") {
                return Err(ConfigError::invalid(
                    format!("connector.tables[{i}].batch_id_column"),
                    "must name a String column of the table, or be left out",
                ));
            }
            let templated = text.contains('{') || text.contains('}');
            if mapping.mode == TableMode::Rows {
                if templated {
                    return Err(ConfigError::invalid(
                        format!("connector.tables[{i}].table"),
                        "`{schema}` / `{table}` templates need mode = \"cdc\"",
                    ));
                }
                if mapping.create_tables || !mapping.key_columns.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("connector.tables[{i}].mode"),
                        "create_tables and key_columns need mode = \"cdc\"",
                    ));
                }
            } else {
                mapping.table.check(&format!("connector.tables[{i}].table"))?;
                for (field, value) in
                    [("deleted_column", &mapping.deleted_column), ("version_column", &mapping.version_column)]
                {
                    if value.is_empty() {
                        return Err(ConfigError::invalid(
                            format!("connector.tables[{i}].{field}"),
                            "must name a column",
                        ));
                    }
                }
                if mapping.deleted_column == mapping.version_column {
                    return Err(ConfigError::invalid(
                        format!("connector.tables[{i}].version_column"),
                        "must differ from deleted_column",
                    ));
                }
                if mapping.key_columns.iter().any(String::is_empty) {
                    return Err(ConfigError::invalid(
                        format!("connector.tables[{i}].key_columns"),
                        "column names must not be empty",
                    ));
                }
            }
            if self.tables[..i].iter().any(|other| other.topic == mapping.topic) {
                return Err(ConfigError::invalid(
                    format!("connector.tables[{i}].topic"),
                    format!("`{}` is mapped twice", mapping.topic),
                ));
            }
        }
        for name in self.settings.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::invalid(
                    format!("connector.settings.{name}"),
                    "setting names use letters, digits and '_'",
                ));
            }
        }
        if self.batch.max_rows == 0 {
            return Err(ConfigError::invalid("connector.batch.max_rows", "must be at least 1"));
        }
        if self.batch.max_bytes == 0 {
            return Err(ConfigError::invalid("connector.batch.max_bytes", "must be at least 1"));
        }
        if self.batch.max_linger.is_zero() {
            return Err(ConfigError::invalid("connector.batch.max_linger", "must be greater than 0"));
        }
        if self.spool.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("connector.spool.dir", "must not be empty"));
        }
        if self.spool.max_bytes < self.batch.max_bytes as u64 {
            return Err(ConfigError::invalid(
                "connector.spool.max_bytes",
                "must be at least `connector.batch.max_bytes`",
            ));
        }
        if self.insert_timeout.is_zero() {
            return Err(ConfigError::invalid("connector.insert_timeout", "must be greater than 0"));
        }
        Ok(())
    }
}

impl TableMapping {
    /// A `rows` mapping of `topic` to `table` with every option at its default.
    pub fn new(topic: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            table: TemplateText::new(table.into()),
            unknown_fields: UnknownFields::Ignore,
            topic_column: None,
            offset_column: None,
            publish_time_column: None,
            key_column: None,
            batch_id_column: None,
            mode: TableMode::Rows,
            deleted_column: default_deleted_column(),
            version_column: default_version_column(),
            create_tables: false,
            key_columns: Vec::new(),
            truncate: TruncateMode::Delete,
        }
    }

    /// Whether the table name is a template (`{schema}`, `{table}`) resolved per record.
    pub fn is_template(&self) -> bool {
        self.table.template().is_some_and(|t| !t.is_static())
    }

    /// `(database, table)` of a template for a source `schema.table`.
    pub fn resolve(&self, default_database: &str, schema: &str, table: &str) -> (String, String) {
        let Some(template) = self.table.template() else { return self.qualified(default_database) };
        let fill = |t: &Template<TableField>| t.render_table(schema, table, String::push_str);
        match template.split_once('.') {
            Some((database, name)) => (fill(&database), fill(&name)),
            None => (default_database.to_string(), fill(template)),
        }
    }

    /// `(database, table)` with `default_database` when the name has no prefix.
    pub fn qualified(&self, default_database: &str) -> (String, String) {
        match self.table.as_str().split_once('.') {
            Some((db, table)) => (db.to_string(), table.to_string()),
            None => (default_database.to_string(), self.table.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> ClickHouseSinkConfig {
        ClickHouseSinkConfig {
            tables: vec![TableMapping::new("/default/events", "events")],
            ..ClickHouseSinkConfig::default()
        }
    }

    #[test]
    fn defaults_with_one_table_are_valid() {
        assert!(valid().validate().is_ok());
        assert_eq!(valid().batch.max_rows, 10_000);
        assert_eq!(valid().batch.max_linger, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_name_their_field() {
        let mut c = valid();
        c.url = "127.0.0.1:8123".into();
        assert!(c.validate().unwrap_err().to_string().contains("connector.url"));
        let mut c = valid();
        c.url = "http://default:hunter2@127.0.0.1:8123".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("connector.url") && !err.contains("hunter2"), "{err}");
        let mut c = valid();
        c.tables[0].table = "a.b.c".into();
        assert!(c.validate().unwrap_err().to_string().contains("connector.tables[0].table"));
        let mut c = valid();
        c.tables[0].topic = "events".into();
        assert!(c.validate().unwrap_err().to_string().contains("connector.tables[0].topic"));
        let mut c = valid();
        c.batch.max_rows = 0;
        assert!(c.validate().unwrap_err().to_string().contains("connector.batch.max_rows"));
        let mut c = valid();
        c.tables.clear();
        assert!(c.validate().unwrap_err().to_string().contains("connector.tables"));
        let mut c = valid();
        c.settings.insert("bad name".into(), "1".into());
        assert!(c.validate().unwrap_err().to_string().contains("connector.settings.bad name"));
        let mut c = valid();
        c.tables[0].table = "{schema}_{table}".into();
        assert!(c.validate().unwrap_err().to_string().contains("connector.tables[0].table"));
        c.tables[0].mode = TableMode::Cdc;
        assert!(c.validate().is_ok());
        c.tables[0].table = "{schema}_{tabel}".into();
        assert!(c.validate().unwrap_err().to_string().contains("connector.tables[0].table"));
        let mut c = valid();
        c.tables[0].mode = TableMode::Cdc;
        c.tables[0].version_column = "_deleted".into();
        assert!(c.validate().unwrap_err().to_string().contains("connector.tables[0].version_column"));
        let mut c = valid();
        c.tables[0].create_tables = true;
        assert!(c.validate().unwrap_err().to_string().contains("connector.tables[0].mode"));
    }

    #[test]
    fn templates_resolve_per_source_table() {
        let mut m = TableMapping::new("/default/pg", "cdc.{schema}_{table}");
        m.mode = TableMode::Cdc;
        assert!(m.is_template());
        assert_eq!(m.resolve("default", "public", "orders"), ("cdc".into(), "public_orders".into()));
        let cdc: TableMapping =
            serde_json::from_str(r#"{"topic":"/default/pg","table":"t","mode":"cdc","truncate":"ignore"}"#)
                .expect("cdc");
        assert_eq!(
            (cdc.mode, cdc.truncate, cdc.deleted_column.as_str()),
            (TableMode::Cdc, TruncateMode::Ignore, "_deleted")
        );
    }

    #[test]
    fn table_names_may_carry_a_database() {
        let mut m = valid().tables.remove(0);
        assert_eq!(m.qualified("default"), ("default".into(), "events".into()));
        m.table = "analytics.events".into();
        assert_eq!(m.qualified("default"), ("analytics".into(), "events".into()));
    }
}
