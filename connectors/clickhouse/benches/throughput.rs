//! Throughput of `danube-clickhouse`: rows/s from a Danube topic (embedded broker) into a
//! real ClickHouse, beside three baselines measured in the same run:
//! - `clickhouse-client` inserting the same rows from a file (the raw insert rate);
//! - the `clickhouse` crate inserting the same rows in 10,000-row `JSONEachRow` inserts;
//! - the raw Danube consume rate: the core runtime with a sink that does nothing.
//!
//! Run with `cargo bench -p danube-connector-clickhouse`. Prints figures, not a verdict.
//!
//! `BENCH_BROKER=real` (with `DANUBE_BROKER_BIN` naming the real Danube broker) runs the
//! binary against a real broker started for the run instead, beside a raw `danube-client`
//! consumer on the same broker, with the broker's default dispatch window (10) and with the
//! window `docs/running-on-danube.md` recommends (`dispatch.max_unacked_messages: 10000`, a
//! second broker started with that config; v0.15.1 ignores the per-subscription setting). The
//! publisher is paced to stay at most 200 rows ahead of the consumer being measured:
//! Danube v0.15.1 skips messages for a subscription that falls further behind
//! (`docs/running-on-danube.md`), so an unpaced burst measures the broker's defect.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_connect_core::config::SinkTopicConfig;
use danube_connect_core::{async_trait, ConnectorResult, Parts, Ready, Runtime, RuntimeConfig, Sink, SinkRecord};
use danube_connect_testkit::clickhouse::ClickHouseServer;
use danube_connect_testkit::process::ConnectorProcess;
use danube_connect_testkit::procfs::status_kib;
use danube_dev_broker::EmbeddedBroker;

const SUB: &str = "bench";

