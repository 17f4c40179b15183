//! The replication task: snapshot, then the `pgoutput` stream, decoded into records; the
//! acknowledged position goes back to PostgreSQL as the confirmed flush LSN.
//!
//! Every record gets a sequence number as its offset. A *mark* `(seq, lsn)` says: once every
//! record up to `seq` is acked by Danube, PostgreSQL may forget the WAL before `lsn`. Marks are
//! pushed at each transaction's commit (its end LSN), at keepalives and heartbeats between
//! transactions (the server's position), so the slot advances only to commits whose every
//! record is in Danube, and advances while the captured tables are idle.

use danube_connect_core::retry::Backoff;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use danube_connect_core::{ConnectorError, SourceOffset, SourceRecord};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::change::{format_lsn, pg_time_iso, Change, Table, ToastFill, TxnInfo};
use crate::config::{Connection, PostgresCdcConfig, SnapshotMode, TlsMode};
use crate::error::{query, replication, CdcError};
use crate::marks::Marks;
use crate::metrics::CdcMetrics;
use crate::pgoutput::{self, Column, Message, Relation, TupleValue};
use crate::schema::TableSchemas;
use crate::setup::{self, SnapshotState};

/// What the task hands to `poll`.
#[derive(Debug)]
pub(crate) enum Item {
    /// A record to publish.
    Record(SourceRecord),
    /// The stream failed for good.
    Failed(ConnectorError),
}

/// State shared with the connector (health, tests).
#[derive(Debug, Default)]
pub struct Progress {
    /// The LSN last confirmed to PostgreSQL.
    pub confirmed: AtomicU64,
    /// Whether the replication stream is running.
    pub streaming: AtomicBool,
    /// Whether the task ended normally (snapshot-only mode finished, or shutdown).
    pub finished: AtomicBool,
}

/// How a session ended without error.
enum Ended {
    Shutdown,
    SnapshotOnly,
}

/// The replication task.
pub(crate) struct Stream {
    config: Arc<PostgresCdcConfig>,
    conn: Connection,
    tx: mpsc::Sender<Item>,
    acked: watch::Receiver<u64>,
    stop: CancellationToken,
    progress: Arc<Progress>,
    next_seq: u64,
    last_emitted: u64,
    marks: Marks,
    tables: HashMap<u32, Table>,
    txn: Option<TxnInfo>,
    txn_seq: u64,
    schemas: TableSchemas,
    metrics: CdcMetrics,
}

impl Stream {
    pub(crate) fn new(
        config: Arc<PostgresCdcConfig>,
        conn: Connection,
        tx: mpsc::Sender<Item>,
        acked: watch::Receiver<u64>,
        stop: CancellationToken,
        progress: Arc<Progress>,
    ) -> Self {
        Self {
            conn,
            tx,
            acked,
            stop,
            progress,
            next_seq: 1,
            last_emitted: 0,
            marks: Marks::default(),
            tables: HashMap::new(),
            txn: None,
            txn_seq: 0,
            schemas: TableSchemas::default(),
            metrics: CdcMetrics::unregistered(&config.slot),
            config,
        }
    }

