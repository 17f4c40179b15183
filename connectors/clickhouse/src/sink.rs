//! The ClickHouse sink: maps records to rows, spools them durably (the runtime acks Danube
//! once `process_batch` returns), and a flusher per table inserts spooled segments.
//!
//! Why a spool: the broker dispatches only `max_unacked_messages` (default 10) records
//! before it sees acks, so a 10,000-row insert cannot be built by holding acks. Records
//! are instead acked once their rows are synced to the local spool, and each spool
//! segment is deleted only after ClickHouse accepted its insert. See the README.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use danube_connect_core::config::RetryConfig;
use danube_connect_core::connector::SinkContext;
use danube_connect_core::failure::{Delivery, FailureHandler, Handback, Undeliverable};
use danube_connect_core::health::Health;
use danube_connect_core::retry::{Backoff, RetryPolicy};
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Publisher, SinkConnector, SinkRecord};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::client::{ClickHouse, ClickHouseError};
use crate::config::{ClickHouseSinkConfig, DedupMode, TableMapping, TableMode, UnknownFields};
use crate::mapping::{MapError, Mapper};
use crate::spool::{json_each_row, record_id, LoadedSegment, RowGroup, Spool, SpoolError};

const DEDUP_UNKNOWN: u8 = 0;
const DEDUP_ON: u8 = 1;
const DEDUP_OFF: u8 = 2;

/// What the sink needs from the runtime configuration besides its own section.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// The connector instance name (metrics).
    pub connector_name: String,
    /// Backoff for inserts.
    pub retry: RetryConfig,
}

/// The sink connector.
pub struct ClickHouseSink {
    config: ClickHouseSinkConfig,
    settings: SinkSettings,
    inner: Option<Arc<Inner>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink").field("url", &self.config.url).finish_non_exhaustive()
    }
}

struct Metrics {
    rows_inserted: IntCounterVec,
    inserts: IntCounterVec,
    spool_bytes: IntGaugeVec,
    duplicates: IntCounterVec,
    dead_lettered: IntCounterVec,
}

impl Metrics {
    fn register(ctx: &SinkContext) -> Result<Self, prometheus::Error> {
        let registry = ctx.metrics.registry();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let spool_bytes = IntGaugeVec::new(
            Opts::new("clickhouse_spool_bytes", "Bytes waiting in the spool."),
            &["connector", "table"],
        )?;
        registry.register(Box::new(spool_bytes.clone()))?;
        Ok(Self {
            rows_inserted: counter(
                "clickhouse_rows_inserted_total",
                "Rows inserted into ClickHouse.",
                &["connector", "table"],
            )?,
            inserts: counter(
                "clickhouse_inserts_total",
                "Insert requests by outcome (ok, retryable, rejected).",
                &["connector", "table", "outcome"],
            )?,
            spool_bytes,
            duplicates: counter(
                "clickhouse_spool_duplicates_total",
                "Redelivered records skipped because they were already spooled.",
                &["connector", "table"],
            )?,
            dead_lettered: counter(
                "clickhouse_rows_dead_lettered_total",
                "Spooled rows ClickHouse refused, sent to the dead-letter topic.",
                &["connector", "table"],
            )?,
        })
    }
}

struct Inner {
    config: ClickHouseSinkConfig,
    settings: SinkSettings,
    ch: ClickHouse,
    /// Open tables by `database.table`.
    tables: RwLock<HashMap<String, Arc<Table>>>,
    /// Topic -> (index in `tables` of the config, mapping).
    routes: HashMap<String, (usize, TableMapping)>,
    /// Held while a table's spool is opened.
    opening: tokio::sync::Mutex<()>,
    /// Registry schema definitions by (id, version), for CDC table creation.
    schemas: Mutex<SchemaDefinitions>,
    retry: RetryPolicy,
    publisher: Publisher,
    failures: FailureHandler,
    health: Health,
    dedup: AtomicU8,
    metrics: Metrics,
    problem: Mutex<Option<String>>,
    stop: CancellationToken,
    flushers: Mutex<Vec<JoinHandle<()>>>,
}

