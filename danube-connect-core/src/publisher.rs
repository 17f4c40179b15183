//! The acknowledged publish handle and the producer pool behind it.
//!
//! `danube-client`'s `Producer::send` allows one message in flight per producer. Each topic
//! therefore gets a small pool of producers ("lanes"), each driven by its own task that
//! sends its queue in order and retries on its own. Records with the same routing key
//! always go to the same lane, so they stay in order; records without a key are spread
//! round robin, so sends are pipelined across the pool.
//!
//! A pull source's poll is handed over as a batch: each lane gets its share of it in one
//! message and the batch completes once (a counter and one wake-up), instead of a queue
//! message and a reply channel per record. Per record, what remains beyond
//! `danube-client`'s own `send` is the routing-key hash, a few counter updates and the
//! copies `send` takes by value.
//!
//! [`Publisher::publish`] returns only after Danube acked the record (or failed for good):
//! a push source answers its client after that.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use danube_client::errors::DanubeError;
use danube_client::{DanubeClient, Producer, ProducerOptions};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use vrl::value::Value;

use crate::client::{is_unreachable, DanubeConnection};
use crate::config::SourceConfig;
use crate::error::{ClientError, PublishError};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::record::SourceRecord;
use crate::schema::{BoundSchema, PayloadInput, SchemaSetupError, TopicSchemas};
use crate::transform::{payload_bytes, payload_value, Applied, TransformError, Transforms};
use danube_connect_common::schema::{CompatibilityMode, SchemaKind};

const LANE_QUEUE: usize = 256;

/// A record that could not be published, handed back with the reason.
#[derive(Debug)]
pub struct PublishFailure {
    /// Why it failed.
    pub error: PublishError,
    /// The record, so the caller can dead-letter or retry it.
    pub record: SourceRecord,
}

type Reply = oneshot::Sender<Result<(), PublishFailure>>;

struct Job {
    record: SourceRecord,
    deadline: Option<Instant>,
    reply: Reply,
    /// The record's `publish` span when telemetry is on, ended with the outcome.
    span: Option<crate::telemetry::RecordSpan>,
}

/// What a lane's queue carries: a record to send, a lane's share of a batch, or a request
/// to create its producer now.
enum LaneJob {
    Send(Job),
    Batch(LaneBatch),
    Prepare(oneshot::Sender<Result<(), DanubeError>>),
}

/// A record of a batch, with its place in the batch (failures are reported in batch order).
struct BatchItem {
    index: usize,
    record: SourceRecord,
    span: Option<crate::telemetry::RecordSpan>,
}

/// One lane's share of a batch: its records in batch order, sent one after the other and
/// answered together through the batch's [`BatchOutcome`] (one completion per share, not a
/// reply channel per record).
///
/// Dropped, it settles its share: records not sent yet (the lane went away) fail with
/// [`PublishError::Closed`], so a batch always completes and never counts an unsent record
/// as acked.
struct LaneBatch {
    /// Records not finished yet; the front one is being sent.
    items: VecDeque<BatchItem>,
    deadline: Option<Instant>,
    /// Records of this share finished (acked or failed).
    settled: usize,
    in_flight: prometheus::IntGauge,
    outcome: Arc<BatchOutcome>,
}

impl Drop for LaneBatch {
    fn drop(&mut self) {
        let unsent = self.items.len();
        if unsent > 0 {
            self.in_flight.sub(unsent as i64);
            let failures = self
                .items
                .drain(..)
                .map(|item| (item.index, PublishFailure { error: PublishError::Closed, record: item.record }));
            self.outcome.fail_all(failures);
        }
        self.outcome.settle(self.settled + unsent);
    }
}

/// The shared outcome of a batch: how many queued records are not finished yet, and the
/// failures with their place in the batch.
#[derive(Default)]
struct BatchOutcome {
    remaining: AtomicUsize,
    failures: Mutex<Vec<(usize, PublishFailure)>>,
    done: Notify,
}

impl BatchOutcome {
    fn fail_all(&self, failures: impl IntoIterator<Item = (usize, PublishFailure)>) {
        let mut list = match self.failures.lock() {
            Ok(list) => list,
            Err(poisoned) => poisoned.into_inner(),
        };
        list.extend(failures);
    }

    /// Marks `count` queued records finished; the last one wakes the waiter.
    fn settle(&self, count: usize) {
        if count > 0 && self.remaining.fetch_sub(count, Ordering::AcqRel) == count {
            self.done.notify_one();
        }
    }
}

/// A batch handed to the lanes by [`Publisher::enqueue_batch`]: finished once every record
/// of it is acked or failed for good.
pub(crate) struct PendingBatch {
    outcome: Arc<BatchOutcome>,
}

impl PendingBatch {
    /// Whether every record of the batch is finished.
    pub(crate) fn is_finished(&self) -> bool {
        self.outcome.remaining.load(Ordering::Acquire) == 0
    }

    /// Waits until every record of the batch is finished.
    pub(crate) async fn finished(&self) {
        loop {
            // Made before the check: a settle between the two is not missed.
            let notified = self.outcome.done.notified();
            if self.is_finished() {
                return;
            }
            notified.await;
        }
    }

    /// The records that failed, in batch order. Call it once the batch is finished.
    pub(crate) fn into_failures(self) -> Vec<PublishFailure> {
        let mut failures = match self.outcome.failures.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        failures.sort_by_key(|(index, _)| *index);
        failures.into_iter().map(|(_, failure)| failure).collect()
    }
}

