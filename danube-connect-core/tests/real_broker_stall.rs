//! Sinks on the real Danube broker (`DANUBE_BROKER_BIN`): the reliable-dispatch stall after a
//! burst (a Danube 0.15 defect, see `docs/running-on-danube.md`), its detection, and what
//! delivers a burst in full: on a single broker nothing does; on a 2-broker cluster with
//! shared segment storage, moving the stalled topic to the other broker (by the operator or by
//! the sink itself) does. With the variable unset every test prints one loud line and passes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use danube_client::{DanubeClient, Producer, SubType};
use danube_connect_core::config::{RetryConfig, RuntimeConfig, SinkTopicConfig};
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Parts, Ready, Runtime, Sink, SinkRecord};
use danube_connect_testkit::broker::{
    real_broker_binary, sum_samples, RealBroker, RealBrokerOptions, RealCluster, StorageMode,
};
use danube_connect_testkit::danube::burst;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

fn real_broker_available() -> bool {
    if real_broker_binary().is_some() {
        return true;
    }
    eprintln!("REAL BROKER SUITE DID NOT RUN: DANUBE_BROKER_BIN is unset");
    false
}

/// A real outside system for the sink: a file, one payload per line, flushed per batch.
struct FileSink {
    file: tokio::sync::Mutex<tokio::fs::File>,
}

impl FileSink {
    async fn create(path: &Path) -> Self {
        let file = tokio::fs::File::create(path).await.expect("create sink file");
        Self { file: tokio::sync::Mutex::new(file) }
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()> {
        self.process_batch(std::slice::from_ref(record)).await
    }

    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        let mut bytes = Vec::new();
        for record in records {
            bytes.extend_from_slice(&record.payload);
            bytes.push(b'\n');
        }
        let mut file = self.file.lock().await;
        file.write_all(&bytes).await.map_err(|e| ConnectorError::retryable("write sink file", e))?;
        file.flush().await.map_err(|e| ConnectorError::retryable("flush sink file", e))?;
        Ok(())
    }
}

fn distinct_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().collect::<HashSet<_>>().len()
}

fn sink_config(name: &str, broker: &RealBroker, topic: &str) -> RuntimeConfig {
    let mut config = RuntimeConfig { name: name.to_string(), ..RuntimeConfig::default() };
    config.danube.service_url = broker.url();
    config.danube.connect_timeout = Duration::from_secs(30);
    config.danube.broker_metrics_url = Some(broker.metrics_url());
    config.ops.listen = "127.0.0.1:0".parse().expect("addr");
    config.retry = RetryConfig { max_elapsed: Duration::from_secs(10), ..RetryConfig::default() };
    config.sink.topics = vec![SinkTopicConfig::new(topic)];
    config
}

/// Creates `count` reliable producers (so the topic exists before anyone subscribes).
async fn producers(broker: &RealBroker, topic: &str, count: usize) -> Vec<Producer> {
    danube_connect_testkit::danube::reliable_producers(broker.url(), topic, "burst", count).await.expect("producers")
}

/// Waits until `count()` reaches `want` or stops growing for `quiet`; returns the last count.
async fn settle(want: usize, quiet: Duration, limit: Duration, count: impl Fn() -> usize) -> usize {
    let started = Instant::now();
    let mut last = count();
    let mut changed = Instant::now();
    while last < want && changed.elapsed() < quiet && started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = count();
        if now != last {
            last = now;
            changed = Instant::now();
        }
    }
    last
}

