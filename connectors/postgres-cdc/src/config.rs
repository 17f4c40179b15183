//! The `[connector]` section of the PostgreSQL CDC connector (env prefix `POSTGRES_CDC_`).

use std::path::PathBuf;
use std::time::Duration;

use danube_connect_common::tls::ClientTls;
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
    /// TLS, certificate checked against `tls.ca` (or the built-in web roots without it).
    VerifyCa,
    /// TLS, certificate and host name checked.
    VerifyFull,
}

/// `connector.tls`: the mode (libpq's `sslmode`) beside the shared client TLS settings
/// (`ca`, `builtin_roots`, `client_cert`, `client_key`), e.g.
/// `tls = { mode = "verify_full", ca = "/etc/ssl/pg-ca.pem" }`. The old form, a plain string
/// (`tls = "verify_full"`), is the mode alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PostgresTls {
    /// `disable`, `require`, `verify_ca` or `verify_full`.
    pub mode: TlsMode,
    /// Roots and client identity (mutual TLS), as for every client connection.
    #[serde(flatten)]
    pub client: ClientTls,
}

impl<'de> Deserialize<'de> for PostgresTls {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(default)]
            mode: TlsMode,
            #[serde(default, alias = "ca_file")]
            ca: Option<PathBuf>,
            #[serde(default)]
            builtin_roots: bool,
            #[serde(default)]
            ca_only: Option<bool>,
            #[serde(default)]
            client_cert: Option<PathBuf>,
            #[serde(default)]
            client_key: Option<PathBuf>,
        }

        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PostgresTls;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mode (`disable`, `require`, `verify_ca`, `verify_full`) or a table { mode, ca, ... }")
            }

            fn visit_str<E: serde::de::Error>(self, mode: &str) -> Result<PostgresTls, E> {
                let mode = TlsMode::deserialize(serde::de::value::StrDeserializer::<E>::new(mode))?;
                Ok(PostgresTls { mode, client: ClientTls::default() })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<PostgresTls, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                let client = ClientTls {
                    ca: t.ca,
                    builtin_roots: t.builtin_roots,
                    ca_only: t.ca_only,
                    client_cert: t.client_cert,
                    client_key: t.client_key,
                };
                Ok(PostgresTls { mode: t.mode, client })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl PostgresTls {
    /// Checks the settings and loads every file once, so a bad one fails `--check` with the
    /// field and the file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tls = &self.client;
        self.client.validate("connector.tls").map_err(|e| ConfigError::invalid(e.field.clone(), e.reason()))?;
        if tls.ca.is_some() && tls.trusts_builtin_roots() {
            let field = if tls.builtin_roots { "connector.tls.builtin_roots" } else { "connector.tls.ca_only" };
            return Err(ConfigError::invalid(
                field,
                "the replication connection (pgwire-replication 0.5) trusts either `ca` or the built-in roots, \
                 not both; leave `ca` out to trust the built-in roots",
            ));
        }
        if self.mode == TlsMode::Disable && tls.client_cert.is_some() {
            return Err(ConfigError::invalid(
                "connector.tls.client_cert",
                "a client certificate needs TLS: set `connector.tls.mode` (e.g. `verify_full`)",
            ));
        }
        Ok(())
    }
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
    /// TLS of both connections: `{ mode, ca, builtin_roots, client_cert, client_key }`
    /// (see [`PostgresTls`]); a plain string is the mode alone (the old form).
    pub tls: PostgresTls,
    /// Old spelling of `tls.ca` (`POSTGRES_CDC_TLS_CA`).
    #[serde(skip_serializing_if = "Option::is_none")]
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
            tls: PostgresTls::default(),
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
    /// TLS (the old `tls_ca` taken into `tls.client.ca`).
    pub tls: PostgresTls,
    /// With `verify_ca`: the names of the certificate the query connection accepted, the TLS
    /// server name of the replication connection (see [`crate::tls`]).
    pub verified_names: crate::tls::VerifiedNames,
}

impl PostgresCdcConfig {
    /// The TLS settings with the old `tls_ca` taken into `tls.client.ca`; both set is an
    /// error naming the field.
    pub fn tls(&self) -> Result<PostgresTls, ConfigError> {
        let mut tls = self.tls.clone();
        if let Some(ca) = &self.tls_ca {
            if tls.client.ca.is_some() {
                return Err(ConfigError::invalid(
                    "connector.tls.ca",
                    "set twice: also as `connector.tls_ca`, its old spelling; keep one",
                ));
            }
            tls.client.ca = Some(ca.clone());
        }
        Ok(tls)
    }