/// What [`Publisher::check_record`] made of a record before it is queued.
enum Checked {
    /// Transformed and encoded as its schema wants: to be queued.
    Ready(SourceRecord),
    /// A transform dropped it: answered `Ok` at once.
    Dropped,
    /// Refused before it reached a lane (counted as failed).
    Invalid(PublishFailure),
}

/// Publishes records to Danube and reports the broker's ack. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    client: DanubeClient,
    config: SourceConfig,
    name: String,
    metrics: Metrics,
    health: Health,
    pools: Mutex<HashMap<String, Arc<TopicPool>>>,
    lane_tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    abort: CancellationToken,
    schemas: TopicSchemas,
    /// `[[transforms]]` run on each record before it is validated and queued; records to
    /// `untransformed` (the dead-letter topic) are left as they are.
    transforms: Option<SourceTransforms>,
}

/// The transforms a publisher applies, and the topic it leaves alone.
struct SourceTransforms {
    transforms: Arc<Transforms>,
    untransformed: String,
}

struct TopicPool {
    topic: String,
    lanes: Vec<mpsc::Sender<LaneJob>>,
    next: AtomicUsize,
    in_flight: prometheus::IntGauge,
}

/// Metric handles of one topic, resolved once (label lookups are not free per record).
#[derive(Clone)]
struct LaneMetrics {
    in_flight: prometheus::IntGauge,
    published: prometheus::IntCounter,
    failed: prometheus::IntCounter,
    retried: prometheus::IntCounter,
    latency: prometheus::Histogram,
}

impl LaneMetrics {
    fn new(metrics: &Metrics, topic: &str) -> Self {
        let labels = [metrics.connector(), topic];
        Self {
            in_flight: metrics.in_flight.with_label_values(&labels),
            published: metrics.records_published.with_label_values(&labels),
            failed: metrics.records_failed.with_label_values(&[metrics.connector(), topic, "publish"]),
            retried: metrics.records_retried.with_label_values(&labels),
            latency: metrics.operation_latency.with_label_values(&[metrics.connector(), "publish"]),
        }
    }
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher outside a runtime, for operator tools (the `danube-connect dlq` command):
    /// like the runtime's, with its own metrics and health that nobody serves.
    pub fn detached(connection: &DanubeConnection, config: SourceConfig, name: &str, schemas: TopicSchemas) -> Self {
        Self::new(connection.inner().clone(), config, name, Metrics::new(name), Health::default(), schemas)
    }

