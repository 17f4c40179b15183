//! Broker state shared by the gRPC services, the dispatchers and the test API.

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::message::StoredMessage;
use crate::persist::{Loaded, MetaRecord, Persist};
use crate::schema::{SchemaError, SchemaRegistry};
use crate::subscription::{ConsumerSlot, StepCtx, StreamTx, SubType, Subscription, NON_RELIABLE_QUEUE_LIMIT};
use crate::topic::{NewMessage, Topic};
use danube_core::proto::StreamMessage;
use futures::Stream;
use parking_lot::{Mutex, RwLock};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// A consumer that never opened a stream keeps an exclusive subscription
/// for this long after subscribing or its last health check.
const CONSUMER_GRACE: Duration = Duration::from_secs(12);

/// Errors of broker operations, mapped to gRPC status codes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("The topic: {0} has an invalid format, should be: /namespace_name/topic_name")]
    InvalidTopic(String),
    #[error(
        "Cannot create topic '{topic}': partitioned topics with this base name already exist (found {found} partitions). Delete the partitioned topics first."
    )]
    PrefixTaken { topic: String, found: usize },
    #[error(
        "Cannot create partitioned topic '{topic}': a non-partitioned topic '{base}' already exists. Delete the non-partitioned topic first."
    )]
    BaseTaken { topic: String, base: String },
    #[error("Producer requested dispatch strategy does not match topic strategy")]
    DispatchMismatch,
    #[error("Unable to find the namespace {0}")]
    NamespaceNotFound(String),
    #[error("topic {0} not found")]
    TopicNotFound(String),
    #[error("The producer with id {0} does not exist")]
    ProducerNotFound(u64),
    #[error("The consumer with the id {0} does not exist")]
    ConsumerNotFound(u64),
    #[error("subscription {sub} not found on topic {topic}")]
    SubscriptionNotFound { topic: String, sub: String },
    #[error("schema subject '{0}' is not registered")]
    SchemaSubjectMissing(String),
    #[error(
        "Not able to subscribe to the topic {topic}: subscription {sub} is exclusive and held by consumer '{holder}'"
    )]
    ExclusiveBusy { topic: String, sub: String, holder: String },
    #[error("message of {size} bytes exceeds the maximum message size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("invalid subscription type {0}")]
    InvalidSubType(i32),
    #[error("invalid dispatch strategy {0}")]
    InvalidDispatch(i32),
    #[error("broker unavailable (injected failure)")]
    InjectedFailure,
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

impl From<StateError> for Status {
    fn from(e: StateError) -> Status {
        let msg = e.to_string();
        match e {
            StateError::InvalidTopic(_)
            | StateError::TooLarge { .. }
            | StateError::InvalidSubType(_)
            | StateError::InvalidDispatch(_) => Status::invalid_argument(msg),
            StateError::NamespaceNotFound(_) | StateError::InjectedFailure => Status::unavailable(msg),
            StateError::TopicNotFound(_)
            | StateError::ProducerNotFound(_)
            | StateError::ConsumerNotFound(_)
            | StateError::SubscriptionNotFound { .. } => Status::not_found(msg),
            StateError::SchemaSubjectMissing(_) | StateError::DispatchMismatch => Status::failed_precondition(msg),
            StateError::PrefixTaken { .. } | StateError::BaseTaken { .. } => Status::already_exists(msg),
            StateError::ExclusiveBusy { .. } => Status::permission_denied(msg),
            StateError::Schema(s) => match s {
                SchemaError::Incompatible { .. } => Status::failed_precondition(msg),
                SchemaError::SubjectNotFound(_) | SchemaError::IdNotFound(_) | SchemaError::VersionNotFound { .. } => {
                    Status::not_found(msg)
                }
                SchemaError::UnknownType(_) | SchemaError::InvalidDefinition { .. } | SchemaError::InvalidMode(_) => {
                    Status::invalid_argument(msg)
                }
            },
        }
    }
}

