//! Hostile input against the real binary over loopback (issue 17): signature headers with
//! 100,000 bogus candidates, slowloris heads, idle keep-alive connections, more connections
//! than the cap, the same on the ops port, HTTP/2, the admin API's own listener, its
//! throttled failures and bodies never read before authentication, and the byte-bounded
//! `accepted` buffer.
//!
//! CPU bounds here are cost bounds, read from `/proc` (user + system time of the connector
//! process): a debug build is checked against a looser bound than the 50 ms of server CPU
//! per request required of a release build (`cargo test --release` applies 50 ms, and the
//! bench checks 50 ms against the release binary).

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use danube_connect_testkit::procfs::cpu_seconds;
use danube_dev_broker::EmbeddedBroker;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{client, now_secs, settle_messages, spawn, spawn_in};

const CONFIG: &str = r#"
[[connector.endpoints]]
path = "/plain"
topic = "/default/hard-plain"

[[connector.endpoints]]
path = "/stripe"
topic = "/default/hard-stripe"
verification = { scheme = "stripe", secrets = ["stripe-secret-one", "stripe-secret-two"] }

[[connector.endpoints]]
path = "/standard"
topic = "/default/hard-standard"
verification = { scheme = "standard_webhooks", secrets = ["whsec_c3RhbmRhcmQta2V5LW9uZQ==", "whsec_c3RhbmRhcmQta2V5LXR3bw=="] }

[[connector.endpoints]]
path = "/dedup"
topic = "/default/hard-dedup"
dedup = { id_header = "X-Delivery-Id" }

[[connector.endpoints]]
path = "/buffered"
topic = "/default/hard-buffered"
ack = "accepted"
max_body_bytes = 1024
"#;

/// Server CPU allowed per hostile request: the 50 ms requirement in a release build; a
/// debug build (unoptimized hashing and parsing; about 10 ms measured) gets 100 ms, still
/// far below the minutes the unbounded schemes took.
fn cpu_bound_per_request() -> Duration {
    if cfg!(debug_assertions) {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(50)
    }
}

/// Reads one HTTP/1.1 response head from `stream`; `None` when the connection closed first.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return (!buffer.is_empty()).then(|| String::from_utf8_lossy(&buffer).into_owned());
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&buffer).into_owned());
        }
    }
}

/// Sends `head` and `body` on a new connection (the body from a task of its own, as the
/// server may answer before reading it) and returns the response head.
async fn raw_request(port: u16, head: String, body: Vec<u8>) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&body).await;
        write
    });
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            if buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(answer.is_ok(), "no answer within 30 s");
    let _ = writer.await;
    String::from_utf8_lossy(&buffer).into_owned()
}

/// Hostile requests: (path, signature header lines) with 100,000 empty candidates, with as
/// many non-empty candidates as fit in the server's header buffer, and with the most
/// candidates allowed.
fn hostile_heads() -> Vec<(&'static str, String)> {
    let now = now_secs();
    let empty_stripe = format!("Stripe-Signature: t={now}{}\r\n", ",v1=".repeat(100_000));
    let full_stripe = format!("Stripe-Signature: t={now}{}\r\n", ",v1=00".repeat(60_000));
    let standard = |signatures: String| {
        format!("webhook-id: msg_hostile\r\nwebhook-timestamp: {now}\r\nwebhook-signature: {signatures}\r\n")
    };
    let empty_standard = standard("v1, ".repeat(100_000));
    let full_standard = standard("v1,AA== ".repeat(45_000));
    // The most a sender can make the server do: 8 well-formed wrong signatures, so the
    // body is read and each secret's MAC computed (once) and compared with all 8.
    let most_stripe = format!("Stripe-Signature: t={now}{}\r\n", format!(",v1={}", "ab".repeat(32)).repeat(8));
    let most_standard = standard(format!("v1,{} ", STANDARD.encode([7u8; 32])).repeat(8));
    vec![
        ("/stripe", empty_stripe),
        ("/standard", empty_standard),
        ("/stripe", full_stripe),
        ("/standard", full_standard),
        ("/stripe", most_stripe),
        ("/standard", most_standard),
    ]
}

