//! Server checks and the publication/slot lifecycle, over a regular connection.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::{info, warn};

use crate::config::{Connection, PostgresCdcConfig};
use crate::error::{query, CdcError};

/// Opens a regular (query) connection with ISO dates and UTC, driving it on a task.
pub async fn connect(conn: &Connection) -> Result<Client, CdcError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&conn.host)
        .port(conn.port)
        .dbname(&conn.database)
        .user(&conn.user)
        .application_name("danube-postgres-cdc")
        .options("-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c intervalstyle=iso_8601")
        .connect_timeout(Duration::from_secs(10));
    if !conn.password.expose().is_empty() {
        config.password(conn.password.expose());
    }
    let what = format!("connect to postgres at {}:{}/{}", conn.host, conn.port, conn.database);
    let client = match crate::tls::client_config(&conn.tls, &conn.verified_names)? {
        Some(tls) => {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) =
                config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await.map_err(query(what))?;
            tokio::spawn(drive(connection));
            client
        }
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(query(what))?;
            tokio::spawn(drive(connection));
            client
        }
    };
    Ok(client)
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(error) = connection.await {
        warn!(error = %error, "postgres query connection closed");
    }
}

/// The state of the configured slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Output plugin.
    pub plugin: String,
    /// PID of the session holding it, if active.
    pub active_pid: Option<i32>,
    /// Its confirmed flush LSN as text.
    pub confirmed_flush: Option<String>,
    /// `wal_status`: `reserved`, `extended`, `unreserved` or `lost` (invalidated).
    pub wal_status: Option<String>,
}

/// Checks `wal_level`, the replication privilege and the listed tables; creates the
/// publication when missing (and allowed).
pub async fn prepare(client: &Client, config: &PostgresCdcConfig) -> Result<(), CdcError> {
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.map_err(query("SHOW wal_level"))?.get(0);
    if wal_level != "logical" {
        return Err(CdcError::Setup(format!(
            "wal_level is `{wal_level}`, logical replication needs `wal_level = logical` in postgresql.conf (restart required)"
        )));
    }
    let row = client
        .query_one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(query("read role attributes"))?;
    if !row.get::<_, bool>(0) {
        return Err(CdcError::Setup(
            "the user lacks the REPLICATION privilege: ALTER ROLE <user> WITH REPLICATION".to_string(),
        ));
    }
    for (schema, table) in config.table_list() {
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2)",
                &[&schema, &table],
            )
            .await
            .map_err(query("look up table"))?
            .get(0);
        if !exists {
            return Err(CdcError::Setup(format!("table {schema}.{table} listed in connector.tables does not exist")));
        }
    }
    let exists: bool = client
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", &[&config.publication])
        .await
        .map_err(query("look up publication"))?
        .get(0);
    if !exists {
        if !config.create_publication {
            return Err(CdcError::Setup(format!(
                "publication {} does not exist and connector.create_publication is false",
                config.publication
            )));
        }
        let target = if config.tables.is_empty() {
            "ALL TABLES".to_string()
        } else {
            let list: Vec<String> =
                config.table_list().iter().map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t))).collect();
            format!("TABLE {}", list.join(", "))
        };
        let sql = format!("CREATE PUBLICATION {} FOR {target}", quote_ident(&config.publication));
        client.batch_execute(&sql).await.map_err(|source| match source.as_db_error() {
            Some(db) if db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
                CdcError::Setup(format!(
                    "cannot create publication {}: {} (create it as an owner of the tables or a superuser)",
                    config.publication,
                    db.message()
                ))
            }
            _ => CdcError::Query { what: format!("create publication {}", config.publication), source },
        })?;
        info!(publication = %config.publication, %target, "publication created");
    } else {
        add_missing_tables(client, config).await?;
    }
    Ok(())
}