    /// A publisher over `client`; producers are created lazily per topic. Records to a topic
    /// with a bound schema are validated first and its producers reference the schema.
    pub(crate) fn new(
        client: DanubeClient,
        config: SourceConfig,
        name: &str,
        metrics: Metrics,
        health: Health,
        schemas: TopicSchemas,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                config,
                name: name.to_string(),
                metrics,
                health,
                pools: Mutex::new(HashMap::new()),
                lane_tasks: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                abort: CancellationToken::new(),
                schemas,
                transforms: None,
            }),
        }
    }

    /// Applies `transforms` to every record published from now on (before schema validation),
    /// except records to `untransformed` (the dead-letter topic). A record a transform drops
    /// is answered `Ok` at once (its offset commits) and counted in
    /// `connector_transform_dropped_total`; one a transform fails on is answered
    /// [`PublishError::Invalid`] naming the transform, with the record as it was before.
    /// Only takes effect on a publisher not cloned yet (the runtime calls it at start).
    pub fn with_transforms(mut self, transforms: Arc<Transforms>, untransformed: impl Into<String>) -> Self {
        if transforms.is_empty() {
            return self;
        }
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => {
                inner.transforms = Some(SourceTransforms { transforms, untransformed: untransformed.into() })
            }
            None => warn!("transforms set on a publisher already in use; ignored"),
        }
        self
    }

    /// Publishes one record and waits for Danube's ack, retrying transient failures
    /// until `source.publish_timeout`.
    pub async fn publish(&self, record: SourceRecord) -> Result<(), PublishError> {
        self.submit(record).await?.await
    }

    /// Queues one record on its lane and returns at once with a [`PendingPublish`] that
    /// resolves to Danube's ack, as [`publish`](Self::publish) does. Dropping the
    /// `PendingPublish` does not withdraw the record: once queued it is sent (and retried
    /// until `source.publish_timeout`) whether or not anyone waits for the outcome. A push
    /// source that must answer its client by a deadline awaits it under a timeout, without
    /// a task of its own per record.
    ///
    /// Waits only while the lane's queue is full; fails with [`PublishError::Closed`] once
    /// the publisher is closing (nothing queued then).
    pub async fn submit(&self, record: SourceRecord) -> Result<PendingPublish, PublishError> {
        self.submit_or_return(record).await.map_err(|f| f.error)
    }

    /// Like [`submit`](Self::submit), but a record that cannot be queued (it fails its
    /// schema or a transform, or the publisher is closing) is handed back with the error,
    /// e.g. for [`FailureHandler::undeliverable`](crate::failure::FailureHandler::undeliverable).
    pub async fn submit_or_return(&self, record: SourceRecord) -> Result<PendingPublish, PublishFailure> {
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        let reply = self.enqueue(record, Some(deadline)).await?;
        Ok(PendingPublish { reply })
    }

    /// Publishes several records (pipelined across the pool, per-key order kept) and
    /// waits until all are acked; the first failure in record order is returned. The
    /// records are handed to each lane in one go, with one completion for the batch. If the
    /// publisher is closing, nothing is queued and [`PublishError::Closed`] is returned.
    pub async fn publish_batch(&self, records: Vec<SourceRecord>) -> Result<(), PublishError> {
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        let pending = self.enqueue_batch(records, Some(deadline)).await;
        pending.finished().await;
        let mut closed = None;
        for failure in pending.into_failures() {
            match failure.error {
                // Not sent: reported only when nothing was refused.
                PublishError::Closed => closed = Some(PublishError::Closed),
                error => return Err(error),
            }
        }
        closed.map_or(Ok(()), Err)
    }

    /// Queues a record on its lane and returns the receiver of its outcome. Without a
    /// deadline the lane retries transient failures until it is aborted.
    pub(crate) async fn enqueue(
        &self,
        record: SourceRecord,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Result<(), PublishFailure>>, PublishFailure> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishFailure { error: PublishError::Closed, record });
        }
        let mut record = match self.check_record(record) {
            Checked::Ready(record) => record,
            Checked::Dropped => return Ok(answered(Ok(()))),
            Checked::Invalid(failure) => return Ok(answered(Err(failure))),
        };
        let pool = self.pool(&record.topic);
        let lane = pool.lane_of(record.routing_key.as_deref());
        // A place in the queue first: a caller that gives up while the queue is full
        // (`submit` under a timeout) leaves nothing behind, not even the in-flight count.
        let Some(place) = reserve(&pool.lanes[lane]).await else {
            return Err(PublishFailure { error: PublishError::Closed, record });
        };
        let (reply, rx) = oneshot::channel();
        pool.in_flight.inc();
        let span = crate::telemetry::start_record_span(
            "publish",
            opentelemetry::trace::SpanKind::Producer,
            &record.topic,
            &mut record.attributes,
        );
        place.send(LaneJob::Send(Job { record, deadline, reply, span }));
        Ok(rx)
    }

    /// Hands `records` (a pull source's poll) to the lanes: each lane gets its share of the
    /// batch in one message, in batch order (a routing key picks the lane, so per-key order
    /// holds), and the batch completes once, when its last record is acked or failed for
    /// good. Without a deadline the lanes retry transient failures until they are aborted.
    ///
    /// Records a transform drops count as acked; records refused before a lane (a schema or
    /// a transform fails) and every record when the publisher is closing come back as
    /// failures of the batch, in record order.
    pub(crate) async fn enqueue_batch(&self, records: Vec<SourceRecord>, deadline: Option<Instant>) -> PendingBatch {
        let outcome = Arc::new(BatchOutcome::default());
        if self.inner.closed.load(Ordering::Acquire) {
            outcome.fail_all(
                records
                    .into_iter()
                    .enumerate()
                    .map(|(index, record)| (index, PublishFailure { error: PublishError::Closed, record })),
            );
            return PendingBatch { outcome };
        }
        // Each topic's pool with its lanes' shares, in the order the topics first appear.
        let mut shares: Vec<(Arc<TopicPool>, Vec<VecDeque<BatchItem>>)> = Vec::new();
        let mut current = 0;
        let mut queued = 0;
        let mut refused = Vec::new();
        for (index, record) in records.into_iter().enumerate() {
            let mut record = match self.check_record(record) {
                Checked::Ready(record) => record,
                Checked::Dropped => continue,
                Checked::Invalid(failure) => {
                    refused.push((index, failure));
                    continue;
                }
            };
            if shares.get(current).is_none_or(|(pool, _)| pool.topic != record.topic) {
                current = match shares.iter().position(|(pool, _)| pool.topic == record.topic) {
                    Some(found) => found,
                    None => {
                        let pool = self.pool(&record.topic);
                        let lanes = (0..pool.lanes.len()).map(|_| VecDeque::new()).collect();
                        shares.push((pool, lanes));
                        shares.len() - 1
                    }
                };
            }
            let (pool, lanes) = &mut shares[current];
            let lane = pool.lane_of(record.routing_key.as_deref());
            let span = crate::telemetry::start_record_span(
                "publish",
                opentelemetry::trace::SpanKind::Producer,
                &record.topic,
                &mut record.attributes,
            );
            lanes[lane].push_back(BatchItem { index, record, span });
            queued += 1;
        }
        if !refused.is_empty() {
            outcome.fail_all(refused);
        }
        // Counted before any share is queued: a lane may finish its share at once.
        outcome.remaining.store(queued, Ordering::Release);
        for (pool, lanes) in shares {
            for (lane, items) in lanes.into_iter().enumerate() {
                if items.is_empty() {
                    continue;
                }
                pool.in_flight.add(items.len() as i64);
                let batch = LaneBatch {
                    items,
                    deadline,
                    settled: 0,
                    in_flight: pool.in_flight.clone(),
                    outcome: outcome.clone(),
                };
                match reserve(&pool.lanes[lane]).await {
                    Some(place) => place.send(LaneJob::Batch(batch)),
                    // The lane is gone: dropping the share fails its records with `Closed`.
                    None => drop(batch),
                }
            }
        }
        PendingBatch { outcome }
    }

    /// Runs the transforms on `record` and validates (and encodes) it against its schema.
    fn check_record(&self, mut record: SourceRecord) -> Checked {
        if let Some(transforms) = &self.inner.transforms {
            if record.topic != transforms.untransformed && transforms.transforms.applies_to(&record.topic) {
                match transform_record(&self.inner, &transforms.transforms, &mut record) {
                    Ok(true) => {}
                    Ok(false) => return Checked::Dropped,
                    Err(error) => return Checked::Invalid(self.refuse_invalid(record, error.to_string())),
                }
            }
        }
        let prepared = record_schema(&self.inner, &record.topic, &record).map(|bound| bound.prepare(&record.payload));
        match prepared {
            Some(Ok(Some(encoded))) => record.payload = encoded,
            Some(Err(error)) => return Checked::Invalid(self.refuse_invalid(record, error.to_string())),
            Some(Ok(None)) | None => {}
        }
        Checked::Ready(record)
    }

    /// The failure of an invalid record, counted as failed: invalid records never reach a
    /// lane and are never retried.
    fn refuse_invalid(&self, record: SourceRecord, message: String) -> PublishFailure {
        let labels = [self.inner.metrics.connector(), record.topic.as_str(), "invalid"];
        self.inner.metrics.records_failed.with_label_values(&labels).inc();
        let error = PublishError::Invalid { topic: record.topic.clone(), message };
        PublishFailure { error, record }
    }

    /// Creates the producers of `topic` now instead of at its first record, so the topic
    /// exists on the broker before anything is published to it (a subscription made
    /// afterwards starts at its end and would miss records published before it). The
    /// runtime prepares every topic bound in `[[schemas]]` at start; a push source whose
    /// topics are known up front (static HTTP endpoints) can call it from their `Factory::start`.
    ///
    /// Calling it again, or for a topic already in use, only checks the producers exist. A
    /// failure is not final: the producers are created again at the first record, and no
    /// record is lost either way.
    pub async fn prepare(&self, topic: &str) -> Result<(), PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let pool = self.pool(topic);
        let mut replies = Vec::with_capacity(pool.lanes.len());
        for lane in &pool.lanes {
            let (reply, rx) = oneshot::channel();
            if lane.send(LaneJob::Prepare(reply)).await.is_err() {
                return Err(PublishError::Closed);
            }
            replies.push(rx);
        }
        let mut first_error = None;
        for rx in replies {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    let error = match classify(source) {
                        SendOutcome::Rejected(source) => rejection(topic, source),
                        SendOutcome::Transient(source) => {
                            PublishError::Unavailable { topic: topic.to_string(), source: ClientError::new(source) }
                        }
                        SendOutcome::Acked => continue,
                    };
                    first_error.get_or_insert(error);
                }
                Err(_) => {
                    first_error.get_or_insert(PublishError::Closed);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Prepares several topics at start ([`prepare`](Self::prepare) each, at most `timeout`
    /// per topic), shorter names first: Danube refuses to create a topic while a topic whose
    /// name starts with it exists (it takes `/default/orders-dlq` for a partition of
    /// `/default/orders`), so creating the shorter name first keeps both possible.
    ///
    /// Returns the topics that failed for a reason that may pass (a slow or absent broker),
    /// to retry later; a topic Danube refuses for good ([`PublishError::TopicRefused`],
    /// [`PublishError::Rejected`]) is an error, so a connector fails at start with the topic
    /// and the fix instead of failing every record later.
    pub async fn prepare_all(
        &self,
        topics: impl IntoIterator<Item = String>,
        timeout: Duration,
    ) -> Result<Vec<String>, PublishError> {
        let mut topics: Vec<String> = topics.into_iter().collect();
        topics.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        topics.dedup();
        let mut pending = Vec::new();
        // Topics of one length cannot be prefixes of each other: each wave runs at once.
        for wave in topics.chunk_by(|a, b| a.len() == b.len()) {
            let attempts = wave
                .iter()
                .map(|topic| async move { (topic, tokio::time::timeout(timeout, self.prepare(topic)).await) });
            for (topic, outcome) in futures::future::join_all(attempts).await {
                match outcome {
                    Ok(Ok(())) => debug!(%topic, "producers created at start"),
                    Ok(Err(error)) if !error.is_transient() => return Err(error),
                    Ok(Err(error)) => {
                        warn!(%topic, error = %crate::error::error_chain(&error), "producers not created yet, retrying in the background");
                        pending.push(topic.clone());
                    }
                    Err(_) => {
                        warn!(%topic, ?timeout, "producers not created in time, retrying in the background");
                        pending.push(topic.clone());
                    }
                }
            }
        }
        Ok(pending)
    }

    /// Retries [`prepare_all`](Self::prepare_all) for `topics` in the background (backoff
    /// from 500 ms to 10 s) until each is prepared, Danube refuses one for good (logged as an
    /// error), or `shutdown` is cancelled: the follow-up of a start that found the broker slow.
    pub fn prepare_in_background(
        &self,
        mut topics: Vec<String>,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let publisher = self.clone();
        tokio::spawn(async move {
            let mut backoff = crate::retry::Backoff::between(Duration::from_millis(500), Duration::from_secs(10));
            while !topics.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.cancelled() => return,
                }
                topics = tokio::select! {
                    pending = publisher.prepare_all(topics, timeout) => match pending {
                        Ok(pending) => pending,
                        Err(error) => {
                            tracing::error!(error = %crate::error::error_chain(&error), "a topic is refused by Danube");
                            return;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                };
            }
            tracing::info!("producers of the topics known at start created");
        })
    }

    /// Registers `definition` (of `kind`) under `subject` with the schema registry — a new
    /// version when it differs from the registered ones, else the existing version — and
    /// returns it for [`SourceRecord::with_schema`]. `compatibility`, when set, becomes the
    /// subject's mode first. A record carrying it is validated against it (an invalid one is
    /// answered [`PublishError::Invalid`]) and its message is stamped with its id and
    /// version; a lane switches its producer to that subject version before sending it.
    ///
    /// A refused definition (incompatible with the subject's versions, or invalid) and an
    /// unreachable registry are errors; [`SchemaSetupError::is_transient`] tells them apart.
    pub async fn register_schema(
        &self,
        subject: impl Into<String>,
        kind: SchemaKind,
        definition: impl AsRef<[u8]>,
        compatibility: Option<CompatibilityMode>,
    ) -> Result<Arc<BoundSchema>, SchemaSetupError> {
        let bound =
            BoundSchema::register_with(&self.inner.client, subject, kind, definition.as_ref(), compatibility).await?;
        debug!(subject = %bound.subject, schema_id = bound.schema_id, version = bound.version, "schema registered at run time");
        Ok(Arc::new(bound))
    }

    /// The registered definition of schema `schema_id` at `version` (the latest when
    /// `None`), as the producer registered it, e.g. for a sink that derives table columns
    /// from a record's schema. An unreachable registry is a retryable error.
    pub async fn fetch_schema_definition(
        &self,
        schema_id: u64,
        version: Option<u32>,
    ) -> Result<Vec<u8>, crate::error::ConnectorError> {
        let info = self.inner.client.schema().get_schema_version(schema_id, version).await.map_err(|e| {
            crate::error::ConnectorError::retryable(format!("fetch schema {schema_id} from the registry"), e)
        })?;
        Ok(crate::schema::registered_definition(&info.schema_definition).into_owned())
    }

    /// Stops accepting records and waits until every queued record is acked or failed.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Ok(mut pools) = self.inner.pools.lock() {
            pools.clear();
        }
        let tasks: Vec<JoinHandle<()>> = match self.inner.lane_tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Makes lanes give up retrying: queued records fail with [`PublishError::Closed`].
    pub fn abort(&self) {
        self.inner.abort.cancel();
    }

    fn pool(&self, topic: &str) -> Arc<TopicPool> {
        let mut pools = match self.inner.pools.lock() {
            Ok(pools) => pools,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(pool) = pools.get(topic) {
            return pool.clone();
        }
        let size = self.inner.config.producers_per_topic;
        let mut lanes = Vec::with_capacity(size);
        let mut tasks = Vec::with_capacity(size);
        let metrics = LaneMetrics::new(&self.inner.metrics, topic);
        for index in 0..size {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            lanes.push(tx);
            let lane = Lane {
                inner: self.inner.clone(),
                topic: topic.to_string(),
                index,
                producer: None,
                producer_schema: None,
                metrics: metrics.clone(),
            };
            tasks.push(tokio::spawn(lane.run(rx)));
        }
        if let Ok(mut lane_tasks) = self.inner.lane_tasks.lock() {
            lane_tasks.extend(tasks);
        }
        let pool = Arc::new(TopicPool {
            topic: topic.to_string(),
            lanes,
            next: AtomicUsize::new(0),
            in_flight: metrics.in_flight,
        });
        pools.insert(topic.to_string(), pool.clone());
        pool
    }
}

/// A receiver already holding `outcome`.
fn answered(outcome: Result<(), PublishFailure>) -> oneshot::Receiver<Result<(), PublishFailure>> {
    let (reply, rx) = oneshot::channel();
    let _ = reply.send(outcome);
    rx
}

/// A place in a lane's queue; `None` when the lane is gone.
///
/// Taken at once when there is room: `reserve` spends tokio's cooperative budget, and calls
/// polled together in one task (a pipelining source) that run out of it are woken again in
/// reverse order, which would queue one key's records reversed.
async fn reserve(lane: &mpsc::Sender<LaneJob>) -> Option<mpsc::Permit<'_, LaneJob>> {
    match lane.try_reserve() {
        Ok(place) => Some(place),
        Err(mpsc::error::TrySendError::Full(())) => lane.reserve().await.ok(),
        Err(mpsc::error::TrySendError::Closed(())) => None,
    }
}

