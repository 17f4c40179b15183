//! Danube → Kafka: mapping, key order, dead-lettering.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_carries_routing_keys_and_attributes_to_kafka_in_key_order() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "payments", 3).await;
    let env = bridge_env(
        &systems,
        "export-basic",
        &[
            ("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/payments"}]"#),
            ("CONNECTOR_SINK__BATCH__MAX_RECORDS", "10"),
            ("CONNECTOR_SINK__CONCURRENCY", "4"),
        ],
    );
    // The topic must exist before the bridge subscribes.
    systems.danube.publish("/default/payments", b"warmup".to_vec(), HashMap::new(), None);
    let bridge = spawn_bridge(&env).await;
    assert!(systems.danube.wait_for_consumers("/default/payments", "export-basic", 1, WAIT).await);
    let keys = ["k1", "k2", "k3", "k4", "k5"];
    let total = 100;
    for i in 0..total {
        let key = keys[i % keys.len()];
        let mut attributes = HashMap::new();
        attributes.insert("seq".to_string(), i.to_string());
        attributes.insert("source".to_string(), "danube".to_string());
        systems.danube.publish(
            "/default/payments",
            format!("{key}:{i}").into_bytes(),
            attributes,
            Some(key.to_string()),
        );
    }
    let records = read_all(&bootstrap, "payments", 3, total, WAIT).await;
    assert_eq!(records.len(), total, "every record exported; log:\n{}", bridge.log());
    let mut partition_of_key: HashMap<String, i32> = HashMap::new();
    let mut by_partition: BTreeMap<i32, Vec<&KafkaRecord>> = BTreeMap::new();
    for r in &records {
        let key = r.key.clone().expect("routing key becomes the kafka key");
        assert!(r.payload_str().starts_with(&format!("{key}:")));
        assert_eq!(r.headers.get("source").map(String::as_str), Some("danube"), "attributes become headers");
        assert_eq!(r.headers.get("danube-connect-origin").map(String::as_str), Some("export-basic"));
        let p = *partition_of_key.entry(key.clone()).or_insert(r.partition);
        assert_eq!(p, r.partition, "one key stays in one partition");
        by_partition.entry(r.partition).or_default().push(r);
    }
    assert!(by_partition.len() >= 2, "keys spread over partitions");
    for (_, mut list) in by_partition {
        list.sort_by_key(|r| r.offset);
        let mut last: HashMap<String, i64> = HashMap::new();
        for r in list {
            let seq: i64 = r.headers.get("seq").and_then(|s| s.parse().ok()).expect("seq");
            if let Some(prev) = last.insert(r.key.clone().unwrap_or_default(), seq) {
                assert!(seq > prev, "per-key order kept in kafka: {prev} then {seq}");
            }
        }
    }
    // Every Danube message (the warm-up one came before the subscription) was acked.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while systems.danube.ack_count("/default/payments", "export-basic") < total as u64
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(systems.danube.ack_count("/default/payments", "export-basic"), total as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_kafka_refuses_goes_to_the_dead_letter_topic() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "small", 1).await;
    systems.danube.publish("/default/small", b"before".to_vec(), HashMap::new(), None);
    let env = bridge_env(
        &systems,
        "dlq",
        &[
            ("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/small"}]"#),
            ("KAFKA_BRIDGE_EXPORT__PROPERTIES__MESSAGE_MAX_BYTES", "2000"),
        ],
    );
    let bridge = spawn_bridge(&env).await;
    assert!(systems.danube.wait_for_consumers("/default/small", "dlq", 1, WAIT).await);
    systems.danube.publish("/default/small", vec![b'x'; 5000], HashMap::new(), None);
    systems.danube.publish("/default/small", b"fits".to_vec(), HashMap::new(), None);
    let dead = systems.danube.wait_for_messages("/default/dlq-dlq", 1, WAIT).await;
    assert_eq!(dead.len(), 1, "oversized record dead-lettered; log:\n{}", bridge.log());
    assert_eq!(dead[0].payload.len(), 5000);
    let kafka = read_all(&bootstrap, "small", 1, 1, WAIT).await;
    assert_eq!(kafka.len(), 1);
    assert_eq!(kafka[0].payload_str(), "fits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_export_is_readable_by_a_plain_consumer() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    for codec in ["zstd", "lz4", "gzip"] {
        let kafka_topic = format!("packed-{codec}");
        let danube_topic = format!("/default/packed-{codec}");
        let name = format!("packed-{codec}");
        create_topic(&bootstrap, &kafka_topic, 2).await;
        systems.danube.publish(&danube_topic, b"before".to_vec(), HashMap::new(), None);
        let sink_topics = format!(r#"[{{topic="{danube_topic}"}}]"#);
        let env = bridge_env(
            &systems,
            &name,
            &[
                ("CONNECTOR_SINK__TOPICS", &sink_topics),
                ("CONNECTOR_SINK__BATCH__MAX_RECORDS", "10"),
                ("KAFKA_BRIDGE_EXPORT__COMPRESSION", codec),
                ("KAFKA_BRIDGE_EXPORT__LINGER", "20ms"),
            ],
        );
        let bridge = spawn_bridge(&env).await;
        assert!(systems.danube.wait_for_consumers(&danube_topic, &name, 1, WAIT).await);
        for i in 0..50 {
            let payload = format!("{codec}-{i}-{}", "x".repeat(300)).into_bytes();
            systems.danube.publish(&danube_topic, payload, HashMap::new(), Some(format!("k{}", i % 5)));
        }
        let records = read_all(&bootstrap, &kafka_topic, 2, 50, WAIT).await;
        assert_eq!(records.len(), 50, "{codec}: every record readable; log:\n{}", bridge.log());
        assert!(records.iter().all(|r| r.payload_str().starts_with(&format!("{codec}-")) && r.key.is_some()));
    }
}

