//! `[[transforms]]` on both brokers (`DANUBE_BROKER_BIN` adds the real one): source records
//! rewritten, routed and dropped before they are published (a dropped record's offset still
//! commits and is counted), a runtime error dead-letters the original record with the error
//! or stops the connector, and sink records rewritten and dropped before the sink sees them
//! (a dropped one is acked).

use std::time::Duration;

use crate::common::{eventually, runtime_config, spawn_source, with_topics, Behaviour, RecordingSink, ScriptedSource};
use danube_connect_core::config::FailurePolicy;
use danube_connect_core::transform::TransformConfig;
use danube_connect_core::{Parts, Ready, Runtime, SourceOffset, SourceRecord};
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::{reliable_producers, TopicReader};
use tokio_util::sync::CancellationToken;

/// Creates `topic` and subscribes a reader to it (subscriptions start at the end).
async fn reader(broker: &TestBroker, topic: &str) -> TopicReader {
    drop(reliable_producers(broker.url(), topic, "maker", 1).await.expect("topic created"));
    TopicReader::subscribe(broker.url(), topic, "check").await.expect("reader")
}

/// JSON records on `topic` with offsets `("p", i)`.
fn json_records(topic: &str, bodies: &[serde_json::Value]) -> Vec<SourceRecord> {
    bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            SourceRecord::from_json(topic, body).expect("json").with_offset(SourceOffset::new("p", i as u64))
        })
        .collect()
}

fn json(message: &danube_core::message::StreamMessage) -> serde_json::Value {
    serde_json::from_slice(&message.payload).expect("json payload")
}

