//! One webhook followed to the HTTP call that delivered it: the W3C `traceparent` a caller
//! sends to http-source travels through Danube as a record attribute and comes out as the
//! `traceparent` header of http-sink's request. On both brokers.
//!
//! The binaries belong to other packages of the workspace: `scripts/test.sh` builds them
//! (`cargo build --workspace`) before the tests run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE";
const TOPIC: &str = "/default/traced-hooks";

/// The workspace's `target/<profile>` dir, where the connector binaries live.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is not built; run `cargo build --workspace` first", path.display());
    path
}

/// What the receiver saw: each request's path, body and trace headers.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    body: String,
    raw: Vec<u8>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// A plain HTTP/1.1 receiver on 127.0.0.1 that answers 200 to everything and records it.
async fn receiver() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let log = log.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = tokio::io::BufReader::new(read);
                loop {
                    let Some((head, raw)) = read_request(&mut read).await else { return };
                    let body = String::from_utf8_lossy(&raw).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                    let header = |name: &str| {
                        head.lines().find_map(|line| {
                            let (k, v) = line.split_once(':')?;
                            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    let received = Received {
                        path,
                        traceparent: header("traceparent"),
                        tracestate: header("tracestate"),
                        body,
                        raw,
                    };
                    log.lock().expect("log").push(received);
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

/// Reads one request (head and a `content-length` body) from a keep-alive connection.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncBufReadExt;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    read.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

/// Posts a JSON webhook with `extra` header lines; returns the status code.
async fn post(port: u16, extra: &str, body: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to http-source");
    let request = format!(
        "POST /hooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
        .await
        .expect("answer within 30 s")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {text}"))
}

async fn spawn(name: &str, env: HashMap<String, String>) -> ConnectorProcess {
    let mut process = ConnectorProcess::spawn(&binary(name), &env).expect("spawn");
    if let Err(e) = process.wait_ready(Duration::from_secs(60)).await {
        panic!("{name} not ready: {e}\n{}", process.log());
    }
    process
}

fn env(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_followed_to_the_http_call_that_delivered_it() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let (hook_port, received) = receiver().await;
        let source_port = free_port();
        let mut source = spawn(
            "danube-http-source",
            env(&[
                ("DANUBE_SERVICE_URL", broker.url()),
                ("CONNECTOR_NAME", "traced-source".into()),
                ("HTTP_SOURCE_LISTEN", format!("127.0.0.1:{source_port}")),
                ("HTTP_SOURCE_ENDPOINTS", format!(r#"[{{path="/hooks", topic="{TOPIC}"}}]"#)),
            ]),
        )
        .await;
        let mut sink = spawn(
            "danube-http-sink",
            env(&[
                ("DANUBE_SERVICE_URL", broker.url()),
                ("CONNECTOR_NAME", "traced-sink".into()),
                ("CONNECTOR_SINK__TOPICS", format!(r#"[{{topic="{TOPIC}"}}]"#)),
                ("HTTP_SINK_URL", format!("http://127.0.0.1:{hook_port}/delivered")),
                // The receiver is on loopback: opt out of the SSRF guard for private targets.
                ("HTTP_SINK_ALLOW_PRIVATE_TARGETS", "true".into()),
            ]),
        )
        .await;
        // Danube subscriptions start at the end: warm up until the sink delivers.
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.lock().expect("log").is_empty() {
            assert!(Instant::now() < deadline, "{kind}: no warm-up delivery\n{}\n{}", source.log(), sink.log());
            assert_eq!(post(source_port, "", r#"{"id":"warm-up"}"#).await, 200, "{kind}: {}", source.log());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        let traced = format!("traceparent: {TRACEPARENT}\r\ntracestate: {TRACESTATE}\r\n");
        assert_eq!(post(source_port, &traced, r#"{"id":"traced"}"#).await, 200, "{kind}: {}", source.log());
        let bad = "traceparent: 00-not-a-trace-context\r\ntracestate: x=y\r\n";
        assert_eq!(post(source_port, bad, r#"{"id":"malformed"}"#).await, 200, "{kind}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let find = |id: &str| {
            let log = received.lock().expect("log");
            log.iter().find(|r| r.body.contains(&format!(r#""id":"{id}""#))).cloned()
        };
        while (find("traced").is_none() || find("malformed").is_none()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let delivered = find("traced").unwrap_or_else(|| panic!("{kind}: never delivered\n{}", sink.log()));
        assert_eq!(delivered.traceparent.as_deref(), Some(TRACEPARENT), "{kind}: {delivered:?}");
        assert_eq!(delivered.tracestate.as_deref(), Some(TRACESTATE), "{kind}: {delivered:?}");
        let malformed = find("malformed").unwrap_or_else(|| panic!("{kind}: never delivered\n{}", sink.log()));
        assert_eq!(
            (malformed.traceparent, malformed.tracestate),
            (None, None),
            "{kind}: an invalid traceparent is dropped with its tracestate"
        );
        let warm = find("warm-up").expect("warm-up delivered");
        assert_eq!(warm.traceparent, None, "{kind}: no trace context is invented");

        for (name, process) in [("sink", &mut sink), ("source", &mut source)] {
            let status = process.terminate(Duration::from_secs(30)).await;
            assert!(status.is_some_and(|s| s.success()), "{kind}: {name} exits 0: {}", process.log());
        }
    }
}

/// One span as the OTLP receiver got it.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes every OTLP/HTTP protobuf export the receiver got.
fn exported_spans(received: &[Received]) -> Vec<ExportedSpan> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let mut spans = Vec::new();
    for request in received.iter().filter(|r| r.path == "/v1/traces") {
        let export = ExportTraceServiceRequest::decode(request.raw.as_slice()).expect("an OTLP protobuf export");
        for resource in export.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(ExportedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                    });
                }
            }
        }
    }
    spans
}

/// With `[telemetry]` on, the webhook's trace gets a `publish` span from http-source and a
/// `process` span from http-sink, each the child of the one before, exported over OTLP/HTTP
/// to a receiver on loopback; the delivered request's `traceparent` is the sink's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_one_webhook_from_the_source_to_the_sink_call() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let (hook_port, received) = receiver().await;
        let (collector_port, exports) = receiver().await;
        let collector = format!("http://127.0.0.1:{collector_port}");
        let topic = "/default/spanned-hooks";
        let source_port = free_port();
        let mut source = spawn(
            "danube-http-source",
            env(&[
                ("DANUBE_SERVICE_URL", broker.url()),
                ("CONNECTOR_NAME", "spanned-source".into()),
                ("CONNECTOR_TELEMETRY__OTLP_ENDPOINT", collector.clone()),
                ("HTTP_SOURCE_LISTEN", format!("127.0.0.1:{source_port}")),
                ("HTTP_SOURCE_ENDPOINTS", format!(r#"[{{path="/hooks", topic="{topic}"}}]"#)),
            ]),
        )
        .await;
        let mut sink = spawn(
            "danube-http-sink",
            env(&[
                ("DANUBE_SERVICE_URL", broker.url()),
                ("CONNECTOR_NAME", "spanned-sink".into()),
                ("CONNECTOR_TELEMETRY__OTLP_ENDPOINT", collector.clone()),
                ("CONNECTOR_SINK__TOPICS", format!(r#"[{{topic="{topic}"}}]"#)),
                ("HTTP_SINK_URL", format!("http://127.0.0.1:{hook_port}/delivered")),
                ("HTTP_SINK_ALLOW_PRIVATE_TARGETS", "true".into()),
            ]),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.lock().expect("log").is_empty() {
            assert!(Instant::now() < deadline, "{kind}: no warm-up delivery\n{}\n{}", source.log(), sink.log());
            assert_eq!(post(source_port, "", r#"{"id":"warm-up"}"#).await, 200, "{kind}: {}", source.log());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let traced = format!("traceparent: {TRACEPARENT}\r\n");
        assert_eq!(post(source_port, &traced, r#"{"id":"spanned"}"#).await, 200, "{kind}: {}", source.log());
        let deadline = Instant::now() + Duration::from_secs(30);
        let delivered = loop {
            let found = received.lock().expect("log").iter().find(|r| r.body.contains(r#""id":"spanned""#)).cloned();
            if let Some(found) = found {
                break found;
            }
            assert!(Instant::now() < deadline, "{kind}: never delivered\n{}", sink.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // SIGTERM flushes the exporters.
        for (name, process) in [("sink", &mut sink), ("source", &mut source)] {
            let status = process.terminate(Duration::from_secs(30)).await;
            assert!(status.is_some_and(|s| s.success()), "{kind}: {name} exits 0: {}", process.log());
        }
        let spans = exported_spans(&exports.lock().expect("log"));
        let (trace_id, caller_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
        let in_trace: Vec<&ExportedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
        let publish = in_trace
            .iter()
            .find(|s| s.name == format!("publish {topic}"))
            .unwrap_or_else(|| panic!("{kind}: no publish span in the caller's trace: {spans:?}"));
        assert_eq!(publish.parent_span_id, caller_span, "{kind}: the caller's span is the publish span's parent");
        assert!(publish.service.contains("spanned-source"), "{kind}: {publish:?}");
        let process = in_trace
            .iter()
            .find(|s| s.name == format!("process {topic}"))
            .unwrap_or_else(|| panic!("{kind}: no process span in the caller's trace: {spans:?}"));
        assert_eq!(process.parent_span_id, publish.span_id, "{kind}: the sink's span follows the source's");
        assert!(process.service.contains("spanned-sink"), "{kind}: {process:?}");
        assert_eq!(
            delivered.traceparent.as_deref(),
            Some(format!("00-{trace_id}-{}-01", process.span_id).as_str()),
            "{kind}: the delivered call is the child of the sink's span"
        );
    }
}
