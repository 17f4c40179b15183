//! Conformance suite: each behaviour of the PostgreSQL CDC source runs against a private
//! PostgreSQL 15 on the development broker and, when `DANUBE_BROKER_BIN` names it, on the real
//! Danube broker (`BrokerKind::all`). What arrived is read back through a raw `danube-client`
//! consumer (`TopicReader`), counting distinct rows by their primary key.
//!
//! Behaviours: end-to-end delivery (snapshot and stream), kill -9 of the connector under insert
//! load, a broker outage mid-stream, the dead-letter path, the connector's own schema mode
//! (`schema = json_schema`) with the broker's registry, and an incremental snapshot on signal
//! under concurrent writes (the fold of the records equals the table).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_connect_core::schema::SchemaCache;
use danube_connect_core::{Runtime, RuntimeConfig, SinkRecord};
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::{reliable_producers, TopicReader};
use danube_connect_testkit::postgres::Postgres;
use danube_connect_testkit::process::ConnectorProcess;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_danube-postgres-cdc");

/// The connector's name; its dead-letter topic `/default/dlq-pgconf` prefixes no data topic.
const NAME: &str = "pgconf";

/// The data topic of every test (set explicitly: the default template may change).
const TOPIC: &str = "/default/cdc_items";

/// A private PostgreSQL with the table `items` and a broker of one kind.
struct Env {
    pg: Postgres,
    broker: TestBroker,
}

impl Env {
    async fn start(kind: BrokerKind) -> Self {
        let pg = Postgres::start().expect("postgres (scripts/test.sh installs it)");
        pg.psql("CREATE TABLE items (id bigserial PRIMARY KEY, note text)").expect("create table");
        let broker = TestBroker::start_persistent(kind).await.expect("broker");
        Self { pg, broker }
    }

    fn kind(&self) -> BrokerKind {
        self.broker.kind()
    }

    /// Creates the data topic (reliable) and subscribes a reader to it before the connector
    /// publishes: Danube subscriptions start at the end of a topic.
    async fn reader(&self, topic: &str) -> TopicReader {
        let maker = reliable_producers(self.broker.url(), topic, "mk", 1).await.expect("create the topic");
        drop(maker);
        TopicReader::subscribe(self.broker.url(), topic, "conf").await.expect("reader")
    }

    async fn spawn(&self, extra: &[(&str, &str)]) -> ConnectorProcess {
        let mut env = HashMap::from([
            ("DANUBE_SERVICE_URL".to_string(), self.broker.url()),
            ("CONNECTOR_NAME".to_string(), NAME.to_string()),
            ("POSTGRES_CDC_URL".to_string(), self.pg.url()),
            ("POSTGRES_CDC_TABLES".to_string(), "[\"public.items\"]".to_string()),
            ("POSTGRES_CDC_TOPIC".to_string(), TOPIC.to_string()),
            ("POSTGRES_CDC_STATUS_INTERVAL".to_string(), "200ms".to_string()),
            ("POSTGRES_CDC_HEARTBEAT_INTERVAL".to_string(), "1s".to_string()),
            ("CONNECTOR_SOURCE__PRODUCERS_PER_TOPIC".to_string(), "2".to_string()),
        ]);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let mut process = ConnectorProcess::spawn(Path::new(BIN), &env).expect("spawn connector");
        let kind = self.kind();
        process.wait_ready(Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{kind}: not ready: {e}"));
        process
    }

    /// Waits until the slot is held by a walsender.
    async fn wait_streaming(&self, process: &ConnectorProcess) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let active = self
                .pg
                .psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'danube_cdc'")
                .unwrap_or_default();
            if active == "t" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{}: slot never became active: {}", self.kind(), process.log());
    }
}