#[tokio::test]
async fn signature_headers_with_100000_bogus_candidates_and_a_1_mib_body_are_refused_cheaply() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let connector = spawn(&broker, CONFIG, &[]).await;
    let pid = connector.process.pid().expect("pid");
    let body = vec![b'x'; 1 << 20];
    let rounds = 4;
    let before = cpu_seconds(pid).0;
    let mut requests = 0u32;
    for _ in 0..rounds {
        for (path, signature) in hostile_heads() {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{signature}\r\n",
                body.len()
            );
            let answer = raw_request(connector.port, head, body.clone()).await;
            assert!(
                answer.starts_with("HTTP/1.1 401") || answer.starts_with("HTTP/1.1 400"),
                "{path}: {}",
                &answer[..answer.len().min(200)]
            );
            requests += 1;
        }
    }
    let used = Duration::from_secs_f64(cpu_seconds(pid).0 - before);
    let per_request = used / requests;
    eprintln!("hostile signature headers: {requests} requests, {used:?} server CPU, {per_request:?} per request");
    assert!(
        per_request <= cpu_bound_per_request(),
        "{per_request:?} of server CPU per hostile request (bound {:?})",
        cpu_bound_per_request()
    );
    assert!(settle_messages(&broker, "/default/hard-stripe").await.is_empty());
    assert!(broker.messages("/default/hard-standard").is_empty());

    // While hostile requests run in parallel, /healthz keeps answering and a real request
    // is published.
    let port = connector.port;
    let attackers: Vec<_> = (0..4)
        .map(|i| {
            let (path, signature) = hostile_heads().swap_remove(i);
            let body = body.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    let head =
                        format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n{signature}\r\n", body.len());
                    raw_request(port, head, body.clone()).await;
                }
            })
        })
        .collect();
    let health = format!("http://127.0.0.1:{}/healthz", connector.process.ops_port);
    let http = client();
    for _ in 0..10 {
        let answer = tokio::time::timeout(Duration::from_secs(5), http.get(&health).send()).await;
        assert!(answer.is_ok_and(|r| r.is_ok_and(|r| r.status().is_success())), "/healthz answered under attack");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let real = http.post(format!("{}/plain", connector.base)).body("real").send().await.expect("send");
    assert_eq!(real.status(), StatusCode::OK);
    for attacker in attackers {
        attacker.await.expect("attacker");
    }
    assert_eq!(settle_messages(&broker, "/default/hard-plain").await.len(), 1);
}

