//! Schema registry over the real client, poison policies and data-dir persistence.

use danube_client::errors::DanubeError;
use danube_client::{CompatibilityMode, DanubeClient, SchemaRegistryClient, SchemaType, SubType};
use danube_dev_broker::{BrokerConfig, EmbeddedBroker, PoisonPolicy};
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

async fn client(b: &EmbeddedBroker) -> DanubeClient {
    DanubeClient::builder().service_url(b.url()).build().await.expect("client")
}

/// Registers `definition` under `subject`; the schema id.
async fn register(
    schema: &SchemaRegistryClient,
    subject: &str,
    ty: SchemaType,
    definition: &str,
) -> Result<u64, DanubeError> {
    schema.register_schema(subject).with_type(ty).with_schema_data(definition.as_bytes()).execute().await
}

const V1: &str = r#"{"type":"object","properties":{"id":{"type":"integer"}},"required":["id"]}"#;
const V2: &str =
    r#"{"type":"object","properties":{"id":{"type":"integer"},"note":{"type":"string"}},"required":["id"]}"#;
const V3_BREAKING: &str =
    r#"{"type":"object","properties":{"id":{"type":"integer"},"owner":{"type":"string"}},"required":["id","owner"]}"#;

#[tokio::test]
async fn schema_register_get_latest_and_compatibility() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let schema = c.schema();
    let id = register(&schema, "orders-value", SchemaType::JsonSchema, V1).await.expect("register v1");
    let same = register(&schema, "orders-value", SchemaType::JsonSchema, V1).await.expect("register v1 again");
    assert_eq!(id, same);
    assert_eq!(schema.list_versions("orders-value").await.expect("versions"), [1]);

    let id2 = register(&schema, "orders-value", SchemaType::JsonSchema, V2).await.expect("register compatible v2");
    assert_eq!(id2, id, "schema id identifies the subject");
    let latest = schema.get_latest_schema("orders-value").await.expect("latest");
    assert_eq!(latest.version, 2);
    assert_eq!(latest.schema_type, "json_schema");
    assert_eq!(registered_text(&latest.schema_definition), V2, "answered wrapped, as Danube does");
    let v1 = schema.get_schema_version(id, Some(1)).await.expect("v1 by id");
    assert_eq!(registered_text(&v1.schema_definition), V1);
    assert_eq!(schema.get_schema_by_id(id).await.expect("by id").version, 2);

    let check = schema
        .check_compatibility("orders-value", V3_BREAKING.as_bytes().to_vec(), SchemaType::JsonSchema, None)
        .await
        .expect("check");
    assert!(!check.is_compatible);
    assert!(check.errors.iter().any(|e| e.contains("owner")), "{:?}", check.errors);
    let err = register(&schema, "orders-value", SchemaType::JsonSchema, V3_BREAKING)
        .await
        .expect_err("incompatible registration");
    assert_eq!(err.extract_status().map(|s| s.code()), Some(tonic::Code::FailedPrecondition));
    assert_eq!(schema.list_versions("orders-value").await.expect("versions"), [1, 2]);

    schema.set_compatibility_mode("orders-value", CompatibilityMode::None).await.expect("set mode");
    register(&schema, "orders-value", SchemaType::JsonSchema, V3_BREAKING).await.expect("accepted with mode none");
    assert_eq!(schema.list_versions("orders-value").await.expect("versions"), [1, 2, 3]);

    let missing = schema.get_latest_schema("nope").await.expect_err("unknown subject");
    assert_eq!(missing.extract_status().map(|s| s.code()), Some(tonic::Code::NotFound));
}

#[tokio::test]
async fn producer_schema_reference_must_exist_and_is_attached() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let mut missing = c
        .new_producer()
        .with_topic("/default/typed")
        .with_name("p")
        .with_schema_subject("unregistered")
        .build()
        .expect("builder");
    let err = missing.create().await.expect_err("unregistered subject");
    assert_eq!(err.extract_status().map(|s| s.code()), Some(tonic::Code::FailedPrecondition));

    let id = register(
        &c.schema(),
        "typed-value",
        SchemaType::Avro,
        r#"{"type":"record","name":"T","fields":[{"name":"a","type":"string"}]}"#,
    )
    .await
    .expect("register");
    let mut p = c
        .new_producer()
        .with_topic("/default/typed")
        .with_name("p")
        .with_schema_subject("typed-value")
        .with_reliable_dispatch()
        .build()
        .expect("builder");
    p.create().await.expect("create");
    p.send(b"payload".to_vec(), None).await.expect("send");
    let stored = b.messages("/default/typed");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].schema_id, Some(id));
    assert_eq!(stored[0].schema_version, Some(1));
}

