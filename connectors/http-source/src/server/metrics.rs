//! The HTTP source's own metrics (labels bounded: endpoint id or `dynamic`, status code).

use std::time::Instant;

use axum::http::StatusCode;
use danube_connect_core::{ConnectorMetrics, MetricsError};
use danube_connect_core::{Counter, CounterVec, Histogram, HistogramVec};

use crate::endpoint::Endpoint;

/// The HTTP source's own metrics (labels bounded: endpoint id or `dynamic`, status code).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: CounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers the metrics in the runtime's registry.
    pub fn new(metrics: &ConnectorMetrics) -> Result<Self, MetricsError> {
        let requests = metrics.counter_vec(
            "http_source_requests_total",
            "Webhook requests by endpoint and status.",
            &["endpoint", "status"],
        )?;
        let duration = metrics.histogram_vec(
            "http_source_request_duration_seconds",
            "Webhook request duration.",
            &["endpoint"],
            ConnectorMetrics::seconds_buckets(),
        )?;
        Ok(Self { requests, duration })
    }

    /// Counts a request no endpoint matched.
    pub(super) fn observe_unmatched(&self, status: StatusCode, started: Instant) {
        self.requests.with_label_values(&["unmatched", status.as_str()]).inc();
        self.duration.with_label_values(&["unmatched"]).observe(started.elapsed().as_secs_f64());
    }

    /// Counts a request of `endpoint`. The endpoint's duration histogram and success counter
    /// are looked up once and kept on the endpoint; other statuses are looked up per request.
    pub(super) fn observe(&self, endpoint: &Endpoint, status: StatusCode, started: Instant) {
        let handles = endpoint.metrics.get_or_init(|| EndpointMetrics {
            success_status: endpoint.success,
            success: self.requests.with_label_values(&[&endpoint.metric_label, endpoint.success.as_str()]),
            duration: self.duration.with_label_values(&[&endpoint.metric_label]),
        });
        if status == handles.success_status {
            handles.success.inc();
        } else {
            self.requests.with_label_values(&[&endpoint.metric_label, status.as_str()]).inc();
        }
        handles.duration.observe(started.elapsed().as_secs_f64());
    }
}

/// One endpoint's metric handles, resolved at its first request.
#[derive(Debug)]
pub struct EndpointMetrics {
    success_status: StatusCode,
    success: Counter,
    duration: Histogram,
}
