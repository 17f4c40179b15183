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

/// What the receiver saw: each request's body and its trace headers.
#[derive(Debug, Clone)]
struct Received {
    body: String,
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
                    let Some((head, body)) = read_request(&mut read).await else { return };
                    let header = |name: &str| {
                        head.lines().find_map(|line| {
                            let (k, v) = line.split_once(':')?;
                            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                        })
                    };
                    let received =
                        Received { traceparent: header("traceparent"), tracestate: header("tracestate"), body };
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
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> Option<(String, String)> {
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
    Some((head, String::from_utf8_lossy(&body).into_owned()))
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