/// Registry schema definitions by (schema id, version).
type SchemaDefinitions = HashMap<(u64, Option<u32>), Arc<Value>>;

struct Table {
    /// Index of the mapping in the config's `tables` (for messages naming a field).
    index: usize,
    mapping: TableMapping,
    database: String,
    name: String,
    label: String,
    spool: Arc<Spool>,
    mapper: RwLock<Option<Arc<Mapper>>>,
    last_refresh: Mutex<Option<Instant>>,
    wake: Notify,
    space: Notify,
    /// CDC mode: the key columns (configured, or the table's `ORDER BY`).
    keys: Mutex<Vec<String>>,
    /// CDC mode: held while the table is created or altered.
    ddl: tokio::sync::Mutex<()>,
}

/// Why a flusher stopped early.
struct Stopped;

impl ClickHouseSink {
    /// A sink for `config`; spools are opened and schemas read in `initialize`.
    pub fn new(config: ClickHouseSinkConfig, settings: SinkSettings) -> Self {
        Self { config, settings, inner: None, stop: CancellationToken::new() }
    }

    fn inner(&self) -> ConnectorResult<&Arc<Inner>> {
        self.inner.as_ref().ok_or_else(|| ConnectorError::fatal_msg("the ClickHouse sink was not initialized"))
    }
}

mod cdc_intake;

use cdc_intake::recovered_targets;

fn spool_dir_name(database: &str, table: &str) -> String {
    format!("{database}.{table}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' { c } else { '_' })
        .collect()
}

#[async_trait]
impl SinkConnector for ClickHouseSink {
    async fn initialize(&mut self, ctx: SinkContext) -> ConnectorResult<()> {
        let metrics = Metrics::register(&ctx).map_err(|e| ConnectorError::fatal("register ClickHouse metrics", e))?;
        let ch = ClickHouse::new(&self.config);
        let dedup = match self.config.deduplication_token {
            DedupMode::Auto => DEDUP_UNKNOWN,
            DedupMode::Always => DEDUP_ON,
            DedupMode::Never => DEDUP_OFF,
        };
        let routes = self.config.tables.iter().enumerate().map(|(i, m)| (m.topic.clone(), (i, m.clone()))).collect();
        let inner = Arc::new(Inner {
            config: self.config.clone(),
            settings: self.settings.clone(),
            ch,
            tables: RwLock::new(HashMap::new()),
            routes,
            opening: tokio::sync::Mutex::new(()),
            schemas: Mutex::new(HashMap::new()),
            retry: RetryPolicy::new(self.settings.retry.clone()),
            publisher: ctx.publisher.clone(),
            failures: ctx.failures.clone(),
            health: ctx.health.clone(),
            dedup: AtomicU8::new(dedup),
            metrics,
            problem: Mutex::new(None),
            stop: self.stop.clone(),
            flushers: Mutex::new(Vec::new()),
        });
        inner.check_server_features().await?;
        for (index, mapping) in self.config.tables.iter().enumerate() {
            if mapping.is_template() {
                // Tables of this topic that a previous run spooled rows for.
                for (database, name) in recovered_targets(&self.config.spool.dir, &mapping.topic) {
                    inner.open_table(index, mapping, database, name).await?;
                }
            } else {
                let (database, name) = mapping.qualified(&self.config.database);
                inner.open_table(index, mapping, database, name).await?;
            }
        }
        for table in inner.all_tables() {
            if let Err(e) = inner.refresh_schema(&table).await {
                warn!(table = %table.label, error = %e.chain(), "cannot read the table's columns yet; records wait until ClickHouse answers");
            }
        }
        self.inner = Some(inner);
        Ok(())
    }

    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()> {
        match self.process_batch(std::slice::from_ref(record)).await {
            Err(ConnectorError::PartialBatch { mut failures }) if failures.len() == 1 => Err(failures.remove(0).1),
            other => other,
        }
    }

    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        let inner = self.inner()?;
        let mut failures: Vec<(usize, ConnectorError)> = Vec::new();
        let mut by_topic: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            if inner.routes.contains_key(&record.topic) {
                by_topic.entry(record.topic.as_str()).or_default().push(index);
            } else {
                failures.push((
                    index,
                    ConnectorError::invalid_msg(format!("no table is mapped for topic {}", record.topic)),
                ));
            }
        }
        for (topic, indices) in by_topic {
            let Some((mapping_index, mapping)) = inner.routes.get(topic) else { continue };
            if mapping.mode == TableMode::Cdc {
                inner.spool_changes(*mapping_index, mapping, records, &indices, &mut failures).await;
                continue;
            }
            let (database, name) = mapping.qualified(&inner.config.database);
            let Some(table) = inner.table(&format!("{database}.{name}")) else { continue };
            inner.spool_records(&table, records, &indices, &mut failures).await;
        }
        if failures.is_empty() {
            Ok(())
        } else {
            failures.sort_by_key(|(index, _)| *index);
            Err(ConnectorError::PartialBatch { failures })
        }
    }

    async fn shutdown(&self) -> ConnectorResult<()> {
        let inner = self.inner()?;
        let tables = inner.all_tables();
        for table in &tables {
            let spool = table.spool.clone();
            match tokio::task::spawn_blocking(move || spool.seal_lingering(None)).await {
                Ok(Ok(_)) => table.wake.notify_one(),
                Ok(Err(e)) => {
                    warn!(table = %table.label, error = %danube_connect_core::error::error_chain(&e), "cannot seal the spool at shutdown")
                }
                Err(e) => warn!(table = %table.label, error = %e, "cannot seal the spool at shutdown"),
            }
        }
        let deadline = Instant::now() + inner.config.shutdown_flush_timeout;
        while Instant::now() < deadline && !tables.iter().all(|t| t.spool.is_empty()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: usize = tables.iter().map(|t| t.spool.pending_ids()).sum();
        if left > 0 {
            warn!(rows = left, "shutdown: rows remain in the spool; they are inserted at the next start");
        } else {
            info!("shutdown: spool empty, every row is in ClickHouse");
        }
        self.stop.cancel();
        let flushers = std::mem::take(&mut *inner.flushers.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for flusher in flushers {
            let _ = flusher.await;
        }
        Ok(())
    }

    async fn health_check(&self) -> ConnectorResult<()> {
        let inner = self.inner()?;
        match inner.problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            Some(problem) => Err(ConnectorError::retryable_msg(problem)),
            None => Ok(()),
        }
    }
}

