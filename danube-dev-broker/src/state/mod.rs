//! Broker state shared by the gRPC services, the dispatchers and the test API.

mod consumers;
mod error;
mod inspect;
mod restore;

pub(crate) use consumers::ConsumerStream;
pub(crate) use error::StateError;

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
    pub(crate) fn open(config: BrokerConfig, broker_url: String) -> Result<Arc<Self>, BrokerError> {
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
    pub(crate) fn flush(&self) {
        if let Some(p) = &self.persist {
            p.flush();
        }
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    // ----- namespaces and topics -------------------------------------------

    /// Creates a namespace (no-op if it exists).
    pub(crate) fn create_namespace(&self, ns: &str) {
        if self.namespaces.write().insert(ns.to_string()) {
            self.persist_meta(MetaRecord::Namespace { name: ns.to_string() });
        }
    }

    /// An existing topic.
    pub(crate) fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    /// Returns the topic, creating it (in an existing namespace) if needed.
    pub(crate) fn get_or_create_topic(&self, name: &str, reliable: bool) -> Result<Arc<Topic>, StateError> {
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
    pub(crate) fn create_partitioned_topic(&self, topic: &str, partitions: usize) {
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
    pub(crate) fn partitions(&self, topic: &str) -> Vec<String> {
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
    pub(crate) fn create_producer(
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
    pub(crate) fn has_producer(&self, id: u64) -> bool {
        self.producers.read().contains_key(&id)
    }

    /// Handles `SendMessage`.
    pub(crate) fn send(&self, msg: StreamMessage) -> Result<u64, StateError> {
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
    pub(crate) fn fail_next_sends(&self, n: usize) {
        self.fail_sends.store(n, Ordering::Release);
    }

    /// Test helper: makes every later `CreateProducer` wait `delay` before answering.
    pub(crate) fn delay_producer_creation(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.producer_delay_ms.store(ms, Ordering::Release);
    }

    /// How long `CreateProducer` waits before answering (zero unless a test set it).
    pub(crate) fn producer_creation_delay(&self) -> Duration {
        Duration::from_millis(self.producer_delay_ms.load(Ordering::Acquire))
    }

    /// Test helper: appends a message (creating topic and namespace if needed).
    pub(crate) fn publish(
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

    /// Persists a schema registry change.
    pub(crate) fn persist_schema(&self, record: MetaRecord) {
        self.persist_meta(record);
    }

    // ----- load ------------------------------------------------------------
}
