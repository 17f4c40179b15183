//! Throughput of the runtime against the embedded broker, beside raw `danube-client` in the
//! same run:
//!
//! 1. source runtime publish rate with 1 producer and with the pool, and a raw
//!    `danube-client` publisher with the same number of producers (ratio printed);
//! 2. sink runtime consume → process → ack rate, and a raw consumer's receive + ack rate;
//! 3. source runtime publish rate of JSON records with and without a JSON Schema binding
//!    (validation before publish), same payloads.
//!
//! `cargo bench -p danube-connect-core` (N = 20000 by default, `BENCH_RECORDS` to change).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_client::{DanubeClient, SubType};
use danube_connect_common::schema::SchemaKind;
use danube_connect_core::config::{RuntimeConfig, SinkTopicConfig};
use danube_connect_core::{
    async_trait, ConnectorResult, Parts, PullSource, Ready, Runtime, SchemaBinding, Sink, SinkRecord, SourceOffset,
    SourceRecord,
};
use danube_connect_testkit::danube::reliable_producers;
use danube_dev_broker::EmbeddedBroker;
use tokio_util::sync::CancellationToken;

fn records() -> usize {
    std::env::var("BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

fn config(name: &str, url: &str) -> RuntimeConfig {
    let mut config = RuntimeConfig { name: name.to_string(), ..RuntimeConfig::default() };
    config.danube.service_url = url.to_string();
    config.ops.enabled = false;
    config.source.max_in_flight = 4096;
    config
}

/// Emits `total` 100-byte records in polls of 500, then idles; counts commits.
struct Generator {
    topic: String,
    payload: Vec<u8>,
    next: usize,
    total: usize,
    committed: Arc<AtomicUsize>,
}

#[async_trait]
impl PullSource for Generator {
    async fn poll(&mut self) -> ConnectorResult<Vec<SourceRecord>> {
        if self.next >= self.total {
            tokio::time::sleep(Duration::from_millis(5)).await;
            return Ok(Vec::new());
        }
        let end = (self.next + 500).min(self.total);
        let batch = (self.next..end)
            .map(|i| SourceRecord::new(&self.topic, self.payload.clone()).with_offset(SourceOffset::new("g", i as u64)))
            .collect();
        self.next = end;
        Ok(batch)
    }

    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> ConnectorResult<()> {
        self.committed.fetch_add(offsets.len(), Ordering::Relaxed);
        Ok(())
    }
}

async fn runtime_publish_rate(broker: &EmbeddedBroker, producers: usize, n: usize) -> f64 {
    let topic = format!("/default/bench-runtime-{producers}");
    let cfg = config(&format!("bench-src-{producers}"), &broker.url());
    generator_rate(cfg, topic, producers, n, vec![b'x'; 100]).await
}

const ORDER_SCHEMA: &str = r#"{"type":"object","required":["id","amount","note"],
  "properties":{"id":{"type":"string"},"amount":{"type":"number","minimum":0},"note":{"type":"string"}}}"#;

/// Publish rate of ~100-byte JSON records, validated against a JSON Schema binding or not.
async fn json_publish_rate(broker: &EmbeddedBroker, validate: bool, n: usize) -> f64 {
    let name = if validate { "bench-validated" } else { "bench-unvalidated" };
    let topic = format!("/default/{name}");
    let mut cfg = config(name, &broker.url());
    let dir = tempfile::tempdir().expect("tempdir");
    if validate {
        let file = dir.path().join("order.json");
        std::fs::write(&file, ORDER_SCHEMA).expect("schema file");
        cfg.schemas = vec![SchemaBinding::new(&topic, name).with_file(SchemaKind::JsonSchema, file)];
    }
    let payload =
        br#"{"id":"order-000001","amount":42.5,"note":"a json record of about one hundred bytes...."}"#.to_vec();
    generator_rate(cfg, topic, 4, n, payload).await
}

async fn generator_rate(mut cfg: RuntimeConfig, topic: String, producers: usize, n: usize, payload: Vec<u8>) -> f64 {
    cfg.source.producers_per_topic = producers;
    let committed = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    let runtime = Runtime::start(cfg, token.clone()).await.expect("runtime");
    let started = Instant::now();
    let run = tokio::spawn(runtime.run(Parts::new().with_pull(Ready(Generator {
        topic,
        payload,
        next: 0,
        total: n,
        committed: committed.clone(),
    }))));
    while committed.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    token.cancel();
    let _ = run.await;
    rate
}

async fn raw_publish_rate(broker: &EmbeddedBroker, producers: usize, n: usize) -> f64 {
    let topic = format!("/default/bench-raw-{producers}");
    let mut handles = Vec::new();
    let built =
        reliable_producers(broker.url(), &topic, &format!("raw-{producers}"), producers).await.expect("raw producers");
    let started = Instant::now();
    for (p, producer) in built.into_iter().enumerate() {
        let share = n / producers + usize::from(p < n % producers);
        handles.push(tokio::spawn(async move {
            for _ in 0..share {
                producer.send(vec![b'x'; 100], None).await.expect("send");
            }
        }));
    }
    for h in handles {
        h.await.expect("join");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Accepts everything, counts records.
struct Counter(Arc<AtomicUsize>);

#[async_trait]
impl Sink for Counter {
    async fn process(&self, _record: &SinkRecord) -> ConnectorResult<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        self.0.fetch_add(records.len(), Ordering::Relaxed);
        Ok(())
    }
}

async fn sink_rate(broker: &EmbeddedBroker, n: usize) -> f64 {
    let topic = "/default/bench-sink";
    broker.publish(topic, b"create".to_vec(), Default::default(), None);
    let mut cfg = config("bench-sink", &broker.url());
    cfg.sink.topics = vec![SinkTopicConfig::new(topic)];
    cfg.sink.batch.max_records = 10;
    cfg.sink.batch.linger = Duration::from_millis(5);
    let count = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    let runtime = Runtime::start(cfg, token.clone()).await.expect("runtime");
    let run = tokio::spawn(runtime.run(Parts::new().with_sink(Ready(Counter(count.clone())))));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for i in 0..n {
        broker.publish(topic, format!("{i:0100}").into_bytes(), Default::default(), None);
    }
    let started = Instant::now();
    while broker.ack_count(topic, "bench-sink") < n as u64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    token.cancel();
    let _ = run.await;
    rate
}

async fn raw_consume_rate(broker: &EmbeddedBroker, n: usize) -> f64 {
    let topic = "/default/bench-raw-consume";
    broker.publish(topic, b"create".to_vec(), Default::default(), None);
    let client = DanubeClient::builder().service_url(broker.url()).build().await.expect("client");
    let mut consumer = client
        .new_consumer()
        .with_topic(topic)
        .with_consumer_name("raw")
        .with_subscription("raw")
        .with_subscription_type(SubType::Shared)
        .build()
        .expect("consumer");
    consumer.subscribe().await.expect("subscribe");
    let mut rx = consumer.receive().await.expect("receive");
    for i in 0..n {
        broker.publish(topic, format!("{i:0100}").into_bytes(), Default::default(), None);
    }
    let started = Instant::now();
    let mut seen = 0;
    while seen < n {
        let Some(message) = rx.recv().await else { break };
        consumer.ack(&message).await.expect("ack");
        seen += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let n = records();
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    println!("danube-connect-core throughput, {n} records of 100 B, embedded broker, same run");

    let raw1 = raw_publish_rate(&broker, 1, n).await;
    let rt1 = runtime_publish_rate(&broker, 1, n).await;
    let raw4 = raw_publish_rate(&broker, 4, n).await;
    let rt4 = runtime_publish_rate(&broker, 4, n).await;
    println!("publish  raw client, 1 producer : {raw1:>9.0} rec/s");
    println!("publish  source runtime, 1      : {rt1:>9.0} rec/s  ({:.2}x raw)", rt1 / raw1);
    println!("publish  raw client, 4 producers: {raw4:>9.0} rec/s");
    println!(
        "publish  source runtime, pool 4 : {rt4:>9.0} rec/s  ({:.2}x raw, {:.2}x the 1-producer runtime)",
        rt4 / raw4,
        rt4 / rt1
    );

    let raw_c = raw_consume_rate(&broker, n).await;
    let sink = sink_rate(&broker, n).await;
    println!("consume  raw client receive+ack : {raw_c:>9.0} rec/s");
    println!("consume  sink runtime (batch 10): {sink:>9.0} rec/s  ({:.2}x raw)", sink / raw_c);

    let plain = json_publish_rate(&broker, false, n).await;
    let validated = json_publish_rate(&broker, true, n).await;
    println!("publish  JSON, no schema        : {plain:>9.0} rec/s");
    println!("publish  JSON, JSON Schema check: {validated:>9.0} rec/s  ({:.2}x without)", validated / plain);
    println!("RSS after run: {:.1} MiB", rss_mib());
}
