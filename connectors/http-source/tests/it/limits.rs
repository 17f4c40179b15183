//! Status codes for requests the gateway refuses: 404, 405 (+Allow), 413, 429
//! (+Retry-After, counted only for verified requests), 503 when concurrency is exhausted,
//! 408 for a body that never comes, 502 for a record Danube refuses.

use std::time::Duration;

use danube_dev_broker::{BrokerConfig, EmbeddedBroker};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{client, settle_messages, spawn};

const CONFIG: &str = r#"
[[connector.endpoints]]
id = "small"
path = "/small"
topic = "/default/small"
methods = ["POST", "PUT"]
max_body_bytes = 64

[[connector.endpoints]]
id = "limited"
path = "/limited"
topic = "/default/limited"
rate_limit = { per_second = 1, burst = 2 }

[[connector.endpoints]]
id = "guarded"
path = "/guarded"
topic = "/default/guarded"
verification = { scheme = "token", secrets = ["guard-token"] }
rate_limit = { per_second = 1, burst = 2 }

[[connector.endpoints]]
id = "big"
path = "/big"
topic = "/default/big"
max_body_bytes = 8192
"#;

#[tokio::test]
async fn unknown_paths_get_404_and_wrong_methods_405_with_allow() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let connector = spawn(&broker, CONFIG, &[]).await;
    let http = client();
    for path in ["/nope", "/small/extra", "/e/not-an-endpoint", "/admin/endpoints"] {
        let response = http.post(format!("{}{path}", connector.base)).body("x").send().await.expect("send");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    for method in [reqwest::Method::GET, reqwest::Method::DELETE, reqwest::Method::PATCH] {
        let response = http.request(method.clone(), format!("{}/small", connector.base)).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST, PUT"));
    }
    let put = http.put(format!("{}/limited", connector.base)).body("x").send().await.expect("send");
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED, "PUT on a POST-only endpoint");
    assert_eq!(put.headers().get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    assert!(settle_messages(&broker, "/default/limited").await.is_empty());
    assert!(settle_messages(&broker, "/default/small").await.is_empty());
}

#[tokio::test]
async fn oversized_bodies_get_413_with_or_without_content_length() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let connector = spawn(&broker, CONFIG, &[]).await;
    let http = client();
    let url = format!("{}/small", connector.base);
    assert_eq!(http.post(&url).body(vec![b'a'; 64]).send().await.expect("send").status(), StatusCode::OK);
    assert_eq!(
        http.post(&url).body(vec![b'a'; 65]).send().await.expect("send").status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Chunked: no Content-Length, the limit applies while reading.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", connector.port)).await.expect("connect");
    let mut request = b"POST /small HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        request.extend_from_slice(b"10\r\nbbbbbbbbbbbbbbbb\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    raw.write_all(&request).await.expect("write");
    let mut answer = vec![0u8; 1024];
    let n = raw.read(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let messages = settle_messages(&broker, "/default/small").await;
    assert_eq!(messages.len(), 1, "only the body within the limit was published");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let connector = spawn(&broker, CONFIG, &[]).await;
    let http = client();
    let url = format!("{}/limited", connector.base);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let response = http.post(&url).body("x").send().await.expect("send");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        }
        statuses.push(response.status());
    }
    assert_eq!(&statuses[..2], &[StatusCode::OK, StatusCode::OK], "burst of 2 allowed");
    assert!(statuses[2..].contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    let seconds: u64 = retry_after.expect("Retry-After on 429").parse().expect("whole seconds");
    assert!((1..=2).contains(&seconds), "{seconds}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(http.post(&url).body("x").send().await.expect("send").status(), StatusCode::OK, "bucket refilled");
}

#[tokio::test]
async fn exhausted_concurrency_gets_503_and_a_stalled_body_gets_408() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = [("HTTP_SOURCE_MAX_CONCURRENT_REQUESTS", "1"), ("HTTP_SOURCE_REQUEST_TIMEOUT", "2s")];
    let connector = spawn(&broker, CONFIG, &env).await;
    // A client that sends the headers and part of the body, then stalls.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", connector.port)).await.expect("connect");
    stalled.write_all(b"POST /small HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc").await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = client().post(format!("{}/small", connector.base)).body("x").send().await.expect("send");
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(busy.headers().get("retry-after").is_some());
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut answer))
        .await
        .expect("answer within the request timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let after = client().post(format!("{}/small", connector.base)).body("y").send().await.expect("send");
    assert_eq!(after.status(), StatusCode::OK, "the permit was released");
    assert_eq!(settle_messages(&broker, "/default/small").await.len(), 1);
}

