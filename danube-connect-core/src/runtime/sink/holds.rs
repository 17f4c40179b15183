//! Per-key holding for `sink.ordering = "key"`: once a record of key K is deferred or nacked,
//! the lane keeps it and waits out its delay in process, and holds K's later records (not
//! processed, not acked) until that record is settled (acked, dead-lettered); then it
//! releases them in order. Records of other keys keep flowing.
//!
//! The deferred record stays with the lane instead of going back to the broker: Danube
//! v0.15.1 does not redeliver a record nacked with a delay once its consumer has left
//! (docs/running-on-danube.md), and a record the broker redelivers could arrive behind the
//! later records of its key. At shutdown (or when the connector stopped) the lane hands every
//! held record back with a nack without delay, the deferred one first, so the next consumer
//! gets them at once and in order.
//!
//! A copy of a held record that the broker delivers again (its ack timeout ran out while the
//! record was held) is recognised by its partition and offset and not held twice.

use std::collections::{HashMap, VecDeque};

use danube_core::message::StreamMessage;
use tokio::time::Instant;

use super::deliveries::{message_key, MessageKey};

/// The held records of one key.
#[derive(Debug)]
struct Hold {
    /// The record the key waits for (deferred, or being processed again).
    head: MessageKey,
    /// The head while it waits out its delay; `None` while it is processed again.
    deferred: Option<(StreamMessage, Instant)>,
    /// The head was handed back to the broker (shutdown): the key stays held until the lane ends.
    handed_back: bool,
    /// The later records of the key, in arrival order.
    queue: VecDeque<StreamMessage>,
}

/// What [`KeyHolds::hold_if_blocked`] did with a record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Held {
    /// The key is not held: process the record.
    No,
    /// Queued behind its key's deferred record.
    Queued,
    /// A copy of a record already held: nothing to do.
    Duplicate,
}

/// The held keys of one lane.
#[derive(Debug, Default)]
pub(super) struct KeyHolds {
    keys: HashMap<String, Hold>,
    /// Records held in all (deferred ones and queued ones).
    held: usize,
}

impl KeyHolds {
    /// Records held now.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Queues `message` when its key is held and it is not the record the key waits for.
    pub(super) fn hold_if_blocked(&mut self, message: &StreamMessage) -> Held {
        let Some(key) = &message.routing_key else { return Held::No };
        let Some(hold) = self.keys.get_mut(key) else { return Held::No };
        let id = message_key(message);
        if hold.head == id {
            return match hold.deferred {
                // Being processed again: this is that record.
                None if !hold.handed_back => Held::No,
                _ => Held::Duplicate,
            };
        }
        if hold.queue.iter().any(|queued| message_key(queued) == id) {
            return Held::Duplicate;
        }
        hold.queue.push_back(message.clone());
        self.held += 1;
        Held::Queued
    }

    /// Keeps `message` (which has a routing key) until `due`, holding its key.
    pub(super) fn defer(&mut self, message: &StreamMessage, key: &str, due: Instant) {
        let hold = self.keys.entry(key.to_string()).or_insert_with(|| Hold {
            head: message_key(message),
            deferred: None,
            handed_back: false,
            queue: VecDeque::new(),
        });
        hold.head = message_key(message);
        if hold.deferred.is_none() {
            self.held += 1;
        }
        hold.deferred = Some((message.clone(), due));
    }

    /// Holds `key` behind `message`, which was handed back to the broker (shutdown): the
    /// key's later records are not processed by this lane any more.
    pub(super) fn handed_back(&mut self, message: &StreamMessage, key: &str) {
        let hold = self.keys.entry(key.to_string()).or_insert_with(|| Hold {
            head: message_key(message),
            deferred: None,
            handed_back: true,
            queue: VecDeque::new(),
        });
        hold.handed_back = true;
    }

