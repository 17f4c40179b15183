//! Conformance suite: each behaviour of the Kafka bridge, in each direction, runs against a real
//! Kafka-API broker (tansu) and the development Danube broker and, when `DANUBE_BROKER_BIN`
//! names it, the real Danube broker (`BrokerKind::all`). Danube is read back through a raw
//! `danube-client` consumer (`TopicReader`), Kafka through librdkafka; records are counted
//! distinct by the number each payload carries.
//!
//! Behaviours, import (Kafka → Danube) and export (Danube → Kafka): end-to-end delivery, kill -9
//! of the bridge under load, a Danube broker outage mid-stream, the dead-letter path, and
//! schemas with the broker's registry (import: a core `[[schemas]]` binding; export: a record
//! published with an Avro schema keeps its payload and carries its schema id to Kafka).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_connect_common::schema::{Schema, SchemaKind};
use danube_connect_core::{Runtime, RuntimeConfig, SourceRecord};
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::{reliable_producers, TopicReader};
use danube_connect_testkit::kafka::Tansu;
use danube_connect_testkit::process::ConnectorProcess;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_danube-kafka-bridge");

/// The bridge's name; its dead-letter topic `/default/dlq-kbconf` prefixes no data topic.
const NAME: &str = "kbconf";
const DLQ: &str = "/default/dlq-kbconf";

/// How long a test waits for records.
const WAIT: Duration = Duration::from_secs(60);

/// tansu and a Danube broker of one kind.
struct Systems {
    tansu: Tansu,
    broker: TestBroker,
}

impl Systems {
    async fn start(kind: BrokerKind) -> Self {
        let tansu = Tansu::start().await.expect("tansu must be installed and start (see scripts/test.sh)");
        let broker = TestBroker::start_persistent(kind).await.expect("danube broker");
        Self { tansu, broker }
    }

    fn kind(&self) -> BrokerKind {
        self.broker.kind()
    }

    fn bootstrap(&self) -> String {
        self.tansu.bootstrap()
    }

    /// Creates a Danube topic (reliable) so that a reader or the bridge's sink can subscribe
    /// to it: subscribing to a topic that does not exist fails.
    /// A busy machine can make the broker's first answer fail; a few tries over 10 s.
    async fn create_danube_topic(&self, topic: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match reliable_producers(self.broker.url(), topic, "mk", 1).await {
                Ok(maker) => return drop(maker),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{}: creating {topic} failed, retrying: {e}", self.broker.kind());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("{}: create {topic}: {e}\n{}", self.broker.kind(), self.broker.log()),
            }
        }
    }

    /// Creates `topic` and subscribes a reader: Danube subscriptions start at the end.
    async fn reader(&self, topic: &str) -> TopicReader {
        self.create_danube_topic(topic).await;
        TopicReader::subscribe(self.broker.url(), topic, "conf").await.expect("reader")
    }

    /// Starts the bridge with `extra` environment (and the config file `file`, if any) and
    /// waits until it is ready.
    async fn bridge(&self, extra: &[(&str, &str)], file: Option<&Path>) -> ConnectorProcess {
        let mut env = HashMap::from([
            ("DANUBE_SERVICE_URL".to_string(), self.broker.url()),
            ("CONNECTOR_NAME".to_string(), NAME.to_string()),
            ("KAFKA_BRIDGE_KAFKA__BOOTSTRAP_SERVERS".to_string(), self.bootstrap()),
            ("KAFKA_BRIDGE_IMPORT__PROPERTIES__SESSION_TIMEOUT_MS".to_string(), "6000".to_string()),
            ("KAFKA_BRIDGE_IMPORT__PROPERTIES__HEARTBEAT_INTERVAL_MS".to_string(), "500".to_string()),
        ]);
        if let Some(file) = file {
            env.insert("CONNECTOR_CONFIG_FILE".to_string(), file.display().to_string());
        }
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let mut process = ConnectorProcess::spawn(Path::new(BIN), &env).expect("spawn bridge");
        let kind = self.kind();
        process.wait_ready(Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{kind}: bridge not ready: {e}"));
        process
    }
}

fn kafka_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()
        .expect("kafka producer")
}