async fn ops_text(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    match reqwest::get(format!("http://{addr}{path}")).await {
        Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// (a) The defect itself, with a raw `danube-client` consumer that acks every message at
/// once: a burst larger than the dispatch window + 256 is not delivered in full and the
/// broker keeps reporting a lag. When upstream fixes the broker this test fails: then the
/// detection and the docs can be relaxed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_consumer_loses_part_of_a_burst_at_the_default_window() {
    if !real_broker_available() {
        return;
    }
    let broker = RealBroker::start().await.expect("real broker");
    let topic = "/default/raw-burst";
    let producers = producers(&broker, topic, 4).await;
    let client = DanubeClient::builder().service_url(broker.url()).build().await.expect("client");
    let mut consumer = client
        .new_consumer()
        .with_topic(topic.to_string())
        .with_consumer_name("raw".to_string())
        .with_subscription("raw-sub".to_string())
        .with_subscription_type(SubType::Exclusive)
        .build()
        .expect("consumer");
    consumer.subscribe().await.expect("subscribe");
    let mut messages = consumer.receive().await.expect("receive");
    let seen: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = messages.recv().await {
                seen.lock().expect("lock").insert(message.payload.to_vec());
                let _ = consumer.ack(&message).await;
            }
        })
    };
    let total = 5_000;
    let rate = burst(producers, total, |n| n.to_string().into_bytes()).await;
    let delivered =
        settle(total as usize, Duration::from_secs(5), Duration::from_secs(60), || seen.lock().expect("lock").len())
            .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lag = broker
        .metric_sum("danube_subscription_lag_messages", &[("topic", topic), ("subscription", "raw-sub")])
        .await
        .expect("broker metrics");
    println!("raw consumer, window 10: published {total} at {rate:.0} msg/s, delivered {delivered}, broker lag {lag}");
    reader.abort();
    assert!(delivered < total as usize, "the whole burst arrived: has the broker defect been fixed? ({delivered})");
    assert!(lag > 0.0, "the broker reports no lag although {delivered} of {total} arrived");
    assert!(broker.log().contains("poll_next error"), "the broker did not log the dispatcher's poll error");
}

/// (c) A forced stall (a burst far larger than the window) is detected: the runtime's
/// `connector_sink_stalled` gauge goes to 1 and `/readyz` answers 503 naming the stall;
/// with the broker's metrics URL, and with its admin API alone (the figures then come from
/// the broker `ListBrokers` names; a single broker refuses the move the sink then asks for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_stall_is_detected_by_metric_and_readiness() {
    if !real_broker_available() {
        return;
    }
    for through_admin in [false, true] {
        forced_stall(through_admin).await;
    }
}

