//! The `[connector]` section of the PostgreSQL CDC connector (env prefix `POSTGRES_CDC_`).

use std::path::PathBuf;
use std::time::Duration;

use danube_connect_core::config::{validate_topic, ConfigError, Validate};
use danube_connect_core::naming::{is_valid_topic, sanitize_topic_part};
use danube_connect_core::schema::CompatibilityMode;
use danube_connect_core::template::{TableFields, TemplateText};
use danube_connect_core::Secret;
use serde::{Deserialize, Serialize};

/// TLS mode of both PostgreSQL connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS without certificate verification.
    Require,
    /// TLS, certificate checked against `tls_ca` (or the web roots).
    VerifyCa,
    /// TLS, certificate and host name checked.
    VerifyFull,
}

/// Whether to read the existing rows before streaming changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// When the slot is created: read every captured table (consistent with the slot), then stream.
    #[default]
    Initial,
    /// Never read existing rows; stream changes only.
    Never,
    /// Read the tables once (when the slot is created) and stop; no streaming.
    InitialOnly,
}

/// Whether each table's records are published with a schema derived from its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// Plain JSON records without a registry schema.
    #[default]
    None,
    /// A JSON Schema of the change envelope per table, registered in the Danube schema
    /// registry when the table is first seen (and again when its columns change).
    JsonSchema,
}

/// What an UPDATE's unchanged TOAST columns (large values PostgreSQL does not resend) become
/// in `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ToastMode {
    /// Left out of `after` and listed in `unchanged_toast`.
    #[default]
    List,
    /// Set to `toast_placeholder` in `after` (and listed in `unchanged_toast`).
    Placeholder,
    /// Taken from the `before` image when the table has `REPLICA IDENTITY FULL` (its old row
    /// carries the value); tables without it keep the `list` behaviour.
    Before,
}

