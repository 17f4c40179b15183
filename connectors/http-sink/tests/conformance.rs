//! Conformance of the HTTP sink on both brokers: the development broker always, the real
//! Danube broker when `DANUBE_BROKER_BIN` names it. Each test body runs once per broker
//! (`BrokerKind::all()`) and names the broker in every assertion.
//!
//! The sink is the `danube-http-sink` binary in its own process, the receiver a real HTTP
//! server on loopback, and records are published by raw `danube-client` producers. Records
//! carry an id in their JSON payload, and delivery is counted by DISTINCT ids.
//!
//! Volumes stay modest (at most 400 records per run, published one at a time) because a
//! reliable subscription of Danube v0.15.1 stalls once its backlog passes the dispatch window
//! plus about two thousand messages (`docs/running-on-danube.md`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use danube_client::Producer;
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::{reliable_producers, TopicReader};
use danube_connect_testkit::process::ConnectorProcess;

const BINARY: &str = env!("CARGO_BIN_EXE_danube-http-sink");

/// The body marker the receiver refuses with 422 (a permanent error).
const POISON: &str = "poison";

/// One request the receiver answered.
#[derive(Debug, Clone)]
struct Delivery {
    body: String,
    status: u16,
}

#[derive(Default)]
struct HookState {
    deliveries: Mutex<Vec<Delivery>>,
    delay_ms: AtomicU64,
    /// Requests answered 2xx so far (duplicates included).
    ok: AtomicU64,
    /// While set, every request is answered 503 (the target is down).
    down: std::sync::atomic::AtomicBool,
}

/// A real HTTP receiver on 127.0.0.1: answers 503 while it is down, 422 to a body containing
/// [`POISON`], 200 to anything else, after an optional delay.
#[derive(Clone)]
struct Hook {
    state: Arc<HookState>,
    url: String,
}