/// A registered producer.
#[derive(Debug)]
pub(crate) struct ProducerInfo {
    pub name: String,
    pub topic: Arc<Topic>,
}

/// A registered consumer.
#[derive(Debug)]
pub(crate) struct ConsumerInfo {
    pub topic: Arc<Topic>,
    pub subscription: String,
}

/// Parses `/namespace/topic`, returning the namespace. Like Danube's `validate_topic_format`,
/// each part holds letters, digits, `_` and `-` only (a `.` is refused).
pub(crate) fn namespace_of(topic: &str) -> Result<&str, StateError> {
    let invalid = || StateError::InvalidTopic(topic.to_string());
    let rest = topic.strip_prefix('/').ok_or_else(invalid)?;
    let (ns, name) = rest.split_once('/').ok_or_else(invalid)?;
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_'));
    if ok(ns) && ok(name) {
        Ok(ns)
    } else {
        Err(invalid())
    }
}

/// Splits `base-part-N` into `(base, N)`.
fn partition_of(topic: &str) -> Option<(&str, usize)> {
    let (base, idx) = topic.rsplit_once("-part-")?;
    let n = idx.parse().ok()?;
    (!base.is_empty()).then_some((base, n))
}

/// Shared broker state.
#[derive(Debug)]
pub(crate) struct BrokerState {
    pub config: BrokerConfig,
    /// `http://ip:port` of this broker.
    pub broker_url: String,
    namespaces: RwLock<HashSet<String>>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    partitioned: RwLock<HashMap<String, BTreeSet<usize>>>,
    producers: RwLock<HashMap<u64, Arc<ProducerInfo>>>,
    consumers: RwLock<HashMap<u64, Arc<ConsumerInfo>>>,
    pub schemas: Mutex<SchemaRegistry>,
    next_id: AtomicU64,
    next_stream: AtomicU64,
    helper_rr: AtomicUsize,
    fail_sends: AtomicUsize,
    /// Test knob: how long `CreateProducer` waits before answering, in milliseconds.
    producer_delay_ms: AtomicU64,
    persist: Option<Persist>,
    /// Cancelled when the broker is dropped: stops the dispatchers.
    pub shutdown: CancellationToken,
}

impl BrokerState {
    /// Builds the state, reloading `data_dir` if configured.
    pub fn open(config: BrokerConfig, broker_url: String) -> Result<Arc<Self>, BrokerError> {
        let (persist, loaded) = match &config.data_dir {
            Some(dir) => {
                let (p, l) = Persist::open(dir)?;
                (Some(p), l)
            }
            None => (None, Loaded::default()),
        };
        let namespaces = config.namespaces.iter().cloned().collect();
        let state = Arc::new(BrokerState {
            config,
            broker_url,
            namespaces: RwLock::new(namespaces),
            topics: RwLock::new(HashMap::new()),
            partitioned: RwLock::new(HashMap::new()),
            producers: RwLock::new(HashMap::new()),
            consumers: RwLock::new(HashMap::new()),
            schemas: Mutex::new(SchemaRegistry::default()),
            next_id: AtomicU64::new(1),
            next_stream: AtomicU64::new(1),
            helper_rr: AtomicUsize::new(0),
            fail_sends: AtomicUsize::new(0),
            producer_delay_ms: AtomicU64::new(0),
            persist,
            shutdown: CancellationToken::new(),
        });
        state.restore(loaded);
        Ok(state)
    }

    fn persist_meta(&self, record: MetaRecord) {
        if let Some(p) = &self.persist {
            p.meta(record);
        }
    }

