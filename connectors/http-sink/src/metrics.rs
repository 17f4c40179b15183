//! The HTTP sink's own metrics.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

/// The connector's own metrics (labels: connector and bounded outcome names).
#[derive(Debug, Clone)]
pub(crate) struct SinkMetrics {
    /// The connector instance name (the `connector` label).
    pub(crate) connector: String,
    requests: IntCounterVec,
    /// Duration of one request.
    pub(crate) duration: HistogramVec,
    /// Endpoints whose circuit is open.
    pub(crate) open_circuits: IntGaugeVec,
}

impl SinkMetrics {
    /// Registers the metrics in the runtime's registry.
    pub(crate) fn register(metrics: &danube_connect_core::metrics::Metrics) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "http_sink_requests_total",
                "HTTP requests by outcome (success, retryable, permanent, network, deferred, refused by the SSRF guard).",
            ),
            &["connector", "outcome"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("http_sink_request_duration_seconds", "Duration of one HTTP request.")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["connector"],
        )?;
        let open_circuits =
            IntGaugeVec::new(Opts::new("http_sink_open_circuits", "Endpoints whose circuit is open."), &["connector"])?;
        let registry = metrics.registry();
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(open_circuits.clone()))?;
        Ok(Self { connector: metrics.connector().to_string(), requests, duration, open_circuits })
    }

    /// Counts one request of `outcome`.
    pub(crate) fn outcome(&self, outcome: &str) {
        self.requests.with_label_values(&[&self.connector, outcome]).inc();
    }
}
