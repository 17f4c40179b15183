//! The ops files follow the connectors: every series the Grafana dashboard
//! (`docs/ops/grafana-dashboard.json`) and the alert rules (`docs/ops/alerts.yml`) name is
//! exported on `/metrics` by at least one connector binary, and their queries are valid
//! PromQL.
//!
//! Each connector binary runs against the development broker with a minimal configuration and
//! its real outside system (PostgreSQL, ClickHouse, Mosquitto, tansu, a loopback HTTP
//! receiver). A few records go through, failing in the ways the alerts watch (dead-lettered,
//! retried, handed back), because a labelled series appears only once it has a value.
//!
//! The metric names are parsed out of the two files, so the test follows them. A series known
//! to be missing would be listed in [`KNOWN_MISSING`] (none is: postgres-cdc exports
//! `postgres_cdc_replication_lag_bytes` since issue 20); the test asserts such a series is
//! still missing, so it fails once the metric exists and the list must shrink.
//!
//! The binaries belong to other packages of the workspace: `scripts/test.sh` builds them
//! (`cargo build --workspace`) before the tests run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_connect_testkit::clickhouse::ClickHouseServer;
use danube_connect_testkit::kafka::Tansu;
use danube_connect_testkit::mosquitto::Mosquitto;
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::postgres::Postgres;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Series the files name that no connector exports yet, with the issue that adds them.
const KNOWN_MISSING: &[(&str, &str)] = &[];

const WAIT: Duration = Duration::from_secs(90);

/// The workspace's `target/<profile>` dir, where this test binary and the connectors live.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is not built; run `cargo build --workspace` first", path.display());
    path
}

fn workspace_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

// --- metric names out of PromQL ------------------------------------------------------------

/// Removes string literals and the contents of `{...}` (label matchers) and `[...]` (ranges).
fn strip_matchers(expr: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars();
    // Skips a quoted string whose opening quote `quote` was just read.
    fn skip_string(chars: &mut std::str::Chars<'_>, quote: char) {
        let mut escaped = false;
        for d in chars.by_ref() {
            if escaped {
                escaped = false;
            } else if d == '\\' {
                escaped = true;
            } else if d == quote {
                return;
            }
        }
    }
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                skip_string(&mut chars, c);
                out.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while let Some(d) = chars.next() {
                    match d {
                        '"' | '\'' | '`' => skip_string(&mut chars, d),
                        d if d == close => break,
                        _ => {}
                    }
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The metric names a PromQL expression (or a Grafana `label_values(...)` query) selects.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let expr = expr.trim();
    // Grafana's `label_values(METRIC{...}, LABEL)`: only the first argument is a selector.
    let expr = match expr.strip_prefix("label_values(") {
        Some(rest) => rest.rsplit_once(',').map(|(selector, _)| selector).unwrap_or(rest),
        None => expr,
    };
    // Operators, and aggregations (`sum by (le) (...)` puts `by` between the name and `(`).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let text = strip_matchers(expr);
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &text[start..i];
            let grafana_variable = start > 0 && bytes[start - 1] == b'$';
            let next = text[i..].trim_start().chars().next();
            skip_group = GROUPING.contains(&word.to_ascii_lowercase().as_str());
            if skip_group {
                // the label list follows
            } else if grafana_variable || next == Some('(') || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                // a function, an aggregation or an operator
            } else {
                names.insert(word.to_string());
            }
            continue;
        }
        if c.is_ascii_digit() {
            // numbers, durations (5m) and exponents (1e9) are not names
            while i < bytes.len() && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            continue;
        }
        if !c.is_whitespace() && c != '(' {
            skip_group = false;
        }
        if c == '(' && skip_group {
            // `by (le, connector)`: label names, not series
            while i < bytes.len() && bytes[i] != b')' {
                i += 1;
            }
            skip_group = false;
        }
        i += 1;
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets and query variables.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(&dashboard["panels"], &mut exprs);
    for variable in dashboard["templating"]["list"].as_array().expect("templating.list") {
        if variable["type"] == "query" {
            let query = &variable["query"];
            let text = query["query"].as_str().or(query.as_str()).expect("a query variable's query");
            exprs.push(text.to_string());
        }
    }
    exprs
}