    /// Counts records and snapshot progress in `metrics` (registered by the source).
    pub(crate) fn with_metrics(mut self, metrics: CdcMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Publishes each table's records with its registered schema (`connector.schema`).
    pub(crate) fn with_schemas(mut self, schemas: TableSchemas) -> Self {
        self.schemas = schemas;
        self
    }

    /// Runs sessions until shutdown, reconnecting after transient failures.
    pub(crate) async fn run(mut self) {
        let mut backoff = Backoff::between(Duration::from_millis(250), Duration::from_secs(10));
        loop {
            let result = self.session().await;
            self.progress.streaming.store(false, Ordering::Release);
            match result {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::SnapshotOnly) => {
                    info!("initial snapshot published; snapshot = initial_only, not streaming");
                    break;
                }
                Err(error) if error.is_transient() && !self.stop.is_cancelled() => {
                    let delay = backoff.next_delay();
                    warn!(error = %danube_connect_core::error::error_chain(&error), retry_in = ?delay, "replication session failed, reconnecting");
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => {
                    let _ = self.tx.send(Item::Failed(error.into_connector())).await;
                    return;
                }
            }
        }
        self.progress.finished.store(true, Ordering::Release);
    }

    async fn session(&mut self) -> Result<Ended, CdcError> {
        self.tables.clear();
        self.txn = None;
        let client = setup::connect(&self.conn).await?;
        setup::prepare(&client, &self.config).await?;
        setup::wait_slot_free(&client, &self.config, self.config.slot_wait).await?;
        let mut slot = setup::slot(&client, &self.config).await?;
        let snapshotting = self.config.snapshot != SnapshotMode::Never;
        let marker = if snapshotting { setup::snapshot_marker(&client, &self.config).await? } else { None };
        if slot.is_some() && marker == Some(SnapshotState::Pending) {
            // "pending" is written before the slot is created and replaced by "done" only
            // once every snapshot row is acknowledged: the snapshot must be read again, in
            // the snapshot of a new slot.
            if !self.config.create_slot {
                return Err(CdcError::Setup(format!(
                    "the initial snapshot on replication slot {slot} was interrupted and must be redone on a new slot, \
                     but connector.create_slot is false: set it to true (the slot is dropped and created again), \
                     or set connector.snapshot = never to stream from the slot without the pre-existing rows",
                    slot = self.config.slot
                )));
            }
            warn!(slot = %self.config.slot, "the initial snapshot was interrupted; dropping the slot and starting it again");
            setup::drop_slot(&client, &self.config.slot).await?;
            slot = None;
        }
        let initial_only = self.config.snapshot == SnapshotMode::InitialOnly;
        if initial_only && slot.is_none() && marker == Some(SnapshotState::Done) {
            info!(slot = %self.config.slot, "the initial snapshot of this slot was already published; nothing to do");
            return Ok(Ended::SnapshotOnly);
        }
        // Tables added to the publication of an existing slot: read before the stream starts.
        if slot.is_some() && snapshotting && !initial_only && !self.snapshot_added(&client).await? {
            return Ok(Ended::Shutdown);
        }
        let mut repl = ReplicationClient::connect_gated(self.replication_config())
            .await
            .map_err(replication("connect for replication"))?;
        let mut exported = None;
        if slot.is_none() {
            if !self.config.create_slot {
                return Err(CdcError::Setup(format!(
                    "replication slot {} does not exist and connector.create_slot is false",
                    self.config.slot
                )));
            }
            if snapshotting {
                // Before the slot exists: a crash between the two can only leave "pending"
                // without a slot (a new slot and snapshot follow), never a slot without it.
                setup::set_snapshot_marker(&client, &self.config, SnapshotState::Pending).await?;
            }
            let export = if snapshotting { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" };
            // initial_only never streams: a temporary slot disappears with the session, so
            // it cannot retain WAL after the snapshot (or after a crash).
            let temporary = if initial_only { " TEMPORARY" } else { "" };
            let rows = repl
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {}{temporary} LOGICAL pgoutput {export}",
                    self.config.slot
                ))
                .await
                .map_err(replication(format!("create replication slot {}", self.config.slot)))?;
            let text = |i: usize| {
                rows.first()
                    .and_then(|r| r.get(i))
                    .and_then(Option::as_ref)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            };
            let point = text(1).and_then(|t| Lsn::parse(&t).ok()).map_or(0, Lsn::as_u64);
            info!(slot = %self.config.slot, consistent_point = %format_lsn(point), temporary = initial_only, "replication slot created");
            if let Some(name) = text(2).filter(|n| !n.is_empty()) {
                exported = Some((name, point));
            }
        }
        if let Some((snapshot, point)) = exported {
            let Some(last) = self.snapshot(&client, &snapshot, point).await? else { return Ok(Ended::Shutdown) };
            // The stream starts only once every snapshot row is in Danube, so an interrupted
            // snapshot is redone from scratch rather than left half-published.
            let mut acked = self.acked.clone();
            tokio::select! {
                result = acked.wait_for(|a| *a >= last) => {
                    if result.is_err() {
                        return Ok(Ended::Shutdown);
                    }
                }
                _ = self.stop.cancelled() => return Ok(Ended::Shutdown),
            }
            setup::set_snapshot_marker(&client, &self.config, SnapshotState::Done).await?;
            info!(rows = last, "initial snapshot acknowledged by Danube");
            // The new slot's snapshot covered every published table, added ones included.
            let added = setup::added_tables(&client, &self.config).await?;
            if !added.is_empty() {
                setup::clear_added_tables(&client, &self.config, &added).await?;
            }
        }
        if initial_only {
            if slot.is_none() {
                repl.simple_query(&format!("DROP_REPLICATION_SLOT {}", self.config.slot))
                    .await
                    .map_err(replication(format!("drop temporary replication slot {}", self.config.slot)))?;
                info!(slot = %self.config.slot, "temporary replication slot dropped");
            } else {
                warn!(slot = %self.config.slot, "snapshot = initial_only with an existing slot: the slot is left in place and retains WAL until it is dropped");
            }
            return Ok(Ended::SnapshotOnly);
        }
        repl.start().await.map_err(replication("START_REPLICATION"))?;
        repl.wait_started().await.map_err(replication(format!("start replication on slot {}", self.config.slot)))?;
        self.progress.streaming.store(true, Ordering::Release);
        info!(slot = %self.config.slot, publication = %self.config.publication, "streaming changes");
        let result = self.stream(&client, &mut repl).await;
        if matches!(result, Ok(Ended::Shutdown)) {
            self.finish(&client, &mut repl).await;
        }
        result
    }

