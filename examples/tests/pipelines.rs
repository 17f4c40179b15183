//! The example pipelines' configuration files are valid for their connector binaries, and the
//! webhook-analytics pipeline runs end to end with exactly those files.
//!
//! The binaries belong to other packages of the workspace: `scripts/test.sh` builds them
//! (`cargo build --workspace`) before the tests run.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use danube_connect_testkit::clickhouse::ClickHouseServer;
use danube_connect_testkit::kafka::Tansu;
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The workspace's `target/<profile>` dir, where this test binary and the connectors live.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is not built; run `cargo build --workspace` first", path.display());
    path
}

/// The workspace root (the example configs use paths relative to it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(binary_name: &str, config: &str) -> String {
    let workspace = workspace();
    let output = Command::new(binary(binary_name))
        .args(["--check", "--config", config])
        .current_dir(&workspace)
        .output()
        .expect("run --check");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{binary_name} --check {config} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn webhook_analytics_configs_are_valid() {
    let dir = "examples/pipelines/webhook-analytics";
    let source = check("danube-http-source", &format!("{dir}/http-source.toml"));
    assert!(source.contains("orders-value") && source.contains("json"), "{source}");
    let analytics = check("danube-clickhouse", &format!("{dir}/clickhouse.toml"));
    assert!(analytics.contains("/default/orders"), "{analytics}");
    let export = check("danube-kafka-bridge", &format!("{dir}/kafka-bridge.toml"));
    assert!(export.contains("/default/orders"), "{export}");
}

const PIPELINE: &str = "examples/pipelines/webhook-analytics";
const WAIT: Duration = Duration::from_secs(60);
/// A W3C trace context as a caller's tracer would send it.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Posts `body` as JSON with a bare HTTP/1.1 request; returns the status code and the body.
async fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    post_with(port, path, "", body).await
}

