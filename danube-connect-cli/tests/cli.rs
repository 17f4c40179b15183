//! The `danube-connect` binary, run as a process, on both brokers (`BrokerKind::all()`).
//!
//! - Dead-letter round trip: the `danube-http-sink` binary dead-letters every record while its
//!   HTTP target (a real axum server on 127.0.0.1) is down; `dlq replay` once it is up gets
//!   every record delivered (a first run limited by `--error-kind`, `--since`, `--limit`), and a
//!   kill -9 of the replay mid-run loses nothing (a second run completes the set; a record
//!   delivered twice carries the same `danube-message-id`).
//! - `dlq inspect` counts and decodes dead letters written while no reader was attached,
//!   without consuming them.
//! - `tail --json` prints one JSON object per record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use danube_client::{DanubeClient, Producer, SchemaType};
use danube_connect_core::dead_letter::{attributes, dead_letter_record, ensure_dead_letter_subscription, Failure};
use danube_connect_core::DanubeConnection;
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use serde_json::{json, Value};

const CLI: &str = env!("CARGO_BIN_EXE_danube-connect");

/// The `danube-http-sink` binary, built beside this one (`scripts/test.sh` builds the whole
/// workspace first; a lone `cargo test -p danube-connect-cli` builds it here).
fn http_sink_binary() -> PathBuf {
    let path = Path::new(CLI).with_file_name("danube-http-sink");
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "danube-connector-http-sink", "--bin", "danube-http-sink"])
            .status()
            .expect("run cargo build for danube-http-sink");
        assert!(status.success(), "building danube-http-sink failed");
    }
    assert!(path.is_file(), "{} missing after the build", path.display());
    path
}

/// One request the receiver answered 200: the body and its `danube-message-id` header.
#[derive(Debug, Clone)]
struct Delivery {
    body: String,
    message_id: String,
}

