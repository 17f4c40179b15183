//! `failure.policy` for records a connector delivers outside the runtime's own loops: push
//! sources (HTTP, MQTT) and a sink's own work after it acked Danube (ClickHouse's spool).
//!
//! [`FailureHandler`] is the one implementation, reachable as [`Context::failures`](crate::Context::failures).
//! [`FailureHandler::publish_or_dead_letter`] publishes a record,
//! retries transient failures with [`RetryPolicy`] (`retry.*`) and, when Danube refuses the
//! record for good, applies the policy; [`FailureHandler::undeliverable`] applies it to a
//! record that never reached the publisher (it cannot be mapped, or its outside write was
//! refused). The answer, a [`Delivery`], tells the caller whether it may acknowledge its
//! outside system.
//!
//! | policy | the outside system still holds the record ([`Handback::Possible`]) | it was acknowledged already ([`Handback::Impossible`]) |
//! |---|---|---|
//! | `dead_letter` | dead-lettered, then [`Delivery::DeadLettered`]: ack it | the same |
//! | `nack` | [`Delivery::Refused`]: refuse it so it is sent again | as `stop`: nothing can hand it back |
//! | `stop` | the connector stops with the error, [`Delivery::Stopped`]: do not ack | the same |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::config::{FailurePolicy, RuntimeConfig};
use crate::error::{error_chain, ConnectorError, PublishError};
use crate::metrics::Metrics;
use crate::publisher::{wait_for_ack, PublishFailure, Publisher};
use crate::record::SourceRecord;
use crate::retry::RetryPolicy;
use crate::runtime::dead_letter::{dead_letter_record, Failure};
use crate::runtime::Stopper;

/// Whether the outside system a record came from can still take it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handback {
    /// The outside system still holds the record (an HTTP request not answered yet, an MQTT
    /// message not PUBACKed): transient failures are retried per `retry.*` until shutdown,
    /// then the record is handed back ([`Delivery::NotDelivered`]); `nack` refuses it.
    Possible,
    /// The outside system was acknowledged already (an HTTP `accepted` answer, a PUBACK from
    /// the embedded broker, a row spooled and acked to Danube): transient failures are
    /// retried until the publisher closes at the end of the drain (or the handler's own
    /// stop token, see [`FailureHandler::with_stop`]); `nack` acts as `stop`, since nothing
    /// can hand the record back.
    Impossible,
}

/// What became of a record handed to the [`FailureHandler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Danube acked the record: acknowledge the outside system.
    Published,
    /// Danube acked its dead letter (`failure.policy = dead_letter`): acknowledge it.
    DeadLettered,
    /// `failure.policy = nack`: refuse the record to the outside system (withhold the
    /// acknowledgement, answer an error) so it is sent again; do not acknowledge it.
    Refused,
    /// The connector is stopping because of this record (`stop`, `nack` of a record that
    /// cannot be handed back, or a dead letter Danube refuses for good): do not acknowledge.
    Stopped,
    /// Not delivered for now: Danube stayed unavailable, or shutdown came first. Do not
    /// acknowledge it; the outside system (or the connector's own store) keeps it.
    NotDelivered {
        /// The last error, one line.
        reason: String,
    },
}

impl Delivery {
    /// Whether the outside system may be acknowledged: the record is in Danube, on its topic
    /// or on the dead-letter topic.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Self::Published | Self::DeadLettered)
    }
}

/// A record that cannot be delivered, with what failed (the dead letter's content).
#[derive(Debug, Clone)]
pub struct Undeliverable {
    /// The original payload.
    pub payload: Bytes,
    /// The original attributes.
    pub attributes: HashMap<String, String>,
    /// The original routing key.
    pub routing_key: Option<String>,
    /// The topic it came from (sinks) or was meant for (sources); `dlq.source_topic`.
    pub source_topic: String,
    /// Its position in the source, if any; `dlq.source_offset`.
    pub source_offset: Option<String>,
    /// The error chain, one line; `dlq.error`.
    pub error: String,
    /// The error class (`invalid`, `rejected`, `topic_limit`, ...); `dlq.error_kind`.
    pub kind: &'static str,
    /// Attempts made; `dlq.attempts`.
    pub attempts: usize,
}