    async fn stream(&mut self, client: &Client, repl: &mut ReplicationClient) -> Result<Ended, CdcError> {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(Ended::Shutdown),
                changed = self.acked.changed() => {
                    if changed.is_err() {
                        return Ok(Ended::Shutdown);
                    }
                    self.apply_acks(repl);
                }
                _ = heartbeat.tick() => {
                    // A small non-transactional WAL record: its position comes back through the
                    // stream and lets the slot advance while captured tables are idle.
                    if let Err(error) = client.execute("SELECT pg_logical_emit_message(false, 'danube-cdc-heartbeat', '')", &[]).await {
                        debug!(error = %error, "heartbeat message failed");
                    }
                }
                event = repl.recv() => {
                    match event {
                        Ok(Some(event)) => {
                            if !self.handle(client, event).await? {
                                return Ok(Ended::Shutdown);
                            }
                            if !self.marks.is_empty() {
                                self.apply_acks(repl);
                            }
                        }
                        Ok(None) => {
                            return Err(CdcError::Replication {
                                what: "replication stream ended".into(),
                                source: pgwire_replication::PgWireError::Task("stream closed by the server".into()),
                            })
                        }
                        Err(source) => return Err(CdcError::Replication { what: "replication stream".into(), source }),
                    }
                }
            }
        }
    }

    /// Handles one event; false when shutdown interrupted a send.
    async fn handle(&mut self, client: &Client, event: ReplicationEvent) -> Result<bool, CdcError> {
        match event {
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                self.txn = Some(TxnInfo { xid, commit_lsn: final_lsn.as_u64(), commit_time: commit_time_micros });
                self.txn_seq = 0;
                if let Some(topic) = self.config.transaction_topic.clone() {
                    let record = boundary(&topic, "BEGIN", xid, final_lsn.as_u64(), commit_time_micros, None)?;
                    return Ok(self.emit(record).await);
                }
            }
            ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                let txn = self.txn.take();
                self.metrics.commit_seen(commit_time_micros);
                if let Some(topic) = self.config.transaction_topic.clone() {
                    let xid = txn.as_ref().map_or(0, |t| t.xid);
                    let record = boundary(&topic, "COMMIT", xid, lsn.as_u64(), commit_time_micros, Some(self.txn_seq))?;
                    if !self.emit(record).await {
                        return Ok(false);
                    }
                }
                self.push_mark(end_lsn.as_u64());
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if self.txn.is_none() {
                    self.push_mark(wal_end.as_u64());
                }
            }
            ReplicationEvent::Message { transactional, lsn, prefix, .. } => {
                if !transactional && self.txn.is_none() {
                    self.push_mark(lsn.as_u64());
                }
                debug!(%prefix, transactional, "logical decoding message");
            }
            ReplicationEvent::XLogData { wal_start, data, .. } => {
                let message = pgoutput::decode(&data)
                    .map_err(|source| CdcError::Decode { lsn: format_lsn(wal_start.as_u64()), source })?;
                return self.change(client, wal_start.as_u64(), message).await;
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(true)
    }

    async fn change(&mut self, client: &Client, lsn: u64, message: Message) -> Result<bool, CdcError> {
        let txn = self.txn.clone().unwrap_or_default();
        let records: Vec<SourceRecord> = match message {
            Message::Relation(relation) => {
                let key = setup::primary_key(client, relation.oid).await?;
                debug!(table = %format!("{}.{}", relation.namespace, relation.name), "relation");
                let table = resolved_table(client, &self.config, relation, &key).await?;
                let table = self.schemas.attach(table).await?;
                self.tables.insert(table.relation.oid, table);
                Vec::new()
            }
            Message::Insert { relation, new } => {
                let table = self.table(relation)?;
                let change =
                    Change { op: "INSERT", table, before: None, after: Some(&new), lsn, txn: &txn, seq: self.txn_seq };
                vec![change.to_record()?]
            }
            Message::Update { relation, old, new } => {
                let table = self.table(relation)?;
                let before = old.as_ref().map(|(m, t)| (*m, t));
                let change =
                    Change { op: "UPDATE", table, before, after: Some(&new), lsn, txn: &txn, seq: self.txn_seq };
                vec![change.to_record()?]
            }
            Message::Delete { relation, old } => {
                let table = self.table(relation)?;
                let change = Change {
                    op: "DELETE",
                    table,
                    before: Some((old.0, &old.1)),
                    after: None,
                    lsn,
                    txn: &txn,
                    seq: self.txn_seq,
                };
                vec![change.to_record()?]
            }
            Message::Truncate { relations, .. } => {
                // A TRUNCATE concerns every key of its table, so it has no routing key; it is
                // published as a barrier: after everything before it is acked, and before
                // anything after it is sent.
                for (i, oid) in relations.iter().enumerate() {
                    let seq = self.txn_seq + i as u64;
                    let table = self.table(*oid)?;
                    let record =
                        Change { op: "TRUNCATE", table, before: None, after: None, lsn, txn: &txn, seq }.to_record()?;
                    if !self.wait_acked(self.last_emitted).await || !self.emit(record).await {
                        return Ok(false);
                    }
                    if !self.wait_acked(self.last_emitted).await {
                        return Ok(false);
                    }
                }
                self.txn_seq += relations.len() as u64;
                Vec::new()
            }
            Message::Type { .. } | Message::Origin { .. } | Message::Begin { .. } | Message::Commit { .. } => {
                Vec::new()
            }
            Message::LogicalMessage { .. } => Vec::new(),
        };
        for record in records {
            self.txn_seq += 1;
            if !self.emit(record).await {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn table(&self, oid: u32) -> Result<&Table, CdcError> {
        self.tables
            .get(&oid)
            .ok_or_else(|| CdcError::Setup(format!("change for relation {oid} arrived before its Relation message")))
    }

    /// Waits until Danube acked every record up to `seq`; false if shutdown came first.
    async fn wait_acked(&mut self, seq: u64) -> bool {
        let mut acked = self.acked.clone();
        tokio::select! {
            result = acked.wait_for(|a| *a >= seq) => result.is_ok(),
            _ = self.stop.cancelled() => false,
        }
    }

    /// Hands a record to `poll`; false if shutdown came first.
    async fn emit(&mut self, record: SourceRecord) -> bool {
        let seq = self.next_seq;
        if let (Some(table), Some(op)) = (record.attributes.get("table"), record.attributes.get("op")) {
            self.metrics.records_of(table, op).inc();
        }
        let record = record.with_offset(SourceOffset::new(self.config.slot.clone(), seq));
        tokio::select! {
            sent = self.tx.send(Item::Record(record)) => {
                if sent.is_err() {
                    return false;
                }
            }
            _ = self.stop.cancelled() => return false,
        }
        self.next_seq += 1;
        self.last_emitted = seq;
        true
    }

    fn push_mark(&mut self, lsn: u64) {
        self.marks.push(self.last_emitted, lsn);
    }

    /// Confirms the LSN of every mark whose records are all acked.
    fn apply_acks(&mut self, repl: &ReplicationClient) {
        let acked = *self.acked.borrow_and_update();
        if let Some(confirmed) = self.marks.ack(acked) {
            repl.update_applied_lsn(Lsn::from_u64(confirmed));
            self.progress.confirmed.store(confirmed, Ordering::Release);
        }
    }

    /// Graceful end: confirm what is acked, stop the stream, and make sure the server has the
    /// final position (advancing the slot once the walsender released it).
    async fn finish(&mut self, client: &Client, repl: &mut ReplicationClient) {
        self.apply_acks(repl);
        if let Err(error) = repl.shutdown().await {
            debug!(error = %error, "replication stop");
        }
        if self.marks.confirmed() == 0 {
            return;
        }
        let target = format_lsn(self.marks.confirmed());
        for _ in 0..80 {
            match client
                .execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", &[&self.config.slot, &target])
                .await
            {
                Ok(_) => {
                    info!(slot = %self.config.slot, confirmed = %target, "final position confirmed");
                    return;
                }
                // The walsender has not released the slot yet (SQLSTATE 55006, "is active for PID").
                Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(error) => {
                    // E.g. the slot is already at or past the target: nothing left to confirm.
                    debug!(error = %danube_connect_core::error::error_chain(&error), "slot advance at shutdown");
                    return;
                }
            }
        }
        warn!(slot = %self.config.slot, confirmed = %target, "the slot stayed active; the final position was not confirmed and a restart re-sends from the last status update");
    }

    fn replication_config(&self) -> ReplicationConfig {
        let tls = match self.conn.tls {
            TlsMode::Disable => TlsConfig::disabled(),
            TlsMode::Require => TlsConfig::require(),
            TlsMode::VerifyCa => {
                let tls = TlsConfig::verify_ca(self.conn.tls_ca.clone());
                match self.conn.verified_names.first() {
                    Some(name) => tls.with_sni_hostname(name),
                    None => tls,
                }
            }
            TlsMode::VerifyFull => TlsConfig::verify_full(self.conn.tls_ca.clone()),
        };
        ReplicationConfig::new(
            self.conn.host.clone(),
            self.conn.user.clone(),
            self.conn.password.expose().to_string(),
            self.conn.database.clone(),
            self.config.slot.clone(),
            self.config.publication.clone(),
        )
        .with_port(self.conn.port)
        .with_tls(tls)
        .with_status_interval(self.config.status_interval)
        .with_wakeup_interval(self.config.heartbeat_interval)
        .with_buffer_size(self.config.buffer.max(64))
        .with_options("-c datestyle=ISO -c timezone=UTC -c extra_float_digits=3 -c intervalstyle=iso_8601")
        .with_application_name("danube-postgres-cdc")
    }

    /// Reads every published table in the exported snapshot; returns the last record's
    /// sequence number (`None` when shutdown interrupted it).
    async fn snapshot(&mut self, client: &Client, snapshot: &str, point: u64) -> Result<Option<u64>, CdcError> {
        let tables = setup::published_tables(client, &self.config.publication).await?;
        info!(tables = tables.len(), snapshot, "initial snapshot starting");
        client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
                snapshot.replace('\'', "")
            ))
            .await
            .map_err(query("import the slot's snapshot"))?;
        self.read_tables(client, tables, point).await
    }

    /// Snapshots the tables added to the publication while the slot existed (see
    /// [`setup::add_missing_tables`]) and waits until Danube acknowledged every row; then
    /// forgets them. Their changes after the `ALTER PUBLICATION` come through the stream,
    /// which starts after this. False when shutdown came first.
    async fn snapshot_added(&mut self, client: &Client) -> Result<bool, CdcError> {
        let added = setup::added_tables(client, &self.config).await?;
        if added.is_empty() {
            return Ok(true);
        }
        let published = setup::published_tables(client, &self.config.publication).await?;
        let tables: Vec<(String, String)> = added.iter().filter(|t| published.contains(t)).cloned().collect();
        let names: Vec<String> = tables.iter().map(|(s, t)| format!("{s}.{t}")).collect();
        info!(tables = %names.join(", "), "snapshot of tables added to the publication starting");
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(query("begin the snapshot of added tables"))?;
        let point: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(query("read the WAL position"))?
            .get(0);
        let point = Lsn::parse(&point).map_or(0, Lsn::as_u64);
        let Some(last) = self.read_tables(client, tables, point).await? else { return Ok(false) };
        if !self.wait_acked(last).await {
            return Ok(false);
        }
        setup::clear_added_tables(client, &self.config, &added).await?;
        info!(tables = %names.join(", "), rows_up_to = last, "snapshot of added tables acknowledged by Danube");
        Ok(true)
    }

    /// Reads `tables` in the transaction the caller opened (and commits it); returns the last
    /// record's sequence number (`None` when shutdown interrupted it).
    async fn read_tables(
        &mut self,
        client: &Client,
        tables: Vec<(String, String)>,
        point: u64,
    ) -> Result<Option<u64>, CdcError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        let txn = TxnInfo { xid: 0, commit_lsn: point, commit_time: now - 946_684_800_000_000 };
        // One counter over all tables: `(commit_lsn, seq)` identifies each snapshot row.
        let mut seq = 0u64;
        for (schema, name) in tables {
            let row = client
                .query_one(
                    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                    &[&schema, &name],
                )
                .await
                .map_err(query("look up snapshot table"))?;
            let oid: u32 = row.get(0);
            let key = setup::primary_key(client, oid).await?;
            let columns: Vec<Column> = client
                .query(
                    "SELECT attname::text, atttypid, atttypmod FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    &[&oid],
                )
                .await
                .map_err(query("read snapshot table columns"))?
                .iter()
                .map(|r| {
                    let name: String = r.get(0);
                    Column { key: key.contains(&name), name, type_oid: r.get(1), type_modifier: r.get(2) }
                })
                .collect();
            let select: Vec<String> =
                columns.iter().map(|c| format!("{}::text", setup::quote_ident(&c.name))).collect();
            let relation =
                Relation { oid, namespace: schema.clone(), name: name.clone(), replica_identity: b'd', columns };
            let table = resolved_table(client, &self.config, relation, &key).await?;
            let table = self.schemas.attach(table).await?;
            client
                .batch_execute(&format!(
                    "DECLARE danube_snapshot NO SCROLL CURSOR FOR SELECT {} FROM {}.{}",
                    if select.is_empty() { "1".to_string() } else { select.join(", ") },
                    setup::quote_ident(&schema),
                    setup::quote_ident(&name)
                ))
                .await
                .map_err(query(format!("snapshot {schema}.{name}")))?;
            let full_name = format!("{schema}.{name}");
            let estimated = estimate_rows(client, oid, &schema, &name).await?;
            self.metrics.snapshot_progress(&full_name, 0, Some(estimated));
            let mut table_rows = 0u64;
            loop {
                let rows = client
                    .query(&format!("FETCH {} FROM danube_snapshot", self.config.snapshot_chunk_size), &[])
                    .await
                    .map_err(query(format!("snapshot {schema}.{name}")))?;
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    let tuple: Vec<TupleValue> = (0..table.relation.columns.len())
                        .map(|i| match row.get::<_, Option<&str>>(i) {
                            Some(text) => TupleValue::Text(bytes::Bytes::copy_from_slice(text.as_bytes())),
                            None => TupleValue::Null,
                        })
                        .collect();
                    let record = Change {
                        op: "READ",
                        table: &table,
                        before: None,
                        after: Some(&tuple),
                        lsn: point,
                        txn: &txn,
                        seq,
                    }
                    .to_record()?;
                    seq += 1;
                    table_rows += 1;
                    if !self.emit(record).await {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Ok(None);
                    }
                }
                self.metrics.snapshot_progress(&full_name, table_rows, None);
            }
            client.batch_execute("CLOSE danube_snapshot").await.map_err(query("close snapshot cursor"))?;
            self.metrics.snapshot_progress(&full_name, table_rows, Some(estimated.max(table_rows)));
            info!(table = %full_name, rows = table_rows, "table snapshot read");
        }
        client.batch_execute("COMMIT").await.map_err(query("end snapshot transaction"))?;
        Ok(Some(self.last_emitted))
    }
}

