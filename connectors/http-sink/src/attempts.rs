//! Delivery attempt numbers per message id, kept across the runtime's retries and the
//! broker's redeliveries (a deferred record comes back as a new delivery of the same id),
//! and the number of `Retry-After` deferrals of each id (for `retry_after.max_defers`).
//!
//! Bounded: beyond `capacity` ids the oldest are forgotten (their next attempt then counts
//! from 1 again, which affects the attempt header and the deferral count). A restart
//! forgets everything.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// What is counted for one id.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    attempts: u32,
    defers: u32,
}

#[derive(Debug, Default)]
struct Inner {
    counts: HashMap<String, Counts>,
    order: VecDeque<String>,
}

/// The attempt counter.
#[derive(Debug)]
pub struct Attempts {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Attempts {
    /// A counter remembering at most `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one more attempt of `id` and returns its number (1 on the first).
    pub fn next(&self, id: &str) -> u32 {
        let mut inner = self.lock();
        if let Some(count) = inner.counts.get_mut(id) {
            count.attempts = count.attempts.saturating_add(1);
            return count.attempts;
        }
        while inner.counts.len() >= self.capacity {
            let Some(oldest) = inner.order.pop_front() else { break };
            inner.counts.remove(&oldest);
        }
        inner.counts.insert(id.to_string(), Counts { attempts: 1, defers: 0 });
        inner.order.push_back(id.to_string());
        // `forget` leaves stale ids in `order`; drop them when they pile up.
        if inner.order.len() > self.capacity.saturating_mul(2) {
            let Inner { counts, order } = &mut *inner;
            order.retain(|id| counts.contains_key(id));
        }
        1
    }

    /// Counts one more deferral of `id` and returns how many there were (1 on the first).
    /// An id not seen by [`next`](Self::next) (forgotten meanwhile) counts from 1.
    pub fn defer(&self, id: &str) -> u32 {
        let mut inner = self.lock();
        match inner.counts.get_mut(id) {
            Some(count) => {
                count.defers = count.defers.saturating_add(1);
                count.defers
            }
            None => 1,
        }
    }

    /// Forgets `id` (delivered or given up).
    pub fn forget(&self, id: &str) {
        self.lock().counts.remove(id);
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.lock().counts.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_id_until_forgotten() {
        let a = Attempts::new(10);
        assert_eq!(a.next("x"), 1);
        assert_eq!(a.next("x"), 2);
        assert_eq!(a.next("y"), 1);
        a.forget("x");
        assert_eq!(a.next("x"), 1);
    }

    #[test]
    fn counts_deferrals_per_id_until_forgotten() {
        let a = Attempts::new(10);
        a.next("x");
        assert_eq!(a.defer("x"), 1);
        a.next("x");
        assert_eq!(a.defer("x"), 2);
        assert_eq!(a.next("x"), 3, "deferrals do not change the attempt number");
        a.next("y");
        assert_eq!(a.defer("y"), 1);
        a.forget("x");
        a.next("x");
        assert_eq!(a.defer("x"), 1);
    }

    #[test]
    fn stays_bounded() {
        let a = Attempts::new(3);
        for i in 0..100 {
            a.next(&format!("id{i}"));
            a.next(&format!("id{i}"));
            if i % 2 == 0 {
                a.forget(&format!("id{i}"));
            }
        }
        assert!(a.len() <= 3);
        assert!(a.lock().order.len() <= 7);
    }
}