/// Adds the configured tables the existing publication lacks (`ALTER PUBLICATION ... ADD
/// TABLE`), recording them in the same transaction as tables to snapshot (see
/// [`added_tables`]), so a crash before their snapshot is acknowledged redoes it. A
/// publication `FOR ALL TABLES` covers every table already.
pub async fn add_missing_tables(client: &Client, config: &PostgresCdcConfig) -> Result<(), CdcError> {
    if config.tables.is_empty() {
        return Ok(());
    }
    let all: bool = client
        .query_one("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&config.publication])
        .await
        .map_err(query("read publication"))?
        .get(0);
    if all {
        return Ok(());
    }
    let published = published_tables(client, &config.publication).await?;
    let missing: Vec<(String, String)> =
        config.table_list().into_iter().filter(|table| !published.contains(table)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t))).collect();
    let names: Vec<String> = missing.iter().map(|(s, t)| format!("{s}.{t}")).collect();
    let snapshot = config.snapshot != crate::config::SnapshotMode::Never;
    in_marker_transaction(client, config, |map| {
        if snapshot {
            let mut pending = added_from(map, &config.slot);
            for table in &missing {
                if !pending.contains(table) {
                    pending.push(table.clone());
                }
            }
            set_added(map, &config.slot, &pending);
        }
        Some(format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(&config.publication), list.join(", ")))
    })
    .await
    .map_err(|error| match error {
        CdcError::Query { source, .. } if source.as_db_error().is_some() => CdcError::Setup(format!(
            "cannot add {} to publication {}: {} (the connector user must own the publication and the tables, \
             or add them yourself: ALTER PUBLICATION {} ADD TABLE {})",
            names.join(", "),
            config.publication,
            source.as_db_error().map_or_else(String::new, |db| db.message().to_string()),
            config.publication,
            names.join(", ")
        )),
        other => other,
    })?;
    info!(publication = %config.publication, tables = %names.join(", "), snapshot, "tables added to the publication");
    Ok(())
}

/// Creates the signal table when missing and adds it to a table-list publication; false
/// (signals off, with a warning naming the reason) when `connector.signal_table` is empty or
/// the user may not do either.
pub async fn prepare_signal_table(client: &Client, config: &PostgresCdcConfig) -> Result<bool, CdcError> {
    let Some((schema, table)) = config.signal_table() else { return Ok(false) };
    let name = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
    let create = format!("CREATE TABLE IF NOT EXISTS {name} (id text PRIMARY KEY, type text NOT NULL, data jsonb)");
    if let Err(error) = client.batch_execute(&create).await {
        if error.as_db_error().is_none() {
            return Err(CdcError::Query { what: format!("create signal table {schema}.{table}"), source: error });
        }
        warn!(table = %format!("{schema}.{table}"), error = %danube_connect_core::error::error_chain(&error),
            "signals are off: the signal table could not be created (create it yourself: {create})");
        return Ok(false);
    }
    match add_to_publication(client, config, &schema, &table).await {
        Ok(_) => Ok(true),
        Err(CdcError::Query { source, .. }) if source.as_db_error().is_some() => {
            warn!(table = %format!("{schema}.{table}"), publication = %config.publication,
                error = %danube_connect_core::error::error_chain(&source),
                "signals are off: the signal table could not be added to the publication");
            Ok(false)
        }
        Err(other) => Err(other),
    }
}