impl TopicPool {
    /// The lane of a record: its routing key's hash, or round robin without a key.
    fn lane_of(&self, key: Option<&str>) -> usize {
        match key {
            Some(key) => {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut hasher);
                (hasher.finish() as usize) % self.lanes.len()
            }
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len(),
        }
    }
}

/// The schema a record is validated against and published with: its own (registered at
/// run time), else its topic's `[[schemas]]` binding.
fn record_schema<'a>(inner: &'a Inner, topic: &str, record: &'a SourceRecord) -> Option<&'a BoundSchema> {
    record.schema.as_deref().or_else(|| inner.schemas.get(topic))
}

/// Whether a payload bound to `schema` is in a binary wire encoding that a transform sees
/// decoded (Avro, Protobuf); JSON-shaped payloads are parsed as they are.
fn decodes_for_transforms(schema: &BoundSchema) -> bool {
    schema.input == PayloadInput::Wire && matches!(schema.schema.kind(), SchemaKind::Avro | SchemaKind::Protobuf)
}

/// Runs the transforms on `record` in place. `Ok(false)`: dropped (counted). On error the
/// record is left as it was (counted in `connector_transform_failed_total`).
fn transform_record(inner: &Inner, transforms: &Transforms, record: &mut SourceRecord) -> Result<bool, TransformError> {
    let failed = |error: TransformError, topic: &str| {
        inner.metrics.transform_failed.with_label_values(&[inner.metrics.connector(), topic, error.transform()]).inc();
        error
    };
    let first = transforms.transforms().iter().find(|t| t.applies_to(&record.topic)).map_or("", |t| t.name());
    // A binary schema-encoded payload is decoded so the program sees its value.
    let (payload, was_json) = match record_schema(inner, &record.topic, record).filter(|s| decodes_for_transforms(s)) {
        Some(bound) => match bound.schema.decode_to_json(&record.payload) {
            Ok(value) => (Value::from(value), true),
            Err(e) => {
                return Err(failed(
                    TransformError::Output {
                        transform: first.to_string(),
                        field: ".",
                        message: format!("the payload does not decode with its schema: {e}"),
                    },
                    &record.topic,
                ))
            }
        },
        None => payload_value(&record.payload),
    };
    let applied = transforms.apply(&record.topic, record.routing_key.as_deref(), &record.attributes, payload);
    let out = match applied {
        Ok(Applied::Kept(out)) => out,
        Ok(Applied::Dropped { transform }) => {
            inner
                .metrics
                .transform_dropped
                .with_label_values(&[inner.metrics.connector(), &record.topic, &transform])
                .inc();
            return Ok(false);
        }
        Err(error) => return Err(failed(error, &record.topic)),
    };
    // The value goes back into the wire encoding of the topic it is published to.
    let target_schema = record.schema.as_deref().or_else(|| inner.schemas.get(&out.topic));
    let payload = match target_schema.filter(|s| decodes_for_transforms(s)) {
        Some(bound) => serde_json::to_value(&out.payload)
            .map_err(|e| e.to_string())
            .and_then(|json| bound.schema.encode_from_json(&json).map_err(|e| e.to_string()))
            .map(Bytes::from),
        None => payload_bytes(&out.payload, was_json).map_err(|e| e.to_string()),
    };
    let payload = match payload {
        Ok(payload) => payload,
        Err(message) => {
            let transform = out.transform.unwrap_or_else(|| first.to_string());
            return Err(failed(TransformError::Output { transform, field: ".", message }, &record.topic));
        }
    };
    record.topic = out.topic;
    record.routing_key = out.key;
    record.attributes = out.attributes;
    record.payload = payload;
    Ok(true)
}

