//! Benchmark (not a test): rows/s from COMMIT to Danube ack for a bulk insert of N rows,
//! beside `pg_recvlogical` streaming the same transaction raw (pgoutput, to /dev/null) in the
//! same run, and beside raw `danube-client` publishing of N payloads of the same size (and
//! attributes) with the same producer count to the same embedded broker, so the output shows
//! which of the two bounds the connector hits; then snapshot rows/s and the connector's peak RSS.
//!
//! `cargo bench -p danube-connector-postgres-cdc` (rows: `CDC_BENCH_ROWS`, default 50000;
//! producers per topic: `CDC_BENCH_PRODUCERS`, default 16).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::postgres::Postgres;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;

const BIN: &str = env!("CARGO_BIN_EXE_danube-postgres-cdc");

fn producers() -> usize {
    std::env::var("CDC_BENCH_PRODUCERS").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
}

/// Raw publish: `rows` copies of `payload` (with `attributes`, routing keys spread like row
/// keys) over `producers` producers, each sending one message at a time like the connector's
/// lanes, reliable dispatch; seconds until the last is acked.
async fn raw_publish(
    url: String,
    rows: usize,
    producers: usize,
    payload: Vec<u8>,
    attributes: HashMap<String, String>,
) -> f64 {
    let lanes = reliable_producers(url, "/default/raw.bench", "bench-raw", producers).await.expect("raw producers");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, producer) in lanes.into_iter().enumerate() {
        let (payload, attributes) = (payload.clone(), attributes.clone());
        let count = rows / producers + usize::from(i < rows % producers);
        tasks.push(tokio::spawn(async move {
            for n in 0..count {
                let key = (n * producers + i).to_string();
                producer.send_with_key(payload.clone(), Some(attributes.clone()), &key).await.expect("send");
            }
        }));
    }
    for task in tasks {
        task.await.expect("producer task");
    }
    started.elapsed().as_secs_f64()
}

