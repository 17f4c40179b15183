//! Throughput of the Kafka bridge, beside its baselines measured in the same run on the
//! same brokers (a real tansu on loopback and the embedded Danube broker):
//!
//! - raw rdkafka producer and consumer on tansu;
//! - raw danube-client publish (4 producers sending concurrently, like the runtime's
//!   default producer pool, on its own OS thread and tokio runtime so it does not share
//!   the embedded broker's runtime, as the bridge process does not);
//! - import (Kafka → Danube) and export (Danube → Kafka) through the bridge binary,
//!   with its peak RSS.
//!
//! Target: import ≥ 50% of min(raw consume, raw Danube publish).
//!
//! `cargo bench -p danube-connector-kafka-bridge` (`BENCH_RECORDS` sets the count).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::kafka::Tansu;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
const PAYLOAD: usize = 200;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    runtime.block_on(run());
}

async fn run() {
    let n: usize = std::env::var("BENCH_RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let tansu = Tansu::start().await.expect("tansu must be installed (scripts/test.sh)");
    let danube = EmbeddedBroker::start_default().await.expect("embedded danube broker");
    let bootstrap = tansu.bootstrap();
    create_topic(&bootstrap, "bench-in").await;
    create_topic(&bootstrap, "bench-out").await;
    println!("kafka-bridge throughput: {n} records of {PAYLOAD} bytes, {PARTITIONS} kafka partitions, 64 keys");

    let raw_produce = raw_produce(&bootstrap, "bench-in", n).await;
    println!("raw rdkafka produce:        {raw_produce:>10.0} records/s");
    let raw_consume = {
        let b = bootstrap.clone();
        tokio::task::spawn_blocking(move || raw_consume(&b, "bench-in", n)).await.expect("consume task")
    };
    println!("raw rdkafka consume:        {raw_consume:>10.0} records/s");
    let raw_publish = {
        let url = danube.url();
        tokio::task::spawn_blocking(move || raw_danube_publish(&url, n)).await.expect("publish task")
    };
    println!(
        "raw danube-client publish:  {raw_publish:>10.0} records/s ({PUBLISH_PRODUCERS} producers pipelined, own runtime)"
    );

    // Import: the bridge reads the topic filled above.
    let mut env = HashMap::new();
    env.insert("DANUBE_SERVICE_URL".to_string(), danube.url());
    env.insert("CONNECTOR_NAME".to_string(), "bench-import".to_string());
    env.insert("CONNECTOR_LOG__LEVEL".to_string(), "warn".to_string());
    env.insert("KAFKA_BRIDGE_KAFKA__BOOTSTRAP_SERVERS".to_string(), bootstrap.clone());
    env.insert("KAFKA_BRIDGE_IMPORT__GROUP_ID".to_string(), "bench".to_string());
    env.insert(
        "KAFKA_BRIDGE_IMPORT__MAPPINGS".to_string(),
        r#"[{topics=["bench-in"], danube_topic="/default/imported"}]"#.to_string(),
    );
    let mut import = spawn(&env).await;
    // Counted with the broker's cheap counter (`messages()` would copy every stored message).
    let first = danube.wait_for_messages("/default/imported", 1, Duration::from_secs(300)).await.len();
    let started = Instant::now();
    let done = danube.wait_for_messages("/default/imported", n, Duration::from_secs(300)).await.len();
    let import_rate = (done - first) as f64 / started.elapsed().as_secs_f64();
    let import_rss = peak_rss_mb(import.pid());
    let _ = import.terminate(Duration::from_secs(20)).await;
    let floor = raw_consume.min(raw_publish);
    println!(
        "import kafka->danube:       {import_rate:>10.0} records/s  ({:.0}% of raw consume, {:.0}% of raw publish; \
         {:.0}% of the lower = {floor:.0}, target >= 50%)  peak RSS {import_rss} MB",
        100.0 * import_rate / raw_consume,
        100.0 * import_rate / raw_publish,
        100.0 * import_rate / floor
    );

    // Export: default dispatch window (10 unacked per subscription), then a wider one.
    for (label, window) in [("window 10", None), ("window 1000", Some(1000usize))] {
        let topic = format!("/default/export-{}", window.unwrap_or(10));
        danube.publish(&topic, b"warmup".to_vec(), HashMap::new(), None);
        if let Some(w) = window {
            danube.set_max_unacked(&topic, "bench-export", w);
        }
        let mut env = env.clone();
        env.remove("KAFKA_BRIDGE_IMPORT__MAPPINGS");
        env.insert("CONNECTOR_NAME".to_string(), "bench-export".to_string());
        env.insert("CONNECTOR_SINK__TOPICS".to_string(), format!(r#"[{{topic="{topic}"}}]"#));
        env.insert("CONNECTOR_SINK__BATCH__MAX_RECORDS".to_string(), "100".to_string());
        env.insert("CONNECTOR_SINK__BATCH__LINGER".to_string(), "5ms".to_string());
        env.insert("CONNECTOR_SINK__CONCURRENCY".to_string(), "4".to_string());
        env.insert("KAFKA_BRIDGE_EXPORT__TOPICS".to_string(), format!(r#"{{"{topic}"="bench-out"}}"#));
        env.insert("KAFKA_BRIDGE_EXPORT__LINGER".to_string(), "1ms".to_string());
        let mut export = spawn(&env).await;
        assert!(danube.wait_for_consumers(&topic, "bench-export", 1, Duration::from_secs(30)).await);
        let payload = vec![b'x'; PAYLOAD];
        let started = Instant::now();
        for i in 0..n {
            danube.publish(&topic, payload.clone(), HashMap::new(), Some(format!("key-{}", i % 64)));
        }
        let (rate, rss) = measure_from(&export, n, started, || danube.ack_count(&topic, "bench-export") as usize).await;
        let _ = export.terminate(Duration::from_secs(20)).await;
        println!(
            "export danube->kafka ({label}): {rate:>8.0} records/s  ({:.0}% of raw produce)  peak RSS {rss} MB",
            100.0 * rate / raw_produce
        );
    }
}

async fn spawn(env: &HashMap<String, String>) -> ConnectorProcess {
    let mut process =
        ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-kafka-bridge")), env).expect("spawn bridge");
    process.wait_ready(Duration::from_secs(30)).await.expect("bridge ready");
    process
}

/// Rate from `started` until `count()` reaches `n`, and the bridge's peak RSS.
async fn measure_from(process: &ConnectorProcess, n: usize, started: Instant, count: impl Fn() -> usize) -> (f64, u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while count() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = count().min(n);
    let rate = done as f64 / started.elapsed().as_secs_f64();
    (rate, peak_rss_mb(process.pid()))
}

fn peak_rss_mb(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

async fn create_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin");
    admin
        .create_topics(&[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create topic");
}

async fn raw_produce(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let payload = [b'x'; PAYLOAD];
    let started = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("key-{}", i % 64);
        let record = FutureRecord::to(topic).payload(&payload[..]).key(key.as_bytes());
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => panic!("enqueue: {e}"),
        }
    }
    for delivery in pending {
        delivery.await.expect("delivery future").expect("delivered");
    }
    let _ = producer.flush(Duration::from_secs(10));
    n as f64 / started.elapsed().as_secs_f64()
}

fn raw_consume(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "raw-bench")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&list).expect("assign");
    let mut read = 0usize;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while read < n && Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            read += 1;
        }
    }
    read as f64 / started.map_or(1.0, |s| s.elapsed().as_secs_f64())
}

/// Producers per topic of the runtime's publisher (`source.producers_per_topic` default),
/// so the baseline and the import publish through the same number of producers.
const PUBLISH_PRODUCERS: usize = 4;

/// Raw danube-client publish, shaped like the import's publisher: `PUBLISH_PRODUCERS`
/// reliable producers, each with one send in flight (what `Producer::send` allows), all
/// sending concurrently, keyed records spread over them. It runs on its own OS thread
/// with its own 2-worker tokio runtime, like the bridge process beside the broker, so it
/// does not share the embedded broker's runtime (which would handicap it).
fn raw_danube_publish(url: &str, n: usize) -> f64 {
    let url = url.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("raw-publish")
            .enable_all()
            .build()
            .expect("raw publish runtime");
        runtime.block_on(raw_danube_publish_in(url, n))
    })
    .join()
    .expect("raw publish thread")
}

async fn raw_danube_publish_in(url: String, n: usize) -> f64 {
    let producers = reliable_producers(url, "/default/raw", "raw", PUBLISH_PRODUCERS).await.expect("raw producers");
    let payload = vec![b'x'; PAYLOAD];
    let per = n / PUBLISH_PRODUCERS;
    let started = Instant::now();
    let tasks: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(lane, producer)| {
            let payload = payload.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    // The 64 bench keys, 16 per producer (a key always maps to one lane).
                    let key = format!("key-{}", (i % 16) * PUBLISH_PRODUCERS + lane);
                    producer.send_with_key(payload.clone(), None, &key).await.expect("send");
                }
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        task.expect("publish task");
    }
    (per * PUBLISH_PRODUCERS) as f64 / started.elapsed().as_secs_f64()
}