/// A queued record's outcome: resolves once Danube acked it (`Ok`) or it failed for good.
/// See [`Publisher::submit`].
#[derive(Debug)]
#[must_use = "the record is published either way; await this to learn whether Danube acked it"]
pub struct PendingPublish {
    reply: oneshot::Receiver<Result<(), PublishFailure>>,
}

impl PendingPublish {
    /// Like awaiting it, but a failure hands the record back with the error (the record
    /// before transforms). Call it once: the outcome is taken.
    pub async fn outcome(&mut self) -> Result<(), PublishFailure> {
        wait_for_ack_mut(&mut self.reply).await
    }
}

impl Future for PendingPublish {
    type Output = Result<(), PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply).poll(cx).map(|outcome| match outcome {
            Ok(result) => result.map_err(|failure| failure.error),
            // The lane went away without answering: the publisher was torn down.
            Err(_) => Err(PublishError::Closed),
        })
    }
}

pub(crate) async fn wait_for_ack(mut rx: oneshot::Receiver<Result<(), PublishFailure>>) -> Result<(), PublishFailure> {
    wait_for_ack_mut(&mut rx).await
}

async fn wait_for_ack_mut(rx: &mut oneshot::Receiver<Result<(), PublishFailure>>) -> Result<(), PublishFailure> {
    match rx.await {
        Ok(result) => result,
        Err(_) => {
            Err(PublishFailure { error: PublishError::Closed, record: SourceRecord::new(String::new(), Vec::new()) })
        }
    }
}

