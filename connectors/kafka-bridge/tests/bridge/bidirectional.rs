//! Both directions in one process: loop protection.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;

/// Reads a counter from the bridge's `/metrics`.
async fn metric(process: &danube_connect_testkit::process::ConnectorProcess, name: &str) -> f64 {
    let body = reqwest::get(format!("http://127.0.0.1:{}/metrics", process.ops_port))
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_bridge_does_not_echo_records() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "mirror", 2).await;
    // The Danube topic exists before the export subscribes (this message is not exported:
    // a new subscription starts at the end).
    systems.danube.publish("/default/mirror", b"before".to_vec(), HashMap::new(), None);
    let env = bridge_env(
        &systems,
        "loop",
        &[
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", "loop-group"),
            ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["mirror"]}]"#),
            ("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/mirror"}]"#),
        ],
    );
    let bridge = spawn_bridge(&env).await;
    assert!(systems.danube.wait_for_consumers("/default/mirror", "loop", 1, WAIT).await);
    let producer = producer(&bootstrap);
    for i in 0..10 {
        produce(&producer, "mirror", Some("k"), &format!("from-kafka-{i}"), &[]).await;
        systems.danube.publish(
            "/default/mirror",
            format!("from-danube-{i}").into_bytes(),
            HashMap::new(),
            Some("d".into()),
        );
    }
    let danube = systems.danube.wait_for_messages("/default/mirror", 21, WAIT).await;
    let kafka = read_all(&bootstrap, "mirror", 2, 20, WAIT).await;
    assert_eq!(danube.len(), 21, "kafka records imported once; log:\n{}", bridge.log());
    assert_eq!(kafka.len(), 20, "danube records exported once; log:\n{}", bridge.log());
    // Give an echo time to show up, then check nothing came back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(systems.danube.messages("/default/mirror").len(), 21, "no record echoed back into danube");
    assert_eq!(
        read_all(&bootstrap, "mirror", 2, 21, Duration::from_secs(3)).await.len(),
        20,
        "no record echoed back into kafka"
    );
    let imported: Vec<String> = danube.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(imported.iter().filter(|p| p.starts_with("from-kafka-")).count(), 10);
    assert_eq!(metric(&bridge, "kafka_bridge_import_loop_skipped_total").await, 10.0);
    assert_eq!(metric(&bridge, "kafka_bridge_export_loop_skipped_total").await, 10.0);
}

/// Loop protection skips only an echo to the topic a record came from: a record this
/// bridge imported is exported to a different Kafka topic, and a record it exported is
/// imported into a different Danube topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_flow_through_both_directions_to_different_topics() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "orders", 2).await;
    create_topic(&bootstrap, "orders-archive", 2).await;
    create_topic(&bootstrap, "outbox", 2).await;
    // The exported Danube topics exist before the export subscribes (these two messages
    // are not exported: a new subscription starts at the end).
    systems.danube.publish("/default/orders", b"before".to_vec(), HashMap::new(), None);
    systems.danube.publish("/default/outbox", b"before".to_vec(), HashMap::new(), None);
    let env = bridge_env(
        &systems,
        "flow",
        &[
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", "flow-group"),
            (
                "KAFKA_BRIDGE_IMPORT__MAPPINGS",
                r#"[{topics=["orders"]}, {topics=["outbox"], danube_topic="/default/outbox-copy"}]"#,
            ),
            ("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/orders"}, {topic="/default/outbox"}]"#),
            ("KAFKA_BRIDGE_EXPORT__TOPICS", r#"{"/default/orders"="orders-archive"}"#),
        ],
    );
    let bridge = spawn_bridge(&env).await;
    assert!(systems.danube.wait_for_consumers("/default/orders", "flow", 1, WAIT).await, "{}", bridge.log());
    assert!(systems.danube.wait_for_consumers("/default/outbox", "flow", 1, WAIT).await, "{}", bridge.log());
    let producer = producer(&bootstrap);
    for i in 0..10 {
        produce(&producer, "orders", Some("k"), &format!("order-{i}"), &[]).await;
        systems.danube.publish("/default/outbox", format!("out-{i}").into_bytes(), HashMap::new(), Some("d".into()));
    }
    // Kafka orders -> /default/orders (import) -> Kafka orders-archive (export).
    let archived = read_all(&bootstrap, "orders-archive", 2, 10, WAIT).await;
    let mut archived: Vec<String> = archived.iter().map(KafkaRecord::payload_str).collect();
    archived.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("order-{i}")).collect();
    expected.sort();
    assert_eq!(archived, expected, "imported records are exported to another kafka topic; log:\n{}", bridge.log());
    // /default/outbox -> Kafka outbox (export) -> /default/outbox-copy (import).
    let copied = systems.danube.wait_for_messages("/default/outbox-copy", 10, WAIT).await;
    let mut copied: Vec<String> = copied.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    copied.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("out-{i}")).collect();
    expected.sort();
    assert_eq!(copied, expected, "exported records are imported into another danube topic; log:\n{}", bridge.log());
    let stored = systems.danube.messages("/default/outbox-copy");
    assert!(
        stored.iter().all(|m| m.attributes.get("danube.topic").map(String::as_str) == Some("/default/outbox")),
        "the danube.topic header names where the record came from"
    );
    // Nothing else moved: the Kafka records written back from /default/orders and
    // /default/outbox were not imported again, and nothing was skipped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(systems.danube.messages("/default/outbox-copy").len(), 10, "no record imported twice");
    assert_eq!(systems.danube.messages("/default/orders").len(), 11, "orders imported once");
    assert_eq!(read_all(&bootstrap, "orders-archive", 2, 11, Duration::from_secs(3)).await.len(), 10);
    assert_eq!(metric(&bridge, "kafka_bridge_import_loop_skipped_total").await, 0.0);
    assert_eq!(metric(&bridge, "kafka_bridge_export_loop_skipped_total").await, 0.0);
}