impl Inner {
    fn set_problem(&self, problem: Option<String>) {
        self.health.set_component("clickhouse", problem.clone());
        *self.problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
    }

    /// Reads the table's columns and replaces its mapper.
    async fn refresh_schema(&self, table: &Table) -> ConnectorResult<Arc<Mapper>> {
        *table.last_refresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        let columns = self
            .ch
            .columns(&table.database, &table.name)
            .await
            .map_err(|e| ConnectorError::retryable(format!("read the columns of {}", table.label), e))?;
        if columns.is_empty() {
            return Err(ConnectorError::retryable_msg(format!("table {} does not exist", table.label)));
        }
        let mapper =
            Arc::new(Mapper::new(columns, &table.mapping).map_err(|message| {
                ConnectorError::fatal_msg(format!("table mapping for {}: {message}", table.label))
            })?);
        if table.mapping.mode == TableMode::Cdc {
            let keys = if table.mapping.key_columns.is_empty() {
                let engine = self
                    .ch
                    .engine_full(&table.database, &table.name)
                    .await
                    .map_err(|e| ConnectorError::retryable(format!("read the engine of {}", table.label), e))?;
                crate::cdc::sorting_key(&engine)
            } else {
                table.mapping.key_columns.clone()
            };
            *table.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        }
        debug!(table = %table.label, columns = mapper.columns().len(), "table columns loaded");
        *table.mapper.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(mapper.clone());
        Ok(mapper)
    }

