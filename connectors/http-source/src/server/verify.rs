//! Reading and verifying the body: within the request deadline, large bodies verified on
//! the blocking pool.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::respond::{error, retry_after};
use super::App;
use crate::signature::{Checked, Verified, Verifier, VerifyError};

/// Bodies up to this size are verified on the request's task (microseconds); larger ones
/// on the blocking pool, a bounded number at once, so hashing megabytes never holds a
/// worker that other requests (and `/healthz`) need.
const INLINE_VERIFY_BYTES: usize = 64 * 1024;

/// Checks the body against the signature candidates: on this task for small bodies, on the
/// blocking pool (at most `verify_slots` at once) for large ones, within the deadline.
pub(super) async fn verify_body(
    app: &App,
    verifier: Arc<Verifier>,
    checked: Checked,
    body: &bytes::Bytes,
    deadline: Instant,
) -> Result<Verified, Response> {
    let unauthorized = |e: VerifyError| error(StatusCode::UNAUTHORIZED, e);
    if !checked.needs_body() || body.len() <= INLINE_VERIFY_BYTES {
        return checked.verify_body(&verifier, body).map_err(unauthorized);
    }
    let deadline = tokio::time::Instant::from_std(deadline);
    let too_slow =
        || retry_after(StatusCode::SERVICE_UNAVAILABLE, app.retry_after, "verification did not finish in time");
    let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, app.verify_slots.clone().acquire_owned()).await else {
        return Err(too_slow());
    };
    let body = body.clone();
    let task = tokio::task::spawn_blocking(move || {
        let result = checked.verify_body(&verifier, &body);
        drop(slot);
        result
    });
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(result)) => result.map_err(unauthorized),
        Ok(Err(_)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "verification failed to run")),
        Err(_) => Err(too_slow()),
    }
}

/// The body, at most `limit` bytes, received before `deadline`.
pub(super) async fn read_body(body: Body, limit: usize, deadline: Instant) -> Result<bytes::Bytes, Response> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {limit} bytes")))
        }
        Ok(Err(e)) => Err(error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}"))),
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "body not received in time")),
    }
}