/// `[connector]` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresCdcConfig {
    /// Connection URL `postgres://user:password@host:port/database` (overrides the discrete fields it sets).
    pub url: Option<Secret>,
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database to capture.
    pub database: String,
    /// User with the REPLICATION attribute (and SELECT on the captured tables).
    pub user: String,
    /// Password (string, `{ env = "VAR" }` or `{ file = "/path" }`).
    pub password: Option<Secret>,
    /// TLS mode: `disable`, `require`, `verify_ca`, `verify_full`.
    pub tls: TlsMode,
    /// CA certificate (PEM) for `verify_ca` / `verify_full`.
    pub tls_ca: Option<PathBuf>,
    /// Logical replication slot (created with `pgoutput` when missing).
    pub slot: String,
    /// Publication (created when missing, for `tables` or all tables).
    pub publication: String,
    /// Tables to capture as `schema.table` (or `table` for `public`); empty = all tables.
    pub tables: Vec<String>,
    /// Create the slot when it does not exist.
    pub create_slot: bool,
    /// Create the publication when it does not exist.
    pub create_publication: bool,
    /// Initial snapshot: `initial`, `never`, `initial_only`.
    pub snapshot: SnapshotMode,
    /// Rows fetched per round trip while snapshotting.
    pub snapshot_chunk_size: usize,
    /// Topic per table: a template (the shared grammar, `docs/templates.md`) with
    /// `{schema}` and `{table}`, or one fixed topic.
    pub topic: TemplateText<TableFields>,
    /// Also publish `BEGIN`/`COMMIT` boundary records to this topic.
    pub transaction_topic: Option<String>,
    /// How often the acknowledged position is reported to PostgreSQL.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// Heartbeat: an idle replication connection wakes up and reports its position this often,
    /// so the slot advances while the captured tables are quiet.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long startup waits for a slot held by another session (e.g. a crashed
    /// predecessor whose connection the server has not noticed yet) before failing.
    #[serde(with = "humantime_serde")]
    pub slot_wait: Duration,
    /// Most records returned by one poll.
    pub max_batch: usize,
    /// Decoded records buffered between the replication stream and Danube.
    pub buffer: usize,
    /// Schema per table: `none` (default) or `json_schema` (derived from the table's columns,
    /// registered, and every record validated against it and stamped with its version).
    pub schema: SchemaMode,
    /// Registry subject of a table's schema: a template with `{schema}` and `{table}`.
    pub schema_subject: TemplateText<TableFields>,
    /// Compatibility mode set on each subject before registering (`none`, `backward`,
    /// `forward`, `full`); unset keeps the registry's (backward by default).
    pub schema_compatibility: Option<CompatibilityMode>,
    /// How often the slot's state (lag, `wal_status`, `safe_wal_size`) is read from
    /// `pg_replication_slots`, on a connection of its own.
    #[serde(with = "humantime_serde")]
    pub slot_check_interval: Duration,
    /// `/readyz` reports not ready while the slot's lag (server WAL position minus its
    /// confirmed flush LSN) is above this many bytes; unset: lag does not affect readiness.
    pub readiness_max_lag_bytes: Option<u64>,
    /// `/readyz` reports not ready while the slot's `safe_wal_size` (WAL that may still be
    /// written before PostgreSQL invalidates the slot, with `max_slot_wal_keep_size` set) is
    /// below this many bytes; unset: not checked.
    pub readiness_min_safe_wal_bytes: Option<u64>,
    /// Unchanged TOAST columns of an UPDATE: `list` (left out, listed in `unchanged_toast`),
    /// `placeholder` (set to `toast_placeholder`), `before` (from the old row with
    /// `REPLICA IDENTITY FULL`).
    pub toast: ToastMode,
    /// The value an unchanged TOAST column gets with `toast = placeholder`.
    pub toast_placeholder: String,
    /// Signal table `schema.table` (columns `id text`, `type text`, `data jsonb`), created when
    /// missing and added to the publication; an `execute-snapshot` or `stop-snapshot` row
    /// inserted into it starts or stops an incremental snapshot. Empty: no signals.
    pub signal_table: String,
    /// Rows per chunk of an incremental snapshot.
    pub incremental_chunk_size: usize,
}

impl Default for PostgresCdcConfig {
    fn default() -> Self {
        Self {
            url: None,
            host: "127.0.0.1".into(),
            port: 5432,
            database: "postgres".into(),
            user: "postgres".into(),
            password: None,
            tls: TlsMode::Disable,
            tls_ca: None,
            slot: "danube_cdc".into(),
            publication: "danube_cdc".into(),
            tables: Vec::new(),
            create_slot: true,
            create_publication: true,
            snapshot: SnapshotMode::Initial,
            snapshot_chunk_size: 5000,
            topic: "/default/{schema}-{table}".into(),
            transaction_topic: None,
            status_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(10),
            slot_wait: Duration::from_secs(15),
            max_batch: 1000,
            buffer: 8192,
            schema: SchemaMode::None,
            schema_subject: "{schema}.{table}-value".into(),
            schema_compatibility: None,
            slot_check_interval: Duration::from_secs(10),
            readiness_max_lag_bytes: None,
            readiness_min_safe_wal_bytes: None,
            toast: ToastMode::List,
            toast_placeholder: "__danube_unchanged_toast".into(),
            signal_table: "public.danube_cdc_signals".into(),
            incremental_chunk_size: 1024,
        }
    }
}

/// Connection settings after applying `url` over the discrete fields.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database.
    pub database: String,
    /// User.
    pub user: String,
    /// Password (empty if none).
    pub password: Secret,
    /// TLS mode.
    pub tls: TlsMode,
    /// CA certificate for the verifying modes.
    pub tls_ca: Option<PathBuf>,
    /// With `verify_ca`: the names of the certificate the query connection accepted, the TLS
    /// server name of the replication connection (see [`crate::tls`]).
    pub verified_names: crate::tls::VerifiedNames,
}