    fn may_refresh(&self, table: &Table, interval: Duration) -> bool {
        table
            .last_refresh
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() >= interval)
    }

    /// The table's mapper, loading it when missing.
    async fn mapper(&self, table: &Table) -> ConnectorResult<Arc<Mapper>> {
        if let Some(mapper) = table.mapper.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            return Ok(mapper);
        }
        if !self.may_refresh(table, Duration::from_secs(1)) {
            return Err(ConnectorError::Defer {
                delay: Duration::from_secs(5),
                message: format!("the columns of {} are not known yet", table.label),
            });
        }
        match self.refresh_schema(table).await {
            Ok(mapper) => Ok(mapper),
            Err(error @ ConnectorError::Fatal { .. }) => Err(error),
            Err(error) => {
                warn!(table = %table.label, error = %error.chain(), "cannot read the table's columns; handing records back to the broker");
                Err(ConnectorError::Defer { delay: Duration::from_secs(5), message: error.chain() })
            }
        }
    }

    /// Maps and spools `indices` of `records` (all for `table`), pushing per-record failures.
    async fn spool_records(
        &self,
        table: &Arc<Table>,
        records: &[SinkRecord],
        indices: &[usize],
        failures: &mut Vec<(usize, ConnectorError)>,
    ) {
        let mut mapper = match self.mapper(table).await {
            Ok(mapper) => mapper,
            Err(error) => {
                for &index in indices {
                    failures.push((index, copy_error(&error)));
                }
                return;
            }
        };
        let mut groups: HashMap<Vec<u16>, Vec<(u128, Vec<u8>)>> = HashMap::new();
        let mut spooled: Vec<usize> = Vec::new();
        for &index in indices {
            let record = &records[index];
            let mut mapped = mapper.map_record(record);
            if let Err(MapError::UnknownField(_)) = &mapped {
                // Perhaps a column was just added: look again (rate limited).
                if self.may_refresh(table, self.config.schema_refresh_interval) {
                    if let Ok(fresh) = self.refresh_schema(table).await {
                        mapper = fresh;
                        mapped = mapper.map_record(record);
                    }
                }
            }
            match mapped {
                Ok(row) => {
                    groups
                        .entry(row.shape)
                        .or_default()
                        .push((record_id(&record.message_id(), record.publish_time, &record.producer_name), row.line));
                    spooled.push(index);
                }
                Err(error) => failures.push((
                    index,
                    ConnectorError::invalid(format!("record does not fit table {}", table.label), error),
                )),
            }
        }
        let groups: Vec<RowGroup> =
            groups.into_iter().map(|(shape, rows)| (mapper.insert_columns(&shape), rows)).collect();
        self.append_rows(table, groups, spooled, failures).await;
    }

    /// Appends mapped rows (of the records at `spooled`) to the table's spool, pushing a
    /// failure per record when that fails.
    async fn append_rows(
        &self,
        table: &Arc<Table>,
        groups: Vec<RowGroup>,
        spooled: Vec<usize>,
        failures: &mut Vec<(usize, ConnectorError)>,
    ) {
        if spooled.is_empty() {
            return;
        }
        if let Err(error) = self.wait_for_space(table).await {
            for index in spooled {
                failures.push((index, copy_error(&error)));
            }
            return;
        }
        let spool = table.spool.clone();
        let result = tokio::task::spawn_blocking(move || spool.append(groups)).await;
        let label = [self.settings.connector_name.as_str(), table.label.as_str()];
        match result {
            Ok(Ok(outcome)) => {
                if outcome.duplicates > 0 {
                    self.metrics.duplicates.with_label_values(&label).inc_by(outcome.duplicates as u64);
                    debug!(table = %table.label, duplicates = outcome.duplicates, "redelivered records were already spooled");
                }
                self.metrics.spool_bytes.with_label_values(&label).set(table.spool.bytes() as i64);
                if outcome.appended > 0 {
                    // A sealed segment to insert, or a new linger deadline to watch.
                    table.wake.notify_one();
                }
            }
            Ok(Err(error)) => {
                let error: Arc<SpoolError> = Arc::new(error);
                error!(table = %table.label, error = %danube_connect_core::error::error_chain(error.as_ref()), "spool append failed");
                for index in spooled {
                    failures.push((
                        index,
                        ConnectorError::retryable("append to the spool", SharedSpoolError(error.clone())),
                    ));
                }
            }
            Err(join) => {
                let message = format!("spool append task failed: {join}");
                for index in spooled {
                    failures.push((index, ConnectorError::retryable_msg(message.clone())));
                }
            }
        }
    }

    /// Waits while the table's spool is over `spool.max_bytes` (ClickHouse is behind).
    async fn wait_for_space(&self, table: &Table) -> ConnectorResult<()> {
        let started = Instant::now();
        while table.spool.bytes() >= self.config.spool.max_bytes {
            if started.elapsed() >= self.config.spool.full_wait {
                return Err(ConnectorError::Defer {
                    delay: self.config.spool.full_wait,
                    message: format!("the spool of {} is full; ClickHouse is behind", table.label),
                });
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), table.space.notified()).await;
        }
        Ok(())
    }

    /// Refuses settings the server cannot honour (when it answers at all; otherwise the
    /// first insert finds out and retries).
    async fn check_server_features(&self) -> ConnectorResult<()> {
        let needs_version = self.config.async_insert || self.config.deduplication_token == DedupMode::Always;
        if !needs_version {
            return Ok(());
        }
        let (major, minor) = match self.ch.version().await {
            Ok(version) => version,
            Err(e) => {
                warn!(error = %danube_connect_core::error::error_chain(&e), "cannot read the ClickHouse version at start");
                return Ok(());
            }
        };
        if self.config.async_insert && (major, minor) < (21, 11) {
            return Err(ConnectorError::fatal_msg(format!(
                "connector.async_insert needs ClickHouse 21.11 or later; the server is {major}.{minor}"
            )));
        }
        if self.config.deduplication_token == DedupMode::Always && (major, minor) < (22, 2) {
            return Err(ConnectorError::fatal_msg(format!(
                "connector.deduplication_token = \"always\" needs ClickHouse 22.2 or later; the server is {major}.{minor} (use \"auto\")"
            )));
        }
        Ok(())
    }

    async fn dedup_enabled(&self) -> Result<bool, ClickHouseError> {
        match self.dedup.load(Ordering::Relaxed) {
            DEDUP_ON => Ok(true),
            DEDUP_OFF => Ok(false),
            _ => {
                let (major, minor) = self.ch.version().await?;
                let supported = (major, minor) >= (22, 2);
                info!(version = %format!("{major}.{minor}"), insert_deduplication_token = supported, "ClickHouse version detected");
                self.dedup.store(if supported { DEDUP_ON } else { DEDUP_OFF }, Ordering::Relaxed);
                Ok(supported)
            }
        }
    }

    /// One insert of `rows` (tagged with `token`), retried with backoff while ClickHouse is
    /// unavailable; returns the rejection when the server refuses the data. With a batch
    /// id column, an insert whose earlier attempt may have landed (`uncertain`) is first
    /// looked up by its token and skipped when it is already there.
    async fn insert_with_retry(
        &self,
        table: &Table,
        columns: &[String],
        rows: &[Vec<u8>],
        token: &str,
        mut uncertain: bool,
        stop: &CancellationToken,
    ) -> Result<Result<(), ClickHouseError>, Stopped> {
        let label = [self.settings.connector_name.as_str(), table.label.as_str()];
        let batch_column = table.mapping.batch_id_column.as_deref();
        let mut columns = columns.to_vec();
        if let Some(column) = batch_column {
            columns.push(column.to_string());
        }
        let body = json_each_row(rows, batch_column.map(|c| (c, token)));
        let mut delays = self.retry.delays();
        loop {
            let result = match (uncertain, batch_column) {
                (true, Some(column)) => match self.ch.count_token(&table.database, &table.name, column, token).await {
                    Ok(present) if present >= rows.len() as u64 => {
                        self.metrics.inserts.with_label_values(&[label[0], label[1], "already_present"]).inc();
                        info!(table = %table.label, token, rows = rows.len(), "batch already in ClickHouse (an earlier attempt landed); not inserting it again");
                        self.set_problem(None);
                        return Ok(Ok(()));
                    }
                    Ok(present) => {
                        if present > 0 {
                            warn!(table = %table.label, token, present, rows = rows.len(), "part of the batch is already in ClickHouse; inserting it whole (duplicates)");
                        }
                        self.insert_once(table, &columns, &body, token).await
                    }
                    Err(error) => Err(error),
                },
                _ => self.insert_once(table, &columns, &body, token).await,
            };
            let error = match result {
                Ok(()) => {
                    self.metrics.inserts.with_label_values(&[label[0], label[1], "ok"]).inc();
                    self.set_problem(None);
                    return Ok(Ok(()));
                }
                Err(error @ ClickHouseError::Rejected { .. }) => {
                    self.metrics.inserts.with_label_values(&[label[0], label[1], "rejected"]).inc();
                    return Ok(Err(error));
                }
                Err(error) => error,
            };
            // The request may have reached the server: look before inserting again.
            uncertain = true;
            self.metrics.inserts.with_label_values(&[label[0], label[1], "retryable"]).inc();
            let chain = danube_connect_core::error::error_chain(&error);
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            warn!(table = %table.label, error = %chain, retry_in = ?delay, "insert failed; the rows stay in the spool");
            self.set_problem(Some(format!("inserts into {} failing: {chain}", table.label)));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return Err(Stopped),
            }
        }
    }

    async fn insert_once(
        &self,
        table: &Table,
        columns: &[String],
        body: &[u8],
        token: &str,
    ) -> Result<(), ClickHouseError> {
        let dedup = self.dedup_enabled().await?;
        self.ch.insert(&table.database, &table.name, columns, body.to_vec(), dedup.then_some(token)).await
    }

    /// Inserts one sealed segment; rows ClickHouse refuses go to the dead-letter topic.
    async fn insert_segment(
        &self,
        table: &Table,
        loaded: &LoadedSegment,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        if loaded.rows.is_empty() {
            return Ok(());
        }
        let token = loaded.token(&table.label);
        let started = Instant::now();
        let uncertain = loaded.segment.recovered;
        match self.insert_with_retry(table, &loaded.columns, &loaded.rows, &token, uncertain, stop).await? {
            Ok(()) => {
                self.count_inserted(table, loaded.rows.len());
                debug!(table = %table.label, rows = loaded.rows.len(), took = ?started.elapsed(), "segment inserted");
                Ok(())
            }
            Err(rejection) => self.salvage(table, loaded, &token, rejection, stop).await,
        }
    }

    fn count_inserted(&self, table: &Table, rows: usize) {
        self.metrics
            .rows_inserted
            .with_label_values(&[self.settings.connector_name.as_str(), table.label.as_str()])
            .inc_by(rows as u64);
    }

    /// ClickHouse refused a segment (its schema changed since the rows were spooled, or a
    /// type the sink passes through unchecked): re-read the columns, re-map every row, and
    /// insert in halves until each refused row is isolated and dead-lettered.
    async fn salvage(
        &self,
        table: &Table,
        loaded: &LoadedSegment,
        token: &str,
        rejection: ClickHouseError,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        warn!(table = %table.label, segment = %loaded.segment.name, error = %danube_connect_core::error::error_chain(&rejection), "ClickHouse refused a spooled segment; re-reading the columns and isolating the bad rows");
        let mut delays = self.retry.delays();
        let mapper = loop {
            match self.refresh_schema(table).await {
                Ok(mapper) => break mapper,
                Err(error) => {
                    self.set_problem(Some(error.chain()));
                    tokio::select! {
                        _ = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))) => {}
                        _ = stop.cancelled() => return Err(Stopped),
                    }
                }
            }
        };
        let mut groups: HashMap<Vec<u16>, Vec<Vec<u8>>> = HashMap::new();
        for row in &loaded.rows {
            let remapped = serde_json::from_slice::<serde_json::Map<String, Value>>(row)
                .map_err(MapError::NotJson)
                .and_then(|object| mapper.map_object(&object, &[], UnknownFields::Ignore));
            match remapped {
                Ok(encoded) => groups.entry(encoded.shape).or_default().push(encoded.line),
                Err(error) => {
                    self.dead_letter(table, row, &danube_connect_core::error::error_chain(&error), 1, stop).await?
                }
            }
        }
        let mut shapes: Vec<(Vec<u16>, Vec<Vec<u8>>)> = groups.into_iter().collect();
        shapes.sort();
        for (group, (shape, rows)) in shapes.iter().enumerate() {
            let columns = mapper.insert_columns(shape);
            // Each range with the inserts its rows were in: the segment's, then one per half.
            let mut stack = vec![(0usize, rows.len(), 2usize)];
            while let Some((from, to, attempts)) = stack.pop() {
                let part_token = format!("{token}:s{group}:{from}-{to}");
                let uncertain = loaded.segment.recovered;
                match self.insert_with_retry(table, &columns, &rows[from..to], &part_token, uncertain, stop).await? {
                    Ok(()) => self.count_inserted(table, to - from),
                    Err(error) if to - from == 1 => {
                        let error = danube_connect_core::error::error_chain(&error);
                        self.dead_letter(table, &rows[from], &error, attempts, stop).await?
                    }
                    Err(_) => {
                        let mid = from + (to - from) / 2;
                        stack.push((mid, to, attempts + 1));
                        stack.push((from, mid, attempts + 1));
                    }
                }
            }
        }
        Ok(())
    }

    /// A row ClickHouse refused after it was spooled and acked to Danube, after `attempts`
    /// inserts that carried it: core's `failure.policy` applies. It was acked to Danube
    /// already, so `nack` acts as `stop`; with `stop` (or `nack`) the flusher stops and the
    /// segment stays in the spool, to be inserted again at the next start.
    async fn dead_letter(
        &self,
        table: &Table,
        row: &[u8],
        error: &str,
        attempts: usize,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let mut attributes = HashMap::new();
        attributes.insert("clickhouse.table".to_string(), table.label.clone());
        let failed = Undeliverable {
            payload: row.to_vec().into(),
            attributes,
            routing_key: None,
            source_topic: table.mapping.topic.clone(),
            source_offset: None,
            error: error.to_string(),
            kind: "invalid",
            attempts,
        };
        match self.failures.with_stop(stop.clone()).undeliverable(failed, Handback::Impossible).await {
            Delivery::Published | Delivery::DeadLettered => {
                self.metrics
                    .dead_lettered
                    .with_label_values(&[self.settings.connector_name.as_str(), table.label.as_str()])
                    .inc();
                warn!(table = %table.label, error, "a spooled row was refused by ClickHouse and dead-lettered");
                Ok(())
            }
            Delivery::Refused | Delivery::Stopped | Delivery::NotDelivered { .. } => {
                error!(table = %table.label, error, "a spooled row was refused by ClickHouse and not dead-lettered; its segment stays in the spool");
                Err(Stopped)
            }
        }
    }
}