/// The value of the first metric line starting with `name` and containing every `labels` part.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_records_are_rewritten_routed_and_dropped_and_dropped_offsets_commit() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let main = reader(&broker, "/default/tr-orders").await;
        let audit = reader(&broker, "/default/tr-audit").await;
        let mut config = runtime_config("trsrc", &broker.url());
        config.transforms = vec![
            TransformConfig::inline("filter", "if .test == true { abort }"),
            TransformConfig::inline(
                "reshape",
                "del(.secret)\n%key = string!(.id)\n%attributes.shaped = \"yes\"\nif .kind == \"audit\" { %topic = \"/default/tr-audit\" }",
            )
            .for_topics(["/default/tr-*"]),
        ];
        let bodies = [
            serde_json::json!({"id": "1", "secret": "s", "kind": "order"}),
            serde_json::json!({"id": "2", "secret": "s", "kind": "audit"}),
            serde_json::json!({"id": "3", "kind": "order", "test": true}),
            serde_json::json!({"id": "4", "kind": "order"}),
            serde_json::json!({"id": "5", "kind": "order", "test": true}),
        ];
        let source = ScriptedSource::new(vec![json_records("/default/tr-orders", &bodies)]);
        let commits = source.commits.clone();
        let (token, run) = spawn_source(config, source).await;
        let got = main.wait_for(2, Duration::from_secs(20)).await;
        let routed = audit.wait_for(1, Duration::from_secs(20)).await;
        // The last record was dropped: its offset commits all the same.
        assert!(
            eventually(Duration::from_secs(20), || commits.lock().expect("lock").iter().any(|o| o.position == 4)).await,
            "{kind}: the dropped record's offset is committed: {:?}",
            commits.lock().expect("lock")
        );
        // Different keys, different producers: no order between them.
        let mut bodies: Vec<serde_json::Value> = got.iter().map(json).collect();
        bodies.sort_by_key(|b| b["id"].to_string());
        assert_eq!(
            bodies,
            vec![serde_json::json!({"id": "1", "kind": "order"}), serde_json::json!({"id": "4", "kind": "order"})],
            "{kind}"
        );
        assert!(got.iter().any(|m| m.routing_key.as_deref() == Some("1")), "{kind}: the key comes from .id");
        assert!(got.iter().all(|m| m.routing_key.is_some()), "{kind}");
        assert_eq!(got[0].attributes.get("shaped").map(String::as_str), Some("yes"), "{kind}");
        assert_eq!(got[0].attributes.get("content-type").map(String::as_str), Some("application/json"), "{kind}");
        assert_eq!(
            routed.iter().map(json).collect::<Vec<_>>(),
            vec![serde_json::json!({"id": "2", "kind": "audit"})],
            "{kind}"
        );
        token.cancel();
        let report = run.await.expect("join");
        assert_eq!(report.exit_code(), 0, "{kind}: {:?}", report.fatal);
        assert_eq!(main.count(), 2, "{kind}: nothing dropped was published");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_are_counted_per_transform() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let mut config = runtime_config("trcount", &broker.url());
        config.transforms = vec![TransformConfig::inline("odd", "if includes([1, 3, 5], .n) { abort }")];
        let token = CancellationToken::new();
        let runtime = Runtime::start(config, token.clone()).await.expect("runtime");
        let addr = runtime.ops_addr().expect("ops");
        let publisher = runtime.publisher();
        for n in 0..6 {
            let record = SourceRecord::from_json("/default/tr-count", &serde_json::json!({ "n": n })).expect("json");
            publisher.publish(record).await.expect("dropped or published, both Ok");
        }
        let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("body");
        let labels = ["connector=\"trcount\"", "topic=\"/default/tr-count\"", "transform=\"odd\""];
        assert_eq!(metric(&text, "connector_transform_dropped_total", &labels), Some(3.0), "{kind}: {text}");
        assert_eq!(
            metric(&text, "connector_records_published_total", &["topic=\"/default/tr-count\""]),
            Some(3.0),
            "{kind}"
        );
        token.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_runtime_error_dead_letters_the_original_record_with_the_error() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let main = reader(&broker, "/default/tr-amounts").await;
        let dead = reader(&broker, "/default/dlq-trdlq").await;
        let mut config = runtime_config("trdlq", &broker.url());
        config.transforms = vec![TransformConfig::inline("amount", ".amount = int!(.amount)")];
        let bodies =
            [serde_json::json!({"amount": 1}), serde_json::json!({"amount": "lots"}), serde_json::json!({"amount": 3})];
        let source = ScriptedSource::new(vec![json_records("/default/tr-amounts", &bodies)]);
        let commits = source.commits.clone();
        let (token, run) = spawn_source(config, source).await;
        let got = main.wait_for(2, Duration::from_secs(20)).await;
        let dead_letters = dead.wait_for(1, Duration::from_secs(20)).await;
        let mut bodies: Vec<serde_json::Value> = got.iter().map(json).collect();
        bodies.sort_by_key(|b| b["amount"].to_string());
        assert_eq!(bodies, vec![serde_json::json!({"amount": 1}), serde_json::json!({"amount": 3})], "{kind}");
        assert_eq!(dead_letters.len(), 1, "{kind}");
        let d = &dead_letters[0];
        assert_eq!(json(d), serde_json::json!({"amount": "lots"}), "{kind}: the record as the source produced it");
        let error = d.attributes.get("dlq.error").cloned().unwrap_or_default();
        assert!(error.contains("transform `amount` failed"), "{kind}: {error}");
        assert_eq!(d.attributes.get("dlq.source_topic").map(String::as_str), Some("/default/tr-amounts"), "{kind}");
        assert!(
            eventually(Duration::from_secs(20), || commits.lock().expect("lock").iter().any(|o| o.position == 2)).await,
            "{kind}: every offset commits once the bad record is dead-lettered"
        );
        token.cancel();
        assert_eq!(run.await.expect("join").exit_code(), 0, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_runtime_error_with_policy_stop_stops_without_committing_the_record() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let mut config = runtime_config("trstop", &broker.url());
        config.failure.policy = FailurePolicy::Stop;
        config.transforms = vec![TransformConfig::inline("amount", ".amount = int!(.amount)")];
        let first = json_records("/default/tr-stop", &[serde_json::json!({"amount": 1})]);
        let mut second = json_records("/default/tr-stop", &[serde_json::json!({"amount": "lots"})]);
        second[0].offset = Some(SourceOffset::new("p", 1));
        let source = ScriptedSource::new(vec![first, second]);
        let commits = source.commits.clone();
        let (_token, run) = spawn_source(config, source).await;
        let report = tokio::time::timeout(Duration::from_secs(30), run).await.expect("stops").expect("join");
        assert_eq!(report.exit_code(), 2, "{kind}: a fatal stop");
        let fatal = report.fatal.map(|e| e.chain()).unwrap_or_default();
        assert!(fatal.contains("transform `amount` failed"), "{kind}: {fatal}");
        let committed = commits.lock().expect("lock").clone();
        assert!(
            !committed.iter().any(|o| o.position == 1),
            "{kind}: the failed record is not committed: {committed:?}"
        );
    }
}