    /// Blocks until queued records are on disk (no-op without a data dir).
    pub fn flush(&self) {
        if let Some(p) = &self.persist {
            p.flush();
        }
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    // ----- namespaces and topics -------------------------------------------

    /// Creates a namespace (no-op if it exists).
    pub fn create_namespace(&self, ns: &str) {
        if self.namespaces.write().insert(ns.to_string()) {
            self.persist_meta(MetaRecord::Namespace { name: ns.to_string() });
        }
    }

    /// An existing topic.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    /// Returns the topic, creating it (in an existing namespace) if needed.
    pub fn get_or_create_topic(&self, name: &str, reliable: bool) -> Result<Arc<Topic>, StateError> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        let ns = namespace_of(name)?;
        if !self.namespaces.read().contains(ns) {
            return Err(StateError::NamespaceNotFound(ns.to_string()));
        }
        self.insert_new_topic(name, reliable)
    }

    /// Danube keeps topics in a key-ordered store and finds "partitions" of `X` by a prefix
    /// scan, so it refuses to create `X` while any topic whose name starts with `X` exists
    /// (`X-dlq`, `Xy`, ...), and refuses `X-part-N` while a plain topic `X` exists.
    /// Called with the topics' write lock held, so two creations racing cannot both pass
    /// the check (the first one decides which of two clashing names exists).
    fn check_name_collision(topics: &HashMap<String, Arc<Topic>>, name: &str) -> Result<(), StateError> {
        if let Some((base, _)) = name.rsplit_once("-part-") {
            if topics.contains_key(base) {
                return Err(StateError::BaseTaken { topic: name.to_string(), base: base.to_string() });
            }
            return Ok(());
        }
        let found = topics.keys().filter(|existing| existing.starts_with(name) && existing.as_str() != name).count();
        if found > 0 {
            return Err(StateError::PrefixTaken { topic: name.to_string(), found });
        }
        Ok(())
    }

    /// Creates `name` unless it exists, checking under one write lock that no other topic
    /// clashes with its name.
    fn insert_new_topic(&self, name: &str, reliable: bool) -> Result<Arc<Topic>, StateError> {
        let topic = {
            let mut topics = self.topics.write();
            if let Some(t) = topics.get(name) {
                return Ok(Arc::clone(t));
            }
            Self::check_name_collision(&topics, name)?;
            let t = Arc::new(Topic::new(name.to_string(), reliable));
            topics.insert(name.to_string(), Arc::clone(&t));
            t
        };
        self.topic_inserted(name, reliable, true);
        Ok(topic)
    }

    fn insert_topic(&self, name: &str, reliable: bool, persist: bool) -> Arc<Topic> {
        let topic = {
            let mut topics = self.topics.write();
            if let Some(t) = topics.get(name) {
                return Arc::clone(t);
            }
            let t = Arc::new(Topic::new(name.to_string(), reliable));
            topics.insert(name.to_string(), Arc::clone(&t));
            t
        };
        self.topic_inserted(name, reliable, persist);
        topic
    }

    /// What follows a topic's creation: its partition index, its metadata record, the log.
    fn topic_inserted(&self, name: &str, reliable: bool, persist: bool) {
        if let Some((base, idx)) = partition_of(name) {
            self.partitioned.write().entry(base.to_string()).or_default().insert(idx);
        }
        if persist {
            self.persist_meta(MetaRecord::Topic { name: name.to_string(), reliable });
        }
        tracing::info!(topic = %name, reliable, "topic created");
    }

    /// Creates `topic-part-0 .. topic-part-{n-1}` (reliable), creating the
    /// namespace if needed.
    pub fn create_partitioned_topic(&self, topic: &str, partitions: usize) {
        for i in 0..partitions {
            self.helper_topic(&format!("{topic}-part-{i}"));
        }
    }

    /// Topic for test helpers: created reliable, namespace created on demand.
    fn helper_topic(&self, name: &str) -> Arc<Topic> {
        if let Some(t) = self.topic(name) {
            return t;
        }
        if let Ok(ns) = namespace_of(name) {
            self.create_namespace(ns);
        }
        self.insert_topic(name, true, true)
    }

