//! The sink side: one consumer per topic, lanes that batch and process, acks after `Ok`.
//!
//! Each configured topic has its own task, so a slow topic never stalls the others. A topic
//! spreads its records over `sink.concurrency` lanes (same routing key → same lane with
//! `ordering = "key"`); each lane gathers a batch up to `max_records` / `max_bytes` or until
//! `linger` passes — the timer flushes even when no new message arrives, which matters
//! because the broker hands out only `max_unacked_messages` (default 10) before it sees acks.
//!
//! With `ordering = "key"` a lane also keeps per-key order across deferrals and nacks
//! ([`holds`]), and every record carries its delivery attempt ([`deliveries`]).

mod deliveries;
mod holds;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use danube_client::{Consumer, ConsumerOptions, SubType};
use danube_core::message::StreamMessage;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use self::deliveries::{message_key, Deliveries};
use self::holds::{Held, KeyHolds};
use super::dead_letter::{dead_letter_record, Failure};
use super::Env;
use crate::config::{FailurePolicy, Ordering, SinkTopicConfig, SubscriptionType};
use crate::connector::Sink;
use crate::error::ConnectorError;
use crate::record::SinkRecord;
use crate::retry::{RetryFailure, RetryPolicy};
use crate::stall::{FigureSource, Progress, StallWatch};
use crate::transform::{payload_bytes, payload_value, Applied, TransformError, Transforms};

/// Everything a lane needs to process and ack.
struct Lane {
    env: Env,
    topic: String,
    consumer: Arc<Mutex<Consumer>>,
    connector: Arc<dyn Sink>,
    retry: RetryPolicy,
    /// What this topic holds and settled, for stall detection.
    progress: Arc<Progress>,
    /// Delivery attempts and deferrals per message, shared by the topic's lanes.
    deliveries: Arc<Deliveries>,
    /// `sink.ordering = "key"`: keys held behind a deferred record.
    ordered: bool,
    /// The keys this lane holds (only with `ordered`).
    holds: std::sync::Mutex<KeyHolds>,
}

pub(super) async fn health_loop(env: Env, sink: Arc<dyn Sink>) {
    loop {
        let problem = sink.health_check().await.err().map(|e| e.chain());
        env.health.set_component("sink", problem);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = env.shutdown.cancelled() => return,
        }
    }
}

pub(super) async fn run_topic(env: Env, index: usize, topic: SinkTopicConfig, connector: Arc<dyn Sink>) {
    let retry = RetryPolicy::new(env.config.retry.clone());
    let mut reconnect_delays = retry.delays();
    let progress = Arc::new(Progress::default());
    let deliveries = Arc::new(Deliveries::default());
    let moved = Arc::new(tokio::sync::Notify::new());
    let watch = start_stall_watch(&env, &topic, &progress, &moved);
    let _stop_watch = watch.map(|token| token.drop_guard());
    loop {
        let Some(mut consumer) = subscribe(&env, index, &topic).await else { return };
        let mut messages = match consumer.receive().await {
            Ok(rx) => rx,
            Err(error) => {
                let delay = reconnect_delays.next().unwrap_or(Duration::from_secs(5));
                warn!(topic = %topic.topic, error = %crate::error::error_chain(&error), retry_in = ?delay, "receive failed, re-subscribing");
                consumer.close().await;
                if !pause(&env, delay).await {
                    return;
                }
                continue;
            }
        };
        info!(topic = %topic.topic, "consuming");
        let consumer = Arc::new(Mutex::new(consumer));
        let lanes = spawn_lanes(&env, &topic.topic, &consumer, &connector, &retry, &progress, &deliveries);
        let senders: Vec<mpsc::Sender<StreamMessage>> = lanes.iter().map(|(tx, _)| tx.clone()).collect();
        let round_robin = AtomicUsize::new(0);
        let stopping = loop {
            let message = tokio::select! {
                biased;
                _ = env.shutdown.cancelled() => break true,
                _ = moved.notified() => {
                    warn!(topic = %topic.topic, "the topic moved to another broker, re-subscribing");
                    break false;
                }
                message = messages.recv() => message,
            };
            let Some(message) = message else {
                warn!(topic = %topic.topic, "message stream closed, re-subscribing");
                break false;
            };
            reconnect_delays = retry.delays();
            progress.received(&message);
            env.metrics.records_received.with_label_values(&[env.metrics.connector(), &topic.topic]).inc();
            let lane = pick_lane(&env, &message, senders.len(), &round_robin);
            if senders[lane].send(message).await.is_err() {
                break env.shutdown.is_cancelled();
            }
        };
        drop(senders);
        // Lanes flush what they hold, process it and ack it before the consumer closes.
        for (tx, task) in lanes {
            drop(tx);
            let _ = task.await;
        }
        consumer.lock().await.close().await;
        // Whatever was left unacked is the broker's to redeliver.
        progress.forget_held();
        if stopping {
            return;
        }
        if !pause(&env, reconnect_delays.next().unwrap_or(Duration::from_secs(5))).await {
            return;
        }
    }
}

