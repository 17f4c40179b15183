//! Throughput of the MQTT bridge in client mode: messages/s from a real Mosquitto to
//! Danube's ack, at QoS 0 and QoS 1, beside two baselines measured in the same run:
//! - a raw rumqttc subscriber reading the same messages from the same Mosquitto;
//! - raw danube-client publishes (the connector's producer pool size, reliable dispatch)
//!   to the same in-process Danube broker: plain, and with what the connector sends per
//!   record (the MQTT topic as routing key and the four `mqtt.*` attributes).
//!
//! Progress is polled with `EmbeddedBroker::message_count` (a count under the topic lock,
//! no copy), so the poll does not slow down the broker it measures.
//!
//! Also prints the connector process's resident memory (VmRSS and peak VmHWM).
//!
//! Run: `cargo bench -p danube-connector-mqtt` (set `BENCH_MQTT_MESSAGES` to change N).
//!
//! `BENCH_BROKER=real` (with `DANUBE_BROKER_BIN` naming the real Danube broker) runs the
//! QoS 1 connector run and both raw `danube-client` baselines against a real broker started
//! for the run; progress is then read from the broker's own exporter
//! (`danube_topic_messages_in_total`), polled every 20 ms.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::mosquitto::Mosquitto;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};

const PAYLOAD: usize = 128;
const PRODUCERS: usize = 4;

fn main() {
    let n: usize = std::env::var("BENCH_MQTT_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if std::env::var("BENCH_BROKER").as_deref() == Ok("real") {
        runtime.block_on(real::run(n));
        return;
    }
    runtime.block_on(run(n));
}

async fn run(n: usize) {
    let mqtt = Mosquitto::start_with(false).expect("mosquitto (apt-get install -y mosquitto)");
    let danube = EmbeddedBroker::start_default().await.expect("in-process Danube broker");
    println!("mqtt bridge throughput: {n} messages of {PAYLOAD} bytes, Mosquitto on 127.0.0.1:{}", mqtt.port());

    let raw_plain = raw_danube_rate(danube.url(), n, false).await;
    println!(
        "baseline  raw danube-client publish ({PRODUCERS} producers, reliable):             {raw_plain:>9.0} msg/s"
    );
    let raw_danube = raw_danube_rate(danube.url(), n, true).await;
    println!("baseline  raw danube-client publish, key + 4 attributes (like the connector): {raw_danube:>9.0} msg/s");

    for (qos, label) in [(QoS::AtMostOnce, "0"), (QoS::AtLeastOnce, "1")] {
        let raw_mqtt = raw_subscriber_rate(mqtt.port(), n, qos).await;
        println!("baseline  raw rumqttc subscriber, QoS {label}:                  {raw_mqtt:>9.0} msg/s");
        let (rate, arrived, rss, hwm) = connector_rate(&mqtt, &danube, n, qos, label).await;
        println!(
            "connector Mosquitto -> Danube ack, QoS {label}:               {rate:>9.0} msg/s  ({arrived}/{n} arrived; {:.2}x raw subscriber, {:.2}x raw keyed Danube publish; RSS {rss} kB, peak {hwm} kB)",
            rate / raw_mqtt,
            rate / raw_danube
        );
    }
}

fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("{i:010}").into_bytes();
    p.resize(PAYLOAD, b'x');
    p
}

/// Raw publishes to Danube; `like_connector` adds the routing key and the four
/// attributes the connector puts on each record.
async fn raw_danube_rate(url: String, n: usize, like_connector: bool) -> f64 {
    let topic = if like_connector { "/default/bench-raw-keyed" } else { "/default/bench-raw" };
    let prefix = format!("bench-raw-{like_connector}");
    let producers = reliable_producers(url, topic, &prefix, PRODUCERS).await.expect("raw producers");
    let started = Instant::now();
    let per = n / PRODUCERS;
    let tasks: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(p, producer)| {
            tokio::spawn(async move {
                for i in 0..per {
                    let n = p * per + i;
                    if like_connector {
                        let key = format!("bench/d{}", n % 16);
                        let attributes = HashMap::from([
                            ("mqtt.topic".to_string(), key.clone()),
                            ("mqtt.qos".to_string(), "1".to_string()),
                            ("mqtt.retain".to_string(), "false".to_string()),
                            ("mqtt.dup".to_string(), "false".to_string()),
                        ]);
                        producer.send_with_key(payload(n), Some(attributes), &key).await.expect("send");
                    } else {
                        producer.send(payload(n), None).await.expect("send");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("producer task");
    }
    (per * PRODUCERS) as f64 / started.elapsed().as_secs_f64()
}

/// Publishes `n` messages to `topic_prefix/...` as fast as the broker takes them.
async fn publish(port: u16, id: &str, topic_prefix: &str, n: usize, qos: QoS) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30)).set_inflight(200);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let prefix = topic_prefix.to_string();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            client.publish(format!("{prefix}/d{}", i % 16), qos, false, payload(i)).await.expect("publish");
        }
        client
    });
    let mut done = 0;
    while done < n {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::PubAck(_))) if qos == QoS::AtLeastOnce => done += 1,
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => done += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher connection: {e}"),
        }
    }
    let client = sender.await.expect("sender");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

