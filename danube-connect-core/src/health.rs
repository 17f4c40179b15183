//! Shared readiness state: is the broker reachable, is each connector healthy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Readiness as the ops port reports it on `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    broker_reachable: AtomicBool,
    components: Mutex<BTreeMap<String, Option<String>>>,
}

impl Health {
    /// Records whether the broker answered the last probe or operation.
    pub fn set_broker_reachable(&self, reachable: bool) {
        self.inner.broker_reachable.store(reachable, Ordering::Relaxed);
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
    }

    /// `Ok` when ready, otherwise every problem found.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
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