#[tokio::test]
async fn poison_message_goes_to_dead_letter_topic() {
    let cfg = BrokerConfig {
        ack_timeout: Duration::from_millis(100),
        redelivery_base_delay: Duration::from_millis(20),
        max_redeliveries: 2,
        poison_policy: PoisonPolicy::DeadLetter("/default/dlq".into()),
        ..BrokerConfig::default()
    };
    let b = EmbeddedBroker::start(cfg).await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/poison";
    b.publish(topic, b"seed".to_vec(), HashMap::new(), None);
    let mut cons = c
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("c")
        .with_subscription("s")
        .with_subscription_type(SubType::Shared)
        .build()
        .expect("builder");
    cons.subscribe().await.expect("subscribe");
    let mut rx = cons.receive().await.expect("receive");
    assert!(b.wait_for_consumers(topic, "s", 1, WAIT).await);
    b.publish(topic, b"bad".to_vec(), HashMap::new(), None);
    let mut deliveries = 0;
    while tokio::time::timeout(Duration::from_millis(800), rx.recv()).await.ok().flatten().is_some() {
        deliveries += 1;
    }
    assert_eq!(deliveries, 3, "1 delivery + 2 redeliveries");
    let dlq = b.wait_for_messages("/default/dlq", 1, WAIT).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(&dlq[0].payload[..], b"bad");
    assert_eq!(b.unacked_count(topic, "s"), 0);
}

#[tokio::test]
async fn poison_block_stops_the_subscription() {
    let cfg = BrokerConfig {
        ack_timeout: Duration::from_millis(100),
        redelivery_base_delay: Duration::from_millis(20),
        max_redeliveries: 1,
        ..BrokerConfig::default()
    };
    let b = EmbeddedBroker::start(cfg).await.expect("broker");
    let c = client(&b).await;
    let topic = "/default/block";
    b.publish(topic, b"seed".to_vec(), HashMap::new(), None);
    let mut cons =
        c.new_consumer().with_topic(topic).with_consumer_name("c").with_subscription("s").build().expect("builder");
    cons.subscribe().await.expect("subscribe");
    let mut rx = cons.receive().await.expect("receive");
    assert!(b.wait_for_consumers(topic, "s", 1, WAIT).await);
    b.publish(topic, b"bad".to_vec(), HashMap::new(), None);
    let first = tokio::time::timeout(WAIT, rx.recv()).await.ok().flatten().expect("delivery");
    let again = tokio::time::timeout(WAIT, rx.recv()).await.ok().flatten().expect("redelivery");
    assert_eq!(first.msg_id.topic_offset, again.msg_id.topic_offset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.publish(topic, b"next".to_vec(), HashMap::new(), None);
    assert!(
        tokio::time::timeout(Duration::from_millis(400), rx.recv()).await.is_err(),
        "blocked subscription must not dispatch"
    );
    // A late ack of the poison message unblocks it.
    cons.ack(&again).await.expect("ack");
    let next = tokio::time::timeout(WAIT, rx.recv()).await.ok().flatten().expect("unblocked");
    assert_eq!(&next.payload[..], b"next");
}

#[tokio::test]
async fn data_dir_survives_a_new_broker_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = || BrokerConfig { data_dir: Some(dir.path().to_path_buf()), ..BrokerConfig::default() };
    let topic = "/default/persisted";
    {
        let b = EmbeddedBroker::start(cfg()).await.expect("broker");
        let c = client(&b).await;
        register(&c.schema(), "persisted-value", SchemaType::String, "utf8").await.expect("register");
        let mut p =
            c.new_producer().with_topic(topic).with_name("p").with_reliable_dispatch().build().expect("builder");
        p.create().await.expect("create");
        let mut cons =
            c.new_consumer().with_topic(topic).with_consumer_name("c").with_subscription("s").build().expect("builder");
        cons.subscribe().await.expect("subscribe");
        let mut rx = cons.receive().await.expect("receive");
        assert!(b.wait_for_consumers(topic, "s", 1, WAIT).await);
        for i in 0..3 {
            p.send(format!("m{i}").into_bytes(), None).await.expect("send");
        }
        let m0 = tokio::time::timeout(WAIT, rx.recv()).await.ok().flatten().expect("m0");
        cons.ack(&m0).await.expect("ack");
        b.create_namespace("extra");
        b.stop().await;
        cons.close().await;
    }
    let b = EmbeddedBroker::start(cfg()).await.expect("reloaded broker");
    let stored = b.messages(topic);
    assert_eq!(stored.len(), 3);
    assert_eq!(&stored[2].payload[..], b"m2");
    assert_eq!(stored[2].producer_name, "p");
    assert_eq!(b.ack_count(topic, "s"), 1);
    let c = client(&b).await;
    assert_eq!(c.schema().get_latest_schema("persisted-value").await.expect("schema").version, 1);
    let mut cons =
        c.new_consumer().with_topic(topic).with_consumer_name("c2").with_subscription("s").build().expect("builder");
    cons.subscribe().await.expect("subscribe");
    let mut rx = cons.receive().await.expect("receive");
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(WAIT, rx.recv()).await.ok().flatten() {
            Some(m) => got.push(String::from_utf8_lossy(&m.payload).into_owned()),
            None => break,
        }
    }
    assert_eq!(got, ["m1", "m2"], "unacked messages resume after reload");
    // Namespace created before the restart still exists.
    let mut p = c.new_producer().with_topic("/extra/t").with_name("p").build().expect("builder");
    p.create().await.expect("namespace persisted");
}

