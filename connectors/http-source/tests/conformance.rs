//! Conformance suite: each behaviour of the HTTP source runs on the development broker and,
//! when `DANUBE_BROKER_BIN` names it, on the real Danube broker (`BrokerKind::all`). What
//! arrived is read back through a raw `danube-client` consumer (`TopicReader`) on either
//! broker, counting distinct records by the id each body carries.
//!
//! Behaviours: end-to-end delivery, kill -9 of the connector under load, a broker outage
//! mid-stream, the dead-letter path, and schema registration in the broker's registry.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_client::DanubeClient;
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::{reliable_producers, TopicReader};
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use reqwest::StatusCode;

const BINARY: &str = env!("CARGO_BIN_EXE_danube-http-source");

/// The connector's name; its dead-letter topic is `/default/dlq-http-conf`, which prefixes no
/// data topic of these tests.
const NAME: &str = "http-conf";

/// A running gateway and the directory its config lives in.
struct Gateway {
    process: ConnectorProcess,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Starts the gateway against `broker` on `port` with `connector_toml` as the body of its
/// `[connector]` section (`$DIR` is its config directory) and `extra` after it, and waits
/// until it is ready and listening.
async fn start_gateway(
    broker: &TestBroker,
    port: u16,
    connector_toml: &str,
    extra: &str,
    files: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write file");
    }
    let config = dir.path().join("connector.toml");
    let text = format!(
        "name = \"{NAME}\"\n{}\n[connector]\nlisten = \"127.0.0.1:{port}\"\n{connector_toml}\n",
        extra.replace("$DIR", &dir.path().display().to_string())
    );
    std::fs::write(&config, text).expect("write config");
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("DANUBE_SERVICE_URL".into(), broker.url());
    vars.insert("CONNECTOR_CONFIG_FILE".into(), config.display().to_string());
    for (k, v) in env {
        vars.insert((*k).into(), (*v).into());
    }
    let mut process = ConnectorProcess::spawn(Path::new(BINARY), &vars).expect("spawn connector");
    let kind = broker.kind();
    process.wait_ready(Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{kind}: connector not ready: {e}"));
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(15), "{kind}: webhook port never opened: {}", process.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Gateway { process, port, _dir: dir }
}

/// The ids (`{"id":"..."}`) of the records a reader received, as a set, and how many
/// messages carried them.
fn ids(reader: &TopicReader) -> (HashSet<String>, usize) {
    let messages = reader.messages();
    let ids = messages.iter().map(|m| id_of(&m.payload)).collect();
    (ids, messages.len())
}

fn id_of(payload: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string))
        .unwrap_or_else(|| format!("not-json:{}", String::from_utf8_lossy(payload)))
}

/// Waits until every id of `want` is among the reader's records, or `timeout` passed; returns
/// the ids missing at the end.
async fn wait_for_ids(reader: &TopicReader, want: &[String], timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, _) = ids(reader);
        let missing: Vec<String> = want.iter().filter(|id| !got.contains(*id)).cloned().collect();
        if missing.is_empty() || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clients posting `{"id":"{prefix}-c{c}-{n}"}` bodies until `stop`, each at most one request
/// in flight; returns the ids that got a 2xx answer.
fn start_load(
    url: String,
    clients: usize,
    prefix: &str,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|c| {
            let (stop, url, prefix) = (stop.clone(), url.clone(), prefix.to_string());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
                let mut acked = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = format!("{prefix}-c{c}-{n}");
                    match http.post(&url).body(format!("{{\"id\":\"{id}\"}}")).send().await {
                        Ok(response) if response.status().is_success() => acked.push(id),
                        // Refused (503 while the broker is away) or cut: not acknowledged.
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    // Paced: the real broker's subscriptions stall on large bursts.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                acked
            })
        })
        .collect()
}

async fn collect(clients: Vec<tokio::task::JoinHandle<Vec<String>>>) -> Vec<String> {
    let mut acked = Vec::new();
    for client in clients {
        acked.extend(client.await.expect("client task"));
    }
    acked
}

/// What the real broker says about `topic` (messages taken in, subscription lag) and the
/// warnings and errors it logged: the context of a failed assertion.
async fn broker_view(broker: &TestBroker, topic: &str) -> String {
    let TestBroker::Real(real) = broker else { return "dev broker".into() };
    let taken = real.metric_sum("danube_topic_messages_in_total", &[("topic", topic)]).await.unwrap_or(-1.0);
    let lag = real.metric_sum("danube_subscription_lag_messages", &[("topic", topic)]).await.unwrap_or(-1.0);
    let log = real.log();
    let notable: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(10).collect();
    format!("broker: {taken} messages in, subscription lag {lag}; log: {}", notable.join("\n"))
}

