//! `failure.policy` for a message that cannot be delivered (its payload fails the mapping's
//! `format = "json"` check), in client mode (Mosquitto still holds a QoS 1 message until its
//! PUBACK) and embedded mode (rumqttd PUBACKed the device on receipt).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{client_env, start_connector, TestClient};
use crate::embedded_mode::embedded_env;
use danube_connect_testkit::mosquitto::Mosquitto;
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use rumqttc::QoS;

const JSON_MAPPING: &str = r#"[{filter="json/#", topic="/default/json", qos=1, format="json"}]"#;

/// Waits up to `timeout` for the connector to exit on its own; its exit code.
async fn exit_code(process: &mut ConnectorProcess, timeout: Duration) -> Option<i32> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(status) = process.try_wait() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn with_policy(mut env: HashMap<String, String>, policy: &str) -> HashMap<String, String> {
    env.insert("CONNECTOR_FAILURE__POLICY".to_string(), policy.to_string());
    env
}

/// Restarts the client-mode connector with `dead_letter` on the same persistent session:
/// Mosquitto redelivers the bad message only if it was never PUBACKed.
async fn redelivered_to_the_dead_letter_topic(danube: &EmbeddedBroker, env: &HashMap<String, String>) {
    let _connector = start_connector(&with_policy(env.clone(), "dead_letter")).await;
    let dead = danube.wait_for_messages("/default/dlq-mqtt-test", 1, Duration::from_secs(20)).await;
    assert!(!dead.is_empty(), "the unacked message was redelivered by Mosquitto");
    assert!(dead.iter().all(|m| &m.payload[..] == b"{not json"), "only the bad message is dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_nack_withholds_the_puback_so_mosquitto_redelivers() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = client_env(&danube, mqtt.port(), "it-policy-nack", JSON_MAPPING);
    let mut connector = start_connector(&with_policy(env.clone(), "nack")).await;

    let mut device = TestClient::connect(mqtt.port(), "device-policy-nack");
    device.publish("json/a", QoS::AtLeastOnce, false, "{not json").await;
    device.publish("json/a", QoS::AtLeastOnce, false, r#"{"ok":true}"#).await;
    let good = danube.wait_for_messages("/default/json", 1, Duration::from_secs(20)).await;
    assert!(!good.is_empty(), "{}", connector.log());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(connector.log().contains("failure.policy = nack"), "{}", connector.log());
    assert!(connector.try_wait().is_none(), "nack does not stop the connector");
    assert!(danube.messages("/default/dlq-mqtt-test").is_empty(), "nothing dead-lettered");
    assert!(connector.terminate(Duration::from_secs(30)).await.is_some(), "{}", connector.log());

    redelivered_to_the_dead_letter_topic(&danube, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_stop_exits_2_without_acking() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = client_env(&danube, mqtt.port(), "it-policy-stop", JSON_MAPPING);
    let mut connector = start_connector(&with_policy(env.clone(), "stop")).await;

    let mut device = TestClient::connect(mqtt.port(), "device-policy-stop");
    device.publish("json/a", QoS::AtLeastOnce, false, "{not json").await;
    assert_eq!(exit_code(&mut connector, Duration::from_secs(30)).await, Some(2), "{}", connector.log());
    assert!(connector.log().contains("failure.policy = stop"), "{}", connector.log());
    assert!(danube.messages("/default/dlq-mqtt-test").is_empty(), "nothing dead-lettered");

    redelivered_to_the_dead_letter_topic(&danube, &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_follows_the_policy_and_nack_stops_since_the_device_was_acked() {
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let dlq = "/default/dlq-mqtt-embedded";

    // dead_letter (the default).
    let port = free_port();
    let mut connector = start_connector(&embedded_env(&danube, port, JSON_MAPPING)).await;
    let mut device = TestClient::connect(port, "device-policy-dl");
    device.publish("json/a", QoS::AtLeastOnce, false, "{not json").await;
    let dead = danube.wait_for_messages(dlq, 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1, "{}", connector.log());
    assert_eq!(&dead[0].payload[..], b"{not json");
    assert_eq!(dead[0].attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"));
    assert_eq!(dead[0].attributes.get("dlq.attempts").map(String::as_str), Some("1"));
    drop(device);
    assert!(connector.terminate(Duration::from_secs(30)).await.is_some_and(|s| s.success()), "{}", connector.log());

    for (policy, says) in [("nack", "cannot hand it back"), ("stop", "failure.policy = stop")] {
        let port = free_port();
        let mut connector = start_connector(&with_policy(embedded_env(&danube, port, JSON_MAPPING), policy)).await;
        let device = TestClient::connect(port, &format!("device-policy-{policy}"));
        // Not waiting for the PUBACK: the connector may stop (and take rumqttd with it)
        // before rumqttd's PUBACK, sent on receipt, reaches the device.
        device.client.publish("json/a", QoS::AtLeastOnce, false, "{not json").await.expect("queue publish");
        assert_eq!(exit_code(&mut connector, Duration::from_secs(30)).await, Some(2), "{policy}: {}", connector.log());
        assert!(connector.log().contains(says), "{policy}: {}", connector.log());
    }
    assert_eq!(danube.messages(dlq).len(), 1, "only the dead_letter run dead-lettered");
}