fn connector_env(pg: &Postgres, broker: &EmbeddedBroker, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", "bench".into()),
        ("CONNECTOR_SOURCE__PRODUCERS_PER_TOPIC", producers().to_string()),
        ("CONNECTOR_SOURCE__MAX_IN_FLIGHT", "8192".into()),
        ("CONNECTOR_LOG__LEVEL", "warn".into()),
        ("POSTGRES_CDC_URL", pg.url()),
        ("POSTGRES_CDC_PUBLICATION", "bench_pub".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn wait_streaming(pg: &Postgres, slot: &str) {
    for _ in 0..600 {
        if pg.psql(&format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'")).unwrap_or_default()
            == "t"
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("slot {slot} not streaming");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: usize = std::env::var("CDC_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let pg = Postgres::start().expect("postgres");
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    pg.psql("CREATE TABLE bench (id bigint PRIMARY KEY, name text, v int, at timestamptz DEFAULT now()); CREATE PUBLICATION bench_pub FOR TABLE bench")
        .expect("schema");
    let recvlogical = pg.bin_dir().join("pg_recvlogical");
    let port = pg.port().to_string();
    let base = ["-h", "127.0.0.1", "-p", port.as_str(), "-U", "postgres", "-d", "postgres"];
    let created = Command::new(&recvlogical)
        .args(base)
        .args(["-S", "raw_slot", "-P", "pgoutput", "--create-slot"])
        .status()
        .expect("pg_recvlogical");
    assert!(created.success(), "create raw slot");

    // Connector: streaming a bulk insert.
    let env = connector_env(&pg, &broker, &[("POSTGRES_CDC_SLOT", "cdc_slot"), ("POSTGRES_CDC_SNAPSHOT", "never")]);
    let mut process = ConnectorProcess::spawn(Path::new(BIN), &env).expect("spawn");
    process.wait_ready(Duration::from_secs(60)).await.expect("ready");
    wait_streaming(&pg, "cdc_slot").await;
    pg.psql(&format!(
        "INSERT INTO bench (id, name, v) SELECT g, 'name-' || g, g % 1000 FROM generate_series(1, {rows}) g"
    ))
    .expect("bulk insert");
    let committed = Instant::now();
    let got = broker.wait_for_messages("/default/public.bench", rows, Duration::from_secs(900)).await.len();
    let connector_secs = committed.elapsed().as_secs_f64();
    assert_eq!(got, rows, "connector delivered every row: {}", process.log());
    let stream_rss = process.pid().map_or(0, peak_rss_kib);
    let status = process.terminate(Duration::from_secs(60)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", process.log());
    let sample = broker.messages("/default/public.bench").into_iter().nth(rows / 2).expect("a connector record");
    let payload_len = sample.payload.len();

    // Raw danube-client publish of the same payloads to the same broker, on its own runtime.
    let url = broker.url();
    let (payload, attributes) = (sample.payload.to_vec(), sample.attributes.clone());
    let danube_secs = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        runtime.block_on(raw_publish(url, rows, producers(), payload, attributes))
    })
    .await
    .expect("raw publish thread");
    assert_eq!(broker.messages("/default/raw.bench").len(), rows, "raw publish stored every message");

    // Baseline: pg_recvlogical reads the same transaction from its own pgoutput slot.
    let end = pg.psql("SELECT pg_current_wal_lsn()").expect("lsn");
    let started = Instant::now();
    let raw = Command::new(&recvlogical)
        .args(base)
        .args([
            "-S",
            "raw_slot",
            "--start",
            "--endpos",
            &end,
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bench_pub",
            "-f",
            "/dev/null",
        ])
        .status()
        .expect("pg_recvlogical");
    let raw_secs = started.elapsed().as_secs_f64();
    assert!(raw.success(), "pg_recvlogical");

    // Snapshot: a fresh slot reads the table.
    let env = connector_env(
        &pg,
        &broker,
        &[
            ("POSTGRES_CDC_SLOT", "snap_slot"),
            ("POSTGRES_CDC_SNAPSHOT", "initial_only"),
            ("POSTGRES_CDC_TOPIC", "/default/snap.{table}"),
        ],
    );
    let started = Instant::now();
    let mut process = ConnectorProcess::spawn(Path::new(BIN), &env).expect("spawn");
    process.wait_ready(Duration::from_secs(60)).await.expect("ready");
    let got = broker.wait_for_messages("/default/snap.bench", rows, Duration::from_secs(900)).await.len();
    let snapshot_secs = started.elapsed().as_secs_f64();
    assert_eq!(got, rows, "snapshot delivered every row: {}", process.log());
    let snapshot_rss = process.pid().map_or(0, peak_rss_kib);
    let _ = process.terminate(Duration::from_secs(60)).await;

    let connector_rate = rows as f64 / connector_secs;
    let raw_rate = rows as f64 / raw_secs;
    let danube_rate = rows as f64 / danube_secs;
    println!("rows: {rows}, payload {payload_len} bytes, producers per topic: {}", producers());
    println!("connector (commit -> Danube ack): {connector_rate:.0} rows/s ({connector_secs:.2}s)");
    println!("pg_recvlogical raw to /dev/null:  {raw_rate:.0} rows/s ({raw_secs:.2}s)");
    println!("danube-client raw publish:        {danube_rate:.0} msgs/s ({danube_secs:.2}s)");
    println!("ratio connector/pg_recvlogical: {:.3}", connector_rate / raw_rate);
    println!("ratio connector/raw-danube:     {:.3}", connector_rate / danube_rate);
    println!("snapshot: {:.0} rows/s ({snapshot_secs:.2}s, including startup)", rows as f64 / snapshot_secs);
    println!("connector peak RSS: streaming {} MiB, snapshot {} MiB", stream_rss / 1024, snapshot_rss / 1024);
}
