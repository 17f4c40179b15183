//! Schemas through the runtime: bindings registered at start, records validated before they
//! enter a topic (invalid ones dead-lettered or refused), sinks decoding by schema id, and
//! schema evolution checked by the registry.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{
    eventually, runtime_config, spawn_sink, spawn_source, with_topics, Behaviour, RecordingSink, ScriptedSource,
};
use danube_connect_common::schema::{CompatibilityMode, Schema, SchemaKind};
use danube_connect_core::{
    async_trait, ConnectorResult, PublishError, PullSource, Ready, Runtime, RuntimeError, SchemaBinding, SourceOffset,
    SourceRecord,
};
use danube_dev_broker::EmbeddedBroker;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const ORDER_JSON_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["id", "amount"],
  "properties": { "id": { "type": "string" }, "amount": { "type": "number" } }
}"#;

const ORDER_AVRO_V1: &str = r#"{"type":"record","name":"Order","fields":[
  {"name":"id","type":"string"},{"name":"amount","type":"double"}]}"#;

/// v1 plus an optional field with a default: backward compatible.
const ORDER_AVRO_V2: &str = r#"{"type":"record","name":"Order","fields":[
  {"name":"id","type":"string"},{"name":"amount","type":"double"},
  {"name":"currency","type":"string","default":"EUR"}]}"#;

/// v1 plus a required field without a default: not backward compatible.
const ORDER_AVRO_BAD: &str = r#"{"type":"record","name":"Order","fields":[
  {"name":"id","type":"string"},{"name":"amount","type":"double"},
  {"name":"customer","type":"string"}]}"#;

