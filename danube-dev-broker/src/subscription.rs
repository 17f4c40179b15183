//! Per-subscription dispatch state: cursor, unacknowledged messages, redelivery
//! scheduling and consumer selection for the four subscription types.
//!
//! A [`Subscription`] is owned by its topic and only touched under the topic's
//! lock; all methods are synchronous and never block. Delivery to a consumer is
//! a non-blocking send on an unbounded channel that feeds that consumer's gRPC
//! stream: on a reliable topic the number of messages in flight is bounded by
//! the dispatch window, on a non-reliable topic by [`NON_RELIABLE_QUEUE_LIMIT`].

use crate::config::{BrokerConfig, PoisonPolicy};
use crate::glob::glob_match;
use crate::message::LogEntry;
use danube_core::proto::StreamMessage;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Messages queued towards one consumer of a non-reliable topic before the
/// dispatcher waits for the stream to drain.
pub(crate) const NON_RELIABLE_QUEUE_LIMIT: usize = 1024;

/// FNV-1a hash (the key-to-consumer hash of Danube's KeyShared dispatcher).
fn fnv1a(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Subscription type, as in `ConsumerRequest.SubscriptionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubType {
    Exclusive,
    Shared,
    Failover,
    KeyShared,
}

impl SubType {
    /// Maps the wire value; unknown values are rejected.
    pub(crate) fn from_i32(v: i32) -> Option<SubType> {
        match v {
            0 => Some(SubType::Exclusive),
            1 => Some(SubType::Shared),
            2 => Some(SubType::Failover),
            3 => Some(SubType::KeyShared),
            _ => None,
        }
    }

    /// Wire value.
    pub(crate) fn as_i32(self) -> i32 {
        match self {
            SubType::Exclusive => 0,
            SubType::Shared => 1,
            SubType::Failover => 2,
            SubType::KeyShared => 3,
        }
    }
}

/// The sending half of an open `ReceiveMessages` stream.
#[derive(Debug)]
pub(crate) struct StreamTx {
    pub tx: UnboundedSender<StreamMessage>,
    /// Distinguishes successive streams of the same consumer.
    pub generation: u64,
    /// Messages sent but not yet taken by the gRPC layer.
    pub queued: Arc<AtomicUsize>,
}

/// A consumer registered on a subscription.
#[derive(Debug)]
pub(crate) struct ConsumerSlot {
    pub id: u64,
    pub name: String,
    pub key_filters: Vec<String>,
    /// Open stream, if the consumer is currently receiving.
    pub stream: Option<StreamTx>,
    /// Last time the consumer was seen (subscribe, stream, health check).
    pub last_seen: Instant,
    /// Whether the consumer ever opened a stream.
    pub had_stream: bool,
}

impl ConsumerSlot {
    fn active(&self) -> bool {
        self.stream.is_some()
    }

    fn accepts_key(&self, key: &str) -> bool {
        self.key_filters.is_empty() || self.key_filters.iter().any(|p| glob_match(p, key))
    }

    fn has_room(&self, reliable: bool) -> bool {
        reliable || self.stream.as_ref().is_some_and(|s| s.queued.load(Ordering::Acquire) < NON_RELIABLE_QUEUE_LIMIT)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TrackState {
    /// Delivered to `consumer`, waiting for an ack until `deadline`.
    Inflight { consumer: u64, deadline: Instant },
    /// Waiting to be (re)delivered as soon as a consumer can take it.
    Ready,
    /// Waiting for its redelivery time.
    Scheduled(Instant),
    /// Exceeded the redelivery limit under [`PoisonPolicy::Block`].
    Poisoned,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    state: TrackState,
    redeliveries: u32,
}

/// Side effects of a dispatch step that the caller performs outside the lock.
#[derive(Debug, Default)]
pub(crate) struct StepOutcome {
    /// When the dispatcher must run again even without a notification.
    pub next_deadline: Option<Instant>,
    /// Offsets settled by the poison policy (persisted like acks).
    pub settled: Vec<u64>,
    /// Messages to append to the dead-letter topic.
    pub dead_letters: Vec<Arc<LogEntry>>,
}

/// Read-only inputs of a dispatch step.
pub(crate) struct StepCtx<'a> {
    pub config: &'a BrokerConfig,
    pub broker_addr: &'a str,
    pub reliable: bool,
    pub window: usize,
    pub log: &'a [Arc<LogEntry>],
    pub now: Instant,
}

enum Pick {
    Slot(usize),
    /// No consumer accepts this message (KeyShared filters).
    Nobody,
    /// The chosen consumer cannot take more now.
    Busy,
}

/// State of one subscription on one topic (partition).
#[derive(Debug)]
pub(crate) struct Subscription {
    pub name: String,
    pub sub_type: SubType,
    /// Wakes this subscription's dispatcher task.
    pub notify: Arc<Notify>,
    /// Registered consumers in registration order (Failover picks the first active).
    pub consumers: Vec<ConsumerSlot>,
    /// Acknowledgements received (each message counted once).
    pub ack_count: u64,
    /// Next offset never dispatched.
    cursor: u64,
    /// Every offset below `floor` is settled.
    floor: u64,
    /// Settled offsets at or above `floor`.
    acked_above: BTreeSet<u64>,
    tracked: BTreeMap<u64, Tracked>,
    timeouts: BTreeSet<(Instant, u64)>,
    scheduled: BTreeSet<(Instant, u64)>,
    ready: BTreeSet<u64>,
    poisoned: usize,
    rr: usize,
}

impl Subscription {
    /// A subscription whose first undelivered offset is `start`, with the
    /// given already-settled offsets above it (from persistence).
    pub(crate) fn new(name: String, sub_type: SubType, start: u64, acked: BTreeSet<u64>) -> Self {
        let mut sub = Subscription {
            name,
            sub_type,
            notify: Arc::new(Notify::new()),
            consumers: Vec::new(),
            ack_count: 0,
            cursor: start,
            floor: start,
            acked_above: BTreeSet::new(),
            tracked: BTreeMap::new(),
            timeouts: BTreeSet::new(),
            scheduled: BTreeSet::new(),
            ready: BTreeSet::new(),
            poisoned: 0,
            rr: 0,
        };
        for off in acked {
            sub.mark_settled(off);
        }
        sub.cursor = sub.floor;
        sub
    }

    /// Messages delivered (or due for redelivery) and not yet acknowledged.
    pub(crate) fn unacked(&self) -> usize {
        self.tracked.len()
    }

    /// True when any consumer has an open stream.
    pub(crate) fn has_active_consumer(&self) -> bool {
        self.consumers.iter().any(ConsumerSlot::active)
    }

    fn mark_settled(&mut self, off: u64) {
        if off < self.floor {
            return;
        }
        self.acked_above.insert(off);
        while self.acked_above.remove(&self.floor) {
            self.floor += 1;
        }
    }

    fn is_settled(&self, off: u64) -> bool {
        off < self.floor || self.acked_above.contains(&off)
    }

    fn untrack(&mut self, off: u64) -> Option<Tracked> {
        let t = self.tracked.remove(&off)?;
        match t.state {
            TrackState::Inflight { deadline, .. } => {
                self.timeouts.remove(&(deadline, off));
            }
            TrackState::Ready => {
                self.ready.remove(&off);
            }
            TrackState::Scheduled(at) => {
                self.scheduled.remove(&(at, off));
            }
            TrackState::Poisoned => self.poisoned -= 1,
        }
        Some(t)
    }

    fn set_state(&mut self, off: u64, redeliveries: u32, state: TrackState) {
        self.untrack(off);
        match state {
            TrackState::Inflight { deadline, .. } => {
                self.timeouts.insert((deadline, off));
            }
            TrackState::Ready => {
                self.ready.insert(off);
            }
            TrackState::Scheduled(at) => {
                self.scheduled.insert((at, off));
            }
            TrackState::Poisoned => self.poisoned += 1,
        }
        self.tracked.insert(off, Tracked { state, redeliveries });
    }

    /// Records an acknowledgement. Returns true when it settled a message
    /// that was outstanding (false for duplicates and unknown offsets).
    pub(crate) fn ack(&mut self, off: u64, reliable: bool) -> bool {
        if !reliable {
            self.ack_count += 1;
            return true;
        }
        if self.untrack(off).is_some() {
            self.mark_settled(off);
            self.ack_count += 1;
            true
        } else {
            false
        }
    }

    /// Records a negative acknowledgement of an in-flight message: it is
    /// redelivered after `max(delay, backoff)`, capped by the configured maximum.
    pub(crate) fn nack(
        &mut self,
        off: u64,
        delay: Option<Duration>,
        config: &BrokerConfig,
        log: &[Arc<LogEntry>],
        now: Instant,
        out: &mut StepOutcome,
    ) -> bool {
        match self.tracked.get(&off) {
            Some(t) if matches!(t.state, TrackState::Inflight { .. }) => {
                self.on_unacked(off, delay, config, log, now, out);
                true
            }
            _ => false,
        }
    }

    /// A delivered message was not acknowledged in time (or was nacked).
    fn on_unacked(
        &mut self,
        off: u64,
        min_delay: Option<Duration>,
        config: &BrokerConfig,
        log: &[Arc<LogEntry>],
        now: Instant,
        out: &mut StepOutcome,
    ) {
        let Some(t) = self.tracked.get(&off).copied() else {
            return;
        };
        if t.redeliveries >= config.max_redeliveries {
            match &config.poison_policy {
                PoisonPolicy::Block => {
                    tracing::warn!(
                        subscription = %self.name,
                        offset = off,
                        "message exceeded max redeliveries, subscription blocked"
                    );
                    self.set_state(off, t.redeliveries, TrackState::Poisoned);
                }
                PoisonPolicy::Drop => {
                    tracing::warn!(subscription = %self.name, offset = off, "poison message dropped");
                    self.untrack(off);
                    self.mark_settled(off);
                    out.settled.push(off);
                }
                PoisonPolicy::DeadLetter(topic) => {
                    tracing::warn!(
                        subscription = %self.name,
                        offset = off,
                        dead_letter_topic = %topic,
                        "poison message moved to dead-letter topic"
                    );
                    self.untrack(off);
                    self.mark_settled(off);
                    out.settled.push(off);
                    if let Some(entry) = usize::try_from(off).ok().and_then(|i| log.get(i)) {
                        out.dead_letters.push(Arc::clone(entry));
                    }
                }
            }
            return;
        }
        let redeliveries = t.redeliveries + 1;
        let backoff = config.backoff(redeliveries);
        let delay = min_delay.map_or(backoff, |d| d.max(backoff)).min(config.redelivery_max_delay);
        self.set_state(off, redeliveries, TrackState::Scheduled(now + delay));
    }

    /// Returns every message in flight to `consumer_id` to the subscription
    /// for immediate redelivery (the consumer's stream went away).
    pub(crate) fn requeue_consumer(&mut self, consumer_id: u64) {
        let offs: Vec<(u64, u32)> = self
            .tracked
            .iter()
            .filter_map(|(off, t)| match t.state {
                TrackState::Inflight { consumer, .. } if consumer == consumer_id => Some((*off, t.redeliveries)),
                _ => None,
            })
            .collect();
        for (off, redeliveries) in offs {
            self.set_state(off, redeliveries, TrackState::Ready);
        }
    }

    /// Closes the stream of `consumer_id` if its generation is `generation`
    /// (or any generation when `None`) and requeues its messages.
    pub(crate) fn detach_stream(&mut self, consumer_id: u64, generation: Option<u64>) -> bool {
        let Some(slot) = self.consumers.iter_mut().find(|c| c.id == consumer_id) else {
            return false;
        };
        let matches = match (&slot.stream, generation) {
            (Some(s), Some(g)) => s.generation == g,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !matches {
            return false;
        }
        slot.stream = None;
        slot.last_seen = Instant::now();
        self.requeue_consumer(consumer_id);
        true
    }

    /// Closes every open stream of this subscription.
    pub(crate) fn detach_all_streams(&mut self) {
        let ids: Vec<u64> = self.consumers.iter().map(|c| c.id).collect();
        for id in ids {
            self.detach_stream(id, None);
        }
    }

    fn pick(&mut self, entry: &LogEntry, reliable: bool) -> Pick {
        match self.sub_type {
            SubType::Exclusive | SubType::Failover => match self.consumers.iter().position(ConsumerSlot::active) {
                Some(i) if self.consumers[i].has_room(reliable) => Pick::Slot(i),
                Some(_) => Pick::Busy,
                None => Pick::Nobody,
            },
            SubType::Shared => {
                let n = self.consumers.len();
                let mut any_active = false;
                for k in 0..n {
                    let i = (self.rr + k) % n;
                    let c = &self.consumers[i];
                    if c.active() {
                        any_active = true;
                        if c.has_room(reliable) {
                            self.rr = (i + 1) % n;
                            return Pick::Slot(i);
                        }
                    }
                }
                if any_active {
                    Pick::Busy
                } else {
                    Pick::Nobody
                }
            }
            SubType::KeyShared => {
                // As in Danube: the effective key falls back to the producer
                // name; FNV-1a of the key picks among the eligible consumers.
                let m = &entry.message;
                let key = m.routing_key.as_deref().unwrap_or(&m.producer_name);
                let eligible: Vec<usize> = self
                    .consumers
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.active() && c.accepts_key(key))
                    .map(|(i, _)| i)
                    .collect();
                if eligible.is_empty() {
                    return Pick::Nobody;
                }
                let i = eligible[(fnv1a(key) % eligible.len() as u64) as usize];
                if self.consumers[i].has_room(reliable) {
                    Pick::Slot(i)
                } else {
                    Pick::Busy
                }
            }
        }
    }

    /// Sends `entry` to consumer slot `i`. Returns the consumer id on success;
    /// a closed stream is detached and `None` returned.
    fn send_to(&mut self, i: usize, entry: &LogEntry, ctx: &StepCtx<'_>) -> Option<u64> {
        let slot = &mut self.consumers[i];
        let stream = slot.stream.as_ref()?;
        let msg = entry.to_stream_message(ctx.broker_addr, &self.name);
        stream.queued.fetch_add(1, Ordering::AcqRel);
        if stream.tx.send(msg).is_ok() {
            return Some(slot.id);
        }
        stream.queued.fetch_sub(1, Ordering::AcqRel);
        let id = slot.id;
        self.detach_stream(id, None);
        None
    }

    /// Runs timers and dispatches whatever can be dispatched now.
    pub(crate) fn step(&mut self, ctx: &StepCtx<'_>) -> StepOutcome {
        let mut out = StepOutcome::default();
        if ctx.reliable {
            self.step_reliable(ctx, &mut out);
        } else {
            self.step_non_reliable(ctx);
        }
        out.next_deadline = match (self.timeouts.first(), self.scheduled.first()) {
            (Some(a), Some(b)) => Some(a.0.min(b.0)),
            (Some(a), None) => Some(a.0),
            (None, Some(b)) => Some(b.0),
            (None, None) => None,
        };
        out
    }

    fn step_reliable(&mut self, ctx: &StepCtx<'_>, out: &mut StepOutcome) {
        let now = ctx.now;
        while let Some(&(deadline, off)) = self.timeouts.first() {
            if deadline > now {
                break;
            }
            self.on_unacked(off, None, ctx.config, ctx.log, now, out);
        }
        while let Some(&(at, off)) = self.scheduled.first() {
            if at > now {
                break;
            }
            let redeliveries = self.tracked.get(&off).map_or(0, |t| t.redeliveries);
            self.set_state(off, redeliveries, TrackState::Ready);
        }
        if self.poisoned > 0 || !self.has_active_consumer() {
            return;
        }
        let deadline = now + ctx.config.ack_timeout;

        // Redeliveries first, in offset order.
        let ready: Vec<u64> = self.ready.iter().copied().collect();
        for off in ready {
            let Some(entry) = usize::try_from(off).ok().and_then(|i| ctx.log.get(i)) else {
                self.untrack(off);
                continue;
            };
            match self.pick(entry, true) {
                Pick::Slot(i) => {
                    if let Some(consumer) = self.send_to(i, entry, ctx) {
                        let redeliveries = self.tracked.get(&off).map_or(0, |t| t.redeliveries);
                        self.set_state(off, redeliveries, TrackState::Inflight { consumer, deadline });
                    } else if !self.has_active_consumer() {
                        return;
                    }
                }
                Pick::Nobody => continue,
                Pick::Busy => break,
            }
        }

        // New messages, within the window.
        let end = ctx.log.len() as u64;
        while self.tracked.len() < ctx.window && self.cursor < end {
            let off = self.cursor;
            if self.is_settled(off) {
                self.cursor += 1;
                continue;
            }
            let entry = &ctx.log[off as usize];
            match self.pick(entry, true) {
                Pick::Slot(i) => {
                    if let Some(consumer) = self.send_to(i, entry, ctx) {
                        self.set_state(off, 0, TrackState::Inflight { consumer, deadline });
                        self.cursor += 1;
                    } else if !self.has_active_consumer() {
                        return;
                    }
                }
                Pick::Nobody => {
                    self.set_state(off, 0, TrackState::Ready);
                    self.cursor += 1;
                }
                Pick::Busy => break,
            }
        }
    }

    fn step_non_reliable(&mut self, ctx: &StepCtx<'_>) {
        let end = ctx.log.len() as u64;
        if !self.has_active_consumer() {
            self.cursor = end;
            return;
        }
        while self.cursor < end {
            let entry = &ctx.log[self.cursor as usize];
            match self.pick(entry, false) {
                Pick::Slot(i) => {
                    // A closed stream loses the message: fire and forget.
                    let _ = self.send_to(i, entry, ctx);
                    self.cursor += 1;
                    if !self.has_active_consumer() {
                        self.cursor = end;
                    }
                }
                Pick::Nobody => self.cursor += 1,
                Pick::Busy => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StoredMessage;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn log(n: u64, key: Option<&str>) -> Vec<Arc<LogEntry>> {
        (0..n)
            .map(|offset| {
                Arc::new(LogEntry {
                    producer_id: 1,
                    message: StoredMessage {
                        topic: "/default/t".into(),
                        offset,
                        payload: Default::default(),
                        attributes: Default::default(),
                        routing_key: key.map(str::to_string),
                        publish_time: 0,
                        producer_name: "p".into(),
                        schema_id: None,
                        schema_version: None,
                    },
                })
            })
            .collect()
    }

    fn attach(sub: &mut Subscription, id: u64) -> UnboundedReceiver<StreamMessage> {
        let (tx, rx) = unbounded_channel();
        sub.consumers.push(ConsumerSlot {
            id,
            name: format!("c{id}"),
            key_filters: vec![],
            stream: Some(StreamTx { tx, generation: id, queued: Arc::new(AtomicUsize::new(0)) }),
            last_seen: Instant::now(),
            had_stream: true,
        });
        rx
    }

    fn step(sub: &mut Subscription, cfg: &BrokerConfig, log: &[Arc<LogEntry>], now: Instant) -> StepOutcome {
        sub.step(&StepCtx {
            config: cfg,
            broker_addr: "http://127.0.0.1:1",
            reliable: true,
            window: cfg.max_unacked_messages,
            log,
            now,
        })
    }

    fn drain(rx: &mut UnboundedReceiver<StreamMessage>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m.msg_id.map_or(u64::MAX, |id| id.topic_offset));
        }
        out
    }

    #[test]
    fn window_and_ack() {
        let cfg = BrokerConfig::default();
        let log = log(15, None);
        let mut sub = Subscription::new("s".into(), SubType::Shared, 0, BTreeSet::new());
        let mut rx = attach(&mut sub, 1);
        let now = Instant::now();
        step(&mut sub, &cfg, &log, now);
        assert_eq!(drain(&mut rx), (0..10).collect::<Vec<_>>());
        assert!(sub.ack(3, true));
        assert!(!sub.ack(3, true), "duplicate ack");
        step(&mut sub, &cfg, &log, now);
        assert_eq!(drain(&mut rx), vec![10]);
        assert_eq!((sub.unacked(), sub.ack_count), (10, 1));
    }

    #[test]
    fn timeout_backoff_then_poison_drop() {
        let cfg = BrokerConfig { max_redeliveries: 2, poison_policy: PoisonPolicy::Drop, ..BrokerConfig::default() };
        let log = log(1, None);
        let mut sub = Subscription::new("s".into(), SubType::Exclusive, 0, BTreeSet::new());
        let mut rx = attach(&mut sub, 1);
        let t0 = Instant::now();
        let out = step(&mut sub, &cfg, &log, t0);
        assert_eq!(drain(&mut rx), vec![0]);
        assert_eq!(out.next_deadline, Some(t0 + cfg.ack_timeout));
        // Timeout: scheduled after 1 s, then 2 s.
        let t1 = t0 + cfg.ack_timeout;
        let out = step(&mut sub, &cfg, &log, t1);
        assert!(drain(&mut rx).is_empty());
        assert_eq!(out.next_deadline, Some(t1 + Duration::from_secs(1)));
        let t2 = t1 + Duration::from_secs(1);
        step(&mut sub, &cfg, &log, t2);
        assert_eq!(drain(&mut rx), vec![0]);
        let t3 = t2 + cfg.ack_timeout;
        let out = step(&mut sub, &cfg, &log, t3);
        assert_eq!(out.next_deadline, Some(t3 + Duration::from_secs(2)));
        let t4 = t3 + Duration::from_secs(2);
        step(&mut sub, &cfg, &log, t4);
        assert_eq!(drain(&mut rx), vec![0]);
        // Third timeout exceeds max_redeliveries = 2: dropped and settled.
        let out = step(&mut sub, &cfg, &log, t4 + cfg.ack_timeout);
        assert_eq!(out.settled, vec![0]);
        assert_eq!(sub.unacked(), 0);
        assert_eq!(sub.ack_count, 0);
    }

    #[test]
    fn nack_delay_is_capped() {
        let cfg = BrokerConfig::default();
        let log = log(1, None);
        let mut sub = Subscription::new("s".into(), SubType::Shared, 0, BTreeSet::new());
        let mut rx = attach(&mut sub, 1);
        let t0 = Instant::now();
        step(&mut sub, &cfg, &log, t0);
        drain(&mut rx);
        let mut out = StepOutcome::default();
        assert!(sub.nack(0, Some(Duration::from_secs(600)), &cfg, &log, t0, &mut out));
        let out = step(&mut sub, &cfg, &log, t0);
        assert_eq!(out.next_deadline, Some(t0 + cfg.redelivery_max_delay));
    }

    #[test]
    fn detached_consumer_messages_go_to_the_next() {
        let cfg = BrokerConfig::default();
        let log = log(4, None);
        let mut sub = Subscription::new("s".into(), SubType::Failover, 0, BTreeSet::new());
        let mut rx1 = attach(&mut sub, 1);
        let mut rx2 = attach(&mut sub, 2);
        let now = Instant::now();
        step(&mut sub, &cfg, &log, now);
        assert_eq!(drain(&mut rx1), vec![0, 1, 2, 3]);
        assert!(drain(&mut rx2).is_empty(), "standby must not receive");
        assert!(sub.ack(0, true));
        assert!(sub.detach_stream(1, Some(1)));
        step(&mut sub, &cfg, &log, now);
        assert_eq!(drain(&mut rx2), vec![1, 2, 3]);
    }

    #[test]
    fn reload_skips_settled_offsets() {
        let cfg = BrokerConfig::default();
        let log = log(5, None);
        let acked: BTreeSet<u64> = [1, 2, 4].into_iter().collect();
        let mut sub = Subscription::new("s".into(), SubType::Shared, 1, acked);
        let mut rx = attach(&mut sub, 1);
        step(&mut sub, &cfg, &log, Instant::now());
        assert_eq!(drain(&mut rx), vec![3]);
    }
}
