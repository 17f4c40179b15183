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
//! The Danube broker is the development broker, in process, or with `BENCH_BROKER=real` the
//! real Danube broker (`DANUBE_BROKER_BIN`, standalone, its defaults) as a process; the output
//! names it. Against the real broker: imported records are counted with the broker's
//! `danube_topic_messages_in_total`; export is fed by raw producers (4) and counted with the
//! bridge's `connector_records_acked_total`, beside a raw `danube-client` consumer reading a
//! burst of the same size from the same broker. Its reliable subscriptions stall on bursts
//! (docs/running-on-danube.md), so export runs `BENCH_EXPORT_RECORDS` (default 1000 there) and
//! a stalled phase prints how far it got after `BENCH_EXPORT_WAIT` seconds (default 60).
//!
//! `cargo bench -p danube-connector-kafka-bridge` (`BENCH_RECORDS` sets the count).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use danube_connect_testkit::broker::{sum_samples, BrokerKind, TestBroker};
use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::danube::TopicReader;
use danube_connect_testkit::kafka::Tansu;
use danube_connect_testkit::process::ConnectorProcess;
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
    let kind = match std::env::var("BENCH_BROKER").as_deref() {
        Ok("real") => BrokerKind::Real,
        Ok("dev") | Err(_) => BrokerKind::Dev,
        Ok(other) => panic!("BENCH_BROKER={other}: expected dev or real"),
    };
    let danube = TestBroker::start(kind).await.expect("danube broker");
    let export_n: usize = std::env::var("BENCH_EXPORT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if kind == BrokerKind::Real { n.min(1000) } else { n });
    let export_wait =
        Duration::from_secs(std::env::var("BENCH_EXPORT_WAIT").ok().and_then(|v| v.parse().ok()).unwrap_or(60));
    let bootstrap = tansu.bootstrap();
    create_topic(&bootstrap, "bench-in").await;
    create_topic(&bootstrap, "bench-out").await;
    println!(
        "kafka-bridge throughput on the {kind}: {n} records (export {export_n}) of {PAYLOAD} bytes, {PARTITIONS} kafka partitions, 64 keys"
    );

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
    let first = wait_count(&danube, "/default/imported", 1).await;
    let started = Instant::now();
    let done = wait_count(&danube, "/default/imported", n).await;
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
    for (label, window) in [("window 10", None), ("window 1000", Some(1000u32))] {
        let topic = format!("/default/export-{}", window.unwrap_or(10));
        let mut env = env.clone();
        env.remove("KAFKA_BRIDGE_IMPORT__MAPPINGS");
        env.insert("CONNECTOR_NAME".to_string(), "bench-export".to_string());
        env.insert("CONNECTOR_SINK__TOPICS".to_string(), format!(r#"[{{topic="{topic}"}}]"#));
        env.insert("CONNECTOR_SINK__BATCH__MAX_RECORDS".to_string(), "100".to_string());
        env.insert("CONNECTOR_SINK__BATCH__LINGER".to_string(), "5ms".to_string());
        env.insert("CONNECTOR_SINK__CONCURRENCY".to_string(), "4".to_string());
        env.insert("KAFKA_BRIDGE_EXPORT__TOPICS".to_string(), format!(r#"{{"{topic}"="bench-out"}}"#));
        env.insert("KAFKA_BRIDGE_EXPORT__LINGER".to_string(), "1ms".to_string());
        let payload = vec![b'x'; PAYLOAD];
        let (rate, done, rss) = match &danube {
            TestBroker::Dev(dev) => {
                dev.publish(&topic, b"warmup".to_vec(), HashMap::new(), None);
                if let Some(w) = window {
                    dev.set_max_unacked(&topic, "bench-export", w as usize);
                }
                let mut export = spawn(&env).await;
                assert!(dev.wait_for_consumers(&topic, "bench-export", 1, Duration::from_secs(30)).await);
                let started = Instant::now();
                for i in 0..export_n {
                    dev.publish(&topic, payload.clone(), HashMap::new(), Some(format!("key-{}", i % 64)));
                }
                let counted = || std::future::ready(dev.ack_count(&topic, "bench-export") as usize);
                let measured = measure_from(&export, export_n, started, export_wait, counted).await;
                let _ = export.terminate(Duration::from_secs(20)).await;
                measured
            }
            TestBroker::Real(real) => {
                // The topic exists before the bridge subscribes; then the window is set on
                // its subscription, then the burst goes in.
                drop(reliable_producers(real.url(), &topic, "mk", 1).await.expect("create topic"));
                let mut export = spawn(&env).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(w) = window {
                    real.set_dispatch_window(&topic, "bench-export", w).await.expect("set the dispatch window");
                }
                let started = Instant::now();
                publish_burst(real.url(), &topic, export_n).await;
                let metrics = format!("http://127.0.0.1:{}/metrics", export.ops_port);
                let counted = || acked_by(&metrics, &topic);
                let measured = measure_from(&export, export_n, started, export_wait, counted).await;
                let _ = export.terminate(Duration::from_secs(20)).await;
                measured
            }
        };
        let stalled = if done < export_n { format!("  STALLED: {done} of {export_n} acked") } else { String::new() };
        println!(
            "export danube->kafka ({label}): {rate:>8.0} records/s  ({:.0}% of raw produce)  peak RSS {rss} MB{stalled}",
            100.0 * rate / raw_produce
        );
        if let TestBroker::Real(real) = &danube {
            // The raw-client baseline for a sink: a danube-client consumer acking each
            // message, a burst of the same size, the same window.
            let topic = format!("/default/rawsink-{}", window.unwrap_or(10));
            drop(reliable_producers(real.url(), &topic, "mk", 1).await.expect("create topic"));
            let reader = TopicReader::subscribe(real.url(), &topic, "raw-sink").await.expect("raw consumer");
            if let Some(w) = window {
                real.set_dispatch_window(&topic, "raw-sink", w).await.expect("set the dispatch window");
            }
            let started = Instant::now();
            publish_burst(real.url(), &topic, export_n).await;
            let deadline = started + export_wait;
            while reader.count() < export_n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let got = reader.count().min(export_n);
            let rate = got as f64 / started.elapsed().as_secs_f64();
            let stalled =
                if got < export_n { format!("  STALLED: {got} of {export_n} received") } else { String::new() };
            println!("raw danube-client consumer ({label}): {rate:>8.0} records/s{stalled}");
        }
    }
}

/// Waits (up to 300 s) until `topic` holds `n` messages; returns the count reached. The dev
/// broker's cheap counter, or the real broker's `danube_topic_messages_in_total`.
async fn wait_count(danube: &TestBroker, topic: &str, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let count = match danube {
            TestBroker::Dev(dev) => dev.message_count(topic),
            TestBroker::Real(real) => {
                real.metric_sum("danube_topic_messages_in_total", &[("topic", topic)]).await.expect("metrics") as usize
            }
        };
        if count >= n || Instant::now() >= deadline {
            return count;
        }
        let pause = if matches!(danube, TestBroker::Dev(_)) { 5 } else { 25 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Records the bridge acked on `topic`, from its `/metrics`.
async fn acked_by(metrics_url: &str, topic: &str) -> usize {
    let text = match reqwest::get(metrics_url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    sum_samples(&text, "connector_records_acked_total", &[("topic", topic)]) as usize
}

/// Publishes `n` keyed records of `PAYLOAD` bytes through `PUBLISH_PRODUCERS` raw producers
/// at full speed.
async fn publish_burst(url: String, topic: &str, n: usize) {
    let producers = reliable_producers(url, topic, "burst", PUBLISH_PRODUCERS).await.expect("producers");
    let tasks: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(lane, producer)| {
            tokio::spawn(async move {
                for i in (lane..n).step_by(PUBLISH_PRODUCERS) {
                    producer.send_with_key(vec![b'x'; PAYLOAD], None, &format!("key-{}", i % 64)).await.expect("send");
                }
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        task.expect("publish task");
    }
}

async fn spawn(env: &HashMap<String, String>) -> ConnectorProcess {
    let mut process =
        ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-kafka-bridge")), env).expect("spawn bridge");
    process.wait_ready(Duration::from_secs(30)).await.expect("bridge ready");
    process
}

/// Rate from `started` until `count()` reaches `n` (or `wait` passed), the count reached and
/// the bridge's peak RSS.
async fn measure_from<F, Fut>(
    process: &ConnectorProcess,
    n: usize,
    started: Instant,
    wait: Duration,
    count: F,
) -> (f64, usize, u64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let deadline = started + wait;
    let mut done = count().await;
    let mut last_change = Instant::now();
    while done < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = count().await;
        if now != done {
            last_change = Instant::now();
        }
        done = now;
    }
    let done = done.min(n);
    // A stalled run's rate covers the time until its last progress.
    let end = if done < n { last_change } else { Instant::now() };
    let rate = done as f64 / end.duration_since(started).as_secs_f64();
    (rate, done, peak_rss_mb(process.pid()))
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
