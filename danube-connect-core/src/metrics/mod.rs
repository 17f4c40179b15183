//! Prometheus metrics shared by the runtime and connectors.
//!
//! Labels are bounded: `connector`, `topic` and `outcome` — never error text.
//!
//! The runtime's own metrics use the Prometheus client directly; a connector registers its
//! own through [`ConnectorMetrics`], which hands out core's [`handles`] so no `prometheus`
//! type appears in core's public API.

mod handles;

pub use handles::{Counter, CounterVec, FloatGauge, FloatGaugeVec, Gauge, GaugeVec, Histogram, HistogramVec};
use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The runtime's metrics, registered in one registry.
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    connector: String,
    /// Records taken in from the outside system (sources) or from Danube (sinks).
    pub(crate) records_received: IntCounterVec,
    /// Records published to Danube and acked by it.
    pub(crate) records_published: IntCounterVec,
    /// Records acked to Danube by a sink, or committed to the outside system by a source.
    pub(crate) records_acked: IntCounterVec,
    /// Records that failed (by outcome: `retryable`, `invalid`, `fatal`, `deferred`).
    pub(crate) records_failed: IntCounterVec,
    /// Retry attempts.
    pub(crate) records_retried: IntCounterVec,
    /// Records sent to the dead-letter topic.
    pub(crate) records_dead_lettered: IntCounterVec,
    /// Records handed back to the broker with a nack.
    pub(crate) records_nacked: IntCounterVec,
    /// Batch sizes handed to `process_batch`.
    pub(crate) batch_size: prometheus::HistogramVec,
    /// Time from publish (Danube publish_time) to sink ack, seconds.
    pub(crate) end_to_end_latency: prometheus::HistogramVec,
    /// Time of one operation (`publish`, `process`, `commit`), seconds.
    pub(crate) operation_latency: prometheus::HistogramVec,
    /// Records in flight (published but not acked; received but not acked).
    pub(crate) in_flight: IntGaugeVec,
    /// Records waiting in buffers.
    pub(crate) buffer_depth: IntGaugeVec,
    /// 1 while a sink topic's subscription is stalled by the broker (see [`crate::stall`]).
    pub(crate) sink_stalled: IntGaugeVec,
    /// 1 while the connector is ready (what `/readyz` answers), else 0 (see [`crate::health`]).
    pub(crate) ready: IntGaugeVec,
    /// Records a transform dropped (`abort`), by topic and transform; they are still
    /// committed (sources) or acked (sinks). See [`crate::transform`].
    pub(crate) transform_dropped: IntCounterVec,
    /// Records a transform failed on (they follow `failure.policy`), by topic and transform.
    pub(crate) transform_failed: IntCounterVec,
}

impl Metrics {
    /// A fresh registry for `connector`.
    pub(crate) fn new(connector: &str) -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["connector", "topic"]).expect("static metric definition");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = prometheus::HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("static metric definition");
            registry.register(Box::new(h.clone())).expect("metric registered once");
            h
        };
        let seconds = exponential_buckets(0.0005, 2.0, 16).expect("static buckets");
        Self {
            records_received: counter("connector_records_received_total", "Records taken in.", &["connector", "topic"]),
            records_published: counter(
                "connector_records_published_total",
                "Records acked by Danube.",
                &["connector", "topic"],
            ),
            records_acked: counter(
                "connector_records_acked_total",
                "Records acked to Danube (sinks) or committed (sources).",
                &["connector", "topic"],
            ),
            records_failed: counter(
                "connector_records_failed_total",
                "Failed records.",
                &["connector", "topic", "outcome"],
            ),
            records_retried: counter("connector_records_retried_total", "Retry attempts.", &["connector", "topic"]),
            records_dead_lettered: counter(
                "connector_records_dead_lettered_total",
                "Records sent to the dead-letter topic.",
                &["connector", "topic"],
            ),
            records_nacked: counter(
                "connector_records_nacked_total",
                "Records nacked for redelivery.",
                &["connector", "topic"],
            ),
            batch_size: histogram(
                "connector_batch_size",
                "Records per processed batch.",
                &["connector", "topic"],
                exponential_buckets(1.0, 2.0, 15).expect("static buckets"),
            ),
            end_to_end_latency: histogram(
                "connector_end_to_end_latency_seconds",
                "Publish to sink ack.",
                &["connector", "topic"],
                seconds.clone(),
            ),
            operation_latency: histogram(
                "connector_operation_latency_seconds",
                "Duration of one operation.",
                &["connector", "operation"],
                seconds,
            ),
            in_flight: gauge("connector_in_flight_records", "Records in flight."),
            buffer_depth: gauge("connector_buffer_depth", "Records waiting in buffers."),
            sink_stalled: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "connector_sink_stalled",
                        "1 while the broker has a backlog for the sink's subscription but delivers nothing of it.",
                    ),
                    &["connector", "topic", "subscription"],
                )
                .expect("static metric definition");
                registry.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            ready: {
                let g = IntGaugeVec::new(
                    Opts::new("connector_ready", "1 while the connector is ready (/readyz answers 200), else 0."),
                    &["connector"],
                )
                .expect("static metric definition");
                registry.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            transform_dropped: counter(
                "connector_transform_dropped_total",
                "Records dropped by a transform (committed or acked all the same).",
                &["connector", "topic", "transform"],
            ),
            transform_failed: counter(
                "connector_transform_failed_total",
                "Records a transform failed on (handled by the failure policy).",
                &["connector", "topic", "transform"],
            ),
            registry,
            connector: connector.to_string(),
        }
    }

    /// The connector label value.
    pub(crate) fn connector(&self) -> &str {
        &self.connector
    }

    /// The handle a connector registers its own metrics with (see [`ConnectorMetrics`]).
    pub(crate) fn for_connector(&self) -> ConnectorMetrics {
        ConnectorMetrics { registry: self.registry.clone(), connector: self.connector.clone() }
    }

    /// All metrics in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut buffer = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buffer).is_err() {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("connector", &self.connector).finish_non_exhaustive()
    }
}

