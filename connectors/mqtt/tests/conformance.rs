//! Conformance of the MQTT bridge on both brokers: the development broker always, the real
//! Danube broker when `DANUBE_BROKER_BIN` names it. Each test body runs once per broker
//! (`BrokerKind::all()`) and names the broker in every assertion.
//!
//! Inbound (MQTT -> Danube) in client mode against a real Mosquitto and in embedded mode
//! (the connector's own rumqttd); outbound (Danube -> MQTT) against Mosquitto. The connector
//! is the `danube-mqtt` binary in its own process. Danube is read by a raw `danube-client`
//! consumer subscribed before anything is published, and written by raw producers. Messages
//! carry a number and are counted DISTINCT (at-least-once: duplicates allowed, losses not).
//!
//! Volumes stay modest (at most 600 messages, paced): a reliable subscription of Danube
//! v0.15.1 skips messages when its dispatcher falls more than 256 messages behind the topic
//! (`docs/running-on-danube.md`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use danube_client::Producer;
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::{reliable_producers, TopicReader};
use danube_connect_testkit::mosquitto::Mosquitto;
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use tokio::sync::mpsc;

const BINARY: &str = env!("CARGO_BIN_EXE_danube-mqtt");

/// How far a Danube publisher may run ahead of what the MQTT subscriber received.
const MAX_LEAD: usize = 120;