impl PostgresCdcConfig {
    /// The effective connection settings.
    pub fn connection(&self) -> Result<Connection, ConfigError> {
        let mut conn = Connection {
            host: self.host.clone(),
            port: self.port,
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.clone().unwrap_or_else(|| Secret::new("")),
            tls: self.tls,
            tls_ca: self.tls_ca.clone(),
            verified_names: crate::tls::VerifiedNames::default(),
        };
        if let Some(url) = &self.url {
            let parsed: tokio_postgres::Config = url.expose().parse().map_err(|_| {
                ConfigError::invalid("connector.url", "must be postgres://user:password@host:port/database")
            })?;
            if let Some(tokio_postgres::config::Host::Tcp(host)) = parsed.get_hosts().first() {
                conn.host = host.clone();
            }
            if let Some(port) = parsed.get_ports().first() {
                conn.port = *port;
            }
            if let Some(db) = parsed.get_dbname() {
                conn.database = db.to_string();
            }
            if let Some(user) = parsed.get_user() {
                conn.user = user.to_string();
            }
            if let Some(password) = parsed.get_password() {
                conn.password = Secret::new(String::from_utf8_lossy(password).into_owned());
            }
            if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Require && conn.tls == TlsMode::Disable {
                conn.tls = TlsMode::Require;
            }
        }
        Ok(conn)
    }

    /// The topic for a table. The schema and table names come from the database, where
    /// a quoted identifier may hold any character (`"x/y"`, `"a.b"`): they are sanitized
    /// to what the broker accepts in a topic part (letters, digits, `_`, `-`; anything
    /// else becomes `_`) so they can neither add a level nor make every publish fail.
    pub fn topic_for(&self, schema: &str, table: &str) -> String {
        for_table(&self.topic, schema, table, |out, v| out.push_str(&sanitize_topic_part(v)))
    }

    /// The registry subject of a table's schema.
    pub fn subject_for(&self, schema: &str, table: &str) -> String {
        for_table(&self.schema_subject, schema, table, String::push_str)
    }

    /// The configured tables as `(schema, table)`.
    pub fn table_list(&self) -> Vec<(String, String)> {
        self.tables
            .iter()
            .map(|t| match t.split_once('.') {
                Some((s, n)) => (s.to_string(), n.to_string()),
                None => ("public".to_string(), t.clone()),
            })
            .collect()
    }

    /// The signal table as `(schema, table)`, `None` when signals are off.
    pub fn signal_table(&self) -> Option<(String, String)> {
        let name = self.signal_table.trim();
        (!name.is_empty()).then(|| crate::incremental::split_table(name))
    }
}

fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Validate for PostgresCdcConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let conn = self.connection()?;
        if conn.host.is_empty() {
            return Err(ConfigError::invalid("connector.host", "must not be empty"));
        }
        if conn.port == 0 {
            return Err(ConfigError::invalid("connector.port", "must be 1-65535"));
        }
        if conn.database.is_empty() {
            return Err(ConfigError::invalid("connector.database", "must not be empty"));
        }
        if conn.user.is_empty() {
            return Err(ConfigError::invalid("connector.user", "must not be empty"));
        }
        if !valid_identifier(&self.slot) {
            return Err(ConfigError::invalid("connector.slot", format!("`{}` must be 1-63 of [a-z0-9_]", self.slot)));
        }
        if !valid_identifier(&self.publication) {
            return Err(ConfigError::invalid(
                "connector.publication",
                format!("`{}` must be 1-63 of [a-z0-9_]", self.publication),
            ));
        }
        for (i, table) in self.tables.iter().enumerate() {
            let parts: Vec<&str> = table.split('.').collect();
            let ok = (1..=2).contains(&parts.len())
                && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'));
            if !ok {
                return Err(ConfigError::invalid(
                    format!("connector.tables[{i}]"),
                    format!("`{table}` must be `schema.table` or `table`"),
                ));
            }
        }
        self.topic.check("connector.topic")?;
        self.schema_subject.check("connector.schema_subject")?;
        let sample = self.topic_for("schema", "table");
        validate_topic("connector.topic", &sample)?;
        if !is_valid_topic(&sample) {
            return Err(ConfigError::invalid(
                "connector.topic",
                format!(
                    "`{}` renders `{sample}`: the broker accepts only letters, digits, `_` and `-` in the namespace \
                     and the topic name (e.g. /default/{{schema}}-{{table}})",
                    self.topic
                ),
            ));
        }
        if let Some(topic) = &self.transaction_topic {
            validate_topic("connector.transaction_topic", topic)?;
        }
        if matches!(self.tls, TlsMode::VerifyCa | TlsMode::VerifyFull) {
            if let Some(ca) = &self.tls_ca {
                if !ca.is_file() {
                    return Err(ConfigError::invalid("connector.tls_ca", format!("{} is not a file", ca.display())));
                }
            }
        }
        if self.schema != SchemaMode::None && self.subject_for("schema", "table").trim().is_empty() {
            return Err(ConfigError::invalid(
                "connector.schema_subject",
                "must not be empty (e.g. `{schema}.{table}-value`)",
            ));
        }
        if self.snapshot_chunk_size == 0 {
            return Err(ConfigError::invalid("connector.snapshot_chunk_size", "must be at least 1"));
        }
        if self.incremental_chunk_size == 0 {
            return Err(ConfigError::invalid("connector.incremental_chunk_size", "must be at least 1"));
        }
        if !self.signal_table.trim().is_empty() {
            let parts: Vec<&str> = self.signal_table.trim().split('.').collect();
            let ok = (1..=2).contains(&parts.len())
                && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'));
            if !ok {
                return Err(ConfigError::invalid(
                    "connector.signal_table",
                    format!("`{}` must be `schema.table` or `table` (or empty: no signals)", self.signal_table),
                ));
            }
        }
        if self.max_batch == 0 {
            return Err(ConfigError::invalid("connector.max_batch", "must be at least 1"));
        }
        if self.buffer == 0 {
            return Err(ConfigError::invalid("connector.buffer", "must be at least 1"));
        }
        if self.status_interval.is_zero() || self.heartbeat_interval.is_zero() {
            return Err(ConfigError::invalid("connector.status_interval", "intervals must be above zero"));
        }
        if self.slot_check_interval.is_zero() {
            return Err(ConfigError::invalid("connector.slot_check_interval", "must be above zero (e.g. `10s`)"));
        }
        if self.readiness_max_lag_bytes == Some(0) {
            return Err(ConfigError::invalid(
                "connector.readiness_max_lag_bytes",
                "must be at least 1 (leave it unset to keep lag out of readiness)",
            ));
        }
        if self.readiness_min_safe_wal_bytes == Some(0) {
            return Err(ConfigError::invalid(
                "connector.readiness_min_safe_wal_bytes",
                "must be at least 1 (leave it unset to keep safe_wal_size out of readiness)",
            ));
        }
        if self.toast == ToastMode::Placeholder && self.toast_placeholder.is_empty() {
            return Err(ConfigError::invalid(
                "connector.toast_placeholder",
                "must not be empty with toast = placeholder",
            ));
        }
        Ok(())
    }
}