/// The brokers for a kill -9 or outage test of the bridge. A kill or a freeze leaves a backlog
/// behind, and on Danube v0.15.1 a subscription whose backlog outgrows its window + 256 skips
/// messages for good (`poll_next error ... broadcast error: channel lagged by N`; every message
/// is in the broker, the subscription never delivers it: docs/running-on-danube.md). Measured
/// 2026-12-06 with paced load: 5 to 320 messages of 600 to 1,500 skipped in each of these four
/// tests. Until the broker is fixed they run on the development broker only, with one loud line.
fn without_the_stalling_real_broker(test: &str) -> Vec<BrokerKind> {
    let kinds = BrokerKind::all();
    if kinds.contains(&BrokerKind::Real) {
        eprintln!(
            "REAL BROKER NOT RUN for kafka-bridge {test}: Danube v0.15.1 skips backlog after a kill or outage (subscription stall)"
        );
    }
    kinds.into_iter().filter(|kind| *kind == BrokerKind::Dev).collect()
}

/// The pause between chunks of records: on Danube v0.15.1 a subscription skips what falls
/// more than its window + 256 messages behind (the stall in docs/running-on-danube.md), so on
/// the real broker the load is paced below what one consumer acks (about 400 a second).
fn chunk_gap(kind: BrokerKind) -> Duration {
    match kind {
        BrokerKind::Dev => Duration::from_millis(20),
        BrokerKind::Real => Duration::from_millis(100),
    }
}

/// Produces records `from..to` (`payload = {"n":i}`, 16 keys) to Kafka `topic`, in paced
/// chunks of 25 ([`chunk_gap`]), waiting for each delivery report.
async fn produce_range(kind: BrokerKind, bootstrap: &str, topic: &str, from: usize, to: usize) {
    let producer = kafka_producer(bootstrap);
    for chunk in (from..to).collect::<Vec<_>>().chunks(25) {
        let sends = chunk.iter().map(|i| {
            let (producer, key, payload) = (producer.clone(), format!("key-{}", i % 16), json!({ "n": i }).to_string());
            async move {
                let record = FutureRecord::<str, str>::to(topic).key(&key).payload(&payload);
                producer.send(record, Duration::from_secs(10)).await.expect("kafka produce");
            }
        });
        futures::future::join_all(sends).await;
        tokio::time::sleep(chunk_gap(kind)).await;
    }
}

/// The `n` of a `{"n":i}` payload.
fn number_of(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(payload).ok()?.get("n")?.as_u64()
}

/// Distinct numbers a Danube reader received, and how many messages.
fn numbers_in(reader: &TopicReader) -> (BTreeSet<u64>, usize) {
    let messages = reader.messages();
    (messages.iter().filter_map(|m| number_of(&m.payload)).collect(), messages.len())
}

async fn wait_numbers(reader: &TopicReader, total: usize, timeout: Duration) -> (BTreeSet<u64>, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, count) = numbers_in(reader);
        if got.len() >= total || Instant::now() >= deadline {
            return (got, count);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A record read back from Kafka.
struct KafkaRecord {
    payload: Vec<u8>,
    headers: HashMap<String, String>,
}

/// Reads `topic` from the start until `expected` records were read, none came for 3 s after
/// the first, or `timeout` passed.
async fn read_kafka(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<KafkaRecord> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", format!("conf-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("kafka reader");
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(&topic, p, Offset::Beginning).expect("partition list");
        }
        consumer.assign(&list).expect("assign");
        let (started, mut last) = (Instant::now(), Instant::now());
        let mut out = Vec::new();
        while out.len() < expected && started.elapsed() < timeout {
            if !out.is_empty() && last.elapsed() > Duration::from_secs(3) {
                break;
            }
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(KafkaRecord { payload: m.payload().unwrap_or_default().to_vec(), headers });
            }
        }
        out
    })
    .await
    .expect("kafka reader task")
}