impl Undeliverable {
    /// A record Danube refused with `error` after `attempts` attempts.
    pub fn refused(record: SourceRecord, error: &PublishError, attempts: usize) -> Self {
        Self {
            source_offset: record.offset.as_ref().map(|o| format!("{}@{}", o.partition, o.position)),
            payload: record.payload,
            attributes: record.attributes,
            routing_key: record.routing_key,
            source_topic: record.topic,
            error: error_chain(error),
            kind: error.dead_letter_kind(),
            attempts,
        }
    }
}

/// Applies `failure.policy` to records that cannot be delivered. Cheap to clone.
#[derive(Clone)]
pub struct FailureHandler {
    config: Arc<RuntimeConfig>,
    publisher: Publisher,
    metrics: Metrics,
    stopper: Stopper,
    shutdown: CancellationToken,
    retry: RetryPolicy,
    /// Ends retries (for both [`Handback`]s) when set; see [`with_stop`](Self::with_stop).
    stop: Option<CancellationToken>,
}

impl std::fmt::Debug for FailureHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailureHandler").field("policy", &self.config.failure.policy).finish_non_exhaustive()
    }
}

impl FailureHandler {
    pub(crate) fn new(
        config: Arc<RuntimeConfig>,
        publisher: Publisher,
        metrics: Metrics,
        stopper: Stopper,
        shutdown: CancellationToken,
    ) -> Self {
        let retry = RetryPolicy::new(config.retry.clone());
        Self { config, publisher, metrics, stopper, shutdown, retry, stop: None }
    }

    /// The policy in force.
    pub fn policy(&self) -> FailurePolicy {
        self.config.failure.policy
    }

    /// A handler whose retries (of the record and of its dead letter) end when `stop` is
    /// cancelled, whatever the [`Handback`]: for a connector that keeps the record itself
    /// (a spool) and must not be held up at its own shutdown.
    pub fn with_stop(&self, stop: CancellationToken) -> Self {
        Self { stop: Some(stop), ..self.clone() }
    }

    /// Publishes `record` and waits for Danube's ack. Transient failures (Danube unavailable)
    /// are retried per `retry.*`; when those attempts run out the record is handed back
    /// ([`Handback::Possible`]: [`Delivery::NotDelivered`]) or retried on ([`Handback::Impossible`],
    /// until the publisher closes). A record Danube refuses for good goes through
    /// `failure.policy` with the attempts made.
    pub async fn publish_or_dead_letter(&self, record: SourceRecord, handback: Handback) -> Delivery {
        let stop = self.stop_token(handback);
        let slot = Mutex::new(Some(record));
        let last_error: Mutex<Option<PublishError>> = Mutex::new(None);
        loop {
            let outcome = self
                .retry
                .run_until(
                    &stop,
                    |_| async {
                        let Some(record) = take(&slot) else {
                            return Err(ConnectorError::invalid_msg("the record was lost between attempts"));
                        };
                        match self.publish_once(record).await {
                            Ok(()) => Ok(()),
                            Err(PublishFailure { error, record }) => {
                                let retry = error.is_transient() && !matches!(error, PublishError::Closed);
                                let failed = if retry {
                                    ConnectorError::retryable_msg(error_chain(&error))
                                } else {
                                    ConnectorError::invalid_msg(error_chain(&error))
                                };
                                put(&slot, Some(record));
                                put(&last_error, Some(error));
                                Err(failed)
                            }
                        }
                    },
                    |error, attempt, delay| {
                        warn!(error = %error.chain(), attempt, retry_in = ?delay, "record not published yet, retrying");
                    },
                )
                .await;
            let attempts = match outcome {
                Some(Ok(())) => return Delivery::Published,
                None => return not_delivered(take(&last_error).map(|error| error_chain(&error))),
                Some(Err(failure)) => failure.attempts,
            };
            let (Some(record), Some(error)) = (take(&slot), take(&last_error)) else {
                return not_delivered(None);
            };
            if matches!(error, PublishError::Closed) {
                return not_delivered(Some(error_chain(&error)));
            }
            if !error.is_transient() {
                return self.apply(Undeliverable::refused(record, &error, attempts), handback, &stop).await;
            }
            if handback == Handback::Possible {
                return not_delivered(Some(error_chain(&error)));
            }
            // Acknowledged outside already: nobody else holds it, so it is retried on.
            warn!(topic = %record.topic, error = %error_chain(&error), attempts, "Danube still unavailable; the record is retried on");
            put(&slot, Some(record));
        }
    }

