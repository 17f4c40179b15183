//! Throughput of the HTTP sink against a local receiver, beside two baselines measured in
//! the same run: the raw consume+ack rate of the same embedded broker (a `danube-client`
//! consumer that acks each message, nothing else) and a raw `reqwest` POST loop against the
//! same receiver (16 concurrent requests, no broker). Run:
//! `cargo bench -p danube-connector-http-sink`.
//!
//! Prints deliveries/s for several `sink.concurrency` settings and with batching, the ratio
//! of each to both baselines, the in-process RSS (broker, receiver and sink share it), and a
//! run of the real binary in its own process with that process's peak RSS.
//!
//! `BENCH_BROKER=real` (with `DANUBE_BROKER_BIN` naming the real Danube broker) runs the
//! binary against a real broker started for the run instead, beside a raw `danube-client`
//! consumer on the same broker, with the broker's default dispatch window (10) and with the
//! window `docs/running-on-danube.md` recommends (`dispatch.max_unacked_messages: 10000`, a
//! second broker started with that config; v0.15.1 ignores the per-subscription setting). The
//! publisher is paced to stay at most 200 records ahead of the consumer being measured:
//! Danube v0.15.1 skips messages for a subscription that falls further behind
//! (`docs/running-on-danube.md`), so an unpaced burst measures the broker's defect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use danube_client::{ConsumerOptions, DanubeClient, SubType};
use danube_connect_core::config::{ConnectorConfig, RuntimeConfig, SinkTopicConfig};
use danube_connect_core::Runtime;
use danube_connect_testkit::process::ConnectorProcess;
use danube_connect_testkit::procfs::status_kib;
use danube_connector_http_sink::config::BodyMode;
use danube_connector_http_sink::{HttpSinkConfig, HttpSinkFactory};
use danube_dev_broker::EmbeddedBroker;
use tokio_util::sync::CancellationToken;

/// Records per measured run.
const RECORDS: usize = 5_000;
/// Dispatch window (unacked messages per subscription) for every run, baseline included.
const WINDOW: usize = 1_000;

fn payload(i: usize) -> Vec<u8> {
    format!(r#"{{"id":{i},"table":"orders","op":"insert","row":{{"amount":{},"note":"benchmark row"}}}}"#, i * 3)
        .into_bytes()
}

/// A receiver answering 204 to everything and counting requests.
async fn start_receiver() -> (String, Arc<AtomicU64>) {
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let app = Router::new().fallback(move |_body: axum::body::Bytes| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), requests)
}

