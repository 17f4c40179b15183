//! Conformance of the ClickHouse sink on both brokers: the development broker always, the
//! real Danube broker when `DANUBE_BROKER_BIN` names it. Each test body runs once per broker
//! (`BrokerKind::all()`) against one real ClickHouse server (a table per broker) and names
//! the broker in every assertion.
//!
//! The sink is the `danube-clickhouse` binary in its own process; records are published by
//! raw `danube-client` producers and carry an `id`; delivery is counted by DISTINCT ids in
//! ClickHouse (`uniqExact(id)`), so duplicates after a crash are allowed and losses are not.
//!
//! Volumes stay modest (at most 600 records per run) and the publisher is paced against
//! what ClickHouse already holds: a reliable subscription of Danube v0.15.1 skips messages
//! when its dispatcher falls more than 256 messages behind the topic
//! (`docs/running-on-danube.md`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use danube_client::Producer;
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::clickhouse::ClickHouseServer;
use danube_connect_testkit::danube::{reliable_producers, TopicReader};

mod common;

use common::{sink_env, start_sink};

/// How far the publisher may run ahead of the rows ClickHouse holds.
const MAX_LEAD: u64 = 150;

/// The table mapping of `topic` into `table`.
fn mapping(topic: &str, table: &str) -> String {
    format!(r#"{{topic="{topic}", table="{table}"}}"#)
}

fn suffix(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Dev => "dev",
        BrokerKind::Real => "real",
    }
}