/// The subscription name a topic consumes with.
fn subscription_name(env: &Env, topic: &SinkTopicConfig) -> String {
    topic.subscription.clone().unwrap_or_else(|| env.config.name.clone())
}

/// Starts stall detection for `topic` when `danube.broker_metrics_url` or
/// `danube.broker_admin_url` is set; the returned token stops it.
fn start_stall_watch(
    env: &Env,
    topic: &SinkTopicConfig,
    progress: &Arc<Progress>,
    moved: &Arc<tokio::sync::Notify>,
) -> Option<tokio_util::sync::CancellationToken> {
    let source = FigureSource {
        metrics_url: env.config.danube.broker_metrics_url.clone(),
        admin_url: env.config.danube.broker_admin_url.clone(),
    };
    if source.metrics_url.is_none() && source.admin_url.is_none() {
        return None;
    }
    let subscription = subscription_name(env, topic);
    let gauge = env.metrics.sink_stalled.with_label_values(&[env.metrics.connector(), &topic.topic, &subscription]);
    gauge.set(0);
    let watch = StallWatch {
        source,
        topic: topic.topic.clone(),
        subscription,
        timeout: env.config.sink.stall_timeout,
        recovery: env.config.sink.stall_recovery,
        health: env.health.clone(),
        gauge,
        moved: moved.clone(),
    };
    let token = env.shutdown.child_token();
    tokio::spawn(watch.run(progress.clone(), token.clone()));
    Some(token)
}

/// Waits `delay` before re-subscribing; false when the runtime shuts down meanwhile.
async fn pause(env: &Env, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = env.shutdown.cancelled() => false,
    }
}

fn pick_lane(env: &Env, message: &StreamMessage, lanes: usize, round_robin: &AtomicUsize) -> usize {
    if lanes == 1 {
        return 0;
    }
    match (&message.routing_key, env.config.sink.ordering) {
        (Some(key), Ordering::Key) => {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut hasher);
            (hasher.finish() as usize) % lanes
        }
        _ => round_robin.fetch_add(1, AtomicOrdering::Relaxed) % lanes,
    }
}

/// Subscribes, retrying with backoff while the broker or the topic is missing.
async fn subscribe(env: &Env, index: usize, topic: &SinkTopicConfig) -> Option<Consumer> {
    let retry = RetryPolicy::new(env.config.retry.clone());
    let mut delays = retry.delays();
    loop {
        if env.shutdown.is_cancelled() {
            return None;
        }
        let sub_type = match topic.subscription_type {
            SubscriptionType::Exclusive => SubType::Exclusive,
            SubscriptionType::Shared => SubType::Shared,
            SubscriptionType::Failover => SubType::FailOver,
            SubscriptionType::KeyShared => SubType::KeyShared,
        };
        let built = env
            .client
            .new_consumer()
            .with_topic(topic.topic.clone())
            .with_consumer_name(topic.consumer_name.clone().unwrap_or_else(|| format!("{}-{index}", env.config.name)))
            .with_subscription(subscription_name(env, topic))
            .with_subscription_type(sub_type)
            .with_options(ConsumerOptions::new(3, 100, 1000))
            .build();
        let error = match built {
            Ok(mut consumer) => match consumer.subscribe().await {
                Ok(()) => return Some(consumer),
                Err(error) => error,
            },
            Err(error) => error,
        };
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        warn!(topic = %topic.topic, error = %crate::error::error_chain(&error), retry_in = ?delay, "subscribe failed, retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = env.shutdown.cancelled() => return None,
        }
    }
}