/// One producer and the task that sends its queue in order.
struct Lane {
    inner: Arc<Inner>,
    topic: String,
    index: usize,
    producer: Option<Producer>,
    /// The subject version the producer references (`None`: no schema).
    producer_schema: Option<(String, u32)>,
    metrics: LaneMetrics,
}

enum SendOutcome {
    Acked,
    Transient(DanubeError),
    Rejected(DanubeError),
}

impl Lane {
    async fn run(mut self, mut rx: mpsc::Receiver<LaneJob>) {
        while let Some(job) = rx.recv().await {
            match job {
                LaneJob::Send(Job { record, deadline, reply, span }) => {
                    let outcome = self.deliver(&record, deadline, span).await;
                    let _ = reply.send(outcome.map_err(|error| PublishFailure { error, record }));
                }
                LaneJob::Batch(mut batch) => {
                    let deadline = batch.deadline;
                    // The front record stays in the share while it is sent: if this task is
                    // dropped meanwhile, the share fails it instead of counting it acked.
                    while let Some(item) = batch.items.front_mut() {
                        let span = item.span.take();
                        let outcome = self.deliver(&item.record, deadline, span).await;
                        let Some(item) = batch.items.pop_front() else { break };
                        if let Err(error) = outcome {
                            batch.outcome.fail_all([(item.index, PublishFailure { error, record: item.record })]);
                        }
                        batch.settled += 1;
                    }
                    // Dropping the share settles it: one completion for the lane's records.
                }
                LaneJob::Prepare(reply) => {
                    // Only makes sure a producer exists; records switch its schema as they need.
                    let result = match self.producer {
                        Some(_) => Ok(()),
                        None => {
                            let wanted = self.inner.schemas.get(&self.topic).map(|b| (b.subject.clone(), b.version));
                            self.ensure_producer(wanted).await
                        }
                    };
                    let _ = reply.send(result);
                }
            }
        }
        if let Some(producer) = self.producer.take() {
            drop(producer);
        }
    }

