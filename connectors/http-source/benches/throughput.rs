//! Throughput of the HTTP source in durable mode, beside two baselines measured in the
//! same run on the same machine:
//!
//! 1. raw publish rate through `danube-client` with the same producer count to the same
//!    embedded broker (the ceiling the connector can reach);
//! 2. a bare axum handler answering 200 without publishing (the HTTP limit).
//!
//! Load comes from `wrk` (loopback). Prints requests/s, p50/p99, the ratio to the raw
//! publish rate (target ≥ 80%) and the connector's RSS idle and under load.
//!
//! Run: `cargo bench -p danube-connector-http-source` (knobs: `BENCH_SECONDS`,
//! `BENCH_CONNECTIONS`, `BENCH_PRODUCERS`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;

const PAYLOAD: &str = r#"{"event":"push","repository":"danube-connect","n":12345}"#;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Load {
    requests_per_sec: f64,
    p50: String,
    p99: String,
    requests: u64,
    errors: u64,
}

/// Runs wrk against `url` with POST bodies and parses its report.
fn wrk(url: &str, connections: u64, seconds: u64) -> Load {
    let wrk = ["/usr/bin/wrk", "/usr/local/bin/wrk"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("wrk is not installed: apt-get install -y wrk");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{PAYLOAD}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )
    .expect("write lua");
    let output = Command::new(wrk)
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l[prefix.len()..].split_whitespace().next().map(str::to_string))
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let errors = field("Non-2xx or 3xx responses:").and_then(|n| n.parse().ok()).unwrap_or(0);
    Load {
        requests_per_sec: field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        p50: field("50%").unwrap_or_else(|| "?".into()),
        p99: field("99%").unwrap_or_else(|| "?".into()),
        requests,
        errors,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The attributes the connector puts on each record of the benchmark, so both sides
/// publish the same records.
fn connector_like_attributes() -> HashMap<String, String> {
    [
        ("http.method", "POST"),
        ("http.path", "/bench"),
        ("http.remote_addr", "127.0.0.1:51234"),
        ("http.received_at", "2025-01-01T00:00:00.000Z"),
        ("http.endpoint", "endpoint-0"),
        ("http.verification", "none"),
        ("content-type", "application/json"),
        ("http.content_type", "application/json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Raw publish: `producers` producers each sending one message at a time for `seconds`
/// (with the connector's attributes when `attributes` is set).
async fn raw_publish(url: &str, producers: u64, seconds: u64, attributes: bool) -> (f64, Duration, Duration) {
    let lanes = reliable_producers(url.to_string(), "/default/bench-raw", "bench-raw", producers as usize)
        .await
        .expect("raw producers");
    let mut tasks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    for producer in lanes {
        let attributes = attributes.then(connector_like_attributes);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                producer.send(PAYLOAD.as_bytes().to_vec(), attributes.clone()).await.expect("send");
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("producer task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pick = |q: f64| latencies.get(((latencies.len() as f64) * q) as usize).copied().unwrap_or_default();
    (latencies.len() as f64 / elapsed, pick(0.50), pick(0.99))
}

/// [`raw_publish`] on its own multi-threaded runtime and thread.
async fn raw_publish_apart(url: String, producers: u64, seconds: u64, attributes: bool) -> (f64, Duration, Duration) {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        runtime.block_on(raw_publish(&url, producers, seconds, attributes))
    })
    .await
    .expect("raw publish thread")
}

/// A bare axum server answering 200 to every POST, on its own runtime thread.
fn bare_axum() -> u16 {
    let port = free_port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let app = axum::Router::new().fallback(|_body: axum::body::Bytes| async { "ok" });
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    port
}

fn main() {
    let seconds = env_or("BENCH_SECONDS", 10);
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let producers = env_or("BENCH_PRODUCERS", 4);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let broker = EmbeddedBroker::start_default().await.expect("broker");

        // 1. Raw publish rate through danube-client, on a runtime of its own (as the
        //    connector is a process of its own), so the clients do not share the broker's.
        let (plain_rate, plain_p50, plain_p99) = raw_publish_apart(broker.url(), producers, seconds, false).await;
        let (raw_rate, raw_p50, raw_p99) = raw_publish_apart(broker.url(), producers, seconds, true).await;

        // 2. The connector in durable mode.
        let port = free_port();
        let mut env = HashMap::new();
        env.insert("DANUBE_SERVICE_URL".to_string(), broker.url());
        env.insert("CONNECTOR_NAME".to_string(), "http-bench".to_string());
        env.insert("CONNECTOR_SOURCE__PRODUCERS_PER_TOPIC".to_string(), producers.to_string());
        env.insert("CONNECTOR_LOG__LEVEL".to_string(), "warn".to_string());
        env.insert("HTTP_SOURCE_LISTEN".to_string(), format!("127.0.0.1:{port}"));
        env.insert("HTTP_SOURCE_ENDPOINTS".to_string(), "[{path=\"/bench\", topic=\"/default/bench\"}]".to_string());
        env.insert("HTTP_SOURCE_MAX_CONCURRENT_REQUESTS".to_string(), "4096".to_string());
        let binary = Path::new(env!("CARGO_BIN_EXE_danube-http-source"));
        let mut connector = ConnectorProcess::spawn(binary, &env).expect("spawn connector");
        connector.wait_ready(Duration::from_secs(30)).await.expect("connector ready");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "webhook port never opened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = connector.pid().expect("pid");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_rss = rss_kib(pid);
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let sampling = sampling.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while sampling.load(Ordering::Relaxed) {
                    peak = peak.max(rss_kib(pid));
                    std::thread::sleep(Duration::from_millis(100));
                }
                peak
            })
        };
        let url = format!("http://127.0.0.1:{port}/bench");
        let durable = tokio::task::spawn_blocking(move || wrk(&url, connections, seconds)).await.expect("wrk");
        sampling.store(false, Ordering::Relaxed);
        let load_rss = sampler.join().expect("sampler");
        let stored = broker.messages("/default/bench").len();
        let _ = connector.terminate(Duration::from_secs(20)).await;

        // 3. The HTTP limit: bare axum answering 200.
        let bare_port = bare_axum();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bare_url = format!("http://127.0.0.1:{bare_port}/bench");
        let bare = tokio::task::spawn_blocking(move || wrk(&bare_url, connections, seconds)).await.expect("wrk");

        println!("\nhttp-source throughput ({connections} wrk connections, {producers} producers, {seconds}s each, loopback, 2 cores shared by wrk, broker and connector)");
        println!("{:<34} {:>12} {:>10} {:>10}", "", "req/s", "p50", "p99");
        println!("{:<34} {:>12.0} {:>10} {:>10}", "raw publish, no attributes", plain_rate, format!("{:.2?}", plain_p50), format!("{:.2?}", plain_p99));
        println!("{:<34} {:>12.0} {:>10} {:>10}", "raw publish, same attributes", raw_rate, format!("{:.2?}", raw_p50), format!("{:.2?}", raw_p99));
        println!("{:<34} {:>12.0} {:>10} {:>10}", "http-source durable", durable.requests_per_sec, durable.p50, durable.p99);
        println!("{:<34} {:>12.0} {:>10} {:>10}", "bare axum 200 (HTTP limit)", bare.requests_per_sec, bare.p50, bare.p99);
        println!(
            "durable / raw publish (same records) = {:.0}% (target >= 80%); durable / raw publish without attributes = {:.0}%; durable / bare axum = {:.0}%",
            100.0 * durable.requests_per_sec / raw_rate.max(1.0),
            100.0 * durable.requests_per_sec / plain_rate.max(1.0),
            100.0 * durable.requests_per_sec / bare.requests_per_sec.max(1.0)
        );
        println!(
            "durable: {} requests answered, {} non-2xx, {} records in the topic",
            durable.requests, durable.errors, stored
        );
        println!("connector RSS: idle {} MiB, under load (peak) {} MiB", idle_rss / 1024, load_rss / 1024);
    });
}