fn spawn_lanes(
    env: &Env,
    topic: &str,
    consumer: &Arc<Mutex<Consumer>>,
    connector: &Arc<dyn Sink>,
    retry: &RetryPolicy,
    progress: &Arc<Progress>,
    deliveries: &Arc<Deliveries>,
) -> Vec<(mpsc::Sender<StreamMessage>, JoinHandle<()>)> {
    (0..env.config.sink.concurrency)
        .map(|_| {
            // Tokio's bounded channel allocates as it fills: a large `prefetch` costs nothing
            // until the broker's dispatch window lets that many records through.
            let (tx, rx) = mpsc::channel(env.config.sink.prefetch);
            let lane = Lane {
                env: env.clone(),
                topic: topic.to_string(),
                consumer: consumer.clone(),
                connector: connector.clone(),
                retry: retry.clone(),
                progress: progress.clone(),
                deliveries: deliveries.clone(),
                ordered: env.config.sink.ordering == Ordering::Key,
                holds: std::sync::Mutex::new(KeyHolds::default()),
            };
            (tx, tokio::spawn(lane.run(rx)))
        })
        .collect()
}

impl Lane {
    /// Gathers batches and flushes them; with `ordering = "key"` it also holds the records
    /// of deferred keys (at most `sink.prefetch` per lane: at that bound the lane takes no
    /// more records from the topic's reader, which then waits, until held ones settle;
    /// nothing is dropped) and processes each deferred record again when its delay is over.
    /// At the end every held record is handed back to the broker.
    async fn run(self, mut rx: mpsc::Receiver<StreamMessage>) {
        let batch_config = self.env.config.sink.batch.clone();
        let bound = self.env.config.sink.prefetch.max(1);
        let mut batch: Vec<StreamMessage> = Vec::new();
        let mut bytes = 0usize;
        let mut flush_at: Option<tokio::time::Instant> = None;
        loop {
            let linger = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next_due = self.holds().next_due();
            let due = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Back-pressure at the bound; at shutdown the channel is drained all the same.
            let full = self.holds().held() >= bound && !self.env.shutdown.is_cancelled();
            tokio::select! {
                message = rx.recv(), if !full => match message {
                    Some(message) => {
                        if self.held_behind(&message) {
                            continue;
                        }
                        bytes += message.payload.len();
                        batch.push(message);
                        if flush_at.is_none() {
                            flush_at = Some(tokio::time::Instant::now() + batch_config.linger);
                        }
                        if batch.len() >= batch_config.max_records || bytes >= batch_config.max_bytes {
                            self.flush(std::mem::take(&mut batch)).await;
                            bytes = 0;
                            flush_at = None;
                        }
                    }
                    None => {
                        if !batch.is_empty() {
                            self.flush(std::mem::take(&mut batch)).await;
                        }
                        break;
                    }
                },
                _ = linger => {
                    self.flush(std::mem::take(&mut batch)).await;
                    bytes = 0;
                    flush_at = None;
                }
                _ = due => self.retry_due().await,
                _ = self.env.shutdown.cancelled(), if full => {}
            }
        }
        let held = self.holds().drain();
        if !held.is_empty() {
            self.hand_back(&held).await;
        }
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, KeyHolds> {
        self.holds.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// With `ordering = "key"`: whether `message` waits behind an earlier record of its key
    /// (it is then held, or it is a copy of a held record the broker delivered again).
    fn held_behind(&self, message: &StreamMessage) -> bool {
        if !self.ordered {
            return false;
        }
        match self.holds().hold_if_blocked(message) {
            Held::No => false,
            Held::Queued => true,
            Held::Duplicate => {
                debug!(topic = %self.topic, offset = message.msg_id.topic_offset, "a copy of a held record arrived; the held one stays");
                true
            }
        }
    }

    /// Processes again the deferred records whose delay is over; each one settled releases
    /// its key's held records. At shutdown they are handed back instead.
    async fn retry_due(&self) {
        let due = self.holds().take_due(tokio::time::Instant::now());
        for message in due {
            if self.env.shutdown.is_cancelled() || self.stopped() {
                self.hand_back(std::slice::from_ref(&message)).await;
                continue;
            }
            let key = message.routing_key.clone().unwrap_or_default();
            self.flush(vec![message]).await;
            self.release(&key).await;
        }
    }

    /// Processes the held records of `key`, in order, once the record it waited for is
    /// settled; a record deferred again holds the rest behind it.
    async fn release(&self, key: &str) {
        let Some(mut queue) = self.holds().release(key) else { return };
        let max = self.env.config.sink.batch.max_records.max(1);
        while !queue.is_empty() {
            if self.holds().is_held(key) {
                self.holds().requeue(key, queue);
                return;
            }
            if self.env.shutdown.is_cancelled() || self.stopped() {
                let rest: Vec<StreamMessage> = queue.into_iter().collect();
                self.hand_back(&rest).await;
                return;
            }
            let chunk: Vec<StreamMessage> = queue.drain(..max.min(queue.len())).collect();
            self.flush(chunk).await;
        }
    }

    /// Counts one more hand-over of `record` to the connector and sets its attempt number.
    fn count_delivery(&self, message: &StreamMessage, record: &mut SinkRecord) {
        let counts = self.deliveries.next(&message_key(message));
        record.attempt = counts.attempts;
        record.deferrals = counts.deferrals;
    }

    /// The records of a batch as handed to the connector once more.
    fn handed_again(&self, messages: &[StreamMessage], records: &[SinkRecord]) -> Vec<SinkRecord> {
        messages
            .iter()
            .zip(records)
            .map(|(message, record)| {
                let mut record = record.clone();
                self.count_delivery(message, &mut record);
                record
            })
            .collect()
    }

    fn labels(&self) -> [&str; 2] {
        [self.env.metrics.connector(), self.topic.as_str()]
    }

    /// Whether the connector stopped on a fatal error (`failure.policy = "stop"` included):
    /// then nothing more is processed or acked, so later records of a key are not acked
    /// ahead of the one that failed and are redelivered in order after a restart.
    fn stopped(&self) -> bool {
        self.env.stopper.has_failed()
    }

    async fn flush(&self, messages: Vec<StreamMessage>) {
        let messages: Vec<StreamMessage> = messages.into_iter().filter(|m| !self.held_behind(m)).collect();
        if messages.is_empty() || self.stopped() {
            return;
        }
        let records: Vec<SinkRecord> = messages.iter().map(|m| SinkRecord::from_message(m, &self.topic)).collect();
        let (messages, records) = self.decode(messages, records).await;
        if records.is_empty() || self.stopped() {
            return;
        }
        let (messages, records) = self.transform(messages, records).await;
        // A record that failed in decode or transform may have held its key.
        let (messages, mut records): (Vec<StreamMessage>, Vec<SinkRecord>) =
            messages.into_iter().zip(records).filter(|(m, _)| !self.held_behind(m)).unzip();
        if records.is_empty() || self.stopped() {
            return;
        }
        for (message, record) in messages.iter().zip(records.iter_mut()) {
            self.count_delivery(message, record);
        }
        // With telemetry on, each record gets a `process` span, and the connector sees the
        // record with that span as its `traceparent`.
        let spans: Vec<_> = records
            .iter_mut()
            .filter_map(|record| {
                crate::telemetry::start_record_span(
                    "process",
                    opentelemetry::trace::SpanKind::Consumer,
                    &self.topic,
                    &mut record.attributes,
                )
            })
            .collect();
        self.env.metrics.batch_size.with_label_values(&self.labels()).observe(records.len() as f64);
        let started = Instant::now();
        let result = self
            .retry
            .run_until(
                &self.env.shutdown,
                |attempt| {
                    let again = (attempt > 1).then(|| self.handed_again(&messages, &records));
                    let records = &records;
                    async move {
                        match &again {
                            Some(again) => self.connector.process_batch(again).await,
                            None => self.connector.process_batch(records).await,
                        }
                    }
                },
                |error, attempt, delay| {
                    self.env.metrics.records_retried.with_label_values(&self.labels()).inc();
                    warn!(topic = %self.topic, attempt, retry_in = ?delay, error = %error.chain(), "process failed, retrying");
                },
            )
            .await;
        if !spans.is_empty() {
            let verdict = match &result {
                Some(Ok(())) => None,
                Some(Err(failure)) => Some(failure.error.chain()),
                None => Some("handed back at shutdown".to_string()),
            };
            for span in spans {
                span.finish(verdict.as_ref().map(|v| v as &dyn std::fmt::Display));
            }
        }
        let Some(result) = result else {
            // Shutting down while the batch waited for a retry.
            self.hand_back(&messages).await;
            return;
        };
        self.env
            .metrics
            .operation_latency
            .with_label_values(&[self.env.metrics.connector(), "process"])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                for message in &messages {
                    self.ack(message).await;
                }
            }
            Err(RetryFailure { error: ConnectorError::PartialBatch { failures }, attempts }) => {
                let mut failed: Vec<Option<ConnectorError>> = (0..messages.len()).map(|_| None).collect();
                for (index, error) in failures {
                    if let Some(slot) = failed.get_mut(index) {
                        *slot = Some(error);
                    }
                }
                // The outside system's hint (Retry-After) for the records to retry: the
                // longest one, waited once before the first of them is re-sent.
                let retry_after = failed
                    .iter()
                    .filter_map(|error| match error {
                        Some(ConnectorError::Retryable { retry_after, .. }) => *retry_after,
                        _ => None,
                    })
                    .max();
                let mut waited: Option<bool> = None;
                for ((message, record), error) in messages.iter().zip(&records).zip(failed) {
                    if self.stopped() {
                        break;
                    }
                    match error {
                        None => self.ack(message).await,
                        Some(_) if self.held_behind(message) => {}
                        Some(error) if error.is_retryable() => {
                            let go_on = match waited {
                                Some(go_on) => go_on,
                                None => *waited.insert(self.wait_before_retry(retry_after).await),
                            };
                            // Shut down while waiting: handed back, redelivered later.
                            if !go_on {
                                self.hand_back(std::slice::from_ref(message)).await;
                            } else {
                                self.env.metrics.records_retried.with_label_values(&self.labels()).inc();
                                self.retry_one(message, record).await;
                            }
                        }
                        Some(error) => self.fail(message, record, error, attempts).await,
                    }
                }
            }
            Err(RetryFailure { error: ConnectorError::InvalidRecord { .. }, .. }) if records.len() > 1 => {
                // The batch as a whole was refused: find the bad records one by one.
                for (message, record) in messages.iter().zip(&records) {
                    if self.stopped() {
                        break;
                    }
                    if !self.held_behind(message) {
                        self.retry_one(message, record).await;
                    }
                }
            }
            Err(RetryFailure { error, attempts }) => {
                let error = Arc::new(error);
                for (message, record) in messages.iter().zip(&records) {
                    if self.stopped() {
                        break;
                    }
                    if !self.held_behind(message) {
                        self.fail(message, record, clone_error(&error), attempts).await;
                    }
                }
            }
        }
    }

