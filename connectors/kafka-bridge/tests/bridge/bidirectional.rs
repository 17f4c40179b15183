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
        systems.danube.publish("/default/mirror", format!("from-danube-{i}").into_bytes(), HashMap::new(), Some("d".into()));
    }
    let danube = systems.danube.wait_for_messages("/default/mirror", 21, WAIT).await;
    let kafka = read_all(&bootstrap, "mirror", 2, 20, WAIT).await;
    assert_eq!(danube.len(), 21, "kafka records imported once; log:\n{}", bridge.log());
    assert_eq!(kafka.len(), 20, "danube records exported once; log:\n{}", bridge.log());
    // Give an echo time to show up, then check nothing came back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(systems.danube.messages("/default/mirror").len(), 21, "no record echoed back into danube");
    assert_eq!(read_all(&bootstrap, "mirror", 2, 21, Duration::from_secs(3)).await.len(), 20, "no record echoed back into kafka");
    let imported: Vec<String> = danube.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(imported.iter().filter(|p| p.starts_with("from-kafka-")).count(), 10);
    assert_eq!(metric(&bridge, "kafka_bridge_import_loop_skipped_total").await, 10.0);
    assert_eq!(metric(&bridge, "kafka_bridge_export_loop_skipped_total").await, 10.0);
}
