//! The [`PostgresCdc`] factory and the running [`PostgresCdcSource`]: `poll` hands out
//! decoded changes, `commit` passes Danube's acks back to the replication task, which
//! confirms the matching LSN to PostgreSQL.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use danube_connect_core::config::ConfigError;
use danube_connect_core::{
    async_trait, ConnectorError, ConnectorResult, Context, Factory, PullSource, SourceOffset, SourceRecord,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::{Connection, PostgresCdcConfig};
use crate::error::CdcError;
use crate::metrics::{CdcMetrics, SlotLost, SlotMonitor};
use crate::schema::TableSchemas;
use crate::setup;
use crate::stream::{Item, Progress, Stream};

/// How long `poll` waits for the first record when idle.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// How long startup retries an unreachable PostgreSQL.
const STARTUP_RETRY: Duration = Duration::from_secs(60);

/// The PostgreSQL CDC source, built (no I/O) from its configuration; started, it checks the
/// server and starts the replication task.
#[derive(Debug)]
pub struct PostgresCdc {
    config: Arc<PostgresCdcConfig>,
    conn: Connection,
}

impl PostgresCdc {
    /// The pure build: resolves the connection settings (`connector.url` and the fields).
    pub fn build(config: PostgresCdcConfig) -> Result<Self, ConfigError> {
        let conn = config.connection()?;
        Ok(Self { config: Arc::new(config), conn })
    }

    async fn check(&self) -> Result<(), CdcError> {
        let client = setup::connect(&self.conn).await?;
        setup::prepare(&client, &self.config).await?;
        setup::wait_slot_free(&client, &self.config, self.config.slot_wait).await
    }
}

#[async_trait]
impl Factory for PostgresCdc {
    type Connector = PostgresCdcSource;

    async fn start(self, ctx: Context) -> ConnectorResult<PostgresCdcSource> {
        // Fail fast with a clear message on setup problems (wal_level, privileges, tables,
        // a slot held by another instance); an unreachable server is retried for a minute
        // (container start order), or until shutdown. The task repeats these checks on every
        // reconnect.
        let started = std::time::Instant::now();
        let mut backoff = ctx.retry().backoff();
        loop {
            match self.check().await {
                Ok(()) => break,
                Err(error) if error.is_transient() && started.elapsed() < STARTUP_RETRY => {
                    let delay = backoff.next_delay();
                    warn!(error = %danube_connect_core::error::error_chain(&error), retry_in = ?delay, "postgres not reachable yet");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = ctx.shutdown().cancelled() => return Err(error.into_connector()),
                    }
                }
                Err(error) => return Err(error.into_connector()),
            }
        }
        let metrics = CdcMetrics::register(ctx.metrics(), &self.config.slot)
            .map_err(|e| ConnectorError::fatal("register the postgres-cdc metrics", e))?;
        let stop = CancellationToken::new();
        let lost = Arc::new(SlotLost::default());
        let progress = Arc::new(Progress::default());
        let monitor = SlotMonitor {
            config: self.config.clone(),
            conn: self.conn.clone(),
            metrics: metrics.clone(),
            health: ctx.health().clone(),
            lost: lost.clone(),
            stop: stop.clone(),
        };
        let monitor = tokio::spawn(monitor.run());
        let (tx, rx) = crate::stream::channel(&self.config);
        let (acked, acked_rx) = watch::channel(0u64);
        let schemas = TableSchemas::new(self.config.clone(), ctx.publisher().clone());
        let stream = Stream::new(self.config.clone(), self.conn, tx, acked_rx, stop.clone(), progress.clone())
            .with_schemas(schemas)
            .with_metrics(metrics);
        let task = Some(tokio::spawn(stream.run()));
        Ok(PostgresCdcSource {
            config: self.config,
            rx,
            carry: None,
            acked,
            stop,
            task,
            progress,
            held_error: None,
            lost,
            monitor: Some(monitor),
        })
    }
}

/// The running PostgreSQL CDC source.
pub struct PostgresCdcSource {
    config: Arc<PostgresCdcConfig>,
    rx: mpsc::Receiver<Item>,
    /// A handed-off batch that did not fit in the last `poll`.
    carry: Option<Vec<SourceRecord>>,
    acked: watch::Sender<u64>,
    stop: CancellationToken,
    /// Taken at shutdown.
    task: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
    held_error: Option<ConnectorError>,
    lost: Arc<SlotLost>,
    /// Taken at shutdown.
    monitor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PostgresCdcSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCdcSource").field("slot", &self.config.slot).finish_non_exhaustive()
    }
}

impl PostgresCdcSource {
    /// Replication progress (confirmed LSN, streaming state).
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// The next records for `poll`: the batches the replication task handed off, merged up
    /// to `connector.max_batch` (a batch that does not fit waits for the next call); an empty
    /// `Vec` after a short wait when idle.
    async fn next_batch(&mut self) -> ConnectorResult<Vec<SourceRecord>> {
        if let Some(error) = self.held_error.take() {
            return Err(error);
        }
        if let Some(error) = self.lost.take() {
            return Err(error.into_connector());
        }
        let rx = &mut self.rx;
        let mut batch = match self.carry.take() {
            Some(batch) => batch,
            None => {
                let received = tokio::select! {
                    received = tokio::time::timeout(IDLE_WAIT, rx.recv()) => received,
                    // The slot monitor found the slot invalidated: stop now, even with records buffered.
                    _ = self.lost.signal.cancelled() => {
                        return Err(self.lost.take().map_or_else(
                            || ConnectorError::fatal_msg("the replication slot was invalidated"),
                            CdcError::into_connector,
                        ));
                    }
                };
                match received {
                    Err(_) => return Ok(Vec::new()),
                    Ok(Some(Item::Records(records))) => records,
                    Ok(Some(Item::Failed(error))) => return Err(error),
                    Ok(None) => {
                        if self.progress.finished.load(Ordering::Acquire) {
                            tokio::time::sleep(IDLE_WAIT).await;
                            return Ok(Vec::new());
                        }
                        return Err(ConnectorError::fatal_msg("the replication task ended"));
                    }
                }
            }
        };
        while batch.len() < self.config.max_batch {
            match rx.try_recv() {
                Ok(Item::Records(records)) if batch.len() + records.len() <= self.config.max_batch => {
                    batch.extend(records)
                }
                Ok(Item::Records(records)) => {
                    self.carry = Some(records);
                    break;
                }
                Ok(Item::Failed(error)) => {
                    self.held_error = Some(error);
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }
}

#[async_trait]
impl PullSource for PostgresCdcSource {
    async fn poll(&mut self) -> ConnectorResult<Vec<SourceRecord>> {
        self.next_batch().await
    }

    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> ConnectorResult<()> {
        if let Some(max) = offsets.iter().filter(|o| o.partition == self.config.slot).map(|o| o.position).max() {
            self.acked.send_if_modified(|acked| {
                let advance = max > *acked;
                if advance {
                    *acked = max;
                }
                advance
            });
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> ConnectorResult<()> {
        self.stop.cancel();
        if let Some(monitor) = self.monitor.take() {
            // Read-only: nothing to finish.
            monitor.abort();
        }
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(15), task).await.is_err() {
                warn!("replication task did not stop within 15s");
            }
        }
        Ok(())
    }

    async fn health_check(&self) -> ConnectorResult<()> {
        match &self.task {
            Some(task) if task.is_finished() && !self.progress.finished.load(Ordering::Acquire) => {
                Err(ConnectorError::fatal_msg("replication task ended"))
            }
            _ => Ok(()),
        }
    }
}
