//! The pull-source loop: poll, publish (pipelined), commit acked offsets in poll order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::dead_letter::{dead_letter_record, Failure};
use super::Env;
use crate::config::FailurePolicy;
use crate::connector::SourceConnector;
use crate::error::{ConnectorError, PublishError};
use crate::publisher::{wait_for_ack, PublishFailure};
use crate::record::SourceOffset;
use crate::retry::RetryPolicy;

/// A batch whose records are being published, or finished.
enum InFlight {
    Running(JoinHandle<PolledBatch>),
    Done(Result<PolledBatch, tokio::task::JoinError>),
}

impl InFlight {
    fn is_finished(&self) -> bool {
        match self {
            Self::Running(task) => task.is_finished(),
            Self::Done(_) => true,
        }
    }

    async fn wait(&mut self) {
        if let Self::Running(task) = self {
            let result = task.await;
            *self = Self::Done(result);
        }
    }

    async fn into_result(self) -> Result<PolledBatch, tokio::task::JoinError> {
        match self {
            Self::Running(task) => task.await,
            Self::Done(result) => result,
        }
    }
}

/// One polled batch: its offsets and the publish outcome of each record.
struct PolledBatch {
    offsets: Vec<SourceOffset>,
    records: usize,
    failures: Vec<PublishFailure>,
}