/// Publishes `{"probe": true}` until `sink` received one (the sink's subscription exists;
/// probes sent before it are not delivered).
async fn wait_until_consuming(broker: &TestBroker, topic: &str, sink: &RecordingSink) {
    let producers = reliable_producers(broker.url(), topic, "probe", 1).await.expect("producer");
    let started = std::time::Instant::now();
    while sink.accepted.lock().expect("lock").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "the sink never consumed");
        producers[0].send(br#"{"probe":true}"#.to_vec(), None).await.expect("probe sent");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn is_probe(record: &danube_connect_core::SinkRecord) -> bool {
    record.payload.as_ref() == br#"{"probe":true}"#
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_records_are_rewritten_and_dropped_before_the_sink_and_failures_dead_lettered() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let topic = "/default/tr-sink";
        drop(reliable_producers(broker.url(), topic, "maker", 1).await.expect("topic created"));
        let dead = reader(&broker, "/default/dlq-trsink").await;
        let mut config = with_topics(runtime_config("trsink", &broker.url()), &[topic]);
        config.transforms = vec![TransformConfig::inline(
            "shape",
            "if .skip == true { abort }\nif exists(.n) { .n = int!(.n) * 10 }\n%attributes.seen = \"1\"",
        )];
        let sink = RecordingSink::new(Behaviour::Accept);
        let token = CancellationToken::new();
        let runtime = Runtime::start(config, token.clone()).await.expect("runtime");
        let addr = runtime.ops_addr().expect("ops");
        let running = sink.clone();
        let run = tokio::spawn(async move { runtime.run(Parts::new().with_sink(Ready(running))).await.expect("run") });
        wait_until_consuming(&broker, topic, &sink).await;

        let producers = reliable_producers(broker.url(), topic, "writer", 1).await.expect("producer");
        for body in [r#"{"n":1}"#, r#"{"n":2,"skip":true}"#, r#"{"n":"x"}"#, r#"{"n":3}"#] {
            producers[0].send(body.as_bytes().to_vec(), None).await.expect("sent");
        }
        assert!(
            eventually(Duration::from_secs(20), || {
                sink.accepted.lock().expect("lock").iter().filter(|r| !is_probe(r)).count() >= 2
            })
            .await,
            "{kind}: the kept records reach the sink"
        );
        let dead_letters = dead.wait_for(1, Duration::from_secs(20)).await;
        let accepted: Vec<_> = sink.accepted.lock().expect("lock").iter().filter(|r| !is_probe(r)).cloned().collect();
        let bodies: Vec<serde_json::Value> =
            accepted.iter().map(|r| serde_json::from_slice(&r.payload).expect("json")).collect();
        assert_eq!(bodies, vec![serde_json::json!({"n": 10}), serde_json::json!({"n": 30})], "{kind}");
        assert!(accepted.iter().all(|r| r.attribute("seen") == Some("1")), "{kind}");
        assert_eq!(dead_letters.len(), 1, "{kind}");
        assert_eq!(&dead_letters[0].payload[..], br#"{"n":"x"}"#, "{kind}: the record as it was in the topic");
        let error = dead_letters[0].attributes.get("dlq.error").cloned().unwrap_or_default();
        assert!(error.contains("transform `shape` failed"), "{kind}: {error}");

        // The dropped record was acked like the others: every one of them is settled.
        let probes = sink.accepted.lock().expect("lock").iter().filter(|r| is_probe(r)).count();
        let total = probes as f64 + 4.0;
        let acked = || async {
            let text =
                reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("body");
            (
                metric(&text, "connector_records_acked_total", &["topic=\"/default/tr-sink\""]),
                metric(&text, "connector_transform_dropped_total", &["transform=\"shape\""]),
            )
        };
        let started = std::time::Instant::now();
        let mut last = acked().await;
        while last.0 != Some(total) && started.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = acked().await;
        }
        assert_eq!(last, (Some(total), Some(1.0)), "{kind}: acked and dropped counts");
        token.cancel();
        assert_eq!(run.await.expect("join").exit_code(), 0, "{kind}");
    }
}