/// A connector's own metric could not be registered (e.g. its name is taken).
#[derive(Debug, thiserror::Error)]
#[error("cannot register the metric {name}")]
pub struct MetricsError {
    name: String,
    #[source]
    source: RegistryRefusal,
}

/// The metrics registry's refusal (its message and source chain are the Prometheus client's).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct RegistryRefusal(prometheus::Error);

/// Registers a connector's own metrics in the runtime's registry (served on `/metrics`),
/// each with the constant label `connector` set to the connector's name, so the connector
/// names only its own labels. Cheap to clone.
#[derive(Clone)]
pub struct ConnectorMetrics {
    registry: Registry,
    connector: String,
}

impl std::fmt::Debug for ConnectorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorMetrics").field("connector", &self.connector).finish_non_exhaustive()
    }
}

impl ConnectorMetrics {
    /// Metrics in a registry of their own, for a connector used without the runtime (unit
    /// tests); the runtime hands the connector its handle in the `Context`.
    pub fn new(connector: &str) -> Self {
        Self { registry: Registry::new(), connector: connector.to_string() }
    }

    /// The connector label value.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    /// Every metric of the registry in the Prometheus text format (what `/metrics` serves).
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buffer).is_err() {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Histogram buckets for durations in seconds: 0.5 ms doubling up to about 16 s.
    pub fn seconds_buckets() -> Vec<f64> {
        exponential_buckets(0.0005, 2.0, 16).unwrap_or_default()
    }

    fn opts(&self, name: &str, help: &str) -> Opts {
        Opts::new(name, help).const_label("connector", self.connector.as_str())
    }

    fn register<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        name: &str,
        made: Result<M, prometheus::Error>,
    ) -> Result<M, MetricsError> {
        let error = |source| MetricsError { name: name.to_string(), source: RegistryRefusal(source) };
        let metric = made.map_err(error)?;
        self.registry.register(Box::new(metric.clone())).map_err(error)?;
        Ok(metric)
    }

    /// A counter without labels.
    pub fn counter(&self, name: &str, help: &str) -> Result<Counter, MetricsError> {
        self.register(name, prometheus::IntCounter::with_opts(self.opts(name, help))).map(Counter)
    }

    /// A counter with `labels`.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<CounterVec, MetricsError> {
        self.register(name, IntCounterVec::new(self.opts(name, help), labels)).map(CounterVec)
    }

    /// A gauge without labels.
    pub fn gauge(&self, name: &str, help: &str) -> Result<Gauge, MetricsError> {
        self.register(name, prometheus::IntGauge::with_opts(self.opts(name, help))).map(Gauge)
    }

    /// A gauge with `labels`.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, MetricsError> {
        self.register(name, IntGaugeVec::new(self.opts(name, help), labels)).map(GaugeVec)
    }

    /// A floating-point gauge with `labels` (e.g. a timestamp in seconds).
    pub fn float_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<FloatGaugeVec, MetricsError> {
        self.register(name, prometheus::GaugeVec::new(self.opts(name, help), labels)).map(FloatGaugeVec)
    }

    /// A histogram with `labels` and `buckets` (e.g. [`seconds_buckets`](Self::seconds_buckets)).
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> Result<HistogramVec, MetricsError> {
        let opts = HistogramOpts::new(name, help).const_label("connector", self.connector.as_str()).buckets(buckets);
        self.register(name, prometheus::HistogramVec::new(opts, labels)).map(HistogramVec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connectors_own_metrics_render_with_its_label_through_cores_handles() {
        let metrics = ConnectorMetrics::new("demo");
        let things = metrics.counter_vec("demo_things_total", "Things.", &["outcome"]).expect("counter");
        things.with_label_values(&["ok"]).inc_by(3);
        things.with_label_values(&["ok"]).inc();
        let depth = metrics.gauge_vec("demo_depth", "Depth.", &["table"]).expect("gauge");
        depth.with_label_values(&["t"]).set(7);
        assert!(depth.remove_label_values(&["t"]), "an existing series is removed");
        assert!(!depth.remove_label_values(&["t"]), "a missing one is not");
        depth.with_label_values(&["u"]).set(2);
        metrics.float_gauge_vec("demo_at", "When.", &["slot"]).expect("float gauge").with_label_values(&["s"]).set(1.5);
        let latency = metrics.histogram_vec("demo_seconds", "Time.", &[], ConnectorMetrics::seconds_buckets());
        latency.expect("histogram").with_label_values(&[] as &[&str]).observe(0.25);
        assert_eq!(metrics.counter("demo_plain_total", "Plain.").expect("counter").get(), 0);

        let text = metrics.render();
        for line in [
            r#"demo_things_total{connector="demo",outcome="ok"} 4"#,
            r#"demo_depth{connector="demo",table="u"} 2"#,
            r#"demo_at{connector="demo",slot="s"} 1.5"#,
            r#"demo_seconds_count{connector="demo"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert!(!text.contains(r#"table="t""#), "the removed series is gone:\n{text}");
        let taken = metrics.counter("demo_things_total", "Again.").expect_err("a name is registered once");
        assert!(danube_connect_common::error_chain(&taken).contains("demo_things_total"));
    }
}
