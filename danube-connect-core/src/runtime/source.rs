//! The pull-source loop: poll, publish (pipelined), commit acked offsets in poll order.

use std::collections::VecDeque;
use std::time::Instant;

use tracing::warn;

use super::dead_letter::{dead_letter_record, Failure};
use super::{Env, SOURCE_HEALTH_INTERVAL};
use crate::config::FailurePolicy;
use crate::connector::PullSource;
use crate::error::{ConnectorError, PublishError};
use crate::publisher::{PendingBatch, PublishFailure};
use crate::record::SourceOffset;
use crate::retry::RetryPolicy;

/// A polled batch in the commit queue: its record count, its offsets (the first one is
/// looked at before it finishes, to hold back an offset it shares with the batch before it),
/// and its outcome.
struct Pending {
    count: usize,
    offsets: Vec<SourceOffset>,
    batch: PendingBatch,
}

/// Offsets acked but not committed yet because records carrying them may still come.
#[derive(Default)]
struct CommitState {
    /// The trailing offset of the last finished batch, held back until the next poll has
    /// returned (the next batch may carry more records with that offset).
    held: Option<SourceOffset>,
    /// True from the moment a batch was queued until the next `poll` returned.
    awaiting_poll: bool,
}

pub(super) async fn run_source_loop(env: Env, index: usize, mut source: Box<dyn PullSource>) {
    let component = format!("source[{index}]");
    let retry = RetryPolicy::new(env.config.retry.clone());
    let max_in_flight = env.config.source.max_in_flight;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut commits = CommitState::default();
    let mut in_flight = 0usize;
    let mut poll_delays = retry.delays();
    let mut last_health: Option<Instant> = None;
    let mut healthy = true;

    loop {
        healthy =
            healthy && commit_finished(&env, &mut *source, &mut pending, &mut commits, &mut in_flight, false).await;
        if !healthy || env.shutdown.is_cancelled() {
            break;
        }
        if in_flight >= max_in_flight {
            tokio::select! {
                _ = env.shutdown.cancelled() => break,
                _ = wait_front(&pending) => continue,
            }
        }
        // Between polls, since `poll` holds the source mutably.
        if last_health.is_none_or(|at| at.elapsed() >= SOURCE_HEALTH_INTERVAL) {
            let problem = source.health_check().await.err().map(|e| e.chain());
            env.health.set_component(&component, problem);
            last_health = Some(Instant::now());
        }
        let polled = tokio::select! {
            biased;
            _ = env.shutdown.cancelled() => break,
            polled = source.poll() => polled,
        };
        let records = match polled {
            Ok(records) => {
                commits.awaiting_poll = false;
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
        let count = records.len();
        let mut offsets: Vec<SourceOffset> = Vec::new();
        // Counted per run of one topic, not per record (a label lookup is not free).
        let mut received: Option<(&str, u64)> = None;
        for record in &records {
            if let Some(offset) = &record.offset {
                if offsets.last() != Some(offset) {
                    offsets.push(offset.clone());
                }
            }
            match &mut received {
                Some((topic, n)) if *topic == record.topic => *n += 1,
                _ => {
                    if let Some((topic, n)) = received.replace((&record.topic, 1)) {
                        count_received(&env, topic, n);
                    }
                }
            }
        }
        if let Some((topic, n)) = received {
            count_received(&env, topic, n);
        }
        // One hand-off per lane for the whole batch, one completion for the batch. A closed
        // publisher (the runtime is stopping) fails the records: nothing of it is committed.
        let batch = env.publisher.enqueue_batch(records, None).await;
        in_flight += count;
        env.metrics.buffer_depth.with_label_values(&[env.metrics.connector(), "source"]).set(in_flight as i64);
        commits.awaiting_poll = true;
        pending.push_back(Pending { count, offsets, batch });
    }

    // Drain: everything already handed to the publisher is finished and committed.
    if healthy {
        commit_finished(&env, &mut *source, &mut pending, &mut commits, &mut in_flight, true).await;
    }
    if let Err(error) = source.shutdown().await {
        warn!(error = %error.chain(), "source shutdown failed");
    }
}

fn count_received(env: &Env, topic: &str, records: u64) {
    env.metrics.records_received.with_label_values(&[env.metrics.connector(), topic]).inc_by(records);
}

async fn wait_front(pending: &VecDeque<Pending>) {
    if let Some(front) = pending.front() {
        front.batch.finished().await;
    }
}

/// Appends `offsets` to `ready`, merging an offset that continues the previous one.
fn extend_offsets(ready: &mut Vec<SourceOffset>, offsets: Vec<SourceOffset>) {
    for offset in offsets {
        if ready.last() != Some(&offset) {
            ready.push(offset);
        }
    }
}

/// Commits finished batches from the front, in poll order. With `wait`, waits for all.
/// Returns false when the connector must stop.
///
/// Records sharing one offset may span polls, so the last offset of the finished batches
/// is held back while a later batch that may carry it is still pending: the next pending
/// batch starts with it, or the next poll has not returned yet. It is committed once that
/// batch is done (or the poll brought other offsets); at the final drain it is committed.
async fn commit_finished(
    env: &Env,
    source: &mut dyn PullSource,
    pending: &mut VecDeque<Pending>,
    commits: &mut CommitState,
    in_flight: &mut usize,
    wait: bool,
) -> bool {
    let mut ready: Vec<SourceOffset> = commits.held.take().into_iter().collect();
    while let Some(front) = pending.front() {
        if !wait && !front.batch.is_finished() {
            break;
        }
        let Some(Pending { count, offsets, batch }) = pending.pop_front() else { break };
        *in_flight = in_flight.saturating_sub(count);
        batch.finished().await;
        if !handle_failures(env, batch.into_failures()).await {
            // Not everything of this batch is in Danube: commit what came before (except an
            // offset this batch shares with it), stop.
            if ready.last().is_some() && ready.last() == offsets.first() {
                ready.pop();
            }
            commit(env, source, std::mem::take(&mut ready)).await;
            return false;
        }
        env.metrics.records_acked.with_label_values(&[env.metrics.connector(), "source"]).inc_by(count as u64);
        extend_offsets(&mut ready, offsets);
    }
    env.metrics.buffer_depth.with_label_values(&[env.metrics.connector(), "source"]).set(*in_flight as i64);
    if !wait {
        let continued = match pending.iter().find_map(|p| p.offsets.first()) {
            Some(next) => ready.last() == Some(next),
            None => pending.is_empty() && commits.awaiting_poll,
        };
        if continued {
            commits.held = ready.pop();
        }
    }
    commit(env, source, ready).await
}

async fn commit(env: &Env, source: &mut dyn PullSource, offsets: Vec<SourceOffset>) -> bool {
    if offsets.is_empty() {
        return true;
    }
    // The retries are not cut short by shutdown: the drain commits what Danube acked, and
    // the runtime's drain deadline (`shutdown.timeout`) bounds the wait.
    let mut attempts = RetryPolicy::new(env.config.retry.clone()).attempts();
    let started = Instant::now();
    loop {
        match source.commit(offsets.clone()).await {
            Ok(()) => {
                env.metrics
                    .operation_latency
                    .with_label_values(&[env.metrics.connector(), "commit"])
                    .observe(started.elapsed().as_secs_f64());
                return true;
            }
            Err(error) => match attempts.after_failure(&error) {
                Some(delay) => {
                    warn!(error = %error.chain(), attempt = attempts.failed(), retry_in = ?delay, "commit failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    env.stopper.fail(error);
                    return false;
                }
            },
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
