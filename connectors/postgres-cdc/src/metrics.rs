//! The connector's own metrics, registered in the runtime's registry (`ctx.metrics()`, labelled
//! `connector` already), and the slot monitor that keeps the slot gauges and the `/readyz`
//! component up to date.
//!
//! Labels are bounded: `connector`, `slot`, `table` (a captured table), `op` (five values),
//! `status` (the four `wal_status` values).

use std::sync::{Arc, Mutex};

use danube_connect_core::Health;
use danube_connect_core::{ConnectorMetrics, MetricsError};
use danube_connect_core::{Counter, CounterVec, FloatGaugeVec, GaugeVec};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::config::{Connection, PostgresCdcConfig};
use crate::error::{query, CdcError};
use crate::setup;

/// The `wal_status` values of `pg_replication_slots` (PostgreSQL 13+).
pub const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// The `op` values of a change record.
pub const OPS: [&str; 5] = ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "READ"];

/// The `postgres_cdc_records_total` counters of one table, by op (see [`OPS`]).
#[derive(Clone, Debug)]
pub struct TableCounters([Counter; 5]);

impl TableCounters {
    /// Counts one record of `op` (an op outside [`OPS`] is not counted).
    pub fn count(&self, op: &str) {
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.0[i].inc();
        }
    }
}

/// Name of the connector's component on `/readyz`: `postgres-cdc slot <slot>`.
pub fn health_component(slot: &str) -> String {
    format!("postgres-cdc slot {slot}")
}

/// The connector's metrics.
#[derive(Clone, Debug)]
pub struct CdcMetrics {
    slot: String,
    /// `postgres_cdc_replication_lag_bytes{connector,slot}`: server WAL position minus the
    /// slot's confirmed flush LSN.
    pub lag_bytes: GaugeVec,
    /// `postgres_cdc_slot_wal_status{connector,slot,status}`: 1 for the slot's current
    /// `wal_status`, 0 for the others.
    pub wal_status: GaugeVec,
    /// `postgres_cdc_slot_safe_wal_size_bytes{connector,slot}`: WAL that may still be written
    /// before the slot is invalidated (absent without `max_slot_wal_keep_size`).
    pub safe_wal_size: GaugeVec,
    /// `postgres_cdc_last_commit_timestamp_seconds{connector,slot}`: commit time of the last
    /// transaction seen in the stream (Unix seconds).
    pub last_commit: FloatGaugeVec,
    /// `postgres_cdc_records_total{connector,table,op}`: records handed to the runtime.
    pub records: CounterVec,
    /// `postgres_cdc_snapshot_rows{connector,table}`: rows read by the running or last snapshot.
    pub snapshot_rows: GaugeVec,
    /// `postgres_cdc_snapshot_rows_estimated{connector,table}`: rows the snapshot expects
    /// (`pg_class.reltuples`, or an exact count in the snapshot when never analyzed).
    pub snapshot_rows_estimated: GaugeVec,
}

impl CdcMetrics {
    /// Registers the metrics in `metrics`' registry.
    pub fn register(metrics: &ConnectorMetrics, slot: &str) -> Result<Self, MetricsError> {
        let lag_bytes = metrics.gauge_vec(
            "postgres_cdc_replication_lag_bytes",
            "Server WAL position minus the replication slot's confirmed flush LSN, bytes.",
            &["slot"],
        )?;
        let wal_status = metrics.gauge_vec(
            "postgres_cdc_slot_wal_status",
            "1 for the replication slot's current wal_status (reserved, extended, unreserved, lost), else 0.",
            &["slot", "status"],
        )?;
        let safe_wal_size = metrics.gauge_vec(
            "postgres_cdc_slot_safe_wal_size_bytes",
            "WAL bytes that may still be written before PostgreSQL invalidates the slot (max_slot_wal_keep_size).",
            &["slot"],
        )?;
        let last_commit = metrics.float_gauge_vec(
            "postgres_cdc_last_commit_timestamp_seconds",
            "Commit time of the last transaction seen in the replication stream, Unix seconds.",
            &["slot"],
        )?;
        let records = metrics.counter_vec(
            "postgres_cdc_records_total",
            "Change records handed to the runtime, by table and op.",
            &["table", "op"],
        )?;
        let snapshot_rows = metrics.gauge_vec(
            "postgres_cdc_snapshot_rows",
            "Rows read by the running (or last) snapshot of a table.",
            &["table"],
        )?;
        let snapshot_rows_estimated = metrics.gauge_vec(
            "postgres_cdc_snapshot_rows_estimated",
            "Rows the snapshot of a table is expected to read.",
            &["table"],
        )?;
        Ok(Self {
            slot: slot.to_string(),
            lag_bytes,
            wal_status,
            safe_wal_size,
            last_commit,
            records,
            snapshot_rows,
            snapshot_rows_estimated,
        })
    }

