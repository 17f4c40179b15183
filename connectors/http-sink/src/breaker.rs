//! A circuit breaker per endpoint (`scheme://host:port`).
//!
//! Closed: requests flow; `failure_threshold` consecutive failures open it. Open: no
//! request is sent for `cool_down` (callers hand their records back to the broker).
//! Then one probe request is let through (half-open): success closes the circuit,
//! failure opens it for another cool-down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use indexmap::IndexMap;

/// Endpoints tracked at most by default (`circuit_breaker.max_endpoints`).
pub const DEFAULT_MAX_ENDPOINTS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
enum Circuit {
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

/// The tracked endpoints. An endpoint without an entry is closed with no failure, so only
/// endpoints that failed lately take room; a success removes the entry. Closed ones
/// (counting failures) and open ones are kept apart, so eviction takes a closed one first
/// without searching.
#[derive(Debug, Default)]
struct Endpoints {
    /// Closed circuits with their consecutive failures.
    failing: IndexMap<String, u32>,
    /// Open and half-open circuits.
    open: IndexMap<String, Circuit>,
    /// Where the next eviction takes its entry (a clock hand, so not always the same slot).
    hand: usize,
}

impl Endpoints {
    fn len(&self) -> usize {
        self.failing.len() + self.open.len()
    }

    /// Makes room for one more entry when `max` are tracked: evicts a closed entry (some
    /// failures, not open) if there is one, else an open circuit, which then lets requests
    /// through again until the breaker learns anew. O(1).
    fn make_room(&mut self, max: usize) {
        while self.len() >= max.max(1) {
            self.hand = self.hand.wrapping_add(1);
            let map_len = if self.failing.is_empty() { self.open.len() } else { self.failing.len() };
            let victim = self.hand % map_len.max(1);
            if self.failing.is_empty() {
                self.open.swap_remove_index(victim);
            } else {
                self.failing.swap_remove_index(victim);
            }
        }
    }
}

/// The breaker over every endpoint.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    max_endpoints: usize,
    endpoints: Mutex<Endpoints>,
}

impl CircuitBreaker {
    /// A breaker opening after `threshold` consecutive failures for `cool_down`, tracking
    /// [`DEFAULT_MAX_ENDPOINTS`] endpoints at most.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self::with_max_endpoints(threshold, cool_down, DEFAULT_MAX_ENDPOINTS)
    }

    /// A breaker tracking `max_endpoints` endpoints at most (with failures; healthy ones
    /// take no room). Every operation is O(1).
    pub fn with_max_endpoints(threshold: u32, cool_down: Duration, max_endpoints: usize) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            max_endpoints: max_endpoints.max(1),
            endpoints: Mutex::new(Endpoints::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Endpoints> {
        // A panic while holding this lock cannot leave the map inconsistent: recover it.
        self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to send a request to `endpoint`.
    pub fn admit(&self, endpoint: &str) -> Admission {
        let now = Instant::now();
        let mut endpoints = self.lock();
        let Some(circuit) = endpoints.open.get_mut(endpoint) else { return Admission::Allowed };
        match *circuit {
            Circuit::Open { until } if now < until => Admission::Rejected(until - now),
            Circuit::Open { .. } => {
                *circuit = Circuit::HalfOpen { probe_started: now };
                Admission::Probe
            }
            // A probe that never reported (its task was dropped) must not block forever.
            Circuit::HalfOpen { probe_started } if now.duration_since(probe_started) > self.cool_down * 2 => {
                *circuit = Circuit::HalfOpen { probe_started: now };
                Admission::Probe
            }
            Circuit::HalfOpen { .. } => Admission::Rejected(self.cool_down.min(Duration::from_secs(1))),
        }
    }

    /// Records the result of a request; returns `true` when this report opened the circuit.
    pub fn report(&self, endpoint: &str, report: Report) -> bool {
        let mut endpoints = self.lock();
        match report {
            Report::Neutral => {
                // A half-open probe that got an answer shows the endpoint is up.
                if matches!(endpoints.open.get(endpoint), Some(Circuit::HalfOpen { .. })) {
                    endpoints.open.swap_remove(endpoint);
                }
                false
            }
            Report::Healthy => {
                if endpoints.failing.swap_remove(endpoint).is_none() {
                    endpoints.open.swap_remove(endpoint);
                }
                false
            }
            Report::Failed => {
                let open = Circuit::Open { until: Instant::now() + self.cool_down };
                if let Some(circuit) = endpoints.open.get_mut(endpoint) {
                    return match circuit {
                        Circuit::HalfOpen { .. } => {
                            *circuit = open;
                            true
                        }
                        // Requests admitted before the circuit opened finish while it is open.
                        Circuit::Open { .. } => false,
                    };
                }
                let failures = match endpoints.failing.get(endpoint) {
                    Some(failures) => failures + 1,
                    None => {
                        endpoints.make_room(self.max_endpoints);
                        1
                    }
                };
                if failures >= self.threshold {
                    endpoints.failing.swap_remove(endpoint);
                    endpoints.open.insert(endpoint.to_string(), open);
                    true
                } else {
                    endpoints.failing.insert(endpoint.to_string(), failures);
                    false
                }
            }
        }
    }

    /// How many endpoints' circuits are open or half-open (O(1)).
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// How many endpoints are tracked (those with recent failures).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    /// Up to `limit` endpoints whose circuit is open or half-open (for the health report).
    pub fn open_endpoints(&self, limit: usize) -> Vec<String> {
        self.lock().open.keys().take(limit).cloned().collect()
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
        assert_eq!(b.open_endpoints(10), vec!["e".to_string()]);
        assert_eq!(b.open_count(), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit("e"), Admission::Probe);
        assert!(matches!(b.admit("e"), Admission::Rejected(_)), "one probe at a time");
        b.report("e", Report::Healthy);
        assert_eq!(b.admit("e"), Admission::Allowed);
        assert!(b.open_endpoints(10).is_empty());
        assert_eq!((b.open_count(), b.tracked()), (0, 0), "a healthy endpoint takes no room");
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
    fn the_map_stays_bounded_and_evicts_closed_entries_before_open_circuits() {
        let b = CircuitBreaker::with_max_endpoints(2, Duration::from_secs(60), 100);
        // Ten open circuits, then a flood of distinct failing endpoints (one failure each).
        for i in 0..10 {
            b.report(&format!("open-{i}"), Report::Failed);
            assert!(b.report(&format!("open-{i}"), Report::Failed), "opened");
        }
        for i in 0..100_000 {
            b.report(&format!("flood-{i}"), Report::Failed);
            assert!(b.tracked() <= 100);
        }
        assert_eq!(b.tracked(), 100);
        assert_eq!(b.open_count(), 10, "the open circuits were not evicted while closed entries could be");
        for i in 0..10 {
            assert!(matches!(b.admit(&format!("open-{i}")), Admission::Rejected(_)));
        }
        // Only open circuits: the bound still holds, the oldest looked-at one goes.
        let full = CircuitBreaker::with_max_endpoints(1, Duration::from_secs(60), 4);
        for i in 0..50 {
            assert!(full.report(&format!("e{i}"), Report::Failed));
            assert!(full.tracked() <= 4 && full.open_count() == full.tracked());
        }
        assert!(matches!(full.admit("e49"), Admission::Rejected(_)), "the newest is kept");
    }

    #[test]
    fn neutral_reports_change_nothing() {
        let b = CircuitBreaker::new(1, Duration::from_secs(1));
        assert!(!b.report("e", Report::Neutral));
        assert_eq!(b.admit("e"), Admission::Allowed);
    }
}