    /// When the earliest deferred record is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.keys.values().filter_map(|hold| hold.deferred.as_ref().map(|(_, due)| *due)).min()
    }

    /// Takes the deferred records due at `now`, to be processed again; their keys stay held.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<StreamMessage> {
        let mut due = Vec::new();
        for hold in self.keys.values_mut() {
            if hold.deferred.as_ref().is_some_and(|(_, at)| *at <= now) {
                if let Some((message, _)) = hold.deferred.take() {
                    due.push(message);
                }
            }
        }
        self.held -= due.len();
        due
    }

    /// Ends the hold of `key` when the record it waited for was settled (neither deferred
    /// again nor handed back): the queued records, in order, to be processed now.
    pub(super) fn release(&mut self, key: &str) -> Option<VecDeque<StreamMessage>> {
        let hold = self.keys.get(key)?;
        if hold.deferred.is_some() || hold.handed_back {
            return None;
        }
        let hold = self.keys.remove(key)?;
        self.held -= hold.queue.len();
        Some(hold.queue)
    }

    /// Puts `messages` back behind `key`'s queue: the key was held again while they waited
    /// to be processed (the records queued meanwhile came from the same batch, before them).
    pub(super) fn requeue(&mut self, key: &str, messages: VecDeque<StreamMessage>) {
        match self.keys.get_mut(key) {
            Some(hold) => {
                self.held += messages.len();
                hold.queue.extend(messages);
            }
            None => debug_assert!(messages.is_empty(), "requeued behind a key that is not held"),
        }
    }

    /// Whether `key` is held.
    pub(super) fn is_held(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// Every held record, each key's deferred record before its queue; the holds end.
    pub(super) fn drain(&mut self) -> Vec<StreamMessage> {
        let mut all = Vec::with_capacity(self.held);
        for (_, hold) in self.keys.drain() {
            all.extend(hold.deferred.map(|(message, _)| message));
            all.extend(hold.queue);
        }
        self.held = 0;
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danube_core::message::MessageID;
    use std::time::Duration;

    fn message(key: &str, offset: u64) -> StreamMessage {
        StreamMessage {
            request_id: 0,
            msg_id: MessageID {
                producer_id: 1,
                topic_name: "/default/t".into(),
                broker_addr: String::new(),
                topic_offset: offset,
            },
            payload: Default::default(),
            publish_time: 0,
            producer_name: "p".into(),
            subscription_name: None,
            attributes: HashMap::new(),
            schema_id: None,
            schema_version: None,
            routing_key: Some(key.into()),
        }
    }

    #[test]
    fn a_deferred_key_holds_its_later_records_until_released_in_order() {
        let mut holds = KeyHolds::default();
        let now = Instant::now();
        assert_eq!(holds.hold_if_blocked(&message("k", 1)), Held::No);
        holds.defer(&message("k", 1), "k", now + Duration::from_secs(1));
        assert_eq!(holds.hold_if_blocked(&message("k", 2)), Held::Queued);
        assert_eq!(holds.hold_if_blocked(&message("o", 3)), Held::No, "other keys flow");
        assert_eq!(holds.hold_if_blocked(&message("k", 4)), Held::Queued);
        assert_eq!(holds.hold_if_blocked(&message("k", 2)), Held::Duplicate);
        assert_eq!(holds.hold_if_blocked(&message("k", 1)), Held::Duplicate, "the deferred one, again");
        assert_eq!(holds.held(), 3);
        assert!(holds.take_due(now).is_empty());
        assert_eq!(holds.next_due(), Some(now + Duration::from_secs(1)));
        let due = holds.take_due(now + Duration::from_secs(1));
        assert_eq!(due.iter().map(|m| m.msg_id.topic_offset).collect::<Vec<_>>(), vec![1]);
        assert_eq!(holds.hold_if_blocked(&message("k", 1)), Held::No, "processed again");
        assert_eq!(holds.hold_if_blocked(&message("k", 5)), Held::Queued, "still held while it is");
        let released = holds.release("k").expect("released");
        assert_eq!(released.iter().map(|m| m.msg_id.topic_offset).collect::<Vec<_>>(), vec![2, 4, 5]);
        assert_eq!(holds.held(), 0);
        assert!(!holds.is_held("k"));
    }

    #[test]
    fn a_record_deferred_again_keeps_the_hold() {
        let mut holds = KeyHolds::default();
        let now = Instant::now();
        holds.defer(&message("k", 1), "k", now);
        holds.hold_if_blocked(&message("k", 2));
        holds.take_due(now);
        holds.defer(&message("k", 1), "k", now + Duration::from_secs(1));
        assert!(holds.release("k").is_none());
        assert_eq!(holds.held(), 2);
        let drained = holds.drain();
        assert_eq!(drained.iter().map(|m| m.msg_id.topic_offset).collect::<Vec<_>>(), vec![1, 2], "deferred first");
        assert_eq!(holds.held(), 0);
    }

    #[test]
    fn a_handed_back_key_is_never_released() {
        let mut holds = KeyHolds::default();
        holds.handed_back(&message("k", 1), "k");
        assert_eq!(holds.hold_if_blocked(&message("k", 2)), Held::Queued);
        assert!(holds.release("k").is_none());
        assert_eq!(holds.drain().len(), 1);
    }
}