    /// Metrics in a private registry (unit tests, a source used without the runtime).
    pub fn unregistered(slot: &str) -> Self {
        Self::register(&ConnectorMetrics::new("postgres-cdc"), slot)
            .expect("a fresh registry accepts every metric once")
    }

    /// The records counter of `table` and `op`.
    pub fn records_of(&self, table: &str, op: &str) -> Counter {
        self.records.with_label_values(&[table, op])
    }

    /// The records counters of `table`, one per op, looked up once (a label look-up per
    /// record costs more than the increment).
    pub fn table_counters(&self, table: &str) -> TableCounters {
        TableCounters(std::array::from_fn(|i| self.records_of(table, OPS[i])))
    }

    /// Records the commit time (microseconds since 2000-01-01) of a transaction.
    pub fn commit_seen(&self, pg_micros: i64) {
        const PG_EPOCH_UNIX_SECS: f64 = 946_684_800.0;
        let seconds = pg_micros as f64 / 1e6 + PG_EPOCH_UNIX_SECS;
        self.last_commit.with_label_values(&[&self.slot]).set(seconds);
    }

    /// Sets a table's snapshot progress.
    pub fn snapshot_progress(&self, table: &str, rows: u64, estimated: Option<u64>) {
        self.snapshot_rows.with_label_values(&[table]).set(rows as i64);
        if let Some(estimated) = estimated {
            self.snapshot_rows_estimated.with_label_values(&[table]).set(estimated as i64);
        }
    }

    fn slot_state(&self, state: &SlotState) {
        let labels = [self.slot.as_str()];
        if let Some(lag) = state.lag_bytes {
            self.lag_bytes.with_label_values(&labels).set(lag);
        }
        for status in WAL_STATUSES {
            let value = i64::from(state.wal_status.as_deref() == Some(status));
            self.wal_status.with_label_values(&[&self.slot, status]).set(value);
        }
        match state.safe_wal_size {
            Some(size) => self.safe_wal_size.with_label_values(&labels).set(size),
            None => {
                let _ = self.safe_wal_size.remove_label_values(&labels);
            }
        }
    }
}

/// One reading of the slot from `pg_replication_slots`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotState {
    /// `pg_current_wal_lsn() - confirmed_flush_lsn` (`None` before the slot is consistent).
    pub lag_bytes: Option<i64>,
    /// `wal_status`.
    pub wal_status: Option<String>,
    /// `safe_wal_size` (`None` when `max_slot_wal_keep_size` is unlimited).
    pub safe_wal_size: Option<i64>,
    /// `confirmed_flush_lsn` as `X/Y`.
    pub confirmed: Option<String>,
}

impl SlotState {
    /// Reads the slot's state; `None` when the slot does not exist (yet).
    pub async fn read(client: &Client, slot: &str) -> Result<Option<Self>, CdcError> {
        let row = client
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, wal_status, safe_wal_size, \
                 confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(query("read the replication slot's state"))?;
        Ok(row.map(|row| Self {
            lag_bytes: row.get(0),
            wal_status: row.get(1),
            safe_wal_size: row.get(2),
            confirmed: row.get(3),
        }))
    }