#[tokio::test]
async fn a_partial_request_head_is_closed_at_the_header_read_timeout() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env =
        [("HTTP_SOURCE_CONNECTIONS__HEADER_READ_TIMEOUT", "1s"), ("HTTP_SOURCE_CONNECTIONS__IDLE_TIMEOUT", "500ms")];
    let mut connector = spawn(&broker, CONFIG, &env).await;
    let mut stream = TcpStream::connect(("127.0.0.1", connector.port)).await.expect("connect");
    let started = Instant::now();
    stream.write_all(b"POST /plain HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    // Trickle header lines (slowloris): bytes keep coming, the head never completes.
    let closed = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break started.elapsed();
        }
        let mut probe = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(10), stream.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => break started.elapsed(), // a 408 answer, then the close
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(10), "a slowloris head was still open after 10 s");
    };
    assert!(closed >= Duration::from_millis(900), "closed after {closed:?}, before the 1 s header timeout");
    assert!(closed < Duration::from_secs(4), "closed after {closed:?}");
    // The process stays healthy.
    assert!(connector.process.try_wait().is_none());
    let ok = client().post(format!("{}/plain", connector.base)).body("after").send().await.expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_at_the_idle_timeout() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env =
        [("HTTP_SOURCE_CONNECTIONS__HEADER_READ_TIMEOUT", "10s"), ("HTTP_SOURCE_CONNECTIONS__IDLE_TIMEOUT", "1s")];
    let connector = spawn(&broker, CONFIG, &env).await;
    let mut stream = TcpStream::connect(("127.0.0.1", connector.port)).await.expect("connect");
    let request = b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nidle";
    // Two requests 600 ms apart on one connection: activity keeps it open.
    for _ in 0..2 {
        stream.write_all(request).await.expect("write");
        let head = read_head(&mut stream).await.expect("answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let last_answer = Instant::now() - Duration::from_millis(600);
    // The body of the last answer is still unread; read until the server closes.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut rest)).await;
    let closed = last_answer.elapsed();
    assert!(read.is_ok(), "an idle keep-alive connection was still open after 8 s");
    assert!(closed >= Duration::from_millis(900), "closed {closed:?} after the last answer");
    assert!(closed < Duration::from_secs(3), "closed {closed:?} after the last answer (idle timeout 1 s)");
    assert_eq!(settle_messages(&broker, "/default/hard-plain").await.len(), 2);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_and_the_process_stays_healthy() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = [
        ("HTTP_SOURCE_CONNECTIONS__MAX", "4"),
        ("HTTP_SOURCE_CONNECTIONS__HEADER_READ_TIMEOUT", "30s"),
        ("HTTP_SOURCE_CONNECTIONS__IDLE_TIMEOUT", "30s"),
    ];
    let mut connector = spawn(&broker, CONFIG, &env).await;
    // Four connections hold every slot with heads that never complete.
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(("127.0.0.1", connector.port)).await.expect("connect");
        stream.write_all(b"POST /plain HTTP/1.1\r\nHost: x\r\n").await.expect("write");
        holders.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Many more connect (the kernel queues them) and send a full request: none is served.
    let mut waiting = Vec::new();
    for i in 0..50 {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", connector.port)).await else { continue };
        let body = format!("queued-{i}");
        let request = format!(
            "POST /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(request.as_bytes()).await.is_ok() {
            waiting.push(stream);
        }
    }
    assert!(!waiting.is_empty());
    let mut probe = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(700), waiting[0].read(&mut probe)).await;
    assert!(early.is_err(), "a connection beyond the cap was served while 4 slots were held");
    // The ops port is a listener of its own: health checks keep answering.
    let health = client().get(format!("http://127.0.0.1:{}/healthz", connector.process.ops_port)).send().await;
    assert!(health.is_ok_and(|r| r.status().is_success()));
    assert!(connector.process.try_wait().is_none(), "the process is alive");
    // Freeing the slots serves the queued connections, in turn (each closes after its answer).
    drop(holders);
    let mut served = 0;
    for stream in waiting.iter_mut().take(8) {
        let head =
            tokio::time::timeout(Duration::from_secs(10), read_head(stream)).await.expect("served").expect("head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        served += 1;
    }
    assert_eq!(served, 8.min(waiting.len()));
    drop(waiting);
    let ok = client().post(format!("{}/plain", connector.base)).body("after").send().await.expect("send");
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_ops_port_closes_a_partial_head_at_its_header_read_timeout() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = [
        ("CONNECTOR_OPS__CONNECTIONS__HEADER_READ_TIMEOUT", "1s"),
        ("CONNECTOR_OPS__CONNECTIONS__IDLE_TIMEOUT", "1s"),
        ("CONNECTOR_OPS__CONNECTIONS__MAX", "8"),
    ];
    let connector = spawn(&broker, CONFIG, &env).await;
    let ops = connector.process.ops_port;
    let mut stream = TcpStream::connect(("127.0.0.1", ops)).await.expect("connect");
    let started = Instant::now();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut rest)).await;
    let closed = started.elapsed();
    assert!(read.is_ok(), "a partial head on the ops port was still open after 8 s");
    assert!(closed >= Duration::from_millis(900) && closed < Duration::from_secs(4), "closed after {closed:?}");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"), "the partial request was not served");
    // Idle connections beyond the ops cap wait; once they time out, the port answers again.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(("127.0.0.1", ops)).await.expect("connect"));
    }
    let health = client().get(format!("http://127.0.0.1:{ops}/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), StatusCode::OK, "answered once the idle connections were closed");
}

#[tokio::test]
async fn the_webhook_listener_speaks_http_1_only() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let connector = spawn(&broker, CONFIG, &[]).await;
    let mut stream = TcpStream::connect(("127.0.0.1", connector.port)).await.expect("connect");
    // HTTP/2 prior knowledge: the preface, then an empty SETTINGS frame.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was closed");
    let is_h2_settings = answer.len() >= 9 && answer[3] == 0x04;
    assert!(!is_h2_settings, "the server answered with an HTTP/2 SETTINGS frame");
    assert!(answer.is_empty() || answer.starts_with(b"HTTP/1.1 "), "{:?}", String::from_utf8_lossy(&answer));
    let ok = client().post(format!("{}/plain", connector.base)).body("h1").send().await.expect("send");
    assert_eq!(ok.version(), reqwest::Version::HTTP_11);
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn long_delivery_ids_are_refused_and_the_accepted_buffer_is_bounded_by_bytes() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = [("HTTP_SOURCE_ACCEPTED_BUFFER_BYTES", "3000"), ("HTTP_SOURCE_MAX_BODY_BYTES", "1024")];
    let connector = spawn(&broker, CONFIG, &env).await;
    let http = client();
    let dedup = format!("{}/dedup", connector.base);
    let long = http.post(&dedup).header("X-Delivery-Id", "i".repeat(257)).body("x").send().await.expect("send");
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    assert!(long.text().await.expect("body").contains("delivery id longer than 256 bytes"));
    let fine = http.post(&dedup).header("X-Delivery-Id", "i".repeat(256)).body("x").send().await.expect("send");
    assert_eq!(fine.status(), StatusCode::OK);

    // Danube refuses sends: records stay in the buffer, whose 3000 bytes hold two of these.
    broker.fail_next_sends(1_000_000);
    let url = format!("{}/buffered", connector.base);
    for i in 0..2 {
        let response = http.post(&url).body(vec![b'a' + i; 1000]).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let full = http.post(&url).body(vec![b'z'; 1000]).send().await.expect("send");
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(full.headers().get("retry-after").is_some());
    assert!(full.text().await.expect("body").contains("buffer full (bytes)"));
    let small = http.post(&url).body("small").send().await.expect("send");
    assert_eq!(small.status(), StatusCode::ACCEPTED, "a small record still fits");
    broker.fail_next_sends(0);
    let stored = broker.wait_for_messages("/default/hard-buffered", 3, Duration::from_secs(40)).await;
    assert_eq!(stored.len(), 3);
}

const ADMIN_TOKEN: &str = "admin-token-0123456789";

#[tokio::test]
async fn the_admin_api_on_its_own_listener_authenticates_before_reading_and_hides_endpoint_ids() {
    use std::os::unix::fs::PermissionsExt;
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry.jsonl");
    let admin_port = danube_connect_testkit::ports::free_port();
    let config = format!(
        r#"
admin = {{ token = "{ADMIN_TOKEN}", listen = "127.0.0.1:{admin_port}" }}
dynamic = {{ registry_path = "{}", refresh_interval = "200ms" }}
"#,
        registry.display()
    );
    let connector = spawn_in(&broker, &config, &[], tempfile::tempdir().expect("tempdir")).await;
    let http = client();
    let admin = format!("http://127.0.0.1:{admin_port}/admin/endpoints");
    // Not on the public listener.
    let public = http.get(format!("{}/admin/endpoints", connector.base)).bearer_auth(ADMIN_TOKEN).send().await;
    assert_eq!(public.expect("send").status(), StatusCode::NOT_FOUND);

    // A wrong token with a huge declared body is answered 401 without the body being sent.
    let mut stream = TcpStream::connect(("127.0.0.1", admin_port)).await.expect("connect");
    let head = "POST /admin/endpoints HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-000000\r\nContent-Length: 104857600\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream)).await.expect("answered");
    assert!(answer.expect("head").starts_with("HTTP/1.1 401"));
    // An authorized body beyond the admin limit is refused.
    let big = http.post(&admin).bearer_auth(ADMIN_TOKEN).body(vec![b' '; 100 * 1024]).send().await.expect("send");
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let created = http
        .post(&admin)
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"topic": "/default/hard-dynamic"}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: serde_json::Value = created.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let alias = created["alias"].as_str().expect("alias").to_string();
    assert!(alias.starts_with("dyn-") && !alias.contains(&id));
    let mode = std::fs::metadata(&registry).expect("registry").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "registry mode {mode:o}");

    let posted = http.post(format!("{}/e/{id}", connector.base)).body("dyn").send().await.expect("send");
    assert_eq!(posted.status(), StatusCode::OK);
    let stored = settle_messages(&broker, "/default/hard-dynamic").await;
    assert_eq!(stored.len(), 1);
    for (name, value) in &stored[0].attributes {
        assert!(!value.contains(&id), "attribute {name} holds the endpoint id: {value}");
    }
    assert_eq!(stored[0].attributes.get("http.endpoint"), Some(&alias));
    assert_eq!(stored[0].attributes.get("http.path"), Some(&format!("/e/{alias}")));

    // Failed authentications are throttled: a burst of wrong tokens ends in 429.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(http.get(&admin).bearer_auth("wrong-token-000000").send().await.expect("send").status());
    }
    assert!(statuses.contains(&StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    // The right token is never throttled.
    assert_eq!(http.get(&admin).bearer_auth(ADMIN_TOKEN).send().await.expect("send").status(), StatusCode::OK);

    let log = connector.process.log();
    assert!(log.contains("admin authentication failed"), "failed authentications are logged");
    assert!(!log.contains(&id), "the endpoint id is in the log");
}