const DELIVERY: &str = r#"
[[connector.endpoints]]
path = "/events"
topic = "/default/conf-events"
"#;

#[tokio::test]
async fn every_acknowledged_request_arrives_once() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let gateway = start_gateway(&broker, free_port(), DELIVERY, "", &[], &[]).await;
        // The gateway created its static topic at start, so a subscription made now sees
        // every record.
        let reader = TopicReader::subscribe(broker.url(), "/default/conf-events", "conf").await.expect("reader");
        let url = gateway.url("/events");
        let sent: Vec<String> = (0..400).map(|i| format!("d-{i}")).collect();
        let mut tasks = Vec::new();
        for chunk in sent.chunks(50) {
            // 8 clients, one request in flight each, paced: no burst the real broker stalls on.
            let (url, chunk) = (url.clone(), chunk.to_vec());
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut statuses = Vec::new();
                for id in chunk {
                    let response = http.post(&url).body(format!("{{\"id\":\"{id}\"}}")).send().await.expect("send");
                    statuses.push((id, response.status()));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                statuses
            }));
        }
        for task in tasks {
            for (id, status) in task.await.expect("task") {
                assert_eq!(status, StatusCode::OK, "{kind}: {id}: {}", gateway.process.log());
            }
        }
        let missing = wait_for_ids(&reader, &sent, Duration::from_secs(30)).await;
        let (got, count) = ids(&reader);
        assert!(
            missing.is_empty(),
            "{kind}: {} of 400 acknowledged requests missing, e.g. {:?}; {}",
            missing.len(),
            &missing[..missing.len().min(5)],
            broker_view(&broker, "/default/conf-events").await
        );
        assert_eq!(got.len(), 400, "{kind}: distinct records in the topic");
        assert_eq!(count, 400, "{kind}: no duplicates without failures");
        if let TestBroker::Real(real) = &broker {
            let taken = real
                .metric_sum("danube_topic_messages_in_total", &[("topic", "/default/conf-events")])
                .await
                .expect("metrics");
            assert_eq!(taken, 400.0, "{kind}: the broker's own count of messages taken in");
        }
    }
}

const LOAD: &str = r#"
[[connector.endpoints]]
path = "/load"
topic = "/default/conf-load"
"#;

