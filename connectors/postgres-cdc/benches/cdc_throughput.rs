//! Benchmark (not a test): rows/s from COMMIT to Danube ack for a bulk insert of N rows, beside
//! two baselines measured in the same run:
//!
//! - `pg_recvlogical` streaming the same transaction raw (pgoutput, to /dev/null);
//! - raw `danube-client` publishing N copies of a connector payload (same size, attributes and
//!   routing keys, each key on the producer the runtime's key hash picks) with 16, 64 and 256
//!   producers, one send in flight each. It runs in a child process (this binary, re-executed),
//!   like the connector, so both reach the broker the same way: over loopback TCP, into this
//!   process's embedded broker (its own 2-thread runtime). One in-process run (client and broker
//!   in this process, the earlier method) is printed for comparison.
//!
//! Then the same connector run with a typical 3-line VRL program in `[[transforms]]` (drop
//! test rows, remove a field, add an attribute; `CDC_BENCH_TRANSFORM` replaces it, `none`
//! skips the run), printed beside the run without transforms; then snapshot rows/s and the
//! connector's peak RSS.
//!
//! Fairness between the runs: the connector record that the raw client copies comes from one
//! row of `sample.bench` sent through each connector before its timed insert (its own topic,
//! so the reader that keeps it does not make the broker dispatch the measured topic), and the
//! broker's message count is polled at the same interval during every run, raw ones included.
//!
//! The broker is the development broker, in this process, or with `BENCH_BROKER=real` the real
//! Danube broker (`DANUBE_BROKER_BIN`, standalone, its defaults) as a process; the output names
//! it. Against the real broker, counts come from its `danube_topic_messages_in_total`, the
//! broker CPU is its process's, and the in-process raw run is skipped.
//!
//! `cargo bench -p danube-connector-postgres-cdc`. Settings: `CDC_BENCH_ROWS` (default 50000);
//! `CDC_BENCH_PRODUCERS`, the connector's producers per topic, a comma list (default `16`),
//! one connector run each; `CDC_BENCH_RAW_PRODUCERS` (default `16,64,256`);
//! `CDC_BENCH_CONNECTOR_BIN` runs another build of the connector;
//! `CDC_BENCH_PERF=<file>` records `perf record -e cpu-clock -g` of the first connector run into `<file>`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::danube::TopicReader;
use danube_connect_testkit::postgres::Postgres;
use danube_connect_testkit::process::ConnectorProcess;
use danube_connect_testkit::procfs::{cpu_seconds, load_average, status_kib};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_danube-postgres-cdc");

/// The connector binary: `CDC_BENCH_CONNECTOR_BIN` (e.g. an earlier build, to compare two
/// versions with one bench) or the one cargo built with this bench.
fn connector_bin() -> std::path::PathBuf {
    std::env::var_os("CDC_BENCH_CONNECTOR_BIN").map_or_else(|| Path::new(BIN).to_path_buf(), Into::into)
}

/// The transform of the transformed run: drop test rows, remove a column, add an attribute.
const TRANSFORM: &str = r#"if .after.name == "test" { abort }
del(.after.at)
%attributes.pipeline = "analytics""#;

/// Set in the child process that runs one raw publish: `url|topic|rows|producers`.
const CHILD: &str = "CDC_BENCH_RAW_CHILD";
/// The child's payload (base64) and attributes (JSON).
const CHILD_PAYLOAD: &str = "CDC_BENCH_RAW_PAYLOAD";
const CHILD_ATTRIBUTES: &str = "CDC_BENCH_RAW_ATTRIBUTES";

fn list(var: &str, default: &str) -> Vec<usize> {
    let text = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let values: Vec<usize> = text.split(',').filter_map(|v| v.trim().parse().ok()).filter(|v| *v > 0).collect();
    assert!(!values.is_empty(), "{var}={text}: expected a comma list of counts");
    values
}

/// The lane the core publisher picks for a routing key (`DefaultHasher` modulo the pool).
fn lane_of(key: &str, lanes: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % lanes
}