    /// Partition names for `topic` (`[topic]` when not partitioned, empty
    /// when unknown).
    pub fn partitions(&self, topic: &str) -> Vec<String> {
        if let Some(parts) = self.partitioned.read().get(topic) {
            return parts.iter().map(|i| format!("{topic}-part-{i}")).collect();
        }
        if self.topics.read().contains_key(topic) {
            vec![topic.to_string()]
        } else {
            Vec::new()
        }
    }

    /// The topics a test-API name refers to (all partitions of a partitioned topic).
    fn resolve(&self, topic: &str) -> Vec<Arc<Topic>> {
        self.partitions(topic).iter().filter_map(|n| self.topic(n)).collect()
    }

    // ----- producers -------------------------------------------------------

    /// Registers a producer (or returns the id of the same-named producer on
    /// the same topic) and auto-creates the topic.
    pub fn create_producer(
        &self,
        topic: &str,
        name: &str,
        dispatch_strategy: i32,
        schema_subject: Option<&str>,
    ) -> Result<u64, StateError> {
        let reliable = match dispatch_strategy {
            0 => false,
            1 => true,
            other => return Err(StateError::InvalidDispatch(other)),
        };
        if let Some(subject) = schema_subject {
            if !self.schemas.lock().has_subject(subject) {
                return Err(StateError::SchemaSubjectMissing(subject.to_string()));
            }
        }
        let topic = self.get_or_create_topic(topic, reliable)?;
        if topic.reliable != reliable {
            return Err(StateError::DispatchMismatch);
        }
        let mut producers = self.producers.write();
        if let Some((id, _)) = producers.iter().find(|(_, p)| p.name == name && p.topic.name == topic.name) {
            return Ok(*id);
        }
        let id = self.new_id();
        producers.insert(id, Arc::new(ProducerInfo { name: name.to_string(), topic: Arc::clone(&topic) }));
        drop(producers);
        self.persist_meta(MetaRecord::Producer { id, topic: topic.name.clone(), name: name.to_string() });
        tracing::info!(producer_id = id, producer = %name, topic = %topic.name, "producer created");
        Ok(id)
    }

    /// True when the producer id is registered.
    pub fn has_producer(&self, id: u64) -> bool {
        self.producers.read().contains_key(&id)
    }

    /// Handles `SendMessage`.
    pub fn send(&self, msg: StreamMessage) -> Result<u64, StateError> {
        if self.fail_sends.load(Ordering::Relaxed) > 0
            && self.fail_sends.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
        {
            return Err(StateError::InjectedFailure);
        }
        let producer_id = msg.msg_id.as_ref().map_or(0, |m| m.producer_id);
        let producer =
            self.producers.read().get(&producer_id).cloned().ok_or(StateError::ProducerNotFound(producer_id))?;
        let max = self.config.max_message_size;
        if msg.payload.len() > max {
            return Err(StateError::TooLarge { size: msg.payload.len(), max });
        }
        producer.topic.append(
            NewMessage {
                producer_id,
                payload: msg.payload,
                attributes: msg.attributes,
                routing_key: msg.routing_key,
                publish_time: msg.publish_time,
                producer_name: msg.producer_name,
                schema_id: msg.schema_id,
                schema_version: msg.schema_version,
            },
            self.persist.as_ref(),
        );
        Ok(msg.request_id)
    }

    /// Makes the next `n` sends fail with `Unavailable`.
    pub fn fail_next_sends(&self, n: usize) {
        self.fail_sends.store(n, Ordering::Release);
    }

    /// Test helper: makes every later `CreateProducer` wait `delay` before answering.
    pub fn delay_producer_creation(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.producer_delay_ms.store(ms, Ordering::Release);
    }

    /// How long `CreateProducer` waits before answering (zero unless a test set it).
    pub fn producer_creation_delay(&self) -> Duration {
        Duration::from_millis(self.producer_delay_ms.load(Ordering::Acquire))
    }