    /// Decodes records carrying a `schema_id` (see [`crate::schema`]); a record that does not
    /// decode follows the failure policy and leaves the batch.
    async fn decode(
        &self,
        messages: Vec<StreamMessage>,
        records: Vec<SinkRecord>,
    ) -> (Vec<StreamMessage>, Vec<SinkRecord>) {
        let Some(cache) = &self.env.schema_cache else { return (messages, records) };
        if records.iter().all(|r| r.schema_id.is_none()) {
            return (messages, records);
        }
        let mut kept = (Vec::with_capacity(messages.len()), Vec::with_capacity(records.len()));
        let mut remaining = messages.into_iter().zip(records);
        while let Some((message, mut record)) = remaining.next() {
            if self.stopped() {
                break;
            }
            let result = self
                .retry
                .run_until(
                    &self.env.shutdown,
                    |_| {
                        let mut attempt = record.clone();
                        async move { cache.decode(&mut attempt).await.map(|()| attempt.value) }
                    },
                    |error, attempt, delay| {
                        warn!(topic = %self.topic, attempt, retry_in = ?delay, error = %error.chain(), "schema fetch failed, retrying");
                    },
                )
                .await;
            match result {
                Some(Ok(value)) => {
                    record.value = value;
                    kept.0.push(message);
                    kept.1.push(record);
                }
                Some(Err(RetryFailure { error, attempts })) => self.fail(&message, &record, error, attempts).await,
                // Shutting down: this record and the rest are handed back.
                None => {
                    let rest: Vec<StreamMessage> =
                        std::iter::once(message).chain(remaining.by_ref().map(|(m, _)| m)).collect();
                    self.hand_back(&rest).await;
                    break;
                }
            }
        }
        kept
    }