/// Runs a table's flusher until stopped, starting it again (after a backoff) when it
/// panics: intake keeps acking records into the spool, so inserts must not stop for good.
async fn supervise_flusher(inner: Arc<Inner>, table: Arc<Table>, stop: CancellationToken) {
    let mut backoff = inner.retry.backoff();
    loop {
        let task = tokio::spawn(flusher(inner.clone(), table.clone(), stop.clone()));
        let join = match task.await {
            Ok(()) => return,
            Err(join) => join,
        };
        if stop.is_cancelled() {
            return;
        }
        let delay = backoff.next_delay();
        error!(table = %table.label, error = %join, restart_in = ?delay, "the flusher failed; restarting it (the rows stay in the spool)");
        inner.set_problem(Some(format!("the flusher of {} failed: {join}", table.label)));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Seals lingering segments and inserts sealed ones, oldest first, until stopped. A spool
/// error is reported to health and retried with backoff; it never ends the loop.
async fn flusher(inner: Arc<Inner>, table: Arc<Table>, stop: CancellationToken) {
    let linger = inner.config.batch.max_linger;
    let label = [inner.settings.connector_name.clone(), table.label.clone()];
    let mut spool_backoff = inner.retry.backoff();
    // Waits a backoff step after a spool failure; false when stopped meanwhile.
    let pause = |backoff: &mut Backoff, problem: String| {
        let delay = backoff.next_delay();
        error!(table = %table.label, error = %problem, retry_in = ?delay, "spool operation failed; retrying");
        inner.set_problem(Some(format!("spool of {}: {problem}", table.label)));
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => true,
                _ = stop.cancelled() => false,
            }
        }
    };
    loop {
        let spool = table.spool.clone();
        match tokio::task::spawn_blocking(move || spool.seal_lingering(Some(linger))).await {
            Ok(Ok(_)) => {}
            // The segments are queued anyway; only the directory sync failed.
            Ok(Err(error)) => {
                error!(table = %table.label, error = %danube_connect_core::error::error_chain(&error), "cannot seal a spool segment")
            }
            Err(join) => error!(table = %table.label, error = %join, "spool seal task failed"),
        }
        while let Some(segment) = table.spool.front() {
            let spool = table.spool.clone();
            let seg = segment.clone();
            let loaded = match tokio::task::spawn_blocking(move || spool.load(&seg)).await {
                Ok(Ok(loaded)) => loaded,
                Ok(Err(error)) => {
                    if pause(&mut spool_backoff, danube_connect_core::error::error_chain(&error)).await {
                        continue;
                    }
                    return;
                }
                Err(join) => {
                    if pause(&mut spool_backoff, format!("spool read task failed: {join}")).await {
                        continue;
                    }
                    return;
                }
            };
            if inner.insert_segment(&table, &loaded, &stop).await.is_err() {
                return;
            }
            let loaded = Arc::new(loaded);
            // The rows are in ClickHouse: only the bookkeeping is retried, never the insert.
            loop {
                let spool = table.spool.clone();
                let done = loaded.clone();
                let problem = match tokio::task::spawn_blocking(move || spool.complete(&done)).await {
                    Ok(Ok(())) => break,
                    Ok(Err(error)) => format!(
                        "cannot mark an inserted segment done: {}",
                        danube_connect_core::error::error_chain(&error)
                    ),
                    Err(join) => format!("spool complete task failed: {join}"),
                };
                if !pause(&mut spool_backoff, problem).await {
                    return;
                }
            }
            spool_backoff.reset();
            inner.set_problem(None);
            inner.metrics.spool_bytes.with_label_values(&[&label[0], &label[1]]).set(table.spool.bytes() as i64);
            table.space.notify_waiters();
        }
        let deadline = table.spool.next_deadline(linger).map(tokio::time::Instant::from_std);
        let wait = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = table.wake.notified() => {}
            _ = wait => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// A copy of a per-batch error for each record it applies to.
fn copy_error(error: &ConnectorError) -> ConnectorError {
    match error {
        ConnectorError::Defer { delay, message } => ConnectorError::Defer { delay: *delay, message: message.clone() },
        ConnectorError::Fatal { .. } => ConnectorError::fatal_msg(error.chain()),
        ConnectorError::InvalidRecord { .. } => ConnectorError::invalid_msg(error.chain()),
        _ => ConnectorError::retryable_msg(error.chain()),
    }
}

/// One spool error shared as the source of several record errors.
#[derive(Debug)]
struct SharedSpoolError(Arc<SpoolError>);

impl std::fmt::Display for SharedSpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", danube_connect_core::error::error_chain(self.0.as_ref()))
    }
}

impl std::error::Error for SharedSpoolError {}
