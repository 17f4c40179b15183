//! The two traits a connector implements, and what the runtime hands them.
//!
//! **Pull sources** (Kafka, PostgreSQL CDC) implement [`SourceConnector::poll`] and
//! [`SourceConnector::commit`]: the runtime publishes what `poll` returns and calls `commit`
//! with the offsets of records Danube acked, in poll order.
//!
//! **Push sources** (HTTP, MQTT) keep the [`Publisher`] from [`SourceContext`] in
//! `initialize`, start their server, and call [`Publisher::publish`] per request; it
//! returns after Danube acked the record, so they answer their client after the ack.
//! They leave `poll` at its default, which returns no records every second, so the
//! runtime keeps calling their `health_check` (every 5 s) for `/readyz`. A push source
//! can also be run with [`Runtime::run_push_source`](crate::Runtime::run_push_source):
//! never polled, health-checked on its own timer.
//!
//! **Sinks** implement [`SinkConnector::process`] (or `process_batch`); the runtime acks
//! each record to Danube only after it returned `Ok`.

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::ConnectorResult;
use crate::failure::FailureHandler;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::publisher::Publisher;
use crate::record::{SinkRecord, SourceOffset, SourceRecord};

/// What a source gets at start.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The connector instance name.
    pub name: String,
    /// Publishes records and waits for Danube's ack (for push sources).
    pub publisher: Publisher,
    /// Cancelled when the connector must stop taking in new data.
    pub shutdown: CancellationToken,
    /// Metrics registry shared with the runtime.
    pub metrics: Metrics,
    /// Readiness state; a source may mark parts of itself degraded.
    pub health: Health,
    /// `failure.policy` for records a push source cannot deliver
    /// ([`FailureHandler::publish_or_dead_letter`]).
    pub failures: FailureHandler,
}

/// What a sink gets at start.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The connector instance name.
    pub name: String,
    /// Publishes records (e.g. for a sink that also produces to Danube).
    pub publisher: Publisher,
    /// Cancelled when the connector must stop.
    pub shutdown: CancellationToken,
    /// Metrics registry shared with the runtime.
    pub metrics: Metrics,
    /// Readiness state.
    pub health: Health,
    /// `failure.policy` for records the sink cannot deliver after it acked them to Danube
    /// (e.g. rows its outside system refuses later).
    pub failures: FailureHandler,
}

/// Moves data from an outside system into Danube.
#[async_trait]
pub trait SourceConnector: Send + Sync + 'static {
    /// The Danube topics this source writes to that its configuration names outright (no
    /// template). The runtime creates them before [`initialize`](Self::initialize), together
    /// with the other topics known at start, shorter names first: Danube refuses to create a
    /// topic once a topic whose name extends it exists, so creating them in the order the
    /// first records happen to arrive could refuse one of them for good. A topic Danube
    /// refuses stops the start with the topic and the fix.
    fn topics_at_start(&self) -> Vec<String> {
        Vec::new()
    }

    /// Connects to the outside system; push sources start their server here.
    async fn initialize(&mut self, ctx: SourceContext) -> ConnectorResult<()>;

    /// Returns the next records (an empty `Vec` when idle, after waiting a little).
    ///
    /// Return within about a second when idle so acked offsets are committed promptly.
    /// At shutdown the future may be dropped: records not yet returned must still be
    /// readable from the outside system later (they were not committed there).
    /// Push sources keep the default, which waits a second and returns no records: the
    /// runtime calls [`health_check`](Self::health_check) between polls (every 5 s), so a
    /// source run in [`SourceDrive::Poll`](crate::runtime::SourceDrive::Poll) must not replace
    /// it with a poll that never returns; a push source run with
    /// [`Runtime::run_push_source`](crate::Runtime::run_push_source) is never polled and is
    /// health-checked on its own timer.
    ///
    /// Several records may carry the same [`SourceOffset`] (all rows of one transaction),
    /// also across polls: a poll may end in the middle of an offset and the next one
    /// continue it, as long as records of one offset are consecutive. The runtime commits
    /// an offset only after every record carrying it was acked, including those of the
    /// following poll: it holds the commit back until the next poll has returned and, if
    /// that poll continues the offset, until that batch is acked too. At shutdown the last
    /// acked offset is committed even if the interrupted poll would have continued it, so
    /// end a poll at an offset boundary when you can.
    async fn poll(&mut self) -> ConnectorResult<Vec<SourceRecord>> {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        Ok(Vec::new())
    }

    /// Commits offsets whose every record Danube acked (called in poll order).
    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> ConnectorResult<()> {
        let _ = offsets;
        Ok(())
    }

    /// Stops intake and finishes in-flight work (push sources answer their pending
    /// requests here); the publisher still works until this returns.
    async fn shutdown(&mut self) -> ConnectorResult<()> {
        Ok(())
    }

    /// Whether the connector can do its work (reported on `/readyz`). Called by the
    /// runtime between polls, at most every 5 s.
    async fn health_check(&self) -> ConnectorResult<()> {
        Ok(())
    }
}

/// Moves data from Danube into an outside system.
#[async_trait]
pub trait SinkConnector: Send + Sync + 'static {
    /// Connects to the outside system.
    async fn initialize(&mut self, ctx: SinkContext) -> ConnectorResult<()> {
        let _ = ctx;
        Ok(())
    }

    /// Writes one record. `Ok` means it is durable in the outside system.
    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()>;

    /// Writes a batch; the default writes each record and reports the ones that failed
    /// as [`ConnectorError::PartialBatch`](crate::ConnectorError::PartialBatch).
    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        if let [record] = records {
            return self.process(record).await;
        }
        let mut failures = Vec::new();
        for (index, record) in records.iter().enumerate() {
            if let Err(error) = self.process(record).await {
                failures.push((index, error));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(crate::ConnectorError::PartialBatch { failures })
        }
    }

    /// Flushes and closes connections; called after the last batch was handled.
    async fn shutdown(&self) -> ConnectorResult<()> {
        Ok(())
    }

    /// Whether the connector can do its work (reported on `/readyz`).
    async fn health_check(&self) -> ConnectorResult<()> {
        Ok(())
    }
}
