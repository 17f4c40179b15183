//! What a connector implements, and what the runtime hands it.
//!
//! A connector is made in two steps. A **pure build** turns the configuration into a
//! [`Factory`]: no I/O, only validation and cross-section checks, so `--check` runs it too
//! and refuses every configuration the start would refuse. The runtime then **starts** the
//! factory with a [`Context`] and gets the running connector, one of three kinds:
//!
//! - a [`PullSource`] (Kafka, PostgreSQL CDC): the runtime calls [`PullSource::poll`],
//!   publishes the records and calls [`PullSource::commit`] with the offsets Danube acked,
//!   in poll order;
//! - a [`PushSource`] (HTTP, MQTT): started servers or clients publish through
//!   [`Context::failures`] (or [`Context::publisher`]) from their own tasks and answer their
//!   clients after Danube acked; it is never polled, only health-checked and shut down;
//! - a [`Sink`]: the runtime consumes `sink.topics` and acks each record to Danube only after
//!   [`Sink::process`] (or [`Sink::process_batch`]) returned `Ok`.
//!
//! [`Parts`] gathers the factories of one process; [`Runtime::run`](crate::Runtime::run)
//! drives each by its kind.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::{BatchConfig, ConfigError, Ordering, RuntimeConfig};
use crate::error::ConnectorResult;
use crate::failure::FailureHandler;
use crate::health::Health;
use crate::metrics::ConnectorMetrics;
use crate::publisher::Publisher;
use crate::record::{SinkRecord, SourceOffset, SourceRecord};
use crate::retry::RetryPolicy;

/// What every connector gets at start: the runtime settings it needs and the handles to the
/// runtime's publisher, shutdown, readiness, failure policy and metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) name: String,
    pub(crate) publisher: Publisher,
    pub(crate) shutdown: CancellationToken,
    pub(crate) health: Health,
    pub(crate) failures: FailureHandler,
    pub(crate) retry: RetryPolicy,
    pub(crate) ordering: Ordering,
    pub(crate) batch: BatchConfig,
    pub(crate) metrics: ConnectorMetrics,
}

impl Context {
    /// The connector instance name (`name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes records and waits for Danube's ack.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Cancelled when the connector must stop taking in new data.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Readiness (`/readyz`); a connector may mark parts of itself degraded.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// `failure.policy` for records the connector delivers itself: a push source's
    /// [`FailureHandler::publish_or_dead_letter`], a sink's rows refused after it acked them.
    pub fn failures(&self) -> &FailureHandler {
        &self.failures
    }

    /// `retry.*`: the one backoff and retry primitive, cancellable by shutdown
    /// ([`RetryPolicy::run_until`]).
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// `sink.ordering`: whether records of one key are processed in order.
    pub fn ordering(&self) -> Ordering {
        self.ordering
    }

    /// `sink.batch`: the bounds of the batches handed to [`Sink::process_batch`].
    pub fn batch(&self) -> &BatchConfig {
        &self.batch
    }

    /// Registers the connector's own metrics, labelled with its name already.
    pub fn metrics(&self) -> &ConnectorMetrics {
        &self.metrics
    }
}

/// Made by a connector's pure build from its configuration; started by the runtime with a
/// [`Context`], it returns the running connector (a [`PullSource`], [`PushSource`] or
/// [`Sink`]).
#[async_trait]
pub trait Factory: Send + 'static {
    /// The running connector.
    type Connector: Send + 'static;

    /// The Danube topics the connector writes to that its configuration names outright (no
    /// template). The runtime creates them before [`start`](Self::start), together with the
    /// other topics known at start, shorter names first: Danube refuses to create a topic
    /// once a topic whose name extends it exists. A topic Danube refuses stops the start.
    fn topics_at_start(&self) -> Vec<String> {
        Vec::new()
    }

    /// Connects to the outside system (push sources start their server) and returns the
    /// running connector.
    async fn start(self, ctx: Context) -> ConnectorResult<Self::Connector>;
}

/// A [`Factory`] for a connector that needs nothing from the [`Context`].
#[derive(Debug)]
pub struct Ready<T>(pub T);

#[async_trait]
impl<T: Send + 'static> Factory for Ready<T> {
    type Connector = T;

    async fn start(self, _ctx: Context) -> ConnectorResult<T> {
        Ok(self.0)
    }
}