    /// Sends one record (see [`publish`](Self::publish)), counts the outcome and ends its span.
    async fn deliver(
        &mut self,
        record: &SourceRecord,
        deadline: Option<Instant>,
        span: Option<crate::telemetry::RecordSpan>,
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let result = self.publish(record, deadline).await;
        self.metrics.in_flight.dec();
        if let Some(span) = span {
            span.finish(result.as_ref().err().map(|e| e as &dyn std::fmt::Display));
        }
        match &result {
            Ok(()) => {
                self.metrics.published.inc();
                self.metrics.latency.observe(started.elapsed().as_secs_f64());
            }
            Err(_) => self.metrics.failed.inc(),
        }
        result
    }

    async fn publish(&mut self, record: &SourceRecord, deadline: Option<Instant>) -> Result<(), PublishError> {
        // Made at the first failure only: most records are acked at the first try.
        let mut backoff: Option<crate::retry::Backoff> = None;
        loop {
            if let Some(deadline) = deadline {
                if Instant::now() >= deadline {
                    return Err(PublishError::Timeout {
                        topic: self.topic.clone(),
                        timeout: self.inner.config.publish_timeout,
                    });
                }
            }
            if self.inner.abort.is_cancelled() {
                return Err(PublishError::Closed);
            }
            let error = match self.try_send(record).await {
                SendOutcome::Acked => {
                    // Only on a change: readiness is re-evaluated under a lock each time.
                    if !self.inner.health.broker_reachable() {
                        self.inner.health.set_broker_reachable(true);
                    }
                    return Ok(());
                }
                SendOutcome::Rejected(source) => return Err(rejection(&self.topic, source)),
                SendOutcome::Transient(error) => error,
            };
            if is_unreachable(&error) {
                self.inner.health.set_broker_reachable(false);
            }
            // Short delays with jitter: a publish is bounded by its deadline
            // (`source.publish_timeout`), not by `retry.*`, and lanes retrying after an
            // outage should not come back in lockstep.
            let delay = backoff
                .get_or_insert_with(|| {
                    crate::retry::Backoff::between(Duration::from_millis(50), Duration::from_secs(2))
                })
                .next_delay();
            warn!(topic = %self.topic, lane = self.index, error = %crate::error::error_chain(&error), retry_in = ?delay, "publish failed, retrying");
            self.metrics.retried.inc();
            let wait = match deadline {
                Some(deadline) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(PublishError::Unavailable {
                            topic: self.topic.clone(),
                            source: ClientError::new(error),
                        });
                    }
                    delay.min(remaining)
                }
                None => delay,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.abort.cancelled() => return Err(PublishError::Closed),
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(PublishError::Unavailable { topic: self.topic.clone(), source: ClientError::new(error) });
            }
        }
    }

    /// Creates the producer if there is none yet, or none referencing `wanted` (a subject
    /// version): messages are stamped with the version their producer references.
    async fn ensure_producer(&mut self, wanted: Option<(String, u32)>) -> Result<(), DanubeError> {
        if self.producer.is_some() && self.producer_schema != wanted {
            debug!(topic = %self.topic, lane = self.index, schema = ?wanted, "schema version changed, re-creating the producer");
            self.producer = None;
        }
        if self.producer.is_none() {
            let producer = self.create_producer(wanted.as_ref()).await?;
            self.producer = Some(producer);
            self.producer_schema = wanted;
        }
        Ok(())
    }

    async fn try_send(&mut self, record: &SourceRecord) -> SendOutcome {
        let current = record_schema(&self.inner, &self.topic, record).map(|b| (b.subject.as_str(), b.version));
        if self.producer.is_none() || self.producer_schema.as_ref().map(|(s, v)| (s.as_str(), *v)) != current {
            let wanted = current.map(|(subject, version)| (subject.to_string(), version));
            if let Err(error) = self.ensure_producer(wanted).await {
                return classify(error);
            }
        }
        let Some(producer) = self.producer.as_ref() else {
            return SendOutcome::Transient(DanubeError::Unrecoverable("producer not created".into()));
        };
        let attributes = if record.attributes.is_empty() { None } else { Some(record.attributes.clone()) };
        let payload = record.payload.to_vec();
        let result = match &record.routing_key {
            Some(key) => producer.send_with_key(payload, attributes, key).await,
            None => producer.send(payload, attributes).await,
        };
        match result {
            Ok(_) => SendOutcome::Acked,
            Err(error) => {
                let outcome = classify(error);
                if matches!(outcome, SendOutcome::Transient(_)) {
                    // The producer may be unknown to a restarted broker: build a new one.
                    self.producer = None;
                }
                outcome
            }
        }
    }

    async fn create_producer(&self, schema: Option<&(String, u32)>) -> Result<Producer, DanubeError> {
        let name = format!("{}-{}-{:08x}", self.inner.name, self.index, rand::random::<u32>());
        let mut builder = self
            .inner
            .client
            .new_producer()
            .with_topic(self.topic.clone())
            .with_name(name)
            .with_options(ProducerOptions::new(1, 50, 500));
        if self.inner.config.reliable {
            builder = builder.with_reliable_dispatch();
        }
        if let Some(&partitions) = self.inner.config.partitions.get(&self.topic) {
            builder = builder.with_partitions(partitions as usize);
        }
        if let Some((subject, version)) = schema {
            builder = builder.with_schema_version(subject.clone(), *version);
        }
        let mut producer = builder.build()?;
        producer.create().await?;
        debug!(topic = %self.topic, lane = self.index, "producer created");
        Ok(producer)
    }
}