/// Like [`post`], with `extra` header lines (each ending in `\r\n`).
async fn post_with(port: u16, path: &str, extra: &str, body: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to http-source");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("response within 30 s")
        .expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Spawns `binary` with `config` (a file of the pipeline) and `env`, and waits until ready.
async fn spawn(binary_name: &str, config: Option<&str>, env: &[(&str, String)]) -> ConnectorProcess {
    let mut vars: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    if let Some(config) = config {
        vars.insert("CONNECTOR_CONFIG_FILE".into(), format!("{PIPELINE}/{config}"));
    }
    let mut process = ConnectorProcess::spawn(&binary(binary_name), &vars).expect("spawn");
    if let Err(e) = process.wait_ready(WAIT).await {
        panic!("{binary_name} not ready: {e}");
    }
    process
}

/// Polls the ClickHouse count `sql` until it is `expected` (or `WAIT` passed); returns the last.
async fn wait_count(ch: &ClickHouseServer, sql: &str, expected: u64) -> u64 {
    let started = Instant::now();
    loop {
        let n = ch.query(sql).await.ok().and_then(|v| v.trim().parse().ok()).unwrap_or(u64::MAX);
        if n == expected || started.elapsed() > WAIT {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The README's pipeline, run with its three config files: webhooks into http-source (Avro
/// subject `orders-value`), ClickHouse rows decoded by schema id, and Kafka records carrying
/// the Avro datum unchanged with the schema id header. The Kafka side is read back by a
/// second kafka-bridge (import), whose librdkafka consumer maps Kafka headers to attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_analytics_runs_end_to_end() {
    // The configs name `order.avsc` relative to the workspace root, as the README runs them.
    std::env::set_current_dir(workspace()).expect("cd to the workspace root");
    let broker = EmbeddedBroker::start_default().await.expect("embedded broker");
    let ch = ClickHouseServer::start().await.expect("start ClickHouse (scripts/test.sh installs it)");
    ch.exec("CREATE TABLE orders (id String, amount Float64, currency String, batch_id String) ENGINE = MergeTree ORDER BY id")
        .await
        .expect("create table");
    let tansu = Tansu::start().await.expect("tansu must be installed and start (see scripts/test.sh)");
    tansu.create_topic("orders", 1).unwrap_or_else(|e| panic!("create the Kafka topic: {e}"));
    let spool = tempfile::tempdir().expect("spool dir");
    let danube = ("DANUBE_SERVICE_URL", broker.url());
    let topic = "/default/orders";

    let http_port = free_port();
    let mut source = spawn(
        "danube-http-source",
        Some("http-source.toml"),
        &[danube.clone(), ("HTTP_SOURCE_LISTEN", format!("127.0.0.1:{http_port}"))],
    )
    .await;
    // http-source creates the schema-bound topic at start, so the sinks can subscribe before
    // the first webhook (a new subscription starts at the end of the topic).
    assert!(broker.messages(topic).is_empty());
    let mut analytics = spawn(
        "danube-clickhouse",
        Some("clickhouse.toml"),
        &[danube.clone(), ("CLICKHOUSE_URL", ch.url()), ("CLICKHOUSE_SPOOL__DIR", spool.path().display().to_string())],
    )
    .await;
    let mut export = spawn(
        "danube-kafka-bridge",
        Some("kafka-bridge.toml"),
        &[danube.clone(), ("KAFKA_BRIDGE_KAFKA__BOOTSTRAP_SERVERS", tansu.bootstrap())],
    )
    .await;
    assert!(
        broker.wait_for_consumers(topic, "orders-analytics", 1, WAIT).await,
        "clickhouse never subscribed (http-source must create {topic} at start; rebuild the binaries with \
         `cargo build --workspace` if they predate that): {}",
        analytics.log()
    );
    assert!(
        broker.wait_for_consumers(topic, "orders-to-kafka", 1, WAIT).await,
        "kafka-bridge never subscribed: {}",
        export.log()
    );

    // o1 comes with a W3C trace context: it must reach Kafka as the `traceparent` header.
    let (status, body) = post_with(
        http_port,
        "/orders",
        &format!("traceparent: {TRACEPARENT}\r\n"),
        r#"{"id":"o1","amount":12.5,"currency":"USD"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}\n{}", source.log());
    let (status, body) = post(http_port, "/orders", r#"{"id":"o2","amount":"lots"}"#).await;
    assert_eq!(status, 400, "an invalid body is refused: {body}");
    assert!(body.contains("/amount"), "the violation names the field: {body}");
    let (status, body) = post(http_port, "/orders", r#"{"id":"o3","amount":3.25}"#).await;
    assert_eq!(status, 200, "{body}");

    let stored = broker.wait_for_messages(topic, 2, WAIT).await;
    assert_eq!(stored.len(), 2, "o1 and o3 entered the topic; o2 did not");
    let schema_id = stored[0].schema_id.expect("stamped with the schema id");
    assert!(stored.iter().all(|m| m.schema_id == Some(schema_id) && m.schema_version == Some(1)));
    assert!(stored.iter().all(|m| m.payload.first() != Some(&b'{')), "stored as Avro datums, not JSON");
    let published: BTreeSet<Vec<u8>> = stored.iter().map(|m| m.payload.to_vec()).collect();

    // ClickHouse: both records, the first webhook included, decoded into typed columns (o3
    // gets the Avro default currency).
    let n = wait_count(&ch, "SELECT count() FROM orders", 2).await;
    assert_eq!(n, 2, "{}", analytics.log());
    let rows = ch.query("SELECT id, amount, currency FROM orders ORDER BY id FORMAT TSV").await.expect("select");
    assert_eq!(rows.trim(), "o1\t12.5\tUSD\no3\t3.25\tEUR");

    // Kafka: read the topic back with a second bridge importing it into Danube.
    let mut reader = spawn(
        "danube-kafka-bridge",
        None,
        &[
            danube.clone(),
            ("CONNECTOR_NAME", "kafka-reader".into()),
            ("KAFKA_BRIDGE_KAFKA__BOOTSTRAP_SERVERS", tansu.bootstrap()),
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", "pipeline-reader".into()),
            (
                "KAFKA_BRIDGE_IMPORT__MAPPINGS",
                r#"[{topics=["orders"], danube_topic="/default/orders-from-kafka"}]"#.into(),
            ),
        ],
    )
    .await;
    let from_kafka = broker.wait_for_messages("/default/orders-from-kafka", 2, WAIT).await;
    assert_eq!(from_kafka.len(), 2, "export log: {}\nreader log: {}", export.log(), reader.log());
    let exported: BTreeSet<Vec<u8>> = from_kafka.iter().map(|m| m.payload.to_vec()).collect();
    assert_eq!(exported, published, "Kafka has the Avro datums unchanged");
    for record in &from_kafka {
        let header = |name: &str| record.attributes.get(name).map(String::as_str);
        assert_eq!(header("danube.schema-id"), Some(schema_id.to_string().as_str()), "{:?}", record.attributes);
        assert_eq!(header("danube.schema-version"), Some("1"), "{:?}", record.attributes);
        assert_eq!(header("kafka.topic"), Some("orders"));
    }
    let traced: Vec<_> =
        from_kafka.iter().filter_map(|m| m.attributes.get("traceparent").map(String::as_str)).collect();
    assert_eq!(traced, [TRACEPARENT], "o1's trace context went webhook -> Danube -> Kafka header, o3 has none");

    for (name, process) in
        [("reader", &mut reader), ("export", &mut export), ("analytics", &mut analytics), ("source", &mut source)]
    {
        let status = process.terminate(Duration::from_secs(30)).await;
        assert!(status.is_some_and(|s| s.success()), "{name} drains and exits 0: {}", process.log());
    }
}