#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_request() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let port = free_port();
        let mut gateway = start_gateway(&broker, port, LOAD, "", &[], &[]).await;
        let reader = TopicReader::subscribe(broker.url(), "/default/conf-load", "conf").await.expect("reader");
        let stop = Arc::new(AtomicBool::new(false));
        let clients = start_load(gateway.url("/load"), 8, "before", stop.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while reader.count() < 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Killed while 8 clients keep requests in flight.
        gateway.process.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let acked = collect(clients).await;
        assert!(acked.len() >= 200, "{kind}: too little load before the kill: {}", acked.len());
        drop(gateway);

        // The restarted gateway (same name, same port) serves again.
        let gateway = start_gateway(&broker, port, LOAD, "", &[], &[]).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = start_load(gateway.url("/load"), 4, "after", stop.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        let acked_after = collect(clients).await;
        assert!(!acked_after.is_empty(), "{kind}: nothing acknowledged after the restart: {}", gateway.process.log());

        let all: Vec<String> = acked.iter().chain(&acked_after).cloned().collect();
        let missing = wait_for_ids(&reader, &all, Duration::from_secs(30)).await;
        assert!(
            missing.is_empty(),
            "{kind}: {} acknowledged requests lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let (got, count) = ids(&reader);
        eprintln!(
            "{kind}: kill -9: {} acknowledged before, {} after; {} distinct records, {count} messages",
            acked.len(),
            acked_after.len(),
            got.len()
        );
    }
}

const OUTAGE: &str = r#"
[[connector.endpoints]]
path = "/outage"
topic = "/default/conf-outage"
"#;

#[tokio::test]
async fn broker_outage_mid_stream_loses_no_acknowledged_request() {
    for kind in BrokerKind::all() {
        let mut broker = TestBroker::start_persistent(kind).await.expect("broker");
        let env = [
            ("CONNECTOR_SOURCE__PUBLISH_TIMEOUT", "2s"),
            ("HTTP_SOURCE_REQUEST_TIMEOUT", "5s"),
            ("HTTP_SOURCE_RETRY_AFTER", "1s"),
        ];
        let gateway = start_gateway(&broker, free_port(), OUTAGE, "", &[], &env).await;
        let topic = "/default/conf-outage";
        let first = TopicReader::subscribe(broker.url(), topic, "conf").await.expect("reader");
        let stop = Arc::new(AtomicBool::new(false));
        let clients = start_load(gateway.url("/outage"), 4, "load", stop.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while first.count() < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(first.count() >= 100, "{kind}: no load before the outage: {}", gateway.process.log());
        let before_outage = first.count();
        broker.outage(Duration::from_secs(3)).await.expect("outage");
        // Load goes on until requests succeed again for a while.
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.store(true, Ordering::Relaxed);
        let acked = collect(clients).await;

        // The first reader may have lost its stream in the outage (the dev broker restarts):
        // the durable subscription hands what it did not ack to a second reader.
        let missing_first = wait_for_ids(&first, &acked, Duration::from_secs(10)).await;
        let mut got = ids(&first).0;
        if !missing_first.is_empty() {
            drop(first);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let second = TopicReader::subscribe(broker.url(), topic, "conf").await.expect("second reader");
            let missing = wait_for_ids(&second, &missing_first, Duration::from_secs(30)).await;
            got.extend(ids(&second).0);
            eprintln!(
                "{kind}: outage: {} ids came through the re-subscribed reader",
                missing_first.len() - missing.len()
            );
        }
        let lost: Vec<&String> = acked.iter().filter(|id| !got.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "{kind}: {} acknowledged requests lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        let after: usize = acked.len().saturating_sub(before_outage);
        assert!(after > 0, "{kind}: nothing acknowledged after the outage: {}", gateway.process.log());
        eprintln!("{kind}: outage: {} acknowledged, {before_outage} read before the outage", acked.len());
    }
}

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["id", "amount"],
  "properties": { "id": { "type": "string" }, "amount": { "type": "number" } }
}"#;

const ORDERS: &str = r#"
[[connector.endpoints]]
path = "/orders"
topic = "/default/conf-orders"
ack = "accepted"
"#;

const ORDERS_SCHEMA: &str = r#"
[[schemas]]
topic = "/default/conf-orders"
subject = "conf-orders-value"
type = "json_schema"
file = "$DIR/orders.schema.json"
"#;

#[tokio::test]
async fn an_undeliverable_record_lands_in_the_dead_letter_topic_with_its_error() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        // The dead-letter topic is created on first use: create it (reliable) and subscribe
        // first, as a consumer of it would.
        let dlq = format!("/default/dlq-{NAME}");
        let maker = reliable_producers(broker.url(), &dlq, "mk", 1).await.expect("create the dead-letter topic");
        let dead = TopicReader::subscribe(broker.url(), &dlq, "conf").await.expect("dlq reader");
        let gateway =
            start_gateway(&broker, free_port(), ORDERS, ORDERS_SCHEMA, &[("orders.schema.json", SCHEMA)], &[]).await;
        let data = TopicReader::subscribe(broker.url(), "/default/conf-orders", "conf").await.expect("reader");
        let http = reqwest::Client::new();
        let bad =
            http.post(gateway.url("/orders")).body(r#"{"id":"o-bad","amount":"lots"}"#).send().await.expect("send");
        assert_eq!(bad.status(), StatusCode::ACCEPTED, "{kind}: answered before validation in accepted mode");
        let good = http.post(gateway.url("/orders")).body(r#"{"id":"o-good","amount":3}"#).send().await.expect("send");
        assert_eq!(good.status(), StatusCode::ACCEPTED, "{kind}");

        let dead_letters = dead.wait_for(1, Duration::from_secs(30)).await;
        assert_eq!(dead_letters.len(), 1, "{kind}: {}", gateway.process.log());
        let letter = &dead_letters[0];
        assert_eq!(letter.payload.as_ref(), br#"{"id":"o-bad","amount":"lots"}"#, "{kind}");
        assert_eq!(
            letter.attributes.get("dlq.error_kind").map(String::as_str),
            Some("invalid"),
            "{kind}: {:?}",
            letter.attributes
        );
        let error = letter.attributes.get("dlq.error").cloned().unwrap_or_default();
        assert!(error.contains("amount"), "{kind}: the violation is named: {error}");
        assert_eq!(letter.attributes.get("dlq.connector").map(String::as_str), Some(NAME), "{kind}");
        assert_eq!(
            letter.attributes.get("http.path").map(String::as_str),
            Some("/orders"),
            "{kind}: original attributes kept"
        );

        let arrived = data.wait_for(1, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let arrived_ids: Vec<String> = data.messages().iter().map(|m| id_of(&m.payload)).collect();
        assert_eq!(
            arrived_ids,
            vec!["o-good".to_string()],
            "{kind}: only the valid record is in the data topic ({})",
            arrived.len()
        );
        drop(maker);
    }
}

/// The JSON Schema a registry answer holds. Danube v0.15.1 answers with its stored form
/// (`{"JsonSchema":{"raw_schema":"...","fingerprint":"..."}}`, serde's form of its
/// `SchemaDefinition`) rather than the registered bytes; the development broker answers with
/// the registered bytes. Both are read here.
fn raw_definition(kind: BrokerKind, bytes: &[u8]) -> serde_json::Value {
    let raw = danube_connect_core::schema::registered_definition(bytes);
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{kind}: the registered definition is not JSON: {e}"))
}

#[tokio::test]
async fn schema_registered_in_the_brokers_registry_and_records_decode_with_it() {
    let orders = ORDERS.replace("ack = \"accepted\"\n", "");
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let gateway =
            start_gateway(&broker, free_port(), &orders, ORDERS_SCHEMA, &[("orders.schema.json", SCHEMA)], &[]).await;
        let data = TopicReader::subscribe(broker.url(), "/default/conf-orders", "conf").await.expect("reader");
        let http = reqwest::Client::new();
        for i in 0..5 {
            let ok = http
                .post(gateway.url("/orders"))
                .body(format!(r#"{{"id":"o-{i}","amount":{i}.5}}"#))
                .send()
                .await
                .expect("send");
            assert_eq!(ok.status(), StatusCode::OK, "{kind}: {}", gateway.process.log());
        }
        let bad = http.post(gateway.url("/orders")).body(r#"{"id":"o-x","amount":"lots"}"#).send().await.expect("send");
        // failure.policy = dead_letter (the default): dead-lettered, answered 202.
        assert_eq!(bad.status(), StatusCode::ACCEPTED, "{kind}: a body failing the schema is dead-lettered");

        let messages = data.wait_for(5, Duration::from_secs(30)).await;
        assert_eq!(messages.len(), 5, "{kind}: {}", gateway.process.log());
        // The registry of the broker itself has the subject, and the records reference it.
        let client = DanubeClient::builder().service_url(broker.url()).build().await.expect("client");
        let registry = client.schema();
        let latest = registry.get_latest_schema("conf-orders-value").await.expect("subject registered in the broker");
        assert_eq!(
            latest.schema_type.to_lowercase().replace(['_', ' '], ""),
            "jsonschema",
            "{kind}: {}",
            latest.schema_type
        );
        let registered = raw_definition(kind, &latest.schema_definition);
        let file: serde_json::Value = serde_json::from_str(SCHEMA).expect("schema");
        assert_eq!(registered, file, "{kind}: the registered definition is the file's");
        for message in &messages {
            assert_eq!(message.schema_id, Some(latest.schema_id), "{kind}: each record carries the subject's id");
            assert_eq!(message.schema_version, Some(latest.version), "{kind}");
            // Decoding: fetch the schema by the record's id and check the record against it.
            let by_id = registry.get_schema_by_id(message.schema_id.expect("id")).await.expect("schema by id");
            assert_eq!(by_id.subject, "conf-orders-value", "{kind}");
            let definition = raw_definition(kind, &by_id.schema_definition);
            let value: serde_json::Value = serde_json::from_slice(&message.payload).expect("the record is JSON");
            for field in definition["required"].as_array().expect("required") {
                assert!(value.get(field.as_str().expect("name")).is_some(), "{kind}: {field} missing in {value}");
            }
            assert!(value["amount"].is_number(), "{kind}: decoded amount is a number: {value}");
        }
        let ids: HashSet<String> = messages.iter().map(|m| id_of(&m.payload)).collect();
        assert_eq!(ids.len(), 5, "{kind}: distinct records");
        assert!(!ids.contains("o-x"), "{kind}: the refused body is not in the topic");
    }
}

/// Waits up to `timeout` for the gateway to exit on its own; its exit status.
async fn wait_exit(process: &mut ConnectorProcess, timeout: Duration) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(status) = process.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// `failure.policy` for a record Danube refuses for good (it fails its topic's schema), on a
/// durable endpoint (the sender still holds the record) and an `accepted` one (the sender got
/// 202 already):
///
/// - `dead_letter`: durable → 202 `dead_lettered` once the dead letter is in Danube, with
///   `dlq.attempts`; (accepted: the test above);
/// - `nack`: durable → 400, the sender keeps it, nothing dead-lettered, the gateway runs on;
///   accepted → nothing can hand it back: the gateway stops (exit 2), nothing dead-lettered;
/// - `stop`: durable → 503 with `Retry-After` and the gateway stops (exit 2); accepted → the
///   gateway stops (exit 2); nothing dead-lettered either way.
#[tokio::test]
async fn failure_policy_is_honoured_for_durable_and_accepted_endpoints() {
    let durable = ORDERS.replace("ack = \"accepted\"\n", "");
    let bad_body = r#"{"id":"o-bad","amount":"lots"}"#;
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let dlq = format!("/default/dlq-{NAME}");
        let maker = reliable_producers(broker.url(), &dlq, "mk", 1).await.expect("create the dead-letter topic");
        let dead = TopicReader::subscribe(broker.url(), &dlq, "policy").await.expect("dlq reader");
        let http = reqwest::Client::new();
        let files = [("orders.schema.json", SCHEMA)];

        // dead_letter (the default), durable.
        let mut gateway = start_gateway(&broker, free_port(), &durable, ORDERS_SCHEMA, &files, &[]).await;
        let answer = http.post(gateway.url("/orders")).body(bad_body).send().await.expect("send");
        assert_eq!(answer.status(), StatusCode::ACCEPTED, "{kind}: {}", gateway.process.log());
        let text = answer.text().await.expect("body");
        assert!(text.contains("dead_lettered") && text.contains("amount"), "{kind}: {text}");
        let letters = dead.wait_for(1, Duration::from_secs(30)).await;
        assert_eq!(letters.len(), 1, "{kind}: {}", gateway.process.log());
        assert_eq!(letters[0].payload.as_ref(), bad_body.as_bytes(), "{kind}");
        assert_eq!(letters[0].attributes.get("dlq.attempts").map(String::as_str), Some("1"), "{kind}");
        assert_eq!(letters[0].attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"), "{kind}");
        assert!(gateway.process.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{kind}");

        // nack, durable: refused to the sender, the gateway runs on.
        let nack = [("CONNECTOR_FAILURE__POLICY", "nack")];
        let mut gateway = start_gateway(&broker, free_port(), &durable, ORDERS_SCHEMA, &files, &nack).await;
        let answer = http.post(gateway.url("/orders")).body(bad_body).send().await.expect("send");
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{kind}: {}", gateway.process.log());
        let good = http.post(gateway.url("/orders")).body(r#"{"id":"o-1","amount":1}"#).send().await.expect("send");
        assert_eq!(good.status(), StatusCode::OK, "{kind}: the gateway runs on");
        assert!(gateway.process.try_wait().is_none(), "{kind}: still running");
        assert!(gateway.process.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{kind}");

        // nack, accepted: answered 202 already, so the gateway stops.
        let mut gateway = start_gateway(&broker, free_port(), ORDERS, ORDERS_SCHEMA, &files, &nack).await;
        let answer = http.post(gateway.url("/orders")).body(bad_body).send().await.expect("send");
        assert_eq!(answer.status(), StatusCode::ACCEPTED, "{kind}");
        let status = wait_exit(&mut gateway.process, Duration::from_secs(30)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{kind}: {}", gateway.process.log());
        assert!(gateway.process.log().contains("cannot hand it back"), "{kind}: {}", gateway.process.log());

        // stop, durable: 503 (the sender sends it again later) and the gateway stops.
        let stop = [("CONNECTOR_FAILURE__POLICY", "stop")];
        let mut gateway = start_gateway(&broker, free_port(), &durable, ORDERS_SCHEMA, &files, &stop).await;
        let answer = http.post(gateway.url("/orders")).body(bad_body).send().await.expect("send");
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "{kind}: {}", gateway.process.log());
        assert!(answer.headers().get("retry-after").is_some(), "{kind}");
        let status = wait_exit(&mut gateway.process, Duration::from_secs(30)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{kind}: {}", gateway.process.log());

        // stop, accepted.
        let mut gateway = start_gateway(&broker, free_port(), ORDERS, ORDERS_SCHEMA, &files, &stop).await;
        let answer = http.post(gateway.url("/orders")).body(bad_body).send().await.expect("send");
        assert_eq!(answer.status(), StatusCode::ACCEPTED, "{kind}");
        let status = wait_exit(&mut gateway.process, Duration::from_secs(30)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{kind}: {}", gateway.process.log());
        assert!(gateway.process.log().contains("failure.policy = stop"), "{kind}: {}", gateway.process.log());

        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(dead.count(), 1, "{kind}: only the dead_letter run dead-lettered");
        drop(maker);
    }
}
