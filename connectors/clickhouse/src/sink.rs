//! The ClickHouse sink: maps records to rows, spools them durably (the runtime acks Danube
//! once `process_batch` returns), and a flusher per table inserts spooled segments.
//!
//! Why a spool: the broker dispatches only `max_unacked_messages` (default 10) records
//! before it sees acks, so a 10,000-row insert cannot be built by holding acks. Records
//! are instead acked once their rows are synced to the local spool, and each spool
//! segment is deleted only after ClickHouse accepted its insert. See the README.

use std::collections::HashMap;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use danube_connect_core::config::ConfigError;
use danube_connect_core::failure::FailureHandler;
use danube_connect_core::retry::RetryPolicy;
use danube_connect_core::Health;
use danube_connect_core::{
    async_trait, ConnectorError, ConnectorResult, Context, Factory, Publisher, Sink, SinkRecord,
};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::cdc_intake::recovered_targets;
use self::insert::{DEDUP_OFF, DEDUP_ON, DEDUP_UNKNOWN};
use self::metrics::Metrics;
use crate::client::ClickHouse;
use crate::config::{ClickHouseSinkConfig, DedupMode, TableMapping, TableMode};
use crate::mapping::Mapper;
use crate::spool::Spool;

mod cdc_intake;
mod flusher;
mod insert;
mod intake;
mod metrics;

/// The ClickHouse sink, built (no I/O) from its configuration; started, it opens the
/// spools, checks the server and returns the running [`ClickHouseSink`]. Inserts retry
/// with `retry.*` from the runtime's [`Context`].
#[derive(Debug)]
pub struct ClickHouseSinkFactory {
    config: ClickHouseSinkConfig,
}

impl ClickHouseSinkFactory {
    /// A sink for `config` (validated at load).
    pub fn build(config: ClickHouseSinkConfig) -> Result<Self, ConfigError> {
        Ok(Self { config })
    }
}

/// The running sink.
pub struct ClickHouseSink {
    config: ClickHouseSinkConfig,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink").field("url", &self.config.url).finish_non_exhaustive()
    }
}

struct Inner {
    config: ClickHouseSinkConfig,
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

fn spool_dir_name(database: &str, table: &str) -> String {
    format!("{database}.{table}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' { c } else { '_' })
        .collect()
}

#[async_trait]
impl Factory for ClickHouseSinkFactory {
    type Connector = ClickHouseSink;

    async fn start(self, ctx: Context) -> ConnectorResult<ClickHouseSink> {
        let metrics =
            Metrics::register(ctx.metrics()).map_err(|e| ConnectorError::fatal("register ClickHouse metrics", e))?;
        let stop = CancellationToken::new();
        let ch = ClickHouse::new(&self.config);
        let dedup = match self.config.deduplication_token {
            DedupMode::Auto => DEDUP_UNKNOWN,
            DedupMode::Always => DEDUP_ON,
            DedupMode::Never => DEDUP_OFF,
        };
        let routes = self.config.tables.iter().enumerate().map(|(i, m)| (m.topic.clone(), (i, m.clone()))).collect();
        let inner = Arc::new(Inner {
            config: self.config.clone(),
            ch,
            tables: RwLock::new(HashMap::new()),
            routes,
            opening: tokio::sync::Mutex::new(()),
            schemas: Mutex::new(HashMap::new()),
            retry: ctx.retry().clone(),
            publisher: ctx.publisher().clone(),
            failures: ctx.failures().clone(),
            health: ctx.health().clone(),
            dedup: AtomicU8::new(dedup),
            metrics,
            problem: Mutex::new(None),
            stop: stop.clone(),
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
        Ok(ClickHouseSink { config: self.config, inner, stop })
    }
}

#[async_trait]
impl Sink for ClickHouseSink {
    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()> {
        match self.process_batch(std::slice::from_ref(record)).await {
            Err(ConnectorError::PartialBatch { mut failures }) if failures.len() == 1 => Err(failures.remove(0).1),
            other => other,
        }
    }

    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        let inner = &self.inner;
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
        let inner = &self.inner;
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
        let inner = &self.inner;
        match inner.problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            Some(problem) => Err(ConnectorError::retryable_msg(problem)),
            None => Ok(()),
        }
    }
}

impl Inner {
    /// Reports a problem (or its end) to health and [`Sink::health_check`].
    fn set_problem(&self, problem: Option<String>) {
        self.health.set_component("clickhouse", problem.clone());
        *self.problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
    }
}
