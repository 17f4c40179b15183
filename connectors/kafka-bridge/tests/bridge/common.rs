//! Shared harness: a real tansu, the embedded Danube broker, the bridge binary, and small
//! Kafka helpers (create topic, produce, read everything back).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use danube_connect_testkit::kafka::Tansu;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// Both systems, started for one test.
pub(crate) struct Systems {
    pub tansu: Tansu,
    pub danube: EmbeddedBroker,
}

pub(crate) async fn start() -> Systems {
    let tansu = Tansu::start().await.expect("tansu must be installed and start (see scripts/test.sh)");
    let danube = EmbeddedBroker::start_default().await.expect("embedded danube broker");
    Systems { tansu, danube }
}

/// A record read back from Kafka.
#[derive(Debug, Clone)]
pub(crate) struct KafkaRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

impl KafkaRecord {
    pub(crate) fn payload_str(&self) -> String {
        String::from_utf8_lossy(self.payload.as_deref().unwrap_or_default()).into_owned()
    }
}

pub(crate) async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create topics request");
    for result in results {
        if let Err((name, code)) = result {
            panic!("create topic {name}: {code:?}");
        }
    }
}

pub(crate) fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .create()
        .expect("test producer")
}

/// Produces one record and waits for its delivery report.
pub(crate) async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    payload: &str,
    headers: &[(&str, &str)],
) -> (i32, i64) {
    let mut owned = OwnedHeaders::new();
    for (k, v) in headers {
        owned = owned.insert(Header { key: k, value: Some(v.as_bytes()) });
    }
    let mut record = FutureRecord::<str, str>::to(topic).payload(payload).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    let delivery = producer.send(record, Duration::from_secs(10)).await.expect("test produce");
    (delivery.partition, delivery.offset)
}

/// Reads every record of `topic` (all partitions, from the start) until `expected` were
/// read or `timeout` passed; with `idle`, also stops once a record was read and none came
/// for that long. Blocking: call from spawn_blocking.
pub(crate) fn read_all_blocking(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
    idle: Option<Duration>,
) -> Vec<KafkaRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", rand_suffix()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&list).expect("assign");
    let mut out = Vec::new();
    let started = Instant::now();
    let mut last = Instant::now();
    while out.len() < expected && started.elapsed() < timeout {
        if idle.is_some_and(|idle| !out.is_empty() && last.elapsed() > idle) {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(KafkaRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(e)) => eprintln!("reader error: {e}"),
            None => {}
        }
    }
    out
}

/// Reads every record of `topic` until `expected` were read or `timeout` passed.
pub(crate) async fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<KafkaRecord> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_all_blocking(&bootstrap, &topic, partitions, expected, timeout, None))
        .await
        .expect("reader task")
}

/// Reads every record of `topic` (from the start) until none came for 3 s after the
/// first one (at most 60 s). Deliberately does not use high watermarks: tansu 0.6
/// sometimes answers `ListOffsets(latest)` with the last offset instead of the next one,
/// which would hide the newest record of a partition.
pub(crate) async fn read_everything(bootstrap: &str, topic: &str, partitions: i32) -> Vec<KafkaRecord> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        read_all_blocking(
            &bootstrap,
            &topic,
            partitions,
            usize::MAX,
            Duration::from_secs(60),
            Some(Duration::from_secs(3)),
        )
    })
    .await
    .expect("reader task")
}

/// The committed offsets of `group` for `topic` partitions `0..partitions`.
pub(crate) async fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let (bootstrap, group, topic) = (bootstrap.to_string(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset reader");
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&topic, p);
        }
        let got = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
        (0..partitions)
            .map(|p| match got.find_partition(&topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            })
            .collect()
    })
    .await
    .expect("offset task")
}

pub(crate) fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{}-{}", std::process::id(), nanos, N.fetch_add(1, Ordering::Relaxed))
}

/// Env for a bridge process; `extra` entries override.
pub(crate) fn bridge_env(systems: &Systems, name: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("DANUBE_SERVICE_URL".to_string(), systems.danube.url());
    env.insert("CONNECTOR_NAME".to_string(), name.to_string());
    env.insert("KAFKA_BRIDGE_KAFKA__BOOTSTRAP_SERVERS".to_string(), systems.tansu.bootstrap());
    // Quick group membership changes in tests.
    env.insert("KAFKA_BRIDGE_IMPORT__PROPERTIES__SESSION_TIMEOUT_MS".to_string(), "6000".to_string());
    env.insert("KAFKA_BRIDGE_IMPORT__PROPERTIES__HEARTBEAT_INTERVAL_MS".to_string(), "500".to_string());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

pub(crate) async fn spawn_bridge(env: &HashMap<String, String>) -> ConnectorProcess {
    let mut process =
        ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-kafka-bridge")), env).expect("spawn bridge");
    if let Err(e) = process.wait_ready(Duration::from_secs(30)).await {
        panic!("bridge not ready: {e}");
    }
    process
}

/// Waits until `process` logged `needle` `times` times.
pub(crate) async fn wait_for_log(process: &ConnectorProcess, needle: &str, times: usize, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if process.log().matches(needle).count() >= times {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// How long a test waits for records to show up.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// (partition, offset) of an imported message, from its attributes.
pub(crate) fn kafka_position(m: &danube_dev_broker::StoredMessage) -> (i32, i64) {
    (
        m.attributes.get("kafka.partition").and_then(|p| p.parse().ok()).unwrap_or(-1),
        m.attributes.get("kafka.offset").and_then(|o| o.parse().ok()).unwrap_or(-1),
    )
}

/// Checks that every Kafka offset below the group's committed offset of each partition is
/// in Danube (`imported`: positions read from the imported messages). Returns the first
/// missing `(partition, offset)`, if any.
pub(crate) fn first_committed_but_missing(committed: &[i64], imported: &HashSet<(i32, i64)>) -> Option<(i32, i64)> {
    for (p, &next) in committed.iter().enumerate() {
        for offset in 0..next.max(0) {
            if !imported.contains(&(p as i32, offset)) {
                return Some((p as i32, offset));
            }
        }
    }
    None
}

/// Produces `total` keyed records (`payload = i`, 32 keys) to `topic` in paced chunks, so
/// the bridge is under load while the test kills or stops it.
pub(crate) fn produce_in_background(bootstrap: &str, topic: &'static str, total: usize) -> tokio::task::JoinHandle<()> {
    let bootstrap = bootstrap.to_string();
    tokio::spawn(async move {
        let producer = producer(&bootstrap);
        for chunk in 0..total.div_ceil(50) {
            let sends = (chunk * 50..((chunk + 1) * 50).min(total)).map(|i| {
                let key = format!("key-{}", i % 32);
                let producer = producer.clone();
                async move { produce(&producer, topic, Some(&key), &format!("{i}"), &[]).await }
            });
            futures::future::join_all(sends).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}