/// `template` with `{schema}` and `{table}` filled in, each written by `write`; a template
/// that did not parse (refused by validation) is its text.
fn for_table(
    template: &TemplateText<TableFields>,
    schema: &str,
    table: &str,
    write: impl Fn(&mut String, &str),
) -> String {
    match template.template() {
        Some(template) => template.render_table(schema, table, write),
        None => template.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_overrides_discrete_fields() {
        let config = PostgresCdcConfig {
            url: Some(Secret::new("postgres://alice:s3cret@db.example:6543/shop")),
            ..Default::default()
        };
        let conn = config.connection().expect("parses");
        assert_eq!(
            (conn.host.as_str(), conn.port, conn.database.as_str(), conn.user.as_str()),
            ("db.example", 6543, "shop", "alice")
        );
        assert_eq!(conn.password.expose(), "s3cret");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: Vec<(PostgresCdcConfig, &str)> = vec![
            (PostgresCdcConfig { slot: "Bad-Slot".into(), ..Default::default() }, "connector.slot"),
            (PostgresCdcConfig { publication: String::new(), ..Default::default() }, "connector.publication"),
            (
                PostgresCdcConfig { tables: vec!["ok".into(), "a.b.c".into()], ..Default::default() },
                "connector.tables[1]",
            ),
            (PostgresCdcConfig { topic: "no-namespace".into(), ..Default::default() }, "connector.topic"),
            (PostgresCdcConfig { max_batch: 0, ..Default::default() }, "connector.max_batch"),
            (PostgresCdcConfig { incremental_chunk_size: 0, ..Default::default() }, "connector.incremental_chunk_size"),
            (PostgresCdcConfig { signal_table: "a.b.c".into(), ..Default::default() }, "connector.signal_table"),
            (PostgresCdcConfig { url: Some(Secret::new("not a url ::")), ..Default::default() }, "connector.url"),
            (
                PostgresCdcConfig { schema: SchemaMode::JsonSchema, schema_subject: " ".into(), ..Default::default() },
                "connector.schema_subject",
            ),
            (
                PostgresCdcConfig { slot_check_interval: Duration::ZERO, ..Default::default() },
                "connector.slot_check_interval",
            ),
            (
                PostgresCdcConfig { readiness_max_lag_bytes: Some(0), ..Default::default() },
                "connector.readiness_max_lag_bytes",
            ),
            (
                PostgresCdcConfig { readiness_min_safe_wal_bytes: Some(0), ..Default::default() },
                "connector.readiness_min_safe_wal_bytes",
            ),
            (
                PostgresCdcConfig {
                    toast: ToastMode::Placeholder,
                    toast_placeholder: String::new(),
                    ..Default::default()
                },
                "connector.toast_placeholder",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().expect_err("invalid");
            assert!(err.to_string().contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn names_from_the_database_are_sanitized_before_they_become_a_topic() {
        let config = PostgresCdcConfig::default();
        assert_eq!(config.topic_for("public", "x/y"), "/default/public-x_y", "a `/` cannot add a level");
        assert_eq!(config.topic_for("my.schema", "a b.c"), "/default/my_schema-a_b_c");
        assert_eq!(config.topic_for("public", "../../etc"), "/default/public-______etc");
        let dotted = PostgresCdcConfig { topic: "/default/{schema}.{table}".into(), ..Default::default() };
        let err = dotted.validate().expect_err("the broker refuses `.` in a topic");
        assert!(err.to_string().contains("connector.topic"), "{err}");
    }

    #[test]
    fn topic_template_expands_schema_and_table() {
        let config = PostgresCdcConfig::default();
        assert_eq!(config.topic_for("public", "users"), "/default/public-users");
        assert_eq!(config.subject_for("public", "a.b"), "public.a.b-value", "a subject is not sanitized");
        assert_eq!(config.table_list(), Vec::<(String, String)>::new());
        let unknown = PostgresCdcConfig { topic: "/default/{schema}-{tabel}".into(), ..Default::default() };
        let err = unknown.validate().expect_err("an unknown placeholder is refused").to_string();
        assert!(err.contains("connector.topic") && err.contains("{tabel}"), "{err}");
        let config = PostgresCdcConfig { tables: vec!["users".into(), "sales.orders".into()], ..Default::default() };
        assert_eq!(config.table_list()[0], ("public".into(), "users".into()));
        assert_eq!(config.table_list()[1], ("sales".into(), "orders".into()));
    }
}