const ORDER_PROTO: &str = "syntax = \"proto3\";\npackage shop;\nmessage Order { string id = 1; int64 qty = 2; }\n";
const ORDER_PROTO_NOTE: &str =
    "syntax = \"proto3\";\npackage shop;\nmessage Order { string id = 1; int64 qty = 2; string note = 3; }\n";
const ORDER_PROTO_RETYPED: &str =
    "syntax = \"proto3\";\npackage shop;\nmessage Order { string id = 1; double qty = 2; }\n";

#[tokio::test]
async fn registry_compiles_definitions_and_checks_real_compatibility() {
    let b = EmbeddedBroker::start_default().await.expect("broker");
    let c = client(&b).await;
    let schema = c.schema();

    // Avro int -> long is a promotion: accepted under the default BACKWARD mode.
    let int =
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"qty","type":"int"}]}"#;
    let long =
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"qty","type":"long"}]}"#;
    for def in [int, long] {
        register(&schema, "orders-avro", SchemaType::Avro, def).await.expect("avro int then long");
    }
    assert_eq!(schema.list_versions("orders-avro").await.expect("versions"), [1, 2]);
    // Changing a field's type (long -> string) is not.
    let retyped =
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"qty","type":"string"}]}"#;
    let err = register(&schema, "orders-avro", SchemaType::Avro, retyped).await.expect_err("long -> string refused");
    let status = err.extract_status().expect("grpc status");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("/qty"), "{}", status.message());

    // Protobuf: adding a field is fine, changing a field's wire type is refused.
    for def in [ORDER_PROTO, ORDER_PROTO_NOTE] {
        register(&schema, "orders-proto", SchemaType::Protobuf, def).await.expect("protobuf v1, v2");
    }
    let check = schema
        .check_compatibility("orders-proto", ORDER_PROTO_RETYPED.as_bytes().to_vec(), SchemaType::Protobuf, None)
        .await
        .expect("check");
    assert!(!check.is_compatible);
    assert!(check.errors.iter().any(|e| e.contains("qty")), "{:?}", check.errors);
    let err = register(&schema, "orders-proto", SchemaType::Protobuf, ORDER_PROTO_RETYPED)
        .await
        .expect_err("int64 -> double refused");
    assert_eq!(err.extract_status().map(|s| s.code()), Some(tonic::Code::FailedPrecondition));

    // Definitions that do not compile are refused at registration.
    let invalid: [(SchemaType, &str); 3] = [
        (SchemaType::Avro, r#"{"type":"record","name":"R","fields":[{"name":"a","type":"no_such_type"}]}"#),
        (SchemaType::JsonSchema, r#"{"type":"object","minProperties":"x"}"#),
        (SchemaType::Protobuf, "syntax = \"proto3\";\nmessage Broken { int64 = 1; }\n"),
    ];
    for (ty, def) in invalid {
        let err = register(&schema, "broken", ty, def).await.expect_err("invalid definition refused");
        let status = err.extract_status().expect("grpc status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{def}");
        assert!(status.message().contains("definition"), "{}", status.message());
    }
    assert!(schema.get_latest_schema("broken").await.is_err());
}

/// The registered text inside an answer wrapped as Danube v0.15 wraps it
/// (`{"JsonSchema":{"raw_schema":"...","fingerprint":"..."}}`).
fn registered_text(answer: &[u8]) -> String {
    let wrapped: serde_json::Value = serde_json::from_slice(answer).expect("the answer is JSON");
    wrapped["JsonSchema"]["raw_schema"].as_str().expect("a JsonSchema with its raw_schema").to_string()
}