/// Every `expr:` of the alert rules (one line each; a block scalar would not be read).
fn rule_exprs(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("expr:"))
        .map(|expr| {
            let expr = expr.trim();
            assert!(
                !expr.starts_with('|') && !expr.starts_with('>'),
                "keep alert expressions on one line in docs/ops/alerts.yml (this test reads them): {expr}"
            );
            expr.trim_matches('\'').trim_matches('"').to_string()
        })
        .collect()
}

/// The series names the dashboard and the rules use, with where each is used.
fn used_series() -> BTreeMap<String, BTreeSet<&'static str>> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&workspace_file("docs/ops/grafana-dashboard.json")).expect("dashboard is JSON");
    let rules = workspace_file("docs/ops/alerts.yml");
    let mut used: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for (file, exprs) in [("dashboard", dashboard_exprs(&dashboard)), ("alerts", rule_exprs(&rules))] {
        assert!(!exprs.is_empty(), "no expressions found in the {file}");
        for expr in exprs {
            let names = metric_names(&expr);
            assert!(!names.is_empty(), "no series found in {file} expression `{expr}`");
            for name in names {
                used.entry(name).or_default().insert(file);
            }
        }
    }
    used
}

#[test]
fn promql_names_are_read_from_queries() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, connector) (rate(http_sink_request_duration_seconds_bucket{connector=~"$connector", x="a}b"}[$__rate_interval]))) / on (connector) group_left foo_total > 1e9"#,
    );
    assert_eq!(names, BTreeSet::from(["http_sink_request_duration_seconds_bucket".into(), "foo_total".into()]));
    let names = metric_names(r#"label_values(connector_records_received_total{connector=~"$connector"}, topic)"#);
    assert_eq!(names, BTreeSet::from(["connector_records_received_total".to_string()]));
    assert_eq!(metric_names("connector_ready == 0"), BTreeSet::from(["connector_ready".to_string()]));
}

// --- scraping ----------------------------------------------------------------------------

/// One HTTP/1.1 request over loopback; returns the status and the body.
async fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
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
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The `/metrics` text of a connector.
async fn scrape(process: &ConnectorProcess) -> String {
    let (status, body) = http(process.ops_port, "GET", "/metrics", "").await;
    assert_eq!(status, 200, "/metrics answers: {body}");
    body
}

/// The series names in a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Asserts that `connector_ready{connector="NAME"}` is 1 in `text`.
fn assert_ready(name: &str, text: &str) {
    let line = format!("connector_ready{{connector=\"{name}\"}} 1");
    assert!(text.lines().any(|l| l == line), "{name} exports `{line}`:\n{text}");
}

// --- the outside systems -------------------------------------------------------------------

/// A webhook receiver on loopback: 200 for a body with `ok`, 400 for `bad` (dead-lettered at
/// once), 500 for `retry` (retried, then dead-lettered), 503 with `Retry-After: 30` for
/// `later` (handed back to the broker).
async fn start_receiver() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as many body bytes as Content-Length says.
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            break;
                        }
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&buffer);
                let response = if text.contains("\"ok\"") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else if text.contains("\"bad\"") {
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
                } else if text.contains("\"later\"") {
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, requests)
}

async fn spawn(binary_name: &str, env: &[(&str, String)]) -> ConnectorProcess {
    let vars: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut process = ConnectorProcess::spawn(&binary(binary_name), &vars).expect("spawn");
    if let Err(e) = process.wait_ready(WAIT).await {
        panic!("{binary_name} not ready: {e}");
    }
    process
}