/// The webhook → Danube → Kafka shape of a schema'd pipeline: records published with an Avro
/// subject are exported byte for byte, with their schema reference as headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_records_are_exported_unchanged_with_the_schema_id_as_a_header() {
    use danube_connect_common::schema::{Schema, SchemaKind};
    use danube_connect_core::config::RuntimeConfig;
    use danube_connect_core::{Runtime, SchemaBinding, SourceRecord};

    const ORDER: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"amount","type":"double"}]}"#;
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "orders-avro", 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let schema_file = dir.path().join("order.avsc");
    std::fs::write(&schema_file, ORDER).expect("schema file");
    let mut config = RuntimeConfig { name: "webhooks".into(), ..RuntimeConfig::default() };
    config.danube.service_url = systems.danube.url();
    config.ops.enabled = false;
    config.schemas = vec![SchemaBinding::new("/default/orders-avro", "orders-value")
        .with_file(SchemaKind::Avro, &schema_file)
        .with_json_input()];
    let runtime = Runtime::start(config, tokio_util::sync::CancellationToken::new()).await.expect("runtime");
    let publisher = runtime.publisher();
    let order =
        |i: usize| SourceRecord::new("/default/orders-avro", format!(r#"{{"id":"o{i}","amount":{i}.5}}"#).into_bytes());
    publisher.publish(order(0)).await.expect("creates the topic");

    let env =
        bridge_env(&systems, "export-schema", &[("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/orders-avro"}]"#)]);
    let bridge = spawn_bridge(&env).await;
    assert!(systems.danube.wait_for_consumers("/default/orders-avro", "export-schema", 1, WAIT).await);
    for i in 1..=5 {
        publisher.publish(order(i)).await.expect("publish");
    }
    let exported = read_all(&bootstrap, "orders-avro", 1, 5, WAIT).await;
    assert_eq!(exported.len(), 5, "log:\n{}", bridge.log());
    let stored = systems.danube.messages("/default/orders-avro");
    let schema = Schema::compile(SchemaKind::Avro, ORDER).expect("schema");
    for record in &exported {
        let id = record.headers.get("danube.schema-id").cloned().expect("schema id header");
        let payload = record.payload.clone().unwrap_or_default();
        let original = stored.iter().find(|m| m.payload.as_ref() == payload.as_slice()).expect("payload unchanged");
        assert_eq!(Some(id), original.schema_id.map(|i| i.to_string()));
        assert_eq!(record.headers.get("danube.schema-version").map(String::as_str), Some("1"));
        let decoded = schema.decode_to_json(&payload).expect("avro payload");
        assert!(decoded["id"].as_str().is_some_and(|s| s.starts_with('o')), "{decoded}");
    }
}