/// A real HTTP receiver on 127.0.0.1 answering 200 to everything.
#[derive(Clone, Default)]
struct Hook {
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

async fn answer(State(hook): State<Hook>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let message_id = headers.get("danube-message-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = String::from_utf8_lossy(&body).into_owned();
    hook.deliveries.lock().expect("hook lock").push(Delivery { body, message_id });
    StatusCode::OK
}

impl Hook {
    /// Starts serving on `port` (the sink's target, down until now).
    async fn start(port: u16) -> Self {
        let hook = Hook::default();
        let app = Router::new().fallback(answer).with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("receiver binds its port");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        hook
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("hook lock").clone()
    }

    /// The `danube-message-id`s each record id (`"id"` of the JSON body) arrived with.
    fn ids(&self) -> BTreeMap<String, HashSet<String>> {
        let mut ids: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for delivery in self.deliveries() {
            if let Some(id) =
                serde_json::from_str::<Value>(&delivery.body).ok().and_then(|v| v["id"].as_str().map(str::to_string))
            {
                ids.entry(id).or_default().insert(delivery.message_id);
            }
        }
        ids
    }

    async fn wait_ids(&self, expected: &HashSet<String>, timeout: Duration) -> BTreeMap<String, HashSet<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.ids();
            if expected.iter().all(|id| got.contains_key(id)) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `danube-connect ARGS` against `broker`, to its end.
async fn cli(broker: &TestBroker, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = cli_command(broker, args, env);
    tokio::task::spawn_blocking(move || command.output().expect("run danube-connect")).await.expect("join")
}

fn cli_command(broker: &TestBroker, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(CLI);
    command.args(args).env("DANUBE_SERVICE_URL", broker.url()).env_remove("CONNECTOR_CONFIG_FILE");
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Raw producers on `topic` (created reliable on the broker).
async fn producers(broker: &TestBroker, topic: &str, name: &str) -> Vec<Producer> {
    reliable_producers(broker.url(), topic, name, 1)
        .await
        .unwrap_or_else(|e| panic!("{}: raw producer on {topic}: {e}", broker.kind()))
}

/// The http-sink's environment: consume `topic` as `name`, post to `url`, give up on a record
/// after two attempts (the target is down) and dead-letter it.
fn sink_env(broker: &TestBroker, name: &str, topic: &str, url: &str) -> HashMap<String, String> {
    [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", name.to_string()),
        ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
        ("CONNECTOR_RETRY__MAX_ATTEMPTS", "2".into()),
        ("CONNECTOR_RETRY__INITIAL_BACKOFF", "50ms".into()),
        ("CONNECTOR_RETRY__MAX_BACKOFF", "100ms".into()),
        ("HTTP_SINK_URL", url.to_string()),
        ("HTTP_SINK_CONNECT_TIMEOUT", "1s".into()),
        ("HTTP_SINK_CIRCUIT_BREAKER__ENABLED", "false".into()),
        ("HTTP_SINK_ALLOW_PRIVATE_TARGETS", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Starts the sink and waits until it consumes and its dead-letter subscription exists.
async fn start_sink(kind: BrokerKind, env: &HashMap<String, String>) -> ConnectorProcess {
    let mut process = ConnectorProcess::spawn(&http_sink_binary(), env).expect("spawn the sink");
    process.wait_ready(Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{kind}: sink not ready: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(process.log().contains("consuming") && process.log().contains("dead-letter subscription ready")) {
        assert!(Instant::now() < deadline, "{kind}: the sink never got ready to dead-letter: {}", process.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process
}

/// The sink's `connector_records_dead_lettered_total`, summed.
async fn dead_lettered(sink: &ConnectorProcess) -> u64 {
    let url = format!("http://127.0.0.1:{}/metrics", sink.ops_port);
    let Ok(response) = http_get(&url).await else { return 0 };
    response
        .lines()
        .filter(|line| line.starts_with("connector_records_dead_lettered_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A plain HTTP GET over a TCP stream (keeps the test free of another HTTP client).
async fn http_get(url: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// Publishes `{"id": "{prefix}-{i}"}` for `i` in `0..count` and waits until the sink
/// dead-lettered them all (its target is down).
async fn dead_letter_records(
    kind: BrokerKind,
    producer: &Producer,
    sink: &ConnectorProcess,
    prefix: &str,
    count: usize,
) -> HashSet<String> {
    let mut ids = HashSet::new();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        producer.send(json!({"id": id, "n": i}).to_string().into_bytes(), None).await.expect("raw publish");
        ids.insert(id);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    while dead_lettered(sink).await < count as u64 {
        assert!(
            Instant::now() < deadline,
            "{kind}: only {} of {count} dead-lettered: {}",
            dead_lettered(sink).await,
            sink.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ids
}

/// Every record id arrived, each under one `danube-message-id` only (duplicates carry the
/// same id), taken from the dead-letter topic.
fn assert_delivered_once_per_id(
    kind: BrokerKind,
    got: &BTreeMap<String, HashSet<String>>,
    expected: &HashSet<String>,
    dlq: &str,
) {
    let missing: Vec<&String> = expected.iter().filter(|id| !got.contains_key(*id)).collect();
    assert!(missing.is_empty(), "{kind}: {} records never delivered after the replay: {missing:?}", missing.len());
    for (id, message_ids) in got {
        assert_eq!(message_ids.len(), 1, "{kind}: record {id} arrived under several ids: {message_ids:?}");
        let message_id = message_ids.iter().next().expect("one id");
        assert!(
            message_id.starts_with(&format!("{dlq}:")),
            "{kind}: record {id} carries {message_id}, not a dead-letter id"
        );
    }
    let distinct: HashSet<&String> = got.values().flatten().collect();
    assert_eq!(distinct.len(), got.len(), "{kind}: two records share one message id");
}

/// `dlq inspect --json` of `dlq`: the parsed object.
async fn inspect(broker: &TestBroker, dlq: &str, extra: &[&str], env: &[(&str, &str)]) -> Value {
    let mut args = vec!["dlq", "inspect", dlq, "--json", "--wait", "2s"];
    args.extend_from_slice(extra);
    let output = cli(broker, &args, env).await;
    assert!(output.status.success(), "{}: inspect failed: {}", broker.kind(), text(&output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{}: inspect output is not JSON ({e}): {}", broker.kind(), text(&output)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_dead_lettered_while_the_target_is_down_are_all_delivered_after_a_replay() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let (name, topic, dlq) = ("rt-sink", "/default/rt_orders", "/default/dlq-rt-sink");
        let producer = producers(&broker, topic, "rt-p").await.remove(0);
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/hook");
        let sink = start_sink(kind, &sink_env(&broker, name, topic, &url)).await;
        let expected = dead_letter_records(kind, &producer, &sink, "rt", 20).await;

        // While the target is down the dead letters wait in their topic, counted by inspect.
        let before = inspect(&broker, dlq, &[], &[]).await;
        assert_eq!(before["read"], 10, "{kind}: inspect reads one dispatch window (10) of the 20: {before}");
        assert_eq!(before["counts"][attributes::CONNECTOR][name], 10, "{kind}: {before}");
        assert_eq!(before["counts"][attributes::SOURCE_TOPIC][topic], 10, "{kind}: {before}");

        let kinds = before["counts"][attributes::ERROR_KIND].as_object().expect("kinds");
        assert_eq!(kinds.len(), 1, "{kind}: the sink failed every record the same way: {before}");
        let error_kind = kinds.keys().next().expect("one kind").clone();

        let hook = Hook::start(port).await;
        // Filters first: five of this kind, failed in the last hour.
        let args = ["dlq", "replay", dlq, "--error-kind", &error_kind, "--since", "1h", "--limit", "5", "--wait", "3s"];
        let output = cli(&broker, &args, &[]).await;
        assert!(output.status.success(), "{kind}: limited replay failed: {}", text(&output));
        assert!(String::from_utf8_lossy(&output.stdout).contains("replayed 5 of 5"), "{kind}: {}", text(&output));
        // A kind no dead letter has: nothing replayed, nothing acked.
        let output = cli(&broker, &["dlq", "replay", dlq, "--error-kind", "no-such-kind", "--wait", "2s"], &[]).await;
        assert!(String::from_utf8_lossy(&output.stdout).contains("replayed 0 of"), "{kind}: {}", text(&output));

        let output = cli(&broker, &["dlq", "replay", dlq, "--wait", "3s"], &[]).await;
        assert!(output.status.success(), "{kind}: replay failed: {}", text(&output));
        let summary = String::from_utf8_lossy(&output.stdout);
        assert!(summary.contains("replayed 15 of 15"), "{kind}: {}", text(&output));

        let got = hook.wait_ids(&expected, Duration::from_secs(30)).await;
        assert_delivered_once_per_id(kind, &got, &expected, dlq);
        // Every dead letter was acked after its re-publish: nothing is left to read.
        let after = inspect(&broker, dlq, &[], &[]).await;
        assert_eq!(after["read"], 0, "{kind}: dead letters left after the replay: {after}");
        eprintln!("{kind}: 20 dead letters replayed, {} deliveries for 20 records", hook.deliveries().len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_run_loses_nothing_and_a_second_run_completes_it() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let (name, topic, dlq) = ("k9-sink", "/default/k9_orders", "/default/dlq-k9-sink");
        let producer = producers(&broker, topic, "k9-p").await.remove(0);
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/hook");
        let sink = start_sink(kind, &sink_env(&broker, name, topic, &url)).await;
        let total = 30;
        let expected = dead_letter_records(kind, &producer, &sink, "k9", total).await;
        let hook = Hook::start(port).await;

        // Ten a second: killed once some, not all, were delivered.
        let mut first = cli_command(&broker, &["dlq", "replay", dlq, "--rate", "10"], &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the replay");
        let deadline = Instant::now() + Duration::from_secs(30);
        while hook.ids().len() < 5 {
            assert!(Instant::now() < deadline, "{kind}: the first replay delivered nothing");
            assert!(first.try_wait().expect("poll").is_none(), "{kind}: the first replay ended before the kill");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill9(&mut first);
        let at_kill = hook.ids().len();
        assert!(at_kill < total, "{kind}: the replay had finished before the kill ({at_kill} delivered)");

        let output = cli(&broker, &["dlq", "replay", dlq, "--wait", "5s"], &[]).await;
        assert!(output.status.success(), "{kind}: second replay failed: {}", text(&output));
        let got = hook.wait_ids(&expected, Duration::from_secs(30)).await;
        assert_delivered_once_per_id(kind, &got, &expected, dlq);
        let after = inspect(&broker, dlq, &[], &[]).await;
        assert_eq!(after["read"], 0, "{kind}: dead letters left after the second replay: {after}");
        let deliveries = hook.deliveries().len();
        eprintln!("{kind}: killed after {at_kill} of {total} delivered; {deliveries} deliveries in all, every record once by id");
    }
}

fn kill9(child: &mut Child) {
    // SIGKILL by pid: the child is ours and not reaped yet.
    let _ = Command::new("kill").args(["-9", &child.id().to_string()]).status();
    let _ = child.wait();
}

/// Avro schema of the records bound to the inspect test's second source topic.
const AVRO: &str =
    r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"item","type":"string"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_counts_dead_letters_written_while_no_reader_was_attached_and_consumes_none() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let dlq = "/default/dlq-insp";
        let producer = producers(&broker, dlq, "insp-p").await.remove(0);
        let client = DanubeClient::builder().service_url(broker.url()).build().await.expect("client");
        // What the runtime does at connector start; no reader is attached afterwards.
        ensure_dead_letter_subscription(&DanubeConnection::from_client(client.clone()), dlq, "insp-runtime")
            .await
            .expect("dead-letter subscription");
        client
            .schema()
            .register_schema("insp-orders")
            .with_type(SchemaType::Avro)
            .with_schema_data(AVRO.as_bytes().to_vec())
            .execute()
            .await
            .expect("register the Avro schema");
        let schema =
            danube_connect_common::schema::Schema::compile(danube_connect_common::schema::SchemaKind::Avro, AVRO)
                .expect("Avro compiles");

        // kind, connector, source topic; the last is Avro-encoded on a bound topic.
        let failures = [
            ("retryable", "a", "/default/o1"),
            ("retryable", "a", "/default/o1"),
            ("retryable", "b", "/default/o1"),
            ("invalid", "b", "/default/o2"),
            ("rejected", "a", "/default/o2"),
            ("invalid", "b", "/default/o2"),
        ];
        for (i, (error_kind, connector, source)) in failures.iter().enumerate() {
            let payload = if *source == "/default/o2" {
                schema.encode_from_json(&json!({"id": i, "item": format!("item-{i}")})).expect("encode")
            } else {
                json!({"id": i}).to_string().into_bytes()
            };
            let failure = Failure {
                error: format!("failure {i}"),
                kind: error_kind,
                connector,
                source_topic: source,
                source_offset: Some(i.to_string()),
                attempts: 3,
            };
            let record = dead_letter_record(dlq, payload.into(), &HashMap::new(), Some(format!("key-{i}")), &failure);
            producer
                .send_with_key(record.payload.to_vec(), Some(record.attributes.clone()), &format!("key-{i}"))
                .await
                .expect("publish a dead letter");
        }

        let config = tempfile::Builder::new().suffix(".toml").tempfile().expect("config file");
        std::fs::write(config.path(), "[[schemas]]\ntopic = \"/default/o2\"\nsubject = \"insp-orders\"\n")
            .expect("write config");
        let config_path = config.path().to_str().expect("utf-8 path").to_string();
        for round in 0..2 {
            let report = inspect(&broker, dlq, &["--last", "3", "--config", &config_path], &[]).await;
            assert_eq!(report["read"], 6, "{kind} round {round}: {report}");
            let counts = &report["counts"];
            assert_eq!(
                counts[attributes::ERROR_KIND],
                json!({"retryable": 3, "invalid": 2, "rejected": 1}),
                "{kind}: {report}"
            );
            assert_eq!(counts[attributes::CONNECTOR], json!({"a": 3, "b": 3}), "{kind}: {report}");
            assert_eq!(
                counts[attributes::SOURCE_TOPIC],
                json!({"/default/o1": 3, "/default/o2": 3}),
                "{kind}: {report}"
            );
            let last = report["last"].as_array().expect("last records");
            assert_eq!(last.len(), 3, "{kind}: {report}");
            for (record, i) in last.iter().zip(3..6) {
                assert_eq!(record["attributes"][attributes::ERROR], format!("failure {i}"), "{kind}: {record}");
                assert_eq!(record["key"], format!("key-{i}"), "{kind}: {record}");
                assert_eq!(record["payload_encoding"], "schema", "{kind}: {record}");
                assert_eq!(record["payload"], json!({"id": i, "item": format!("item-{i}")}), "{kind}: {record}");
            }
        }
        // The text form names the counts too.
        let output = cli(&broker, &["dlq", "inspect", dlq, "--wait", "2s"], &[]).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("6 dead letters read") && stdout.contains("retryable"),
            "{kind}: {}",
            text(&output)
        );

        // A dry run publishes and acks nothing, and names the id each record would be replayed
        // with: the same in every run (what a replay that crashed and ran again relies on).
        let mut runs = Vec::new();
        for _ in 0..2 {
            let output = cli(&broker, &["dlq", "replay", dlq, "--dry-run", "--json", "--wait", "2s"], &[]).await;
            assert!(output.status.success(), "{kind}: dry run failed: {}", text(&output));
            let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
                .lines()
                .map(|line| serde_json::from_str(line).expect("JSON line"))
                .collect();
            let (records, summary) = lines.split_at(lines.len() - 1);
            assert_eq!(summary[0]["replayed"], 6, "{kind}: {}", text(&output));
            let ids: BTreeMap<String, String> = records
                .iter()
                .map(|r| {
                    (
                        r["id"].as_str().unwrap_or_default().to_string(),
                        r["replay_id"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            assert_eq!(ids.len(), 6, "{kind}: {}", text(&output));
            for (id, replay_id) in &ids {
                assert!(
                    id.starts_with(&format!("{dlq}:")) && replay_id == id,
                    "{kind}: {id} would be replayed as {replay_id}"
                );
            }
            runs.push(ids);
        }
        assert_eq!(runs[0], runs[1], "{kind}: two dry runs gave different replay ids");
        let report = inspect(&broker, dlq, &[], &[]).await;
        assert_eq!(report["read"], 6, "{kind}: a dry run consumed dead letters: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_json_prints_one_object_per_record_with_key_attributes_and_decoded_payload() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let topic = "/default/tail_json";
        let producer = producers(&broker, topic, "tail-p").await.remove(0);
        let mut child = cli_command(&broker, &["tail", topic, "--json", "--count", "3", "--idle", "30s"], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tail");
        let stderr = child.stderr.take().expect("stderr");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = ready_tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("following") => break,
                _ => assert!(Instant::now() < deadline, "{kind}: tail never subscribed"),
            }
        }
        let attrs: HashMap<String, String> = [("tenant".to_string(), "acme".to_string())].into();
        producer.send_with_key(br#"{"order":1}"#.to_vec(), Some(attrs), "k-1").await.expect("publish json");
        producer.send(b"plain text".to_vec(), None).await.expect("publish text");
        producer.send(vec![0xff, 0x00, 0x01], None).await.expect("publish binary");

        let output =
            tokio::task::spawn_blocking(move || child.wait_with_output().expect("tail output")).await.expect("join");
        assert!(output.status.success(), "{kind}: tail failed: {}", text(&output));
        let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{kind}: not one JSON object per line ({e}): {line}"))
            })
            .collect();
        assert_eq!(lines.len(), 3, "{kind}: {lines:?}");
        assert_eq!(lines[0]["payload"], json!({"order": 1}), "{kind}: {}", lines[0]);
        assert_eq!(lines[0]["payload_encoding"], "json");
        assert_eq!(lines[0]["key"], "k-1");
        assert_eq!(lines[0]["attributes"]["tenant"], "acme");
        assert_eq!(lines[0]["topic"], topic);
        assert_eq!(lines[0]["id"], format!("{topic}:{}", lines[0]["offset"]));
        assert_eq!(lines[1]["payload"], "plain text", "{kind}: {}", lines[1]);
        assert_eq!(lines[1]["payload_encoding"], "text");
        assert_eq!(lines[1]["key"], Value::Null);
        assert_eq!(lines[2]["payload"], "/wAB", "{kind}: {}", lines[2]);
        assert_eq!(lines[2]["payload_encoding"], "base64");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_names_the_field_and_exits_1() {
    let output = Command::new(CLI)
        .args(["dlq", "inspect", "/default/x"])
        .env("DANUBE_SERVICE_URL", "ftp://nowhere")
        .output()
        .expect("run danube-connect");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("danube.service_url"), "{}", text(&output));
}