/// Moves data from an outside system into Danube when polled.
#[async_trait]
pub trait PullSource: Send + Sync + 'static {
    /// Returns the next records (an empty `Vec` when idle, after waiting a little).
    ///
    /// Return within about a second when idle: acked offsets are committed and
    /// [`health_check`](Self::health_check) runs (every 5 s) between polls. At shutdown the
    /// future may be dropped: records not yet returned must still be readable from the
    /// outside system later (they were not committed there).
    ///
    /// Several records may carry the same [`SourceOffset`] (all rows of one transaction),
    /// also across polls, as long as records of one offset are consecutive. The runtime
    /// commits an offset only after every record carrying it was acked, including those of
    /// the following poll. At shutdown the last acked offset is committed even if the
    /// interrupted poll would have continued it, so end a poll at an offset boundary when
    /// you can.
    async fn poll(&mut self) -> ConnectorResult<Vec<SourceRecord>>;

    /// Commits offsets whose every record Danube acked (called in poll order).
    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> ConnectorResult<()>;

    /// Closes connections; called after the last commit.
    async fn shutdown(&mut self) -> ConnectorResult<()> {
        Ok(())
    }

    /// Whether the connector can do its work (reported on `/readyz`).
    async fn health_check(&self) -> ConnectorResult<()> {
        Ok(())
    }
}

/// Moves data from an outside system into Danube from its own tasks, started by its
/// [`Factory`]; never polled.
#[async_trait]
pub trait PushSource: Send + Sync + 'static {
    /// Stops intake and finishes in-flight work (answers pending requests); the publisher
    /// still works until this returns.
    async fn shutdown(&mut self) -> ConnectorResult<()>;

    /// Whether the connector can do its work (reported on `/readyz`, checked every 5 s).
    async fn health_check(&self) -> ConnectorResult<()> {
        Ok(())
    }
}

/// Moves data from Danube into an outside system.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Writes one record. `Ok` means it is durable in the outside system.
    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()>;

    /// Writes a batch (bounded by `sink.batch`); the default writes each record and reports
    /// the ones that failed as [`ConnectorError::PartialBatch`](crate::ConnectorError::PartialBatch).
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

/// A factory with its connector type erased.
pub(crate) struct Pending<T> {
    pub(crate) topics: Vec<String>,
    pub(crate) start: Box<dyn FnOnce(Context) -> BoxFuture<'static, ConnectorResult<T>> + Send>,
}

impl<T: Send + 'static> Pending<T> {
    fn new<F: Factory>(factory: F, into: fn(F::Connector) -> T) -> Self {
        Self {
            topics: factory.topics_at_start(),
            start: Box::new(move |ctx| Box::pin(async move { factory.start(ctx).await.map(into) })),
        }
    }
}

/// The connectors one process runs, built but not started: any number of pull and push
/// sources and at most one sink (a bridge may run both directions).
#[derive(Default)]
pub struct Parts {
    pub(crate) pull: Vec<Pending<Box<dyn PullSource>>>,
    pub(crate) push: Vec<Pending<Box<dyn PushSource>>>,
    pub(crate) sink: Option<Pending<Arc<dyn Sink>>>,
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parts")
            .field("pull_sources", &self.pull.len())
            .field("push_sources", &self.push.len())
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

impl Parts {
    /// No connector yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pull source.
    pub fn with_pull<F>(mut self, factory: F) -> Self
    where
        F: Factory,
        F::Connector: PullSource,
    {
        self.pull.push(Pending::new(factory, |source| Box::new(source) as Box<dyn PullSource>));
        self
    }

    /// Adds a push source.
    pub fn with_push<F>(mut self, factory: F) -> Self
    where
        F: Factory,
        F::Connector: PushSource,
    {
        self.push.push(Pending::new(factory, |source| Box::new(source) as Box<dyn PushSource>));
        self
    }

    /// Sets the sink (one per process: it consumes `sink.topics`).
    pub fn with_sink<F>(mut self, factory: F) -> Self
    where
        F: Factory,
        F::Connector: Sink,
    {
        self.sink = Some(Pending::new(factory, |sink| Arc::new(sink) as Arc<dyn Sink>));
        self
    }

    /// Whether a sink is set.
    pub fn has_sink(&self) -> bool {
        self.sink.is_some()
    }

    /// Whether there is no connector at all.
    pub fn is_empty(&self) -> bool {
        self.pull.is_empty() && self.push.is_empty() && self.sink.is_none()
    }

    /// The checks between the parts and the runtime sections, run by `--check` and again by
    /// [`Runtime::run`](crate::Runtime::run): something to run, and a sink has topics.
    pub fn check(&self, runtime: &RuntimeConfig) -> Result<(), ConfigError> {
        if self.is_empty() {
            return Err(ConfigError::invalid(
                "connector",
                "configures nothing to run: enable a source or a sink (see the connector's README)",
            ));
        }
        if self.has_sink() {
            runtime.require_sink_topics()?;
        }
        Ok(())
    }
}