const ORDER_AVRO: &str = r#"{"type":"record","name":"Order","fields":[
  {"name":"id","type":"string"},{"name":"amount","type":"double"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transform_sees_the_decoded_avro_value_and_its_result_is_encoded_and_validated() {
    use danube_connect_common::schema::{Schema, SchemaKind};
    let avro = Schema::compile(SchemaKind::Avro, ORDER_AVRO).expect("schema");
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("order.avsc");
        std::fs::write(&file, ORDER_AVRO).expect("write");
        let topic = "/default/tr-avro";
        let main = reader(&broker, topic).await;
        let dead = reader(&broker, "/default/dlq-travro").await;
        let mut config = runtime_config("travro", &broker.url());
        config.schemas =
            vec![danube_connect_core::SchemaBinding::new(topic, "tr-avro").with_file(SchemaKind::Avro, &file)];
        config.transforms =
            vec![TransformConfig::inline("double", ".amount = float!(.amount) * 2\nif .id == \"b\" { del(.id) }")];
        let records: Vec<SourceRecord> = [("a", 1.5), ("b", 2.0), ("c", 4.0)]
            .iter()
            .enumerate()
            .map(|(i, (id, amount))| {
                let encoded = avro.encode_from_json(&serde_json::json!({"id": id, "amount": amount})).expect("encode");
                SourceRecord::new(topic, encoded).with_offset(SourceOffset::new("p", i as u64))
            })
            .collect();
        let (token, run) = spawn_source(config, ScriptedSource::new(vec![records])).await;
        let got = main.wait_for(2, Duration::from_secs(20)).await;
        let dead_letters = dead.wait_for(1, Duration::from_secs(20)).await;
        let mut values: Vec<serde_json::Value> =
            got.iter().map(|m| avro.decode_to_json(&m.payload).expect("published in Avro")).collect();
        values.sort_by_key(|v| v["id"].to_string());
        assert_eq!(
            values,
            vec![serde_json::json!({"id": "a", "amount": 3.0}), serde_json::json!({"id": "c", "amount": 8.0}),],
            "{kind}"
        );
        assert!(got.iter().all(|m| m.schema_id.is_some()), "{kind}: the schema id is stamped");
        assert_eq!(dead_letters.len(), 1, "{kind}: the record the transform made invalid");
        let d = &dead_letters[0];
        assert_eq!(
            avro.decode_to_json(&d.payload).expect("the original Avro record"),
            serde_json::json!({"id": "b", "amount": 2.0}),
            "{kind}"
        );
        let error = d.attributes.get("dlq.error").cloned().unwrap_or_default();
        assert!(error.contains("transform `double`"), "{kind}: {error}");
        token.cancel();
        assert_eq!(run.await.expect("join").exit_code(), 0, "{kind}");
    }
}
