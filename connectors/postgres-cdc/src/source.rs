//! The [`SourceConnector`]: `poll` hands out decoded changes, `commit` passes Danube's acks
//! back to the replication task, which confirms the matching LSN to PostgreSQL.

use danube_connect_core::retry::Backoff;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use danube_connect_core::{
    async_trait, ConnectorError, ConnectorResult, SourceConnector, SourceContext, SourceOffset, SourceRecord,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::PostgresCdcConfig;
use crate::error::CdcError;
use crate::metrics::{CdcMetrics, SlotLost, SlotMonitor};
use crate::schema::TableSchemas;
use crate::setup;
use crate::stream::{Item, Progress, Stream};

/// How long `poll` waits for the first record when idle.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// How long startup retries an unreachable PostgreSQL.
const STARTUP_RETRY: Duration = Duration::from_secs(60);

/// PostgreSQL CDC source.
pub struct PostgresCdcSource {
    config: Arc<PostgresCdcConfig>,
    rx: Option<mpsc::Receiver<Item>>,
    /// A handed-off batch that did not fit in the last `poll`.
    carry: Option<Vec<SourceRecord>>,
    acked: watch::Sender<u64>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
    held_error: Option<ConnectorError>,
    lost: Arc<SlotLost>,
    monitor: Option<JoinHandle<()>>,
}

impl PostgresCdcSource {
    /// A source for `config` (connects in `initialize`).
    pub fn new(config: PostgresCdcConfig) -> Self {
        Self {
            config: Arc::new(config),
            rx: None,
            carry: None,
            acked: watch::channel(0).0,
            stop: CancellationToken::new(),
            task: None,
            progress: Arc::new(Progress::default()),
            held_error: None,
            lost: Arc::new(SlotLost::default()),
            monitor: None,
        }
    }

    async fn check(&self, conn: &crate::config::Connection) -> Result<(), CdcError> {
        let client = setup::connect(conn).await?;
        setup::prepare(&client, &self.config).await?;
        setup::wait_slot_free(&client, &self.config, self.config.slot_wait).await
    }

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
        let Some(rx) = self.rx.as_mut() else { return Err(ConnectorError::fatal_msg("poll before initialize")) };
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
impl SourceConnector for PostgresCdcSource {
    async fn initialize(&mut self, ctx: SourceContext) -> ConnectorResult<()> {
        let conn = self.config.connection().map_err(|e| ConnectorError::fatal("connector config", e))?;
        // Fail fast with a clear message on setup problems (wal_level, privileges, tables,
        // a slot held by another instance); an unreachable server is retried for a minute
        // (container start order). The task repeats these checks on every reconnect.
        let started = std::time::Instant::now();
        let mut backoff = Backoff::between(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            match self.check(&conn).await {
                Ok(()) => break,
                Err(error) if error.is_transient() && started.elapsed() < STARTUP_RETRY => {
                    let delay = backoff.next_delay();
                    warn!(error = %danube_connect_core::error::error_chain(&error), retry_in = ?delay, "postgres not reachable yet");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error.into_connector()),
            }
        }
        let metrics = CdcMetrics::register(&ctx.metrics, &self.config.slot)
            .map_err(|e| ConnectorError::fatal("register the postgres-cdc metrics", e))?;
        let monitor = SlotMonitor {
            config: self.config.clone(),
            conn: conn.clone(),
            metrics: metrics.clone(),
            health: ctx.health.clone(),
            lost: self.lost.clone(),
            stop: self.stop.clone(),
        };
        self.monitor = Some(tokio::spawn(monitor.run()));
        let (tx, rx) = crate::stream::channel(&self.config);
        let (acked_tx, acked_rx) = watch::channel(0u64);
        self.acked = acked_tx;
        self.rx = Some(rx);
        let schemas = TableSchemas::new(self.config.clone(), ctx.publisher);
        let stream = Stream::new(self.config.clone(), conn, tx, acked_rx, self.stop.clone(), self.progress.clone())
            .with_schemas(schemas)
            .with_metrics(metrics);
        self.task = Some(tokio::spawn(stream.run()));
        Ok(())
    }

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
