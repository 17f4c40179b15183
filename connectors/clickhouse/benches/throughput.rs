//! Throughput of `danube-clickhouse`: rows/s from a Danube topic (embedded broker) into a
//! real ClickHouse, beside three baselines measured in the same run:
//! - `clickhouse-client` inserting the same rows from a file (the raw insert rate);
//! - the `clickhouse` crate inserting the same rows in 10,000-row `JSONEachRow` inserts;
//! - the raw Danube consume rate: the core runtime with a sink that does nothing.
//!
//! Run with `cargo bench -p danube-connector-clickhouse`. Prints figures, not a verdict.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_connect_core::config::SinkTopicConfig;
use danube_connect_core::{async_trait, ConnectorResult, Runtime, RuntimeConfig, SinkConnector, SinkRecord};
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
impl SinkConnector for CountingSink {
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
    let task = tokio::spawn(runtime.run_sink(CountingSink(seen.clone())));
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