fn row(id: u64, size: usize) -> String {
    let head = format!(r#"{{"id":{id},"ts":1700000000,"kind":"click","value":{}.5,"pad":""#, id % 1000);
    let pad = "x".repeat(size.saturating_sub(head.len() + 2));
    format!("{head}{pad}\"}}")
}

async fn wait_count(ch: &ClickHouseServer, table: &str, n: u64, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if ch.query(&format!("SELECT count() FROM {table}")).await.ok().and_then(|v| v.parse::<u64>().ok()) == Some(n) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// `clickhouse-client` inserting the rows from a file; rows/s.
async fn raw_insert(ch: &ClickHouseServer, table: &str, rows: &[String]) -> f64 {
    let file = ch.dir().join(format!("{table}.json"));
    std::fs::write(&file, rows.join("\n") + "\n").expect("write rows file");
    let started = Instant::now();
    let status = std::process::Command::new("clickhouse-client")
        .args(["--host", "127.0.0.1", "--port", &ch.tcp_port.to_string()])
        .args(["--query", &format!("INSERT INTO {table} FORMAT JSONEachRow")])
        .stdin(std::fs::File::open(&file).expect("open rows file"))
        .status()
        .expect("run clickhouse-client (apt-get install -y clickhouse-client)");
    let took = started.elapsed();
    assert!(status.success(), "clickhouse-client failed");
    rows.len() as f64 / took.as_secs_f64()
}

/// The `clickhouse` crate (the connector's client) inserting the rows directly; rows/s.
async fn raw_crate_insert(ch: &ClickHouseServer, table: &str, rows: &[String]) -> f64 {
    let client = clickhouse::Client::default().with_url(ch.url()).with_validation(false);
    let started = Instant::now();
    for chunk in rows.chunks(10_000) {
        let mut body = Vec::with_capacity(chunk.iter().map(|r| r.len() + 1).sum());
        for r in chunk {
            body.extend_from_slice(r.as_bytes());
            body.push(b'\n');
        }
        let mut insert = client.insert_formatted_with(format!("INSERT INTO {table} FORMAT JSONEachRow"));
        insert.send(body.into()).await.expect("raw insert");
        insert.end().await.expect("raw insert");
    }
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

struct CountingSink(Arc<AtomicU64>);

#[async_trait]
impl Sink for CountingSink {
    async fn process(&self, _: &SinkRecord) -> ConnectorResult<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        self.0.fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The core runtime consuming with a no-op sink; rows/s.
async fn raw_consume(broker: &EmbeddedBroker, topic: &str, rows: &[String], window: usize) -> f64 {
    broker.publish(topic, b"prime".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(topic, SUB, window);
    let mut config = RuntimeConfig { name: SUB.into(), ..RuntimeConfig::default() };
    config.danube.service_url = broker.url();
    config.ops.enabled = false;
    config.log.level = "warn".into();
    config.sink.topics = vec![SinkTopicConfig::new(topic)];
    config.sink.batch.max_records = window;
    config.sink.batch.linger = Duration::from_millis(5);
    let token = tokio_util::sync::CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime");
    let seen = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(runtime.run(Parts::new().with_sink(Ready(CountingSink(seen.clone())))));
    assert!(broker.wait_for_consumers(topic, SUB, 1, Duration::from_secs(20)).await);
    let started = Instant::now();
    for r in rows {
        broker.publish(topic, r.clone().into_bytes(), HashMap::new(), None);
    }
    while seen.load(Ordering::Relaxed) < rows.len() as u64 && started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    token.cancel();
    let _ = task.await;
    rate
}

struct ConnectorRun {
    rate: f64,
    rss_mb: f64,
}

async fn connector(
    broker: &EmbeddedBroker,
    ch: &ClickHouseServer,
    table: &str,
    rows: &[String],
    window: usize,
    sync: &str,
) -> ConnectorRun {
    let topic = format!("/default/{table}");
    ch.exec(&format!("CREATE TABLE {table} (id UInt64, ts DateTime, kind String, value Float64, pad String) ENGINE = MergeTree ORDER BY id"))
        .await
        .expect("create table");
    broker.publish(&topic, b"prime".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(&topic, SUB, window);
    let spool = tempfile::tempdir().expect("spool");
    let env: HashMap<String, String> = [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", SUB.into()),
        ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
        ("CONNECTOR_SINK__BATCH__MAX_RECORDS", window.to_string()),
        ("CONNECTOR_SINK__BATCH__LINGER", "5ms".into()),
        ("CLICKHOUSE_URL", ch.url()),
        ("CLICKHOUSE_TABLES", format!("[{{topic=\"{topic}\", table=\"{table}\"}}]")),
        ("CLICKHOUSE_SPOOL__DIR", spool.path().display().to_string()),
        ("CLICKHOUSE_SPOOL__SYNC", sync.into()),
        // The last partial batch waits at most this long (default 1 s) before its insert.
        ("CLICKHOUSE_BATCH__MAX_LINGER", "200ms".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut sink = ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-clickhouse")), &env).expect("spawn");
    sink.wait_ready(Duration::from_secs(30)).await.expect("ready");
    assert!(broker.wait_for_consumers(&topic, SUB, 1, Duration::from_secs(20)).await);
    let started = Instant::now();
    for r in rows {
        broker.publish(&topic, r.clone().into_bytes(), HashMap::new(), None);
    }
    let pid = sink.pid().unwrap_or(0);
    let mut peak = 0;
    let done = {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            peak = peak.max(status_kib(pid, "VmRSS:"));
            if wait_count(ch, table, rows.len() as u64, Duration::from_millis(200)).await {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
        }
    };
    assert!(done, "not all rows arrived: {}", sink.log());
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    peak = peak.max(status_kib(pid, "VmHWM:"));
    sink.kill9();
    ConnectorRun { rate, rss_mb: peak as f64 / 1024.0 }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
    if std::env::var("BENCH_BROKER").as_deref() == Ok("real") {
        rt.block_on(real::run());
        return;
    }
    rt.block_on(async {
        let broker = EmbeddedBroker::start_default().await.expect("broker");
        let ch = ClickHouseServer::start().await.expect("ClickHouse (scripts/test.sh installs it)");
        let n: usize = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        println!("danube-clickhouse throughput, {n} rows per run (2-core machine, ClickHouse 18.16, embedded broker, max_linger 200ms)");
        for size in [100usize, 1000] {
            let rows: Vec<String> = (0..n as u64).map(|i| row(i, size)).collect();
            ch.exec(&format!("CREATE TABLE raw{size} (id UInt64, ts DateTime, kind String, value Float64, pad String) ENGINE = MergeTree ORDER BY id"))
                .await
                .expect("create raw table");
            let raw = raw_insert(&ch, &format!("raw{size}"), &rows).await;
            ch.exec(&format!("CREATE TABLE crate{size} (id UInt64, ts DateTime, kind String, value Float64, pad String) ENGINE = MergeTree ORDER BY id"))
                .await
                .expect("create raw table");
            let raw_crate = raw_crate_insert(&ch, &format!("crate{size}"), &rows).await;
            println!("\n~{size} B rows:");
            println!("  clickhouse-client raw insert from file: {raw:>10.0} rows/s");
            println!("  clickhouse crate raw insert (10k rows per insert): {raw_crate:>10.0} rows/s");
            for window in [10usize, 1000] {
                let consume = raw_consume(&broker, &format!("/default/consume{size}w{window}"), &rows, window).await;
                println!("  raw Danube consume (no-op sink), window {window:>4}: {consume:>10.0} rows/s");
                for sync in ["always", "never"] {
                    let run = connector(&broker, &ch, &format!("t{size}w{window}{sync}"), &rows, window, sync).await;
                    let bound = (raw * 0.5).min(consume);
                    println!(
                        "  danube-clickhouse window {window:>4}, spool sync {sync:<6}: {:>10.0} rows/s, peak RSS {:.1} MB; \
                         {:.0}% of clickhouse-client, {:.0}% of crate insert, {:.0}% of raw consume; target {:.0} rows/s ({}) {}",
                        run.rate,
                        run.rss_mb,
                        100.0 * run.rate / raw,
                        100.0 * run.rate / raw_crate,
                        100.0 * run.rate / consume,
                        bound,
                        if raw * 0.5 <= consume { "50% of raw insert" } else { "raw consume rate" },
                        if run.rate >= bound { "MET" } else { "missed" },
                    );
                }
            }
        }
    });
}

/// The run against the real Danube broker (`BENCH_BROKER=real`).
mod real {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use danube_connect_testkit::broker::{RealBroker, RealBrokerOptions};
    use danube_connect_testkit::clickhouse::ClickHouseServer;
    use danube_connect_testkit::danube::{reliable_producers, wait_progress, CountingConsumer};
    use danube_connect_testkit::process::ConnectorProcess;

    use super::row;

    /// Rows per run.
    const N: usize = 5_000;
    /// How far the publisher may run ahead of the measured consumer.
    const LEAD: u64 = 200;
    /// The longest wait for one run's `N` records.
    const TIMEOUT: Duration = Duration::from_secs(180);

    /// Publishes `N` rows of ~100 B with 4 raw producers, never more than [`LEAD`] ahead of
    /// `progress`.
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
                        producer.send(row(i as u64, 100).into_bytes(), None).await.expect("raw publish");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("publisher task");
        }
    }

    /// A raw `danube-client` consumer acking each message: rows/s.
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

    /// The `danube-clickhouse` binary (default sink settings): rows/s into ClickHouse.
    async fn sink(broker: &RealBroker, ch: &ClickHouseServer, table: &str) -> f64 {
        let topic = format!("/default/{table}");
        let name = format!("sink-{table}");
        ch.exec(&format!(
            "CREATE TABLE {table} (id UInt64, ts DateTime, kind String, value Float64, pad String) ENGINE = MergeTree ORDER BY id"
        ))
        .await
        .expect("create table");
        let creator = reliable_producers(broker.url(), &topic, "create", 1).await.expect("create the topic");
        let spool = tempfile::tempdir().expect("spool");
        let env: HashMap<String, String> = [
            ("DANUBE_SERVICE_URL", broker.url()),
            ("CONNECTOR_NAME", name.clone()),
            ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
            ("CLICKHOUSE_URL", ch.url()),
            ("CLICKHOUSE_TABLES", format!("[{{topic=\"{topic}\", table=\"{table}\"}}]")),
            ("CLICKHOUSE_SPOOL__DIR", spool.path().display().to_string()),
            ("CLICKHOUSE_BATCH__MAX_LINGER", "200ms".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut process =
            ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-clickhouse")), &env).expect("spawn");
        process.wait_ready(Duration::from_secs(60)).await.expect("ready");
        process
            .wait_consuming(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("the sink never subscribed: {e}"));
        // Progress: rows in ClickHouse, polled.
        let rows = Arc::new(AtomicU64::new(0));
        let poller = {
            let (rows, url, sql) = (rows.clone(), ch.url(), format!("SELECT count() FROM {table}"));
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                loop {
                    if let Ok(response) = client.post(&url).body(sql.clone()).send().await {
                        if let Ok(n) = response.text().await.map(|t| t.trim().parse::<u64>().unwrap_or(0)) {
                            rows.store(n, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let started = Instant::now();
        paced_publish(broker.url(), &topic, rows.clone()).await;
        let rate = wait_progress(&rows, N as u64, started, TIMEOUT, "danube-clickhouse").await;
        poller.abort();
        let _ = process.terminate(Duration::from_secs(30)).await;
        drop(creator);
        rate
    }

    pub(super) async fn run() {
        let ch = ClickHouseServer::start().await.expect("ClickHouse");
        println!(
            "danube-clickhouse on the REAL Danube broker (standalone, loopback), ClickHouse 18.16: {N} rows of \
             ~100 B per run, publisher paced to at most {LEAD} ahead of the consumer"
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
            let rate = sink(&broker, &ch, &format!("sink_{suffix}")).await;
            println!("real broker, {label:<17}: raw consume+ack (danube-client) {raw:>7.0} rows/s");
            println!(
                "real broker, {label:<17}: danube-clickhouse binary, defaults {rate:>7.0} rows/s in ClickHouse  ratio {:.2}",
                rate / raw
            );
        }
    }
}
