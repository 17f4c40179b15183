//! The replication task: snapshot, then the `pgoutput` stream, decoded into records; the
//! acknowledged position goes back to PostgreSQL as the confirmed flush LSN.
//!
//! Every record gets a sequence number as its offset. A *mark* `(seq, lsn)` says: once every
//! record up to `seq` is acked by Danube, PostgreSQL may forget the WAL before `lsn`. Marks are
//! pushed at each transaction's commit (its end LSN), at keepalives and heartbeats between
//! transactions (the server's position), so the slot advances only to commits whose every
//! record is in Danube, and advances while the captured tables are idle.

use danube_connect_core::retry::Backoff;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use danube_connect_core::{ConnectorError, SourceOffset, SourceRecord};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, warn};

use crate::change::{format_lsn, pg_time_iso, Change, Table, ToastFill, TxnInfo};
use crate::config::{Connection, PostgresCdcConfig, SnapshotMode};
use crate::error::{query, replication, CdcError};
use crate::incremental::{self, Advance, Chunk, Plan, Signal, TablePlan, Touched, XidSnapshot};
use crate::marks::Marks;
use crate::metrics::CdcMetrics;
use crate::pgoutput::{self, Column, Message, Relation, Tuple, TupleValue};
use crate::schema::TableSchemas;
use crate::setup::{self, SnapshotState};

/// What the task hands to `poll`.
#[derive(Debug)]
pub(crate) enum Item {
    /// Records to publish, in order, at most `connector.max_batch`; every one carries the
    /// sequence number of the last as its offset.
    Records(Vec<SourceRecord>),
    /// The stream failed for good.
    Failed(ConnectorError),
}