    /// Test helper: appends a message (creating topic and namespace if needed).
    pub fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        attributes: HashMap<String, String>,
        routing_key: Option<String>,
    ) -> u64 {
        let target = match self.partitioned.read().get(topic) {
            Some(parts) if !parts.is_empty() => {
                let idx: Vec<usize> = parts.iter().copied().collect();
                let pick = match &routing_key {
                    Some(k) => {
                        let mut h = DefaultHasher::new();
                        k.hash(&mut h);
                        (h.finish() % idx.len() as u64) as usize
                    }
                    None => self.helper_rr.fetch_add(1, Ordering::Relaxed) % idx.len(),
                };
                format!("{topic}-part-{}", idx[pick])
            }
            _ => topic.to_string(),
        };
        let t = self.helper_topic(&target);
        let publish_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        t.append(
            NewMessage {
                producer_id: 0,
                payload: payload.into(),
                attributes,
                routing_key,
                publish_time,
                producer_name: "danube-dev-broker".to_string(),
                schema_id: None,
                schema_version: None,
            },
            self.persist.as_ref(),
        )
    }

    // ----- consumers -------------------------------------------------------

    /// Registers a consumer on a subscription (creating the subscription at
    /// the end of the topic), or returns the id of the same-named consumer.
    pub fn subscribe(
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
    pub fn touch_consumer(&self, id: u64) -> bool {
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
    pub fn open_stream(&self, consumer_id: u64) -> Result<ConsumerStream, StateError> {
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
    pub fn ack(&self, topic: &str, sub: &str, offset: u64) -> Result<(), StateError> {
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
    pub fn nack(&self, topic: &str, sub: &str, offset: u64, delay: Option<Duration>) -> Result<(), StateError> {
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
    pub fn drop_streams(&self) {
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

    fn spawn_dispatcher(self: &Arc<Self>, topic: Arc<Topic>, sub: String, notify: Arc<Notify>) {
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

    /// Stored messages of a topic (all partitions, in partition order).
    pub fn messages(&self, topic: &str) -> Vec<StoredMessage> {
        self.resolve(topic).iter().flat_map(|t| t.messages()).collect()
    }

    /// Number of stored messages of a topic (all partitions).
    pub fn message_count(&self, topic: &str) -> usize {
        self.resolve(topic).iter().map(|t| t.len()).sum()
    }

    fn sum_subs(&self, topic: &str, sub: &str, f: impl Fn(&Subscription) -> u64) -> u64 {
        self.resolve(topic).iter().map(|t| t.inner.lock().subs.get(sub).map_or(0, &f)).sum()
    }

    /// Consumers with an open stream on a subscription (all partitions).
    pub fn connected_consumers(&self, topic: &str, sub: &str) -> usize {
        self.sum_subs(topic, sub, |s| s.consumers.iter().filter(|c| c.stream.is_some()).count() as u64) as usize
    }

    /// Acks received on a subscription (all partitions).
    pub fn ack_count(&self, topic: &str, sub: &str) -> u64 {
        self.sum_subs(topic, sub, |s| s.ack_count)
    }

    /// Unacknowledged messages of a subscription (all partitions).
    pub fn unacked_count(&self, topic: &str, sub: &str) -> usize {
        self.sum_subs(topic, sub, |s| s.unacked() as u64) as usize
    }

    /// Sets the dispatch window of a subscription (all partitions).
    pub fn set_max_unacked(&self, topic: &str, sub: &str, n: usize) {
        for t in self.resolve(topic) {
            let mut inner = t.inner.lock();
            inner.window_overrides.insert(sub.to_string(), n);
            if let Some(s) = inner.subs.get(sub) {
                s.notify.notify_one();
            }
            self.persist_meta(MetaRecord::MaxUnacked { topic: t.name.clone(), sub: sub.to_string(), n });
        }
    }

    /// Persists a schema registry change.
    pub fn persist_schema(&self, record: MetaRecord) {
        self.persist_meta(record);
    }

    // ----- load ------------------------------------------------------------

    fn restore(&self, loaded: Loaded) {
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
    pub fn start_dispatchers(self: &Arc<Self>) {
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
