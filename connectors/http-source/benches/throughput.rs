//! Throughput of the HTTP source in durable mode, beside two baselines measured in the
//! same run on the same machine:
//!
//! 1. raw publish rate through `danube-client` with the same producer count and the same
//!    attributes to the same broker (the ceiling the connector can reach), on a
//!    client runtime with tokio's default worker count and on one with
//!    `BENCH_GATEWAY_WORKERS` workers; the better of the two is the baseline;
//! 2. a bare axum handler answering 200 without publishing (the HTTP limit), once per round,
//!    with the CPU time it and wrk take per request. With the two cores saturated, a durable
//!    request costs at least a raw publish plus that, so the bench also prints the ceiling
//!    `raw / (raw + bare HTTP + wrk)` that even a gateway whose own work cost nothing could
//!    not pass while the cores are saturated. They often are not (each producer has one
//!    message in flight, so round trips bound the rate), and then the ceiling does not hold.
//!
//! Two gateway processes run side by side: one with the runtime's default worker threads,
//! one with `CONNECTOR_RUNTIME__WORKER_THREADS` = `BENCH_GATEWAY_WORKERS` (default 1).
//! `BENCH_ROUNDS` short rounds (default 8 of 3 s phases) each run every raw and gateway
//! phase back to back, raw first and last, so a change of machine load weighs on all of
//! them; ratios are taken within a round, then medians. On a shared 2-core machine the raw
//! rate alone moves by a factor of two from minute to minute, so many short rounds give a
//! steadier median than a few long ones.
//!
//! Load comes from `wrk` (loopback; `BENCH_WRK_THREADS`, default 1: one load thread drives
//! well over the rates measured here and takes less of the two cores from the processes
//! under test). Prints requests/s, p50/p99, the ratio to the baseline
//! (target >= 80%), the CPU time per request of the gateway, the broker and wrk, and the
//! gateway's RSS idle and under load; fails if a request answered 2xx is not in the topic.
//!
//! With `BENCH_PREVIOUS_GATEWAY_BIN` (a build of an earlier commit), a third gateway process
//! runs that build with the default runtime, and each round also measures it (durable,
//! unsigned and GitHub-signed), next to the current build in alternating order: the bench
//! prints the current build's rate as a share of the previous build's (the cost of a
//! change, e.g. the listener hardening: target >= 97%).
//!
//! A third gateway runs the same durable endpoint with a typical 3-line VRL transform
//! (`[[transforms]]`); each round measures it right before or right after the plain durable
//! gateway (alternating), and the bench prints its rate as a share of the plain one's and the
//! gateway CPU per request it adds (target: at most 10% fewer requests/s).
//!
//! Last, a hostile phase sends Stripe and Standard Webhooks requests with 100,000 empty
//! signature candidates (and with the most allowed candidates) and a 1 MiB body to the
//! current build and asserts at most 50 ms of gateway CPU per request.
//!
//! The broker is the development broker, in process, or with `BENCH_BROKER=real` the real
//! Danube broker (`DANUBE_BROKER_BIN`, standalone, its defaults) as a process; the output names
//! it. Against the real broker the stored count is the broker's own
//! `danube_topic_messages_in_total`.
//!
//! Run: `cargo bench -p danube-connector-http-source` (knobs: `BENCH_SECONDS`,
//! `BENCH_ROUNDS`, `BENCH_CONNECTIONS`, `BENCH_PRODUCERS`, `BENCH_GATEWAY_WORKERS`,
//! `BENCH_WRK_THREADS`, `BENCH_GATEWAY_BIN` to load another build of the gateway, and
//! `BENCH_PREVIOUS_GATEWAY_BIN` to compare with an earlier build).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use danube_connect_testkit::procfs::{cpu_seconds, load_average, status_kib};

/// The real broker's process id when the bench runs against it (its CPU time is counted with
/// this process's, where the dev broker's already is).
static BROKER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// CPU seconds of this process (the dev broker runs in it) plus those of the real broker
/// process, and those of this process's reaped children (wrk).
fn bench_cpu_seconds() -> (f64, f64) {
    let (own, children) = cpu_seconds("self");
    let broker = BROKER_PID.get().map_or(0.0, |pid| cpu_seconds(pid).0);
    (own + broker, children)
}

const PAYLOAD: &str = r#"{"event":"push","repository":"danube-connect","n":12345}"#;

