//! Sink runtime on the REAL Danube broker (`DANUBE_BROKER_BIN`), beside a raw `danube-client`
//! consumer in the same run, at the broker's default dispatch window (10) and at the window
//! the docs recommend (10000, set in the broker's config: v0.15.1 ignores the per-subscription
//! `SetSubscriptionDispatchConfig`).
//!
//! Each case: a fresh topic, the consumer subscribed first, then a burst of N 100-byte
//! messages from 4 raw producers. Printed: the publish rate, how many distinct messages
//! arrived (a burst beyond window + 256 unacked loses messages to the broker defect, see
//! `docs/running-on-danube.md`) and the delivery rate from the first to the last arrival.
//!
//! `cargo bench -p danube-connect-core --bench real_broker_sink` (N = 20000, `BENCH_RECORDS`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use danube_client::{DanubeClient, SubType};
use danube_connect_core::config::{RuntimeConfig, SinkTopicConfig};
use danube_connect_core::{async_trait, ConnectorResult, Parts, Ready, Runtime, Sink, SinkRecord};
use danube_connect_testkit::broker::{real_broker_binary, RealBroker, RealBrokerOptions};
use danube_connect_testkit::danube::{burst, reliable_producers};
use tokio_util::sync::CancellationToken;

fn records() -> u64 {
    std::env::var("BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

/// Arrivals: distinct payloads, first and last arrival time.
#[derive(Default)]
struct Arrivals {
    seen: HashSet<Vec<u8>>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Arrivals {
    fn add(&mut self, payload: &[u8]) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.seen.insert(payload.to_vec());
    }

    fn rate(&self) -> f64 {
        match (self.first, self.last) {
            (Some(first), Some(last)) if last > first => self.seen.len() as f64 / (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }
}

struct Recorder(Arc<Mutex<Arrivals>>);

#[async_trait]
impl Sink for Recorder {
    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()> {
        self.process_batch(std::slice::from_ref(record)).await
    }

    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        let mut arrivals = self.0.lock().expect("lock");
        for record in records {
            arrivals.add(&record.payload);
        }
        Ok(())
    }
}

/// Waits until everything arrived or nothing arrived for 5 s.
async fn settle(arrivals: &Arc<Mutex<Arrivals>>, total: u64) {
    let mut last = 0;
    let mut changed = Instant::now();
    loop {
        let now = arrivals.lock().expect("lock").seen.len();
        if now as u64 >= total || changed.elapsed() > Duration::from_secs(5) {
            return;
        }
        if now != last {
            last = now;
            changed = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (publish rate, distinct arrived, delivery rate) for a raw consumer acking each message.
async fn raw_case(broker: &RealBroker, topic: &str, total: u64) -> (f64, usize, f64) {
    let producers = reliable_producers(broker.url(), topic, "bench", 4).await.expect("producers");
    let client = DanubeClient::builder().service_url(broker.url()).build().await.expect("client");
    let mut consumer = client
        .new_consumer()
        .with_topic(topic.to_string())
        .with_consumer_name("raw".to_string())
        .with_subscription("raw".to_string())
        .with_subscription_type(SubType::Exclusive)
        .build()
        .expect("consumer");
    consumer.subscribe().await.expect("subscribe");
    let mut rx = consumer.receive().await.expect("receive");
    let arrivals: Arc<Mutex<Arrivals>> = Arc::default();
    let reader = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                arrivals.lock().expect("lock").add(&message.payload);
                let _ = consumer.ack(&message).await;
            }
        })
    };
    let publish = burst(producers, total, |n| format!("{n:0100}").into_bytes()).await;
    settle(&arrivals, total).await;
    reader.abort();
    let arrivals = arrivals.lock().expect("lock");
    (publish, arrivals.seen.len(), arrivals.rate())
}

/// The same with the sink runtime (defaults, batches of up to 100).
async fn sink_case(broker: &RealBroker, topic: &str, total: u64) -> (f64, usize, f64) {
    let producers = reliable_producers(broker.url(), topic, "bench", 4).await.expect("producers");
    let mut config = RuntimeConfig { name: "bench-sink".into(), ..RuntimeConfig::default() };
    config.danube.service_url = broker.url();
    config.ops.enabled = false;
    config.sink.topics = vec![SinkTopicConfig::new(topic)];
    config.sink.batch.max_records = 100;
    config.sink.batch.linger = Duration::from_millis(5);
    let arrivals: Arc<Mutex<Arrivals>> = Arc::default();
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime");
    let run = tokio::spawn(runtime.run(Parts::new().with_sink(Ready(Recorder(arrivals.clone())))));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let publish = burst(producers, total, |n| format!("{n:0100}").into_bytes()).await;
    settle(&arrivals, total).await;
    token.cancel();
    let _ = run.await;
    let arrivals = arrivals.lock().expect("lock");
    (publish, arrivals.seen.len(), arrivals.rate())
}

#[tokio::main]
async fn main() {
    if real_broker_binary().is_none() {
        println!("REAL BROKER SUITE DID NOT RUN: DANUBE_BROKER_BIN is unset");
        return;
    }
    let n = records();
    println!(
        "sink on the real Danube broker (standalone/single node, loopback), bursts of {n} x 100 B from 4 producers"
    );
    for window in [10u32, 10_000] {
        let broker = if window == 10 {
            RealBroker::start().await.expect("real broker")
        } else {
            let options = RealBrokerOptions { max_unacked_messages: Some(window), ..RealBrokerOptions::default() };
            RealBroker::start_with(options).await.expect("real broker")
        };
        let (raw_pub, raw_got, raw_rate) = raw_case(&broker, "/default/bench-raw", n).await;
        let (sink_pub, sink_got, sink_rate) = sink_case(&broker, "/default/bench-sink", n).await;
        println!(
            "window {window:>5}: raw consumer   {raw_got:>6}/{n} arrived, {raw_rate:>8.0} msg/s (published at {raw_pub:.0} msg/s)"
        );
        println!(
            "window {window:>5}: sink runtime   {sink_got:>6}/{n} arrived, {sink_rate:>8.0} msg/s (published at {sink_pub:.0} msg/s; {:.2}x raw)",
            if raw_rate > 0.0 { sink_rate / raw_rate } else { 0.0 }
        );
    }
}
