//! Subscriptions, consumer streams, acks and the per-subscription dispatchers.

use super::*;

impl BrokerState {
    /// Registers a consumer on a subscription (creating the subscription at
    /// the end of the topic), or returns the id of the same-named consumer.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        topic_name: &str,
        sub_name: &str,
        consumer_name: &str,
        sub_type: i32,
        key_filters: Vec<String>,
    ) -> Result<u64, StateError> {
        let sub_type = SubType::from_i32(sub_type).ok_or(StateError::InvalidSubType(sub_type))?;
        namespace_of(topic_name)?;
        let topic = self.topic(topic_name).ok_or_else(|| StateError::TopicNotFound(topic_name.to_string()))?;
        let now = Instant::now();
        let mut created = None;
        let mut removed = Vec::new();
        let id =
            {
                let mut inner = topic.inner.lock();
                let start = inner.log.len() as u64;
                let sub = inner.subs.entry(sub_name.to_string()).or_insert_with(|| {
                    let s = Subscription::new(sub_name.to_string(), sub_type, start, BTreeSet::new());
                    created = Some((start, Arc::clone(&s.notify)));
                    s
                });
                if let Some(slot) = sub.consumers.iter_mut().find(|c| c.name == consumer_name) {
                    slot.last_seen = now;
                    slot.key_filters = key_filters;
                    return Ok(slot.id);
                }
                if sub.sub_type == SubType::Exclusive {
                    // A holder that still streams, or never streamed but was
                    // seen recently, keeps the subscription; others are dropped.
                    if let Some(holder) = sub.consumers.iter().find(|c| {
                        c.stream.is_some() || (!c.had_stream && now.duration_since(c.last_seen) < CONSUMER_GRACE)
                    }) {
                        return Err(StateError::ExclusiveBusy {
                            topic: topic_name.to_string(),
                            sub: sub_name.to_string(),
                            holder: holder.name.clone(),
                        });
                    }
                    removed = sub.consumers.drain(..).map(|c| c.id).collect();
                }
                let id = self.new_id();
                sub.consumers.push(ConsumerSlot {
                    id,
                    name: consumer_name.to_string(),
                    key_filters: key_filters.clone(),
                    stream: None,
                    last_seen: now,
                    had_stream: false,
                });
                id
            };
        {
            let mut consumers = self.consumers.write();
            for r in &removed {
                consumers.remove(r);
            }
            consumers
                .insert(id, Arc::new(ConsumerInfo { topic: Arc::clone(&topic), subscription: sub_name.to_string() }));
        }
        if let Some((start, notify)) = created {
            self.persist_meta(MetaRecord::Subscription {
                topic: topic_name.to_string(),
                name: sub_name.to_string(),
                sub_type: sub_type.as_i32(),
                start,
            });
            tracing::info!(topic = %topic_name, subscription = %sub_name, start, "subscription created");
            self.spawn_dispatcher(Arc::clone(&topic), sub_name.to_string(), notify);
        }
        self.persist_meta(MetaRecord::Consumer {
            id,
            topic: topic_name.to_string(),
            sub: sub_name.to_string(),
            name: consumer_name.to_string(),
            key_filters,
        });
        tracing::info!(consumer_id = id, consumer = %consumer_name, topic = %topic_name, subscription = %sub_name, "consumer subscribed");
        Ok(id)
    }

    /// Health check of a consumer: refreshes its liveness.
    pub(crate) fn touch_consumer(&self, id: u64) -> bool {
        let Some(info) = self.consumers.read().get(&id).cloned() else {
            return false;
        };
        let mut inner = info.topic.inner.lock();
        match inner.subs.get_mut(&info.subscription).and_then(|s| s.consumers.iter_mut().find(|c| c.id == id)) {
            Some(slot) => {
                slot.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Opens the message stream of a consumer, replacing any previous one.
    pub(crate) fn open_stream(&self, consumer_id: u64) -> Result<ConsumerStream, StateError> {
        let info = self.consumers.read().get(&consumer_id).cloned().ok_or(StateError::ConsumerNotFound(consumer_id))?;
        let generation = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let notify = {
            let mut inner = info.topic.inner.lock();
            let sub = inner.subs.get_mut(&info.subscription).ok_or(StateError::ConsumerNotFound(consumer_id))?;
            sub.detach_stream(consumer_id, None);
            let slot = sub
                .consumers
                .iter_mut()
                .find(|c| c.id == consumer_id)
                .ok_or(StateError::ConsumerNotFound(consumer_id))?;
            slot.stream = Some(StreamTx { tx, generation, queued: Arc::clone(&queued) });
            slot.had_stream = true;
            slot.last_seen = Instant::now();
            sub.notify.notify_one();
            Arc::clone(&sub.notify)
        };
        tracing::debug!(consumer_id, topic = %info.topic.name, subscription = %info.subscription, "stream opened");
        Ok(ConsumerStream {
            rx,
            queued,
            notify,
            _guard: StreamGuard {
                topic: Arc::clone(&info.topic),
                subscription: info.subscription.clone(),
                consumer_id,
                generation,
            },
        })
    }

    /// Handles `Ack`.
    pub(crate) fn ack(&self, topic: &str, sub: &str, offset: u64) -> Result<(), StateError> {
        let t = self.topic(topic).ok_or_else(|| StateError::TopicNotFound(topic.to_string()))?;
        let mut inner = t.inner.lock();
        let s = inner
            .subs
            .get_mut(sub)
            .ok_or_else(|| StateError::SubscriptionNotFound { topic: topic.to_string(), sub: sub.to_string() })?;
        if s.ack(offset, t.reliable) && t.reliable {
            s.notify.notify_one();
            self.persist_meta(MetaRecord::Ack { topic: topic.to_string(), sub: sub.to_string(), offset });
        }
        Ok(())
    }

    /// Handles `Nack`.
    pub(crate) fn nack(&self, topic: &str, sub: &str, offset: u64, delay: Option<Duration>) -> Result<(), StateError> {
        let t = self.topic(topic).ok_or_else(|| StateError::TopicNotFound(topic.to_string()))?;
        if !t.reliable {
            return Ok(());
        }
        let mut out = Default::default();
        {
            let mut inner = t.inner.lock();
            let inner = &mut *inner;
            let s = inner
                .subs
                .get_mut(sub)
                .ok_or_else(|| StateError::SubscriptionNotFound { topic: topic.to_string(), sub: sub.to_string() })?;
            if s.nack(offset, delay, &self.config, &inner.log, Instant::now(), &mut out) {
                s.notify.notify_one();
            }
        }
        self.apply_outcome(&t, sub, out);
        Ok(())
    }

    /// Ends every open `ReceiveMessages` stream; in-flight messages are requeued.
    pub(crate) fn drop_streams(&self) {
        let topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        for t in topics {
            let mut inner = t.inner.lock();
            for sub in inner.subs.values_mut() {
                sub.detach_all_streams();
                sub.notify.notify_one();
            }
        }
    }

    // ----- dispatch --------------------------------------------------------

    pub(super) fn spawn_dispatcher(self: &Arc<Self>, topic: Arc<Topic>, sub: String, notify: Arc<Notify>) {
        let state = Arc::clone(self);
        tokio::spawn(async move { state.dispatch_loop(topic, sub, notify).await });
    }

    async fn dispatch_loop(self: Arc<Self>, topic: Arc<Topic>, sub: String, notify: Arc<Notify>) {
        loop {
            let out = {
                let mut guard = topic.inner.lock();
                let inner = &mut *guard;
                let Some(s) = inner.subs.get_mut(&sub) else {
                    return;
                };
                let window =
                    inner.window_overrides.get(&sub).copied().unwrap_or(self.config.max_unacked_messages).max(1);
                s.step(&StepCtx {
                    config: &self.config,
                    broker_addr: &self.broker_url,
                    reliable: topic.reliable,
                    window,
                    log: &inner.log,
                    now: Instant::now(),
                })
            };
            let deadline = out.next_deadline;
            self.apply_outcome(&topic, &sub, out);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = notify.notified() => {}
                _ = sleep => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    fn apply_outcome(&self, topic: &Topic, sub: &str, out: crate::subscription::StepOutcome) {
        for offset in out.settled {
            self.persist_meta(MetaRecord::Ack { topic: topic.name.clone(), sub: sub.to_string(), offset });
        }
        if let crate::config::PoisonPolicy::DeadLetter(dlq) = &self.config.poison_policy {
            for entry in out.dead_letters {
                let t = self.helper_topic(dlq);
                let m = &entry.message;
                t.append(
                    NewMessage {
                        producer_id: entry.producer_id,
                        payload: m.payload.clone(),
                        attributes: m.attributes.clone(),
                        routing_key: m.routing_key.clone(),
                        publish_time: m.publish_time,
                        producer_name: m.producer_name.clone(),
                        schema_id: m.schema_id,
                        schema_version: m.schema_version,
                    },
                    self.persist.as_ref(),
                );
            }
        }
    }

    // ----- test API --------------------------------------------------------
}

/// Detaches the consumer's stream when the gRPC layer drops it.
#[derive(Debug)]
struct StreamGuard {
    topic: Arc<Topic>,
    subscription: String,
    consumer_id: u64,
    generation: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut inner = self.topic.inner.lock();
        if let Some(sub) = inner.subs.get_mut(&self.subscription) {
            if sub.detach_stream(self.consumer_id, Some(self.generation)) {
                tracing::debug!(consumer_id = self.consumer_id, topic = %self.topic.name, "stream closed, unacked messages requeued");
                sub.notify.notify_one();
            }
        }
    }
}

/// The `ReceiveMessages` response stream of one consumer.
#[derive(Debug)]
pub(crate) struct ConsumerStream {
    rx: UnboundedReceiver<StreamMessage>,
    queued: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    _guard: StreamGuard,
}

impl Stream for ConsumerStream {
    type Item = Result<StreamMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(msg)) => {
                let before = self.queued.fetch_sub(1, Ordering::AcqRel);
                if before == NON_RELIABLE_QUEUE_LIMIT {
                    self.notify.notify_one();
                }
                Poll::Ready(Some(Ok(msg)))
            }
            other => other.map(|m| m.map(Ok)),
        }
    }
}