/// The typical 3-line transform the transform phase runs (`[[transforms]]`, see
/// docs/transforms.md): filter, rename a field, set an attribute from the payload.
const TRANSFORMS: &str = r#"[{name="bench", source="if .event == \"test\" { abort }\n.repo = del(.repository)\n%attributes.event = to_string(.event) ?? \"unknown\""}]"#;

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

/// The GitHub webhook secret of the benchmark's signed endpoint.
const GITHUB_SECRET: &str = "bench-github-secret";

/// `X-Hub-Signature-256` of [`PAYLOAD`] under [`GITHUB_SECRET`] (GitHub signs only the body,
/// so one fixed signature serves every request).
fn github_signature() -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(GITHUB_SECRET.as_bytes()).expect("any key length");
    mac.update(PAYLOAD.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Runs wrk against `url` with POST bodies and parses its report; a `/github` URL gets the
/// body's GitHub signature header.
fn wrk(url: &str, threads: u64, connections: u64, seconds: u64) -> Load {
    let wrk = ["/usr/bin/wrk", "/usr/local/bin/wrk"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("wrk is not installed: apt-get install -y wrk");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{PAYLOAD}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n{}",
            if url.ends_with("/github") {
                format!("wrk.headers[\"X-Hub-Signature-256\"] = \"{}\"\n", github_signature())
            } else {
                String::new()
            }
        ),
    )
    .expect("write lua");
    let output = Command::new(wrk)
        .args([&format!("-t{threads}"), &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "-s"])
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

/// [`raw_publish`] on its own multi-threaded runtime and thread (`workers` worker threads,
/// tokio's default when `None`).
async fn raw_publish_apart(url: String, producers: u64, seconds: u64, attributes: bool, workers: Option<usize>) -> Raw {
    let (cpu_before, _) = bench_cpu_seconds();
    let (rate, p50, p99) = tokio::task::spawn_blocking(move || {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(workers) = workers {
            builder.worker_threads(workers);
        }
        let runtime = builder.enable_all().build().expect("runtime");
        runtime.block_on(raw_publish(&url, producers, seconds, attributes))
    })
    .await
    .expect("raw publish thread");
    let (cpu_after, _) = bench_cpu_seconds();
    let cpu_us = 1e6 * (cpu_after - cpu_before) / (rate * seconds as f64).max(1.0);
    Raw { rate, p50, p99, cpu_us }
}

/// A raw publish phase: rate, latencies and CPU per message of this process (the broker
/// and the client together).
struct Raw {
    rate: f64,
    p50: Duration,
    p99: Duration,
    cpu_us: f64,
}

/// A bare axum server answering 200 to every POST, on its own runtime of `workers` worker
/// threads (as few as the leaner gateway, so its CPU per request is not overstated).
fn bare_axum(workers: usize) -> u16 {
    let port = free_port();
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let app = axum::Router::new().fallback(|_body: axum::body::Bytes| async { "ok" });
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    port
}

/// A gateway process in durable mode on its own topic, kept running across the rounds.
struct Gateway {
    connector: ConnectorProcess,
    url: String,
    port: u16,
    topic: String,
    idle_rss_kib: u64,
    peak_rss_kib: Arc<std::sync::atomic::AtomicU64>,
    sampling: Arc<AtomicBool>,
}

impl Gateway {
    /// Starts the gateway on `topic` with `workers` runtime worker threads (the runtime's
    /// default when `None`) and waits until it answers; `binary` is another build (else
    /// `BENCH_GATEWAY_BIN` or this one).
    async fn start(
        broker: &TestBroker,
        topic: &str,
        workers: Option<usize>,
        producers: u64,
        binary: Option<std::path::PathBuf>,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let mut env = HashMap::new();
        env.insert("DANUBE_SERVICE_URL".to_string(), broker.url());
        env.insert("CONNECTOR_NAME".to_string(), "http-bench".to_string());
        env.insert("CONNECTOR_SOURCE__PRODUCERS_PER_TOPIC".to_string(), producers.to_string());
        env.insert("CONNECTOR_LOG__LEVEL".to_string(), "warn".to_string());
        if let Some(workers) = workers {
            env.insert("CONNECTOR_RUNTIME__WORKER_THREADS".to_string(), workers.to_string());
        }
        env.insert("HTTP_SOURCE_LISTEN".to_string(), format!("127.0.0.1:{port}"));
        env.insert(
            "HTTP_SOURCE_ENDPOINTS".to_string(),
            format!(
                "[{{path=\"/bench\", topic=\"{topic}\"}}, \
                 {{path=\"/github\", topic=\"{topic}-github\", verification={{scheme=\"github\", secrets=[\"{GITHUB_SECRET}\"]}}}}, \
                 {{path=\"/stripe\", topic=\"{topic}-stripe\", verification={{scheme=\"stripe\", secrets=[\"bench-stripe-one\", \"bench-stripe-two\"]}}}}, \
                 {{path=\"/standard\", topic=\"{topic}-standard\", verification={{scheme=\"standard_webhooks\", secrets=[\"whsec_YmVuY2gtc3RhbmRhcmQta2V5LW9uZQ==\", \"whsec_YmVuY2gtc3RhbmRhcmQta2V5LXR3bw==\"]}}}}]"
            ),
        );
        env.insert("HTTP_SOURCE_MAX_CONCURRENT_REQUESTS".to_string(), "4096".to_string());
        for (key, value) in extra_env {
            env.insert(key.to_string(), value.to_string());
        }
        let binary = binary.unwrap_or_else(|| {
            std::env::var_os("BENCH_GATEWAY_BIN")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_danube-http-source").into())
        });
        let mut connector = ConnectorProcess::spawn(&binary, &env).expect("spawn connector");
        connector.wait_ready(Duration::from_secs(30)).await.expect("connector ready");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "webhook port never opened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = connector.pid().expect("pid");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_rss_kib = status_kib(pid, "VmRSS:");
        let peak_rss_kib = Arc::new(std::sync::atomic::AtomicU64::new(idle_rss_kib));
        let sampling = Arc::new(AtomicBool::new(true));
        {
            let (peak, sampling) = (peak_rss_kib.clone(), sampling.clone());
            std::thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        }
        Self {
            connector,
            url: format!("http://127.0.0.1:{port}/bench"),
            port,
            topic: topic.to_string(),
            idle_rss_kib,
            peak_rss_kib,
            sampling,
        }
    }

    /// One wrk phase against the gateway, with the CPU time per request of each process.
    async fn load(&self, threads: u64, connections: u64, seconds: u64) -> (Load, Cpu) {
        wrk_phase(self.url.clone(), self.connector.pid(), threads, connections, seconds).await
    }

    /// Like [`load`](Self::load), GitHub-signed requests to the verified endpoint.
    async fn load_signed(&self, threads: u64, connections: u64, seconds: u64) -> (Load, Cpu) {
        let url = format!("http://127.0.0.1:{}/github", self.port);
        wrk_phase(url, self.connector.pid(), threads, connections, seconds).await
    }

    /// Stops the gateway (SIGTERM, drain) and returns the records its topic holds.
    async fn stop(mut self, broker: &TestBroker) -> usize {
        self.sampling.store(false, Ordering::Relaxed);
        let _ = self.connector.terminate(Duration::from_secs(20)).await;
        match broker {
            TestBroker::Dev(dev) => dev.message_count(&self.topic),
            TestBroker::Real(real) => real
                .metric_sum("danube_topic_messages_in_total", &[("topic", &self.topic)])
                .await
                .expect("broker metrics") as usize,
        }
    }
}

/// CPU time per request of each process in a wrk phase, in microseconds.
struct Cpu {
    /// The gateway process (0 without one).
    gateway_us: f64,
    /// This process: the broker, and in a bare phase the bare server too.
    bench_us: f64,
    /// wrk.
    wrk_us: f64,
}

/// One wrk phase against `url`, with the CPU time per request of the process `server_pid`
/// (when the server is a process of its own), of this process and of wrk.
async fn wrk_phase(url: String, server_pid: Option<u32>, threads: u64, connections: u64, seconds: u64) -> (Load, Cpu) {
    let server = |pid: Option<u32>| pid.map_or(0.0, |pid| cpu_seconds(pid).0);
    let server_before = server(server_pid);
    let (bench_before, wrk_before) = bench_cpu_seconds();
    let load = tokio::task::spawn_blocking(move || wrk(&url, threads, connections, seconds)).await.expect("wrk");
    let server_after = server(server_pid);
    let (bench_after, wrk_after) = bench_cpu_seconds();
    let per = |seconds: f64| 1e6 * seconds / (load.requests as f64).max(1.0);
    let cpu = Cpu {
        gateway_us: per(server_after - server_before),
        bench_us: per(bench_after - bench_before),
        wrk_us: per(wrk_after - wrk_before),
    };
    (load, cpu)
}

/// Sends one request to the transformed gateway and checks that the record in its topic is
/// the transform's output (the bench measures the transform, not a gateway that skips it).
async fn check_transformed(broker: &TestBroker, gateway: &Gateway) {
    let reader = danube_connect_testkit::danube::TopicReader::subscribe(broker.url(), &gateway.topic, "bench-check")
        .await
        .expect("reader");
    let answer = reqwest::Client::new().post(&gateway.url).body(PAYLOAD).send().await.expect("send");
    assert!(answer.status().is_success(), "transformed gateway answered {}", answer.status());
    let got = reader.wait_for(1, Duration::from_secs(10)).await;
    let message = got.first().expect("the transformed record arrived");
    let value: serde_json::Value = serde_json::from_slice(&message.payload).expect("json");
    assert_eq!(value, serde_json::json!({"event": "push", "repo": "danube-connect", "n": 12345}));
    assert_eq!(message.attributes.get("event").map(String::as_str), Some("push"));
}

/// What one round measured, all phases back to back.
struct Round {
    raw: Raw,
    raw_fewer: Raw,
    durable: (Load, Cpu),
    durable_fewer: (Load, Cpu),
    bare: Bare,
    /// With a previous build: (current unsigned, previous unsigned, current signed,
    /// previous signed) rates.
    versus: Option<[f64; 4]>,
    /// The gateway with the 3-line transform, default runtime.
    vrl: (Load, Cpu),
}

/// A bare axum phase: what the HTTP stack and the load generator cost with nothing behind
/// them.
struct Bare {
    load: Load,
    /// CPU time per request of the bare server (this process) and wrk together, in µs.
    http_us: f64,
}

impl Bare {
    /// One wrk phase against the bare server at `url` (it runs in this process).
    async fn measure(url: &str, threads: u64, connections: u64, seconds: u64) -> Self {
        let (load, cpu) = wrk_phase(url.to_string(), None, threads, connections, seconds).await;
        Self { load, http_us: cpu.bench_us + cpu.wrk_us }
    }
}

/// The most a durable gateway can reach against `raw` when the two cores are saturated: its
/// requests cost at least a raw publish plus the bare HTTP stack and load generator
/// (`http_us`), even if its handler and hand-offs cost nothing.
fn ceiling(raw: &Raw, http_us: f64) -> f64 {
    raw.cpu_us / (raw.cpu_us + http_us)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn main() {
    let seconds = env_or("BENCH_SECONDS", 3);
    let rounds = env_or("BENCH_ROUNDS", 8).max(1);
    let wrk_threads = env_or("BENCH_WRK_THREADS", 1).max(1);
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let producers = env_or("BENCH_PRODUCERS", 4);
    let workers = env_or("BENCH_GATEWAY_WORKERS", 1) as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let kind = match std::env::var("BENCH_BROKER").as_deref() {
            Ok("real") => BrokerKind::Real,
            Ok("dev") | Err(_) => BrokerKind::Dev,
            Ok(other) => panic!("BENCH_BROKER={other}: expected dev or real"),
        };
        let broker = TestBroker::start(kind).await.expect("broker");
        if let TestBroker::Real(real) = &broker {
            BROKER_PID.set(real.pid().expect("broker pid")).expect("set once");
        }
        let load_before = load_average();
        let default = Gateway::start(&broker, "/default/bench", None, producers, None, &[]).await;
        let fewer = Gateway::start(&broker, "/default/bench-workers", Some(workers), producers, None, &[]).await;
        let transformed =
            Gateway::start(&broker, "/default/bench-vrl", None, producers, None, &[("CONNECTOR_TRANSFORMS", TRANSFORMS)])
                .await;
        check_transformed(&broker, &transformed).await;
        let previous = match std::env::var_os("BENCH_PREVIOUS_GATEWAY_BIN") {
            Some(binary) => {
                Some(Gateway::start(&broker, "/default/bench-previous", None, producers, Some(binary.into()), &[]).await)
            }
            None => None,
        };
        let bare_port = bare_axum(workers);
        let bare_url = format!("http://127.0.0.1:{bare_port}/bench");

        // Raw publish through danube-client runs on a runtime of its own (as the connector
        // is a process of its own), so the clients do not share the broker's.
        let plain = raw_publish_apart(broker.url(), producers, seconds, false, None).await;
        // Rounds: each phase once per round, back to back, so a change of machine load
        // between phases weighs on all of them; ratios are taken within a round.
        let mut measured = Vec::new();
        for round in 0..rounds {
            let raw = raw_publish_apart(broker.url(), producers, seconds, true, None).await;
            // The previous build right before or after the current one, alternating.
            let versus_before = match (&previous, round % 2) {
                (Some(previous), 1) => Some(previous.load(wrk_threads, connections, seconds).await.0.requests_per_sec),
                _ => None,
            };
            // The transformed gateway right before or after the plain one, alternating.
            let vrl_before = if round % 2 == 1 {
                Some(transformed.load(wrk_threads, connections, seconds).await)
            } else {
                None
            };
            let durable = default.load(wrk_threads, connections, seconds).await;
            let vrl = match vrl_before {
                Some(vrl) => vrl,
                None => transformed.load(wrk_threads, connections, seconds).await,
            };
            let versus_after = match (&previous, round % 2) {
                (Some(previous), 0) => Some(previous.load(wrk_threads, connections, seconds).await.0.requests_per_sec),
                _ => None,
            };
            let versus = match (&previous, versus_before.or(versus_after)) {
                (Some(previous), Some(previous_rate)) => {
                    let (current_signed, previous_signed) = if round % 2 == 0 {
                        let current = default.load_signed(wrk_threads, connections, seconds).await.0;
                        (current, previous.load_signed(wrk_threads, connections, seconds).await.0)
                    } else {
                        let previous = previous.load_signed(wrk_threads, connections, seconds).await.0;
                        (default.load_signed(wrk_threads, connections, seconds).await.0, previous)
                    };
                    assert_eq!(current_signed.errors, 0, "signed requests refused by the current build");
                    assert_eq!(previous_signed.errors, 0, "signed requests refused by the previous build");
                    Some([
                        durable.0.requests_per_sec,
                        previous_rate,
                        current_signed.requests_per_sec,
                        previous_signed.requests_per_sec,
                    ])
                }
                _ => None,
            };
            let durable_fewer = fewer.load(wrk_threads, connections, seconds).await;
            let raw_fewer = raw_publish_apart(broker.url(), producers, seconds, true, Some(workers)).await;
            let bare = Bare::measure(&bare_url, wrk_threads, connections, seconds).await;
            measured.push(Round { raw, raw_fewer, durable, durable_fewer, bare, versus, vrl });
        }
        let load_after = load_average();
        let hostile = hostile_phase(&default).await;

        if let Some(previous) = previous {
            let _ = previous.stop(&broker).await;
        }
        let gateways =
            [("default runtime", default), ("runtime with fewer workers", fewer), ("with a 3-line transform", transformed)];
        let mut summary = Vec::new();
        for (what, gateway) in gateways {
            let (idle, peak) = (gateway.idle_rss_kib, gateway.peak_rss_kib.load(Ordering::Relaxed));
            let stored = gateway.stop(&broker).await;
            summary.push((what, idle, peak, stored));
        }

        let one = if workers == 1 { "1 worker".to_string() } else { format!("{workers} workers") };
        println!(
            "\nhttp-source throughput on the {kind} ({connections} wrk connections on {wrk_threads} wrk thread(s), {producers} producers, {rounds} rounds of {seconds}s phases, loopback; load average before {load_before}, after {load_after})"
        );
        println!("{:<6} {:<46} {:>9} {:>10} {:>10}", "round", "", "req/s", "p50", "p99");
        let row = |round: &str, what: &str, rate: f64, p50: String, p99: String| {
            println!("{round:<6} {what:<46} {rate:>9.0} {p50:>10} {p99:>10}");
        };
        row("-", "raw publish, no attributes", plain.rate, format!("{:.2?}", plain.p50), format!("{:.2?}", plain.p99));
        let mut ratios = Vec::new();
        let mut ratios_fewer = Vec::new();
        let mut ceilings = Vec::new();
        for (i, r) in measured.iter().enumerate() {
            let round = (i + 1).to_string();
            let (durable, durable_cpu) = &r.durable;
            let (fewer_load, fewer_cpu) = &r.durable_fewer;
            row(&round, "raw publish, same attributes", r.raw.rate, format!("{:.2?}", r.raw.p50), format!("{:.2?}", r.raw.p99));
            row(&round, &format!("raw publish, same attributes, client {one}"), r.raw_fewer.rate, format!("{:.2?}", r.raw_fewer.p50), format!("{:.2?}", r.raw_fewer.p99));
            row(&round, "http-source durable, default runtime", durable.requests_per_sec, durable.p50.clone(), durable.p99.clone());
            row(&round, &format!("http-source durable, runtime {one}"), fewer_load.requests_per_sec, fewer_load.p50.clone(), fewer_load.p99.clone());
            row(&round, "bare axum 200 (HTTP limit)", r.bare.load.requests_per_sec, r.bare.load.p50.clone(), r.bare.load.p99.clone());
            let best_raw = if r.raw.rate >= r.raw_fewer.rate { &r.raw } else { &r.raw_fewer };
            let baseline = best_raw.rate.max(1.0);
            let most = ceiling(best_raw, r.bare.http_us);
            ceilings.push(most);
            ratios.push(durable.requests_per_sec / baseline);
            ratios_fewer.push(fewer_load.requests_per_sec / baseline);
            println!(
                "{round:<6} baseline (better raw) {baseline:.0}: durable default {:.0}%, durable {one} {:.0}%",
                100.0 * durable.requests_per_sec / baseline,
                100.0 * fewer_load.requests_per_sec / baseline
            );
            println!(
                "{round:<6} CPU µs per message: raw {:.0} / {:.0} (broker + client); durable default: gateway {:.0}, broker {:.0}, wrk {:.0}; durable {one}: gateway {:.0}, broker {:.0}, wrk {:.0}; bare HTTP + wrk {:.0}",
                r.raw.cpu_us, r.raw_fewer.cpu_us,
                durable_cpu.gateway_us, durable_cpu.bench_us, durable_cpu.wrk_us,
                fewer_cpu.gateway_us, fewer_cpu.bench_us, fewer_cpu.wrk_us,
                r.bare.http_us
            );
            println!(
                "{round:<6} ceiling with saturated cores: raw {:.0} µs / (raw + bare HTTP + wrk {:.0} µs) = {:.0}%",
                best_raw.cpu_us,
                best_raw.cpu_us + r.bare.http_us,
                100.0 * most
            );
        }
        let medians = |f: fn(&Round) -> f64| median(measured.iter().map(f).collect());
        println!(
            "medians: raw {:.0}, raw client {one} {:.0}, durable default {:.0}, durable {one} {:.0} req/s; gateway CPU per request: default {:.0} µs, {one} {:.0} µs",
            medians(|r| r.raw.rate),
            medians(|r| r.raw_fewer.rate),
            medians(|r| r.durable.0.requests_per_sec),
            medians(|r| r.durable_fewer.0.requests_per_sec),
            medians(|r| r.durable.1.gateway_us),
            medians(|r| r.durable_fewer.1.gateway_us)
        );
        println!(
            "median ratio durable / baseline (target >= 80%): default runtime {:.0}%, runtime {one} {:.0}%; median ceiling {:.0}% (a gateway whose handler cost nothing, cores saturated)",
            100.0 * median(ratios),
            100.0 * median(ratios_fewer),
            100.0 * median(ceilings)
        );
        for (i, r) in measured.iter().enumerate() {
            println!(
                "{:<6} 3-line transform: {:.0} req/s (p50 {}, p99 {}) vs {:.0} plain = {:.1}%; gateway CPU per request {:.1} µs vs {:.1} µs",
                i + 1,
                r.vrl.0.requests_per_sec,
                r.vrl.0.p50,
                r.vrl.0.p99,
                r.durable.0.requests_per_sec,
                100.0 * r.vrl.0.requests_per_sec / r.durable.0.requests_per_sec.max(1.0),
                r.vrl.1.gateway_us,
                r.durable.1.gateway_us
            );
        }
        println!(
            "median ratio with a 3-line transform / without (target >= 90%): {:.1}%; median {:.0} vs {:.0} req/s; transform cost: median gateway CPU {:+.1} µs per request",
            100.0 * median(measured.iter().map(|r| r.vrl.0.requests_per_sec / r.durable.0.requests_per_sec.max(1.0)).collect()),
            medians(|r| r.vrl.0.requests_per_sec),
            medians(|r| r.durable.0.requests_per_sec),
            median(measured.iter().map(|r| r.vrl.1.gateway_us - r.durable.1.gateway_us).collect())
        );
        let versus: Vec<[f64; 4]> = measured.iter().filter_map(|r| r.versus).collect();
        if !versus.is_empty() {
            for (i, [current, previous, current_signed, previous_signed]) in versus.iter().enumerate() {
                println!(
                    "{:<6} current vs previous build, default runtime: unsigned {current:.0} / {previous:.0} req/s = {:.1}%, github-signed {current_signed:.0} / {previous_signed:.0} req/s = {:.1}%",
                    i + 1,
                    100.0 * current / previous.max(1.0),
                    100.0 * current_signed / previous_signed.max(1.0)
                );
            }
            let ratio = |a: usize, b: usize| median(versus.iter().map(|v| v[a] / v[b].max(1.0)).collect());
            println!(
                "median ratio current / previous build (target >= 97%): unsigned durable {:.1}%, github-signed durable {:.1}%",
                100.0 * ratio(0, 1),
                100.0 * ratio(2, 3)
            );
        }
        println!(
            "hostile signature headers (100,000 empty candidates, the most allowed candidates; 1 MiB body): {} requests refused, gateway CPU {:.1} ms per request (target <= 50 ms)",
            hostile.0, hostile.1
        );
        assert!(hostile.1 <= 50.0, "{:.1} ms of gateway CPU per hostile request", hostile.1);
        for ((what, idle, peak, stored), answered) in summary.into_iter().zip([
            measured.iter().map(|r| r.durable.0.requests.saturating_sub(r.durable.0.errors)).sum::<u64>(),
            measured.iter().map(|r| r.durable_fewer.0.requests.saturating_sub(r.durable_fewer.0.errors)).sum::<u64>(),
            measured.iter().map(|r| r.vrl.0.requests.saturating_sub(r.vrl.0.errors)).sum::<u64>(),
        ]) {
            println!(
                "gateway, {what}: {answered} requests answered 2xx, {stored} records in the topic; RSS idle {} MiB, peak under load {} MiB",
                idle / 1024,
                peak / 1024
            );
            assert!(stored as u64 >= answered, "{what}: {answered} requests answered 2xx but only {stored} records stored");
        }
    });
}