/// Raw publish of `rows` copies of `payload` with keys `1..=rows`, each key on the producer
/// its hash picks (like the connector's lanes), one send in flight per producer, reliable
/// dispatch; seconds from the first send until the last ack (producers are created before),
/// and the CPU seconds this process used meanwhile.
async fn raw_publish(
    url: String,
    topic: String,
    rows: usize,
    producers: usize,
    payload: Vec<u8>,
    attributes: HashMap<String, String>,
) -> (f64, f64) {
    let lanes = reliable_producers(url, &topic, "bench-raw", producers).await.expect("raw producers");
    let mut keys: Vec<Vec<String>> = vec![Vec::new(); producers];
    for id in 1..=rows {
        let key = id.to_string();
        keys[lane_of(&key, producers)].push(key);
    }
    let started = Instant::now();
    let cpu = CpuUse::start(vec![std::process::id()]);
    let mut tasks = Vec::new();
    for (producer, keys) in lanes.into_iter().zip(keys) {
        let (payload, attributes) = (payload.clone(), attributes.clone());
        tasks.push(tokio::spawn(async move {
            for key in keys {
                producer.send_with_key(payload.clone(), Some(attributes.clone()), &key).await.expect("send");
            }
        }));
    }
    for task in tasks {
        task.await.expect("producer task");
    }
    (started.elapsed().as_secs_f64(), cpu.stop()[0])
}

/// The child process: one raw publish, prints the seconds it took.
fn raw_child(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, topic, rows, producers] = parts[..] else { panic!("{CHILD}={spec}: expected url|topic|rows|producers") };
    let payload = base64::engine::general_purpose::STANDARD
        .decode(std::env::var(CHILD_PAYLOAD).expect("payload"))
        .expect("payload base64");
    let attributes: HashMap<String, String> =
        serde_json::from_str(&std::env::var(CHILD_ATTRIBUTES).expect("attributes")).expect("attributes JSON");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (secs, cpu) = runtime.block_on(raw_publish(
        url.to_string(),
        topic.to_string(),
        rows.parse().expect("rows"),
        producers.parse().expect("producers"),
        payload,
        attributes,
    ));
    println!("{secs} {cpu}");
}