/// Every connector but kafka-bridge (see [`kafka_bridge_exports_readiness_and_the_core_series`])
/// with records flowing through: http-source takes four webhooks into `/default/ops-hook`,
/// http-sink and clickhouse consume it, mqtt takes one MQTT message, postgres-cdc one insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_of_the_dashboard_and_the_alerts_is_exported() {
    let used = used_series();
    for (name, why) in KNOWN_MISSING {
        assert!(
            used.contains_key(*name),
            "{name} ({why}) is no longer used by the ops files: drop it from KNOWN_MISSING"
        );
    }

    let broker = EmbeddedBroker::start_default().await.expect("embedded broker");
    let danube = ("DANUBE_SERVICE_URL", broker.url());
    let topic = "/default/ops-hook";
    let refused = "/default/ops-refused";
    let (receiver_port, receiver_requests) = start_receiver().await;
    let ch = ClickHouseServer::start().await.expect("start ClickHouse (scripts/test.sh installs it)");
    ch.exec("CREATE TABLE ops (v String) ENGINE = MergeTree ORDER BY v").await.expect("create table");
    // Tuple values reach ClickHouse unchecked: a row with "x" for a UInt8 is refused by
    // ClickHouse itself, after it was spooled (clickhouse_rows_dead_lettered_total).
    ch.exec("CREATE TABLE refused (id UInt32, e Tuple(UInt8, String)) ENGINE = MergeTree ORDER BY id")
        .await
        .expect("create table");
    let mosquitto = Mosquitto::start().expect("start mosquitto (scripts/test.sh installs it)");
    let pg = Postgres::start().expect("start PostgreSQL (scripts/test.sh installs it)");
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, name text)").expect("create table");
    // The sinks subscribe to existing topics: http-source creates `topic`, a first (valid,
    // never delivered: a subscription starts at the end) row creates `refused`.
    broker.publish(refused, br#"{"id":0,"e":[0,"z"]}"#.to_vec(), HashMap::new(), None);
    let spool = tempfile::tempdir().expect("spool dir");
    let config_dir = tempfile::tempdir().expect("config dir");

    // http-source first: it creates its topic at start, so the sinks can subscribe to it
    // before the first webhook (a new subscription starts at the end of the topic).
    let webhook_port = free_port();
    let config = config_dir.path().join("http-source.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"ops-webhooks\"\n[connector]\nlisten = \"127.0.0.1:{webhook_port}\"\n\n\
             [[connector.endpoints]]\nid = \"hook\"\npath = \"/hook\"\ntopic = \"{topic}\"\n"
        ),
    )
    .expect("write http-source config");
    let webhooks = spawn(
        "danube-http-source",
        &[
            danube.clone(),
            ("CONNECTOR_NAME", "ops-webhooks".into()),
            ("CONNECTOR_CONFIG_FILE", config.display().to_string()),
        ],
    )
    .await;
    // http-sink: ordering "none" so a long Retry-After hands the record back (a nack); the
    // stall detector polls an exporter that is not there (the gauge exists, at 0).
    let hook = spawn(
        "danube-http-sink",
        &[
            danube.clone(),
            ("CONNECTOR_NAME", "ops-hook".into()),
            ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
            ("CONNECTOR_SINK__ORDERING", "none".into()),
            ("CONNECTOR_RETRY__MAX_ATTEMPTS", "2".into()),
            ("CONNECTOR_RETRY__INITIAL_BACKOFF", "20ms".into()),
            ("CONNECTOR_DANUBE__BROKER_METRICS_URL", format!("http://127.0.0.1:{}/metrics", free_port())),
            ("HTTP_SINK_URL", format!("http://127.0.0.1:{receiver_port}/hook")),
            ("HTTP_SINK_ALLOW_PRIVATE_TARGETS", "true".into()),
        ],
    )
    .await;
    let analytics = spawn(
        "danube-clickhouse",
        &[
            danube.clone(),
            ("CONNECTOR_NAME", "ops-analytics".into()),
            ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}, {{topic=\"{refused}\"}}]")),
            ("CLICKHOUSE_URL", ch.url()),
            (
                "CLICKHOUSE_TABLES",
                format!("[{{topic=\"{topic}\", table=\"ops\"}}, {{topic=\"{refused}\", table=\"refused\"}}]"),
            ),
            ("CLICKHOUSE_SPOOL__DIR", spool.path().display().to_string()),
            ("CLICKHOUSE_BATCH__MAX_LINGER", "200ms".into()),
        ],
    )
    .await;
    for (topic, subscription, process) in
        [(topic, "ops-hook", &hook), (topic, "ops-analytics", &analytics), (refused, "ops-analytics", &analytics)]
    {
        assert!(
            broker.wait_for_consumers(topic, subscription, 1, WAIT).await,
            "{subscription} never subscribed: {}",
            process.log()
        );
    }
    let mqtt = spawn(
        "danube-mqtt",
        &[
            danube.clone(),
            ("CONNECTOR_NAME", "ops-mqtt".into()),
            ("MQTT_BROKER__HOST", "127.0.0.1".into()),
            ("MQTT_BROKER__PORT", mosquitto.port().to_string()),
            ("MQTT_BROKER__CLIENT_ID", "ops-mqtt".into()),
            ("MQTT_MAPPINGS", r#"[{filter="ops/#", topic="/default/ops-mqtt", qos=1}]"#.into()),
        ],
    )
    .await;
    let cdc = spawn(
        "danube-postgres-cdc",
        &[
            danube.clone(),
            ("CONNECTOR_NAME", "ops-cdc".into()),
            ("POSTGRES_CDC_URL", pg.url()),
            ("POSTGRES_CDC_SNAPSHOT", "never".into()),
            ("POSTGRES_CDC_TABLES", r#"["public.items"]"#.into()),
            ("POSTGRES_CDC_TOPIC", "/default/ops-cdc".into()),
            ("POSTGRES_CDC_STATUS_INTERVAL", "200ms".into()),
            ("POSTGRES_CDC_SLOT_CHECK_INTERVAL", "500ms".into()),
        ],
    )
    .await;

    // Traffic: four webhooks, one MQTT message, one row.
    for v in ["ok", "bad", "retry", "later"] {
        let (status, body) = http(webhook_port, "POST", "/hook", &format!(r#"{{"v":"{v}"}}"#)).await;
        assert!((200..300).contains(&status), "webhook {v} accepted: {status} {body}\n{}", webhooks.log());
    }
    broker.publish(refused, br#"{"id":1,"e":["x","d"]}"#.to_vec(), HashMap::new(), None);
    let mosquitto_pub = danube_connect_testkit::find_binary("mosquitto_pub", &[], "apt-get install mosquitto-clients")
        .expect("mosquitto_pub (scripts/test.sh installs mosquitto-clients)");
    let published = Command::new(mosquitto_pub)
        .args(["-h", "127.0.0.1", "-p", &mosquitto.port().to_string(), "-q", "1", "-t", "ops/one", "-m", "42"])
        .status()
        .expect("run mosquitto_pub");
    assert!(published.success(), "mosquitto_pub exits 0");
    // Ready comes before the slot streams: a row inserted earlier is not captured (no snapshot).
    let started = Instant::now();
    while pg.psql("SELECT active FROM pg_replication_slots").unwrap_or_default().trim() != "t" {
        assert!(started.elapsed() < WAIT, "the replication slot never became active: {}", cdc.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.psql("INSERT INTO items VALUES (1, 'one')").expect("insert a row");
    assert_eq!(broker.wait_for_messages("/default/ops-mqtt", 1, WAIT).await.len(), 1, "{}", mqtt.log());
    assert_eq!(broker.wait_for_messages("/default/ops-cdc", 1, WAIT).await.len(), 1, "{}", cdc.log());

    // Scrape until every used series is there (labelled series appear with the traffic).
    let connectors = [
        ("ops-hook", &hook),
        ("ops-analytics", &analytics),
        ("ops-webhooks", &webhooks),
        ("ops-mqtt", &mqtt),
        ("ops-cdc", &cdc),
    ];
    let expected: BTreeSet<&String> =
        used.keys().filter(|name| !KNOWN_MISSING.iter().any(|(known, _)| *known == name.as_str())).collect();
    let started = Instant::now();
    let (texts, exported) = loop {
        let mut texts = BTreeMap::new();
        let mut exported: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for (name, process) in &connectors {
            let text = scrape(process).await;
            for series in exported_names(&text) {
                exported.entry(series).or_default().push(*name);
            }
            texts.insert(*name, text);
        }
        if expected.iter().all(|name| exported.contains_key(*name)) || started.elapsed() > WAIT {
            break (texts, exported);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let missing: Vec<String> = expected
        .iter()
        .filter(|name| !exported.contains_key(**name))
        .map(|name| format!("{name} (used by {:?})", used[*name]))
        .collect();
    assert!(
        missing.is_empty(),
        "series used by docs/ops but exported by no connector: {missing:?}\n(receiver got {} requests)\n{}",
        receiver_requests.load(Ordering::SeqCst),
        texts.iter().map(|(name, text)| format!("--- {name}\n{text}")).collect::<String>()
    );
    for (name, why) in KNOWN_MISSING {
        assert!(
            !exported.contains_key(*name),
            "{name} is exported now ({why} is done): remove it from KNOWN_MISSING and from the runbook's waiting note"
        );
    }
    assert!(
        exported.get("postgres_cdc_replication_lag_bytes").is_some_and(|by| by.contains(&"ops-cdc")),
        "postgres-cdc exports its slot's lag (issue 20): {exported:?}"
    );
    for (name, text) in &texts {
        assert_ready(name, text);
    }
    // The traffic did what the dead-letter alert watches: `bad` and `retry` were dead-lettered.
    let dlq = broker.wait_for_messages("/default/dlq-ops-hook", 2, WAIT).await;
    assert_eq!(dlq.len(), 2, "bad and retry dead-lettered: {}", hook.log());
    let refused_rows = broker.wait_for_messages("/default/dlq-ops-analytics", 1, WAIT).await;
    assert_eq!(refused_rows.len(), 1, "the refused row dead-lettered: {}", analytics.log());
    println!("ops series checked: {} used, {} exported by the connectors", used.len(), exported.len());
}

/// kafka-bridge (import side) against tansu: ready, exporting `connector_ready` = 1 and the
/// core series of its Danube topic's producer (created at start). No series of the ops files
/// is specific to kafka-bridge, so it is not part of the test above (which tansu would then
/// hold up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bridge_exports_readiness_and_the_core_series() {
    let broker = EmbeddedBroker::start_default().await.expect("embedded broker");
    let tansu = Tansu::start().await.expect("tansu must be installed and start (see scripts/test.sh)");
    tansu.create_topic("ops", 1).unwrap_or_else(|e| panic!("create the Kafka topic: {e}"));
    let bridge = spawn(
        "danube-kafka-bridge",
        &[
            ("DANUBE_SERVICE_URL", broker.url()),
            ("CONNECTOR_NAME", "ops-kafka".into()),
            ("KAFKA_BRIDGE_KAFKA__BOOTSTRAP_SERVERS", tansu.bootstrap()),
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", "ops-kafka".into()),
            ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["ops"], danube_topic="/default/ops-kafka"}]"#.into()),
        ],
    )
    .await;
    let text = scrape(&bridge).await;
    assert_ready("ops-kafka", &text);
    let names = exported_names(&text);
    for core in ["connector_ready", "connector_in_flight_records", "connector_records_published_total"] {
        assert!(names.contains(core), "kafka-bridge exports {core}:\n{text}");
    }
}

/// The dashboard's queries parse as PromQL: with the Grafana variables filled in, they are
/// checked by `promtool check rules` as recording rules.
#[test]
fn dashboard_queries_are_valid_promql() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&workspace_file("docs/ops/grafana-dashboard.json")).expect("dashboard is JSON");
    let promtool = danube_connect_testkit::find_binary("promtool", &[], "apt-get install prometheus")
        .expect("promtool (scripts/test.sh installs the prometheus package)");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut count = 0;
    for expr in dashboard_exprs(&dashboard) {
        if expr.starts_with("label_values(") {
            continue;
        }
        let expr = expr.replace("$__rate_interval", "5m").replace("$connector", ".*").replace("$topic", ".*");
        count += 1;
        rules.push_str(&format!("      - record: dashboard:query{count}\n        expr: {}\n", serde_json::json!(expr)));
    }
    assert!(count > 10, "the dashboard has its queries ({count})");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).expect("write rules");
    let output = Command::new(promtool).args(["check", "rules"]).arg(&file).output().expect("run promtool");
    assert!(
        output.status.success(),
        "dashboard queries are not valid PromQL:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