    /// Runs `[[transforms]]` on each record (see [`crate::transform`]): a dropped record is
    /// acked at once (counted in `connector_transform_dropped_total`), one a transform fails
    /// on follows the failure policy as an invalid record; the others go on, transformed.
    async fn transform(
        &self,
        messages: Vec<StreamMessage>,
        records: Vec<SinkRecord>,
    ) -> (Vec<StreamMessage>, Vec<SinkRecord>) {
        let Some(transforms) = &self.env.transforms else { return (messages, records) };
        if !transforms.applies_to(&self.topic) {
            return (messages, records);
        }
        let metrics = &self.env.metrics;
        let mut kept = (Vec::with_capacity(messages.len()), Vec::with_capacity(records.len()));
        for (message, record) in messages.into_iter().zip(records) {
            if self.stopped() {
                break;
            }
            match transform_sink_record(transforms, &record) {
                Ok(SinkOutcome::Kept(transformed)) => {
                    kept.0.push(message);
                    kept.1.push(*transformed);
                }
                Ok(SinkOutcome::Dropped(transform)) => {
                    metrics.transform_dropped.with_label_values(&[metrics.connector(), &self.topic, &transform]).inc();
                    self.ack(&message).await;
                }
                Err(error) => {
                    metrics
                        .transform_failed
                        .with_label_values(&[metrics.connector(), &self.topic, error.transform()])
                        .inc();
                    let error = ConnectorError::invalid("transform", error);
                    self.fail(&message, &record, error, 1).await;
                }
            }
        }
        kept
    }