#[tokio::test]
async fn full_accepted_buffer_gets_503_with_retry_after() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let config = r#"
[[connector.endpoints]]
path = "/buffered"
topic = "/default/buffered-full"
ack = "accepted"
"#;
    let connector = spawn(&broker, config, &[("HTTP_SOURCE_ACCEPTED_BUFFER", "3")]).await;
    let http = client();
    let url = format!("{}/buffered", connector.base);
    // Danube keeps refusing sends: accepted records stay in the buffer.
    broker.fail_next_sends(1_000_000);
    for i in 0..3 {
        let response = http.post(&url).body(format!("r{i}")).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{}", connector.process.log());
    }
    let full = http.post(&url).body("r3").send().await.expect("send");
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(full.headers().get("retry-after").is_some());
    assert!(full.text().await.expect("body").contains("buffer full"));

    broker.fail_next_sends(0);
    let stored = broker.wait_for_messages("/default/buffered-full", 3, Duration::from_secs(40)).await;
    let mut payloads: Vec<&[u8]> = stored.iter().map(|m| m.payload.as_ref()).collect();
    payloads.sort();
    assert_eq!(payloads, vec![b"r0".as_ref(), b"r1", b"r2"], "the refused request was not published");
    // Published records free their slots (once Danube's ack reached the gateway, a moment
    // after the broker stored them).
    let started = std::time::Instant::now();
    loop {
        let again = http.post(&url).body("r4").send().await.expect("send");
        if again.status() == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < Duration::from_secs(10), "the slots were not freed after the publish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn requests_failing_verification_do_not_spend_rate_tokens() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let connector = spawn(&broker, CONFIG, &[]).await;
    let http = client();
    let url = format!("{}/guarded", connector.base);
    for i in 0..5 {
        let response = http.post(&url).body("forged").send().await.expect("send");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "unauthenticated request {i}");
    }
    for i in 0..2 {
        let response = http.post(&url).bearer_auth("guard-token").body(format!("real-{i}")).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::OK, "the sender's burst is intact (request {i})");
    }
    let messages = settle_messages(&broker, "/default/guarded").await;
    assert_eq!(messages.iter().map(|m| m.payload.as_ref()).collect::<Vec<_>>(), vec![b"real-0".as_ref(), b"real-1"]);
}

#[tokio::test]
async fn a_record_danube_refuses_gets_502_with_failure_policy_nack() {
    // The broker refuses payloads above 1 KiB for good (`InvalidArgument` → Rejected).
    let config = BrokerConfig { max_message_size: 1024, ..BrokerConfig::default() };
    let broker = EmbeddedBroker::start(config).await.expect("broker");
    let connector = spawn(&broker, CONFIG, &[("CONNECTOR_FAILURE__POLICY", "nack")]).await;
    let http = client();
    let url = format!("{}/big", connector.base);
    let refused = http.post(&url).body(vec![b'z'; 4096]).send().await.expect("send");
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY, "{}", connector.process.log());
    assert!(refused.headers().get("retry-after").is_none(), "not a transient failure");
    assert!(refused.text().await.expect("body").contains("/default/big"));
    assert_eq!(http.post(&url).body("small").send().await.expect("send").status(), StatusCode::OK);
    let messages = settle_messages(&broker, "/default/big").await;
    assert_eq!(messages.iter().map(|m| m.payload.as_ref()).collect::<Vec<_>>(), vec![b"small".as_ref()]);
}
