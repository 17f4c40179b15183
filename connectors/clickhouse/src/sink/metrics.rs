//! The ClickHouse sink's own metrics.

use danube_connect_core::connector::SinkContext;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};

/// Counters and gauges by connector and table.
pub(super) struct Metrics {
    /// Rows inserted into ClickHouse.
    pub(super) rows_inserted: IntCounterVec,
    /// Insert requests by outcome.
    pub(super) inserts: IntCounterVec,
    /// Bytes waiting in the spool.
    pub(super) spool_bytes: IntGaugeVec,
    /// Redelivered records already spooled.
    pub(super) duplicates: IntCounterVec,
    /// Spooled rows dead-lettered.
    pub(super) dead_lettered: IntCounterVec,
}

impl Metrics {
    /// Registers the metrics in the runtime's registry.
    pub(super) fn register(ctx: &SinkContext) -> Result<Self, prometheus::Error> {
        let registry = ctx.metrics.registry();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let spool_bytes = IntGaugeVec::new(
            Opts::new("clickhouse_spool_bytes", "Bytes waiting in the spool."),
            &["connector", "table"],
        )?;
        registry.register(Box::new(spool_bytes.clone()))?;
        Ok(Self {
            rows_inserted: counter(
                "clickhouse_rows_inserted_total",
                "Rows inserted into ClickHouse.",
                &["connector", "table"],
            )?,
            inserts: counter(
                "clickhouse_inserts_total",
                "Insert requests by outcome (ok, retryable, rejected).",
                &["connector", "table", "outcome"],
            )?,
            spool_bytes,
            duplicates: counter(
                "clickhouse_spool_duplicates_total",
                "Redelivered records skipped because they were already spooled.",
                &["connector", "table"],
            )?,
            dead_lettered: counter(
                "clickhouse_rows_dead_lettered_total",
                "Spooled rows ClickHouse refused, sent to the dead-letter topic.",
                &["connector", "table"],
            )?,
        })
    }
}
