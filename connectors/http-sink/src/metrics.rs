//! The HTTP sink's own metrics (labelled `connector` by the runtime).

use danube_connect_core::{ConnectorMetrics, MetricsError};
use danube_connect_core::{CounterVec, GaugeVec, HistogramVec};

/// The connector's own metrics (labels: bounded outcome names).
#[derive(Debug, Clone)]
pub(crate) struct SinkMetrics {
    requests: CounterVec,
    /// Duration of one request.
    duration: HistogramVec,
    /// Endpoints whose circuit is open.
    open_circuits: GaugeVec,
}

impl SinkMetrics {
    /// Registers the metrics in the runtime's registry.
    pub(crate) fn register(metrics: &ConnectorMetrics) -> Result<Self, MetricsError> {
        let requests = metrics.counter_vec(
            "http_sink_requests_total",
            "HTTP requests by outcome (success, retryable, permanent, network, deferred, refused by the SSRF guard).",
            &["outcome"],
        )?;
        let duration = metrics.histogram_vec(
            "http_sink_request_duration_seconds",
            "Duration of one HTTP request.",
            &[],
            ConnectorMetrics::seconds_buckets(),
        )?;
        let open_circuits = metrics.gauge_vec("http_sink_open_circuits", "Endpoints whose circuit is open.", &[])?;
        Ok(Self { requests, duration, open_circuits })
    }

    /// Metrics in a registry of their own (a sink built outside the runtime).
    pub(crate) fn unregistered() -> Self {
        Self::register(&ConnectorMetrics::new("http-sink")).expect("a fresh registry accepts every metric once")
    }

    /// Counts one request of `outcome`.
    pub(crate) fn outcome(&self, outcome: &str) {
        self.requests.with_label_values(&[outcome]).inc();
    }

    /// Records the duration of one request.
    pub(crate) fn observe_duration(&self, seconds: f64) {
        self.duration.with_label_values(&[] as &[&str]).observe(seconds);
    }

    /// Sets the number of endpoints whose circuit is open.
    pub(crate) fn set_open_circuits(&self, open: i64) {
        self.open_circuits.with_label_values(&[] as &[&str]).set(open);
    }
}