async fn answer(State(state): State<Arc<HookState>>, body: Bytes) -> StatusCode {
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let status = if state.down.load(Ordering::Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else if body.contains(POISON) {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    if status.is_success() {
        state.ok.fetch_add(1, Ordering::Relaxed);
    }
    state.deliveries.lock().expect("hook lock").push(Delivery { body, status: status.as_u16() });
    status
}

impl Hook {
    async fn start(delay: Duration) -> Self {
        let state = Arc::new(HookState::default());
        state.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
        let app = Router::new().fallback(answer).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("receiver binds");
        let url = format!("http://{}/hook", listener.local_addr().expect("receiver address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { state, url }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.state.deliveries.lock().expect("hook lock").clone()
    }

    /// The distinct `id`s of the bodies answered 2xx.
    fn delivered_ids(&self) -> HashSet<String> {
        self.deliveries()
            .iter()
            .filter(|d| d.status < 300)
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(&d.body).ok())
            .filter_map(|v| v["id"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until every id of `expected` was answered 2xx, or `timeout` passed.
    async fn wait_ids(&self, expected: &HashSet<String>, timeout: Duration) -> HashSet<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.delivered_ids();
            if expected.is_subset(&got) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ids(prefix: &str, range: std::ops::Range<usize>) -> HashSet<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

/// Creates `topic` on the broker (reliable) and returns two raw producers on it.
async fn producers(broker: &TestBroker, topic: &str, name: &str) -> Vec<Producer> {
    reliable_producers(broker.url(), topic, name, 2)
        .await
        .unwrap_or_else(|e| panic!("{}: raw producers on {topic}: {e}", broker.kind()))
}

/// How far the publisher may run ahead of the receiver's 2xx answers. Danube v0.15.1 hands
/// new messages to a subscription's dispatcher through a broadcast channel of 256 entries; a
/// dispatcher that falls further behind logs `channel lagged by N` and never delivers the
/// messages it skipped (measured: 81 of 400 lost with an unpaced publisher). Pacing the
/// publisher keeps these tests about the sink.
const MAX_LEAD: u64 = 120;

/// Publishes `{"id":"{prefix}-{i}"}` for each `i`, one message at a time, round robin,
/// never more than [`MAX_LEAD`] ahead of what `hook` answered 2xx.
async fn publish(producers: &[Producer], prefix: &str, range: std::ops::Range<usize>, hook: &Hook) {
    for i in range {
        while i as u64 > hook.state.ok.load(Ordering::Relaxed) + MAX_LEAD {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let body = serde_json::json!({ "id": format!("{prefix}-{i}"), "n": i }).to_string().into_bytes();
        producers[i % producers.len()].send(body, None).await.expect("raw publish");
    }
}

/// The binary's environment: consume `topic` as `name`, post to `url`.
fn sink_env(broker: &TestBroker, name: &str, topic: &str, url: &str) -> HashMap<String, String> {
    [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", name.to_string()),
        ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
        ("CONNECTOR_RETRY__INITIAL_BACKOFF", "50ms".into()),
        ("CONNECTOR_RETRY__MAX_BACKOFF", "500ms".into()),
        ("HTTP_SINK_URL", url.to_string()),
        // The receiver is on loopback: opt out of the SSRF guard for private targets.
        ("HTTP_SINK_ALLOW_PRIVATE_TARGETS", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The broker's warnings and errors (the real broker's log; empty for the dev broker), for
/// failure messages.
fn broker_trouble(broker: &TestBroker) -> String {
    let log = broker.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// What the real broker's exporter counts for `topic`: messages in, handed out, and the
/// subscriptions' lag (empty for the dev broker).
async fn broker_counts(broker: &TestBroker, topic: &str) -> String {
    let TestBroker::Real(real) = broker else { return String::new() };
    let labels = [("topic", topic)];
    let read = |name: &'static str| real.metric_sum(name, &labels);
    format!(
        "{topic}: in {:?}, out {:?}, lag {:?}",
        read("danube_topic_messages_in_total").await.ok(),
        read("danube_consumer_messages_out_total").await.ok(),
        read("danube_subscription_lag_messages").await.ok()
    )
}

/// Starts the sink and waits until it is ready and consuming its topic (Danube subscriptions
/// start at the end of a topic, so nothing may be published before).
async fn start_sink(kind: BrokerKind, env: &HashMap<String, String>) -> ConnectorProcess {
    let mut process = ConnectorProcess::spawn(std::path::Path::new(BINARY), env).expect("spawn the sink");
    process.wait_ready(Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{kind}: sink not ready: {e}"));
    process
        .wait_consuming(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{kind}: the sink never subscribed: {e}"));
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_published_arrives_as_a_distinct_delivery() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let hook = Hook::start(Duration::ZERO).await;
        let (name, topic) = ("hs-e2e", "/default/hs_e2e");
        let producers = producers(&broker, topic, "hs-e2e-p").await;
        let mut sink = start_sink(kind, &sink_env(&broker, name, topic, &hook.url)).await;
        let total = 300;
        publish(&producers, "e2e", 0..total, &hook).await;
        let expected = ids("e2e", 0..total);
        let got = hook.wait_ids(&expected, Duration::from_secs(45)).await;
        assert_eq!(got.len(), total, "{kind}: {} of {total} distinct records arrived: {}", got.len(), sink.log());
        assert_eq!(got, expected, "{kind}: the distinct ids are the ones published");
        assert!(hook.deliveries().iter().all(|d| d.status == 200), "{kind}: every request answered 200");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

/// SIGTERM while the target is down and the sink is waiting out a long backoff: the process
/// stops waiting, exits 0 well within `shutdown.timeout`, and the records it could not
/// deliver are handed back to Danube (nacked without delay, not dead-lettered), so the next
/// run delivers them at once. The records the open circuit breaker deferred are among them:
/// on Danube v0.15.1 a record nacked with a delay by a consumer that then leaves never came
/// back (6 of 20 missing after 120 s before the runtime handed deferred records back too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_target_is_down_exits_in_time_and_loses_nothing() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let hook = Hook::start(Duration::ZERO).await;
        hook.state.down.store(true, Ordering::Relaxed);
        let (name, topic) = ("hs-sigterm", "/default/hs_sigterm");
        let producers = producers(&broker, topic, "hs-sigterm-p").await;
        let mut env = sink_env(&broker, name, topic, &hook.url);
        for (key, value) in [
            ("CONNECTOR_RETRY__INITIAL_BACKOFF", "20s"),
            ("CONNECTOR_RETRY__MAX_BACKOFF", "20s"),
            ("CONNECTOR_RETRY__MAX_ATTEMPTS", "50"),
            ("CONNECTOR_RETRY__MAX_ELAPSED", "10m"),
            ("CONNECTOR_SHUTDOWN__TIMEOUT", "15s"),
        ] {
            env.insert(key.into(), value.into());
        }
        let mut sink = start_sink(kind, &env).await;
        let total = 20;
        publish(&producers, "sigterm", 0..total, &hook).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while hook.deliveries().is_empty() {
            assert!(Instant::now() < deadline, "{kind}: the sink never tried the target: {}", sink.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The sink is now in its 20 s backoff.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let status = sink.terminate(Duration::from_secs(30)).await.expect("exits on SIGTERM");
        let took = started.elapsed();
        assert!(
            status.success(),
            "{kind}: drained and exited 0 (3 = shutdown deadline hit): {status}
{}",
            sink.log()
        );
        assert!(took < Duration::from_secs(5), "{kind}: exit took {took:?}: the backoff held up the shutdown");
        assert!(hook.delivered_ids().is_empty(), "{kind}: nothing was answered 2xx while down");

        hook.state.down.store(false, Ordering::Relaxed);
        let mut sink = start_sink(kind, &sink_env(&broker, name, topic, &hook.url)).await;
        let expected = ids("sigterm", 0..total);
        let got = hook.wait_ids(&expected, Duration::from_secs(45)).await;
        assert_eq!(got, expected, "{kind}: every record delivered by the next run: {}", sink.log());
        println!("{kind}: SIGTERM during a 20 s backoff: exited 0 after {took:?}; all {total} delivered after restart");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_restart_loses_nothing_danube_had() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let hook = Hook::start(Duration::from_millis(5)).await;
        let (name, topic) = ("hs-kill", "/default/hs_kill");
        let producers = producers(&broker, topic, "hs-kill-p").await;
        let env = sink_env(&broker, name, topic, &hook.url);
        let mut sink = start_sink(kind, &env).await;
        let total = 400;
        let paced_by = hook.clone();
        let publisher = tokio::spawn(async move {
            publish(&producers, "kill", 0..total, &paced_by).await;
            producers
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while hook.delivered_ids().len() < 80 {
            assert!(Instant::now() < deadline, "{kind}: no load before the kill: {}", sink.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.kill9();
        let at_kill = hook.delivered_ids().len();
        assert!(at_kill < total, "{kind}: killed under load ({at_kill} of {total} delivered)");
        // The paced publisher waits for the receiver, so it stops while the sink is down.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let mut sink = start_sink(kind, &env).await;
        let _producers = tokio::time::timeout(Duration::from_secs(60), publisher)
            .await
            .unwrap_or_else(|_| panic!("{kind}: the publisher finished after the restart: {}", sink.log()))
            .expect("publisher");
        let expected = ids("kill", 0..total);
        let got = hook.wait_ids(&expected, Duration::from_secs(60)).await;
        let missing: Vec<_> = expected.difference(&got).take(10).collect();
        assert!(
            missing.is_empty(),
            "{kind}: {} of {total} records arrived after kill -9 at {at_kill}; missing e.g. {missing:?}: {}\nbroker: {}\n{}",
            got.len(),
            sink.log(),
            broker_trouble(&broker),
            broker_counts(&broker, topic).await
        );
        let requests = hook.deliveries().len();
        println!("{kind}: kill -9 at {at_kill} delivered; {requests} requests for {total} records after the restart");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_nothing() {
    for kind in BrokerKind::all() {
        let mut broker = TestBroker::start_persistent(kind).await.expect("broker starts");
        // A slow receiver keeps the stream going while the broker is away.
        let hook = Hook::start(Duration::from_millis(25)).await;
        let (name, topic) = ("hs-outage", "/default/hs_outage");
        let producers = producers(&broker, topic, "hs-outage-p").await;
        let mut sink = start_sink(kind, &sink_env(&broker, name, topic, &hook.url)).await;
        let total = 300;
        // Paced: returns with about MAX_LEAD records (3 s of delivery) still to go.
        publish(&producers, "out", 0..total, &hook).await;
        drop(producers);
        broker.outage(Duration::from_secs(3)).await.expect("outage");
        let after_outage = hook.delivered_ids().len();
        assert!(after_outage < total, "{kind}: the outage fell mid-stream ({after_outage} of {total})");
        let expected = ids("out", 0..total);
        let got = hook.wait_ids(&expected, Duration::from_secs(60)).await;
        let missing: Vec<_> = expected.difference(&got).take(10).collect();
        assert!(
            missing.is_empty(),
            "{kind}: {} of {total} arrived after a 3 s outage at {after_outage}; missing e.g. {missing:?}: {}\nbroker: {}\n{}",
            got.len(),
            sink.log(),
            broker_trouble(&broker),
            broker_counts(&broker, topic).await
        );
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_lands_in_the_dead_letter_topic_with_its_error() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let hook = Hook::start(Duration::ZERO).await;
        let (name, topic, dlq) = ("hs-dlq", "/default/hs_dlq", "/default/dlq-hs-dlq");
        let producers = producers(&broker, topic, "hs-dlq-p").await;
        // The dead-letter topic must exist before a reader can subscribe to it.
        let _dlq_maker = reliable_producers(broker.url(), dlq, "hs-dlq-mk", 1).await.expect("create the DLQ topic");
        let reader = TopicReader::subscribe(broker.url(), dlq, "dlq-reader").await.expect("subscribe to the DLQ");
        let mut sink = start_sink(kind, &sink_env(&broker, name, topic, &hook.url)).await;
        publish(&producers, "good", 0..20, &hook).await;
        let attributes = HashMap::from([("origin".to_string(), "conformance".to_string())]);
        let poison = serde_json::json!({ "id": "bad-0", "kind": POISON }).to_string();
        producers[0].send(poison.clone().into_bytes(), Some(attributes)).await.expect("publish poison");
        publish(&producers, "good", 20..40, &hook).await;

        let dead = reader.wait_for(1, Duration::from_secs(30)).await;
        assert_eq!(dead.len(), 1, "{kind}: one dead letter: {}", sink.log());
        let letter = &dead[0];
        assert_eq!(String::from_utf8_lossy(&letter.payload), poison, "{kind}: the payload is kept");
        let attr = |k: &str| letter.attributes.get(k).cloned().unwrap_or_default();
        assert!(attr("dlq.error").contains("422"), "{kind}: dlq.error names the status: {:?}", letter.attributes);
        assert_eq!(attr("dlq.error_kind"), "invalid", "{kind}: {:?}", letter.attributes);
        assert_eq!(attr("dlq.source_topic"), topic, "{kind}: {:?}", letter.attributes);
        assert_eq!(attr("dlq.attempts"), "1", "{kind}: a 422 is not retried: {:?}", letter.attributes);
        assert_eq!(attr("origin"), "conformance", "{kind}: the record's own attributes are kept");
        let expected = ids("good", 0..40);
        let got = hook.wait_ids(&expected, Duration::from_secs(30)).await;
        assert_eq!(got, expected, "{kind}: every good record delivered around the dead letter");
        let refused = hook.deliveries().iter().filter(|d| d.body.contains(POISON)).count();
        assert_eq!(refused, 1, "{kind}: the poison record was sent once");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(reader.count(), 1, "{kind}: nothing else was dead-lettered");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_are_decoded_by_their_registry_schema_into_json_bodies() {
    use danube_connect_common::schema::SchemaKind;
    use danube_connect_core::{Runtime, RuntimeConfig, SchemaBinding, SourceRecord};
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let hook = Hook::start(Duration::ZERO).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = dir.path().join("order.avsc");
        std::fs::write(
            &schema,
            r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"amount","type":"double"}]}"#,
        )
        .expect("write schema");
        let (name, topic) = ("hs-avro", "/default/hs_orders");
        // A source that registers the schema in the broker's registry and encodes JSON as Avro.
        let mut source = RuntimeConfig { name: "hs-avro-src".into(), ..Default::default() };
        source.danube.service_url = broker.url();
        source.ops.enabled = false;
        source.schemas =
            vec![SchemaBinding::new(topic, "hs-orders-value").with_file(SchemaKind::Avro, schema).with_json_input()];
        let token = tokio_util::sync::CancellationToken::new();
        let runtime = Runtime::start(source, token.clone())
            .await
            .unwrap_or_else(|e| panic!("{kind}: source runtime registers the schema: {e}"));
        let publisher = runtime.publisher();
        let order = |i: usize| {
            SourceRecord::from_json(topic, &serde_json::json!({"id": format!("o{i}"), "amount": i as f64 + 0.5}))
                .expect("json")
        };
        publisher.publish(order(0)).await.unwrap_or_else(|e| panic!("{kind}: publish creates the topic: {e}"));

        let dlq = "/default/dlq-hs-avro";
        let _dlq_maker = reliable_producers(broker.url(), dlq, "hs-avro-mk", 1).await.expect("create the DLQ topic");
        let dead = TopicReader::subscribe(broker.url(), dlq, "dlq-reader").await.expect("subscribe to the DLQ");
        let mut env = sink_env(&broker, name, topic, &hook.url);
        env.insert("HTTP_SINK_BODY__MODE".into(), "json".into());
        let mut sink = start_sink(kind, &env).await;
        let total = 30;
        for i in 1..=total {
            publisher.publish(order(i)).await.unwrap_or_else(|e| panic!("{kind}: publish: {e}"));
        }
        let expected: HashSet<String> = (1..=total).map(|i| format!("o{i}")).collect();
        let got = hook.wait_ids(&expected, Duration::from_secs(30)).await;
        assert_eq!(got, expected, "{kind}: every Avro record arrived decoded; {} requests, {} dead letters, the first: {:?}\n{}\nbroker: {}\n{}",
            hook.deliveries().len(),
            dead.count(),
            dead.messages().first().map(|m| &m.attributes),
            sink.log(),
            broker_trouble(&broker),
            broker_counts(&broker, topic).await
        );
        for delivery in hook.deliveries() {
            let body: serde_json::Value = serde_json::from_str(&delivery.body).expect("a JSON body");
            let n: f64 = body["id"].as_str().and_then(|id| id.trim_start_matches('o').parse().ok()).expect("id");
            assert_eq!(body, serde_json::json!({"id": format!("o{n}"), "amount": n + 0.5}), "{kind}: decoded fields");
        }
        assert_eq!(dead.count(), 0, "{kind}: nothing dead-lettered");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
        token.cancel();
    }
}
