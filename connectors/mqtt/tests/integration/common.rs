//! Shared helpers: a real Mosquitto, the in-process Danube broker, the connector binary,
//! and an MQTT test client.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, Publish, QoS};
use tokio::sync::mpsc;

/// The connector binary under test.
pub(crate) fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_danube-mqtt"))
}

/// Environment for a client-mode connector on `mqtt_port` feeding `danube`.
pub(crate) fn client_env(
    danube: &EmbeddedBroker,
    mqtt_port: u16,
    client_id: &str,
    mappings: &str,
) -> HashMap<String, String> {
    HashMap::from([
        ("DANUBE_SERVICE_URL".to_string(), danube.url()),
        ("CONNECTOR_NAME".to_string(), "mqtt-test".to_string()),
        ("MQTT_BROKER__HOST".to_string(), "127.0.0.1".to_string()),
        ("MQTT_BROKER__PORT".to_string(), mqtt_port.to_string()),
        ("MQTT_BROKER__CLIENT_ID".to_string(), client_id.to_string()),
        ("MQTT_BROKER__RECONNECT_INITIAL_BACKOFF".to_string(), "100ms".to_string()),
        ("MQTT_BROKER__RECONNECT_MAX_BACKOFF".to_string(), "1s".to_string()),
        ("MQTT_MAPPINGS".to_string(), mappings.to_string()),
    ])
}

/// Starts the connector and waits until it is subscribed and ready.
pub(crate) async fn start_connector(env: &HashMap<String, String>) -> ConnectorProcess {
    let mut process = ConnectorProcess::spawn(binary(), env).expect("spawn danube-mqtt");
    if let Err(e) = process.wait_ready(Duration::from_secs(30)).await {
        panic!("connector not ready: {e}\n{}", process.log());
    }
    process
}

/// Numbers carried by the payloads stored on `topic`.
pub(crate) fn numbers(danube: &EmbeddedBroker, topic: &str) -> BTreeSet<usize> {
    danube.messages(topic).iter().filter_map(|m| std::str::from_utf8(&m.payload).ok()?.parse().ok()).collect()
}

/// Waits until `topic` holds every number in `0..n` (duplicates allowed).
pub(crate) async fn wait_for_numbers(
    danube: &EmbeddedBroker,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> BTreeSet<usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = numbers(danube, topic);
        if seen.len() >= n || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An MQTT test client (a device or a subscriber) with its event loop running.
pub(crate) struct TestClient {
    /// The client handle.
    pub client: AsyncClient,
    acks: mpsc::UnboundedReceiver<()>,
    /// Publishes received (for subscribers).
    pub received: mpsc::UnboundedReceiver<Publish>,
    subacks: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    /// Connects as `id` (clean session); acknowledgements of its QoS 1 publishes (and
    /// QoS 0 writes) are counted.
    pub(crate) fn connect(port: u16, id: &str) -> Self {
        Self::connect_with_session(port, id, true)
    }

    /// Connects as `id`; `clean_session = false` keeps its subscriptions and queued
    /// messages at the broker across reconnects (the event loop reconnects by itself).
    pub(crate) fn connect_with_session(port: u16, id: &str, clean_session: bool) -> Self {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5)).set_clean_session(clean_session);
        Self::connect_with(options)
    }

    /// Connects with `options` (login, TLS, ...); at most 100 QoS 1 publishes in flight.
    pub(crate) fn connect_with(mut options: MqttOptions) -> Self {
        options.set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (rx_tx, received) = mpsc::unbounded_channel();
        let (sub_tx, subacks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(0))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = rx_tx.send(p);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self { client, acks, received, subacks, task }
    }

    /// Publishes and waits for the broker's acknowledgement.
    pub(crate) async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos, retain, payload).await.expect("queue publish");
        tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("broker acknowledged the publish")
            .expect("event loop running");
    }

    /// Publishes `count` messages without waiting between them, then waits for all acks.
    pub(crate) async fn publish_many(
        &mut self,
        count: usize,
        qos: QoS,
        mut message: impl FnMut(usize) -> (String, Vec<u8>),
    ) {
        for i in 0..count {
            let (topic, payload) = message(i);
            self.client.publish(topic, qos, false, payload).await.expect("queue publish");
        }
        for _ in 0..count {
            tokio::time::timeout(Duration::from_secs(20), self.acks.recv())
                .await
                .expect("broker acknowledged every publish")
                .expect("event loop running");
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("queue subscribe");
        tokio::time::timeout(Duration::from_secs(10), self.subacks.recv())
            .await
            .expect("SUBACK")
            .expect("event loop running");
    }

    /// The next received publish, if one comes within `timeout`.
    pub(crate) async fn next_message(&mut self, timeout: Duration) -> Option<Publish> {
        tokio::time::timeout(timeout, self.received.recv()).await.ok().flatten()
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `log` without ANSI colour sequences (the connector colours its log fields).
pub(crate) fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