/// Waits until Kafka `topic` holds `total` distinct numbers; returns them and the record count.
async fn wait_kafka_numbers(bootstrap: &str, topic: &str, partitions: i32, total: usize) -> (BTreeSet<u64>, usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records = read_kafka(bootstrap, topic, partitions, usize::MAX, Duration::from_secs(30)).await;
        let got: BTreeSet<u64> = records.iter().filter_map(|r| number_of(&r.payload)).collect();
        if got.len() >= total || Instant::now() >= deadline {
            return (got, records.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Publishes `{"n":i}` for `from..to` to Danube `topic` through 2 raw producers, paced in
/// chunks of 20 ([`chunk_gap`]).
async fn publish_range(kind: BrokerKind, url: String, topic: &str, from: usize, to: usize) {
    publish_range_counted(kind, url, topic, from, to, &AtomicUsize::new(0)).await;
}

/// [`publish_range`] that counts each acked publish in `published`, for a test that acts at
/// a point of the load rather than at a time.
async fn publish_range_counted(
    kind: BrokerKind,
    url: String,
    topic: &str,
    from: usize,
    to: usize,
    published: &AtomicUsize,
) {
    let producers = reliable_producers(url, topic, "load", 2).await.expect("producers");
    for i in from..to {
        producers[i % 2].send(json!({ "n": i }).to_string().into_bytes(), None).await.expect("publish");
        published.fetch_add(1, Ordering::Relaxed);
        if i % 20 == 19 {
            tokio::time::sleep(chunk_gap(kind)).await;
        }
    }
}

/// What the real broker says about `topic`: messages in, subscription lag, first warnings.
async fn broker_view(broker: &TestBroker, topic: &str) -> String {
    let TestBroker::Real(real) = broker else { return "dev broker".into() };
    let taken = real.metric_sum("danube_topic_messages_in_total", &[("topic", topic)]).await.unwrap_or(-1.0);
    let lag = real.metric_sum("danube_subscription_lag_messages", &[("topic", topic)]).await.unwrap_or(-1.0);
    let log = real.log();
    let notable: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(5).collect();
    format!("broker: {taken} messages in, subscription lag {lag}; log: {}", notable.join("\n"))
}

fn missing_of(got: &BTreeSet<u64>, total: usize) -> Vec<u64> {
    (0..total as u64).filter(|n| !got.contains(n)).take(5).collect()
}

// ---------------------------------------------------------------- import: Kafka -> Danube

const IMPORT_MAPPING: &str = r#"[{topics=["kin"], danube_topic="/default/kin"}]"#;

fn import_env() -> Vec<(&'static str, &'static str)> {
    vec![("KAFKA_BRIDGE_IMPORT__GROUP_ID", "kbconf-import"), ("KAFKA_BRIDGE_IMPORT__MAPPINGS", IMPORT_MAPPING)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_delivers_every_kafka_record_once() {
    for kind in BrokerKind::all() {
        let systems = Systems::start(kind).await;
        systems.tansu.create_topic("kin", 3).expect("kafka topic");
        let reader = systems.reader("/default/kin").await;
        let bridge = systems.bridge(&import_env(), None).await;
        produce_range(kind, &systems.bootstrap(), "kin", 0, 500).await;
        let (got, count) = wait_numbers(&reader, 500, WAIT).await;
        assert_eq!(
            got.len(),
            500,
            "{kind}: distinct records imported, missing e.g. {:?}; {}\n{}",
            missing_of(&got, 500),
            broker_view(&systems.broker, "/default/kin").await,
            bridge.log()
        );
        assert_eq!(count, 500, "{kind}: no duplicates without failures");
        let sample = &reader.messages()[0];
        assert_eq!(sample.attributes.get("kafka.topic").map(String::as_str), Some("kin"), "{kind}");
        assert!(sample.routing_key.as_deref().is_some_and(|k| k.starts_with("key-")), "{kind}: the key routes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_kill_9_under_load_loses_no_kafka_record() {
    for kind in without_the_stalling_real_broker("import_kill_9_under_load_loses_no_kafka_record") {
        let systems = Systems::start(kind).await;
        systems.tansu.create_topic("kin", 3).expect("kafka topic");
        let reader = systems.reader("/default/kin").await;
        let mut bridge = systems.bridge(&import_env(), None).await;
        let bootstrap = systems.bootstrap();
        let producing = tokio::spawn(async move { produce_range(kind, &bootstrap, "kin", 0, 1500).await });
        let deadline = Instant::now() + WAIT;
        while reader.count() < 300 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bridge.kill9();
        let at_kill = reader.count();
        assert!(at_kill >= 300, "{kind}: no load before the kill: {}", bridge.log());
        let restarted = systems.bridge(&import_env(), None).await;
        producing.await.expect("producer");
        let (got, count) = wait_numbers(&reader, 1500, Duration::from_secs(90)).await;
        assert_eq!(
            got.len(),
            1500,
            "{kind}: records lost after kill -9, e.g. {:?}; {}\n{}",
            missing_of(&got, 1500),
            broker_view(&systems.broker, "/default/kin").await,
            restarted.log()
        );
        assert!(at_kill < 1500, "{kind}: the kill came under load");
        eprintln!("{kind}: import kill -9: {at_kill} read at the kill, {count} messages, {} duplicates", count - 1500);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_broker_outage_mid_stream_loses_no_kafka_record() {
    for kind in without_the_stalling_real_broker("import_broker_outage_mid_stream_loses_no_kafka_record") {
        let mut systems = Systems::start(kind).await;
        systems.tansu.create_topic("kin", 3).expect("kafka topic");
        let first = systems.reader("/default/kin").await;
        let bridge = systems.bridge(&import_env(), None).await;
        let bootstrap = systems.bootstrap();
        let producing = tokio::spawn(async move { produce_range(kind, &bootstrap, "kin", 0, 1200).await });
        let deadline = Instant::now() + WAIT;
        while first.count() < 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(first.count() >= 200, "{kind}: no load before the outage: {}", bridge.log());
        systems.broker.outage(Duration::from_secs(3)).await.expect("outage");
        producing.await.expect("producer");
        let (mut got, _) = wait_numbers(&first, 1200, Duration::from_secs(60)).await;
        if got.len() < 1200 {
            // A dev-broker restart may end the first reader's stream: the durable subscription
            // hands what it did not ack to a second reader.
            drop(first);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let second = TopicReader::subscribe(systems.broker.url(), "/default/kin", "conf").await.expect("reader");
            let missing = 1200 - got.len();
            let (more, _) = wait_numbers(&second, missing, Duration::from_secs(30)).await;
            got.extend(more);
        }
        assert_eq!(
            got.len(),
            1200,
            "{kind}: records lost in the outage, e.g. {:?}; {}\n{}",
            missing_of(&got, 1200),
            broker_view(&systems.broker, "/default/kin").await,
            bridge.log()
        );
    }
}

const ORDER_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["n"],
  "properties": { "n": { "type": "integer" } }
}"#;

/// A config file binding `/default/kin` to the JSON Schema subject `kin-value`.
fn schema_file(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("kin.schema.json"), ORDER_SCHEMA).expect("write schema");
    let file = dir.join("bridge.toml");
    std::fs::write(
        &file,
        format!(
            "[[schemas]]\ntopic = \"/default/kin\"\nsubject = \"kin-value\"\ntype = \"json_schema\"\nfile = \"{}\"\n",
            dir.join("kin.schema.json").display()
        ),
    )
    .expect("write config");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_record_failing_its_schema_lands_in_the_dead_letter_topic_with_its_error() {
    for kind in BrokerKind::all() {
        let systems = Systems::start(kind).await;
        systems.tansu.create_topic("kin", 1).expect("kafka topic");
        let dead = systems.reader(DLQ).await;
        let reader = systems.reader("/default/kin").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let bridge = systems.bridge(&import_env(), Some(&schema_file(dir.path()))).await;
        let producer = kafka_producer(&systems.bootstrap());
        for payload in [r#"{"n":1}"#, r#"{"n":"two"}"#, r#"{"n":3}"#] {
            let record = FutureRecord::<str, str>::to("kin").key("k").payload(payload);
            producer.send(record, Duration::from_secs(10)).await.expect("kafka produce");
        }
        let letters = dead.wait_for(1, WAIT).await;
        assert_eq!(letters.len(), 1, "{kind}: {}", bridge.log());
        let letter = &letters[0];
        assert_eq!(letter.payload.as_ref(), br#"{"n":"two"}"#, "{kind}");
        assert_eq!(letter.attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"), "{kind}");
        let error = letter.attributes.get("dlq.error").cloned().unwrap_or_default();
        assert!(error.contains("two") || error.contains("/n"), "{kind}: the violation is named: {error}");
        assert_eq!(letter.attributes.get("kafka.topic").map(String::as_str), Some("kin"), "{kind}: attributes kept");
        let (got, _) = wait_numbers(&reader, 2, WAIT).await;
        assert_eq!(got, BTreeSet::from([1, 3]), "{kind}: the valid records are imported, the invalid one is not");
    }
}

/// `failure.policy = stop` and `nack` for an import record that fails its schema: a pull
/// source cannot hand a record back, so both stop the bridge (exit 2) without committing
/// its offset and without a dead letter; the next start (with `dead_letter`) reads the record
/// again and dead-letters it, which shows its offset was not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_record_failing_its_schema_with_policy_stop_or_nack_stops_without_committing_it() {
    for kind in BrokerKind::all() {
        let systems = Systems::start(kind).await;
        systems.tansu.create_topic("kin", 1).expect("kafka topic");
        let dead = systems.reader(DLQ).await;
        let reader = systems.reader("/default/kin").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = schema_file(dir.path());
        let producer = kafka_producer(&systems.bootstrap());
        for (round, policy) in ["stop", "nack"].into_iter().enumerate() {
            let mut env = import_env();
            env.push(("CONNECTOR_FAILURE__POLICY", policy));
            let mut bridge = systems.bridge(&env, Some(&schema)).await;
            let base = 10 * round as u64;
            let bad = format!(r#"{{"n":"bad-{round}"}}"#);
            for payload in [format!(r#"{{"n":{}}}"#, base + 1), bad.clone(), format!(r#"{{"n":{}}}"#, base + 3)] {
                let record = FutureRecord::<str, str>::to("kin").key("k").payload(&payload);
                producer.send(record, Duration::from_secs(10)).await.expect("kafka produce");
            }
            let started = Instant::now();
            let code = loop {
                if let Some(status) = bridge.try_wait() {
                    break status.code();
                }
                assert!(started.elapsed() < WAIT, "{kind} {policy}: the bridge did not stop: {}", bridge.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(code, Some(2), "{kind} {policy}: {}", bridge.log());
            assert_eq!(dead.count(), round, "{kind} {policy}: nothing dead-lettered");

            let mut bridge = systems.bridge(&import_env(), Some(&schema)).await;
            let letters = dead.wait_for(round + 1, WAIT).await;
            assert_eq!(letters.len(), round + 1, "{kind} {policy}: read again after the restart: {}", bridge.log());
            assert_eq!(letters[round].payload.as_ref(), bad.as_bytes(), "{kind} {policy}");
            let (got, _) = wait_numbers(&reader, 2 * (round + 1), WAIT).await;
            assert!(got.contains(&(base + 1)) && got.contains(&(base + 3)), "{kind} {policy}: {got:?}");
            // SIGTERM commits what was published, so the next round starts after it.
            let stopped = bridge.terminate(Duration::from_secs(30)).await;
            assert!(stopped.is_some_and(|s| s.success()), "{kind} {policy}: {}", bridge.log());
        }
    }
}

/// A runtime on `broker`, for its registry client and a publisher.
async fn runtime_on(broker: &TestBroker) -> Runtime {
    let mut config = RuntimeConfig { name: "conf-check".into(), ..RuntimeConfig::default() };
    config.danube.service_url = broker.url();
    config.ops.enabled = false;
    Runtime::start(config, CancellationToken::new()).await.expect("runtime on the broker")
}

/// The definition held in a registry answer. Danube v0.15.1 answers with its stored form
/// (`{"JsonSchema":{"raw_schema":..}}`, `{"Avro":{"raw_schema":..}}`), the development broker
/// with the registered bytes.
fn raw_definition(bytes: &[u8]) -> Vec<u8> {
    danube_connect_core::schema::registered_definition(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_registers_the_bound_schema_in_the_brokers_registry_and_records_carry_it() {
    for kind in BrokerKind::all() {
        let systems = Systems::start(kind).await;
        systems.tansu.create_topic("kin", 2).expect("kafka topic");
        let reader = systems.reader("/default/kin").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let bridge = systems.bridge(&import_env(), Some(&schema_file(dir.path()))).await;
        produce_range(kind, &systems.bootstrap(), "kin", 0, 50).await;
        let (got, _) = wait_numbers(&reader, 50, WAIT).await;
        assert_eq!(got.len(), 50, "{kind}: {}", bridge.log());

        let runtime = runtime_on(&systems.broker).await;
        let registry = runtime.schema_registry();
        let latest = registry.latest("kin-value").await.expect("subject registered in the broker");
        assert_eq!(latest.schema_type, "json_schema", "{kind}");
        let registered: Value = serde_json::from_slice(&raw_definition(&latest.schema_definition)).expect("JSON");
        assert_eq!(registered, serde_json::from_str::<Value>(ORDER_SCHEMA).expect("schema"), "{kind}");
        let schema =
            Schema::compile(SchemaKind::JsonSchema, raw_definition(&latest.schema_definition)).expect("compiles");
        for message in reader.messages() {
            assert_eq!(message.schema_id, Some(latest.schema_id), "{kind}: each record carries the subject's id");
            assert_eq!(message.schema_version, Some(latest.version), "{kind}");
            let decoded = schema.decode_to_json(&message.payload).expect("decodes with the registered schema");
            assert!(decoded["n"].is_u64(), "{kind}: {decoded}");
        }
    }
}

// ---------------------------------------------------------------- export: Danube -> Kafka

const EXPORT_TOPIC: &str = "/default/kout";

fn export_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/kout"}]"#),
        ("CONNECTOR_SINK__BATCH__MAX_RECORDS", "10"),
        ("CONNECTOR_SINK__CONCURRENCY", "4"),
    ]
}

/// Creates the Danube topic and Kafka topic `kout`, starts the export bridge and gives its
/// subscription a moment.
async fn start_export(systems: &Systems, extra: &[(&str, &str)]) -> ConnectorProcess {
    systems.tansu.create_topic("kout", 3).expect("kafka topic");
    systems.create_danube_topic(EXPORT_TOPIC).await;
    let mut env = export_env();
    env.extend_from_slice(extra);
    let bridge = systems.bridge(&env, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bridge
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_delivers_every_danube_message_once() {
    for kind in BrokerKind::all() {
        let systems = Systems::start(kind).await;
        let bridge = start_export(&systems, &[]).await;
        publish_range(kind, systems.broker.url(), EXPORT_TOPIC, 0, 500).await;
        let (got, count) = wait_kafka_numbers(&systems.bootstrap(), "kout", 3, 500).await;
        assert_eq!(
            got.len(),
            500,
            "{kind}: distinct messages exported, missing e.g. {:?}; {}\n{}",
            missing_of(&got, 500),
            broker_view(&systems.broker, EXPORT_TOPIC).await,
            bridge.log()
        );
        assert_eq!(count, 500, "{kind}: no duplicates without failures");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_kill_9_under_load_loses_no_danube_message() {
    for kind in without_the_stalling_real_broker("export_kill_9_under_load_loses_no_danube_message") {
        let systems = Systems::start(kind).await;
        let mut bridge = start_export(&systems, &[]).await;
        let url = systems.broker.url();
        let published = Arc::new(AtomicUsize::new(0));
        let counter = published.clone();
        let publishing =
            tokio::spawn(async move { publish_range_counted(kind, url, EXPORT_TOPIC, 0, 800, &counter).await });
        // Killed at a point of the load, not at a time: a fast machine publishes 800 in a second.
        let deadline = Instant::now() + WAIT;
        while published.load(Ordering::Relaxed) < 300 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bridge.kill9();
        let at_kill = published.load(Ordering::Relaxed);
        assert!((300..800).contains(&at_kill), "{kind}: the kill came under load ({at_kill} published)");
        let restarted = systems.bridge(&export_env(), None).await;
        publishing.await.expect("publisher");
        let (got, count) = wait_kafka_numbers(&systems.bootstrap(), "kout", 3, 800).await;
        assert_eq!(
            got.len(),
            800,
            "{kind}: messages lost after kill -9, e.g. {:?}; {}\n{}",
            missing_of(&got, 800),
            broker_view(&systems.broker, EXPORT_TOPIC).await,
            restarted.log()
        );
        eprintln!("{kind}: export kill -9: {count} Kafka records, {} duplicates", count - 800);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_broker_outage_mid_stream_loses_no_danube_message() {
    for kind in without_the_stalling_real_broker("export_broker_outage_mid_stream_loses_no_danube_message") {
        let mut systems = Systems::start(kind).await;
        let bridge = start_export(&systems, &[]).await;
        publish_range(kind, systems.broker.url(), EXPORT_TOPIC, 0, 300).await;
        systems.broker.outage(Duration::from_secs(3)).await.expect("outage");
        // After the outage: new producers (the old ones may have lost their broker).
        publish_range(kind, systems.broker.url(), EXPORT_TOPIC, 300, 600).await;
        let (got, count) = wait_kafka_numbers(&systems.bootstrap(), "kout", 3, 600).await;
        assert_eq!(
            got.len(),
            600,
            "{kind}: messages lost around the outage, e.g. {:?}; {}\n{}",
            missing_of(&got, 600),
            broker_view(&systems.broker, EXPORT_TOPIC).await,
            bridge.log()
        );
        eprintln!("{kind}: export outage: {count} Kafka records for 600 messages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_record_kafka_refuses_lands_in_the_dead_letter_topic_with_its_error() {
    for kind in BrokerKind::all() {
        let systems = Systems::start(kind).await;
        let dead = systems.reader(DLQ).await;
        let bridge = start_export(&systems, &[("KAFKA_BRIDGE_EXPORT__PROPERTIES__MESSAGE_MAX_BYTES", "2000")]).await;
        let producers = reliable_producers(systems.broker.url(), EXPORT_TOPIC, "load", 1).await.expect("producer");
        producers[0].send(json!({ "n": 0 }).to_string().into_bytes(), None).await.expect("publish");
        let big = json!({ "n": 1, "pad": "x".repeat(5000) }).to_string().into_bytes();
        producers[0].send(big.clone(), None).await.expect("publish");
        producers[0].send(json!({ "n": 2 }).to_string().into_bytes(), None).await.expect("publish");
        let letters = dead.wait_for(1, WAIT).await;
        assert_eq!(letters.len(), 1, "{kind}: {}\n{}", broker_view(&systems.broker, EXPORT_TOPIC).await, bridge.log());
        let letter = &letters[0];
        assert_eq!(letter.payload.as_ref(), big.as_slice(), "{kind}");
        assert_eq!(letter.attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"), "{kind}");
        assert_eq!(letter.attributes.get("dlq.source_topic").map(String::as_str), Some(EXPORT_TOPIC), "{kind}");
        assert!(letter.attributes.contains_key("dlq.error"), "{kind}: {:?}", letter.attributes);
        let (got, _) = wait_kafka_numbers(&systems.bootstrap(), "kout", 3, 2).await;
        assert_eq!(got, BTreeSet::from([0, 2]), "{kind}: the others are exported, the refused one is not");
    }
}

const AVRO: &str =
    r#"{"type":"record","name":"Order","fields":[{"name":"n","type":"long"},{"name":"item","type":"string"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_keeps_an_avro_payload_and_carries_its_schema_id_from_the_brokers_registry() {
    for kind in BrokerKind::all() {
        let systems = Systems::start(kind).await;
        let bridge = start_export(&systems, &[]).await;
        // A producer registers an Avro subject in the broker's registry and publishes with it.
        let runtime = runtime_on(&systems.broker).await;
        let publisher = runtime.publisher();
        let bound = publisher
            .register_schema("kout-value", SchemaKind::Avro, AVRO, None)
            .await
            .unwrap_or_else(|e| panic!("{kind}: register the Avro schema: {e}"));
        let mut sent = HashMap::new();
        for n in 0..20u64 {
            let value = json!({ "n": n, "item": format!("item-{n}") });
            let payload = bound.schema.encode_from_json(&value).expect("Avro datum");
            sent.insert(payload.clone(), value);
            let record = SourceRecord::new(EXPORT_TOPIC, payload).with_schema(Arc::clone(&bound));
            publisher.publish(record).await.unwrap_or_else(|e| panic!("{kind}: publish: {e}"));
        }
        let records = read_kafka(&systems.bootstrap(), "kout", 3, 20, WAIT).await;
        assert_eq!(
            records.len(),
            20,
            "{kind}: every Avro record exported; {}\n{}",
            broker_view(&systems.broker, EXPORT_TOPIC).await,
            bridge.log()
        );
        let registry = runtime.schema_registry();
        let info = registry.by_id(bound.schema_id).await.expect("schema by id");
        let schema = Schema::compile(SchemaKind::Avro, raw_definition(&info.schema_definition)).expect("Avro compiles");
        let mut seen = HashSet::new();
        for record in &records {
            let value = sent.get(&record.payload).unwrap_or_else(|| panic!("{kind}: the payload left unchanged"));
            assert_eq!(record.headers.get("danube.schema-id"), Some(&bound.schema_id.to_string()), "{kind}");
            assert_eq!(record.headers.get("danube.schema-version"), Some(&bound.version.to_string()), "{kind}");
            let decoded = schema.decode_to_json(&record.payload).expect("decodes with the registry's schema");
            assert_eq!(&decoded, value, "{kind}");
            seen.insert(record.payload.clone());
        }
        assert_eq!(seen.len(), 20, "{kind}: distinct records");
    }
}