async fn count(ch: &ClickHouseServer, sql: &str) -> u64 {
    ch.query(sql).await.ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Polls `sql` (a count) until it reaches `expected`; returns the last value.
async fn wait_count(ch: &ClickHouseServer, sql: &str, expected: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let n = count(ch, sql).await;
        if n >= expected || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates `topic` on the broker (reliable) and returns two raw producers on it.
async fn producers(broker: &TestBroker, topic: &str, name: &str) -> Vec<Producer> {
    reliable_producers(broker.url(), topic, name, 2)
        .await
        .unwrap_or_else(|e| panic!("{}: raw producers on {topic}: {e}", broker.kind()))
}

/// The broker's last warnings and errors and what its exporter counts for `topic` (real
/// broker only), for failure messages.
async fn broker_state(broker: &TestBroker, topic: &str) -> String {
    let TestBroker::Real(real) = broker else { return String::new() };
    let log = broker.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    let labels = [("topic", topic)];
    format!(
        "broker: {}\n{topic}: in {:?}, out {:?}",
        lines[lines.len().saturating_sub(10)..].join("\n"),
        real.metric_sum("danube_topic_messages_in_total", &labels).await.ok(),
        real.metric_sum("danube_consumer_messages_out_total", &labels).await.ok(),
    )
}

async fn create_table(ch: &ClickHouseServer, table: &str) {
    ch.exec(&format!("CREATE TABLE {table} (id String, n UInt32) ENGINE = MergeTree ORDER BY id"))
        .await
        .expect("create table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_published_lands_once_as_a_distinct_row() {
    let ch = ClickHouseServer::start().await.expect("start ClickHouse");
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let spool = tempfile::tempdir().expect("spool dir");
        let table = format!("e2e_{}", suffix(kind));
        create_table(&ch, &table).await;
        let (name, topic) = ("ch-e2e", "/default/ch_e2e");
        let producers = producers(&broker, topic, "ch-e2e-p").await;
        let mut sink =
            start_sink(kind, &sink_env(&broker, &ch, spool.path(), name, topic, &mapping(topic, &table))).await;
        let total = 500;
        ClickHouseView::of(&ch).publish(&producers, "e2e", 0..total, &table).await;
        let distinct = format!("SELECT uniqExact(id) FROM {table}");
        let got = wait_count(&ch, &distinct, total as u64, Duration::from_secs(45)).await;
        assert_eq!(got, total as u64, "{kind}: distinct rows: {}\n{}", sink.log(), broker_state(&broker, topic).await);
        let rows = count(&ch, &format!("SELECT count() FROM {table}")).await;
        assert_eq!(rows, total as u64, "{kind}: no duplicate rows without a crash");
        let sum = count(&ch, &format!("SELECT sum(n) FROM {table}")).await;
        assert_eq!(sum, (0..total as u64).sum::<u64>(), "{kind}: the rows are the records published");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_restart_loses_nothing_danube_had() {
    let ch = ClickHouseServer::start().await.expect("start ClickHouse");
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let spool = tempfile::tempdir().expect("spool dir");
        let table = format!("kill_{}", suffix(kind));
        create_table(&ch, &table).await;
        let (name, topic) = ("ch-kill", "/default/ch_kill");
        let producers = producers(&broker, topic, "ch-kill-p").await;
        let env = sink_env(&broker, &ch, spool.path(), name, topic, &mapping(topic, &table));
        let mut sink = start_sink(kind, &env).await;
        let total = 600;
        let publisher = {
            let view = ClickHouseView::of(&ch);
            let table = table.clone();
            tokio::spawn(async move {
                view.publish(&producers, "kill", 0..total, &table).await;
                producers
            })
        };
        let rows = format!("SELECT count() FROM {table}");
        let at_kill = wait_count(&ch, &rows, 150, Duration::from_secs(30)).await;
        sink.kill9();
        assert!(at_kill >= 150 && at_kill < total as u64, "{kind}: killed under load at {at_kill} rows");
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut sink = start_sink(kind, &env).await;
        let _producers = tokio::time::timeout(Duration::from_secs(60), publisher)
            .await
            .unwrap_or_else(|_| panic!("{kind}: the publisher finished after the restart: {}", sink.log()))
            .expect("publisher");
        let distinct = format!("SELECT uniqExact(id) FROM {table}");
        let got = wait_count(&ch, &distinct, total as u64, Duration::from_secs(60)).await;
        assert_eq!(
            got,
            total as u64,
            "{kind}: distinct rows after kill -9 at {at_kill}: {}\n{}",
            sink.log(),
            broker_state(&broker, topic).await
        );
        let rows = count(&ch, &rows).await;
        println!("{kind}: kill -9 at {at_kill} rows; {rows} rows for {total} records after the restart");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

/// A ClickHouse server reached by URL from a task that does not own it.
struct ClickHouseView {
    url: String,
    port: u16,
}

impl ClickHouseView {
    async fn count(&self, sql: &str) -> u64 {
        let response = reqwest::Client::new().post(&self.url).body(sql.to_string()).send().await;
        match response {
            Ok(r) => r.text().await.ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0),
            Err(_) => 0,
        }
    }

    fn of(ch: &ClickHouseServer) -> Self {
        Self { url: ch.url(), port: ch.http_port }
    }

    /// Publishes `{"id":"{prefix}-{i}","n":i}` for each `i`, one at a time, round robin,
    /// never more than [`MAX_LEAD`] ahead of `SELECT count() FROM {table}`. A failed send
    /// (the broker is away) is retried until it succeeds: a record may then be published
    /// twice.
    async fn publish(&self, producers: &[Producer], prefix: &str, range: std::ops::Range<usize>, table: &str) {
        let sql = format!("SELECT count() FROM {table}");
        let mut inserted = 0u64;
        for i in range {
            if i % 20 == 0 {
                while i as u64 > inserted + MAX_LEAD {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    inserted = self.count(&sql).await;
                }
            }
            let body = serde_json::json!({ "id": format!("{prefix}-{i}"), "n": i }).to_string().into_bytes();
            let mut failures = 0;
            while let Err(error) = producers[i % producers.len()].send(body.clone(), None).await {
                failures += 1;
                assert!(failures < 200, "publishing {prefix}-{i} on :{} failed for a minute: {error}", self.port);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_nothing() {
    let ch = ClickHouseServer::start().await.expect("start ClickHouse");
    for kind in BrokerKind::all() {
        let mut broker = TestBroker::start_persistent(kind).await.expect("broker starts");
        let spool = tempfile::tempdir().expect("spool dir");
        let table = format!("outage_{}", suffix(kind));
        create_table(&ch, &table).await;
        let (name, topic) = ("ch-outage", "/default/ch_outage");
        let producers = producers(&broker, topic, "ch-outage-p").await;
        let mut sink =
            start_sink(kind, &sink_env(&broker, &ch, spool.path(), name, topic, &mapping(topic, &table))).await;
        let total = 500;
        let publisher = {
            let view = ClickHouseView::of(&ch);
            let table = table.clone();
            tokio::spawn(async move {
                view.publish(&producers, "out", 0..total, &table).await;
                producers
            })
        };
        let rows = format!("SELECT count() FROM {table}");
        let before = wait_count(&ch, &rows, 100, Duration::from_secs(30)).await;
        broker.outage(Duration::from_secs(3)).await.expect("outage");
        assert!(before < total as u64, "{kind}: the outage fell mid-stream ({before} of {total} rows)");
        let _producers = tokio::time::timeout(Duration::from_secs(90), publisher)
            .await
            .unwrap_or_else(|_| panic!("{kind}: the publisher finished after the outage: {}", sink.log()))
            .expect("publisher");
        let distinct = format!("SELECT uniqExact(id) FROM {table}");
        let got = wait_count(&ch, &distinct, total as u64, Duration::from_secs(60)).await;
        assert_eq!(
            got,
            total as u64,
            "{kind}: distinct rows after a 3 s outage at {before}: {}\n{}",
            sink.log(),
            broker_state(&broker, topic).await
        );
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmappable_record_lands_in_the_dead_letter_topic_with_its_error() {
    let ch = ClickHouseServer::start().await.expect("start ClickHouse");
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let spool = tempfile::tempdir().expect("spool dir");
        let table = format!("dlq_{}", suffix(kind));
        ch.exec(&format!("CREATE TABLE {table} (id String, n UInt32, small Int8) ENGINE = MergeTree ORDER BY id"))
            .await
            .expect("create table");
        let (name, topic, dlq) = ("ch-dlq", "/default/ch_dlq", "/default/dlq-ch-dlq");
        let producers = producers(&broker, topic, "ch-dlq-p").await;
        let _dlq_maker = reliable_producers(broker.url(), dlq, "ch-dlq-mk", 1).await.expect("create the DLQ topic");
        let reader = TopicReader::subscribe(broker.url(), dlq, "dlq-reader").await.expect("subscribe to the DLQ");
        let mut sink =
            start_sink(kind, &sink_env(&broker, &ch, spool.path(), name, topic, &mapping(topic, &table))).await;
        ClickHouseView::of(&ch).publish(&producers, "good", 0..30, &table).await;
        // 300 does not fit Int8: ClickHouse would wrap it, the sink refuses it.
        let bad = r#"{"id":"bad-0","n":1,"small":300}"#;
        let attributes = HashMap::from([("origin".to_string(), "conformance".to_string())]);
        producers[0].send(bad.as_bytes().to_vec(), Some(attributes)).await.expect("publish the bad record");
        ClickHouseView::of(&ch).publish(&producers, "good", 30..60, &table).await;

        let dead = reader.wait_for(1, Duration::from_secs(30)).await;
        assert_eq!(dead.len(), 1, "{kind}: one dead letter: {}", sink.log());
        let letter = &dead[0];
        assert_eq!(String::from_utf8_lossy(&letter.payload), bad, "{kind}: the payload is kept");
        let attr = |k: &str| letter.attributes.get(k).cloned().unwrap_or_default();
        assert!(
            attr("dlq.error").contains(&table) && attr("dlq.error").contains("small"),
            "{kind}: dlq.error names the table and column: {:?}",
            letter.attributes
        );
        assert_eq!(attr("dlq.error_kind"), "invalid", "{kind}: {:?}", letter.attributes);
        assert_eq!(attr("dlq.source_topic"), topic, "{kind}: {:?}", letter.attributes);
        assert_eq!(attr("origin"), "conformance", "{kind}: the record's own attributes are kept");
        let distinct = format!("SELECT uniqExact(id) FROM {table}");
        let got = wait_count(&ch, &distinct, 60, Duration::from_secs(30)).await;
        assert_eq!(got, 60, "{kind}: every good record inserted around the dead letter");
        assert_eq!(count(&ch, &format!("SELECT count() FROM {table} WHERE id = 'bad-0'")).await, 0, "{kind}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(reader.count(), 1, "{kind}: nothing else was dead-lettered");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_are_decoded_by_their_registry_schema_into_typed_columns() {
    use danube_connect_common::schema::SchemaKind;
    use danube_connect_core::config::RuntimeConfig;
    use danube_connect_core::{Runtime, SchemaBinding, SourceRecord};

    const ORDER: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},
      {"name":"amount","type":"double"},{"name":"currency","type":"string","default":"EUR"}]}"#;
    let ch = ClickHouseServer::start().await.expect("start ClickHouse");
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let spool = tempfile::tempdir().expect("spool dir");
        let table = format!("orders_{}", suffix(kind));
        ch.exec(&format!(
            "CREATE TABLE {table} (id String, amount Float64, currency String) ENGINE = MergeTree ORDER BY id"
        ))
        .await
        .expect("create table");
        let (name, topic, dlq) = ("ch-avro", "/default/ch_orders", "/default/dlq-ch-avro");
        let schema_dir = tempfile::tempdir().expect("tempdir");
        let schema_file = schema_dir.path().join("order.avsc");
        std::fs::write(&schema_file, ORDER).expect("schema file");
        // A source that registers the schema in the broker's registry and encodes JSON as Avro.
        let mut config = RuntimeConfig { name: "ch-avro-src".into(), ..RuntimeConfig::default() };
        config.danube.service_url = broker.url();
        config.ops.enabled = false;
        config.schemas = vec![SchemaBinding::new(topic, "ch-orders-value")
            .with_file(SchemaKind::Avro, &schema_file)
            .with_json_input()];
        let token = tokio_util::sync::CancellationToken::new();
        let runtime = Runtime::start(config, token.clone())
            .await
            .unwrap_or_else(|e| panic!("{kind}: source runtime registers the schema: {e}"));
        let publisher = runtime.publisher();
        let order = |i: u32, currency: &str| {
            SourceRecord::new(topic, format!(r#"{{"id":"o{i}","amount":{i}.25,"currency":"{currency}"}}"#).into_bytes())
        };
        publisher.publish(order(0, "EUR")).await.unwrap_or_else(|e| panic!("{kind}: publish creates the topic: {e}"));
        let _dlq_maker = reliable_producers(broker.url(), dlq, "ch-avro-mk", 1).await.expect("create the DLQ topic");
        let dead = TopicReader::subscribe(broker.url(), dlq, "dlq-reader").await.expect("subscribe to the DLQ");

        let mut sink =
            start_sink(kind, &sink_env(&broker, &ch, spool.path(), name, topic, &mapping(topic, &table))).await;
        for i in 1..=4 {
            publisher
                .publish(order(i, if i % 2 == 0 { "USD" } else { "EUR" }))
                .await
                .unwrap_or_else(|e| panic!("{kind}: publish: {e}"));
        }
        let n = wait_count(&ch, &format!("SELECT count() FROM {table}"), 4, Duration::from_secs(30)).await;
        assert_eq!(
            n,
            4,
            "{kind}: every Avro record inserted; {} dead letters, the first: {:?}\n{}",
            dead.count(),
            dead.messages().first().map(|m| &m.attributes),
            sink.log()
        );
        let rows = ch.query(&format!("SELECT id, amount, currency FROM {table} ORDER BY id FORMAT TSV")).await;
        assert_eq!(
            rows.expect("select"),
            "o1\t1.25\tEUR\no2\t2.25\tUSD\no3\t3.25\tEUR\no4\t4.25\tUSD",
            "{kind}: decoded into typed columns"
        );
        assert_eq!(dead.count(), 0, "{kind}: nothing dead-lettered");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
        token.cancel();
    }
}