/// The rows a snapshot of a table is expected to read: `pg_class.reltuples`, or, for a table
/// never vacuumed or analyzed (`-1`), an exact count in the snapshot's transaction.
async fn estimate_rows(client: &Client, oid: u32, schema: &str, name: &str) -> Result<u64, CdcError> {
    let estimate: f32 = client
        .query_one("SELECT reltuples FROM pg_class WHERE oid = $1", &[&oid])
        .await
        .map_err(query("read the table's row estimate"))?
        .get(0);
    if estimate >= 0.0 {
        return Ok(estimate as u64);
    }
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}.{}", setup::quote_ident(schema), setup::quote_ident(name)), &[])
        .await
        .map_err(query(format!("count the rows of {schema}.{name}")))?
        .get(0);
    Ok(count.max(0) as u64)
}

/// A [`Table`] whose array columns of types not known by OID have their element types
/// looked up in `pg_type`.
async fn resolved_table(
    client: &Client,
    config: &PostgresCdcConfig,
    relation: Relation,
    key: &[String],
) -> Result<Table, CdcError> {
    let topic = config.topic_for(&relation.namespace, &relation.name);
    let mut table = Table::new(relation, key, topic);
    table.toast = ToastFill::new(config.toast, &config.toast_placeholder);
    let elements = setup::array_elements(client, &table.unresolved_types()).await?;
    table.resolve_arrays(&elements);
    Ok(table)
}

/// A transaction boundary record.
fn boundary(
    topic: &str,
    op: &str,
    xid: u32,
    lsn: u64,
    time: i64,
    events: Option<u64>,
) -> Result<SourceRecord, CdcError> {
    let mut value =
        serde_json::json!({ "op": op, "xid": xid, "commit_lsn": format_lsn(lsn), "commit_ts": pg_time_iso(time) });
    if let Some(events) = events {
        value["events"] = serde_json::Value::from(events);
    }
    let payload = serde_json::to_vec(&value).map_err(CdcError::Serialize)?;
    Ok(SourceRecord::new(topic, payload)
        .with_key(xid.to_string())
        .with_attribute("content-type", "application/json")
        .with_attribute("op", op)
        .with_attribute("commit_lsn", format_lsn(lsn)))
}