async fn raw_subscriber_rate(port: u16, n: usize, qos: QoS) -> f64 {
    let mut options = MqttOptions::new(format!("bench-raw-sub-{qos:?}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    client.subscribe("raw/#", qos).await.expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Incoming::SubAck(_))) = eventloop.poll().await {
            break;
        }
    }
    let started = Instant::now();
    let publisher = tokio::spawn(async move { publish(port, "bench-raw-pub", "raw", n, qos).await });
    let mut received = 0;
    while received < n {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::Publish(_)))) => received += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("raw subscriber: {e}"),
            Err(_) => break,
        }
    }
    let rate = received as f64 / started.elapsed().as_secs_f64();
    publisher.await.expect("publisher");
    let _ = client.disconnect().await;
    rate
}

async fn connector_rate(
    mqtt: &Mosquitto,
    danube: &EmbeddedBroker,
    n: usize,
    qos: QoS,
    label: &str,
) -> (f64, usize, u64, u64) {
    let topic = format!("/default/bench-q{label}");
    let env = HashMap::from([
        ("DANUBE_SERVICE_URL".to_string(), danube.url()),
        ("CONNECTOR_NAME".to_string(), format!("bench-q{label}")),
        ("MQTT_BROKER__PORT".to_string(), mqtt.port().to_string()),
        ("MQTT_BROKER__CLIENT_ID".to_string(), format!("bench-connector-q{label}")),
        ("MQTT_MAPPINGS".to_string(), format!(r#"[{{filter="bench{label}/#", topic="{topic}", qos={label}}}]"#)),
        ("RUST_LOG".to_string(), "warn".to_string()),
    ]);
    let mut connector =
        ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-mqtt")), &env).expect("spawn connector");
    if let Err(e) = connector.wait_ready(Duration::from_secs(30)).await {
        panic!("connector not ready: {e}\n{}", connector.log());
    }
    let started = Instant::now();
    let port = mqtt.port();
    let prefix = format!("bench{label}");
    let publisher = tokio::spawn(async move { publish(port, "bench-pub", &prefix, n, qos).await });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = 0;
    let mut last_change = Instant::now();
    loop {
        let count = danube.message_count(&topic);
        if count >= n || Instant::now() >= deadline {
            last = count;
            break;
        }
        if count != last {
            last = count;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    publisher.await.expect("publisher");
    let (rss, hwm) = connector.pid().map(memory_kb).unwrap_or((0, 0));
    if last < n {
        let log = connector.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!(
            "connector stalled at {last}/{n}; log tail:\n{}\nmosquitto log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            mqtt.log().lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let _ = connector.terminate(Duration::from_secs(20)).await;
    (last as f64 / elapsed.as_secs_f64(), last, rss, hwm)
}

fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The run against the real Danube broker (`BENCH_BROKER=real`).
mod real {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use danube_connect_testkit::broker::RealBroker;
    use danube_connect_testkit::mosquitto::Mosquitto;
    use danube_connect_testkit::process::ConnectorProcess;
    use rumqttc::QoS;

    use super::{publish, raw_danube_rate, PAYLOAD, PRODUCERS};

    /// Messages the broker took in on `topic`, from its exporter.
    async fn taken_in(broker: &RealBroker, topic: &str) -> usize {
        broker.metric_sum("danube_topic_messages_in_total", &[("topic", topic)]).await.unwrap_or(0.0) as usize
    }

    pub(super) async fn run(n: usize) {
        let broker = RealBroker::start().await.expect("the real broker (set DANUBE_BROKER_BIN)");
        let mqtt = Mosquitto::start_with(false).expect("mosquitto");
        println!(
            "mqtt bridge on the REAL Danube broker (standalone, loopback): {n} messages of {PAYLOAD} bytes, Mosquitto on 127.0.0.1:{}",
            mqtt.port()
        );
        let raw_plain = raw_danube_rate(broker.url(), n, false).await;
        println!(
            "real broker: raw danube-client publish ({PRODUCERS} producers, reliable):       {raw_plain:>7.0} msg/s"
        );
        let raw_keyed = raw_danube_rate(broker.url(), n, true).await;
        println!(
            "real broker: raw danube-client publish, key + 4 attributes (like the connector): {raw_keyed:>7.0} msg/s"
        );

        let topic = "/default/bench_real_q1";
        let env = HashMap::from([
            ("DANUBE_SERVICE_URL".to_string(), broker.url()),
            ("CONNECTOR_NAME".to_string(), "bench-real".to_string()),
            ("MQTT_BROKER__PORT".to_string(), mqtt.port().to_string()),
            ("MQTT_BROKER__CLIENT_ID".to_string(), "bench-real-connector".to_string()),
            ("MQTT_MAPPINGS".to_string(), format!(r#"[{{filter="benchreal/#", topic="{topic}", qos=1}}]"#)),
            ("RUST_LOG".to_string(), "warn".to_string()),
        ]);
        let mut connector =
            ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-mqtt")), &env).expect("spawn connector");
        if let Err(e) = connector.wait_ready(Duration::from_secs(30)).await {
            panic!("connector not ready: {e}\n{}", connector.log());
        }
        let started = Instant::now();
        let port = mqtt.port();
        let publisher =
            tokio::spawn(async move { publish(port, "bench-real-pub", "benchreal", n, QoS::AtLeastOnce).await });
        let deadline = started + Duration::from_secs(180);
        let mut arrived = 0;
        while arrived < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            arrived = taken_in(&broker, topic).await;
        }
        let rate = arrived as f64 / started.elapsed().as_secs_f64();
        publisher.await.expect("publisher");
        let _ = connector.terminate(Duration::from_secs(20)).await;
        println!(
            "real broker: connector Mosquitto -> Danube ack, QoS 1:                  {rate:>7.0} msg/s  ({arrived}/{n} taken in by the broker; {:.2}x raw keyed publish)",
            rate / raw_keyed
        );
    }
}
