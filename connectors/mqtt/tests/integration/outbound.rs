//! Outbound (Danube -> MQTT) against a real Mosquitto, and both directions in one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{client_env, plain, start_connector, TestClient};
use danube_connect_testkit::mosquitto::Mosquitto;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use rumqttc::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn danube_messages_are_published_to_mqtt_and_acked_after_puback() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = HashMap::from([
        ("DANUBE_SERVICE_URL".to_string(), danube.url()),
        ("CONNECTOR_NAME".to_string(), "mqtt-out".to_string()),
        ("MQTT_MODE".to_string(), "off".to_string()),
        ("MQTT_BROKER__PORT".to_string(), mqtt.port().to_string()),
        ("MQTT_BROKER__CLIENT_ID".to_string(), "it-out".to_string()),
        ("MQTT_OUTBOUND".to_string(), r#"{topic="devices/{attr:device}/cmd", qos=1, retain=true}"#.to_string()),
        ("CONNECTOR_SINK__TOPICS".to_string(), r#"[{topic="/default/commands"}]"#.to_string()),
    ]);
    // Topics must exist before a consumer subscribes (as on a real broker); a new
    // subscription starts at the end, so this message is not delivered.
    danube.publish("/default/commands", b"before".to_vec(), HashMap::new(), None);
    let connector = start_connector(&env).await;
    assert!(
        danube.wait_for_consumers("/default/commands", "mqtt-out", 1, Duration::from_secs(20)).await,
        "{}",
        connector.log()
    );

    let mut subscriber = TestClient::connect(mqtt.port(), "sub-out");
    subscriber.subscribe("devices/#", QoS::AtLeastOnce).await;
    for i in 0..20 {
        let attrs = HashMap::from([("device".to_string(), format!("d{}", i % 2))]);
        danube.publish("/default/commands", i.to_string().into_bytes(), attrs, None);
    }
    // A message whose template cannot render goes to the dead-letter topic.
    danube.publish("/default/commands", b"no-device".to_vec(), HashMap::new(), None);

    let mut got = Vec::new();
    while got.len() < 20 {
        let Some(p) = subscriber.next_message(Duration::from_secs(20)).await else { break };
        got.push((p.topic.clone(), String::from_utf8_lossy(&p.payload).to_string()));
    }
    assert_eq!(got.len(), 20, "every Danube message reached MQTT");
    let d0: Vec<&str> = got.iter().filter(|(t, _)| t == "devices/d0/cmd").map(|(_, p)| p.as_str()).collect();
    assert_eq!(d0, ["0", "2", "4", "6", "8", "10", "12", "14", "16", "18"]);
    let dlq = danube.wait_for_messages("/default/dlq-mqtt-out", 1, Duration::from_secs(20)).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(&dlq[0].payload[..], b"no-device");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while danube.ack_count("/default/commands", "mqtt-out") < 21 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(danube.ack_count("/default/commands", "mqtt-out"), 21);

    // retain = true: a late subscriber still gets the last command per device.
    let mut late = TestClient::connect(mqtt.port(), "sub-late");
    late.subscribe("devices/d1/cmd", QoS::AtLeastOnce).await;
    let retained = late.next_message(Duration::from_secs(10)).await.expect("retained message");
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], b"19");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_bridges_both_ways_round_trip() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let mut env = client_env(&danube, mqtt.port(), "it-both", r#"[{filter="in/#", topic="/default/inbound", qos=1}]"#);
    // `:levels`: the inbound topic's levels are kept under `echo/`.
    env.insert("MQTT_OUTBOUND".into(), r#"{topic="echo/{key:levels}", qos=1}"#.into());
    env.insert("CONNECTOR_SINK__TOPICS".into(), r#"[{topic="/default/inbound"}]"#.into());
    danube.publish("/default/inbound", b"before".to_vec(), HashMap::new(), None);
    let connector = start_connector(&env).await;
    assert!(
        danube.wait_for_consumers("/default/inbound", "mqtt-test", 1, Duration::from_secs(20)).await,
        "{}",
        connector.log()
    );

    let mut subscriber = TestClient::connect(mqtt.port(), "sub-echo");
    subscriber.subscribe("echo/#", QoS::AtLeastOnce).await;
    let mut device = TestClient::connect(mqtt.port(), "device-both");
    device.publish_many(10, QoS::AtLeastOnce, |i| (format!("in/dev{i}"), format!("m{i}").into_bytes())).await;

    let mut echoed = Vec::new();
    while echoed.len() < 10 {
        let Some(p) = subscriber.next_message(Duration::from_secs(20)).await else { break };
        echoed.push((p.topic.clone(), String::from_utf8_lossy(&p.payload).to_string()));
    }
    echoed.sort();
    let mut expected: Vec<(String, String)> = (0..10).map(|i| (format!("echo/in/dev{i}"), format!("m{i}"))).collect();
    expected.sort();
    assert_eq!(echoed, expected, "MQTT -> Danube -> MQTT");
}

/// Both ways with the default outbound topic `{attr:mqtt.topic}` on a Danube topic an
/// inbound mapping feeds would send every message back where it came from, forever: the
/// connector refuses to start (exit 1, the error names the field) instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_loop_back_to_the_source_topic_is_refused() {
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let mut env = client_env(&danube, mqtt.port(), "it-loop", r#"[{filter="in/#", topic="/default/inbound", qos=1}]"#);
    env.insert("MQTT_OUTBOUND".into(), "{}".into());
    env.insert("CONNECTOR_SINK__TOPICS".into(), r#"[{topic="/default/inbound"}]"#.into());
    let mut connector = ConnectorProcess::spawn(crate::common::binary(), &env).expect("spawn danube-mqtt");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = connector.try_wait() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "still running:\n{}", connector.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = plain(&connector.log());
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("connector.outbound.topic") && log.contains("endless loop"), "{log}");
    assert_eq!(danube.message_count("/default/inbound"), 0);
}

/// Environment for an outbound-only connector named `name` sending `/default/commands` to
/// MQTT topic `load/{key}` at QoS 1.
fn outbound_env(danube: &EmbeddedBroker, mqtt_port: u16, name: &str) -> HashMap<String, String> {
    HashMap::from([
        ("DANUBE_SERVICE_URL".to_string(), danube.url()),
        ("CONNECTOR_NAME".to_string(), name.to_string()),
        ("MQTT_MODE".to_string(), "off".to_string()),
        ("MQTT_BROKER__PORT".to_string(), mqtt_port.to_string()),
        ("MQTT_BROKER__CLIENT_ID".to_string(), name.to_string()),
        ("MQTT_BROKER__RECONNECT_INITIAL_BACKOFF".to_string(), "100ms".to_string()),
        ("MQTT_OUTBOUND".to_string(), r#"{topic="load/{key}", qos=1}"#.to_string()),
        ("CONNECTOR_SINK__TOPICS".to_string(), r#"[{topic="/default/commands"}]"#.to_string()),
    ])
}

/// Kill test, Danube -> MQTT: Danube messages keep arriving while the connector is killed
/// with -9 twice and restarted. A message is acked in Danube only after Mosquitto's
/// PUBACK, so one acked but never published would be missing at the end; the unacked
/// rest is redelivered by the durable subscription. The subscriber stays connected
/// throughout and must see all N (duplicates allowed, counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_acked_messages_survive_kill_9() {
    const N: usize = 1500;
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = outbound_env(&danube, mqtt.port(), "mqtt-out-kill");
    danube.publish("/default/commands", b"before".to_vec(), HashMap::new(), None);
    let mut connector = start_connector(&env).await;
    assert!(danube.wait_for_consumers("/default/commands", "mqtt-out-kill", 1, Duration::from_secs(20)).await);

    let mut subscriber = TestClient::connect(mqtt.port(), "sub-out-kill");
    subscriber.subscribe("load/#", QoS::AtLeastOnce).await;
    let received = Arc::new(Mutex::new(Vec::<usize>::new()));
    let collector = tokio::spawn({
        let received = received.clone();
        async move {
            while let Some(p) = subscriber.next_message(Duration::from_secs(60)).await {
                if let Some(n) = std::str::from_utf8(&p.payload).ok().and_then(|s| s.parse().ok()) {
                    received.lock().unwrap().push(n);
                }
            }
        }
    });
    let count = |received: &Arc<Mutex<Vec<usize>>>| received.lock().unwrap().len();

    let producer = tokio::spawn({
        let danube = danube.clone();
        async move {
            for n in 0..N {
                danube.publish(
                    "/default/commands",
                    n.to_string().into_bytes(),
                    HashMap::new(),
                    Some(format!("k{}", n % 4)),
                );
                if n % 25 == 24 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    for round in 0..2 {
        let target = (round + 1) * N / 4;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while count(&received) < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(count(&received) < N, "killed under load");
        connector.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Not waiting for /readyz (the sink's health is probed every few seconds): the
        // next kill comes as soon as the new process has delivered more messages.
        connector = ConnectorProcess::spawn(crate::common::binary(), &env).expect("respawn danube-mqtt");
    }
    producer.await.expect("producer");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let distinct: std::collections::BTreeSet<usize> = received.lock().unwrap().iter().copied().collect();
        if distinct.len() >= N || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = received.lock().unwrap().clone();
    let distinct: std::collections::BTreeSet<usize> = all.iter().copied().collect();
    let missing: Vec<usize> = (0..N).filter(|n| !distinct.contains(n)).take(20).collect();
    assert!(missing.is_empty(), "lost {} messages, first: {missing:?}\n{}", N - distinct.len(), connector.log());
    println!("outbound kill -9 x2 under load: {N} distinct messages on MQTT, {} duplicates", all.len() - N);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while danube.unacked_count("/default/commands", "mqtt-out-kill") > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(danube.unacked_count("/default/commands", "mqtt-out-kill"), 0, "everything acked in Danube in the end");
    collector.abort();
}

/// SIGTERM while Danube messages are being sent to MQTT: the message being published is
/// finished (PUBACK, then Danube ack), the process exits 0, and a restart sends the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_sigterm_drains_and_exits_0() {
    const N: usize = 400;
    let mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = outbound_env(&danube, mqtt.port(), "mqtt-out-drain");
    danube.publish("/default/commands", b"before".to_vec(), HashMap::new(), None);
    let mut connector = start_connector(&env).await;
    assert!(danube.wait_for_consumers("/default/commands", "mqtt-out-drain", 1, Duration::from_secs(20)).await);
    let mut subscriber = TestClient::connect(mqtt.port(), "sub-out-drain");
    subscriber.subscribe("load/#", QoS::AtLeastOnce).await;
    for n in 0..N {
        danube.publish("/default/commands", n.to_string().into_bytes(), HashMap::new(), Some("k".into()));
    }
    let mut got = Vec::new();
    while got.len() < N / 10 {
        let p = subscriber.next_message(Duration::from_secs(20)).await.expect("messages flow");
        got.push(String::from_utf8_lossy(&p.payload).parse::<usize>().unwrap());
    }
    let status = connector.terminate(Duration::from_secs(30)).await.expect("exited within 30s");
    assert!(status.success(), "exit status {status}\n{}", connector.log());
    assert!(crate::common::plain(&connector.log()).contains("drained=true"), "{}", connector.log());
    let acked = danube.ack_count("/default/commands", "mqtt-out-drain") as usize;
    assert!(acked < N, "stopped mid-stream ({acked}/{N} acked)");

    let _again = start_connector(&env).await;
    while let Some(p) = subscriber.next_message(Duration::from_secs(10)).await {
        got.push(String::from_utf8_lossy(&p.payload).parse::<usize>().unwrap());
        if got.iter().collect::<std::collections::BTreeSet<_>>().len() == N {
            break;
        }
    }
    let distinct: std::collections::BTreeSet<usize> = got.iter().copied().collect();
    assert_eq!(distinct.len(), N, "every message reached MQTT");
    // One routing key: the order on MQTT is the Danube order (a redelivered message may
    // repeat, never jump ahead).
    let mut highest = None;
    for n in &got {
        assert!(highest.is_none_or(|h| *n <= h + 1), "out of order at {n} after {highest:?}: {got:?}");
        highest = Some(highest.map_or(*n, |h: usize| h.max(*n)));
    }
}

/// The MQTT broker restarts while Danube messages are being sent to it: the publish in
/// flight fails as retryable (not acked in Danube), the connector reconnects and every
/// message reaches the (persistent-session) subscriber; nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_survives_an_mqtt_broker_restart() {
    const N: usize = 600;
    let mut mqtt = Mosquitto::start().expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let env = outbound_env(&danube, mqtt.port(), "mqtt-out-outage");
    danube.publish("/default/commands", b"before".to_vec(), HashMap::new(), None);
    let connector = start_connector(&env).await;
    assert!(danube.wait_for_consumers("/default/commands", "mqtt-out-outage", 1, Duration::from_secs(20)).await);
    let mut subscriber = TestClient::connect_with_session(mqtt.port(), "sub-out-outage", false);
    subscriber.subscribe("load/#", QoS::AtLeastOnce).await;

    let producer = tokio::spawn({
        let danube = danube.clone();
        async move {
            for n in 0..N {
                danube.publish(
                    "/default/commands",
                    n.to_string().into_bytes(),
                    HashMap::new(),
                    Some(format!("k{}", n % 3)),
                );
                if n % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let mut got = std::collections::BTreeSet::new();
    let mut restarted = false;
    while got.len() < N {
        let Some(p) = subscriber.next_message(Duration::from_secs(30)).await else { break };
        if let Some(n) = std::str::from_utf8(&p.payload).ok().and_then(|s| s.parse::<usize>().ok()) {
            got.insert(n);
        }
        if !restarted && got.len() >= N / 4 {
            mqtt.restart().expect("mosquitto restarted");
            restarted = true;
        }
    }
    producer.await.expect("producer");
    let missing: Vec<usize> = (0..N).filter(|n| !got.contains(n)).take(20).collect();
    assert!(missing.is_empty(), "lost {} messages, first: {missing:?}\n{}", N - got.len(), connector.log());
    assert!(
        plain(&connector.log()).contains("outbound MQTT connection lost"),
        "the outage was seen:\n{}",
        connector.log()
    );
    assert!(danube.messages("/default/dlq-mqtt-out-outage").is_empty(), "nothing dead-lettered");
}