pub(super) async fn run_source_loop(env: Env, index: usize, mut source: Box<dyn SourceConnector>) {
    let component = format!("source[{index}]");
    let retry = RetryPolicy::new(env.config.retry.clone());
    let max_in_flight = env.config.source.max_in_flight;
    let mut pending: VecDeque<(usize, InFlight)> = VecDeque::new();
    let mut in_flight = 0usize;
    let mut poll_delays = retry.delays();
    let mut last_health = Instant::now() - Duration::from_secs(60);
    let mut healthy = true;

    loop {
        healthy = healthy && commit_finished(&env, &mut *source, &mut pending, &mut in_flight, false).await;
        if !healthy || env.shutdown.is_cancelled() {
            break;
        }
        if in_flight >= max_in_flight {
            tokio::select! {
                _ = env.shutdown.cancelled() => break,
                _ = wait_front(&mut pending) => continue,
            }
        }
        if last_health.elapsed() >= Duration::from_secs(5) {
            let problem = source.health_check().await.err().map(|e| e.chain());
            env.health.set_component(&component, problem);
            last_health = Instant::now();
        }
        let polled = tokio::select! {
            biased;
            _ = env.shutdown.cancelled() => break,
            polled = source.poll() => polled,
        };
        let records = match polled {
            Ok(records) => {
                poll_delays = retry.delays();
                records
            }
            Err(ConnectorError::Fatal { message, source: cause }) => {
                env.stopper.fail(ConnectorError::Fatal { message, source: cause });
                break;
            }
            Err(error) => {
                let delay = poll_delays.next().unwrap_or(env.config.retry.max_backoff);
                warn!(error = %error.chain(), retry_in = ?delay, "poll failed");
                tokio::select! {
                    _ = env.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if records.is_empty() {
            tokio::task::yield_now().await;
            continue;
        }
        let mut offsets: Vec<SourceOffset> = Vec::new();
        let mut replies: Vec<oneshot::Receiver<Result<(), PublishFailure>>> = Vec::with_capacity(records.len());
        let count = records.len();
        for record in records {
            env.metrics.records_received.with_label_values(&[env.metrics.connector(), &record.topic]).inc();
            if let Some(offset) = &record.offset {
                if offsets.last() != Some(offset) {
                    offsets.push(offset.clone());
                }
            }
            match env.publisher.enqueue(record, None).await {
                Ok(rx) => replies.push(rx),
                Err(failure) => {
                    // Closed: the runtime is stopping; nothing of this batch is committed.
                    debug!(error = %failure.error, "publisher closed during enqueue");
                    replies.push(closed_reply(failure));
                }
            }
        }
        in_flight += count;
        env.metrics.buffer_depth.with_label_values(&[env.metrics.connector(), "source"]).set(in_flight as i64);
        pending.push_back((
            count,
            InFlight::Running(tokio::spawn(async move {
                let mut failures = Vec::new();
                for rx in replies {
                    if let Err(failure) = wait_for_ack(rx).await {
                        failures.push(failure);
                    }
                }
                PolledBatch { offsets, records: count, failures }
            })),
        ));
    }

    // Drain: everything already handed to the publisher is finished and committed.
    if healthy {
        commit_finished(&env, &mut *source, &mut pending, &mut in_flight, true).await;
    }
    if let Err(error) = source.shutdown().await {
        warn!(error = %error.chain(), "source shutdown failed");
    }
}

fn closed_reply(failure: PublishFailure) -> oneshot::Receiver<Result<(), PublishFailure>> {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Err(failure));
    rx
}

async fn wait_front(pending: &mut VecDeque<(usize, InFlight)>) {
    if let Some((_, batch)) = pending.front_mut() {
        batch.wait().await;
    }
}

/// Commits finished batches from the front, in poll order. With `wait`, waits for all.
/// Returns false when the connector must stop.
async fn commit_finished(
    env: &Env,
    source: &mut dyn SourceConnector,
    pending: &mut VecDeque<(usize, InFlight)>,
    in_flight: &mut usize,
    wait: bool,
) -> bool {
    let mut ready: Vec<SourceOffset> = Vec::new();
    while let Some((_, task)) = pending.front() {
        if !wait && !task.is_finished() {
            break;
        }
        let Some((count, task)) = pending.pop_front() else { break };
        *in_flight = in_flight.saturating_sub(count);
        let batch = match task.into_result().await {
            Ok(batch) => batch,
            Err(e) => {
                env.stopper.fail(ConnectorError::fatal("publish task failed", e));
                return false;
            }
        };
        if !handle_failures(env, batch.failures).await {
            // Not everything of this batch is in Danube: commit what came before, stop.
            commit(env, source, std::mem::take(&mut ready)).await;
            return false;
        }
        env.metrics.records_acked.with_label_values(&[env.metrics.connector(), "source"]).inc_by(batch.records as u64);
        ready.extend(batch.offsets);
    }
    env.metrics.buffer_depth.with_label_values(&[env.metrics.connector(), "source"]).set(*in_flight as i64);
    commit(env, source, ready).await
}

async fn commit(env: &Env, source: &mut dyn SourceConnector, offsets: Vec<SourceOffset>) -> bool {
    if offsets.is_empty() {
        return true;
    }
    let retry = RetryPolicy::new(env.config.retry.clone());
    let started = Instant::now();
    let mut delays = retry.delays();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match source.commit(offsets.clone()).await {
            Ok(()) => {
                env.metrics
                    .operation_latency
                    .with_label_values(&[env.metrics.connector(), "commit"])
                    .observe(started.elapsed().as_secs_f64());
                return true;
            }
            Err(error) if error.is_retryable() && attempt < env.config.retry.max_attempts => {
                let delay = delays.next().unwrap_or(env.config.retry.max_backoff);
                warn!(error = %error.chain(), attempt, "commit failed, retrying");
                tokio::time::sleep(delay).await;
            }
            Err(error) => {
                env.stopper.fail(error);
                return false;
            }
        }
    }
}

/// Applies the failure policy to records Danube refused. Returns false if any record is
/// neither in Danube nor dead-lettered (so its offset must not be committed).
async fn handle_failures(env: &Env, failures: Vec<PublishFailure>) -> bool {
    for failure in failures {
        if matches!(failure.error, PublishError::Closed) {
            return false;
        }
        let topic = failure.record.topic.clone();
        // Invalid records were counted by the publisher when it refused them.
        let kind = failure.error.dead_letter_kind();
        if kind == "rejected" {
            env.metrics.records_failed.with_label_values(&[env.metrics.connector(), &topic, kind]).inc();
        }
        if env.config.failure.policy != FailurePolicy::DeadLetter {
            env.stopper.fail(ConnectorError::fatal(format!("publish to {topic} rejected"), failure.error));
            return false;
        }
        let offset = failure.record.offset.as_ref().map(|o| format!("{}@{}", o.partition, o.position));
        let dlq = dead_letter_record(
            &env.config.dead_letter_topic(),
            failure.record.payload.clone(),
            &failure.record.attributes,
            failure.record.routing_key.clone(),
            &Failure {
                error: crate::error::error_chain(&failure.error),
                kind,
                connector: &env.config.name,
                source_topic: &topic,
                source_offset: offset,
                attempts: 1,
            },
        );
        match env.publisher.publish(dlq).await {
            Ok(()) => {
                env.metrics.records_dead_lettered.with_label_values(&[env.metrics.connector(), &topic]).inc();
            }
            Err(error) => {
                env.stopper.fail(ConnectorError::fatal("dead-letter publish failed", error));
                return false;
            }
        }
    }
    true
}
