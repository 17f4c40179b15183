//! Rebuilding the state from the data directory at start.

use super::*;

impl BrokerState {
    pub(super) fn restore(&self, loaded: Loaded) {
        struct SubLoad {
            sub_type: i32,
            start: u64,
            acked: BTreeSet<u64>,
        }
        let mut subs: BTreeMap<(String, String), SubLoad> = BTreeMap::new();
        let mut consumers = Vec::new();
        let mut max_id = 0u64;
        let n_msgs = loaded.messages.len();
        // Topics first, so that their dispatch strategy is known.
        for r in &loaded.meta {
            match r {
                MetaRecord::Namespace { name } => {
                    self.namespaces.write().insert(name.clone());
                }
                MetaRecord::Topic { name, reliable } => {
                    self.insert_topic(name, *reliable, false);
                }
                _ => {}
            }
        }
        for entry in loaded.messages {
            let t = self.insert_topic(&entry.message.topic.clone(), true, false);
            t.restore(entry);
        }
        for r in loaded.meta {
            match r {
                MetaRecord::Namespace { .. } | MetaRecord::Topic { .. } => {}
                MetaRecord::Subscription { topic, name, sub_type, start } => {
                    subs.entry((topic, name)).or_insert(SubLoad { sub_type, start, acked: BTreeSet::new() });
                }
                MetaRecord::Ack { topic, sub, offset } => {
                    if let Some(s) = subs.get_mut(&(topic, sub)) {
                        s.acked.insert(offset);
                    }
                }
                MetaRecord::MaxUnacked { topic, sub, n } => {
                    if let Some(t) = self.topic(&topic) {
                        t.inner.lock().window_overrides.insert(sub, n);
                    }
                }
                MetaRecord::Producer { id, topic, name } => {
                    max_id = max_id.max(id);
                    let topic = self.insert_topic(&topic, true, false);
                    self.producers.write().insert(id, Arc::new(ProducerInfo { name, topic }));
                }
                MetaRecord::Consumer { id, topic, sub, name, key_filters } => {
                    max_id = max_id.max(id);
                    consumers.push((id, topic, sub, name, key_filters));
                }
                MetaRecord::Schema(rec) => self.schemas.lock().restore(rec),
                MetaRecord::CompatMode { subject, mode } => {
                    let _ = self.schemas.lock().set_mode(&subject, &mode);
                }
            }
        }
        for ((topic, name), l) in subs {
            let Some(t) = self.topic(&topic) else {
                continue;
            };
            let sub_type = SubType::from_i32(l.sub_type).unwrap_or(SubType::Shared);
            let mut inner = t.inner.lock();
            let (start, acked) =
                if t.reliable { (l.start, l.acked) } else { (inner.log.len() as u64, BTreeSet::new()) };
            let ack_count = acked.len() as u64;
            let mut s = Subscription::new(name.clone(), sub_type, start, acked);
            s.ack_count = ack_count;
            inner.subs.insert(name, s);
        }
        let now = Instant::now();
        for (id, topic, sub, name, key_filters) in consumers {
            let Some(t) = self.topic(&topic) else {
                continue;
            };
            let mut inner = t.inner.lock();
            let Some(s) = inner.subs.get_mut(&sub) else {
                continue;
            };
            if s.sub_type == SubType::Exclusive {
                s.consumers.clear();
            }
            s.consumers.retain(|c| c.name != name);
            s.consumers.push(ConsumerSlot { id, name, key_filters, stream: None, last_seen: now, had_stream: false });
            drop(inner);
            self.consumers.write().insert(id, Arc::new(ConsumerInfo { topic: Arc::clone(&t), subscription: sub }));
        }
        // Drop registrations of consumers replaced above.
        let live: HashSet<u64> = self
            .topics
            .read()
            .values()
            .flat_map(|t| {
                t.inner
                    .lock()
                    .subs
                    .values()
                    .flat_map(|s| s.consumers.iter().map(|c| c.id).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            })
            .collect();
        self.consumers.write().retain(|id, _| live.contains(id));
        self.next_id.store(max_id + 1, Ordering::Relaxed);
        if n_msgs > 0 || !self.topics.read().is_empty() {
            tracing::info!(topics = self.topics.read().len(), messages = n_msgs, "state reloaded from data directory");
        }
    }

    /// Starts the dispatchers of all reloaded subscriptions.
    pub(crate) fn start_dispatchers(self: &Arc<Self>) {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for t in topics {
            let subs: Vec<(String, Arc<Notify>)> =
                t.inner.lock().subs.iter().map(|(n, s)| (n.clone(), Arc::clone(&s.notify))).collect();
            for (name, notify) in subs {
                self.spawn_dispatcher(Arc::clone(&t), name, notify);
            }
        }
    }
}
