//! The ClickHouse sink's own metrics.

use danube_connect_core::{ConnectorMetrics, MetricsError};
use danube_connect_core::{CounterVec, GaugeVec};

/// Counters and gauges by table (labelled `connector` by the runtime).
pub(super) struct Metrics {
    /// Rows inserted into ClickHouse.
    pub(super) rows_inserted: CounterVec,
    /// Insert requests by outcome.
    pub(super) inserts: CounterVec,
    /// Bytes waiting in the spool.
    pub(super) spool_bytes: GaugeVec,
    /// Redelivered records already spooled.
    pub(super) duplicates: CounterVec,
    /// Spooled rows dead-lettered.
    pub(super) dead_lettered: CounterVec,
}

impl Metrics {
    /// Registers the metrics in the runtime's registry.
    pub(super) fn register(metrics: &ConnectorMetrics) -> Result<Self, MetricsError> {
        let counter = |name: &str, help: &str, labels: &[&str]| metrics.counter_vec(name, help, labels);
        let spool_bytes = metrics.gauge_vec("clickhouse_spool_bytes", "Bytes waiting in the spool.", &["table"])?;
        Ok(Self {
            rows_inserted: counter("clickhouse_rows_inserted_total", "Rows inserted into ClickHouse.", &["table"])?,
            inserts: counter(
                "clickhouse_inserts_total",
                "Insert requests by outcome (ok, retryable, rejected).",
                &["table", "outcome"],
            )?,
            spool_bytes,
            duplicates: counter(
                "clickhouse_spool_duplicates_total",
                "Redelivered records skipped because they were already spooled.",
                &["table"],
            )?,
            dead_lettered: counter(
                "clickhouse_rows_dead_lettered_total",
                "Spooled rows ClickHouse refused, sent to the dead-letter topic.",
                &["table"],
            )?,
        })
    }
}