    /// The readiness problem under `config`'s thresholds, if any.
    pub fn problem(&self, config: &PostgresCdcConfig) -> Option<String> {
        if self.wal_status.as_deref() == Some("lost") {
            return Some(format!("replication slot {} was invalidated (wal_status = lost)", config.slot));
        }
        let mut problems = Vec::new();
        if let (Some(max), Some(lag)) = (config.readiness_max_lag_bytes, self.lag_bytes) {
            if lag > 0 && lag as u64 > max {
                problems
                    .push(format!("replication lag {lag} bytes is above connector.readiness_max_lag_bytes ({max})"));
            }
        }
        if let (Some(min), Some(safe)) = (config.readiness_min_safe_wal_bytes, self.safe_wal_size) {
            if safe < 0 || (safe as u64) < min {
                problems.push(format!(
                    "safe_wal_size {safe} bytes is below connector.readiness_min_safe_wal_bytes ({min}): \
                     the slot is close to being invalidated (wal_status = {})",
                    self.wal_status.as_deref().unwrap_or("unknown")
                ));
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// Set once when the slot monitor finds the slot invalidated; `poll` returns it as a fatal
/// error.
#[derive(Debug, Default)]
pub struct SlotLost {
    error: Mutex<Option<CdcError>>,
    /// Cancelled when the error is set.
    pub signal: CancellationToken,
}

impl SlotLost {
    fn set(&self, error: CdcError) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(error);
        }
        self.signal.cancel();
    }

    /// The error, once (later calls return `None`).
    pub fn take(&self) -> Option<CdcError> {
        self.error.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Polls the slot's state every `slot_check_interval` on its own connection until `stop`.
pub(crate) struct SlotMonitor {
    pub(crate) config: Arc<PostgresCdcConfig>,
    pub(crate) conn: Connection,
    pub(crate) metrics: CdcMetrics,
    pub(crate) health: Health,
    pub(crate) lost: Arc<SlotLost>,
    pub(crate) stop: CancellationToken,
}

impl SlotMonitor {
    /// Runs until `stop`, or until the slot is found invalidated.
    pub(crate) async fn run(self) {
        let component = health_component(&self.config.slot);
        let mut client: Option<Client> = None;
        let mut warned = false;
        let mut interval = tokio::time::interval(self.config.slot_check_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            if client.as_ref().is_none_or(Client::is_closed) {
                match setup::connect(&self.conn).await {
                    Ok(connected) => client = Some(connected),
                    Err(error) => {
                        self.unreadable(&mut warned, &error);
                        continue;
                    }
                }
            }
            let Some(connected) = client.as_ref() else { continue };
            match SlotState::read(connected, &self.config.slot).await {
                Ok(Some(state)) => {
                    warned = false;
                    self.metrics.slot_state(&state);
                    let problem = state.problem(&self.config);
                    self.health.set_component(&component, problem);
                    if state.wal_status.as_deref() == Some("lost") {
                        let error = CdcError::SlotLost {
                            slot: self.config.slot.clone(),
                            confirmed: state.confirmed.unwrap_or_else(|| "unknown".into()),
                        };
                        error!(error = %error, "replication slot lost");
                        self.lost.set(error);
                        return;
                    }
                }
                Ok(None) => debug!(slot = %self.config.slot, "replication slot does not exist yet"),
                Err(error) => {
                    self.unreadable(&mut warned, &error);
                    client = None;
                }
            }
        }
    }

    fn unreadable(&self, warned: &mut bool, error: &CdcError) {
        if !*warned {
            warn!(error = %danube_connect_core::error::error_chain(error), "cannot read the replication slot's state; retrying");
            *warned = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_problems_name_the_threshold() {
        let config = PostgresCdcConfig {
            readiness_max_lag_bytes: Some(1000),
            readiness_min_safe_wal_bytes: Some(5000),
            ..Default::default()
        };
        let healthy = SlotState {
            lag_bytes: Some(999),
            wal_status: Some("reserved".into()),
            safe_wal_size: Some(5000),
            confirmed: None,
        };
        assert_eq!(healthy.problem(&config), None);
        let lagging = SlotState { lag_bytes: Some(1001), ..healthy.clone() };
        assert!(lagging.problem(&config).is_some_and(|p| p.contains("connector.readiness_max_lag_bytes")));
        let at_risk = SlotState { safe_wal_size: Some(-10), wal_status: Some("unreserved".into()), ..healthy.clone() };
        let problem = at_risk.problem(&config).unwrap_or_default();
        assert!(
            problem.contains("connector.readiness_min_safe_wal_bytes") && problem.contains("unreserved"),
            "{problem}"
        );
        let lost = SlotState { wal_status: Some("lost".into()), ..healthy.clone() };
        assert!(lost.problem(&PostgresCdcConfig::default()).is_some_and(|p| p.contains("wal_status = lost")));
        assert_eq!(lagging.problem(&PostgresCdcConfig::default()), None, "no threshold, no problem");
    }

    #[test]
    fn the_slot_gauges_follow_each_reading() {
        let registry = ConnectorMetrics::new("cdc");
        let metrics = CdcMetrics::register(&registry, "s1").expect("register");
        let state = SlotState {
            lag_bytes: Some(42),
            wal_status: Some("extended".into()),
            safe_wal_size: Some(7),
            confirmed: None,
        };
        metrics.slot_state(&state);
        let text = registry.render();
        assert!(text.contains(r#"postgres_cdc_replication_lag_bytes{connector="cdc",slot="s1"} 42"#), "{text}");
        assert!(text.contains(r#"postgres_cdc_slot_wal_status{connector="cdc",slot="s1",status="extended"} 1"#));
        assert!(text.contains(r#"postgres_cdc_slot_wal_status{connector="cdc",slot="s1",status="reserved"} 0"#));
        assert!(text.contains(r#"postgres_cdc_slot_safe_wal_size_bytes{connector="cdc",slot="s1"} 7"#));
        metrics.slot_state(&SlotState { safe_wal_size: None, ..state });
        assert!(!registry.render().contains("postgres_cdc_slot_safe_wal_size_bytes{"), "unlimited: no series");
        assert!(CdcMetrics::register(&registry, "s1").is_err(), "a second registration is refused, not doubled");
    }
}