    /// Waits before re-sending the records a partial batch failed: the first backoff delay,
    /// or the outside system's `retry_after` hint when it is longer. Returns false when the
    /// runtime shuts down meanwhile (the records are then left unacked).
    async fn wait_before_retry(&self, retry_after: Option<Duration>) -> bool {
        let backoff = self.retry.delays().next().unwrap_or(self.retry.config().initial_backoff);
        let delay = retry_after.map_or(backoff, |hint| hint.max(backoff));
        debug!(topic = %self.topic, retry_in = ?delay, "partial batch: waiting before re-sending the failed records");
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.env.shutdown.cancelled() => false,
        }
    }

    async fn retry_one(&self, message: &StreamMessage, record: &SinkRecord) {
        let result = self
            .retry
            .run_until(
                &self.env.shutdown,
                |_| {
                    let mut again = record.clone();
                    self.count_delivery(message, &mut again);
                    async move { self.connector.process(&again).await }
                },
                |_, _, _| self.env.metrics.records_retried.with_label_values(&self.labels()).inc(),
            )
            .await;
        match result {
            Some(Ok(())) => self.ack(message).await,
            Some(Err(RetryFailure { error, attempts })) => self.fail(message, record, error, attempts).await,
            // Shutting down while waiting to retry.
            None => self.hand_back(std::slice::from_ref(message)).await,
        }
    }

    /// Applies the failure policy to one record that was not written.
    async fn fail(&self, message: &StreamMessage, record: &SinkRecord, error: ConnectorError, attempts: usize) {
        let metrics = &self.env.metrics;
        metrics.records_failed.with_label_values(&[metrics.connector(), &self.topic, error.kind()]).inc();
        let policy = self.env.config.failure.policy;
        match (&error, policy) {
            (ConnectorError::Fatal { .. }, _) => self.env.stopper.fail(error),
            // At shutdown a deferred record is handed back at once: Danube v0.15.1 does not
            // bring back a record nacked with a delay by a consumer that then disconnects
            // (measured: never within 120 s; see docs/running-on-danube.md).
            (ConnectorError::Defer { .. }, _) if self.env.shutdown.is_cancelled() => {
                self.hand_back(std::slice::from_ref(message)).await
            }
            (ConnectorError::Defer { delay, .. }, _) => self.later(message, *delay, error.kind()).await,
            (_, FailurePolicy::Stop) => self.env.stopper.fail(error),
            (_, FailurePolicy::Nack) => self.later(message, self.env.config.failure.nack_delay, error.kind()).await,
            (_, FailurePolicy::DeadLetter) => {
                let dlq = dead_letter_record(
                    &self.env.config.dead_letter_topic(),
                    record.payload.clone(),
                    &record.attributes,
                    record.routing_key.clone(),
                    &Failure {
                        error: error.chain(),
                        kind: error.kind(),
                        connector: &self.env.config.name,
                        source_topic: &self.topic,
                        source_offset: Some(record.offset.to_string()),
                        attempts: attempts.max(self.deliveries.get(&message_key(message)).attempts as usize),
                    },
                );
                match self.env.publisher.publish(dlq).await {
                    Ok(()) => {
                        metrics.records_dead_lettered.with_label_values(&self.labels()).inc();
                        self.ack(message).await;
                    }
                    Err(publish_error) => {
                        warn!(topic = %self.topic, error = %crate::error::error_chain(&publish_error), "dead-letter publish failed; record handed back to the broker");
                        self.later(message, self.env.config.failure.nack_delay, "dead_letter_failed").await;
                    }
                }
            }
        }
    }

    async fn ack(&self, message: &StreamMessage) {
        let metrics = &self.env.metrics;
        let result = self.consumer.lock().await.ack(message).await;
        match result {
            Ok(()) => {
                self.progress.settled(message, true);
                self.deliveries.forget(&message_key(message));
                metrics.records_acked.with_label_values(&self.labels()).inc();
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                let latency = now.saturating_sub(message.publish_time) as f64 / 1000.0;
                metrics.end_to_end_latency.with_label_values(&self.labels()).observe(latency);
            }
            // The record was written; the broker will redeliver it (at-least-once).
            Err(error) => {
                self.progress.settled(message, false);
                warn!(topic = %self.topic, error = %crate::error::error_chain(&error), "ack failed; the record may be redelivered")
            }
        }
    }

    /// Hands records back to the broker at shutdown, unprocessed: a nack without delay, so
    /// the next consumer gets them at once (Danube v0.15.1 would otherwise wait for its 30 s
    /// ack timeout before redelivering them).
    /// With `ordering = "key"` the keys of the records stay held until the lane ends, so
    /// their later records are handed back too, unprocessed.
    async fn hand_back(&self, messages: &[StreamMessage]) {
        debug!(topic = %self.topic, records = messages.len(), "stopping: records handed back for redelivery");
        for message in messages {
            if let (true, Some(key)) = (self.ordered, &message.routing_key) {
                self.holds().handed_back(message, key);
            }
            self.nack(message, Duration::ZERO, "shutdown").await;
        }
    }

    /// Hands a record back for later (a deferral, or `failure.policy = "nack"`). With
    /// `ordering = "key"` a record with a routing key stays in the lane and is processed again
    /// after `delay`, its key's later records held behind it ([`holds`]); otherwise it is
    /// nacked with `delay` and the broker redelivers it.
    async fn later(&self, message: &StreamMessage, delay: Duration, reason: &str) {
        self.deliveries.deferred(&message_key(message));
        match (&message.routing_key, self.ordered) {
            (Some(key), true) => {
                debug!(topic = %self.topic, retry_in = ?delay, reason, "the record waits in the lane; its key's later records are held behind it");
                self.holds().defer(message, key, tokio::time::Instant::now() + delay);
            }
            _ => self.nack(message, delay, reason).await,
        }
    }

    async fn nack(&self, message: &StreamMessage, delay: Duration, reason: &str) {
        self.env.metrics.records_nacked.with_label_values(&self.labels()).inc();
        self.progress.settled(message, false);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let result = self.consumer.lock().await.nack(message, Some(delay_ms), Some(reason.to_string())).await;
        if let Err(error) = result {
            debug!(topic = %self.topic, error = %crate::error::error_chain(&error), "nack failed; ack timeout will redeliver");
        }
    }
}

