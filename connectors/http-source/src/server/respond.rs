//! The answers: fixed status bodies, JSON errors, `Retry-After`, and the answer for a
//! record Danube did not take.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use danube_connect_core::PublishError;

/// A fixed status answer (`{"status":"..."}`), built without serializing per request.
pub(super) fn status_response(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A JSON answer.
pub(super) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// An error answer, `{"error": message}`.
pub(super) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    json_response(status, serde_json::json!({ "error": message.to_string() }))
}

/// An error answer with `Retry-After: wait` (whole seconds, at least 1).
pub(crate) fn retry_after(status: StatusCode, wait: Duration, message: impl std::fmt::Display) -> Response {
    let mut response = error(status, message);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The answer for a record Danube did not take: the client keeps the event and learns
/// whether to send it again.
///
/// - [`PublishError::Invalid`] (e.g. the record fails its topic's schema): 400 with the
///   reason, since sending the same body again cannot succeed;
/// - [`PublishError::Unavailable`], [`PublishError::Timeout`], [`PublishError::Closed`]:
///   503 with `Retry-After`;
/// - [`PublishError::Rejected`] (the broker refused the record, e.g. too large or not
///   permitted): 502, the gateway's upstream refused; the sender should retry later,
///   after an operator fixed the cause.
pub fn publish_failure(error: &PublishError, wait: Duration) -> Response {
    if matches!(error, PublishError::Invalid { .. }) {
        self::error(StatusCode::BAD_REQUEST, error)
    } else if matches!(error, PublishError::Closed) {
        retry_after(StatusCode::SERVICE_UNAVAILABLE, wait, "shutting down")
    } else if error.is_transient() {
        retry_after(StatusCode::SERVICE_UNAVAILABLE, wait, "danube is unavailable")
    } else {
        self::error(StatusCode::BAD_GATEWAY, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_text(response: Response) -> String {
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn invalid_record_is_a_400_naming_the_reason() {
        let error = PublishError::Invalid { topic: "/default/orders".into(), message: "field `id` is required".into() };
        let response = publish_failure(&error, Duration::from_secs(3));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let text = body_text(response).await;
        assert!(text.contains("field `id` is required") && text.contains("/default/orders"), "{text}");
    }

    #[tokio::test]
    async fn broker_trouble_is_a_503_with_retry_after() {
        let timeout = PublishError::Timeout { topic: "/default/orders".into(), timeout: Duration::from_secs(30) };
        for error in [timeout, PublishError::Closed] {
            let response = publish_failure(&error, Duration::from_millis(2500));
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{error}");
            assert_eq!(response.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("3"));
        }
    }
}