/// A device or subscriber on an MQTT broker, its event loop running.
struct Device {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<()>,
    subacks: mpsc::UnboundedReceiver<()>,
    /// Numbers carried by the publishes received (subscribers).
    received: Arc<Mutex<BTreeSet<usize>>>,
    /// Publishes received, duplicates included.
    received_total: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    fn connect(port: u16, id: &str, clean_session: bool) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5)).set_inflight(100).set_clean_session(clean_session);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (sub_tx, subacks) = mpsc::unbounded_channel();
        let received = Arc::new(Mutex::new(BTreeSet::new()));
        let received_total = Arc::new(AtomicUsize::new(0));
        let (seen, total) = (received.clone(), received_total.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) | Ok(Event::Outgoing(Outgoing::Publish(0))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        total.fetch_add(1, Ordering::Relaxed);
                        if let Some(n) = std::str::from_utf8(&p.payload).ok().and_then(|t| t.parse().ok()) {
                            seen.lock().expect("lock").insert(n);
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self { client, acks, subacks, received, received_total, task }
    }

    /// Publishes `payloads` on `topic` at QoS 1 and waits until the broker acked each.
    async fn publish_all(&mut self, topic: &str, payloads: impl IntoIterator<Item = Vec<u8>>) {
        let mut sent = 0;
        for payload in payloads {
            self.client.publish(topic, QoS::AtLeastOnce, false, payload).await.expect("queue publish");
            sent += 1;
        }
        for _ in 0..sent {
            tokio::time::timeout(Duration::from_secs(30), self.acks.recv())
                .await
                .expect("the MQTT broker acknowledged every publish")
                .expect("event loop running");
        }
    }

    /// Publishes the numbers of `range` in chunks of 50, 50 ms apart (about 1,000/s).
    async fn publish_numbers(&mut self, topic: &str, range: std::ops::Range<usize>) {
        self.publish_paced(topic, range, 50).await;
    }

    /// Publishes the numbers of `range` in chunks of `chunk`, 50 ms apart.
    async fn publish_paced(&mut self, topic: &str, range: std::ops::Range<usize>, chunk: usize) {
        let numbers: Vec<usize> = range.collect();
        for chunk in numbers.chunks(chunk) {
            let payloads: Vec<Vec<u8>> = chunk.iter().map(|n| n.to_string().into_bytes()).collect();
            self.publish_all(topic, payloads).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.expect("queue subscribe");
        tokio::time::timeout(Duration::from_secs(10), self.subacks.recv()).await.expect("SUBACK").expect("running");
    }

    fn received(&self) -> BTreeSet<usize> {
        self.received.lock().expect("lock").clone()
    }

    async fn wait_received(&self, n: usize, timeout: Duration) -> BTreeSet<usize> {
        let deadline = Instant::now() + timeout;
        while self.received().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.received()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The numbers carried by what `reader` received from Danube.
fn numbers(reader: &TopicReader) -> BTreeSet<usize> {
    reader.messages().iter().filter_map(|m| std::str::from_utf8(&m.payload).ok()?.parse().ok()).collect()
}

/// Waits until `reader` saw `n` distinct numbers or `timeout` passed.
async fn wait_numbers(reader: &TopicReader, n: usize, timeout: Duration) -> BTreeSet<usize> {
    let deadline = Instant::now() + timeout;
    while numbers(reader).len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    numbers(reader)
}

/// Creates `topic` (reliable, as the connector's producers are) and subscribes a reader.
async fn reader(broker: &TestBroker, topic: &str) -> (Vec<Producer>, TopicReader) {
    let kind = broker.kind();
    let maker = reliable_producers(broker.url(), topic, "mk", 1)
        .await
        .unwrap_or_else(|e| panic!("{kind}: create {topic}: {e}"));
    let reader = TopicReader::subscribe(broker.url(), topic, "conformance-reader")
        .await
        .unwrap_or_else(|e| panic!("{kind}: subscribe to {topic}: {e}"));
    (maker, reader)
}

fn missing(seen: &BTreeSet<usize>, n: usize) -> Vec<usize> {
    (0..n).filter(|i| !seen.contains(i)).take(10).collect()
}

/// Waits for readings 0..n on `reader` and asserts every one arrived, naming the missing ones
/// and showing the connector's log otherwise.
async fn assert_good_messages_around_the_dead_letter(
    reader: &TopicReader,
    n: usize,
    kind: BrokerKind,
    connector: &ConnectorProcess,
) {
    let seen = wait_numbers(reader, n, Duration::from_secs(30)).await;
    assert_eq!(
        seen.len(),
        n,
        "{kind}: every good message arrived around the dead letter; missing {:?}\n{}",
        missing(&seen, n),
        connector.log()
    );
}

fn env(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// A client-mode connector: `name` subscribes `filter` on Mosquitto into `topic`.
fn client_env(broker: &TestBroker, mqtt_port: u16, name: &str, filter: &str, topic: &str) -> HashMap<String, String> {
    env(&[
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", name.to_string()),
        ("MQTT_BROKER__HOST", "127.0.0.1".into()),
        ("MQTT_BROKER__PORT", mqtt_port.to_string()),
        ("MQTT_BROKER__CLIENT_ID", name.to_string()),
        ("MQTT_BROKER__RECONNECT_INITIAL_BACKOFF", "100ms".into()),
        ("MQTT_BROKER__RECONNECT_MAX_BACKOFF", "1s".into()),
        ("MQTT_MAPPINGS", format!(r#"[{{filter="{filter}", topic="{topic}", qos=1, format="utf8"}}]"#)),
    ])
}

/// An embedded-mode connector listening on `port`.
fn embedded_env(broker: &TestBroker, port: u16, name: &str, filter: &str, topic: &str) -> HashMap<String, String> {
    env(&[
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", name.to_string()),
        ("MQTT_MODE", "embedded".into()),
        ("MQTT_EMBEDDED__LISTEN", format!("127.0.0.1:{port}")),
        ("MQTT_MAPPINGS", format!(r#"[{{filter="{filter}", topic="{topic}", qos=1, format="utf8"}}]"#)),
    ])
}

/// An outbound-only connector: Danube `topic` to MQTT `out/{attr:device}` at QoS 1.
fn outbound_env(broker: &TestBroker, mqtt_port: u16, name: &str, topic: &str) -> HashMap<String, String> {
    env(&[
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", name.to_string()),
        ("MQTT_MODE", "off".into()),
        ("MQTT_BROKER__PORT", mqtt_port.to_string()),
        ("MQTT_BROKER__CLIENT_ID", name.to_string()),
        ("MQTT_BROKER__RECONNECT_INITIAL_BACKOFF", "100ms".into()),
        ("MQTT_OUTBOUND", r#"{topic="out/{attr:device}", qos=1}"#.into()),
        ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
        ("CONNECTOR_RETRY__INITIAL_BACKOFF", "50ms".into()),
        ("CONNECTOR_RETRY__MAX_BACKOFF", "500ms".into()),
    ])
}

/// Starts the connector and waits until `/readyz` is 200 (and, for a sink, until it is
/// consuming: Danube subscriptions start at the end of a topic).
async fn start(kind: BrokerKind, env: &HashMap<String, String>) -> ConnectorProcess {
    let mut process = ConnectorProcess::spawn(Path::new(BINARY), env).expect("spawn danube-mqtt");
    process.wait_ready(Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{kind}: not ready: {e}"));
    if env.contains_key("CONNECTOR_SINK__TOPICS") {
        process
            .wait_consuming(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{kind}: the sink never subscribed: {e}"));
    }
    process
}

/// The real broker's last warnings and errors (empty for the dev broker).
fn broker_trouble(broker: &TestBroker) -> String {
    let log = broker.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Publishes the numbers of `range` to Danube with attribute `device`, round robin over
/// `producers`, never more than [`MAX_LEAD`] ahead of what `subscriber` received. A failed
/// send (the broker is away) is retried.
async fn publish_to_danube(producers: &[Producer], range: std::ops::Range<usize>, subscriber: &AtomicUsize) {
    for i in range {
        while i > subscriber.load(Ordering::Relaxed) + MAX_LEAD {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let attributes = HashMap::from([("device".to_string(), format!("d{}", i % 3))]);
        let mut failures = 0;
        while let Err(error) =
            producers[i % producers.len()].send(i.to_string().into_bytes(), Some(attributes.clone())).await
        {
            failures += 1;
            assert!(failures < 200, "publishing {i} failed for a minute: {error}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

// ---------------------------------------------------------------- inbound, client mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_every_device_message_reaches_danube_as_a_distinct_record() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let mqtt = Mosquitto::start().expect("mosquitto");
        let topic = "/default/mq_client";
        let (_maker, reader) = reader(&broker, topic).await;
        let _connector = start(kind, &client_env(&broker, mqtt.port(), "mq-client", "meters/#", topic)).await;
        let mut device = Device::connect(mqtt.port(), "device-e2e", true);
        let n = 500;
        device.publish_numbers("meters/m1", 0..n).await;
        let seen = wait_numbers(&reader, n, Duration::from_secs(30)).await;
        assert_eq!(seen.len(), n, "{kind}: missing {:?}\n{}", missing(&seen, n), broker_trouble(&broker));
        let first = &reader.messages()[0];
        assert_eq!(first.attributes.get("mqtt.topic").map(String::as_str), Some("meters/m1"), "{kind}");
        assert_eq!(first.routing_key.as_deref(), Some("meters/m1"), "{kind}: the MQTT topic is the routing key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_kill_9_under_load_loses_nothing_the_mqtt_broker_acked() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let mqtt = Mosquitto::start().expect("mosquitto");
        let topic = "/default/mq_kill";
        let (_maker, reader) = reader(&broker, topic).await;
        let env = client_env(&broker, mqtt.port(), "mq-kill", "meters/#", topic);
        let mut connector = start(kind, &env).await;
        let n = 600;
        let publishing = Arc::new(AtomicBool::new(true));
        let device = tokio::spawn({
            let (port, publishing) = (mqtt.port(), publishing.clone());
            async move {
                let mut device = Device::connect(port, "device-kill", true);
                // At most 200 messages/s: the kill falls while the device publishes.
                device.publish_paced("meters/m2", 0..n, 10).await;
                publishing.store(false, Ordering::Release);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while reader.count() < 150 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            publishing.load(Ordering::Acquire),
            "{kind}: killed while the device publishes ({} in Danube): {}",
            reader.count(),
            connector.log()
        );
        connector.kill9();
        let at_kill = numbers(&reader).len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let connector = start(kind, &env).await;
        device.await.expect("Mosquitto acked every publish");
        let seen = wait_numbers(&reader, n, Duration::from_secs(45)).await;
        assert_eq!(
            seen.len(),
            n,
            "{kind}: kill -9 at {at_kill}: missing {:?}\n{}\n{}",
            missing(&seen, n),
            connector.log(),
            broker_trouble(&broker)
        );
        println!("{kind}: client mode kill -9 at {at_kill}: {} records for {n} messages", reader.count());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_a_danube_outage_mid_stream_loses_nothing_the_mqtt_broker_acked() {
    for kind in BrokerKind::all() {
        let mut broker = TestBroker::start_persistent(kind).await.expect("broker starts");
        let mqtt = Mosquitto::start().expect("mosquitto");
        let topic = "/default/mq_outage";
        let (_maker, reader) = reader(&broker, topic).await;
        let connector = start(kind, &client_env(&broker, mqtt.port(), "mq-outage", "meters/#", topic)).await;
        let n = 600;
        let device = tokio::spawn({
            let port = mqtt.port();
            async move {
                let mut device = Device::connect(port, "device-outage", true);
                device.publish_numbers("meters/m3", 0..n).await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while reader.count() < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = numbers(&reader).len();
        assert!((100..n).contains(&before), "{kind}: mid-stream ({before} of {n})");
        broker.outage(Duration::from_secs(3)).await.expect("outage");
        device.await.expect("Mosquitto acked every publish");
        let seen = wait_numbers(&reader, n, Duration::from_secs(45)).await;
        assert_eq!(
            seen.len(),
            n,
            "{kind}: 3 s outage at {before}: missing {:?}\n{}\n{}",
            missing(&seen, n),
            connector.log(),
            broker_trouble(&broker)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_a_payload_failing_its_check_lands_in_the_dead_letter_topic() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let mqtt = Mosquitto::start().expect("mosquitto");
        let (topic, dlq) = ("/default/mq_dlq", "/default/dlq-mq-dlq");
        let (_maker, reader) = reader(&broker, topic).await;
        let (_dlq_maker, dead) = {
            let maker = reliable_producers(broker.url(), dlq, "mk", 1).await.expect("create the DLQ");
            (maker, TopicReader::subscribe(broker.url(), dlq, "dlq-reader").await.expect("subscribe to the DLQ"))
        };
        let connector = start(kind, &client_env(&broker, mqtt.port(), "mq-dlq", "meters/#", topic)).await;
        let mut device = Device::connect(mqtt.port(), "device-dlq", true);
        device.publish_numbers("meters/m4", 0..20).await;
        // Not UTF-8: fails the mapping's `format = "utf8"` check.
        device.publish_all("meters/bad", [vec![0xff, 0xfe, 0x00]]).await;
        device.publish_numbers("meters/m4", 20..40).await;
        let letters = dead.wait_for(1, Duration::from_secs(30)).await;
        assert_eq!(letters.len(), 1, "{kind}: one dead letter");
        let letter = &letters[0];
        assert_eq!(&letter.payload[..], &[0xffu8, 0xfe, 0x00][..], "{kind}: the payload is kept");
        let attr = |k: &str| letter.attributes.get(k).cloned().unwrap_or_default();
        assert!(
            attr("dlq.error").contains("UTF-8") || attr("dlq.error").contains("utf8"),
            "{kind}: {:?}",
            letter.attributes
        );
        assert_eq!(attr("mqtt.topic"), "meters/bad", "{kind}: {:?}", letter.attributes);
        assert_good_messages_around_the_dead_letter(&reader, 40, kind, &connector).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(dead.count(), 1, "{kind}: nothing else was dead-lettered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mode_records_are_validated_and_stamped_with_the_registry_schema() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let mqtt = Mosquitto::start().expect("mosquitto");
        let topic = "/default/mq_schema";
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = dir.path().join("reading.json");
        std::fs::write(&schema, r#"{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}"#)
            .expect("schema file");
        let mut env = client_env(&broker, mqtt.port(), "mq-schema", "readings/#", topic);
        env.insert(
            "CONNECTOR_SCHEMAS".into(),
            format!(r#"[{{topic="{topic}", subject="mq-readings", type="json_schema", file="{}"}}]"#, schema.display()),
        );
        // The runtime creates a schema-bound topic at start (its producers reference the
        // subject); the reader subscribes after that.
        let connector = start(kind, &env).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        let reader = loop {
            match TopicReader::subscribe(broker.url(), topic, "conformance-reader").await {
                Ok(reader) => break reader,
                Err(e) if Instant::now() > deadline => {
                    panic!("{kind}: the connector never created {topic}: {e}\n{}", connector.log())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let mut device = Device::connect(mqtt.port(), "device-schema", true);
        // Warm-up readings until the reader sees one: the whole path is then live.
        let deadline = Instant::now() + Duration::from_secs(20);
        while reader.count() == 0 {
            assert!(Instant::now() < deadline, "{kind}: no warm-up reading arrived: {}", connector.log());
            device.publish_all("readings/r0", [br#"{"n":-1}"#.to_vec()]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        device.publish_all("readings/r1", (0..10).map(|n| format!(r#"{{"n":{n}}}"#).into_bytes())).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let readings = |reader: &TopicReader| -> Vec<_> {
            reader.messages().into_iter().filter(|m| !m.payload.starts_with(br#"{"n":-1}"#)).collect()
        };
        while readings(&reader).len() < 10 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = readings(&reader);
        assert_eq!(
            got.len(),
            10,
            "{kind}: every valid reading arrived: {}\n{}",
            connector.log(),
            broker_trouble(&broker)
        );
        assert!(got.iter().all(|m| m.schema_id.is_some()), "{kind}: every record carries the schema id");
        let values: BTreeSet<i64> = got
            .iter()
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok()?["n"].as_i64())
            .collect();
        assert_eq!(values, (0..10).collect(), "{kind}: the readings are the ones published");
    }
}

// ---------------------------------------------------------------- inbound, embedded mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_every_device_message_reaches_danube_as_a_distinct_record() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let topic = "/default/mq_embedded";
        let (_maker, reader) = reader(&broker, topic).await;
        let port = free_port();
        let _connector = start(kind, &embedded_env(&broker, port, "mq-embedded", "plant/#", topic)).await;
        let mut device = Device::connect(port, "device-embedded", true);
        let n = 500;
        device.publish_numbers("plant/p1", 0..n).await;
        let seen = wait_numbers(&reader, n, Duration::from_secs(30)).await;
        assert_eq!(seen.len(), n, "{kind}: missing {:?}\n{}", missing(&seen, n), broker_trouble(&broker));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_a_danube_outage_mid_stream_loses_nothing() {
    for kind in BrokerKind::all() {
        let mut broker = TestBroker::start_persistent(kind).await.expect("broker starts");
        let topic = "/default/mq_embedded_outage";
        let (_maker, reader) = reader(&broker, topic).await;
        let port = free_port();
        let connector = start(kind, &embedded_env(&broker, port, "mq-emb-out", "plant/#", topic)).await;
        let n = 500;
        let device = tokio::spawn(async move {
            let mut device = Device::connect(port, "device-emb-outage", true);
            device.publish_numbers("plant/p2", 0..n).await;
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while reader.count() < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = numbers(&reader).len();
        assert!((100..n).contains(&before), "{kind}: mid-stream ({before} of {n})");
        broker.outage(Duration::from_secs(3)).await.expect("outage");
        device.await.expect("rumqttd acked every publish");
        let seen = wait_numbers(&reader, n, Duration::from_secs(45)).await;
        assert_eq!(
            seen.len(),
            n,
            "{kind}: 3 s outage at {before}: missing {:?}\n{}\n{}",
            missing(&seen, n),
            connector.log(),
            broker_trouble(&broker)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_a_payload_failing_its_check_lands_in_the_dead_letter_topic() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let (topic, dlq) = ("/default/mq_emb_dlq", "/default/dlq-mq-emb-dlq");
        let (_maker, reader) = reader(&broker, topic).await;
        let _dlq_maker = reliable_producers(broker.url(), dlq, "mk", 1).await.expect("create the DLQ");
        let dead = TopicReader::subscribe(broker.url(), dlq, "dlq-reader").await.expect("subscribe to the DLQ");
        let port = free_port();
        let connector = start(kind, &embedded_env(&broker, port, "mq-emb-dlq", "plant/#", topic)).await;
        let mut device = Device::connect(port, "device-emb-dlq", true);
        device.publish_numbers("plant/p3", 0..20).await;
        device.publish_all("plant/bad", [vec![0xff, 0xfe]]).await;
        device.publish_numbers("plant/p3", 20..40).await;
        let letters = dead.wait_for(1, Duration::from_secs(30)).await;
        assert_eq!(letters.len(), 1, "{kind}: one dead letter");
        assert_eq!(&letters[0].payload[..], &[0xffu8, 0xfe][..], "{kind}: the payload is kept");
        assert!(letters[0].attributes.contains_key("dlq.error"), "{kind}: {:?}", letters[0].attributes);
        assert_good_messages_around_the_dead_letter(&reader, 40, kind, &connector).await;
    }
}

// ---------------------------------------------------------------- outbound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_every_danube_record_is_published_to_mqtt() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let mqtt = Mosquitto::start().expect("mosquitto");
        let topic = "/default/mq_commands";
        let producers = reliable_producers(broker.url(), topic, "cmd", 2).await.expect("producers");
        let mut subscriber = Device::connect(mqtt.port(), "app-e2e", true);
        subscriber.subscribe("out/#").await;
        let connector = start(kind, &outbound_env(&broker, mqtt.port(), "mq-out", topic)).await;
        let n = 400;
        publish_to_danube(&producers, 0..n, &subscriber.received_total).await;
        let seen = subscriber.wait_received(n, Duration::from_secs(30)).await;
        assert_eq!(
            seen.len(),
            n,
            "{kind}: missing {:?}\n{}\n{}",
            missing(&seen, n),
            connector.log(),
            broker_trouble(&broker)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_kill_9_under_load_loses_nothing_danube_had() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let mqtt = Mosquitto::start().expect("mosquitto");
        let topic = "/default/mq_out_kill";
        let producers = reliable_producers(broker.url(), topic, "cmd", 2).await.expect("producers");
        let mut subscriber = Device::connect(mqtt.port(), "app-kill", true);
        subscriber.subscribe("out/#").await;
        let env = outbound_env(&broker, mqtt.port(), "mq-out-kill", topic);
        let mut connector = start(kind, &env).await;
        let n = 500;
        let total = subscriber.received_total.clone();
        let publisher = tokio::spawn(async move {
            publish_to_danube(&producers, 0..n, &total).await;
            producers
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while subscriber.received().len() < 120 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        connector.kill9();
        let at_kill = subscriber.received().len();
        assert!((120..n).contains(&at_kill), "{kind}: killed under load ({at_kill} of {n})");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let connector = start(kind, &env).await;
        let _producers = tokio::time::timeout(Duration::from_secs(60), publisher)
            .await
            .unwrap_or_else(|_| panic!("{kind}: the publisher finished after the restart"))
            .expect("publisher");
        let seen = subscriber.wait_received(n, Duration::from_secs(45)).await;
        assert_eq!(
            seen.len(),
            n,
            "{kind}: kill -9 at {at_kill}: missing {:?}\n{}\n{}",
            missing(&seen, n),
            connector.log(),
            broker_trouble(&broker)
        );
        println!(
            "{kind}: outbound kill -9 at {at_kill}: {} publishes for {n} records",
            subscriber.received_total.load(Ordering::Relaxed)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_a_danube_outage_mid_stream_loses_nothing() {
    for kind in BrokerKind::all() {
        let mut broker = TestBroker::start_persistent(kind).await.expect("broker starts");
        let mqtt = Mosquitto::start().expect("mosquitto");
        let topic = "/default/mq_out_outage";
        let producers = reliable_producers(broker.url(), topic, "cmd", 2).await.expect("producers");
        let mut subscriber = Device::connect(mqtt.port(), "app-outage", true);
        subscriber.subscribe("out/#").await;
        let connector = start(kind, &outbound_env(&broker, mqtt.port(), "mq-out-outage", topic)).await;
        let n = 500;
        let total = subscriber.received_total.clone();
        let publisher = tokio::spawn(async move {
            publish_to_danube(&producers, 0..n, &total).await;
            producers
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while subscriber.received().len() < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = subscriber.received().len();
        assert!((100..n).contains(&before), "{kind}: mid-stream ({before} of {n})");
        broker.outage(Duration::from_secs(3)).await.expect("outage");
        let _producers = tokio::time::timeout(Duration::from_secs(90), publisher)
            .await
            .unwrap_or_else(|_| panic!("{kind}: the publisher finished after the outage: {}", connector.log()))
            .expect("publisher");
        let seen = subscriber.wait_received(n, Duration::from_secs(45)).await;
        assert_eq!(
            seen.len(),
            n,
            "{kind}: 3 s outage at {before}: missing {:?}\n{}\n{}",
            missing(&seen, n),
            connector.log(),
            broker_trouble(&broker)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_a_record_without_a_topic_lands_in_the_dead_letter_topic() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let mqtt = Mosquitto::start().expect("mosquitto");
        let (topic, dlq) = ("/default/mq_out_dlq", "/default/dlq-mq-out-dlq");
        let producers = reliable_producers(broker.url(), topic, "cmd", 2).await.expect("producers");
        let _dlq_maker = reliable_producers(broker.url(), dlq, "mk", 1).await.expect("create the DLQ");
        let dead = TopicReader::subscribe(broker.url(), dlq, "dlq-reader").await.expect("subscribe to the DLQ");
        let mut subscriber = Device::connect(mqtt.port(), "app-dlq", true);
        subscriber.subscribe("out/#").await;
        let _connector = start(kind, &outbound_env(&broker, mqtt.port(), "mq-out-dlq", topic)).await;
        publish_to_danube(&producers, 0..20, &subscriber.received_total).await;
        // No `device` attribute: `out/{attr:device}` cannot be rendered.
        let attributes = HashMap::from([("origin".to_string(), "conformance".to_string())]);
        producers[0].send(b"orphan".to_vec(), Some(attributes)).await.expect("publish the orphan");
        publish_to_danube(&producers, 20..40, &subscriber.received_total).await;
        let letters = dead.wait_for(1, Duration::from_secs(30)).await;
        assert_eq!(letters.len(), 1, "{kind}: one dead letter");
        let letter = &letters[0];
        assert_eq!(&letter.payload[..], &b"orphan"[..], "{kind}: the payload is kept");
        let attr = |k: &str| letter.attributes.get(k).cloned().unwrap_or_default();
        assert!(attr("dlq.error").contains("device"), "{kind}: dlq.error names the attribute: {:?}", letter.attributes);
        assert_eq!(attr("dlq.source_topic"), topic, "{kind}: {:?}", letter.attributes);
        assert_eq!(attr("origin"), "conformance", "{kind}: the record's own attributes are kept");
        let seen = subscriber.wait_received(40, Duration::from_secs(30)).await;
        assert_eq!(seen.len(), 40, "{kind}: every other record reached MQTT");
    }
}