    /// The effective connection settings.
    pub fn connection(&self) -> Result<Connection, ConfigError> {
        let mut conn = Connection {
            host: self.host.clone(),
            port: self.port,
            database: self.database.clone(),
            user: self.user.clone(),
            password: self.password.clone().unwrap_or_else(|| Secret::new("")),
            tls: self.tls()?,
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
            if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Require && conn.tls.mode == TlsMode::Disable {
                conn.tls.mode = TlsMode::Require;
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
        conn.tls.validate()?;
        // A table that sets files but no mode (e.g. `POSTGRES_CDC_TLS__CA` over a file's
        // `tls = "verify_full"`, which the table replaces) would silently mean `disable`.
        if self.tls.mode == TlsMode::Disable && self.tls.client.ca.is_some() {
            return Err(ConfigError::invalid(
                "connector.tls.mode",
                "`disable` with `connector.tls.ca` set: give the mode in the same table (e.g. `verify_full`)",
            ));
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

    /// Loads `[connector]` from a TOML file (no environment layer applies: the prefix is unused).
    fn load_tls(connector: &str) -> Result<PostgresTls, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, format!("[connector]\n{connector}")).expect("write");
        let config = danube_connect_core::ConnectorConfig::<PostgresCdcConfig>::load(Some(&file), "PG_TLS_UNIT_NONE")?;
        config.connector.tls()
    }

    fn pem_files(dir: &std::path::Path) -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).expect("write");
        std::fs::write(&key, made.key_pair.serialize_pem()).expect("write");
        (cert.display().to_string(), key.display().to_string())
    }

    fn refused(result: Result<PostgresTls, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Invalid { field, message }) => (field, message),
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn tls_takes_the_old_string_and_tls_ca_and_the_new_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pem_files(dir.path());

        let old = load_tls(&format!("tls = \"verify_full\"\ntls_ca = {cert:?}\n")).expect("old form");
        assert_eq!(old.mode, TlsMode::VerifyFull);
        assert_eq!(old.client.ca.as_deref(), Some(std::path::Path::new(&cert)));

        let new = load_tls(&format!(
            "tls = {{ mode = \"verify_ca\", ca = {cert:?}, client_cert = {cert:?}, client_key = {key:?} }}\n"
        ))
        .expect("new form");
        assert_eq!(new.mode, TlsMode::VerifyCa);
        assert_eq!(new.client.client_key.as_deref(), Some(std::path::Path::new(&key)));
        assert!(new.client.identity("connector.tls").expect("identity").is_some());

        let mode_only = load_tls("[connector.tls]\nmode = \"require\"\n").expect("table without files");
        assert_eq!(mode_only, PostgresTls { mode: TlsMode::Require, client: ClientTls::default() });
        assert_eq!(load_tls("").expect("default").mode, TlsMode::Disable);
    }

    #[test]
    fn tls_refusals_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = pem_files(dir.path());

        let (field, message) =
            refused(load_tls(&format!("tls_ca = {cert:?}\ntls = {{ mode = \"verify_full\", ca = {cert:?} }}\n")));
        assert_eq!(field, "connector.tls.ca");
        assert!(message.contains("connector.tls_ca"), "{message}");

        let (field, message) =
            refused(load_tls(&format!("tls = {{ mode = \"verify_full\", ca = {cert:?}, builtin_roots = true }}\n")));
        assert_eq!(field, "connector.tls.builtin_roots");
        assert!(message.contains("pgwire-replication"), "{message}");

        let half = format!("tls = {{ mode = \"verify_full\", client_cert = {cert:?} }}\n");
        assert_eq!(refused(load_tls(&half)).0, "connector.tls.client_cert");

        let plain = format!("tls = {{ client_cert = {cert:?}, client_key = {key:?} }}\n");
        assert_eq!(refused(load_tls(&plain)).0, "connector.tls.client_cert");
        let no_mode = format!("[connector.tls]\nca = {cert:?}\n");
        assert_eq!(refused(load_tls(&no_mode)).0, "connector.tls.mode");

        // The key given as the CA: the shared loader names the field and the file.
        let (field, message) = refused(load_tls(&format!("tls = \"verify_ca\"\ntls_ca = {key:?}\n")));
        assert_eq!(field, "connector.tls.ca");
        assert!(message.contains("key.pem"), "{message}");

        let unknown = load_tls("tls = { mode = \"verify_full\", sslrootcert = \"x\" }\n");
        let chain = danube_connect_core::error::error_chain(&unknown.expect_err("unknown key"));
        assert!(chain.contains("connector.tls") && chain.contains("sslrootcert"), "{chain}");
        let (field, _) = refused(load_tls("tls = \"prefer\"\n"));
        assert_eq!(field, "connector.tls");
    }
}