/// Sends hostile signature headers with a 1 MiB body to `gateway`: Stripe and Standard
/// Webhooks with 100,000 empty candidates, and with the most candidates allowed (8
/// well-formed wrong ones, so the body is read and each secret's MAC computed). Returns the
/// requests sent (all refused with 400/401) and the gateway's CPU per request in ms.
async fn hostile_phase(gateway: &Gateway) -> (u32, f64) {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pid = gateway.connector.pid().expect("pid");
    let body = vec![b'x'; 1 << 20];
    let mut requests = 0u32;
    let before = cpu_seconds(pid).0;
    for _ in 0..10 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let standard = |signatures: String| {
            format!("webhook-id: msg_hostile\r\nwebhook-timestamp: {now}\r\nwebhook-signature: {signatures}\r\n")
        };
        let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let heads = [
            ("/stripe", format!("Stripe-Signature: t={now}{}\r\n", ",v1=".repeat(100_000))),
            ("/standard", standard("v1, ".repeat(100_000))),
            ("/stripe", format!("Stripe-Signature: t={now}{}\r\n", format!(",v1={}", "ab".repeat(32)).repeat(8))),
            ("/standard", standard(format!("v1,{wrong} ").repeat(8))),
        ];
        for (path, signature) in heads {
            let head =
                format!("POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n{signature}\r\n", body.len());
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", gateway.port)).await.expect("connect");
            let (mut read, mut write) = stream.into_split();
            let body = body.clone();
            let writer = tokio::spawn(async move {
                let _ = write.write_all(head.as_bytes()).await;
                let _ = write.write_all(&body).await;
                write
            });
            let mut answer = vec![0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(30), read.read(&mut answer))
                .await
                .expect("answered within 30 s")
                .unwrap_or(0);
            let text = String::from_utf8_lossy(&answer[..n]);
            assert!(text.starts_with("HTTP/1.1 401") || text.starts_with("HTTP/1.1 400"), "{path}: {text}");
            let _ = writer.await;
            requests += 1;
        }
    }
    let cpu_ms = 1e3 * (cpu_seconds(pid).0 - before) / f64::from(requests);
    (requests, cpu_ms)
}