async fn forced_stall(through_admin: bool) {
    let broker = RealBroker::start().await.expect("real broker");
    let topic = "/default/forced-stall";
    let producers = producers(&broker, topic, 4).await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("out.txt");
    let mut config = sink_config("stall-sink", &broker, topic);
    config.sink.stall_timeout = Duration::from_secs(3);
    if through_admin {
        config.danube.broker_metrics_url = None;
        config.danube.broker_admin_url = Some(broker.admin_url());
    }
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime");
    let ops = runtime.ops_addr().expect("ops port");
    let sink = FileSink::create(&path).await;
    let run = tokio::spawn(async move { runtime.run(Parts::new().with_sink(Ready(sink))).await.expect("run") });
    // Let the consumer subscribe before the burst (a new subscription starts at the end).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ops_text(ops, "/readyz").await.0, 200, "ready before the burst");
    let total = 5_000;
    burst(producers, total, |n| n.to_string().into_bytes()).await;
    let burst_done = Instant::now();
    let mut detected = None;
    while burst_done.elapsed() < Duration::from_secs(40) {
        let (_, metrics) = ops_text(ops, "/metrics").await;
        if sum_samples(&metrics, "connector_sink_stalled", &[("topic", topic)]) == 1.0 {
            detected = Some(burst_done.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let delivered = distinct_lines(&path);
    println!("forced stall (figures through the admin API: {through_admin}): {delivered} of {total} delivered; detected after {detected:?}");
    assert!(delivered < total as usize, "the burst arrived in full, nothing stalled ({delivered})");
    let after = detected.expect("connector_sink_stalled never went to 1 within 40 s of the burst");
    assert!(after < Duration::from_secs(30), "detection took {after:?}");
    let (status, body) = ops_text(ops, "/readyz").await;
    assert_eq!(status, 503, "readyz while stalled: {body}");
    assert!(body.contains("stalled by the broker"), "readyz names the stall: {body}");
    token.cancel();
    let _ = run.await;
}

/// (b) Acceptance: a burst of 20,000 messages from 4 raw producers into a running sink's
/// topic, on the broker's defaults (dispatch window 10), sink with default settings plus the
/// broker's metrics URL. On a single Danube 0.15 broker nothing delivers such a burst in full
/// (see `docs/running-on-danube.md`), so the requirement here is the fallback: every message
/// arrives, or the stall is reported (`connector_sink_stalled` = 1) within 30 s of the last
/// delivery; the recovery on a cluster is tests (d) and (e). The raised broker window the docs recommend is measured by the bench
/// `real_broker_sink` (it depends on the sink's speed: with a slow sink the broker's 30 s ack
/// timeout redelivers what waits in the sink's queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_20000_is_delivered_in_full_or_the_stall_is_reported_within_30s() {
    if !real_broker_available() {
        return;
    }
    let total = 20_000u64;
    let broker = RealBroker::start().await.expect("real broker");
    let topic = "/default/burst-default";
    let (delivered, stalled_after, rate) = run_burst(&broker, topic, total).await;
    println!(
        "burst of {total} at {rate:.0} msg/s, broker window 10: {delivered} distinct delivered, stall reported {stalled_after:?} after the last delivery"
    );
    assert!(delivered <= total as usize, "more distinct records than published: {delivered}");
    if delivered < total as usize {
        let after = stalled_after.expect("delivery stopped short but no stall was reported within 40 s");
        assert!(after <= Duration::from_secs(30), "stall reported only {after:?} after the last delivery");
    } else {
        assert_eq!(stalled_after, None, "a stall was reported although everything arrived");
    }
}

/// Runs a default-settings sink (plus the broker's metrics URL) on `topic`, publishes a burst
/// of `total`, and returns (distinct delivered, when the stall gauge went to 1 counted from
/// the last delivery, publish rate).
async fn run_burst(broker: &RealBroker, topic: &str, total: u64) -> (usize, Option<Duration>, f64) {
    let producers = producers(broker, topic, 4).await;
    let config = sink_config("burst-sink", broker, topic);
    let outcome = follow_burst(
        config,
        producers,
        topic,
        total,
        Duration::from_secs(2),
        true,
        async || {},
        async |ops, outcome: &Burst| {
            if outcome.delivered == total as usize || outcome.stalled_after.is_some() {
                return;
            }
            // Diagnostics for a failing run: what the broker and the sink say.
            let broker_metrics = broker.metrics().await.unwrap_or_default();
            for line in broker_metrics.lines().filter(|l| l.contains(topic) && !l.starts_with('#')) {
                println!("  broker: {line}");
            }
            let (_, sink_metrics) = ops_text(ops, "/metrics").await;
            for line in
                sink_metrics.lines().filter(|l| l.starts_with("connector_records") || l.starts_with("connector_sink"))
            {
                println!("  sink: {line}");
            }
            println!("  readyz: {:?}", ops_text(ops, "/readyz").await);
            println!("  broker poll_next errors: {}", broker.log().matches("poll_next error").count());
        },
    )
    .await;
    (outcome.delivered, outcome.stalled_after, outcome.publish_rate)
}

/// What a burst into a sink's topic gave.
struct Burst {
    publish_rate: f64,
    /// Distinct records when the stall was reported.
    at_stall: usize,
    /// When the stall gauge went to 1, counted from the last delivery before it.
    stalled_after: Option<Duration>,
    /// Distinct records in the end.
    delivered: usize,
    /// From the stall report to the last record.
    recovered_in: Duration,
}

/// Starts a sink runtime with `config` writing to a file, publishes a burst of `total` to
/// `topic` through `producers` once the sink has run for `settle`, then follows delivery and
/// the stall gauge until everything arrived, nothing new came for 40 s, or (with
/// `stop_at_stall`) the stall was reported. `on_stall` runs once, when the gauge goes to 1;
/// `diagnose` runs with the ops address and the outcome before the runtime stops.
#[allow(clippy::too_many_arguments)]
async fn follow_burst(
    config: RuntimeConfig,
    producers: Vec<Producer>,
    topic: &str,
    total: u64,
    settle: Duration,
    stop_at_stall: bool,
    mut on_stall: impl AsyncFnMut(),
    diagnose: impl AsyncFnOnce(std::net::SocketAddr, &Burst),
) -> Burst {
    // The runtime's warnings and the stall error, in the test output.
    let _ = tracing_subscriber::fmt().with_env_filter("danube_connect_core=warn").with_test_writer().try_init();
    let dir = tempfile::tempdir().expect("dir");
    let path: PathBuf = dir.path().join("out.txt");
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime");
    let ops = runtime.ops_addr().expect("ops port");
    let sink = FileSink::create(&path).await;
    let run = tokio::spawn(async move { runtime.run(Parts::new().with_sink(Ready(sink))).await.expect("run") });
    tokio::time::sleep(settle).await;
    let publish_rate = burst(producers, total, |n| n.to_string().into_bytes()).await;
    let mut last = 0;
    let mut last_change = Instant::now();
    let mut stalled_after = None;
    let mut stalled_at = None;
    let mut at_stall = 0;
    loop {
        let delivered = distinct_lines(&path);
        if delivered != last {
            last = delivered;
            last_change = Instant::now();
        }
        let (_, metrics) = ops_text(ops, "/metrics").await;
        if stalled_after.is_none() && sum_samples(&metrics, "connector_sink_stalled", &[("topic", topic)]) == 1.0 {
            stalled_after = Some(last_change.elapsed());
            stalled_at = Some(Instant::now());
            at_stall = delivered;
            println!(
                "  stall reported with {delivered} distinct delivered, {:?} after the last delivery",
                last_change.elapsed()
            );
            on_stall().await;
        }
        let stop = stop_at_stall && stalled_after.is_some();
        if delivered >= total as usize || stop || last_change.elapsed() > Duration::from_secs(40) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let delivered = distinct_lines(&path);
    let recovered_in = stalled_at.map(|at| at.elapsed().saturating_sub(last_change.elapsed())).unwrap_or_default();
    let outcome = Burst { publish_rate, at_stall, stalled_after, delivered, recovered_in };
    diagnose(ops, &outcome).await;
    token.cancel();
    let _ = run.await;
    outcome
}

/// A sink on a 2-broker cluster whose brokers share segment storage (`shared_fs`), the broker
/// window at its default (10): a config with the cluster's admin API.
fn cluster_sink_config(name: &str, cluster: &RealCluster, topic: &str, recovery: bool) -> RuntimeConfig {
    let mut config = RuntimeConfig { name: name.to_string(), ..RuntimeConfig::default() };
    config.danube.service_url = cluster.url();
    config.danube.connect_timeout = Duration::from_secs(30);
    config.danube.broker_admin_url = Some(cluster.brokers()[0].admin_url());
    config.ops.listen = "127.0.0.1:0".parse().expect("addr");
    config.retry = RetryConfig { max_elapsed: Duration::from_secs(10), ..RetryConfig::default() };
    config.sink.topics = vec![SinkTopicConfig::new(topic)];
    config.sink.stall_recovery = recovery;
    config
}

/// Publishes a burst of `total` into a running sink's topic on `cluster`; when the stall is
/// reported, `operator_move` moves the topic (what an operator does), then follows delivery
/// until everything arrived or nothing new came for 40 s.
async fn run_cluster_burst(
    cluster: &RealCluster,
    topic: &str,
    total: u64,
    config: RuntimeConfig,
    operator_move: bool,
) -> Burst {
    let producers =
        danube_connect_testkit::danube::reliable_producers(cluster.url(), topic, "burst", 4).await.expect("producers");
    // A running sink, not one subscribed a moment ago: Danube stores a subscription's cursor
    // on an ack at most every 10 s from the dispatcher's start, and a topic that moves without
    // a stored cursor starts the subscription at the end of the topic on the new broker.
    let settle = Duration::from_secs(12);
    let on_stall = async || {
        if operator_move {
            let moved = cluster.move_topic(topic, Duration::from_secs(60)).await.expect("move the topic");
            println!("  operator moved {topic} to broker {moved}");
        }
    };
    follow_burst(config, producers, topic, total, settle, false, on_stall, async |_, outcome: &Burst| {
        if outcome.delivered < total as usize {
            let log = cluster.log();
            println!(
                "  brokers: poll_next errors {}, unrepaired gaps {}, tiered readers {}",
                log.matches("poll_next error").count(),
                log.matches("could not be repaired").count(),
                log.matches("creating tiered reader").count()
            );
        }
    })
    .await
}

impl std::fmt::Display for Burst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "published at {:.0} msg/s; {} distinct when the stall was reported ({:?} after the last delivery); {} distinct in the end, the last {:?} after the report",
            self.publish_rate, self.at_stall, self.stalled_after, self.delivered, self.recovered_in
        )
    }
}

