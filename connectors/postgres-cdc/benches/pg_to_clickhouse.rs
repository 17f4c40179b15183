//! Benchmark (not a test): rows/s from a PostgreSQL COMMIT until the rows are in ClickHouse,
//! through `danube-postgres-cdc` -> Danube -> `danube-clickhouse` (`mode = "cdc"`), beside two
//! baselines measured in the same run:
//!
//! - `pg_recvlogical` reading the same transaction from its own pgoutput slot (to /dev/null);
//! - `clickhouse-client` inserting the same rows (exported from the pipeline's table) into a
//!   table of the same structure and engine.
//!
//! Also the peak RSS and the CPU per 1000 rows of each connector, and where the sink's time
//! went: its batches (count, mean size) and the time in `process_batch` (mapping + spool
//! append + `fdatasync`), read from its `/metrics`.
//!
//! `cargo build --release -p danube-connector-clickhouse && cargo bench -p
//! danube-connector-postgres-cdc --bench pg_to_clickhouse` (the sink binary is taken from the
//! same `target/release`). Settings:
//! - `PIPE_BENCH_ROWS` (default 20000);
//! - `BENCH_BROKER=real` for the real broker (`DANUBE_BROKER_BIN`), else the development broker;
//! - `PIPE_BENCH_WINDOW`, the broker's dispatch window `max_unacked_messages` (default 10000,
//!   the setting `docs/running-on-danube.md` recommends; the real broker is then started in
//!   cluster mode with that YAML config; `10` is both brokers' default, the real one then runs
//!   standalone);
//! - `PIPE_BENCH_SINK_BATCH` / `PIPE_BENCH_SINK_LINGER`, the sink's `sink.batch.max_records` /
//!   `linger` (default 1000 / 20ms, the example's settings).
//!
//! The real v0.15.1 broker stalls a reliable subscription that falls more than its dispatch
//! window + 256 behind a burst (`docs/running-on-danube.md`): on it the run waits at most two
//! minutes and prints how many rows arrived.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use danube_connect_testkit::broker::{sum_samples, BrokerKind, RealBroker, RealBrokerOptions, TestBroker};
use danube_connect_testkit::clickhouse::ClickHouseServer;
use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::postgres::Postgres;
use danube_connect_testkit::process::{workspace_binary, ConnectorProcess};
use danube_connect_testkit::procfs::{cpu_seconds, load_average, status_kib};

mod support;

const CDC_BIN: &str = env!("CARGO_BIN_EXE_danube-postgres-cdc");
const TOPIC: &str = "/default/public-bench";
const TABLE: &str = "analytics.public_bench";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a valid value")))
}

/// A broker of `kind` with dispatch window `window` (the real one standalone at its default 10,
/// else in cluster mode with that window in its YAML config).
async fn start_broker(kind: BrokerKind, window: u32) -> TestBroker {
    match kind {
        BrokerKind::Dev => {
            let config = danube_dev_broker::BrokerConfig {
                max_unacked_messages: window as usize,
                ..danube_dev_broker::BrokerConfig::default()
            };
            TestBroker::Dev(danube_dev_broker::EmbeddedBroker::start(config).await.expect("dev broker"))
        }
        BrokerKind::Real if window == 10 => TestBroker::Real(Box::new(RealBroker::start().await.expect("real broker"))),
        BrokerKind::Real => {
            let options = RealBrokerOptions { max_unacked_messages: Some(window), ..RealBrokerOptions::default() };
            TestBroker::Real(Box::new(RealBroker::start_with(options).await.expect("real broker (cluster mode)")))
        }
    }
}

/// Messages the broker took in on the bench topic (the warm-up row included).
async fn published(broker: &TestBroker) -> usize {
    match broker {
        TestBroker::Dev(dev) => dev.message_count(TOPIC),
        TestBroker::Real(real) => {
            real.metric_sum("danube_topic_messages_in_total", &[("topic", TOPIC)]).await.unwrap_or(0.0) as usize
        }
    }
}

