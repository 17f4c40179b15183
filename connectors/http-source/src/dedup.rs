//! A bounded memory of recently delivered ids, to answer repeated deliveries without
//! publishing them again.
//!
//! A request first [reserves](Dedup::reserve) its delivery id. While the reservation is
//! held, a concurrent delivery of the same id is told it is [in flight](Reserve::InFlight)
//! (and should retry later) instead of being published a second time. The reservation
//! becomes a remembered delivery with [`Reservation::confirm`] once the client is answered
//! 2xx; dropping it unconfirmed (the publish failed, the request was refused or cut) frees
//! the id, so the sender's retry is published.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Delivery ids seen within a time window, at most `max_entries` of them, plus the ids
/// of requests being published right now.
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
    in_flight: HashSet<String>,
}

/// The outcome of [`Dedup::reserve`].
#[derive(Debug)]
pub enum Reserve {
    /// The id is new: publish, then [`confirm`](Reservation::confirm).
    Reserved(Reservation),
    /// The id was delivered within the window: answer without publishing.
    Duplicate,
    /// Another request with this id is being published right now.
    InFlight,
}

/// A delivery id held while its request is published; released on drop unless confirmed.
#[derive(Debug)]
pub struct Reservation {
    dedup: Arc<Dedup>,
    id: String,
    confirmed: bool,
}

impl Reservation {
    /// Remembers the id as delivered (the client is answered 2xx).
    pub fn confirm(mut self, now: Instant) {
        self.confirmed = true;
        self.dedup.finish(&self.id, Some(now));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.confirmed {
            self.dedup.finish(&self.id, None);
        }
    }
}

impl Dedup {
    /// An empty memory.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Self { window, max_entries, seen: Mutex::new(Seen::default()) }
    }

    /// Whether `id` was recorded as delivered within the window.
    #[cfg(test)]
    fn contains(&self, id: &str, now: Instant) -> bool {
        let Ok(seen) = self.seen.lock() else { return false };
        seen.delivered(id, now, self.window)
    }

    /// Checks `id` and, if it is new, reserves it in one step (no other request can
    /// reserve it until the reservation is confirmed or dropped).
    pub fn reserve(self: &Arc<Self>, id: &str, now: Instant) -> Reserve {
        // A poisoned lock means a panic elsewhere; publishing again is the safe side.
        let Ok(mut seen) = self.seen.lock() else {
            return Reserve::Reserved(Reservation { dedup: self.clone(), id: id.to_string(), confirmed: true });
        };
        if seen.delivered(id, now, self.window) {
            return Reserve::Duplicate;
        }
        if !seen.in_flight.insert(id.to_string()) {
            return Reserve::InFlight;
        }
        Reserve::Reserved(Reservation { dedup: self.clone(), id: id.to_string(), confirmed: false })
    }

    /// Records `id` as delivered, forgetting expired and surplus ids.
    #[cfg(test)]
    fn insert(&self, id: &str, now: Instant) {
        let Ok(mut seen) = self.seen.lock() else { return };
        seen.remember(id, now, self.window, self.max_entries);
    }

    fn finish(&self, id: &str, delivered: Option<Instant>) {
        let Ok(mut seen) = self.seen.lock() else { return };
        seen.in_flight.remove(id);
        if let Some(now) = delivered {
            seen.remember(id, now, self.window, self.max_entries);
        }
    }
}

impl Seen {
    fn delivered(&self, id: &str, now: Instant, window: Duration) -> bool {
        self.at.get(id).is_some_and(|at| now.duration_since(*at) < window)
    }

    fn remember(&mut self, id: &str, now: Instant, window: Duration, max_entries: usize) {
        while let Some((old, at)) = self.order.front() {
            let expired = now.duration_since(*at) >= window;
            if !expired && self.order.len() < max_entries {
                break;
            }
            if self.at.get(old) == Some(at) {
                self.at.remove(old);
            }
            self.order.pop_front();
        }
        self.at.insert(id.to_string(), now);
        self.order.push_back((id.to_string(), now));
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

    #[test]
    fn a_reserved_id_is_in_flight_until_confirmed_then_duplicate() {
        let d = Arc::new(Dedup::new(Duration::from_secs(10), 10));
        let t0 = Instant::now();
        let Reserve::Reserved(first) = d.reserve("a", t0) else { panic!("a new id is reserved") };
        assert!(matches!(d.reserve("a", t0), Reserve::InFlight));
        first.confirm(t0);
        assert!(matches!(d.reserve("a", t0), Reserve::Duplicate));
        assert!(matches!(d.reserve("a", t0 + Duration::from_secs(11)), Reserve::Reserved(_)), "expired");
    }

    #[test]
    fn a_dropped_reservation_frees_the_id_for_a_retry() {
        let d = Arc::new(Dedup::new(Duration::from_secs(10), 10));
        let t0 = Instant::now();
        let Reserve::Reserved(first) = d.reserve("a", t0) else { panic!("a new id is reserved") };
        drop(first);
        assert!(!d.contains("a", t0));
        assert!(matches!(d.reserve("a", t0), Reserve::Reserved(_)), "the retry can publish");
    }
}
