//! A bounded memory of recently delivered ids, to answer repeated deliveries without
//! publishing them again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Delivery ids seen within a time window, at most `max_entries` of them.
#[derive(Debug)]
pub struct Dedup {
    window: Duration,
    max_entries: usize,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    at: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl Dedup {
    /// An empty memory.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Self { window, max_entries, seen: Mutex::new(Seen::default()) }
    }

    /// Whether `id` was recorded within the window.
    pub fn contains(&self, id: &str, now: Instant) -> bool {
        let Ok(seen) = self.seen.lock() else { return false };
        seen.at.get(id).is_some_and(|at| now.duration_since(*at) < self.window)
    }

    /// Records `id` as delivered (after Danube acked it), forgetting expired and
    /// surplus ids.
    pub fn insert(&self, id: &str, now: Instant) {
        let Ok(mut seen) = self.seen.lock() else { return };
        let seen = &mut *seen;
        while let Some((old, at)) = seen.order.front() {
            let expired = now.duration_since(*at) >= self.window;
            if !expired && seen.order.len() < self.max_entries {
                break;
            }
            if seen.at.get(old) == Some(at) {
                seen.at.remove(old);
            }
            seen.order.pop_front();
        }
        seen.at.insert(id.to_string(), now);
        seen.order.push_back((id.to_string(), now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_expire_after_the_window_and_capacity_is_bounded() {
        let d = Dedup::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        d.insert("a", t0);
        assert!(d.contains("a", t0 + Duration::from_secs(5)));
        assert!(!d.contains("a", t0 + Duration::from_secs(11)));
        d.insert("b", t0);
        d.insert("c", t0);
        assert!(!d.contains("a", t0), "oldest id evicted at capacity");
        assert!(d.contains("b", t0) && d.contains("c", t0));
    }
}