/// The channel between the replication task and `poll`: about `connector.buffer` records,
/// in batches of at most `connector.max_batch` (at least 16 batches, so that small batches
/// of a slow stream do not stall it).
pub(crate) fn channel(config: &PostgresCdcConfig) -> (mpsc::Sender<Item>, mpsc::Receiver<Item>) {
    mpsc::channel((config.buffer / config.max_batch.max(1)).max(16))
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

/// How long a signalled table's snapshot waits for transactions older than its
/// `ALTER PUBLICATION` to end.
const PUBLICATION_SETTLE: Duration = Duration::from_secs(10);

/// How long creating the producers of one topic at stream start may take.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);

/// A chunk as read: the snapshot it was read in, its rows `(routing key, row)`, the key
/// values of its last row.
type ChunkRead = (XidSnapshot, Vec<(String, Tuple)>, Option<Vec<String>>);

/// The table an incremental snapshot is reading.
struct Current {
    snapshot: String,
    schema: String,
    name: String,
    oid: u32,
    table: Table,
    key_names: Vec<String>,
    key_types: Vec<String>,
}

/// State of the incremental snapshots (see [`crate::incremental`]).
#[derive(Default)]
struct Incremental {
    /// Progress including chunks emitted but not yet acknowledged.
    live: Plan,
    /// Progress as recorded in the signal table.
    durable: Plan,
    /// Emitted chunks waiting for the slot to be confirmed past their high watermark.
    pending: VecDeque<(u64, Advance)>,
    current: Option<Current>,
    chunk: Option<Chunk<Tuple>>,
    touched: Touched,
    watermarks: u64,
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
    /// Records emitted but not handed to `poll` yet (see [`Stream::flush`]).
    out: Vec<SourceRecord>,
    marks: Marks,
    tables: HashMap<u32, Table>,
    txn: Option<Arc<TxnInfo>>,
    txn_seq: u64,
    schemas: TableSchemas,
    metrics: CdcMetrics,
    signal_table: Option<(String, String)>,
    signals: Vec<(String, String, Option<String>)>,
    incremental: Incremental,
    started_at: u128,
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
            out: Vec::new(),
            marks: Marks::default(),
            tables: HashMap::new(),
            txn: None,
            txn_seq: 0,
            schemas: TableSchemas::default(),
            metrics: CdcMetrics::unregistered(&config.slot),
            signal_table: None,
            signals: Vec::new(),
            incremental: Incremental::default(),
            started_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
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
            // Records emitted before a failure still go out (their marks are pushed): a
            // reconnect may send some of them again, never fewer.
            self.flush().await;
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
        let signals = setup::prepare_signal_table(&client, &self.config).await?;
        self.signal_table = if signals { self.config.signal_table() } else { None };
        self.signals.clear();
        let plan = if signals { setup::read_plan(&client, &self.config).await? } else { Plan::default() };
        self.incremental = Incremental {
            live: plan.clone(),
            durable: plan,
            watermarks: self.incremental.watermarks,
            ..Default::default()
        };
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
        // Tables added to the publication of an existing slot: snapshotted incrementally while
        // streaming (with signals on), else read before the stream starts.
        if slot.is_some() && snapshotting && !initial_only {
            if self.signal_table.is_some() {
                self.queue_added(&client).await?;
            } else if !self.snapshot_added(&client).await? {
                return Ok(Ended::Shutdown);
            }
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
        self.prepare_topics(&client).await?;
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

    /// Creates the producers of the published tables' topics in the background, so the
    /// first change of a table does not wait for them (and the topics exist on Danube once
    /// the stream runs). A failure is only logged: producers are created at the first record
    /// otherwise.
    async fn prepare_topics(&self, client: &Client) -> Result<(), CdcError> {
        let Some(publisher) = self.schemas.publisher().cloned() else { return Ok(()) };
        let mut topics: Vec<String> = setup::published_tables(client, &self.config.publication)
            .await?
            .into_iter()
            .filter(|table| Some(table) != self.signal_table.as_ref())
            .map(|(schema, table)| self.config.topic_for(&schema, &table))
            .collect();
        topics.extend(self.config.transaction_topic.clone());
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                prepared = publisher.prepare_all(topics, PREPARE_TIMEOUT) => match prepared {
                    Ok(pending) if pending.is_empty() => debug!("producers of the published tables created"),
                    Ok(pending) => debug!(topics = %pending.join(", "), "producers not created yet; created at the first record"),
                    Err(error) => warn!(error = %danube_connect_core::error::error_chain(&error), "a topic of a published table is refused by Danube"),
                },
                _ = stop.cancelled() => {}
            }
        });
        Ok(())
    }

    async fn stream(&mut self, client: &Client, repl: &mut ReplicationClient) -> Result<Ended, CdcError> {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut progress_tick = tokio::time::interval(self.config.status_interval);
        progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.incremental.chunk.is_none() && !self.incremental.live.tables.is_empty() {
                self.start_chunk(client).await?;
            }
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return Ok(Ended::Shutdown),
                _ = progress_tick.tick(), if !self.incremental.pending.is_empty() => {
                    self.persist_progress(client).await?;
                }
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
                    // This event and those already received after it, up to a batch, then
                    // their records go to `poll` in one hand-off.
                    let mut event = event;
                    let mut handled = 0;
                    loop {
                        match event {
                            Ok(Some(event)) => {
                                if !self.handle(client, event).await? {
                                    return Ok(Ended::Shutdown);
                                }
                            }
                            Ok(None) => {
                                return Err(CdcError::Replication {
                                    what: "replication stream ended".into(),
                                    source: pgwire_replication::PgWireError::Task("stream closed by the server".into()),
                                })
                            }
                            Err(source) => {
                                return Err(CdcError::Replication { what: "replication stream".into(), source })
                            }
                        }
                        handled += 1;
                        if handled >= self.config.max_batch || self.stop.is_cancelled() {
                            break;
                        }
                        match ready_now(repl.recv()).await {
                            Some(next) => event = next,
                            None => break,
                        }
                    }
                    if !self.flush().await {
                        return Ok(Ended::Shutdown);
                    }
                    if !self.marks.is_empty() {
                        self.apply_acks(repl);
                    }
                }
            }
        }
    }

    /// Handles one event; false when shutdown interrupted a send.
    async fn handle(&mut self, client: &Client, event: ReplicationEvent) -> Result<bool, CdcError> {
        match event {
            ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                self.txn = Some(Arc::new(TxnInfo::new(xid, final_lsn.as_u64(), commit_time_micros)));
                self.txn_seq = 0;
                if let Some(topic) = self.config.transaction_topic.clone() {
                    let record = boundary(&topic, "BEGIN", xid, final_lsn.as_u64(), commit_time_micros, None)?;
                    return Ok(self.emit(record).await);
                }
            }
            ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                let txn = self.txn.take();
                self.metrics.commit_seen(commit_time_micros);
                if !self.signals.is_empty() {
                    // Acted on before the commit's mark: the slot cannot pass a signal that was
                    // not yet recorded in the progress row.
                    self.apply_signals(client).await?;
                }
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
            ReplicationEvent::Message { transactional, lsn, prefix, content } => {
                if prefix == incremental::WATERMARK_PREFIX && !self.watermark(&content, lsn.as_u64()).await? {
                    return Ok(false);
                }
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
        if let Some(relation) = changed_relation(&message) {
            if self.is_signal_table(relation) {
                if let Message::Insert { new, .. } = &message {
                    self.collect_signal(relation, new);
                }
                return Ok(true);
            }
            self.track_change(&message, txn.xid);
        }
        let records: Vec<SourceRecord> = match message {
            Message::Relation(relation) => {
                let key = setup::primary_key(client, relation.oid).await?;
                debug!(table = %format!("{}.{}", relation.namespace, relation.name), "relation");
                let signals = self
                    .signal_table
                    .as_ref()
                    .is_some_and(|(schema, name)| relation.namespace == *schema && relation.name == *name);
                let table = resolved_table(client, &self.config, &self.metrics, relation, &key).await?;
                // The signal table's rows are never published: no schema for it.
                let table = if signals { table } else { self.schemas.attach(table).await? };
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
                let relations: Vec<u32> = relations.into_iter().filter(|oid| !self.is_signal_table(*oid)).collect();
                if let (Some(current), Some(chunk)) = (&self.incremental.current, &mut self.incremental.chunk) {
                    if relations.contains(&current.oid) {
                        // Every row the chunk read is gone (or re-inserted, and then streamed).
                        chunk.rows.clear();
                    }
                }
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

    /// Waits until Danube acked every record up to `seq` (handing off the records not yet
    /// handed off first); false if shutdown came first.
    async fn wait_acked(&mut self, seq: u64) -> bool {
        if !self.flush().await {
            return false;
        }
        let mut acked = self.acked.clone();
        tokio::select! {
            result = acked.wait_for(|a| *a >= seq) => result.is_ok(),
            _ = self.stop.cancelled() => false,
        }
    }

    /// Numbers a record and queues it for `poll`, handing off the queue once it holds a
    /// batch; false if shutdown came first.
    async fn emit(&mut self, record: SourceRecord) -> bool {
        self.last_emitted = self.next_seq;
        self.next_seq += 1;
        self.out.push(record);
        if self.out.len() >= self.config.max_batch {
            return self.flush().await;
        }
        true
    }

    /// Hands the queued records to `poll` as one batch, each carrying the sequence number
    /// of the last as its offset (so the runtime commits it once all are acked); false if
    /// shutdown came first.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let count = self.out.len();
        trace!(records = count, "hand-off to poll");
        let mut batch = std::mem::replace(&mut self.out, Vec::with_capacity(count));
        let offset = SourceOffset::new(self.config.slot.clone(), self.last_emitted);
        for record in &mut batch {
            record.offset = Some(offset.clone());
        }
        tokio::select! {
            sent = self.tx.send(Item::Records(batch)) => sent.is_ok(),
            _ = self.stop.cancelled() => false,
        }
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
        let tls = crate::tls::replication_tls(&self.conn.tls, &self.conn.verified_names);
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
        let mut tables = setup::published_tables(client, &self.config.publication).await?;
        tables.retain(|table| Some(table) != self.signal_table.as_ref());
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
        let txn = TxnInfo::new(0, point, now - 946_684_800_000_000);
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
            let table = resolved_table(client, &self.config, &self.metrics, relation, &key).await?;
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
                // Published while the next chunk is fetched.
                if !self.flush().await {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Ok(None);
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
/// looked up in `pg_type`, counted in `metrics`.
async fn resolved_table(
    client: &Client,
    config: &PostgresCdcConfig,
    metrics: &CdcMetrics,
    relation: Relation,
    key: &[String],
) -> Result<Table, CdcError> {
    let topic = config.topic_for(&relation.namespace, &relation.name);
    let mut table = Table::new(relation, key, topic);
    table.toast = ToastFill::new(config.toast, &config.toast_placeholder);
    table.counters = Some(metrics.table_counters(table.full_name()));
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

/// The output of `future` if it is ready now, without waiting.
async fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        output = future => Some(output),
        () = std::future::ready(()) => None,
    }
}

/// The relation a row change concerns.
fn changed_relation(message: &Message) -> Option<u32> {
    match message {
        Message::Insert { relation, .. } | Message::Update { relation, .. } | Message::Delete { relation, .. } => {
            Some(*relation)
        }
        _ => None,
    }
}

/// Microseconds since 2000-01-01 (PostgreSQL's epoch), now.
fn pg_now() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    now - 946_684_800_000_000
}

/// Whether a failed query was refused by the server (e.g. a bad filter), rather than the
/// connection failing.
fn refused(error: &CdcError) -> Option<String> {
    match error {
        CdcError::Query { source, .. } => source.as_db_error().map(|db| db.message().to_string()),
        _ => None,
    }
}

impl Stream {
    fn is_signal_table(&self, oid: u32) -> bool {
        match (&self.signal_table, self.tables.get(&oid)) {
            (Some((schema, name)), Some(table)) => table.relation.namespace == *schema && table.relation.name == *name,
            _ => false,
        }
    }

    /// Keeps an inserted signal row to act on at its commit.
    fn collect_signal(&mut self, oid: u32, row: &Tuple) {
        let Some(table) = self.tables.get(&oid) else { return };
        let column = |name: &str| {
            table.relation.columns.iter().position(|c| c.name == name).and_then(|i| match row.get(i) {
                Some(TupleValue::Text(bytes)) => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            })
        };
        let (Some(id), Some(kind)) = (column("id"), column("type")) else {
            warn!("a signal row without id or type is ignored");
            return;
        };
        if kind == incremental::PROGRESS_TYPE {
            return;
        }
        self.signals.push((id, kind, column("data")));
    }

    /// Notes a streamed change to the table being snapshotted: its keys leave the chunk when
    /// the stream is between the watermarks, and are remembered with the transaction.
    fn track_change(&mut self, message: &Message, xid: u32) {
        let Some(current) = &self.incremental.current else { return };
        let (relation, tuples): (u32, Vec<&Tuple>) = match message {
            Message::Insert { relation, new } => (*relation, vec![new]),
            Message::Update { relation, old, new } => {
                (*relation, old.iter().map(|(_, t)| t).chain(std::iter::once(new)).collect())
            }
            Message::Delete { relation, old } => (*relation, vec![&old.1]),
            _ => return,
        };
        if relation != current.oid {
            return;
        }
        let Some(table) = self.tables.get(&relation) else { return };
        for key in tuples.into_iter().filter_map(|t| table.key_of(t)) {
            if let Some(chunk) = self.incremental.chunk.as_mut().filter(|c| c.window_open) {
                chunk.changed.insert(key.clone());
            }
            self.incremental.touched.record(key, xid);
        }
    }

    /// Acts on the signals of the transaction that just committed.
    async fn apply_signals(&mut self, client: &Client) -> Result<(), CdcError> {
        for (id, kind, data) in std::mem::take(&mut self.signals) {
            match incremental::parse_signal(&id, &kind, data.as_deref()) {
                Err(error) => warn!(signal = %id, error = %error, "signal ignored"),
                Ok(Signal::Execute { id, tables }) => self.execute_snapshot(client, id, tables).await?,
                Ok(Signal::Stop { id, tables }) => {
                    let stopped = self.incremental.durable.stop(&tables);
                    self.incremental.live.stop(&tables);
                    self.forget_current_if_stopped();
                    setup::write_plan(client, &self.config, &self.incremental.durable).await?;
                    info!(signal = %id, tables_stopped = stopped, "incremental snapshot stopped");
                }
            }
        }
        Ok(())
    }

    /// Queues the tables of an `execute-snapshot` signal, adding those the publication lacks.
    async fn execute_snapshot(
        &mut self,
        client: &Client,
        id: String,
        tables: Vec<(String, String, Option<String>)>,
    ) -> Result<(), CdcError> {
        if self.incremental.durable.knows(&id) {
            info!(signal = %id, "incremental snapshot already queued or done; signal seen again after a restart");
            return Ok(());
        }
        let mut queued = Vec::new();
        let mut joined = false;
        for (schema, table, filter) in tables {
            let name = format!("{schema}.{table}");
            if Some(&(schema.clone(), table.clone())) == self.signal_table.as_ref() {
                warn!(signal = %id, table = %name, "the signal table is not snapshotted");
                continue;
            }
            match setup::table_key(client, &schema, &table).await? {
                None => {
                    warn!(signal = %id, table = %name, "incremental snapshot: the table does not exist; skipped");
                    continue;
                }
                Some((_, key)) if key.is_empty() => {
                    warn!(signal = %id, table = %name, "incremental snapshot: the table has no primary key; skipped");
                    continue;
                }
                Some(_) => {}
            }
            match setup::add_to_publication(client, &self.config, &schema, &table).await {
                Ok(added) => joined |= added,
                Err(error) => match refused(&error) {
                    Some(reason) => {
                        warn!(signal = %id, table = %name, %reason, "incremental snapshot: the table could not be added to the publication; skipped");
                        continue;
                    }
                    None => return Err(error),
                },
            }
            queued.push(TablePlan { snapshot: id.clone(), schema, table, filter, last_key: None, rows: 0 });
        }
        if joined {
            setup::wait_running_transactions(client, PUBLICATION_SETTLE).await?;
        }
        let names: Vec<String> = queued.iter().map(TablePlan::full_name).collect();
        self.incremental.live.tables.extend(queued.iter().cloned());
        self.incremental.durable.tables.extend(queued);
        setup::write_plan(client, &self.config, &self.incremental.durable).await?;
        info!(signal = %id, tables = %names.join(", "), "incremental snapshot queued");
        Ok(())
    }

    /// Queues the tables added to the publication on this start (see
    /// [`setup::add_missing_tables`]) as an incremental snapshot, then forgets them.
    async fn queue_added(&mut self, client: &Client) -> Result<(), CdcError> {
        let added = setup::added_tables(client, &self.config).await?;
        if added.is_empty() {
            return Ok(());
        }
        setup::wait_running_transactions(client, PUBLICATION_SETTLE).await?;
        let id = format!("tables-added-{}", SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()));
        let fresh: Vec<TablePlan> = added
            .iter()
            .filter(|(schema, table)| {
                // Queued already by a start that crashed before forgetting them.
                !self.incremental.durable.tables.iter().any(|t| t.schema == *schema && t.table == *table)
            })
            .map(|(schema, table)| TablePlan {
                snapshot: id.clone(),
                schema: schema.clone(),
                table: table.clone(),
                filter: None,
                last_key: None,
                rows: 0,
            })
            .collect();
        if !fresh.is_empty() {
            self.incremental.live.tables.extend(fresh.iter().cloned());
            self.incremental.durable.tables.extend(fresh);
            setup::write_plan(client, &self.config, &self.incremental.durable).await?;
        }
        setup::clear_added_tables(client, &self.config, &added).await?;
        let names: Vec<String> = added.iter().map(|(s, t)| format!("{s}.{t}")).collect();
        info!(snapshot = %id, tables = %names.join(", "), "tables added to the publication are snapshotted incrementally");
        Ok(())
    }

    /// Drops the chunk and table in reading when their snapshot was stopped.
    fn forget_current_if_stopped(&mut self) {
        let Some(current) = &self.incremental.current else { return };
        let running =
            self.incremental.live.tables.first().is_some_and(|t| {
                t.snapshot == current.snapshot && t.schema == current.schema && t.table == current.name
            });
        if !running {
            self.incremental.current = None;
            self.incremental.chunk = None;
            self.incremental.touched.clear();
        }
    }

    /// Gives up the snapshot of a table that cannot be read (gone, no key, bad filter).
    async fn abandon(&mut self, client: &Client, entry: &TablePlan, reason: &str) -> Result<(), CdcError> {
        error!(snapshot = %entry.snapshot, table = %entry.full_name(), %reason, "incremental snapshot of the table abandoned");
        let gone = Advance {
            snapshot: entry.snapshot.clone(),
            schema: entry.schema.clone(),
            table: entry.table.clone(),
            last_key: entry.last_key.clone(),
            rows: entry.rows,
            done: true,
        };
        self.incremental.live.advance(&gone);
        self.incremental.durable.advance(&gone);
        self.forget_current_if_stopped();
        setup::write_plan(client, &self.config, &self.incremental.durable).await
    }

    /// Looks up the table of `entry`: its columns, key and types.
    async fn load_current(&mut self, client: &Client, entry: &TablePlan) -> Result<Result<Current, String>, CdcError> {
        let Some((oid, key)) = setup::table_key(client, &entry.schema, &entry.table).await? else {
            return Ok(Err("the table does not exist".into()));
        };
        if key.is_empty() {
            return Ok(Err("the table has no primary key".into()));
        }
        let rows = client
            .query(
                "SELECT attname::text, atttypid, atttypmod, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&oid],
            )
            .await
            .map_err(query("read the columns of a table to snapshot"))?;
        let mut types = HashMap::new();
        let columns: Vec<Column> = rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                types.insert(name.clone(), r.get::<_, String>(3));
                Column { key: key.contains(&name), name, type_oid: r.get(1), type_modifier: r.get(2) }
            })
            .collect();
        let key_types = key.iter().map(|k| types.get(k).cloned().unwrap_or_else(|| "text".into())).collect();
        let relation = Relation {
            oid,
            namespace: entry.schema.clone(),
            name: entry.table.clone(),
            replica_identity: b'd',
            columns,
        };
        let table = resolved_table(client, &self.config, &self.metrics, relation, &key).await?;
        let table = self.schemas.attach(table).await?;
        info!(snapshot = %entry.snapshot, table = %entry.full_name(), resume_after = ?entry.last_key, "incremental snapshot of the table starting");
        Ok(Ok(Current {
            snapshot: entry.snapshot.clone(),
            schema: entry.schema.clone(),
            name: entry.table.clone(),
            oid,
            table,
            key_names: key,
            key_types,
        }))
    }

    /// Reads the next chunk of the table being snapshotted, between a low and a high
    /// watermark; its rows are emitted when the stream reaches the high one.
    async fn start_chunk(&mut self, client: &Client) -> Result<(), CdcError> {
        let Some(entry) = self.incremental.live.tables.first().cloned() else { return Ok(()) };
        let loaded = self
            .incremental
            .current
            .as_ref()
            .is_some_and(|c| c.snapshot == entry.snapshot && c.schema == entry.schema && c.name == entry.table);
        if !loaded {
            self.incremental.current = None;
            self.incremental.touched.clear();
            match self.load_current(client, &entry).await? {
                Ok(current) => self.incremental.current = Some(current),
                Err(reason) => return self.abandon(client, &entry, &reason).await,
            }
        }
        self.incremental.watermarks += 1;
        let nonce = format!("{}-{}-{}", self.config.slot, self.started_at, self.incremental.watermarks);
        self.write_watermark(client, &nonce, "low").await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(query("begin a snapshot chunk"))?;
        let read = self.read_chunk(client, &entry).await;
        let end = if read.is_ok() { "COMMIT" } else { "ROLLBACK" };
        client.batch_execute(end).await.map_err(query("end a snapshot chunk"))?;
        let (snapshot, rows, last_key) = match read {
            Ok(read) => read,
            Err(error) => match refused(&error) {
                Some(reason) => return self.abandon(client, &entry, &reason).await,
                None => return Err(error),
            },
        };
        let last = rows.len() < self.config.incremental_chunk_size;
        self.write_watermark(client, &nonce, "high").await?;
        debug!(table = %entry.full_name(), rows = rows.len(), %nonce, "snapshot chunk read");
        self.incremental.chunk =
            Some(Chunk { nonce, rows, last_key, last, snapshot, window_open: false, changed: HashSet::new() });
        Ok(())
    }

    /// Selects one chunk in the caller's transaction: its snapshot, rows and last key.
    async fn read_chunk(&self, client: &Client, entry: &TablePlan) -> Result<ChunkRead, CdcError> {
        let Some(current) = &self.incremental.current else {
            return Err(CdcError::Setup("no table to snapshot".into()));
        };
        let text: String = client
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(query("read the chunk's snapshot"))?
            .get(0);
        let snapshot = XidSnapshot::parse(&text)
            .ok_or_else(|| CdcError::Setup(format!("unreadable pg_current_snapshot() `{text}`")))?;
        let columns = &current.table.relation.columns;
        // Output names `c0, c1, ..`: an output column named like a key column would make
        // ORDER BY sort by its text.
        let select: Vec<String> =
            columns.iter().enumerate().map(|(i, c)| format!("{}::text AS c{i}", setup::quote_ident(&c.name))).collect();
        let keys: Vec<String> = current.key_names.iter().map(|k| setup::quote_ident(k)).collect();
        let keys = keys.join(", ");
        let mut conditions = Vec::new();
        if let Some(filter) = &entry.filter {
            conditions.push(format!("({filter})"));
        }
        let last: Vec<String> = entry.last_key.clone().unwrap_or_default();
        if !last.is_empty() {
            let params: Vec<String> =
                current.key_types.iter().enumerate().map(|(i, t)| format!("${}::text::{t}", i + 1)).collect();
            conditions.push(format!("({keys}) > ({})", params.join(", ")));
        }
        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            select.join(", "),
            setup::quote_ident(&current.schema),
            setup::quote_ident(&current.name)
        );
        if !conditions.is_empty() {
            sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
        }
        sql.push_str(&format!(" ORDER BY {keys} LIMIT {}", self.config.incremental_chunk_size));
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            last.iter().map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let found = client
            .query(&sql, &params)
            .await
            .map_err(query(format!("read a chunk of {}.{}", current.schema, current.name)))?;
        let mut rows = Vec::with_capacity(found.len());
        let mut last_key = entry.last_key.clone();
        for row in &found {
            let tuple: Tuple = (0..columns.len())
                .map(|i| match row.get::<_, Option<&str>>(i) {
                    Some(text) => TupleValue::Text(bytes::Bytes::copy_from_slice(text.as_bytes())),
                    None => TupleValue::Null,
                })
                .collect();
            let key: Vec<String> = current
                .table
                .key
                .iter()
                .map(|&i| match tuple.get(i) {
                    Some(TupleValue::Text(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => String::new(),
                })
                .collect();
            last_key = Some(key);
            rows.push((current.table.key_of(&tuple).unwrap_or_default(), tuple));
        }
        Ok((snapshot, rows, last_key))
    }

    /// Writes a watermark: a non-transactional logical message (no table write). The high one
    /// also takes a transaction id, so its commit flushes the WAL at once and the walsender
    /// sends the watermark without waiting for the WAL writer (an empty transaction is not
    /// decoded).
    async fn write_watermark(&self, client: &Client, nonce: &str, mark: &str) -> Result<(), CdcError> {
        let content = serde_json::json!({ "nonce": nonce, "mark": mark }).to_string();
        let sql = if mark == "high" {
            "SELECT pg_logical_emit_message(false, $1, $2), pg_current_xact_id()"
        } else {
            "SELECT pg_logical_emit_message(false, $1, $2)"
        };
        client
            .execute(sql, &[&incremental::WATERMARK_PREFIX, &content])
            .await
            .map_err(query("write a snapshot watermark"))?;
        Ok(())
    }

    /// A watermark came through the stream: the low one opens the chunk's window, the high
    /// one emits what is left of the chunk. False when shutdown interrupted a send.
    async fn watermark(&mut self, content: &[u8], lsn: u64) -> Result<bool, CdcError> {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(content) else { return Ok(true) };
        let Some(chunk) = self.incremental.chunk.as_mut() else { return Ok(true) };
        if value["nonce"].as_str() != Some(chunk.nonce.as_str()) {
            // A watermark of an earlier session or of a stopped snapshot.
            return Ok(true);
        }
        if value["mark"] == "low" {
            chunk.window_open = true;
            return Ok(true);
        }
        let Some(chunk) = self.incremental.chunk.take() else { return Ok(true) };
        let Some(current) = &self.incremental.current else { return Ok(true) };
        let snapshot = chunk.snapshot.clone();
        let (read, last, last_key) = (chunk.rows.len(), chunk.last, chunk.last_key.clone());
        let rows = chunk.remaining(&self.incremental.touched);
        self.incremental.touched.prune(&snapshot);
        let txn = TxnInfo::new(0, lsn, pg_now());
        let mut records = Vec::with_capacity(rows.len());
        for (seq, (_, tuple)) in rows.iter().enumerate() {
            let change = Change {
                op: "READ",
                table: &current.table,
                before: None,
                after: Some(tuple),
                lsn,
                txn: &txn,
                seq: seq as u64,
            };
            records.push(change.to_record()?.with_attribute("snapshot", current.snapshot.clone()));
        }
        let full_name = current.table.full_name().to_string();
        let previous = self.incremental.live.tables.first().map_or(0, |t| t.rows);
        let advance = Advance {
            snapshot: current.snapshot.clone(),
            schema: current.schema.clone(),
            table: current.name.clone(),
            last_key,
            rows: previous + records.len() as u64,
            done: last,
        };
        debug!(table = %full_name, read, emitted = records.len(), "snapshot chunk emitted at its high watermark");
        for record in records {
            if !self.emit(record).await {
                return Ok(false);
            }
        }
        self.metrics.snapshot_progress(&full_name, advance.rows, None);
        if last {
            info!(snapshot = %advance.snapshot, table = %full_name, rows = advance.rows, "incremental snapshot of the table read");
            self.incremental.current = None;
            self.incremental.touched.clear();
        }
        self.incremental.live.advance(&advance);
        self.incremental.pending.push_back((lsn, advance));
        Ok(true)
    }

    /// Records the progress of the chunks whose high watermark the slot has confirmed on the
    /// server (so a restart resumes the stream after it and never re-sends an older change
    /// after a chunk's rows).
    async fn persist_progress(&mut self, client: &Client) -> Result<(), CdcError> {
        let local = self.marks.confirmed();
        if self.incremental.pending.front().is_none_or(|(lsn, _)| *lsn > local) {
            return Ok(());
        }
        let confirmed: Option<String> = client
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.slot],
            )
            .await
            .map_err(query("read the slot's confirmed position"))?
            .get(0);
        let server = confirmed.and_then(|t| Lsn::parse(&t).ok()).map_or(0, Lsn::as_u64).min(local);
        let mut changed = false;
        while let Some((lsn, _)) = self.incremental.pending.front() {
            if *lsn > server {
                break;
            }
            let Some((_, advance)) = self.incremental.pending.pop_front() else { break };
            self.incremental.durable.advance(&advance);
            changed = true;
        }
        if changed {
            setup::write_plan(client, &self.config, &self.incremental.durable).await?;
            if self.incremental.durable.tables.is_empty() && self.incremental.live.tables.is_empty() {
                info!("incremental snapshots finished and acknowledged");
            }
        }
        Ok(())
    }
}