/// Row ids (`after.id`, or `before.id` for deletes) of the records a reader holds, with how
/// many messages carried each.
fn row_ids(reader: &TopicReader) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for message in reader.messages() {
        let Ok(payload) = serde_json::from_slice::<Value>(&message.payload) else { continue };
        if let Some(id) = payload["after"]["id"].as_i64().or_else(|| payload["before"]["id"].as_i64()) {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits until every id of `want` arrived or `timeout` passed; returns the ids missing.
async fn wait_for_rows(reader: &TopicReader, want: &[i64], timeout: Duration) -> Vec<i64> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = row_ids(reader);
        let missing: Vec<i64> = want.iter().copied().filter(|id| !got.contains_key(id)).collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the real broker says about `topic` (messages taken in, subscription lag): context for
/// a failed assertion.
async fn broker_view(broker: &TestBroker, topic: &str) -> String {
    let TestBroker::Real(real) = broker else { return "dev broker".into() };
    let taken = real.metric_sum("danube_topic_messages_in_total", &[("topic", topic)]).await.unwrap_or(-1.0);
    let lag = real.metric_sum("danube_subscription_lag_messages", &[("topic", topic)]).await.unwrap_or(-1.0);
    let log = real.log();
    let notable: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(5).collect();
    format!("broker: {taken} messages in, subscription lag {lag}; log: {}", notable.join("\n"))
}

/// Inserts one row per transaction, paced, until stopped; returns the ids whose COMMIT
/// succeeded.
fn start_writer(pg_url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        let mut committed = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let row =
                client.query_one("INSERT INTO items (note) VALUES ('w') RETURNING id", &[]).await.expect("insert");
            committed.push(row.get::<_, i64>(0));
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        committed
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_snapshot_and_streamed_row_arrives_once() {
    for kind in BrokerKind::all() {
        let env = Env::start(kind).await;
        env.pg.psql("INSERT INTO items (note) SELECT 's' FROM generate_series(1, 200)").expect("seed");
        let reader = env.reader(TOPIC).await;
        let process = env.spawn(&[]).await;
        env.wait_streaming(&process).await;
        // Small transactions, so no burst outruns the real broker's dispatch.
        for _ in 0..20 {
            env.pg.psql("INSERT INTO items (note) SELECT 'i' FROM generate_series(1, 10)").expect("insert");
        }
        env.pg.psql("UPDATE items SET note = 'u' WHERE id = 1").expect("update");
        env.pg.psql("DELETE FROM items WHERE id = 2").expect("delete");
        let want: Vec<i64> = (1..=400).collect();
        let missing = wait_for_rows(&reader, &want, Duration::from_secs(40)).await;
        assert!(
            missing.is_empty(),
            "{kind}: {} of 400 rows missing, e.g. {:?}; {}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            broker_view(&env.broker, TOPIC).await,
            process.log()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while reader.count() < 402 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ops: Vec<(i64, String)> = reader
            .messages()
            .iter()
            .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
            .map(|p| {
                let id = p["after"]["id"].as_i64().or_else(|| p["before"]["id"].as_i64()).unwrap_or(-1);
                (id, p["op"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        let count = |op: &str| ops.iter().filter(|(_, o)| o == op).count();
        assert_eq!(count("READ"), 200, "{kind}: snapshot rows");
        assert_eq!(count("INSERT"), 200, "{kind}: streamed inserts");
        assert_eq!(count("UPDATE"), 1, "{kind}");
        assert_eq!(count("DELETE"), 1, "{kind}");
        let distinct: HashSet<&(i64, String)> = ops.iter().collect();
        assert_eq!(distinct.len(), 402, "{kind}: no duplicates without failures ({} messages)", ops.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_insert_load_loses_no_committed_row() {
    for kind in BrokerKind::all() {
        let env = Env::start(kind).await;
        let reader = env.reader(TOPIC).await;
        let mut process = env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never")]).await;
        env.wait_streaming(&process).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = start_writer(env.pg.url(), stop.clone());
        let deadline = Instant::now() + Duration::from_secs(40);
        while reader.count() < 150 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(reader.count() >= 150, "{kind}: no load before the kill: {}", process.log());
        process.kill9();
        // The writer keeps committing while the connector is down.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let restarted = env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never")]).await;
        env.wait_streaming(&restarted).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        let committed = writer.await.expect("writer");
        let missing = wait_for_rows(&reader, &committed, Duration::from_secs(40)).await;
        assert!(
            missing.is_empty(),
            "{kind}: {} committed rows missing, e.g. {:?}; {}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            broker_view(&env.broker, TOPIC).await,
            restarted.log()
        );
        let got = row_ids(&reader);
        let duplicates: usize = got.values().map(|n| n - 1).sum();
        eprintln!("{kind}: kill -9: {} rows committed, all in Danube, {duplicates} duplicates", committed.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_mid_stream_loses_no_committed_row() {
    for kind in BrokerKind::all() {
        let mut env = Env::start(kind).await;
        let first = env.reader(TOPIC).await;
        let process = env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never")]).await;
        env.wait_streaming(&process).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = start_writer(env.pg.url(), stop.clone());
        let deadline = Instant::now() + Duration::from_secs(40);
        while first.count() < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(first.count() >= 100, "{kind}: no load before the outage: {}", process.log());
        env.broker.outage(Duration::from_secs(3)).await.expect("outage");
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.store(true, Ordering::Relaxed);
        let committed = writer.await.expect("writer");

        // A dev-broker restart may end the first reader's stream: the durable subscription
        // hands what it did not ack to a second reader.
        let missing_first = wait_for_rows(&first, &committed, Duration::from_secs(30)).await;
        let mut got: HashSet<i64> = row_ids(&first).into_keys().collect();
        if !missing_first.is_empty() {
            drop(first);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let second = TopicReader::subscribe(env.broker.url(), TOPIC, "conf").await.expect("second reader");
            wait_for_rows(&second, &missing_first, Duration::from_secs(30)).await;
            got.extend(row_ids(&second).into_keys());
        }
        let lost: Vec<&i64> = committed.iter().filter(|id| !got.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "{kind}: {} committed rows lost, e.g. {:?}; {}\n{}",
            lost.len(),
            &lost[..lost.len().min(5)],
            broker_view(&env.broker, TOPIC).await,
            process.log()
        );
        eprintln!("{kind}: outage: {} rows committed, all in Danube", committed.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_broker_refuses_lands_in_the_dead_letter_topic_with_its_error() {
    for kind in BrokerKind::all() {
        let env = Env::start(kind).await;
        let dlq = format!("/default/dlq-{NAME}");
        let dead = env.reader(&dlq).await;
        let reader = env.reader(TOPIC).await;
        let process = env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never")]).await;
        env.wait_streaming(&process).await;
        env.pg.psql("INSERT INTO items (id, note) VALUES (1, 'before')").expect("insert");
        // Larger than any Danube message (10 MB), also as a dead letter with its attributes:
        // the broker refuses it for good.
        env.pg.psql("INSERT INTO items (id, note) VALUES (2, repeat('x', 11 * 1024 * 1024))").expect("insert");
        env.pg.psql("INSERT INTO items (id, note) VALUES (3, 'after')").expect("insert");
        let missing = wait_for_rows(&reader, &[1, 3], Duration::from_secs(30)).await;
        let letters = dead.wait_for(1, Duration::from_secs(10)).await;
        assert!(
            missing.is_empty() && letters.len() == 1,
            "{kind}: rows {missing:?} missing, {} dead letters; {}\n{}",
            letters.len(),
            broker_view(&env.broker, TOPIC).await,
            process.log()
        );
        let letter = &letters[0];
        assert_eq!(letter.attributes.get("dlq.error_kind").map(String::as_str), Some("rejected"), "{kind}");
        assert_eq!(letter.attributes.get("dlq.source_topic").map(String::as_str), Some(TOPIC), "{kind}");
        assert!(!row_ids(&reader).contains_key(&2), "{kind}: the refused row is not in the data topic");
    }
}

/// `failure.policy = stop` and `nack` for a row the broker refuses: a pull source cannot hand
/// a record back, so both stop the connector (exit 2) without confirming the row's LSN and
/// without a dead letter; the next start (with `dead_letter`) streams the row again and
/// dead-letters it, which shows the slot did not advance past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_with_policy_stop_or_nack_stops_without_confirming_it() {
    for kind in BrokerKind::all() {
        let env = Env::start(kind).await;
        let dlq = format!("/default/dlq-{NAME}");
        let dead = env.reader(&dlq).await;
        let reader = env.reader(TOPIC).await;
        for (round, policy) in ["stop", "nack"].into_iter().enumerate() {
            let mut process =
                env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never"), ("CONNECTOR_FAILURE__POLICY", policy)]).await;
            env.wait_streaming(&process).await;
            let id = 10 * (round + 1);
            // Larger than any Danube message: the broker refuses it for good.
            env.pg
                .psql(&format!("INSERT INTO items (id, note) VALUES ({id}, repeat('x', 11 * 1024 * 1024))"))
                .expect("insert");
            let started = Instant::now();
            let code = loop {
                if let Some(status) = process.try_wait() {
                    break status.code();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{kind} {policy}: did not stop: {}",
                    process.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(code, Some(2), "{kind} {policy}: {}", process.log());
            assert_eq!(dead.count(), round, "{kind} {policy}: nothing dead-lettered");

            let mut process = env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never")]).await;
            env.pg.psql(&format!("INSERT INTO items (id, note) VALUES ({}, 'after')", id + 1)).expect("insert");
            let letters = dead.wait_for(round + 1, Duration::from_secs(60)).await;
            assert_eq!(letters.len(), round + 1, "{kind} {policy}: streamed again: {}", process.log());
            let missing = wait_for_rows(&reader, &[id as i64 + 1], Duration::from_secs(30)).await;
            assert!(missing.is_empty(), "{kind} {policy}: the row after it arrives: {}", process.log());
            let stopped = process.terminate(Duration::from_secs(30)).await;
            assert!(stopped.is_some_and(|s| s.success()), "{kind} {policy}: {}", process.log());
        }
    }
}

/// A runtime on `broker`, for its registry client.
async fn registry(broker: &TestBroker) -> Runtime {
    let mut config = RuntimeConfig { name: "schema-check".into(), ..RuntimeConfig::default() };
    config.danube.service_url = broker.url();
    config.ops.enabled = false;
    Runtime::start(config, CancellationToken::new()).await.expect("runtime on the broker")
}

/// The JSON Schema held in a registry answer. Danube v0.15.1 answers with its stored form
/// (`{"JsonSchema":{"raw_schema":"...","fingerprint":"..."}}`), the development broker with
/// the registered bytes.
fn raw_definition(bytes: &[u8]) -> Value {
    serde_json::from_slice(&danube_connect_core::schema::registered_definition(bytes)).expect("raw_schema is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_schema_is_registered_in_the_brokers_registry_and_records_decode_with_it() {
    for kind in BrokerKind::all() {
        let env = Env::start(kind).await;
        env.pg.psql("INSERT INTO items (note) VALUES ('snap')").expect("seed");
        let reader = env.reader(TOPIC).await;
        let process = env
            .spawn(&[("POSTGRES_CDC_SCHEMA", "json_schema"), ("POSTGRES_CDC_SCHEMA_SUBJECT", "cdc-{table}-value")])
            .await;
        env.wait_streaming(&process).await;
        env.pg.psql("INSERT INTO items (note) VALUES ('streamed')").expect("insert");
        let messages = reader.wait_for(2, Duration::from_secs(30)).await;
        assert_eq!(messages.len(), 2, "{kind}: {}", process.log());

        let runtime = registry(&env.broker).await;
        let registry = runtime.schema_registry();
        let latest = registry.latest("cdc-items-value").await.expect("subject registered in the broker");
        assert_eq!(latest.schema_type, "json_schema", "{kind}");
        let definition = raw_definition(&latest.schema_definition);
        let after = &definition["properties"]["after"]["properties"];
        assert_eq!(after["id"]["type"], json!(["integer", "null"]), "{kind}: {definition}");
        assert_eq!(after["note"]["type"], json!(["string", "null"]), "{kind}: {definition}");
        for message in &messages {
            assert_eq!(message.schema_id, Some(latest.schema_id), "{kind}: each record carries the subject's id");
            assert_eq!(message.schema_version, Some(latest.version), "{kind}");
        }

        // A sink decodes by id through core's cache: the records decode to their JSON, and
        // the schema it fetched is the table's, refusing a record of another shape.
        let cache = SchemaCache::new(runtime.schema_registry());
        for message in &messages {
            let mut record = SinkRecord::new(TOPIC, 0, message.payload.clone());
            record.schema_id = message.schema_id;
            record.schema_version = message.schema_version;
            cache.decode(&mut record).await.unwrap_or_else(|e| panic!("{kind}: decodes by schema id: {e}"));
            let payload: Value = serde_json::from_slice(&message.payload).expect("JSON");
            assert_eq!(record.value.as_ref(), Some(&payload), "{kind}");
        }
        let schema = cache.get(latest.schema_id, Some(latest.version)).await.expect("schema");
        let mut wrong: Value = serde_json::from_slice(&messages[1].payload).expect("JSON");
        wrong["after"]["id"] = json!("one");
        assert!(
            schema.validate(&serde_json::to_vec(&wrong).expect("json")).is_err(),
            "{kind}: the schema core fetched from the registry refuses a text id (it compiled {:?})",
            String::from_utf8_lossy(&latest.schema_definition)
        );
    }
}

/// The table `items` as `id -> note`.
fn items(pg: &Postgres) -> BTreeMap<i64, String> {
    let text = pg.psql("SELECT coalesce(jsonb_object_agg(id, note)::text, '{}') FROM items").expect("items");
    let map: serde_json::Map<String, Value> = serde_json::from_str(&text).expect("json");
    map.into_iter().map(|(id, note)| (id.parse().expect("id"), note.as_str().unwrap_or_default().to_string())).collect()
}

/// The records a reader holds folded by key in order: READ/INSERT/UPDATE set, DELETE removes.
fn folded(reader: &TopicReader) -> BTreeMap<i64, String> {
    let mut table = BTreeMap::new();
    for message in reader.messages() {
        let Ok(payload) = serde_json::from_slice::<Value>(&message.payload) else { continue };
        match payload["op"].as_str() {
            Some("DELETE") => {
                table.remove(&payload["before"]["id"].as_i64().unwrap_or(-1));
            }
            Some(_) => {
                let after = &payload["after"];
                table
                    .insert(after["id"].as_i64().unwrap_or(-1), after["note"].as_str().unwrap_or_default().to_string());
            }
            None => {}
        }
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_snapshot_on_signal_under_writes_folds_to_the_table() {
    const ROWS: i64 = 1_000;
    for kind in BrokerKind::all() {
        let env = Env::start(kind).await;
        env.pg.psql(&format!("INSERT INTO items (note) SELECT 's' FROM generate_series(1, {ROWS})")).expect("seed");
        let reader = env.reader(TOPIC).await;
        // Small chunks and few records in flight: the real broker's reliable dispatch stalls
        // for good when a burst outruns a subscription by more than its window + 256
        // (docs/running-on-danube.md), which would stop the reader, not the connector.
        let process = env
            .spawn(&[
                ("POSTGRES_CDC_SNAPSHOT", "never"),
                ("POSTGRES_CDC_INCREMENTAL_CHUNK_SIZE", "20"),
                ("CONNECTOR_SOURCE__MAX_IN_FLIGHT", "1"),
            ])
            .await;
        env.wait_streaming(&process).await;
        // Updates and deletes of random rows, paced, while the snapshot runs.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (url, stop) = (env.pg.url(), stop.clone());
            tokio::spawn(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
                tokio::spawn(connection);
                let mut state: u64 = 7;
                while !stop.load(Ordering::Relaxed) {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    let id = ((state >> 33) % ROWS as u64) as i64 + 1;
                    let sql = if (state >> 20).is_multiple_of(4) {
                        "DELETE FROM items WHERE id = $1"
                    } else {
                        "UPDATE items SET note = note || 'u' WHERE id = $1"
                    };
                    client.execute(sql, &[&id]).await.expect("writer");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        env.pg
            .psql(
                "INSERT INTO danube_cdc_signals (id, type, data) \
                 VALUES ('conf-1', 'execute-snapshot', '{\"data-collections\": [\"public.items\"]}')",
            )
            .expect("signal");
        let progress = "SELECT coalesce(data::text, '') FROM danube_cdc_signals WHERE id = 'progress:danube_cdc'";
        let deadline = Instant::now() + Duration::from_secs(120);
        while !env.pg.psql(progress).unwrap_or_default().contains(r#""finished": ["conf-1"]"#) {
            assert!(Instant::now() < deadline, "{kind}: the snapshot never finished: {}", process.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("writer");
        let expected = items(&env.pg);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = folded(&reader);
        while got != expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            got = folded(&reader);
        }
        let differing: Vec<&i64> =
            expected.keys().chain(got.keys()).filter(|id| got.get(id) != expected.get(id)).take(5).collect();
        assert!(
            differing.is_empty(),
            "{kind}: the fold differs from the table at {differing:?}; {}\n{}",
            broker_view(&env.broker, TOPIC).await,
            process.log()
        );
        let reads = reader
            .messages()
            .iter()
            .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
            .filter(|p| p["op"] == "READ")
            .count();
        println!("{kind}: incremental snapshot of {ROWS} rows under writes: {reads} READs, {} records, fold = table ({} rows)", reader.count(), expected.len());
    }
}