/// What to change when Danube refuses a topic itself, recognised by the broker's message
/// (Danube v0.15 answers these with `InvalidArgument`, `FailedPrecondition`,
/// `AlreadyExists` and `Unavailable`).
fn topic_refusal(error: &DanubeError) -> Option<&'static str> {
    let DanubeError::FromStatus(status) = error else {
        return None;
    };
    let message = status.message();
    if message.contains("has an invalid format") {
        Some("a topic is /namespace/topic, each part made of letters, digits, `_` and `-` only")
    } else if message.contains("dispatch strategy does not match") {
        Some(
            "the topic exists with the other dispatch strategy (it was first created by a producer with \
             the other `reliable` setting); delete the topic or set `source.reliable` to match it",
        )
    } else if message.contains("partitioned topics with this base name") {
        Some(
            "a topic whose name starts with this one exists, and Danube takes it for a partition of this \
             topic; rename one of them, or make sure the shorter name is created first (docs/running-on-danube.md)",
        )
    } else if message.contains("a non-partitioned topic") {
        Some("a plain topic of the base name exists; delete it, or drop the topic from `source.partitions`")
    } else if message.contains("Unable to find the namespace") {
        Some("the namespace does not exist on the broker; create it (danube-admin namespaces create NAME)")
    } else {
        None
    }
}

/// The error for a refused publish or producer: [`PublishError::TopicRefused`] with the fix
/// when Danube refused the topic itself, else [`PublishError::Rejected`].
fn rejection(topic: &str, source: DanubeError) -> PublishError {
    match topic_refusal(&source) {
        Some(fix) => PublishError::TopicRefused { topic: topic.to_string(), fix, source: ClientError::new(source) },
        None => PublishError::Rejected { topic: topic.to_string(), source: ClientError::new(source) },
    }
}

/// Whether the broker refused the call for good: repeating it as is cannot succeed.
fn is_refusal(error: &DanubeError) -> bool {
    if topic_refusal(error).is_some() {
        return true;
    }
    match error {
        DanubeError::FromStatus(status) => matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::OutOfRange
                | tonic::Code::Unimplemented
        ),
        DanubeError::SchemaError(_) | DanubeError::InvalidToken | DanubeError::UrlParseError(_) => true,
        _ => false,
    }
}

/// Whether a registry call may succeed when repeated: not a refusal, nor an answer about
/// the subject itself (`NotFound`, `AlreadyExists`). A send's `NotFound` (a producer unknown
/// to a restarted broker) is transient instead, see [`classify`].
pub(crate) fn is_transient(error: &DanubeError) -> bool {
    let about_the_subject = matches!(
        error,
        DanubeError::FromStatus(status) if matches!(status.code(), tonic::Code::NotFound | tonic::Code::AlreadyExists)
    );
    !is_refusal(error) && !about_the_subject
}

fn classify(error: DanubeError) -> SendOutcome {
    if is_refusal(&error) {
        SendOutcome::Rejected(error)
    } else {
        SendOutcome::Transient(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(outcome: &Arc<BatchOutcome>, indexes: &[usize], gauge: &prometheus::IntGauge) -> LaneBatch {
        let items = indexes
            .iter()
            .map(|&index| BatchItem { index, record: SourceRecord::new("/default/t", index.to_string()), span: None })
            .collect();
        gauge.add(indexes.len() as i64);
        LaneBatch { items, deadline: None, settled: 0, in_flight: gauge.clone(), outcome: outcome.clone() }
    }

    #[tokio::test]
    async fn a_share_dropped_before_it_is_sent_fails_its_records_closed_and_the_batch_completes() {
        let gauge = prometheus::IntGauge::new("in_flight_test", "test").expect("gauge");
        let outcome = Arc::new(BatchOutcome::default());
        outcome.remaining.store(5, Ordering::Release);
        let pending = PendingBatch { outcome: outcome.clone() };
        let first = share(&outcome, &[1, 3, 4], &gauge);
        let mut second = share(&outcome, &[0, 2], &gauge);
        // The second share's lane sent its first record (acked), then went away.
        second.items.pop_front();
        second.settled += 1;
        gauge.dec();
        drop(second);
        assert!(!pending.is_finished(), "the first share is still queued");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), pending.finished()).await.expect("the batch completes");
        assert_eq!(gauge.get(), 0, "no record is left counted in flight");
        let failures = pending.into_failures();
        let failed: Vec<String> =
            failures.iter().map(|f| String::from_utf8_lossy(&f.record.payload).into_owned()).collect();
        assert_eq!(failed, ["1", "2", "3", "4"], "every unsent record failed, in batch order; the acked one did not");
        assert!(failures.iter().all(|f| matches!(f.error, PublishError::Closed)));
    }
}
