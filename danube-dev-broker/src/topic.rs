//! Topics: an append-only log plus the subscriptions reading it.

use crate::message::{LogEntry, StoredMessage};
use crate::persist::Persist;
use crate::subscription::Subscription;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Fields of a message being published (everything but topic and offset).
#[derive(Debug, Clone)]
pub(crate) struct NewMessage {
    pub producer_id: u64,
    pub payload: Bytes,
    pub attributes: HashMap<String, String>,
    pub routing_key: Option<String>,
    pub publish_time: u64,
    pub producer_name: String,
    pub schema_id: Option<u64>,
    pub schema_version: Option<u32>,
}

/// Mutable part of a topic, guarded by the topic lock.
#[derive(Debug, Default)]
pub(crate) struct TopicInner {
    /// Every message, index = offset.
    pub log: Vec<Arc<LogEntry>>,
    /// Subscriptions by name.
    pub subs: HashMap<String, Subscription>,
    /// Dispatch-window overrides by subscription name.
    pub window_overrides: HashMap<String, usize>,
}

/// A (non-partitioned topic or partition) topic.
#[derive(Debug)]
pub(crate) struct Topic {
    /// Full name, e.g. `/default/orders-part-0`.
    pub name: String,
    /// Reliable dispatch (ack tracking, durable subscriptions) or not.
    pub reliable: bool,
    /// Log and subscriptions.
    pub inner: Mutex<TopicInner>,
}

impl Topic {
    /// An empty topic.
    pub(crate) fn new(name: String, reliable: bool) -> Self {
        Topic { name, reliable, inner: Mutex::new(TopicInner::default()) }
    }

    /// Appends a message, wakes the subscriptions and queues it for
    /// persistence. Returns its offset.
    pub(crate) fn append(&self, msg: NewMessage, persist: Option<&Persist>) -> u64 {
        let mut inner = self.inner.lock();
        let offset = inner.log.len() as u64;
        let entry = Arc::new(LogEntry {
            producer_id: msg.producer_id,
            message: StoredMessage {
                topic: self.name.clone(),
                offset,
                payload: msg.payload,
                attributes: msg.attributes,
                routing_key: msg.routing_key,
                publish_time: msg.publish_time,
                producer_name: msg.producer_name,
                schema_id: msg.schema_id,
                schema_version: msg.schema_version,
            },
        });
        if let Some(p) = persist {
            // Queued under the lock so the file keeps offsets in order.
            p.message(Arc::clone(&entry));
        }
        inner.log.push(entry);
        for sub in inner.subs.values() {
            sub.notify.notify_one();
        }
        offset
    }

    /// Appends a reloaded entry (offsets are renumbered to stay dense).
    pub(crate) fn restore(&self, mut entry: LogEntry) {
        let mut inner = self.inner.lock();
        let offset = inner.log.len() as u64;
        if entry.message.offset != offset {
            tracing::warn!(
                topic = %self.name,
                stored = entry.message.offset,
                expected = offset,
                "renumbering out-of-sequence message at load"
            );
            entry.message.offset = offset;
        }
        inner.log.push(Arc::new(entry));
    }

    /// Copies of every stored message.
    pub(crate) fn messages(&self) -> Vec<StoredMessage> {
        self.inner.lock().log.iter().map(|e| e.message.clone()).collect()
    }

    /// Number of stored messages.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().log.len()
    }
}
