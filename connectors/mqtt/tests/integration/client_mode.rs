//! Client mode against a real Mosquitto and the in-process Danube broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{client_env, numbers, start_connector, wait_for_numbers, TestClient};
use danube_connect_testkit::mosquitto::Mosquitto;
use danube_dev_broker::EmbeddedBroker;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_reach_mapped_topics_in_order_with_attributes() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = client_env(
        &danube,
        mqtt.port(),
        "it-qos1",
        r#"[{filter="factory/+/temp", topic="/default/factory-{1}-temp", qos=1}]"#,
    );
    let _connector = start_connector(&env).await;

    let mut device = TestClient::connect(mqtt.port(), "device-qos1");
    device
        .publish_many(100, QoS::AtLeastOnce, |i| (format!("factory/line{}/temp", i % 2), i.to_string().into_bytes()))
        .await;
    device.publish("factory/line0/humidity", QoS::AtLeastOnce, false, "unmapped").await;

    let line0 = danube.wait_for_messages("/default/factory-line0-temp", 50, Duration::from_secs(20)).await;
    let line1 = danube.wait_for_messages("/default/factory-line1-temp", 50, Duration::from_secs(20)).await;
    assert_eq!(line0.len(), 50, "every line0 message once");
    assert_eq!(line1.len(), 50, "every line1 message once");
    let order: Vec<usize> = line0.iter().map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap()).collect();
    assert_eq!(order, (0..100).step_by(2).collect::<Vec<_>>(), "per-topic order kept");
    let first = &line1[0];
    assert_eq!(first.attributes.get("mqtt.topic").map(String::as_str), Some("factory/line1/temp"));
    assert_eq!(first.attributes.get("mqtt.qos").map(String::as_str), Some("1"));
    assert_eq!(first.attributes.get("mqtt.retain").map(String::as_str), Some("false"));
    assert_eq!(first.attributes.get("mqtt.dup").map(String::as_str), Some("false"));
    assert_eq!(first.routing_key.as_deref(), Some("factory/line1/temp"));
    // The filter does not match `humidity`: the broker never sent it to the connector.
    assert!(danube.messages("/default/dlq-mqtt-test").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_messages_reach_danube() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = client_env(&danube, mqtt.port(), "it-qos0", r#"[{filter="sensors/#", topic="/default/sensors", qos=0}]"#);
    let _connector = start_connector(&env).await;

    let mut device = TestClient::connect(mqtt.port(), "device-qos0");
    device.publish_many(50, QoS::AtMostOnce, |i| (format!("sensors/s{i}"), i.to_string().into_bytes())).await;
    // `sensors/#` also matches `sensors` itself.
    device.publish("sensors", QoS::AtMostOnce, false, "50").await;

    let seen = wait_for_numbers(&danube, "/default/sensors", 51, Duration::from_secs(20)).await;
    assert_eq!(seen.len(), 51, "all QoS 0 messages on a healthy path arrive");
    let stored = danube.messages("/default/sensors");
    assert!(stored.iter().all(|m| m.attributes.get("mqtt.qos").map(String::as_str) == Some("0")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_delivered_with_retain_flag() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let mut device = TestClient::connect(mqtt.port(), "device-retain");
    device.publish("status/d1", QoS::AtLeastOnce, true, "online").await;

    let env = client_env(&danube, mqtt.port(), "it-retain", r#"[{filter="status/+", topic="/default/status", qos=1}]"#);
    let _connector = start_connector(&env).await;
    let stored = danube.wait_for_messages("/default/status", 1, Duration::from_secs(20)).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].payload[..], b"online");
    assert_eq!(stored[0].attributes.get("mqtt.retain").map(String::as_str), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_failing_the_format_check_is_dead_lettered_not_dropped() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = client_env(
        &danube,
        mqtt.port(),
        "it-format",
        r#"[{filter="json/#", topic="/default/json", qos=1, format="json"}]"#,
    );
    let mut connector = start_connector(&env).await;

    let mut device = TestClient::connect(mqtt.port(), "device-format");
    device.publish("json/a", QoS::AtLeastOnce, false, "{not json").await;
    device.publish("json/a", QoS::AtLeastOnce, false, r#"{"ok":true}"#).await;

    let good = danube.wait_for_messages("/default/json", 1, Duration::from_secs(20)).await;
    let bad = danube.wait_for_messages("/default/dlq-mqtt-test", 1, Duration::from_secs(20)).await;
    assert_eq!(good.len(), 1);
    assert_eq!(bad.len(), 1, "the bad payload is on the dead-letter topic");
    assert_eq!(&bad[0].payload[..], b"{not json");
    assert!(bad[0].attributes.get("dlq.error").is_some_and(|e| e.contains("JSON")), "{:?}", bad[0].attributes);
    assert_eq!(bad[0].attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"));

    // The dead-lettered message was acked: a restart gets no redelivery of it.
    assert!(connector.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", connector.log());
    let _again = start_connector(&env).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(danube.messages("/default/dlq-mqtt-test").len(), 1, "not redelivered");
    assert_eq!(danube.messages("/default/json").len(), 1, "not redelivered");
}

/// Kill test: a device keeps publishing numbered QoS 1 messages while the connector is
/// killed with -9 twice (while the device is still publishing and messages are in flight)
/// and restarted. Mosquitto PUBACKed every message to the device and keeps the connector's
/// persistent session; the connector PUBACKs only after Danube acked. A message the
/// connector PUBACKed but Danube did not have would never be redelivered and would be
/// missing at the end: all N must be in Danube (duplicates allowed, counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9() {
    const N: usize = 6000;
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = client_env(&danube, mqtt.port(), "it-kill", r#"[{filter="meters/#", topic="/default/meters", qos=1}]"#);
    let mut connector = start_connector(&env).await;

    let port = mqtt.port();
    let publishing = Arc::new(AtomicBool::new(true));
    let device = tokio::spawn({
        let publishing = publishing.clone();
        async move {
            let mut device = TestClient::connect(port, "device-kill");
            for chunk in 0..60 {
                device
                    .publish_many(N / 60, QoS::AtLeastOnce, |i| {
                        let n = chunk * (N / 60) + i;
                        (format!("meters/m{}", n % 7), n.to_string().into_bytes())
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            publishing.store(false, Ordering::Release);
        }
    });

    let mut killed_under_load = 0;
    for round in 0..2 {
        let target = (round + 1) * N / 4;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while numbers(&danube, "/default/meters").len() < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if publishing.load(Ordering::Acquire) {
            killed_under_load += 1;
        }
        connector.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        connector = start_connector(&env).await;
    }
    device.await.expect("device published everything and Mosquitto acked it");
    assert!(killed_under_load > 0, "the connector was never killed while the device was publishing");

    let seen = wait_for_numbers(&danube, "/default/meters", N, Duration::from_secs(90)).await;
    let missing: Vec<usize> = (0..N).filter(|n| !seen.contains(n)).take(20).collect();
    assert!(missing.is_empty(), "lost {} messages, first: {missing:?}\n{}", N - seen.len(), connector.log());
    let stored = danube.messages("/default/meters").len();
    println!("kill -9 x2 under load: {N} distinct messages in Danube, {} duplicates (at least once)", stored - N);
    assert!(stored >= N);
}

/// SIGTERM while QoS 1 messages are in flight: the intake stops, every message already
/// taken is published, acked by Danube and PUBACKed before DISCONNECT, and the process
/// exits 0. A restart gets exactly the rest from the persistent session: no loss, and no
/// duplicate (nothing that reached Danube was left un-PUBACKed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_messages_and_exits_0() {
    const N: usize = 3000;
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = client_env(&danube, mqtt.port(), "it-drain", r#"[{filter="drain/#", topic="/default/drain", qos=1}]"#);
    let mut connector = start_connector(&env).await;

    let mut device = TestClient::connect(mqtt.port(), "device-drain");
    device.publish_many(N, QoS::AtLeastOnce, |n| (format!("drain/d{}", n % 5), n.to_string().into_bytes())).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while danube.messages("/default/drain").len() < N / 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = connector.terminate(Duration::from_secs(30)).await.expect("exited within 30s");
    let log = connector.log();
    assert!(status.success(), "exit status {status}\n{log}");
    assert!(crate::common::plain(&log).contains("drained=true"), "the runtime drained:\n{log}");
    let at_stop = danube.messages("/default/drain").len();
    assert!(at_stop < N, "the stop happened mid-stream ({at_stop}/{N} already in Danube)");

    let _again = start_connector(&env).await;
    let seen = wait_for_numbers(&danube, "/default/drain", N, Duration::from_secs(60)).await;
    assert_eq!(seen.len(), N, "every message is in Danube after the restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        danube.messages("/default/drain").len(),
        N,
        "no duplicates: everything taken before SIGTERM was PUBACKed"
    );
}

/// Mosquitto restarts mid-stream (sessions persisted): a device with a persistent session
/// keeps publishing numbered QoS 1 messages before, during and after the restart (it
/// reconnects by itself and resends what was not acked). The restart happens while the
/// device is still publishing and before half the messages are in Danube; the connector
/// reconnects, resumes its session, and nothing published at QoS 1 is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_nothing_at_qos1() {
    const N: usize = 6000;
    const CHUNK: usize = 50;
    let mut mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = client_env(&danube, mqtt.port(), "it-outage", r#"[{filter="grid/+", topic="/default/grid", qos=1}]"#);
    let connector = start_connector(&env).await;

    let port = mqtt.port();
    let publishing = Arc::new(AtomicBool::new(true));
    let device = tokio::spawn({
        let publishing = publishing.clone();
        async move {
            // Paced (about 1000 messages/s) so the stream lasts several seconds.
            let mut device = TestClient::connect_with_session(port, "device-outage", false);
            for chunk in 0..N / CHUNK {
                device
                    .publish_many(CHUNK, QoS::AtLeastOnce, |i| {
                        let n = chunk * CHUNK + i;
                        (format!("grid/g{}", n % 3), n.to_string().into_bytes())
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            publishing.store(false, Ordering::Release);
        }
    });

    // Restart once the stream is flowing into Danube.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while danube.message_count("/default/grid") < N / 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = danube.message_count("/default/grid");
    assert!(before >= N / 10, "the stream never started ({before} in Danube)\n{}", connector.log());
    assert!(before < N / 2, "not mid-stream: {before}/{N} already in Danube");
    assert!(publishing.load(Ordering::Acquire), "the device had already finished publishing");
    tokio::task::block_in_place(|| mqtt.restart()).expect("mosquitto restarted");
    assert!(publishing.load(Ordering::Acquire), "the device was still publishing after the restart");

    device.await.expect("the device published everything across the restart and Mosquitto acked it");
    let seen = wait_for_numbers(&danube, "/default/grid", N, Duration::from_secs(90)).await;
    let missing: Vec<usize> = (0..N).filter(|n| !seen.contains(n)).take(20).collect();
    assert!(missing.is_empty(), "lost {} messages, first: {missing:?}\n{}", N - seen.len(), connector.log());
    assert!(connector.log().contains("MQTT connection lost"), "the outage was seen:\n{}", connector.log());
    println!(
        "broker outage: restarted with {before}/{N} in Danube; all {N} arrived, {} duplicates",
        danube.message_count("/default/grid") - N
    );
}

/// A bad value is refused at startup with exit code 1 and an error naming its field.
#[tokio::test]
async fn bad_config_names_the_field() {
    // The last four are cross-section checks (connector and `sink.topics`): `--check`
    // refuses them as the binary does at start.
    let cases: [(&[(&str, &str)], &str); 9] = [
        (&[("MQTT_MAPPINGS", r#"[{filter="a/#/b", topic="/default/a"}]"#)], "connector.mappings[0].filter"),
        (&[("MQTT_MAPPINGS", r#"[{filter="a/+", topic="/default/x-{4}"}]"#)], "connector.mappings[0].topic"),
        (&[("MQTT_MODE", "client")], "connector.mappings"),
        (
            &[("MQTT_MAPPINGS", r#"[{filter="a", topic="/default/a"}]"#), ("MQTT_BROKER__KEEP_ALIVE", "2s")],
            "connector.broker.keep_alive",
        ),
        (
            &[
                ("MQTT_MAPPINGS", r#"[{filter="a", topic="/default/a"}]"#),
                ("MQTT_BROKER__TLS", r#"{ca="/nonexistent/ca.pem"}"#),
            ],
            "connector.broker.tls.ca",
        ),
        (&[("MQTT_MODE", "off"), ("MQTT_OUTBOUND", r#"{topic="commands/{key}"}"#)], "sink.topics"),
        (
            &[
                ("MQTT_MAPPINGS", r#"[{filter="a", topic="/default/a"}]"#),
                ("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/commands"}]"#),
            ],
            "connector.outbound",
        ),
        (&[("MQTT_MODE", "off")], "connector.mode"),
        (
            &[
                ("MQTT_MAPPINGS", r#"[{filter="in/#", topic="/default/inbound"}]"#),
                ("MQTT_OUTBOUND", "{}"),
                ("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/inbound"}]"#),
            ],
            "connector.outbound.topic",
        ),
    ];
    for (env, field) in cases {
        for check in [true, false] {
            let mut command = std::process::Command::new(crate::common::binary());
            if check {
                command.arg("--check");
            }
            command.env("DANUBE_SERVICE_URL", "http://127.0.0.1:1").env("CONNECTOR_OPS__ENABLED", "false");
            for (k, v) in env {
                command.env(k, v);
            }
            let output = command.output().expect("run danube-mqtt");
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{env:?} (check={check}): {stderr}");
            assert!(stderr.contains(field), "{env:?} (check={check}) must name {field}: {stderr}");
        }
    }
}