fn shared_fs_cluster_options() -> RealBrokerOptions {
    RealBrokerOptions { storage: StorageMode::SharedFs, ..RealBrokerOptions::default() }
}

/// (d) The operator action, measured: on a 2-broker cluster with shared segment storage, a
/// sink (defaults, no recovery of its own) stalls on a burst of 20,000 at the default window,
/// the stall is reported within 30 s, the operator moves the topic to the other broker
/// (`UnloadTopic`), and every one of the 20,000 arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_stalled_topic_to_another_broker_delivers_the_whole_burst() {
    if !real_broker_available() {
        return;
    }
    let total = 20_000u64;
    let cluster = RealCluster::start(2, shared_fs_cluster_options()).await.expect("cluster");
    let topic = "/default/burst-moved";
    let config = cluster_sink_config("moved-sink", &cluster, topic, false);
    let outcome = run_cluster_burst(&cluster, topic, total, config, true).await;
    println!("operator move, burst of {total}, window 10, shared_fs: {outcome}");
    let after = outcome.stalled_after.expect("no stall reported: did the whole burst arrive without one?");
    assert!(outcome.at_stall < total as usize, "the burst arrived before the stall report");
    assert!(after <= Duration::from_secs(30), "stall reported only {after:?} after the last delivery");
    assert_eq!(outcome.delivered, total as usize, "after the move not everything arrived");
}

/// (e) Acceptance with default sink settings on a cluster: the sink knows the cluster's admin
/// API, detects the stall after a burst of 20,000 and moves the topic itself
/// (`sink.stall_recovery`, default on): all 20,000 arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_on_a_cluster_recovers_a_stalled_burst_of_20000_by_itself() {
    if !real_broker_available() {
        return;
    }
    let total = 20_000u64;
    let cluster = RealCluster::start(2, shared_fs_cluster_options()).await.expect("cluster");
    let topic = "/default/burst-recovered";
    let config = cluster_sink_config("recovering-sink", &cluster, topic, RuntimeConfig::default().sink.stall_recovery);
    let outcome = run_cluster_burst(&cluster, topic, total, config, false).await;
    println!("sink recovery, burst of {total}, window 10, shared_fs: {outcome}");
    assert_eq!(outcome.delivered, total as usize, "not everything arrived: {outcome}");
}