fn schema_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write schema");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_records_carry_the_schema_id_and_invalid_ones_are_dead_lettered() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = "/default/orders-json";
    let mut config = runtime_config("jsonsrc", &broker.url());
    config.schemas = vec![SchemaBinding::new(topic, "orders-json")
        .with_file(SchemaKind::JsonSchema, schema_file(&dir, "o.json", ORDER_JSON_SCHEMA))];
    let batch = vec![
        SourceRecord::from_json(topic, &json!({"id": "a", "amount": 1.5}))
            .expect("json")
            .with_offset(SourceOffset::new("p", 0)),
        SourceRecord::from_json(topic, &json!({"id": "b", "amount": "lots"}))
            .expect("json")
            .with_offset(SourceOffset::new("p", 1)),
        SourceRecord::from_json(topic, &json!({"id": "c", "amount": 3}))
            .expect("json")
            .with_offset(SourceOffset::new("p", 2)),
    ];
    let source = ScriptedSource::new(vec![batch]);
    let commits = source.commits.clone();
    let (token, run) = spawn_source(config, Ready(source)).await;

    let stored = broker.wait_for_messages(topic, 2, Duration::from_secs(10)).await;
    let ids: Vec<String> = stored.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(stored.len(), 2, "only the valid records entered the topic: {ids:?}");
    assert!(ids.iter().any(|p| p.contains("\"a\"")) && ids.iter().any(|p| p.contains("\"c\"")), "{ids:?}");
    assert!(stored.iter().all(|m| m.schema_id.is_some() && m.schema_version == Some(1)), "schema id stamped");

    let dead = broker.wait_for_messages("/default/dlq-jsonsrc", 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert!(String::from_utf8_lossy(&dead[0].payload).contains("lots"));
    assert_eq!(dead[0].attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"));
    let error = dead[0].attributes.get("dlq.error").cloned().unwrap_or_default();
    assert!(error.contains("/amount"), "the error names the field: {error}");
    // Dead-lettered counts as handled: every offset is committed.
    assert!(
        eventually(Duration::from_secs(10), || commits.lock().expect("lock").contains(&SourceOffset::new("p", 2)))
            .await
    );
    token.cancel();
    assert_eq!(run.await.expect("join").exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_publish_of_an_invalid_record_is_refused_with_the_validation_error() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = "/default/orders-push";
    let mut config = runtime_config("pushsrc", &broker.url());
    config.schemas = vec![SchemaBinding::new(topic, "orders-push")
        .with_file(SchemaKind::JsonSchema, schema_file(&dir, "o.json", ORDER_JSON_SCHEMA))];
    let runtime = Runtime::start(config, CancellationToken::new()).await.expect("runtime");
    let publisher = runtime.publisher();
    let invalid = SourceRecord::from_json(topic, &json!({"id": 7})).expect("json");
    match publisher.publish(invalid).await {
        Err(PublishError::Invalid { message, .. }) => assert!(message.contains("amount"), "{message}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    publisher
        .publish(SourceRecord::from_json(topic, &json!({"id": "x", "amount": 2})).expect("json"))
        .await
        .expect("valid");
    let stored = broker.wait_for_messages(topic, 1, Duration::from_secs(5)).await;
    assert_eq!(stored.len(), 1);
    assert!(String::from_utf8_lossy(&stored[0].payload).contains("\"x\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_are_decoded_by_schema_id_for_the_sink() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = "/default/orders-avro";
    let avro = Schema::compile(SchemaKind::Avro, ORDER_AVRO_V1).expect("avro");

    let mut config = runtime_config("avrosrc", &broker.url());
    config.schemas = vec![SchemaBinding::new(topic, "orders-avro")
        .with_file(SchemaKind::Avro, schema_file(&dir, "o.avsc", ORDER_AVRO_V1))];
    let runtime = Runtime::start(config, CancellationToken::new()).await.expect("runtime");
    let publisher = runtime.publisher();
    let encode = |i: usize| avro.encode_from_json(&json!({"id": format!("o{i}"), "amount": i as f64})).expect("encode");
    // The first publish creates the topic; a sink can only subscribe to an existing topic and
    // a new subscription starts at its end.
    publisher.publish(SourceRecord::new(topic, encode(0))).await.expect("publish");

    let sink = RecordingSink::new(Behaviour::Accept);
    let (sink_token, sink_run) =
        spawn_sink(with_topics(runtime_config("avrosink", &broker.url()), &[topic]), sink.clone()).await;
    assert!(broker.wait_for_consumers(topic, "avrosink", 1, Duration::from_secs(20)).await, "sink subscribed");
    for i in 1..=5 {
        publisher.publish(SourceRecord::new(topic, encode(i))).await.expect("publish");
    }
    let refused = publisher.publish(SourceRecord::new(topic, b"not avro".to_vec())).await;
    assert!(matches!(refused, Err(PublishError::Invalid { .. })), "{refused:?}");

    let arrived = eventually(Duration::from_secs(20), || sink.accepted.lock().expect("lock").len() >= 5).await;
    let dead = broker.messages("/default/dlq-avrosink");
    assert!(
        arrived,
        "sink got {} records; dead-lettered: {:?}",
        sink.accepted.lock().expect("lock").len(),
        dead.iter().map(|m| m.attributes.get("dlq.error").cloned()).collect::<Vec<_>>()
    );
    let accepted = sink.accepted.lock().expect("lock").clone();
    for (i, record) in accepted.iter().enumerate() {
        assert!(record.schema_id.is_some());
        let value = record.json().expect("decoded");
        assert_eq!(value["id"], json!(format!("o{}", i + 1)), "decoded value {value}");
        assert_eq!(value["amount"], json!((i + 1) as f64));
    }
    sink_token.cancel();
    sink_run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compatible_evolution_registers_a_new_version_and_an_incompatible_one_stops_the_start() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = "/default/orders-evolve";
    let binding = |file: &str, text: &str| {
        let mut b =
            SchemaBinding::new(topic, "orders-evolve").with_file(SchemaKind::Avro, schema_file(&dir, file, text));
        b.compatibility = Some(CompatibilityMode::Backward);
        b
    };
    let start = |binding: SchemaBinding| {
        let mut config = runtime_config("evolve", &broker.url());
        config.ops.enabled = false;
        config.schemas = vec![binding];
        Runtime::start(config, CancellationToken::new())
    };

    let v1 = start(binding("v1.avsc", ORDER_AVRO_V1)).await.expect("v1 registers");
    let v1_schema = Schema::compile(SchemaKind::Avro, ORDER_AVRO_V1).expect("v1");
    let payload = v1_schema.encode_from_json(&json!({"id": "old", "amount": 1.0})).expect("encode");
    v1.publisher().publish(SourceRecord::new(topic, payload)).await.expect("v1 publish");
    drop(v1);

    let v2 = start(binding("v2.avsc", ORDER_AVRO_V2)).await.expect("a backward-compatible change is accepted");
    let v2_schema = Schema::compile(SchemaKind::Avro, ORDER_AVRO_V2).expect("v2");
    let payload = v2_schema.encode_from_json(&json!({"id": "new", "amount": 2.0, "currency": "USD"})).expect("encode");
    v2.publisher().publish(SourceRecord::new(topic, payload)).await.expect("v2 publish");
    let stored = broker.wait_for_messages(topic, 2, Duration::from_secs(5)).await;
    assert_eq!(stored.iter().map(|m| m.schema_version).collect::<Vec<_>>(), vec![Some(1), Some(2)]);
    drop(v2);

    match start(binding("bad.avsc", ORDER_AVRO_BAD)).await {
        Err(RuntimeError::Schema(error)) => {
            let chain = danube_connect_core::error::error_chain(&error);
            assert!(chain.contains("orders-evolve"), "{chain}");
            assert!(chain.contains("incompatible"), "the registry refused it as incompatible: {chain}");
            assert!(chain.contains("customer"), "the error names the field: {chain}");
        }
        Err(other) => panic!("expected a schema error, got {other:?}"),
        Ok(_) => panic!("an incompatible schema must not start"),
    }
}

#[tokio::test]
async fn a_binding_with_a_broken_definition_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = runtime_config("broken", "http://127.0.0.1:1");
    config.schemas = vec![
        SchemaBinding::new("/default/x", "x").with_file(SchemaKind::Avro, schema_file(&dir, "x.avsc", "{not json"))
    ];
    let error = danube_connect_core::config::Validate::validate(&config).expect_err("invalid");
    assert!(error.to_string().contains("schemas[0].file"), "{error}");
    let mut config = runtime_config("broken", "http://127.0.0.1:1");
    let mut binding = SchemaBinding::new("/default/x", "x");
    binding.file = Some(dir.path().join("x.avsc"));
    config.schemas = vec![binding];
    let error = danube_connect_core::config::Validate::validate(&config).expect_err("type missing");
    assert!(error.to_string().contains("schemas[0].type"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_input_is_encoded_into_the_avro_wire_format_before_publishing() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = "/default/orders-json-in";
    let mut config = runtime_config("jsonin", &broker.url());
    config.ops.enabled = false;
    config.schemas = vec![SchemaBinding::new(topic, "orders-json-in")
        .with_file(SchemaKind::Avro, schema_file(&dir, "o.avsc", ORDER_AVRO_V1))
        .with_json_input()];
    let runtime = Runtime::start(config, CancellationToken::new()).await.expect("runtime");
    let publisher = runtime.publisher();
    publisher
        .publish(SourceRecord::from_json(topic, &json!({"id": "j1", "amount": 9.5})).expect("json"))
        .await
        .expect("publish");
    let missing_field = publisher.publish(SourceRecord::from_json(topic, &json!({"id": "j2"})).expect("json")).await;
    assert!(matches!(missing_field, Err(PublishError::Invalid { .. })), "{missing_field:?}");
    let not_json = publisher.publish(SourceRecord::new(topic, b"{oops".to_vec())).await;
    assert!(matches!(not_json, Err(PublishError::Invalid { .. })), "{not_json:?}");

    let stored = broker.wait_for_messages(topic, 1, Duration::from_secs(5)).await;
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].payload.first(), Some(&b'{'), "stored as Avro binary, not JSON");
    let avro = Schema::compile(SchemaKind::Avro, ORDER_AVRO_V1).expect("avro");
    assert_eq!(avro.decode_to_json(&stored[0].payload).expect("decodes"), json!({"id": "j1", "amount": 9.5}));
}

/// v1 plus `version = N`: bindings without a file use an existing version, not the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_with_a_version_uses_that_existing_version() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = "/default/orders-pinned";
    let subject = "orders-pinned";
    let start = |binding: SchemaBinding| {
        let mut config = runtime_config("pinned", &broker.url());
        config.ops.enabled = false;
        config.schemas = vec![binding];
        Runtime::start(config, CancellationToken::new())
    };
    for (file, text) in [("v1.avsc", ORDER_AVRO_V1), ("v2.avsc", ORDER_AVRO_V2)] {
        let runtime =
            start(SchemaBinding::new(topic, subject).with_file(SchemaKind::Avro, schema_file(&dir, file, text)))
                .await
                .expect("register");
        drop(runtime);
    }

    let mut pinned = SchemaBinding::new(topic, subject).with_json_input();
    pinned.version = Some(1);
    let runtime = start(pinned).await.expect("start with version 1");
    let publisher = runtime.publisher();
    publisher
        .publish(SourceRecord::from_json(topic, &json!({"id": "p1", "amount": 4.0})).expect("json"))
        .await
        .expect("publish");
    let stored = broker.wait_for_messages(topic, 1, Duration::from_secs(10)).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].schema_version, Some(1), "stamped with the pinned version, not the latest (2)");
    assert!(stored[0].schema_id.is_some());
    // Encoded with v1: it decodes with v1 exactly (a v2 encoding would carry the currency).
    let v1 = Schema::compile(SchemaKind::Avro, ORDER_AVRO_V1).expect("v1");
    assert_eq!(v1.decode_to_json(&stored[0].payload).expect("v1 decodes"), json!({"id": "p1", "amount": 4.0}));
    drop(runtime);

    let mut missing = SchemaBinding::new(topic, subject);
    missing.version = Some(9);
    match start(missing).await {
        Err(RuntimeError::Schema(error)) => {
            let chain = danube_connect_core::error::error_chain(&error);
            assert!(chain.contains(subject) && chain.contains("version"), "{chain}");
        }
        Err(other) => panic!("expected a schema error, got {other:?}"),
        Ok(_) => panic!("a version that does not exist must not start"),
    }
}

const ORDER_PROTO: &str =
    "syntax = \"proto3\";\npackage shop.v1;\n\nmessage Order {\n  string id = 1;\n  int32 qty = 2;\n}\n";

/// `qty` changes from int32 to string: a different wire type, incompatible both ways.
const ORDER_PROTO_RETYPED: &str =
    "syntax = \"proto3\";\npackage shop.v1;\n\nmessage Order {\n  string id = 1;\n  string qty = 2;\n}\n";

/// A pull source: hands out its first batch, then the rest only once `open` is set.
struct GatedSource {
    batches: VecDeque<Vec<SourceRecord>>,
    first_sent: bool,
    open: Arc<AtomicBool>,
    commits: Arc<Mutex<Vec<SourceOffset>>>,
}

#[async_trait]
impl PullSource for GatedSource {
    async fn poll(&mut self) -> ConnectorResult<Vec<SourceRecord>> {
        if !self.first_sent || self.open.load(Ordering::SeqCst) {
            self.first_sent = true;
            if let Some(batch) = self.batches.pop_front() {
                return Ok(batch);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Vec::new())
    }

    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> ConnectorResult<()> {
        self.commits.lock().expect("lock").extend(offsets);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_records_are_validated_dead_lettered_and_decoded_by_schema_id() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let topic = "/default/orders-protobuf";
    let proto = Schema::compile(SchemaKind::Protobuf, ORDER_PROTO).expect("proto");
    let encode = |id: &str, qty: i32| proto.encode_from_json(&json!({"id": id, "qty": qty})).expect("encode");
    let record =
        |payload: Vec<u8>, offset: u64| SourceRecord::new(topic, payload).with_offset(SourceOffset::new("p", offset));

    let mut config = runtime_config("protosrc", &broker.url());
    config.schemas = vec![SchemaBinding::new(topic, "orders-protobuf")
        .with_file(SchemaKind::Protobuf, schema_file(&dir, "o.proto", ORDER_PROTO))];
    let open = Arc::new(AtomicBool::new(false));
    let commits: Arc<Mutex<Vec<SourceOffset>>> = Arc::default();
    // Field 1 (`id`, length-delimited) announces 5 bytes but carries 1: not a valid Order.
    let truncated = vec![0x0a, 0x05, b'x'];
    let source = GatedSource {
        batches: VecDeque::from(vec![
            vec![record(encode("first", 1), 0)],
            vec![record(encode("second", 2), 1), record(truncated, 2), record(encode("third", 3), 3)],
        ]),
        first_sent: false,
        open: open.clone(),
        commits: commits.clone(),
    };
    let (token, run) = spawn_source(config, Ready(source)).await;

    // The sink subscribes once the first record is in (a new subscription starts at the end,
    // so it does not see that one); then the rest follows.
    let first = broker.wait_for_messages(topic, 1, Duration::from_secs(20)).await;
    assert_eq!(first.len(), 1);
    let schema_id = first[0].schema_id.expect("the published record carries the schema id");
    assert_eq!(first[0].schema_version, Some(1));
    assert_eq!(proto.decode_to_json(&first[0].payload).expect("decodes"), json!({"id": "first", "qty": 1}));

    let sink = RecordingSink::new(Behaviour::Accept);
    let (sink_token, sink_run) =
        spawn_sink(with_topics(runtime_config("protosink", &broker.url()), &[topic]), sink.clone()).await;
    assert!(broker.wait_for_consumers(topic, "protosink", 1, Duration::from_secs(20)).await, "sink subscribed");
    open.store(true, Ordering::SeqCst);

    let stored = broker.wait_for_messages(topic, 3, Duration::from_secs(20)).await;
    assert_eq!(stored.len(), 3, "the invalid record did not enter the topic");
    assert!(stored.iter().all(|m| m.schema_id == Some(schema_id)), "every record carries the schema id");

    let dead = broker.wait_for_messages("/default/dlq-protosrc", 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.as_ref(), [0x0a, 0x05, b'x'].as_slice(), "dead-lettered unchanged");
    assert_eq!(dead[0].attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"));
    let error = dead[0].attributes.get("dlq.error").cloned().unwrap_or_default();
    assert!(error.contains("protobuf") && error.contains("/id"), "the validation error names the field: {error}");
    assert!(
        eventually(Duration::from_secs(20), || commits.lock().expect("lock").contains(&SourceOffset::new("p", 3)))
            .await
    );

    let arrived = eventually(Duration::from_secs(20), || sink.accepted.lock().expect("lock").len() >= 2).await;
    assert!(arrived, "sink got {} records", sink.accepted.lock().expect("lock").len());
    let accepted = sink.accepted.lock().expect("lock").clone();
    let mut values: Vec<_> = accepted.iter().map(|r| (r.schema_id, r.json().expect("decoded").into_owned())).collect();
    // Records without a routing key carry no ordering promise across sink lanes.
    values.sort_by_key(|(_, v)| v["id"].as_str().map(str::to_string));
    assert_eq!(
        values,
        vec![(Some(schema_id), json!({"id": "second", "qty": 2})), (Some(schema_id), json!({"id": "third", "qty": 3}))],
        "the sink decoded the Protobuf payloads by schema id"
    );
    sink_token.cancel();
    sink_run.await.expect("join");
    token.cancel();
    assert_eq!(run.await.expect("join").exit_code(), 0);

    // Changing a field's wire type is refused by the registry at the next start.
    let mut config = runtime_config("protosrc", &broker.url());
    config.ops.enabled = false;
    config.schemas = vec![SchemaBinding::new(topic, "orders-protobuf")
        .with_file(SchemaKind::Protobuf, schema_file(&dir, "retyped.proto", ORDER_PROTO_RETYPED))];
    match Runtime::start(config, CancellationToken::new()).await {
        Err(RuntimeError::Schema(error)) => {
            let chain = danube_connect_core::error::error_chain(&error);
            assert!(chain.contains("incompatible") && chain.contains("qty"), "{chain}");
        }
        Err(other) => panic!("expected a schema error, got {other:?}"),
        Ok(_) => panic!("an incompatible Protobuf change must not start"),
    }
}

/// Subscribes a raw client consumer to `topic`, which fails while the topic does not exist.
async fn subscribe_raw(
    client: &danube_client::DanubeClient,
    topic: &str,
    name: &str,
) -> Result<danube_client::Consumer, String> {
    let mut consumer = client
        .new_consumer()
        .with_topic(topic.to_string())
        .with_consumer_name(name.to_string())
        .with_subscription(name.to_string())
        .with_subscription_type(danube_client::SubType::Exclusive)
        .build()
        .map_err(|e| e.to_string())?;
    consumer.subscribe().await.map_err(|e| e.to_string())?;
    Ok(consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_bound_topics_and_prepared_topics_exist_before_their_first_record() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let bound = "/default/prepared-bound";
    let direct = "/default/prepared-direct";
    let mut config = runtime_config("prepare", &broker.url());
    config.schemas = vec![SchemaBinding::new(bound, "prepared-bound")
        .with_file(SchemaKind::JsonSchema, schema_file(&dir, "o.json", ORDER_JSON_SCHEMA))];
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime");
    let client = danube_client::DanubeClient::builder().service_url(broker.url()).build().await.expect("client");
    assert!(
        subscribe_raw(&client, "/default/never-prepared", "probe").await.is_err(),
        "sanity: subscribing to a topic nobody created fails"
    );
    let mut early =
        subscribe_raw(&client, bound, "early-bound").await.expect("the bound topic exists at start, before any record");

    let publisher = runtime.publisher();
    publisher.prepare(direct).await.expect("prepare");
    publisher.prepare(direct).await.expect("preparing twice is harmless");
    let mut early_direct = subscribe_raw(&client, direct, "early-direct").await.expect("the prepared topic exists");

    // Subscribed before the first record: both see it.
    publisher
        .publish(SourceRecord::from_json(bound, &json!({"id": "a", "amount": 1})).expect("json"))
        .await
        .expect("publish");
    publisher.publish(SourceRecord::new(direct, "first")).await.expect("publish");
    for (consumer, want) in [(&mut early, "\"a\""), (&mut early_direct, "first")] {
        let mut stream = consumer.receive().await.expect("receive");
        let message =
            tokio::time::timeout(Duration::from_secs(10), stream.recv()).await.expect("in time").expect("a message");
        assert!(
            String::from_utf8_lossy(&message.payload).contains(want),
            "first record delivered to the early subscriber"
        );
    }
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_bound_topics_are_prepared_concurrently_at_start() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = schema_file(&dir, "o.json", ORDER_JSON_SCHEMA);
    let topics: Vec<String> = (0..4).map(|i| format!("/default/concurrent-{i}")).collect();
    let mut config = runtime_config("prepare-concurrent", &broker.url());
    config.source.producers_per_topic = 1;
    config.schemas = topics
        .iter()
        .enumerate()
        .map(|(i, topic)| {
            SchemaBinding::new(topic, format!("concurrent-{i}")).with_file(SchemaKind::JsonSchema, file.clone())
        })
        .collect();
    let delay = Duration::from_millis(1500);
    broker.delay_producer_creation(delay);
    let token = CancellationToken::new();
    let started = std::time::Instant::now();
    let _runtime = Runtime::start(config, token.clone()).await.expect("runtime");
    let took = started.elapsed();
    assert!(took >= delay, "the start waited for the slow producer creation: {took:?}");
    // One after another, the four topics would take 4 x 1.5 s = 6 s.
    assert!(took < delay * 3, "the topics were prepared one after another: {took:?}");
    broker.delay_producer_creation(Duration::ZERO);
    let client = danube_client::DanubeClient::builder().service_url(broker.url()).build().await.expect("client");
    for topic in &topics {
        subscribe_raw(&client, topic, "check").await.expect("every bound topic exists after the start");
    }
    token.cancel();
}