/// What the transforms made of a sink record.
enum SinkOutcome {
    /// The record, transformed.
    Kept(Box<SinkRecord>),
    /// Dropped by the named transform.
    Dropped(String),
}

/// Runs the transforms on one sink record. The program sees the schema-decoded value when
/// there is one; the result's JSON becomes the payload (and the value, when there was one),
/// and the record no longer claims its registry schema, since the payload is JSON now.
fn transform_sink_record(transforms: &Transforms, record: &SinkRecord) -> Result<SinkOutcome, TransformError> {
    let (payload, was_json) = match &record.value {
        Some(value) => (vrl::value::Value::from(value), true),
        None => payload_value(&record.payload),
    };
    let out = match transforms.apply(&record.topic, record.routing_key.as_deref(), &record.attributes, payload)? {
        Applied::Kept(out) => out,
        Applied::Dropped { transform } => return Ok(SinkOutcome::Dropped(transform)),
    };
    let output_error = |message: String| TransformError::Output {
        transform: out.transform.clone().unwrap_or_default(),
        field: ".",
        message,
    };
    let payload = payload_bytes(&out.payload, was_json).map_err(|e| output_error(e.to_string()))?;
    let mut transformed = record.clone();
    if record.value.is_some() {
        transformed.value = Some(serde_json::to_value(&out.payload).map_err(|e| output_error(e.to_string()))?);
        transformed.schema_id = None;
        transformed.schema_version = None;
    }
    transformed.payload = payload;
    transformed.topic = out.topic;
    transformed.routing_key = out.key;
    transformed.attributes = out.attributes;
    Ok(SinkOutcome::Kept(Box::new(transformed)))
}

/// Errors are not `Clone` (they keep their source); the policy needs one per record.
fn clone_error(error: &Arc<ConnectorError>) -> ConnectorError {
    match error.as_ref() {
        ConnectorError::Retryable { message, retry_after, .. } => ConnectorError::Retryable {
            message: message.clone(),
            retry_after: *retry_after,
            source: Some(Box::new(SharedError(error.clone()))),
        },
        ConnectorError::InvalidRecord { message, .. } => ConnectorError::InvalidRecord {
            message: message.clone(),
            source: Some(Box::new(SharedError(error.clone()))),
        },
        ConnectorError::Defer { delay, message } => ConnectorError::Defer { delay: *delay, message: message.clone() },
        ConnectorError::Fatal { message, .. } => {
            ConnectorError::Fatal { message: message.clone(), source: Some(Box::new(SharedError(error.clone()))) }
        }
        ConnectorError::PartialBatch { .. } => ConnectorError::fatal("partial batch", SharedError(error.clone())),
    }
}

/// Lets one error be the source of several.
#[derive(Debug)]
struct SharedError(Arc<ConnectorError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::error::Error::source(self.0.as_ref()) {
            Some(source) => write!(f, "{}", crate::error::error_chain(source)),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for SharedError {}
