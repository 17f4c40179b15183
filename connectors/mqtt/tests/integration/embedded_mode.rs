//! Embedded mode: devices connect to the connector's own rumqttd broker.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{start_connector, wait_for_numbers, TestClient};
use danube_connect_testkit::ports::free_port;
use danube_dev_broker::EmbeddedBroker;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_forwards_qos0_and_qos1_device_messages() {
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let port = free_port();
    let env = embedded_env(
        &danube,
        port,
        r#"[{filter="plant/+/power", topic="/default/power-{1}"}, {filter="plant/#", topic="/default/plant"}]"#,
    );
    let _connector = start_connector(&env).await;

    let mut device = TestClient::connect(port, "device-embedded");
    device.publish_many(40, QoS::AtLeastOnce, |i| ("plant/p1/power".to_string(), i.to_string().into_bytes())).await;
    device.publish_many(40, QoS::AtMostOnce, |i| ("plant/p2/other".to_string(), i.to_string().into_bytes())).await;

    let power = wait_for_numbers(&danube, "/default/power-p1", 40, Duration::from_secs(20)).await;
    assert_eq!(power.len(), 40, "QoS 1 messages on the first mapping");
    let plant = wait_for_numbers(&danube, "/default/plant", 40, Duration::from_secs(20)).await;
    assert_eq!(plant.len(), 40, "QoS 0 messages on the second mapping");
    let stored = danube.messages("/default/power-p1");
    let order: Vec<usize> = stored.iter().map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap()).collect();
    assert_eq!(order, (0..40).collect::<Vec<_>>(), "one device topic stays in order");
    assert_eq!(stored[0].attributes.get("mqtt.topic").map(String::as_str), Some("plant/p1/power"));
    assert_eq!(stored[0].routing_key.as_deref(), Some("plant/p1/power"));
    // rumqttd clears the retain flag before forwarding: no misleading `mqtt.retain`.
    assert_eq!(stored[0].attributes.get("mqtt.retain"), None, "{:?}", stored[0].attributes);
}

/// Environment for an embedded-mode connector listening on `port`.
pub(crate) fn embedded_env(danube: &EmbeddedBroker, port: u16, mappings: &str) -> HashMap<String, String> {
    HashMap::from([
        ("DANUBE_SERVICE_URL".to_string(), danube.url()),
        ("CONNECTOR_NAME".to_string(), "mqtt-embedded".to_string()),
        ("MQTT_MODE".to_string(), "embedded".to_string()),
        ("MQTT_EMBEDDED__LISTEN".to_string(), format!("127.0.0.1:{port}")),
        ("MQTT_MAPPINGS".to_string(), mappings.to_string()),
    ])
}

/// A burst far beyond rumqttd's 200-notification link buffer: rumqttd pauses the bridge
/// link when the buffer fills and resumes it only when the link says it is ready again.
/// Every message the device got a PUBACK for must reach Danube.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_burst_of_5000_qos1_messages_all_arrive() {
    const N: usize = 5000;
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let port = free_port();
    let env = embedded_env(&danube, port, r#"[{filter="burst/#", topic="/default/burst"}]"#);
    let connector = start_connector(&env).await;

    let mut device = TestClient::connect(port, "device-burst");
    device.publish_many(N, QoS::AtLeastOnce, |i| (format!("burst/d{}", i % 4), i.to_string().into_bytes())).await;

    let seen = wait_for_numbers(&danube, "/default/burst", N, Duration::from_secs(90)).await;
    let missing: Vec<usize> = (0..N).filter(|n| !seen.contains(n)).take(20).collect();
    assert!(missing.is_empty(), "{} of {N} missing, first: {missing:?}\n{}", N - seen.len(), connector.log());
    assert_eq!(danube.message_count("/default/burst"), N, "each message once");
}