async fn wait_acked(broker: &EmbeddedBroker, topic: &str, subscription: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while broker.ack_count(topic, subscription) < n {
        assert!(
            Instant::now() < deadline,
            "{subscription}: only {} of {n} acked",
            broker.ack_count(topic, subscription)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Raw consume+ack with a `danube-client` consumer: records/s.
async fn baseline(broker: &EmbeddedBroker) -> f64 {
    let topic = "/default/bench-baseline";
    let subscription = "baseline";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(topic, subscription, WINDOW);
    let client = DanubeClient::builder().service_url(broker.url()).build().await.expect("client");
    let mut consumer = client
        .new_consumer()
        .with_topic(topic.to_string())
        .with_consumer_name("baseline-0".to_string())
        .with_subscription(subscription.to_string())
        .with_subscription_type(SubType::Shared)
        .with_options(ConsumerOptions::new(3, 100, 1000))
        .build()
        .expect("consumer");
    consumer.subscribe().await.expect("subscribe");
    let mut messages = consumer.receive().await.expect("receive");
    assert!(broker.wait_for_consumers(topic, subscription, 1, Duration::from_secs(20)).await);
    // Consume in its own task while publishing, exactly like the sink runs below.
    let consuming = tokio::spawn(async move {
        for _ in 0..RECORDS {
            let message = messages.recv().await.expect("stream open");
            consumer.ack(&message).await.expect("ack");
        }
        consumer
    });
    let started = Instant::now();
    for i in 0..RECORDS {
        broker.publish(topic, payload(i), HashMap::new(), None);
    }
    let mut consumer = consuming.await.expect("consumer task");
    wait_acked(broker, topic, subscription, RECORDS as u64).await;
    let rate = RECORDS as f64 / started.elapsed().as_secs_f64();
    consumer.close().await;
    rate
}

/// Raw `reqwest` POSTs of the same payloads to the same receiver, `concurrency` at a time:
/// requests/s.
async fn raw_http(url: &str, concurrency: usize) -> f64 {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, url) = (client.clone(), next.clone(), url.to_string());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= RECORDS {
                        break;
                    }
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(payload(i))
                        .send()
                        .await
                        .expect("raw POST");
                    assert!(response.status().is_success());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("raw task");
    }
    RECORDS as f64 / started.elapsed().as_secs_f64()
}

/// The runtime settings of one sink run.
fn runtime_config(broker: &EmbeddedBroker, name: &str, topic: &str, concurrency: usize, batch: usize) -> RuntimeConfig {
    let mut runtime = RuntimeConfig { name: name.to_string(), ..Default::default() };
    runtime.danube.service_url = broker.url();
    runtime.ops.enabled = false;
    runtime.sink.topics = vec![SinkTopicConfig::new(topic)];
    runtime.sink.concurrency = concurrency;
    runtime.sink.ordering = danube_connect_core::config::Ordering::None;
    runtime.sink.batch.max_records = batch;
    runtime.sink.batch.linger = Duration::from_millis(20);
    runtime
}

/// One sink run in process: (records/s, requests sent).
async fn sink_run(
    broker: &EmbeddedBroker,
    receiver: &(String, Arc<AtomicU64>),
    name: &str,
    concurrency: usize,
    batch: usize,
) -> (f64, u64) {
    let (url, requests) = (receiver.0.clone(), receiver.1.clone());
    let before = requests.load(Ordering::Relaxed);
    let topic = format!("/default/bench-{name}");
    broker.publish(&topic, b"create".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(&topic, name, WINDOW);
    let runtime = runtime_config(broker, name, &topic, concurrency, batch);
    let mut connector = HttpSinkConfig { url: url.into(), allow_private_targets: true, ..Default::default() };
    if batch > 1 {
        connector.body.mode = BodyMode::Batch;
    }
    let config = ConnectorConfig { runtime, connector };
    let token = CancellationToken::new();
    let runtime = Runtime::start(config.runtime, token.clone()).await.expect("runtime");
    let sink = HttpSinkFactory::build(config.connector).expect("sink");
    let run = tokio::spawn(async move { runtime.run(danube_connect_core::Parts::new().with_sink(sink)).await });
    assert!(broker.wait_for_consumers(&topic, name, 1, Duration::from_secs(20)).await);
    let started = Instant::now();
    for i in 0..RECORDS {
        broker.publish(&topic, payload(i), HashMap::new(), None);
    }
    wait_acked(broker, &topic, name, RECORDS as u64).await;
    let rate = RECORDS as f64 / started.elapsed().as_secs_f64();
    token.cancel();
    let _ = run.await;
    (rate, requests.load(Ordering::Relaxed) - before)
}

/// The connector binary in its own process (concurrency 16): (records/s, peak RSS KiB).
async fn binary_run(broker: &EmbeddedBroker, receiver: &(String, Arc<AtomicU64>)) -> (f64, u64) {
    let (name, topic) = ("binary", "/default/bench-binary");
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(topic, name, WINDOW);
    let env: HashMap<String, String> = [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", name.to_string()),
        ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
        ("CONNECTOR_SINK__CONCURRENCY", "16".to_string()),
        ("CONNECTOR_SINK__ORDERING", "none".to_string()),
        ("CONNECTOR_LOG__LEVEL", "warn".to_string()),
        ("HTTP_SINK_URL", receiver.0.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_danube-http-sink"));
    let mut process = ConnectorProcess::spawn(binary, &env).expect("spawn the binary");
    process.wait_ready(Duration::from_secs(60)).await.expect("binary ready");
    assert!(broker.wait_for_consumers(topic, name, 1, Duration::from_secs(20)).await);
    let started = Instant::now();
    for i in 0..RECORDS {
        broker.publish(topic, payload(i), HashMap::new(), None);
    }
    wait_acked(broker, topic, name, RECORDS as u64).await;
    let rate = RECORDS as f64 / started.elapsed().as_secs_f64();
    let peak = process.pid().map_or(0, |pid| status_kib(pid, "VmHWM:"));
    let status = process.terminate(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "the binary drains and exits 0");
    (rate, peak)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::var("BENCH_BROKER").as_deref() == Ok("real") {
        real::run().await;
        return;
    }
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let receiver = start_receiver().await;
    let rss_start = status_kib("self", "VmRSS:");
    let base = baseline(&broker).await;
    let raw = raw_http(&receiver.0, 16).await;
    println!("http-sink throughput, {RECORDS} records of ~100 B per run, dispatch window {WINDOW}");
    println!("baseline  raw consume+ack (danube-client, same broker)    : {base:>9.0} records/s");
    println!("baseline  raw reqwest POST loop, 16 at a time, same receiver: {raw:>9.0} requests/s");
    let runs = [
        ("c1", 1, 1, "concurrency 1, one request per record"),
        ("c4", 4, 1, "concurrency 4, one request per record"),
        ("c16", 16, 1, "concurrency 16, one request per record"),
        ("c64", 64, 1, "concurrency 64, one request per record"),
        ("b100", 4, 100, "concurrency 4, batch of 100 (JSON array)"),
    ];
    for (name, concurrency, batch, label) in runs {
        let (rate, requests) = sink_run(&broker, &receiver, name, concurrency, batch).await;
        println!(
            "http-sink {label:<42}: {rate:>9.0} records/s  ({requests} requests)  ratio to consume+ack {:.2}, to raw POST {:.2}",
            rate / base,
            rate / raw
        );
    }
    let (rate, peak) = binary_run(&broker, &receiver).await;
    println!(
        "http-sink binary, own process, concurrency 16   : {rate:>9.0} records/s  ratio to consume+ack {:.2}, to raw POST {:.2}; peak RSS of the sink process {} MiB",
        rate / base,
        rate / raw,
        peak / 1024
    );
    println!(
        "RSS (broker + receiver + sink in one process): start {} MiB, now {} MiB, peak {} MiB",
        rss_start / 1024,
        status_kib("self", "VmRSS:") / 1024,
        status_kib("self", "VmHWM:") / 1024
    );
}

/// The run against the real Danube broker (`BENCH_BROKER=real`).
mod real {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use danube_connect_testkit::broker::{RealBroker, RealBrokerOptions};
    use danube_connect_testkit::danube::{reliable_producers, wait_progress, CountingConsumer};
    use danube_connect_testkit::process::ConnectorProcess;

    use super::{payload, start_receiver};

    /// Records per run.
    const N: usize = 3_000;
    /// How far the publisher may run ahead of the measured consumer.
    const LEAD: u64 = 200;
    /// The longest wait for one run's `N` records.
    const TIMEOUT: Duration = Duration::from_secs(120);

    /// Publishes `N` records with 4 raw producers, never more than [`LEAD`] ahead of
    /// `progress`; returns when all are published.
    async fn paced_publish(url: String, topic: &str, progress: Arc<AtomicU64>) {
        let producers = reliable_producers(url, topic, "bench", 4).await.expect("raw producers");
        let producers: Vec<_> = producers.into_iter().map(Arc::new).collect();
        let tasks: Vec<_> = (0..producers.len())
            .map(|k| {
                let (producer, progress, stride) = (producers[k].clone(), progress.clone(), producers.len());
                tokio::spawn(async move {
                    for i in (k..N).step_by(stride) {
                        while i as u64 > progress.load(Ordering::Relaxed) + LEAD {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        producer.send(payload(i), None).await.expect("raw publish");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("publisher task");
        }
    }

    /// A raw `danube-client` consumer acking each message: records/s.
    async fn raw_consumer(broker: &RealBroker, topic: &str) -> f64 {
        let creator = reliable_producers(broker.url(), topic, "create", 1).await.expect("create the topic");
        let consumer = CountingConsumer::subscribe(broker.url(), topic, "raw", N as u64).await.expect("raw consumer");
        let started = Instant::now();
        paced_publish(broker.url(), topic, consumer.acked()).await;
        let rate = wait_progress(&consumer.acked(), N as u64, started, TIMEOUT, "raw consumer").await;
        consumer.close().await;
        drop(creator);
        rate
    }

    /// The `danube-http-sink` binary with default settings: records/s.
    async fn sink(broker: &RealBroker, topic: &str, name: &str) -> f64 {
        let creator = reliable_producers(broker.url(), topic, "create", 1).await.expect("create the topic");
        let (url, requests) = start_receiver().await;
        let env: HashMap<String, String> = [
            ("DANUBE_SERVICE_URL", broker.url()),
            ("CONNECTOR_NAME", name.to_string()),
            ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
            ("HTTP_SINK_URL", url),
            ("HTTP_SINK_ALLOW_PRIVATE_TARGETS", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_danube-http-sink"));
        let mut process = ConnectorProcess::spawn(binary, &env).expect("spawn the binary");
        process.wait_ready(Duration::from_secs(60)).await.expect("binary ready");
        process
            .wait_consuming(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("the sink never subscribed: {e}"));
        let started = Instant::now();
        paced_publish(broker.url(), topic, requests.clone()).await;
        let rate = wait_progress(&requests, N as u64, started, TIMEOUT, "http-sink").await;
        let status = process.terminate(Duration::from_secs(30)).await;
        assert!(status.is_some_and(|s| s.success()), "the binary drains and exits 0");
        drop(creator);
        rate
    }

    pub(super) async fn run() {
        println!(
            "http-sink on the REAL Danube broker (standalone, loopback): {N} records of ~100 B per run, \
             publisher paced to at most {LEAD} ahead of the consumer"
        );
        for (window, label) in [(None, "default window 10"), (Some(10_000), "window 10000")] {
            let suffix = if window.is_some() { "w10000" } else { "w10" };
            let broker = match window {
                None => RealBroker::start().await,
                Some(window) => {
                    RealBroker::start_with(RealBrokerOptions {
                        max_unacked_messages: Some(window),
                        ..Default::default()
                    })
                    .await
                }
            }
            .expect("the real broker (set DANUBE_BROKER_BIN)");
            let raw = raw_consumer(&broker, &format!("/default/raw_{suffix}")).await;
            let rate = sink(&broker, &format!("/default/sink_{suffix}"), &format!("sink-{suffix}")).await;
            println!("real broker, {label:<17}: raw consume+ack (danube-client) {raw:>7.0} records/s");
            println!(
                "real broker, {label:<17}: danube-http-sink binary, defaults {rate:>7.0} records/s  ratio {:.2}",
                rate / raw
            );
        }
    }
}
