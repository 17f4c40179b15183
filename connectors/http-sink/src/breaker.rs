//! A circuit breaker per endpoint (`scheme://host:port`).
//!
//! Closed: requests flow; `failure_threshold` consecutive failures open it. Open: no
//! request is sent for `cool_down` (callers hand their records back to the broker).
//! Then one probe request is let through (half-open): success closes the circuit,
//! failure opens it for another cool-down.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Endpoints tracked at most; closed, healthy ones are forgotten beyond it.
const MAX_ENDPOINTS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

/// Whether a request may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Allowed,
    /// Send it as the probe of a half-open circuit.
    Probe,
    /// Do not send; try again after this long.
    Rejected(Duration),
}

/// What a finished request tells the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The endpoint answered (success or a refusal of this request).
    Healthy,
    /// The endpoint failed (network, timeout, 5xx).
    Failed,
    /// Neither (e.g. 429: the endpoint is up but asks to slow down).
    Neutral,
}

/// The breaker over every endpoint.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    states: Mutex<HashMap<String, State>>,
}

impl CircuitBreaker {
    /// A breaker opening after `threshold` consecutive failures for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self { threshold: threshold.max(1), cool_down, states: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        // A panic while holding this lock cannot leave the map inconsistent: recover it.
        self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to send a request to `endpoint`.
    pub fn admit(&self, endpoint: &str) -> Admission {
        let now = Instant::now();
        let mut states = self.lock();
        let Some(state) = states.get_mut(endpoint) else { return Admission::Allowed };
        match *state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now < until => Admission::Rejected(until - now),
            State::Open { .. } => {
                *state = State::HalfOpen { probe_started: now };
                Admission::Probe
            }
            // A probe that never reported (its task was dropped) must not block forever.
            State::HalfOpen { probe_started } if now.duration_since(probe_started) > self.cool_down * 2 => {
                *state = State::HalfOpen { probe_started: now };
                Admission::Probe
            }
            State::HalfOpen { .. } => Admission::Rejected(self.cool_down.min(Duration::from_secs(1))),
        }
    }

    /// Records the result of a request; returns `true` when this report opened the circuit.
    pub fn report(&self, endpoint: &str, report: Report) -> bool {
        let mut states = self.lock();
        match report {
            Report::Neutral => {
                // A half-open probe that got an answer shows the endpoint is up.
                if let Some(state) = states.get_mut(endpoint) {
                    if matches!(state, State::HalfOpen { .. }) {
                        *state = State::Closed { failures: 0 };
                    }
                }
                false
            }
            Report::Healthy => {
                if let Some(state) = states.get_mut(endpoint) {
                    *state = State::Closed { failures: 0 };
                }
                if states.len() > MAX_ENDPOINTS {
                    states.retain(|_, s| !matches!(s, State::Closed { failures: 0 }));
                }
                false
            }
            Report::Failed => {
                let state = states.entry(endpoint.to_string()).or_insert(State::Closed { failures: 0 });
                match *state {
                    State::Closed { failures } if failures + 1 >= self.threshold => {
                        *state = State::Open { until: Instant::now() + self.cool_down };
                        true
                    }
                    State::Closed { failures } => {
                        *state = State::Closed { failures: failures + 1 };
                        false
                    }
                    State::HalfOpen { .. } => {
                        *state = State::Open { until: Instant::now() + self.cool_down };
                        true
                    }
                    // Requests admitted before the circuit opened finish while it is open.
                    State::Open { .. } => false,
                }
            }
        }
    }

    /// Endpoints whose circuit is open or half-open.
    pub fn open_endpoints(&self) -> Vec<String> {
        self.lock().iter().filter(|(_, s)| !matches!(s, State::Closed { .. })).map(|(e, _)| e.clone()).collect()
    }

    /// The cool-down.
    pub fn cool_down(&self) -> Duration {
        self.cool_down
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_then_closes() {
        let b = CircuitBreaker::new(3, Duration::from_millis(50));
        assert_eq!(b.admit("e"), Admission::Allowed);
        assert!(!b.report("e", Report::Failed));
        assert!(!b.report("e", Report::Failed));
        assert!(b.report("e", Report::Failed), "third consecutive failure opens");
        assert!(matches!(b.admit("e"), Admission::Rejected(_)));
        assert_eq!(b.open_endpoints(), vec!["e".to_string()]);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit("e"), Admission::Probe);
        assert!(matches!(b.admit("e"), Admission::Rejected(_)), "one probe at a time");
        b.report("e", Report::Healthy);
        assert_eq!(b.admit("e"), Admission::Allowed);
        assert!(b.open_endpoints().is_empty());
    }

    #[test]
    fn failed_probe_reopens_and_success_resets_the_count() {
        let b = CircuitBreaker::new(2, Duration::from_millis(20));
        b.report("e", Report::Failed);
        b.report("e", Report::Healthy);
        assert!(!b.report("e", Report::Failed), "count was reset by the success");
        assert!(b.report("e", Report::Failed));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit("e"), Admission::Probe);
        assert!(b.report("e", Report::Failed), "failed probe opens again");
        assert!(matches!(b.admit("e"), Admission::Rejected(_)));
        assert_eq!(b.admit("other"), Admission::Allowed, "endpoints are independent");
    }

    #[test]
    fn neutral_reports_change_nothing() {
        let b = CircuitBreaker::new(1, Duration::from_secs(1));
        assert!(!b.report("e", Report::Neutral));
        assert_eq!(b.admit("e"), Admission::Allowed);
    }
}