/// Adds a table to the publication unless it covers it already (`FOR ALL TABLES`, or listed);
/// true when it was added.
pub async fn add_to_publication(
    client: &Client,
    config: &PostgresCdcConfig,
    schema: &str,
    table: &str,
) -> Result<bool, CdcError> {
    let all: bool = client
        .query_one("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&config.publication])
        .await
        .map_err(query("read publication"))?
        .get(0);
    if all || published_tables(client, &config.publication).await?.contains(&(schema.to_string(), table.to_string())) {
        return Ok(false);
    }
    let sql = format!(
        "ALTER PUBLICATION {} ADD TABLE {}.{}",
        quote_ident(&config.publication),
        quote_ident(schema),
        quote_ident(table)
    );
    client.batch_execute(&sql).await.map_err(query(sql.clone()))?;
    info!(publication = %config.publication, table = %format!("{schema}.{table}"), "table added to the publication");
    Ok(true)
}

/// Waits (at most `limit`) until every transaction running now has ended: a transaction whose
/// commit was written just before a publication change may still be invisible for a moment,
/// and its rows would be in neither the stream nor a snapshot read right now.
pub async fn wait_running_transactions(client: &Client, limit: Duration) -> Result<(), CdcError> {
    let horizon: String = client
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .await
        .map_err(query("read the transaction horizon"))?
        .get(0);
    let started = std::time::Instant::now();
    loop {
        let ended: bool = client
            .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::text::xid8", &[&horizon])
            .await
            .map_err(query("read the oldest running transaction"))?
            .get(0);
        if ended {
            return Ok(());
        }
        if started.elapsed() >= limit {
            warn!(waited = ?limit, "transactions older than the publication change are still running; snapshotting anyway");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the table exists, and its primary-key columns.
pub async fn table_key(client: &Client, schema: &str, table: &str) -> Result<Option<(u32, Vec<String>)>, CdcError> {
    let row = client
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await
        .map_err(query("look up table"))?;
    let Some(row) = row else { return Ok(None) };
    let oid: u32 = row.get(0);
    Ok(Some((oid, primary_key(client, oid).await?)))
}

/// Id of this slot's progress row in the signal table.
fn progress_id(config: &PostgresCdcConfig) -> String {
    format!("progress:{}", config.slot)
}

/// The incremental-snapshot progress of this slot (empty when none was recorded).
pub async fn read_plan(client: &Client, config: &PostgresCdcConfig) -> Result<crate::incremental::Plan, CdcError> {
    let Some((schema, table)) = config.signal_table() else { return Ok(Default::default()) };
    let row = client
        .query_opt(
            &format!("SELECT data::text FROM {}.{} WHERE id = $1", quote_ident(&schema), quote_ident(&table)),
            &[&progress_id(config)],
        )
        .await
        .map_err(query("read the incremental snapshot progress"))?;
    let text: Option<String> = row.and_then(|r| r.get(0));
    match text.map(|t| serde_json::from_str(&t)) {
        None => Ok(Default::default()),
        Some(Ok(plan)) => Ok(plan),
        Some(Err(error)) => {
            warn!(error = %error, "unreadable incremental snapshot progress; starting without it");
            Ok(Default::default())
        }
    }
}

/// Records the incremental-snapshot progress of this slot.
pub async fn write_plan(
    client: &Client,
    config: &PostgresCdcConfig,
    plan: &crate::incremental::Plan,
) -> Result<(), CdcError> {
    let Some((schema, table)) = config.signal_table() else { return Ok(()) };
    let data = serde_json::to_string(plan).map_err(CdcError::Serialize)?;
    client
        .execute(
            &format!(
                "INSERT INTO {}.{} (id, type, data) VALUES ($1, $2, $3::text::jsonb) \
                 ON CONFLICT (id) DO UPDATE SET type = EXCLUDED.type, data = EXCLUDED.data",
                quote_ident(&schema),
                quote_ident(&table)
            ),
            &[&progress_id(config), &crate::incremental::PROGRESS_TYPE, &data],
        )
        .await
        .map_err(query("record the incremental snapshot progress"))?;
    Ok(())
}

/// Key of a slot's list of added tables whose snapshot is not acknowledged yet.
fn added_key(slot: &str) -> String {
    format!("{slot}:added")
}

fn added_from(map: &serde_json::Map<String, serde_json::Value>, slot: &str) -> Vec<(String, String)> {
    map.get(&added_key(slot))
        .and_then(|v| v.as_array())
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str())
                .filter_map(|n| n.split_once('.'))
                .map(|(s, t)| (s.to_string(), t.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn set_added(map: &mut serde_json::Map<String, serde_json::Value>, slot: &str, tables: &[(String, String)]) {
    if tables.is_empty() {
        map.remove(&added_key(slot));
    } else {
        let names: Vec<serde_json::Value> =
            tables.iter().map(|(s, t)| serde_json::Value::from(format!("{s}.{t}"))).collect();
        map.insert(added_key(slot), serde_json::Value::Array(names));
    }
}

/// Tables added to the publication for this slot whose snapshot is not acknowledged yet
/// (kept next to the snapshot marker in the publication's comment).
pub async fn added_tables(client: &Client, config: &PostgresCdcConfig) -> Result<Vec<(String, String)>, CdcError> {
    let comment = publication_comment(client, &config.publication).await?;
    Ok(comment.as_deref().and_then(parse_markers).map(|map| added_from(&map, &config.slot)).unwrap_or_default())
}

/// Forgets the added tables whose snapshot was acknowledged (or covered by a new slot's
/// initial snapshot).
pub async fn clear_added_tables(
    client: &Client,
    config: &PostgresCdcConfig,
    done: &[(String, String)],
) -> Result<(), CdcError> {
    in_marker_transaction(client, config, |map| {
        let pending: Vec<(String, String)> =
            added_from(map, &config.slot).into_iter().filter(|t| !done.contains(t)).collect();
        set_added(map, &config.slot, &pending);
        None
    })
    .await
}

/// The slot's state, or `None` when it does not exist. A slot with another plugin, or one
/// PostgreSQL invalidated ([`CdcError::SlotLost`]), is an error.
pub async fn slot(client: &Client, config: &PostgresCdcConfig) -> Result<Option<SlotInfo>, CdcError> {
    let row = client
        .query_opt(
            "SELECT plugin, active_pid, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot],
        )
        .await
        .map_err(query("look up replication slot"))?;
    let Some(row) = row else { return Ok(None) };
    let info = SlotInfo {
        plugin: row.get::<_, Option<String>>(0).unwrap_or_default(),
        active_pid: row.get(1),
        confirmed_flush: row.get(2),
        wal_status: row.get(3),
    };
    if info.wal_status.as_deref() == Some("lost") {
        return Err(CdcError::SlotLost {
            slot: config.slot.clone(),
            confirmed: info.confirmed_flush.clone().unwrap_or_else(|| "unknown".into()),
        });
    }
    if info.plugin != "pgoutput" {
        return Err(CdcError::Setup(format!(
            "replication slot {} uses plugin `{}`, not pgoutput",
            config.slot, info.plugin
        )));
    }
    Ok(Some(info))
}

/// Waits until nobody holds the slot (a crashed predecessor's session ends within seconds);
/// an error naming the holder after `wait`.
pub async fn wait_slot_free(client: &Client, config: &PostgresCdcConfig, wait: Duration) -> Result<(), CdcError> {
    let started = std::time::Instant::now();
    loop {
        match slot(client, config).await? {
            Some(SlotInfo { active_pid: Some(pid), .. }) => {
                if started.elapsed() >= wait {
                    return Err(CdcError::Setup(format!(
                        "replication slot {} is active in another session (pid {pid}): another connector instance uses it",
                        config.slot
                    )));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => return Ok(()),
        }
    }
}

/// Drops the slot (used to restart an interrupted initial snapshot).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), CdcError> {
    client.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.map_err(query("drop replication slot"))?;
    Ok(())
}

/// The tables the publication covers, as `(schema, table)`.
pub async fn published_tables(client: &Client, publication: &str) -> Result<Vec<(String, String)>, CdcError> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(query("list publication tables"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Primary-key column names of a relation (empty without a primary key).
pub async fn primary_key(client: &Client, oid: u32) -> Result<Vec<String>, CdcError> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(query("look up primary key"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Element types of the array types among `oids` (`array type -> element type`), from
/// `pg_type.typelem`; non-array types are left out.
pub async fn array_elements(client: &Client, oids: &[u32]) -> Result<std::collections::HashMap<u32, u32>, CdcError> {
    if oids.is_empty() {
        return Ok(std::collections::HashMap::new());
    }
    let oids = oids.to_vec();
    let rows = client
        .query("SELECT oid, typelem FROM pg_type WHERE oid = ANY($1) AND typcategory = 'A' AND typelem <> 0", &[&oids])
        .await
        .map_err(query("look up array element types"))?;
    Ok(rows.iter().map(|r| (r.get::<_, u32>(0), r.get::<_, u32>(1))).collect())
}

/// Progress of the initial snapshot of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// Written before the slot is created: the snapshot has not been fully acknowledged yet.
    Pending,
    /// Every snapshot row was acknowledged by Danube.
    Done,
}

impl SnapshotState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "done" => Some(Self::Done),
            _ => None,
        }
    }
}

/// Prefix of the publication comment that holds the snapshot markers.
const MARKER_PREFIX: &str = "danube-cdc snapshot ";

/// Parses the publication comment into `slot -> state` (the JSON map form, or the older
/// single-slot `<slot>=<state>` form). A comment that is not ours yields `None`.
fn parse_markers(comment: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let body = comment.strip_prefix(MARKER_PREFIX)?;
    if body.starts_with('{') {
        return serde_json::from_str(body).ok();
    }
    let (slot, state) = body.split_once('=')?;
    let mut map = serde_json::Map::new();
    map.insert(slot.to_string(), serde_json::Value::from(state));
    Some(map)
}

async fn publication_comment(client: &Client, publication: &str) -> Result<Option<String>, CdcError> {
    let row = client
        .query_opt(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(query("read publication comment"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Reads this slot's snapshot-progress marker, kept in the publication's comment as
/// `danube-cdc snapshot {"<slot>":"pending"|"done",...}` (one entry per slot, so several
/// connectors can share a publication).
pub async fn snapshot_marker(client: &Client, config: &PostgresCdcConfig) -> Result<Option<SnapshotState>, CdcError> {
    let comment = publication_comment(client, &config.publication).await?;
    Ok(comment
        .as_deref()
        .and_then(parse_markers)
        .and_then(|map| map.get(&config.slot).and_then(|v| v.as_str()).and_then(SnapshotState::parse)))
}

/// Writes this slot's snapshot-progress marker, leaving other slots' entries in place
/// (read-modify-write under an advisory lock). A failure is an error: without the marker an
/// interrupted snapshot could not be detected.
pub async fn set_snapshot_marker(
    client: &Client,
    config: &PostgresCdcConfig,
    state: SnapshotState,
) -> Result<(), CdcError> {
    client.batch_execute("BEGIN").await.map_err(query("begin snapshot marker update"))?;
    let result = write_marker(client, config, state).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = client.batch_execute(end).await.map_err(query("end snapshot marker update"));
    result.and(ended).map_err(|error| match error {
        CdcError::Query { source, .. } if source.as_db_error().is_some() => CdcError::Setup(format!(
            "cannot record the snapshot progress of slot {} in the comment of publication {}: {} (the connector user must own the publication; or set connector.snapshot = never)",
            config.slot,
            config.publication,
            source.as_db_error().map_or_else(String::new, |db| db.message().to_string())
        )),
        other => other,
    })
}

async fn write_marker(client: &Client, config: &PostgresCdcConfig, state: SnapshotState) -> Result<(), CdcError> {
    write_markers(client, config, |map| {
        map.insert(config.slot.clone(), serde_json::Value::from(state.as_str()));
        None
    })
    .await?;
    info!(slot = %config.slot, state = state.as_str(), "snapshot progress recorded");
    Ok(())
}

/// Runs [`write_markers`] in its own transaction.
async fn in_marker_transaction(
    client: &Client,
    config: &PostgresCdcConfig,
    change: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>) -> Option<String>,
) -> Result<(), CdcError> {
    client.batch_execute("BEGIN").await.map_err(query("begin publication comment update"))?;
    let result = write_markers(client, config, change).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = client.batch_execute(end).await.map_err(query("end publication comment update"));
    result.and(ended)
}

/// Read-modify-write of the markers in the publication's comment, inside the caller's
/// transaction, under an advisory lock; `change` edits the map and may return one more
/// statement to run in the same transaction.
async fn write_markers(
    client: &Client,
    config: &PostgresCdcConfig,
    change: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>) -> Option<String>,
) -> Result<(), CdcError> {
    client
        .execute("SELECT pg_advisory_xact_lock(hashtext('danube-cdc snapshot marker'))", &[])
        .await
        .map_err(query("lock snapshot marker"))?;
    let comment = publication_comment(client, &config.publication).await?;
    let mut map = match comment.as_deref().map(|c| (c, parse_markers(c))) {
        Some((_, Some(map))) => map,
        Some((other, None)) if !other.is_empty() => {
            warn!(publication = %config.publication, comment = %other, "replacing a publication comment that is not a danube-cdc snapshot marker");
            serde_json::Map::new()
        }
        _ => serde_json::Map::new(),
    };
    let statement = change(&mut map);
    if let Some(statement) = statement {
        client.batch_execute(&statement).await.map_err(query(statement.clone()))?;
    }
    let text = format!("{MARKER_PREFIX}{}", serde_json::Value::Object(map));
    let sql = format!("COMMENT ON PUBLICATION {} IS '{}'", quote_ident(&config.publication), text.replace('\'', "''"));
    client.batch_execute(&sql).await.map_err(query("write snapshot marker"))?;
    Ok(())
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_parse_in_both_forms() {
        let map = parse_markers(r#"danube-cdc snapshot {"a":"pending","b":"done"}"#).expect("ours");
        assert_eq!(map.get("a").and_then(|v| v.as_str()), Some("pending"));
        assert_eq!(map.get("b").and_then(|v| v.as_str()), Some("done"));
        let legacy = parse_markers("danube-cdc snapshot s1=done").expect("legacy form");
        assert_eq!(legacy.get("s1").and_then(|v| v.as_str()), Some("done"));
        assert!(parse_markers("owned by the billing team").is_none());
        assert!(parse_markers("danube-cdc snapshot {broken").is_none());
    }
}
