//! What the test API reads and tunes: stored messages, consumer and ack counts.

use super::*;

impl BrokerState {
    /// Stored messages of a topic (all partitions, in partition order).
    pub(crate) fn messages(&self, topic: &str) -> Vec<StoredMessage> {
        self.resolve(topic).iter().flat_map(|t| t.messages()).collect()
    }

    /// Number of stored messages of a topic (all partitions).
    pub(crate) fn message_count(&self, topic: &str) -> usize {
        self.resolve(topic).iter().map(|t| t.len()).sum()
    }

    fn sum_subs(&self, topic: &str, sub: &str, f: impl Fn(&Subscription) -> u64) -> u64 {
        self.resolve(topic).iter().map(|t| t.inner.lock().subs.get(sub).map_or(0, &f)).sum()
    }

    /// Consumers with an open stream on a subscription (all partitions).
    pub(crate) fn connected_consumers(&self, topic: &str, sub: &str) -> usize {
        self.sum_subs(topic, sub, |s| s.consumers.iter().filter(|c| c.stream.is_some()).count() as u64) as usize
    }

    /// Acks received on a subscription (all partitions).
    pub(crate) fn ack_count(&self, topic: &str, sub: &str) -> u64 {
        self.sum_subs(topic, sub, |s| s.ack_count)
    }

    /// Unacknowledged messages of a subscription (all partitions).
    pub(crate) fn unacked_count(&self, topic: &str, sub: &str) -> usize {
        self.sum_subs(topic, sub, |s| s.unacked() as u64) as usize
    }

    /// Sets the dispatch window of a subscription (all partitions).
    pub(crate) fn set_max_unacked(&self, topic: &str, sub: &str, n: usize) {
        for t in self.resolve(topic) {
            let mut inner = t.inner.lock();
            inner.window_overrides.insert(sub.to_string(), n);
            if let Some(s) = inner.subs.get(sub) {
                s.notify.notify_one();
            }
            self.persist_meta(MetaRecord::MaxUnacked { topic: t.name.clone(), sub: sub.to_string(), n });
        }
    }
}