/// Runs [`raw_child`] in a new process of this binary; its seconds, its CPU seconds and the
/// broker's CPU seconds meanwhile.
async fn raw_publish_process(
    broker: &TestBroker,
    url: &str,
    topic: &str,
    rows: usize,
    producers: usize,
    payload: &[u8],
    attributes: &HashMap<String, String>,
) -> (f64, f64, f64) {
    let exe = std::env::current_exe().expect("bench binary");
    let mut command = tokio::process::Command::new(exe);
    command
        .env(CHILD, format!("{url}|{topic}|{rows}|{producers}"))
        .env(CHILD_PAYLOAD, base64::engine::general_purpose::STANDARD.encode(payload))
        .env(CHILD_ATTRIBUTES, serde_json::to_string(attributes).expect("attributes"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let broker_cpu = CpuUse::start(vec![broker_pid(broker)]);
    // The broker's count is polled meanwhile as in a connector run, so that both runs pay
    // for it (a metrics scrape of the real broker costs it CPU).
    let output = command.output();
    tokio::pin!(output);
    // From the child's start (its producers' creation included): only the steady part compares.
    let spawned = Instant::now();
    let mut timeline = Timeline::new(rows);
    let out = loop {
        tokio::select! {
            out = &mut output => break out.expect("raw publish process"),
            _ = tokio::time::sleep(poll_interval(broker)) => {
                let count = message_count(broker, topic).await;
                timeline.observe(spawned.elapsed(), count);
            }
        }
    };
    println!("  timeline (raw, {producers} producers, from the child's start): {timeline}");
    // Includes the child's producer creation: a slight over-count for the broker.
    let broker_cpu = broker_cpu.stop()[0];
    assert!(out.status.success(), "raw publish process failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<f64> = text.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let [secs, cpu] = numbers[..] else { panic!("raw publish process printed {text}") };
    (secs, cpu, broker_cpu)
}

fn connector_env(
    pg: &Postgres,
    broker: &TestBroker,
    producers: usize,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", "bench".into()),
        ("CONNECTOR_SOURCE__PRODUCERS_PER_TOPIC", producers.to_string()),
        ("CONNECTOR_LOG__LEVEL", std::env::var("CDC_BENCH_LOG").unwrap_or_else(|_| "warn".into())),
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

/// Messages `broker` took in on `topic`: the dev broker's store, the real broker's own metric.
async fn message_count(broker: &TestBroker, topic: &str) -> usize {
    match broker {
        TestBroker::Dev(dev) => dev.message_count(topic),
        TestBroker::Real(real) => {
            real.metric_sum("danube_topic_messages_in_total", &[("topic", topic)]).await.expect("broker metrics")
                as usize
        }
    }
}

/// The process whose CPU time is the broker's: this one for the dev broker, the real broker's.
fn broker_pid(broker: &TestBroker) -> u32 {
    match broker {
        TestBroker::Dev(_) => std::process::id(),
        TestBroker::Real(real) => real.pid().expect("broker pid"),
    }
}

/// How long to wait between two counts (a metrics scrape of the real broker costs more).
fn poll_interval(broker: &TestBroker) -> Duration {
    match broker {
        TestBroker::Dev(_) => Duration::from_millis(2),
        TestBroker::Real(_) => Duration::from_millis(25),
    }
}

/// CPU seconds used by each of `pids` between two samples.
struct CpuUse {
    pids: Vec<u32>,
    start: Vec<f64>,
}

impl CpuUse {
    fn start(pids: Vec<u32>) -> Self {
        let start = pids.iter().map(|p| cpu_seconds(*p).0).collect();
        Self { pids, start }
    }

    fn stop(&self) -> Vec<f64> {
        self.pids.iter().zip(&self.start).map(|(p, s)| cpu_seconds(*p).0 - s).collect()
    }
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

/// The wall clock (UTC, microseconds), to line a COMMIT up with the connector's log.
fn chrono_now() -> String {
    let output = Command::new("date").args(["-u", "+%H:%M:%S.%6N"]).output().expect("date");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// When the broker's count first reached 1 record and 10/50/90/100 % of a run, from COMMIT:
/// where a run loses time (before the first record, in its steady part, or in its tail).
struct Timeline {
    rows: usize,
    /// Milestones (fraction of `rows`, first time seen).
    marks: Vec<(f64, Option<Duration>)>,
}

impl Timeline {
    fn new(rows: usize) -> Self {
        let marks = [0.0, 0.1, 0.5, 0.9, 1.0].into_iter().map(|f| (f, None)).collect();
        Self { rows, marks }
    }

    fn observe(&mut self, at: Duration, count: usize) {
        for (fraction, seen) in &mut self.marks {
            let needed = ((*fraction * self.rows as f64) as usize).max(1);
            if seen.is_none() && count >= needed {
                *seen = Some(at);
            }
        }
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (fraction, seen) in &self.marks {
            let label = if *fraction == 0.0 { "first".to_string() } else { format!("{:.0}%", fraction * 100.0) };
            match seen {
                Some(at) => write!(f, "{label} {:.0} ms  ", at.as_secs_f64() * 1000.0)?,
                None => write!(f, "{label} never  ")?,
            }
        }
        if let (Some(low), Some(high)) = (self.marks[1].1, self.marks[3].1) {
            let steady = 0.8 * self.rows as f64 / (high - low).as_secs_f64().max(1e-6);
            write!(f, "steady 10-90%: {steady:.0} rows/s")?;
        }
        Ok(())
    }
}

/// One connector run.
struct Streamed {
    rate: f64,
    secs: f64,
    rss_kib: u64,
    /// CPU seconds during the run: connector, broker, walsender.
    cpu: Vec<f64>,
}

/// Starts a connector with `producers` on a new slot, sends one row of `sample.bench` through
/// it (its own topic: a reader there does not load the measured topic), bulk-inserts `rows`
/// rows into `public.bench` starting at id `first`, and measures COMMIT until Danube holds
/// every record. Returns the run and the WAL position after the insert.
async fn stream_run(
    pg: &Postgres,
    broker: &TestBroker,
    producers: usize,
    rows: usize,
    first: usize,
    perf: Option<&str>,
    transform: Option<&str>,
) -> (Streamed, String) {
    let slot = format!("cdc_p{producers}_{first}");
    let topic = format!("cdc{producers}x{first}");
    let template = format!("/default/{topic}_{{schema}}_{{table}}");
    // An inline TOML array on one line: the program as a basic string, newlines escaped.
    let transforms = transform.map(|source| {
        let escaped = source.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        format!("[{{name = \"bench\", source = \"{escaped}\"}}]")
    });
    let mut extra = vec![
        ("POSTGRES_CDC_SLOT", slot.as_str()),
        ("POSTGRES_CDC_SNAPSHOT", "never"),
        ("POSTGRES_CDC_TOPIC", &template),
    ];
    if let Some(transforms) = &transforms {
        extra.push(("CONNECTOR_TRANSFORMS", transforms));
    }
    let env = connector_env(pg, broker, producers, &extra);
    let mut process = ConnectorProcess::spawn(&connector_bin(), &env).expect("spawn");
    process.wait_ready(Duration::from_secs(60)).await.expect("ready");
    wait_streaming(pg, &slot).await;
    // Warm-up and sample: one row of `sample.bench` (same shape and name lengths as a
    // `public.bench` row) through the running connector.
    pg.psql(&format!("INSERT INTO sample.bench (id, name, v) VALUES ({first}, 'name-{first}', {})", first % 1000))
        .expect("sample row");
    let sample_topic = format!("/default/{topic}_sample_bench");
    let warm = Instant::now();
    while message_count(broker, &sample_topic).await < 1 && warm.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(poll_interval(broker)).await;
    }
    assert_eq!(message_count(broker, &sample_topic).await, 1, "the sample row arrived: {}", process.log());
    let mut recorder = perf.map(|file| {
        let pid = process.pid().expect("connector pid").to_string();
        Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "999", "--call-graph", "dwarf,16384", "-o", file, "-p", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf record (apt-get install -y linux-perf)")
    });
    let walsender: u32 = pg
        .psql(&format!("SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"))
        .expect("walsender pid")
        .parse()
        .expect("walsender pid number");
    let connector_pid = process.pid().expect("connector pid");
    let cpu = CpuUse::start(vec![connector_pid, broker_pid(broker), walsender]);
    pg.psql(&format!(
        "{}INSERT INTO bench (id, name, v) SELECT g, 'name-' || g, g % 1000 FROM generate_series({first}, {}) g",
        support::FLUSHED_COMMIT,
        first + rows - 1
    ))
    .expect("bulk insert");
    let committed = Instant::now();
    let committed_at = chrono_now();
    let end = pg.psql("SELECT pg_current_wal_lsn()").expect("lsn");
    let topic = format!("/default/{topic}_public_bench");
    let mut timeline = Timeline::new(rows);
    loop {
        let count = message_count(broker, &topic).await;
        timeline.observe(committed.elapsed(), count);
        if count >= rows || committed.elapsed() >= Duration::from_secs(900) {
            break;
        }
        tokio::time::sleep(poll_interval(broker)).await;
    }
    let secs = committed.elapsed().as_secs_f64();
    println!("  timeline ({producers} producers): {timeline}");
    let cpu = cpu.stop();
    assert_eq!(message_count(broker, &topic).await, rows, "connector delivered every row: {}", process.log());
    if let Some(mut recorder) = recorder.take() {
        let _ = Command::new("kill").args(["-INT", &recorder.id().to_string()]).status();
        let _ = recorder.wait();
    }
    if std::env::var("CDC_BENCH_LOG").is_ok() {
        println!("  COMMIT at {committed_at}; the connector's log:\n{}", process.log());
    }
    let rss_kib = process.pid().map_or(0, |pid| status_kib(pid, "VmHWM:"));
    let status = process.terminate(Duration::from_secs(60)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", process.log());
    (Streamed { rate: rows as f64 / secs, secs, rss_kib, cpu }, end)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        // Runs on its own runtime, outside this one's worker threads.
        tokio::task::spawn_blocking(move || raw_child(&spec)).await.expect("raw child");
        return;
    }
    let rows: usize = std::env::var("CDC_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let connector_producers = list("CDC_BENCH_PRODUCERS", "16");
    let raw_producers = list("CDC_BENCH_RAW_PRODUCERS", "16,64,256");
    let perf = std::env::var("CDC_BENCH_PERF").ok();
    let started_at = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().expect("date");
    let pg = Postgres::start().expect("postgres");
    let kind = match std::env::var("BENCH_BROKER").as_deref() {
        Ok("real") => BrokerKind::Real,
        Ok("dev") | Err(_) => BrokerKind::Dev,
        Ok(other) => panic!("BENCH_BROKER={other}: expected dev or real"),
    };
    let broker = TestBroker::start(kind).await.expect("broker");
    pg.psql(
        "CREATE TABLE bench (id bigint PRIMARY KEY, name text, v int, at timestamptz DEFAULT now()); \
         CREATE SCHEMA sample; CREATE TABLE sample.bench (LIKE public.bench INCLUDING ALL); \
         CREATE PUBLICATION bench_pub FOR TABLE public.bench, sample.bench",
    )
    .expect("schema");
    let raw_reader = support::RawReader::create(&pg);

    // A reader on the first run's sample topic keeps one connector record: the raw baseline
    // sends copies of it. (The topic is created first: subscriptions start at its end.)
    let sample_topic = format!("/default/cdc{}x1_sample_bench", connector_producers[0]);
    drop(reliable_producers(broker.url(), &sample_topic, "mk", 1).await.expect("create the sample topic"));
    let sampler = TopicReader::subscribe(broker.url(), &sample_topic, "sample").await.expect("sample reader");

    // Connector runs, one per producer count, each on its own slot and rows.
    let mut runs = Vec::new();
    let mut first_end = None;
    for (i, &producers) in connector_producers.iter().enumerate() {
        let (run, end) =
            stream_run(&pg, &broker, producers, rows, 1 + i * rows, if i == 0 { perf.as_deref() } else { None }, None)
                .await;
        first_end.get_or_insert(end);
        runs.push((producers, run));
    }
    // The first run again, with the transform.
    let transform = std::env::var("CDC_BENCH_TRANSFORM").unwrap_or_else(|_| TRANSFORM.to_string());
    let transformed = if transform == "none" {
        None
    } else {
        let first = 1 + connector_producers.len() * rows;
        // A reader on the run's sample topic shows that the transform ran.
        let sample_topic = format!("/default/cdc{}x{first}_sample_bench", connector_producers[0]);
        drop(reliable_producers(broker.url(), &sample_topic, "mk", 1).await.expect("create the sample topic"));
        let reader = TopicReader::subscribe(broker.url(), &sample_topic, "sample").await.expect("sample reader");
        let run = stream_run(&pg, &broker, connector_producers[0], rows, first, None, Some(&transform)).await.0;
        if std::env::var("CDC_BENCH_TRANSFORM").is_err() {
            let record = reader.messages().into_iter().next().expect("a transformed record");
            let value: serde_json::Value = serde_json::from_slice(&record.payload).expect("JSON record");
            assert!(value["after"].get("at").is_none(), "the transform removed `at`: {value}");
            assert_eq!(record.attributes.get("pipeline").map(String::as_str), Some("analytics"), "the attribute");
        }
        Some(run)
    };
    let sample = sampler.messages().into_iter().next().expect("a connector record");
    drop(sampler);
    let (payload, attributes) = (sample.payload.to_vec(), sample.attributes.clone());

    // Baseline: pg_recvlogical reads the first run's transaction from its own pgoutput slot.
    let end = first_end.expect("a connector run");
    let recvlogical_rate = raw_reader.rate(&end, rows);

    // Baseline: raw danube-client, in a separate process like the connector.
    let url = broker.url();
    let mut raw_rates = HashMap::new();
    let mut raw_cpu = HashMap::new();
    for &producers in &raw_producers {
        let topic = format!("/default/raw{producers}_bench");
        let (secs, cpu, broker_cpu) =
            raw_publish_process(&broker, &url, &topic, rows, producers, &payload, &attributes).await;
        assert_eq!(message_count(&broker, &topic).await, rows, "raw publish stored every message");
        raw_rates.insert(producers, rows as f64 / secs);
        raw_cpu.insert(producers, (cpu, broker_cpu));
    }
    // The earlier method: the client in this process, beside the broker.
    let in_process_producers = connector_producers[0];
    let in_process = if kind == BrokerKind::Real {
        f64::NAN
    } else {
        let (url, payload, attributes) = (url.clone(), payload.clone(), attributes.clone());
        let topic = format!("/default/rawlocal{in_process_producers}_bench");
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
            runtime.block_on(raw_publish(url, topic, rows, in_process_producers, payload, attributes)).0
        })
        .await
        .expect("in-process raw publish")
    };
    let in_process_rate = rows as f64 / in_process;

    // Snapshot: a fresh slot reads the table (every run's rows).
    let total = rows * (connector_producers.len() + usize::from(transformed.is_some()));
    let env = connector_env(
        &pg,
        &broker,
        connector_producers[0],
        &[
            ("POSTGRES_CDC_SLOT", "snap_slot"),
            ("POSTGRES_CDC_SNAPSHOT", "initial_only"),
            ("POSTGRES_CDC_TOPIC", "/default/snap_{schema}_{table}"),
        ],
    );
    let started = Instant::now();
    let mut process = ConnectorProcess::spawn(&connector_bin(), &env).expect("spawn");
    process.wait_ready(Duration::from_secs(60)).await.expect("ready");
    while message_count(&broker, "/default/snap_public_bench").await < total
        && started.elapsed() < Duration::from_secs(900)
    {
        tokio::time::sleep(poll_interval(&broker)).await;
    }
    let snapshot_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        message_count(&broker, "/default/snap_public_bench").await,
        total,
        "snapshot delivered every row: {}",
        process.log()
    );
    let snapshot_rss = process.pid().map_or(0, |pid| status_kib(pid, "VmHWM:"));
    let _ = process.terminate(Duration::from_secs(60)).await;

    let load = load_average();
    println!("broker: {kind}");
    println!("run at {} (load average {})", String::from_utf8_lossy(&started_at.stdout).trim(), load.trim());
    println!("rows: {rows}, payload {} bytes", payload.len());
    println!("pg_recvlogical raw to /dev/null:                 {recvlogical_rate:>8.0} rows/s");
    let per_k = |cpu: f64| cpu * 1000.0 / rows as f64 * 1000.0;
    for &producers in &raw_producers {
        let rate = raw_rates[&producers];
        let (cpu, broker_cpu) = raw_cpu[&producers];
        println!(
            "raw danube-client, separate process, {producers:>3} producers: {rate:>8.0} msgs/s  {:.3}x pg_recvlogical  \
             CPU ms per 1000: client {:.0}, broker {:.0}",
            rate / recvlogical_rate,
            per_k(cpu),
            per_k(broker_cpu)
        );
    }
    if kind == BrokerKind::Dev {
        println!(
            "raw danube-client, in the broker's process, {in_process_producers} producers: {in_process_rate:.0} msgs/s  {:.3}x pg_recvlogical",
            in_process_rate / recvlogical_rate
        );
    }
    for (producers, run) in &runs {
        let raw = raw_rates
            .get(producers)
            .map_or(String::new(), |r| format!("  {:.3}x raw client ({producers} producers)", run.rate / r));
        println!(
            "connector, {producers:>3} producers, COMMIT -> ack: {:>8.0} rows/s ({:.2}s)  {:.3}x pg_recvlogical{raw}  \
             CPU ms per 1000: connector {:.0}, broker {:.0}, walsender {:.0}  peak RSS {} MiB",
            run.rate,
            run.secs,
            run.rate / recvlogical_rate,
            per_k(run.cpu[0]),
            per_k(run.cpu[1]),
            per_k(run.cpu[2]),
            run.rss_kib / 1024
        );
    }
    if let Some(run) = &transformed {
        let (producers, plain) = &runs[0];
        println!(
            "connector, {producers:>3} producers, with the 3-line VRL transform: {:>8.0} rows/s ({:.2}s)  {:.3}x the run \
             without transforms  CPU ms per 1000: connector {:.0}  peak RSS {} MiB",
            run.rate,
            run.secs,
            run.rate / plain.rate,
            per_k(run.cpu[0]),
            run.rss_kib / 1024
        );
        println!("transform: {}", transform.replace('\n', "; "));
    }
    println!(
        "snapshot of {total} rows: {:.0} rows/s ({snapshot_secs:.2}s, including startup), peak RSS {} MiB",
        total as f64 / snapshot_secs,
        snapshot_rss / 1024
    );
}
