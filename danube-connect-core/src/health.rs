//! Shared readiness state: is the broker reachable, is each connector healthy.
//!
//! The runtime exports it as the gauge `connector_ready{connector}` too (1 ready, 0 not),
//! updated on every change, so an alert sees what `/readyz` would answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::IntGauge;

use crate::metrics::Metrics;

/// Readiness as the ops port reports it on `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    broker_reachable: AtomicBool,
    components: Mutex<BTreeMap<String, Option<String>>>,
    /// `connector_ready`, when exported.
    ready_gauge: OnceLock<IntGauge>,
}

impl Health {
    /// Readiness exported as `connector_ready` in `metrics` (0 until the broker is reachable).
    pub(crate) fn exported_to(metrics: &Metrics) -> Self {
        let health = Self::default();
        // A fresh `Health`: the cell is empty, `set` cannot fail.
        let _ = health.inner.ready_gauge.set(metrics.ready.with_label_values(&[metrics.connector()]));
        health.refresh();
        health
    }

    /// Records whether the broker answered the last probe or operation.
    pub fn set_broker_reachable(&self, reachable: bool) {
        self.inner.broker_reachable.store(reachable, Ordering::Relaxed);
        self.refresh();
    }

    /// Whether the broker answered the last probe or operation.
    pub fn broker_reachable(&self) -> bool {
        self.inner.broker_reachable.load(Ordering::Relaxed)
    }

    /// Marks a named component healthy (`None`) or degraded with a reason.
    pub fn set_component(&self, name: &str, problem: Option<String>) {
        if let Ok(mut components) = self.inner.components.lock() {
            components.insert(name.to_string(), problem);
        }
        self.refresh();
    }

    /// `Ok` when ready, otherwise every problem found. Updates `connector_ready` too.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let result = self.evaluate();
        if let Some(gauge) = self.inner.ready_gauge.get() {
            gauge.set(i64::from(result.is_ok()));
        }
        result
    }

    /// Brings `connector_ready` up to date after a change.
    fn refresh(&self) {
        if self.inner.ready_gauge.get().is_some() {
            let _ = self.readiness();
        }
    }

    fn evaluate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !self.broker_reachable() {
            problems.push("danube broker unreachable".to_string());
        }
        if let Ok(components) = self.inner.components.lock() {
            for (name, problem) in components.iter() {
                if let Some(problem) = problem {
                    problems.push(format!("{name}: {problem}"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_value(metrics: &Metrics) -> i64 {
        metrics.ready.with_label_values(&[metrics.connector()]).get()
    }

    #[test]
    fn connector_ready_follows_every_readiness_change() {
        let metrics = Metrics::new("ops-test");
        let health = Health::exported_to(&metrics);
        assert_eq!(ready_value(&metrics), 0, "not ready before the broker answered");
        health.set_broker_reachable(true);
        assert_eq!(ready_value(&metrics), 1);
        health.set_component("sink", Some("stalled".into()));
        assert_eq!(ready_value(&metrics), 0);
        assert!(health.readiness().is_err());
        health.set_component("sink", None);
        assert_eq!(ready_value(&metrics), 1);
        health.set_broker_reachable(false);
        assert_eq!(ready_value(&metrics), 0);
        assert!(metrics.render().contains("connector_ready{connector=\"ops-test\"} 0"), "{}", metrics.render());
    }

    #[test]
    fn a_health_without_metrics_still_answers() {
        let health = Health::default();
        health.set_broker_reachable(true);
        assert!(health.readiness().is_ok());
    }
}