    /// Applies `failure.policy` to a record that cannot be delivered (see the module table).
    /// A dead letter is retried on transient failures like a record (see [`Handback`]).
    pub async fn undeliverable(&self, failed: Undeliverable, handback: Handback) -> Delivery {
        let stop = self.stop_token(handback);
        self.apply(failed, handback, &stop).await
    }

    fn stop_token(&self, handback: Handback) -> CancellationToken {
        match (&self.stop, handback) {
            (Some(stop), _) => stop.clone(),
            (None, Handback::Possible) => self.shutdown.clone(),
            // Never cancelled: the retries end when the publisher closes.
            (None, Handback::Impossible) => CancellationToken::new(),
        }
    }

    async fn publish_once(&self, record: SourceRecord) -> Result<(), PublishFailure> {
        let deadline = Instant::now() + self.config.source.publish_timeout;
        let reply = self.publisher.enqueue(record, Some(deadline)).await?;
        wait_for_ack(reply).await
    }

    async fn apply(&self, failed: Undeliverable, handback: Handback, stop: &CancellationToken) -> Delivery {
        let topic = failed.source_topic.clone();
        if failed.kind == "rejected" {
            // Invalid records were counted by the publisher when it refused them.
            self.metrics.records_failed.with_label_values(&[self.metrics.connector(), &topic, failed.kind]).inc();
        }
        match (self.config.failure.policy, handback) {
            (FailurePolicy::DeadLetter, _) => self.dead_letter(failed, stop).await,
            (FailurePolicy::Nack, Handback::Possible) => {
                warn!(%topic, kind = failed.kind, error = %failed.error, "record cannot be delivered; refused to its sender (failure.policy = nack)");
                self.metrics.records_nacked.with_label_values(&[self.metrics.connector(), &topic]).inc();
                Delivery::Refused
            }
            (FailurePolicy::Nack, Handback::Impossible) => {
                self.stopper.fail(ConnectorError::fatal_msg(format!(
                    "a record for {topic} cannot be delivered ({}: {}) and was acknowledged to its sender already, so \
                     failure.policy = nack cannot hand it back: stopping",
                    failed.kind, failed.error
                )));
                Delivery::Stopped
            }
            (FailurePolicy::Stop, _) => {
                self.stopper.fail(ConnectorError::fatal_msg(format!(
                    "a record for {topic} cannot be delivered ({}: {}); failure.policy = stop",
                    failed.kind, failed.error
                )));
                Delivery::Stopped
            }
        }
    }

    /// Publishes the dead letter of `failed`, retrying transient failures until `stop` or
    /// the publisher closes; a dead-letter topic that refuses it for good stops the connector.
    async fn dead_letter(&self, failed: Undeliverable, stop: &CancellationToken) -> Delivery {
        let dead_letter_topic = self.config.dead_letter_topic();
        let record = dead_letter_record(
            &dead_letter_topic,
            failed.payload,
            &failed.attributes,
            failed.routing_key,
            &Failure {
                error: failed.error,
                kind: failed.kind,
                connector: &self.config.name,
                source_topic: &failed.source_topic,
                source_offset: failed.source_offset,
                attempts: failed.attempts,
            },
        );
        let mut backoff = self.retry.backoff();
        loop {
            let error = match self.publish_once(record.clone()).await {
                Ok(()) => {
                    self.metrics
                        .records_dead_lettered
                        .with_label_values(&[self.metrics.connector(), &failed.source_topic])
                        .inc();
                    return Delivery::DeadLettered;
                }
                Err(failure) => failure.error,
            };
            let chain = error_chain(&error);
            if matches!(error, PublishError::Closed) {
                error!(topic = %failed.source_topic, %dead_letter_topic, error = %chain, "publisher closed before the dead letter was published");
                return not_delivered(Some(chain));
            }
            if !error.is_transient() {
                self.stopper.fail(ConnectorError::fatal(
                    format!(
                        "dead-letter publish to {dead_letter_topic} failed for a record of {}",
                        failed.source_topic
                    ),
                    error,
                ));
                return Delivery::Stopped;
            }
            let delay = backoff.next_delay();
            warn!(topic = %failed.source_topic, %dead_letter_topic, error = %chain, retry_in = ?delay, "dead letter not published yet, retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return not_delivered(Some(chain)),
            }
        }
    }
}

fn not_delivered(reason: Option<String>) -> Delivery {
    Delivery::NotDelivered { reason: reason.unwrap_or_else(|| "stopped before it was delivered".to_string()) }
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}

fn put<T>(slot: &Mutex<Option<T>>, value: Option<T>) {
    *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = value;
}
