//! Handing a request's record to Danube: into the `accepted` buffer (answer 202 at once),
//! or published and waited for (`durable`), with `failure.policy` for a refused record.

use std::time::Instant;

use axum::http::StatusCode;
use axum::response::Response;
use danube_connect_core::failure::{Delivery, Handback, Undeliverable};
use danube_connect_core::PublishFailure;
use danube_connect_core::{PendingPublish, PublishError, SourceRecord};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::warn;

use super::respond::{json_response, publish_failure, retry_after, status_response};
use super::App;
use crate::dedup::Reservation;
use crate::endpoint::Endpoint;

/// A record of an `accepted` endpoint with its buffer slot, released once Danube acked it
/// (or it was dead-lettered).
pub type Buffered = (SourceRecord, BufferSlot);

/// A place in the `accepted` buffer: one of `accepted_buffer` records and the record's
/// bytes of `accepted_buffer_bytes`; both are given back on drop.
#[derive(Debug)]
pub struct BufferSlot {
    _record: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// `accepted`: the record goes into the in-memory buffer and the client gets 202 at once;
/// 503 when the buffer is full.
pub(super) fn accept(app: &App, record: SourceRecord, reservation: Option<Reservation>) -> Response {
    let Ok(record_slot) = app.buffer_slots.clone().try_acquire_owned() else {
        return retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "buffer full");
    };
    let size = u32::try_from(record_size(&record)).unwrap_or(u32::MAX);
    let Ok(bytes_slot) = app.buffer_bytes.clone().try_acquire_many_owned(size) else {
        return retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "buffer full (bytes)");
    };
    let slot = BufferSlot { _record: record_slot, _bytes: bytes_slot };
    // The channel has as many places as there are slots: it cannot be full here.
    match app.buffer.try_send((record, slot)) {
        Ok(()) => {
            if let Some(reservation) = reservation {
                reservation.confirm(Instant::now());
            }
            status_response(StatusCode::ACCEPTED, r#"{"status":"accepted"}"#)
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "buffer full")
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "shutting down")
        }
    }
}

/// `durable`: the record is published and the client answered with Danube's outcome, within
/// the request deadline (`reservation` and `permit` are held until that outcome).
pub(super) async fn publish(
    app: &App,
    endpoint: &Endpoint,
    record: SourceRecord,
    reservation: Option<Reservation>,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
) -> Response {
    let deadline = tokio::time::Instant::from_std(deadline);
    let pending = match tokio::time::timeout_at(deadline, app.publisher.submit_or_return(record)).await {
        Ok(Ok(pending)) => pending,
        Ok(Err(failure)) => return undelivered(app, failure, deadline).await,
        // Not queued: the record is not published, the client may send it again.
        Err(_) => return retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "timed out waiting for danube"),
    };
    let mut in_flight = InFlight { pending: Some(pending), reservation, permit: Some(permit) };
    match tokio::time::timeout_at(deadline, in_flight.outcome()).await {
        Ok(Ok(())) => status_response(endpoint.success, r#"{"status":"published"}"#),
        Ok(Err(failure)) => {
            warn!(endpoint = %endpoint.id, error = %danube_connect_core::error::error_chain(&failure.error), "record not published");
            undelivered(app, failure, deadline).await
        }
        Err(_) => retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "timed out waiting for danube"),
    }
}

/// A durable request's record, queued on its lane, with what the request holds until the
/// record's real outcome: its delivery-id reservation and its concurrency permit.
///
/// The record is published even when the request times out or its client goes away: a
/// record the client was not answered for may still reach Danube, so its delivery id stays
/// reserved (a retry gets 409, then `duplicate` once it landed) and its permit stays taken
/// (lingering publishes stay bounded). Dropped before the outcome, it hands the wait to a
/// task of its own; otherwise no task is spawned per request.
struct InFlight {
    pending: Option<PendingPublish>,
    reservation: Option<Reservation>,
    permit: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    /// Waits for Danube's answer and settles the reservation and permit; a failure hands
    /// the record back for the failure policy.
    async fn outcome(&mut self) -> Result<(), PublishFailure> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(PublishFailure {
                error: PublishError::Closed,
                record: SourceRecord::new(String::new(), Vec::new()),
            });
        };
        let result = pending.outcome().await;
        self.pending = None;
        settle(result.is_ok(), self.reservation.take(), self.permit.take());
        result
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some(pending) = self.pending.take() else { return };
        let (reservation, permit) = (self.reservation.take(), self.permit.take());
        // Outside a runtime (process teardown) nobody is left to wait: both are released.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let result = pending.await;
                settle(result.is_ok(), reservation, permit);
            });
        }
    }
}

/// Remembers the delivery id once Danube acked the record, and frees the permit either way.
fn settle(acked: bool, reservation: Option<Reservation>, permit: Option<OwnedSemaphorePermit>) {
    if let (true, Some(reservation)) = (acked, reservation) {
        reservation.confirm(Instant::now());
    }
    drop(permit);
}

/// The answer for a durable record Danube did not take, after `failure.policy` for a record
/// it refuses for good (`deadline` bounds a dead-letter publish):
///
/// - transient (Danube unavailable, shutting down): 503 with `Retry-After`, whatever the
///   policy — the broker, not the record, is the problem;
/// - `dead_letter`: 202 `{"status":"dead_lettered","error":...}` once Danube acked the dead
///   letter (the record is in Danube, so the sender is done with it);
/// - `nack`: refused, as [`publish_failure`] answers (400 for an invalid record, 502 for one
///   the broker refuses): the sender keeps the event;
/// - `stop`: the connector stops; 503 with `Retry-After`, so the sender sends it again to
///   the connector once it runs again.
async fn undelivered(app: &App, failure: PublishFailure, deadline: tokio::time::Instant) -> Response {
    let PublishFailure { error, record } = failure;
    if error.is_transient() {
        return publish_failure(&error, app.retry_after);
    }
    let failed = Undeliverable::refused(record, &error, 1);
    let reason = failed.error.clone();
    match tokio::time::timeout_at(deadline, app.failures.undeliverable(failed, Handback::Possible)).await {
        Ok(Delivery::Published) => status_response(StatusCode::OK, r#"{"status":"published"}"#),
        Ok(Delivery::DeadLettered) => {
            json_response(StatusCode::ACCEPTED, serde_json::json!({"status": "dead_lettered", "error": reason}))
        }
        Ok(Delivery::Refused) => publish_failure(&error, app.retry_after),
        Ok(Delivery::Stopped) => {
            retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "the connector is stopping (failure.policy)")
        }
        Ok(Delivery::NotDelivered { .. }) | Err(_) => {
            retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "the dead letter was not published in time")
        }
    }
}

/// The bytes a buffered record holds: payload, attributes and key.
fn record_size(record: &SourceRecord) -> usize {
    let attributes: usize = record.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
    record.payload.len() + attributes + record.routing_key.as_ref().map_or(0, |k| k.len())
}
