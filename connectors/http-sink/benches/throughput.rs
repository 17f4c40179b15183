//! Throughput of the HTTP sink against a local receiver, beside two baselines measured in
//! the same run: the raw consume+ack rate of the same embedded broker (a `danube-client`
//! consumer that acks each message, nothing else) and a raw `reqwest` POST loop against the
//! same receiver (16 concurrent requests, no broker). Run:
//! `cargo bench -p danube-connector-http-sink`.
//!
//! Prints deliveries/s for several `sink.concurrency` settings and with batching, the ratio
//! of each to both baselines, the in-process RSS (broker, receiver and sink share it), and a
//! run of the real binary in its own process with that process's peak RSS.

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
use danube_connector_http_sink::{HttpSink, HttpSinkConfig};
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
    let (ordering, retry) = (config.runtime.sink.ordering, config.runtime.retry.clone());
    let runtime = Runtime::start(config.runtime, token.clone()).await.expect("runtime");
    let sink = HttpSink::new(config.connector).expect("sink").with_ordering(ordering).with_retry(retry);
    let run = tokio::spawn(async move { runtime.run_sink(sink).await });
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