/// The sink's `/metrics` text.
async fn sink_metrics(sink: &ConnectorProcess) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", sink.ops_port);
    match reqwest::get(&url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn wait_log(process: &ConnectorProcess, what: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !process.log().contains(what) {
        assert!(Instant::now() < deadline, "{name} never logged `{what}`: {}", process.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows in the pipeline's ClickHouse table (0 before the sink created it).
async fn stored(ch: &ClickHouseServer) -> usize {
    ch.query(&format!("SELECT count() FROM {TABLE}")).await.ok().and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: usize = env_or("PIPE_BENCH_ROWS", 20_000);
    let window: u32 = env_or("PIPE_BENCH_WINDOW", 10_000);
    let sink_batch: usize = env_or("PIPE_BENCH_SINK_BATCH", 1000);
    let sink_linger: String = env_or("PIPE_BENCH_SINK_LINGER", "20ms".to_string());
    let kind = match std::env::var("BENCH_BROKER").as_deref() {
        Ok("real") => BrokerKind::Real,
        Ok("dev") | Err(_) => BrokerKind::Dev,
        Ok(other) => panic!("BENCH_BROKER={other}: expected dev or real"),
    };
    let started_at = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().expect("date");
    let sink_bin = workspace_binary("danube-clickhouse");
    let pg = Postgres::start().expect("postgres");
    let ch = ClickHouseServer::start().await.expect("clickhouse");
    let broker = start_broker(kind, window).await;
    pg.psql(
        "CREATE TABLE bench (id bigint PRIMARY KEY, name text, v int, at timestamptz DEFAULT now()); \
         CREATE PUBLICATION bench_pub FOR TABLE bench",
    )
    .expect("schema");

    // The sink subscribes before anything is published (a new subscription starts at the end).
    drop(reliable_producers(broker.url(), TOPIC, "topic-init", 1).await.expect("create the topic"));
    let dir = tempfile::tempdir().expect("temp dir");
    let sink_config = dir.path().join("clickhouse.toml");
    let mut file = std::fs::File::create(&sink_config).expect("sink config");
    write!(
        file,
        r#"name = "bench-clickhouse"
[sink]
topics = [{{ topic = "{TOPIC}" }}]
batch = {{ max_records = {sink_batch}, linger = "{sink_linger}" }}
[connector]
url = "{url}"
database = "analytics"
tables = [{{ topic = "{TOPIC}", table = "analytics.{{schema}}_{{table}}", mode = "cdc", create_tables = true }}]
batch = {{ max_rows = 10000, max_linger = "200ms" }}
spool = {{ dir = "{spool}" }}
"#,
        url = ch.url(),
        spool = dir.path().join("spool").display()
    )
    .expect("write the sink config");
    drop(file);
    let sink_env: HashMap<String, String> =
        [("CONNECTOR_CONFIG_FILE", sink_config.display().to_string()), ("DANUBE_SERVICE_URL", broker.url())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    let mut sink = ConnectorProcess::spawn(&sink_bin, &sink_env).expect("spawn the sink");
    sink.wait_ready(Duration::from_secs(60)).await.expect("sink ready");
    wait_log(&sink, "consuming", "the sink").await;
    let cdc_env: HashMap<String, String> = [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", "bench-cdc".into()),
        ("CONNECTOR_SOURCE__PRODUCERS_PER_TOPIC", "16".into()),
        ("POSTGRES_CDC_URL", pg.url()),
        ("POSTGRES_CDC_PUBLICATION", "bench_pub".into()),
        ("POSTGRES_CDC_SLOT", "pipe_slot".into()),
        ("POSTGRES_CDC_SNAPSHOT", "never".into()),
        ("POSTGRES_CDC_TOPIC", "/default/{schema}-{table}".into()),
        ("POSTGRES_CDC_SCHEMA", "json_schema".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut cdc = ConnectorProcess::spawn(Path::new(CDC_BIN), &cdc_env).expect("spawn postgres-cdc");
    cdc.wait_ready(Duration::from_secs(60)).await.expect("postgres-cdc ready");
    wait_log(&cdc, "streaming changes", "postgres-cdc").await;

    // The raw reader's slot, made before the rows are written.
    let raw_reader = support::RawReader::create(&pg);

    // Warm-up: one row through the whole pipeline (the sink creates its table from it).
    pg.psql("INSERT INTO bench (id, name, v) VALUES (0, 'name-0', 0)").expect("warm-up row");
    let warm = Instant::now();
    while stored(&ch).await < 1 {
        assert!(warm.elapsed() < Duration::from_secs(120), "the warm-up row reached ClickHouse: {}", sink.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let cpu = |pid: Option<u32>| pid.map_or(0.0, |p| cpu_seconds(p).0);
    let (cdc_cpu, sink_cpu) = (cpu(cdc.pid()), cpu(sink.pid()));
    pg.psql(&format!(
        "{}INSERT INTO bench (id, name, v) SELECT g, 'name-' || g, g % 1000 FROM generate_series(1, {rows}) g",
        support::FLUSHED_COMMIT
    ))
    .expect("bulk insert");
    let committed = Instant::now();
    let end = pg.psql("SELECT pg_current_wal_lsn()").expect("lsn");
    let limit = match kind {
        BrokerKind::Dev => Duration::from_secs(600),
        BrokerKind::Real => Duration::from_secs(120),
    };
    let mut arrived = stored(&ch).await;
    // When the broker held every record: postgres-cdc's share of the run.
    let mut published_secs = None;
    while arrived < rows + 1 && committed.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if published_secs.is_none() && published(&broker).await > rows {
            published_secs = Some(committed.elapsed().as_secs_f64());
        }
        arrived = stored(&ch).await;
    }
    let pipeline_secs = committed.elapsed().as_secs_f64();
    let published_secs = published_secs.unwrap_or(pipeline_secs);
    let (cdc_cpu, sink_cpu) = (cpu(cdc.pid()) - cdc_cpu, cpu(sink.pid()) - sink_cpu);
    let complete = arrived > rows;
    let (cdc_rss, sink_rss) =
        (cdc.pid().map_or(0, |p| status_kib(p, "VmHWM:")), sink.pid().map_or(0, |p| status_kib(p, "VmHWM:")));

    // Baseline: pg_recvlogical reads the same transaction.
    let recvlogical_rate = raw_reader.rate(&end, rows);

    // Baseline: clickhouse-client inserts the rows the pipeline wrote into a twin table.
    let export = dir.path().join("rows.tsv");
    let tcp_port = ch.tcp_port.to_string();
    let client = |query: &str| {
        let mut command = Command::new("clickhouse-client");
        command.args(["--host", "127.0.0.1", "--port", tcp_port.as_str(), "--query", query]);
        command
    };
    let out = client(&format!("SELECT * FROM {TABLE} FORMAT TSV")).output().expect("clickhouse-client export");
    assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
    let exported = out.stdout.iter().filter(|b| **b == b'\n').count();
    std::fs::write(&export, &out.stdout).expect("write the export");
    let create = client(&format!("CREATE TABLE analytics.raw_bench AS {TABLE}")).status().expect("create twin");
    assert!(create.success(), "create the twin table");
    let started = Instant::now();
    let inserted = client("INSERT INTO analytics.raw_bench FORMAT TSV")
        .stdin(Stdio::from(std::fs::File::open(&export).expect("export file")))
        .status()
        .expect("clickhouse-client insert");
    let insert_secs = started.elapsed().as_secs_f64();
    assert!(inserted.success(), "clickhouse-client insert");
    assert_eq!(
        ch.query("SELECT count() FROM analytics.raw_bench").await.expect("count").trim(),
        exported.to_string(),
        "the twin table holds every exported row"
    );
    let insert_rate = exported as f64 / insert_secs;

    // Where the sink's time went (its runtime's metrics; the warm-up row included).
    let metrics = sink_metrics(&sink).await;
    let batches = sum_samples(&metrics, "connector_batch_size_count", &[("topic", TOPIC)]);
    let batched = sum_samples(&metrics, "connector_batch_size_sum", &[("topic", TOPIC)]);
    let process_secs = sum_samples(&metrics, "connector_operation_latency_seconds_sum", &[("operation", "process")]);
    let acked = sum_samples(&metrics, "connector_records_acked_total", &[("topic", TOPIC)]);

    let pipeline_rate = (arrived - 1) as f64 / pipeline_secs;
    let per_k = |cpu: f64| cpu * 1000.0 / (arrived.max(2) - 1) as f64 * 1000.0;
    println!(
        "broker: {kind}, dispatch window {window}{}; sink.batch.max_records = {sink_batch}, linger = {sink_linger}",
        match (kind, window) {
            (BrokerKind::Real, 10) => " (standalone, default)",
            (BrokerKind::Real, _) => " (cluster mode, YAML config)",
            _ => "",
        }
    );
    println!("run at {} (load average {})", String::from_utf8_lossy(&started_at.stdout).trim(), load_average().trim());
    println!("rows: {rows} of (bigint, text, int, timestamptz), one transaction");
    println!("pg_recvlogical raw to /dev/null:          {recvlogical_rate:>9.0} rows/s");
    println!(
        "clickhouse-client INSERT (TSV, {exported} rows): {insert_rate:>9.0} rows/s ({insert_secs:.3}s, including the client's start)"
    );
    if complete {
        println!(
            "pipeline, COMMIT -> row in ClickHouse:   {pipeline_rate:>9.0} rows/s ({pipeline_secs:.2}s)  {:.3}x pg_recvlogical  \
             {:.3}x clickhouse-client",
            pipeline_rate / recvlogical_rate,
            pipeline_rate / insert_rate
        );
    } else {
        println!(
            "pipeline, COMMIT -> row in ClickHouse:   INCOMPLETE: {} of {rows} rows after {pipeline_secs:.0}s ({pipeline_rate:.0} rows/s while it ran)",
            arrived.saturating_sub(1)
        );
    }
    println!(
        "postgres-cdc had published every row after {published_secs:.2}s ({:.0} rows/s); the sink's last row came {:.2}s later",
        rows as f64 / published_secs,
        pipeline_secs - published_secs
    );
    println!(
        "postgres-cdc: peak RSS {} MiB, CPU {:.0} ms per 1000 rows; clickhouse sink: peak RSS {} MiB, CPU {:.0} ms per 1000 rows",
        cdc_rss / 1024,
        per_k(cdc_cpu),
        sink_rss / 1024,
        per_k(sink_cpu)
    );
    println!(
        "clickhouse sink: {batches:.0} batches of {:.1} records on average, {acked:.0} acked; {process_secs:.2}s in \
         process_batch (map + spool append + fdatasync), the rest of the run is the runtime's (receive, decode, acks)",
        batched / batches.max(1.0)
    );
    for (name, mut process) in [("postgres-cdc", cdc), ("clickhouse sink", sink)] {
        let status = process.terminate(Duration::from_secs(60)).await;
        if status.is_none_or(|s| !s.success()) {
            eprintln!("{name} did not exit cleanly: {status:?}");
        }
    }
}
