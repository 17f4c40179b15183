//! How often each record of a topic was handed to the connector, and how often it was
//! deferred or nacked for later: the [`SinkRecord::attempt`](crate::SinkRecord::attempt) and
//! [`SinkRecord::deferrals`](crate::SinkRecord::deferrals) the connector sees.
//!
//! Danube v0.15.1 does not tell a consumer how often it redelivered a message, so the lane
//! counts per broker message id (partition and offset); the counts survive the broker's
//! redeliveries after a nack and the consumer's re-subscriptions, not a restart. An id is
//! forgotten once its record is settled for good (acked or dead-lettered). Bounded: beyond
//! [`TRACKED`] ids the oldest are forgotten (their next attempt then counts from 1 again).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use danube_core::message::StreamMessage;

/// The most message ids counted at a time, per topic.
pub(super) const TRACKED: usize = 100_000;

/// A message's identity at the broker: its partition and offset.
pub(super) type MessageKey = (String, u64);

/// The broker identity of `message`.
pub(super) fn message_key(message: &StreamMessage) -> MessageKey {
    (message.msg_id.topic_name.clone(), message.msg_id.topic_offset)
}

/// What is counted for one id.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    /// Hand-overs to the connector so far.
    pub(super) attempts: u32,
    /// Deferrals and nacks so far.
    pub(super) deferrals: u32,
}

#[derive(Debug, Default)]
struct Inner {
    counts: HashMap<MessageKey, Counts>,
    order: VecDeque<MessageKey>,
}

/// The per-topic counter, shared by the topic's lanes.
#[derive(Debug)]
pub(super) struct Deliveries {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Self::new(TRACKED)
    }
}

impl Deliveries {
    /// A counter remembering at most `capacity` ids.
    pub(super) fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn entry<'a>(&self, inner: &'a mut Inner, key: &MessageKey) -> &'a mut Counts {
        if !inner.counts.contains_key(key) {
            while inner.counts.len() >= self.capacity {
                let Some(oldest) = inner.order.pop_front() else { break };
                inner.counts.remove(&oldest);
            }
            inner.order.push_back(key.clone());
            // `forget` leaves stale ids in `order`; drop them when they pile up.
            if inner.order.len() > self.capacity.saturating_mul(2) {
                let Inner { counts, order } = &mut *inner;
                order.retain(|id| counts.contains_key(id));
            }
        }
        inner.counts.entry(key.clone()).or_default()
    }

    /// Counts one more hand-over of `key` to the connector; its counts after it (the
    /// attempt number is 1 on the first).
    pub(super) fn next(&self, key: &MessageKey) -> Counts {
        let mut inner = self.lock();
        let counts = self.entry(&mut inner, key);
        counts.attempts = counts.attempts.saturating_add(1);
        *counts
    }

    /// Counts one more deferral (or nack) of `key`.
    pub(super) fn deferred(&self, key: &MessageKey) {
        let mut inner = self.lock();
        let counts = self.entry(&mut inner, key);
        counts.deferrals = counts.deferrals.saturating_add(1);
    }

    /// The counts of `key` so far (zero when unknown).
    pub(super) fn get(&self, key: &MessageKey) -> Counts {
        self.lock().counts.get(key).copied().unwrap_or_default()
    }

    /// Forgets `key` (acked or dead-lettered).
    pub(super) fn forget(&self, key: &MessageKey) {
        self.lock().counts.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(offset: u64) -> MessageKey {
        ("/default/t".to_string(), offset)
    }

    #[test]
    fn counts_attempts_and_deferrals_per_id_until_forgotten() {
        let d = Deliveries::new(10);
        assert_eq!(d.next(&key(1)), Counts { attempts: 1, deferrals: 0 });
        d.deferred(&key(1));
        assert_eq!(d.next(&key(1)), Counts { attempts: 2, deferrals: 1 });
        assert_eq!(d.next(&key(2)).attempts, 1);
        assert_eq!(d.get(&key(1)), Counts { attempts: 2, deferrals: 1 });
        d.forget(&key(1));
        assert_eq!(d.get(&key(1)), Counts::default());
        assert_eq!(d.next(&key(1)), Counts { attempts: 1, deferrals: 0 });
    }

    #[test]
    fn stays_bounded() {
        let d = Deliveries::new(3);
        for i in 0..100 {
            d.next(&key(i));
            d.next(&key(i));
            if i % 2 == 0 {
                d.forget(&key(i));
            }
        }
        assert!(d.len() <= 3);
        assert!(d.lock().order.len() <= 7);
    }
}
