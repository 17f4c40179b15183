//! The HTTP sink against real HTTP receivers on loopback and the embedded Danube broker:
//! what is delivered, retried, deferred, dead-lettered, signed, batched and ordered.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use common::{by_message_id, config, eventually, publish_n, start_sink, Received, Receiver, Reply};
use danube_connect_core::config::ConnectorConfig;
use danube_connect_core::Secret;
use danube_connector_http_sink::config::{AuthConfig, BatchFormat, BodyMode, HmacAlgorithm, HmacConfig, HmacEncoding};
use danube_connector_http_sink::HttpSinkConfig;
use danube_dev_broker::EmbeddedBroker;
use hmac::{Hmac, Mac};
use sha2::Sha256;

async fn broker() -> EmbeddedBroker {
    EmbeddedBroker::start_default().await.expect("broker starts")
}

fn attempt(r: &Received) -> u32 {
    r.header("danube-delivery-attempt").and_then(|a| a.parse().ok()).expect("attempt header")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_delivered_with_its_payload_headers_and_message_id_then_acked() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let topic = "/default/plain";
    let mut cfg = config("plain", &broker, topic, &receiver.url("/hook"));
    cfg.connector.headers.insert("x-team".into(), danube_connect_core::Secret::new("data"));
    cfg.connector.auth = Some(AuthConfig::Bearer { token: Secret::new("tok-1") });
    let sink = start_sink(&broker, cfg).await;

    let mut offsets = Vec::new();
    for i in 0..20 {
        let attrs = HashMap::from([("content-type".to_string(), "text/plain".to_string())]);
        offsets.push(broker.publish(topic, format!("r{i}").into_bytes(), attrs, None));
    }
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "plain") == 20).await);
    let got = receiver.requests();
    assert_eq!(got.len(), 20, "one request per record, no retries");
    let bodies: HashSet<String> = got.iter().map(Received::text).collect();
    assert_eq!(bodies, (0..20).map(|i| format!("r{i}")).collect());
    let ids: HashSet<String> = got.iter().map(|r| r.header("danube-message-id").expect("id").to_string()).collect();
    assert_eq!(ids, offsets.iter().map(|o| format!("{topic}:{o}")).collect());
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("x-team"), Some("data"));
        assert_eq!(r.header("authorization"), Some("Bearer tok-1"));
        assert_eq!(attempt(r), 1);
    }
    assert_eq!(broker.unacked_count(topic, "plain"), 0);
    assert_eq!(sink.stop().await.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_statuses_are_retried_until_success_with_a_stable_message_id() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    // Per message: 503, then 500, then 200.
    receiver.respond(|req, before| {
        let id = req.header("danube-message-id");
        match before.iter().filter(|r| r.header("danube-message-id") == id).count() {
            0 => Reply::Status(503),
            1 => Reply::Status(500),
            _ => Reply::Status(200),
        }
    });
    let topic = "/default/retry";
    let sink = start_sink(&broker, config("retry", &broker, topic, &receiver.url("/"))).await;
    let offsets = publish_n(&broker, topic, "r", 3);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "retry") == 3).await);
    let per_id = by_message_id(&receiver.requests());
    assert_eq!(per_id.len(), 3);
    for offset in offsets {
        let tries = &per_id[&format!("{topic}:{offset}")];
        assert_eq!(tries.iter().map(attempt).collect::<Vec<_>>(), vec![1, 2, 3], "attempts count up, id stays");
        assert_eq!(tries.iter().map(|r| r.status).collect::<Vec<_>>(), vec![Some(503), Some(500), Some(200)]);
        assert!(tries.iter().all(|r| r.body == tries[0].body));
    }
    assert!(broker.messages("/default/dlq-retry").is_empty());
    sink.stop().await;
}

/// The gap between the first and second request of the single record delivered.
async fn retry_after_gap(name: &str, retry_after: impl Fn() -> String + Send + Sync + 'static) -> Duration {
    retry_after_gap_with(name, retry_after, |_| {}).await
}

/// [`retry_after_gap`] with the config changed by `tweak`.
async fn retry_after_gap_with(
    name: &str,
    retry_after: impl Fn() -> String + Send + Sync + 'static,
    tweak: impl FnOnce(&mut ConnectorConfig<HttpSinkConfig>),
) -> Duration {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    receiver.respond(move |_, before| {
        if before.is_empty() {
            Reply::Full(429, vec![("retry-after".into(), retry_after())], "slow down".into())
        } else {
            Reply::Status(200)
        }
    });
    let topic = format!("/default/{name}");
    let mut cfg = config(name, &broker, &topic, &receiver.url("/"));
    tweak(&mut cfg);
    let sink = start_sink(&broker, cfg).await;
    publish_n(&broker, &topic, "r", 1);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(&topic, name) == 1).await);
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("danube-message-id"), got[1].header("danube-message-id"));
    sink.stop().await;
    got[1].at - got[0].at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_is_waited_before_the_next_attempt() {
    let gap = retry_after_gap("ra-seconds", || "2".into()).await;
    assert!(gap >= Duration::from_millis(1950) && gap < Duration::from_secs(6), "{gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_as_http_date_is_waited_before_the_next_attempt() {
    // HTTP-dates have whole seconds: 3 s ahead is at least 2 s away.
    let gap = retry_after_gap("ra-date", || httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3))).await;
    assert!(gap >= Duration::from_millis(1950) && gap < Duration::from_secs(7), "{gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_hands_the_record_back_to_the_broker_instead_of_sleeping() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    receiver.respond(|_, before| {
        if before.is_empty() {
            Reply::Full(503, vec![("retry-after".into(), "3".into())], String::new())
        } else {
            Reply::Status(200)
        }
    });
    let topic = "/default/defer";
    let mut cfg = config("defer", &broker, topic, &receiver.url("/"));
    cfg.connector.retry_after.defer_threshold = Duration::from_secs(1);
    let sink = start_sink(&broker, cfg).await;
    publish_n(&broker, topic, "r", 1);
    // Handed back: unacked, not dead-lettered, while the hint runs.
    assert!(eventually(Duration::from_secs(5), || !receiver.requests().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broker.ack_count(topic, "defer"), 0);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "defer") == 1).await);
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(2900),
        "redelivered after the hint: {:?}",
        got[1].at - got[0].at
    );
    assert_eq!(attempt(&got[1]), 2, "the attempt count survives the redelivery");
    assert_eq!(got[0].header("danube-message-id"), got[1].header("danube-message-id"));
    assert!(broker.messages("/default/dlq-defer").is_empty());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_client_error_is_dead_lettered_at_once_with_the_error() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    receiver.respond(|req, _| {
        if req.text() == "bad" {
            Reply::Full(422, vec![], r#"{"error":"unprocessable order"}"#.into())
        } else {
            Reply::Status(204)
        }
    });
    let topic = "/default/perm";
    let sink = start_sink(&broker, config("perm", &broker, topic, &receiver.url("/orders"))).await;
    broker.publish(topic, b"good-1".to_vec(), HashMap::new(), None);
    let attrs = HashMap::from([("origin".to_string(), "test".to_string())]);
    let bad = broker.publish(topic, b"bad".to_vec(), attrs, Some("k1".into()));
    broker.publish(topic, b"good-2".to_vec(), HashMap::new(), None);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "perm") == 3).await);
    let dead = broker.wait_for_messages("/default/dlq-perm", 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.payload.as_ref(), b"bad");
    let attr = |k: &str| d.attributes.get(k).cloned().unwrap_or_default();
    assert!(
        attr("dlq.error").contains("422") && attr("dlq.error").contains("unprocessable order"),
        "{}",
        attr("dlq.error")
    );
    assert!(
        attr("dlq.error").contains("127.0.0.1") && !attr("dlq.error").contains("/orders"),
        "path redacted: {}",
        attr("dlq.error")
    );
    assert_eq!(attr("dlq.error_kind"), "invalid");
    assert_eq!(attr("dlq.source_topic"), topic);
    assert_eq!(attr("dlq.source_offset"), bad.to_string());
    assert_eq!(attr("dlq.attempts"), "1");
    assert_eq!(attr("origin"), "test");
    assert_eq!(d.routing_key.as_deref(), Some("k1"));
    assert_eq!(receiver.requests().iter().filter(|r| r.text() == "bad").count(), 1, "not retried");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_cut_by_record_count_as_json_arrays() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let topic = "/default/batch-size";
    let mut cfg = config("bsize", &broker, topic, &receiver.url("/batch"));
    cfg.connector.body.mode = BodyMode::Batch;
    cfg.runtime.sink.batch.max_records = 5;
    cfg.runtime.sink.batch.linger = Duration::from_secs(30);
    let sink = start_sink(&broker, cfg).await;
    publish_n(&broker, topic, "n", 20);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "bsize") == 20).await);
    let got = receiver.requests();
    assert_eq!(got.len(), 4, "four requests of five");
    let mut ids = HashSet::new();
    for r in &got {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("danube-message-id").is_some_and(|id| id.starts_with("batch_")));
        let items: Vec<serde_json::Value> = serde_json::from_slice(&r.body).expect("a JSON array");
        assert_eq!(items.len(), 5);
        for item in items {
            assert_eq!(item["topic"], topic);
            ids.insert(item["id"].as_str().expect("id").to_string());
        }
    }
    assert_eq!(ids.len(), 20);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_cut_by_bytes() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let topic = "/default/batch-bytes";
    let mut cfg = config("bbytes", &broker, topic, &receiver.url("/batch"));
    cfg.connector.body.mode = BodyMode::Batch;
    cfg.connector.body.batch_item = danube_connector_http_sink::config::BatchItem::Payload;
    cfg.runtime.sink.batch.max_records = 100;
    cfg.runtime.sink.batch.max_bytes = 250;
    cfg.runtime.sink.batch.linger = Duration::from_secs(30);
    let sink = start_sink(&broker, cfg).await;
    // 100-byte payloads: the third record of a batch passes 250 bytes and cuts it.
    for i in 0..9 {
        broker.publish(topic, format!("{i:0>100}").into_bytes(), HashMap::new(), None);
    }
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "bbytes") == 9).await);
    let sizes: Vec<usize> = receiver
        .requests()
        .iter()
        .map(|r| serde_json::from_slice::<Vec<String>>(&r.body).expect("array of strings").len())
        .collect();
    assert_eq!(sizes, vec![3, 3, 3], "cut by max_bytes long before max_records or linger");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_flushes_partial_batches_as_ndjson() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let topic = "/default/batch-linger";
    let mut cfg = config("blinger", &broker, topic, &receiver.url("/nd"));
    cfg.connector.body.mode = BodyMode::Batch;
    cfg.connector.body.batch_format = BatchFormat::Ndjson;
    cfg.runtime.sink.batch.max_records = 100;
    cfg.runtime.sink.batch.linger = Duration::from_millis(300);
    let sink = start_sink(&broker, cfg).await;
    publish_n(&broker, topic, "line-", 25);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "blinger") == 25).await);
    let got = receiver.requests();
    let mut payloads = HashSet::new();
    let mut sizes = Vec::new();
    for r in &got {
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        let lines: Vec<serde_json::Value> = r
            .body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("a JSON line"))
            .collect();
        sizes.push(lines.len());
        payloads.extend(lines.iter().map(|l| l["payload"].as_str().expect("payload").to_string()));
    }
    assert_eq!(payloads.len(), 25);
    assert!(sizes.iter().all(|s| *s <= 10), "the dispatch window of 10 bounds each batch: {sizes:?}");
    assert!(sizes.iter().any(|s| *s > 1), "linger gathered several records: {sizes:?}");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_with_several_requests_in_flight() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    // Varying latency, and a retry now and then, to tempt reordering.
    receiver.respond(|req, before| {
        let text = req.text();
        let n: u64 = text.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let seen = before.iter().any(|r| r.body == req.body);
        if n % 7 == 3 && !seen {
            Reply::Status(503)
        } else {
            Reply::Delay(Duration::from_millis((n * 13) % 20), 200)
        }
    });
    let topic = "/default/ordered";
    let mut cfg = config("ordered", &broker, topic, &receiver.url("/"));
    cfg.runtime.sink.concurrency = 4;
    cfg.runtime.sink.ordering = danube_connect_core::config::Ordering::Key;
    cfg.connector.circuit_breaker.enabled = false;
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(topic, "ordered", 200);
    let sink = start_sink(&broker, cfg).await;
    let keys = ["a", "b", "c", "d", "e", "f"];
    for i in 0..20 {
        for key in keys {
            broker.publish(topic, format!("{key}-{i}").into_bytes(), HashMap::new(), Some(key.to_string()));
        }
    }
    assert!(eventually(Duration::from_secs(30), || broker.ack_count(topic, "ordered") == 120).await);
    let delivered = receiver.delivered();
    for key in keys {
        let seq: Vec<u64> = delivered
            .iter()
            .filter(|r| r.text().starts_with(&format!("{key}-")))
            .filter_map(|r| r.text().rsplit('-').next().and_then(|n| n.parse().ok()))
            .collect();
        assert_eq!(seq, (0..20).collect::<Vec<u64>>(), "key {key} delivered in order");
    }
    assert!(receiver.max_in_flight() >= 2, "requests overlapped: {}", receiver.max_in_flight());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_concurrent_requests_over_all_lanes() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    receiver.respond(|_, _| Reply::Delay(Duration::from_millis(100), 200));
    let topic = "/default/inflight";
    let mut cfg = config("inflight", &broker, topic, &receiver.url("/"));
    cfg.runtime.sink.concurrency = 8;
    cfg.runtime.sink.ordering = danube_connect_core::config::Ordering::None;
    cfg.connector.max_in_flight = 3;
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(topic, "inflight", 100);
    let sink = start_sink(&broker, cfg).await;
    publish_n(&broker, topic, "r", 30);
    assert!(eventually(Duration::from_secs(30), || broker.ack_count(topic, "inflight") == 30).await);
    assert_eq!(receiver.max_in_flight(), 3, "8 lanes, at most 3 requests at a time");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_after_consecutive_failures_and_recovers_without_dead_lettering() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let healthy = receiver.fail_until_healthy(Reply::Status(503));
    let topic = "/default/breaker";
    let mut cfg = config("breaker", &broker, topic, &receiver.url("/"));
    cfg.runtime.retry.max_attempts = 10;
    cfg.connector.circuit_breaker.failure_threshold = 3;
    cfg.connector.circuit_breaker.cool_down = Duration::from_secs(1);
    let sink = start_sink(&broker, cfg).await;
    publish_n(&broker, topic, "r", 5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during_outage = receiver.requests().len();
    // Without the breaker, 10 attempts 50-200 ms apart per record: dozens of requests.
    // With it: 3 failures, then about one probe per cool-down.
    assert!((3..=9).contains(&during_outage), "requests while open: {during_outage}");
    assert_eq!(broker.ack_count(topic, "breaker"), 0);
    assert!(broker.messages("/default/dlq-breaker").is_empty(), "an open circuit does not dead-letter");
    healthy.store(true, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(30), || broker.ack_count(topic, "breaker") == 5).await);
    assert_eq!(by_message_id(&receiver.delivered()).len(), 5);
    assert!(broker.messages("/default/dlq-breaker").is_empty());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_and_hmac_signatures_verify_independently() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let key: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key));
    let topic = "/default/signed";
    let mut cfg = config("signed", &broker, topic, &receiver.url("/signed"));
    cfg.connector.body.mode = BodyMode::Envelope;
    cfg.connector.signing.webhook_secret = Some(Secret::new(secret));
    cfg.connector.hmac = Some(HmacConfig {
        header: "x-signature".into(),
        secret: Secret::new("hmac-key"),
        algorithm: HmacAlgorithm::Sha256,
        encoding: HmacEncoding::Hex,
        prefix: "sha256=".into(),
    });
    let sink = start_sink(&broker, cfg).await;
    for i in 0..5 {
        broker.publish(topic, format!("{{\"order\":{i}}}").into_bytes(), HashMap::new(), None);
    }
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "signed") == 5).await);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs();
    for r in receiver.requests() {
        let id = r.header("webhook-id").expect("webhook-id");
        let ts = r.header("webhook-timestamp").expect("webhook-timestamp");
        assert_eq!(Some(id), r.header("danube-message-id"));
        assert!(now.abs_diff(ts.parse::<u64>().expect("unix seconds")) < 60);
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&r.body);
        let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
        let signatures: Vec<&str> = r.header("webhook-signature").expect("signature").split(' ').collect();
        assert!(signatures.contains(&expected.as_str()), "{signatures:?} vs {expected}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"hmac-key").expect("key");
        mac.update(&r.body);
        assert_eq!(
            r.header("x-signature"),
            Some(format!("sha256={}", hex::encode(mac.finalize().into_bytes()))).as_deref()
        );
        let envelope: serde_json::Value = serde_json::from_slice(&r.body).expect("envelope");
        assert_eq!(envelope["id"], id);
        assert!(envelope["payload"]["order"].is_number());
    }
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_for_a_while_then_back_loses_nothing() {
    let broker = broker().await;
    let mut receiver = Receiver::start().await;
    let topic = "/default/outage";
    let mut cfg = config("outage", &broker, topic, &receiver.url("/"));
    cfg.connector.circuit_breaker.failure_threshold = 3;
    let sink = start_sink(&broker, cfg).await;
    let first = publish_n(&broker, topic, "before-", 10);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "outage") == 10).await);
    // Every connection closed: from here no request can be answered, so no record can be acked.
    receiver.stop_and_wait().await;
    let mut offsets = first;
    for i in 0..20 {
        offsets.push(broker.publish(topic, format!("during-{i}").into_bytes(), HashMap::new(), None));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(broker.ack_count(topic, "outage"), 10, "nothing acked while the receiver is down");
    receiver.restart();
    offsets.extend(publish_n(&broker, topic, "after-", 10));
    assert!(
        eventually(Duration::from_secs(40), || broker.ack_count(topic, "outage") == 40).await,
        "acked {}",
        broker.ack_count(topic, "outage")
    );
    let delivered = by_message_id(&receiver.delivered());
    let missing: Vec<&u64> = offsets.iter().filter(|o| !delivered.contains_key(&format!("{topic}:{o}"))).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let duplicates: usize = delivered.values().map(|v| v.len() - 1).sum();
    println!("outage: 40 records delivered, {duplicates} duplicate deliveries");
    // The receiver went away with no request in flight (all 10 were acked first), and a
    // record is only sent again after a failure: nothing was delivered twice.
    assert_eq!(duplicates, 0, "duplicate deliveries");
    assert!(broker.messages("/default/dlq-outage").is_empty());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_and_timeouts_are_retried() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    receiver.respond(|req, before| {
        let id = req.header("danube-message-id");
        match before.iter().filter(|r| r.header("danube-message-id") == id).count() {
            0 => Reply::Drop,
            1 => Reply::Delay(Duration::from_secs(3), 200),
            _ => Reply::Status(200),
        }
    });
    let topic = "/default/flaky";
    let mut cfg = config("flaky", &broker, topic, &receiver.url("/"));
    cfg.connector.timeout = Duration::from_millis(500);
    cfg.connector.circuit_breaker.enabled = false;
    let sink = start_sink(&broker, cfg).await;
    let offsets = publish_n(&broker, topic, "r", 3);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "flaky") == 3).await);
    let per_id = by_message_id(&receiver.requests());
    for offset in offsets {
        let tries = &per_id[&format!("{topic}:{offset}")];
        assert!(tries.len() >= 3, "dropped, timed out, then delivered: {}", tries.len());
        assert_eq!(attempt(tries.last().expect("last")), tries.len() as u32);
    }
    assert!(broker.messages("/default/dlq-flaky").is_empty());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_template_routes_by_attribute_and_a_record_without_it_is_dead_lettered() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let topic = "/default/routed";
    let mut cfg = config("routed", &broker, topic, &format!("{}/t/{{attr.tenant}}/{{topic_name}}", receiver.base()));
    cfg.connector.method = danube_connector_http_sink::config::HttpMethod::Put;
    let sink = start_sink(&broker, cfg).await;
    broker.publish(topic, b"1".to_vec(), HashMap::from([("tenant".into(), "acme".into())]), None);
    broker.publish(topic, b"2".to_vec(), HashMap::from([("tenant".into(), "big co".into())]), None);
    broker.publish(topic, b"3".to_vec(), HashMap::new(), None);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "routed") == 3).await);
    let paths: HashSet<(String, String)> =
        receiver.requests().iter().map(|r| (r.method.clone(), r.path.clone())).collect();
    assert_eq!(
        paths,
        HashSet::from([("PUT".into(), "/t/acme/routed".into()), ("PUT".into(), "/t/big%20co/routed".into())])
    );
    let dead = broker.wait_for_messages("/default/dlq-routed", 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].attributes.get("dlq.error").is_some_and(|e| e.contains("tenant")), "{:?}", dead[0].attributes);
    sink.stop().await;
}

/// The SSRF guard is on by default: records whose (templated) target is loopback, the
/// cloud metadata address or another internal one are dead-lettered with the reason, at
/// once (no retries), and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_guard_refuses_internal_targets_by_default() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let topic = "/default/ssrf";
    let mut cfg = config("ssrf", &broker, topic, &format!("http://{{attr.host}}:{}/x", receiver.port()));
    cfg.connector.allow_private_targets = false;
    // Retries would show as a delay: make them slow enough to notice.
    cfg.runtime.retry.initial_backoff = Duration::from_secs(2);
    cfg.runtime.retry.max_backoff = Duration::from_secs(2);
    let sink = start_sink(&broker, cfg).await;
    let started = std::time::Instant::now();
    // (Bracketed IPv6 literals cannot come from a placeholder: it is percent-encoded.)
    for host in ["127.0.0.1", "localhost", "169.254.169.254", "0.0.0.0", "127.1.2.3"] {
        broker.publish(topic, host.as_bytes().to_vec(), HashMap::from([("host".into(), host.into())]), None);
    }
    let dead = broker.wait_for_messages("/default/dlq-ssrf", 5, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 5);
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not retried: {:?}", started.elapsed());
    for d in &dead {
        let error = d.attributes.get("dlq.error").cloned().unwrap_or_default();
        assert!(error.contains("SSRF") && error.contains("allow_private_targets"), "the reason: {error}");
        assert_eq!(d.attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"), "{:?}", d.attributes);
    }
    let metadata = dead.iter().find(|d| &d.payload[..] == b"169.254.169.254").expect("metadata record");
    assert!(metadata.attributes["dlq.error"].contains("169.254.169.254"), "{:?}", metadata.attributes);
    assert!(eventually(Duration::from_secs(10), || broker.ack_count(topic, "ssrf") == 5).await, "acked after the DLQ");
    assert!(receiver.requests().is_empty(), "nothing reached the loopback receiver");
    sink.stop().await;
}

/// The opt-outs: `allow_private_targets` reaches the loopback receiver; an allow-list of
/// networks reaches it too while the metadata address stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_opt_outs_reach_internal_targets_they_name() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let topic = "/default/ssrf-open";
    let cfg = config("ssrf-open", &broker, topic, &format!("http://{{attr.host}}:{}/x", receiver.port()));
    assert!(cfg.connector.allow_private_targets);
    let sink = start_sink(&broker, cfg).await;
    broker.publish(topic, b"open".to_vec(), HashMap::from([("host".into(), "127.0.0.1".into())]), None);
    assert!(eventually(Duration::from_secs(20), || receiver.delivered().len() == 1).await);
    sink.stop().await;

    let topic = "/default/ssrf-listed";
    let mut cfg = config("ssrf-listed", &broker, topic, &format!("http://{{attr.host}}:{}/x", receiver.port()));
    cfg.connector.allow_private_targets = false;
    cfg.connector.allowed_target_networks = vec!["127.0.0.0/8".into()];
    let sink = start_sink(&broker, cfg).await;
    broker.publish(topic, b"listed".to_vec(), HashMap::from([("host".into(), "127.0.0.1".into())]), None);
    broker.publish(topic, b"meta".to_vec(), HashMap::from([("host".into(), "169.254.169.254".into())]), None);
    let dead = broker.wait_for_messages("/default/dlq-ssrf-listed", 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].payload[..], b"meta", "the metadata address is not in the list");
    assert!(eventually(Duration::from_secs(20), || receiver.delivered().len() == 2).await, "the listed one arrives");
    sink.stop().await;
}

/// Through a proxy the guard checks the target, not the proxy: the proxy (here the
/// receiver, answering proxied requests itself) is on loopback and not permitted, yet it is
/// used; a target the guard permits (listed) goes through it, refused targets never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_guard_checks_the_target_not_the_proxy() {
    let broker = broker().await;
    let proxy = Receiver::start().await;
    let topic = "/default/ssrf-proxy";
    let mut cfg = config("ssrf-proxy", &broker, topic, "http://{attr.host}:9/x");
    cfg.connector.allow_private_targets = false;
    cfg.connector.allowed_target_networks = vec!["127.0.0.2/32".into()];
    cfg.connector.proxy = Some(Secret::new(proxy.base()));
    let sink = start_sink(&broker, cfg).await;
    for host in ["127.0.0.3", "localhost", "127.0.0.2", "169.254.169.254"] {
        broker.publish(topic, host.as_bytes().to_vec(), HashMap::from([("host".into(), host.into())]), None);
    }
    let dead = broker.wait_for_messages("/default/dlq-ssrf-proxy", 3, Duration::from_secs(20)).await;
    let refused: HashSet<&[u8]> = dead.iter().map(|d| &d.payload[..]).collect();
    assert_eq!(refused, HashSet::from([&b"127.0.0.3"[..], b"localhost", b"169.254.169.254"]));
    assert!(eventually(Duration::from_secs(20), || proxy.delivered().len() == 1).await);
    let through = &proxy.delivered()[0];
    assert_eq!(through.header("host"), Some("127.0.0.2:9"), "the proxy got the permitted target's request");
    assert_eq!(through.text(), "127.0.0.2");
    assert_eq!(proxy.requests().len(), 1, "no refused target reached the proxy");
    sink.stop().await;
}

/// A static internal URL is refused when the configuration is checked (the field named);
/// with the opt-out it is accepted.
#[test]
fn static_internal_url_is_refused_at_start() {
    for url in ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest/meta-data/"] {
        let output = std::process::Command::new(BINARY)
            .arg("--check")
            .env("HTTP_SINK_URL", url)
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{url}: {stderr}");
        assert!(stderr.contains("connector.url") && stderr.contains("allow_private_targets"), "{stderr}");
    }
    let output = std::process::Command::new(BINARY)
        .arg("--check")
        .env("HTTP_SINK_URL", "http://127.0.0.1:9/hook")
        .env("HTTP_SINK_ALLOW_PRIVATE_TARGETS", "true")
        .env("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/hooks"}]"#)
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    acceptor: tokio_rustls::TlsAcceptor,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let server_key = KeyPair::generate().expect("key");
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let mut client = CertificateParams::new(vec!["client".to_string()]).expect("params");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).expect("client cert");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(dir.path().join("client.pem"), client_cert.pem()).expect("write");
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).expect("write");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("verifier");
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("server config");
    Pki { dir, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_ca_and_client_certificate_reach_a_mutual_tls_receiver() {
    let broker = broker().await;
    let pki = pki();
    let receiver = Receiver::start_with(Some(pki.acceptor.clone())).await;
    let topic = "/default/mtls";
    let mut cfg = config("mtls", &broker, topic, &receiver.url("/secure"));
    cfg.connector.tls.ca = Some(pki.dir.path().join("ca.pem"));
    cfg.connector.tls.client_cert = Some(pki.dir.path().join("client.pem"));
    cfg.connector.tls.client_key = Some(pki.dir.path().join("client.key"));
    let sink = start_sink(&broker, cfg).await;
    publish_n(&broker, topic, "tls-", 3);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "mtls") == 3).await);
    assert_eq!(receiver.delivered().len(), 3);
    sink.stop().await;

    // Without the client certificate the handshake fails: retried, never acked.
    let mut cfg = config("mtls-nocert", &broker, topic, &receiver.url("/secure"));
    cfg.connector.tls.ca = Some(pki.dir.path().join("ca.pem"));
    cfg.connector.circuit_breaker.failure_threshold = 2;
    let sink = start_sink(&broker, cfg).await;
    publish_n(&broker, topic, "nocert-", 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(broker.ack_count(topic, "mtls-nocert"), 0);
    assert_eq!(receiver.delivered().len(), 3);
    sink.stop().await;
}

/// The connector binary's environment: consume `topic` as `name`, post to `url`.
fn binary_env(broker: &EmbeddedBroker, name: &str, topic: &str, url: &str) -> HashMap<String, String> {
    [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", name.to_string()),
        ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
        ("HTTP_SINK_URL", url.to_string()),
        // The receivers listen on 127.0.0.1: opt out of the SSRF guard.
        ("HTTP_SINK_ALLOW_PRIVATE_TARGETS", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

const BINARY: &str = env!("CARGO_BIN_EXE_danube-http-sink");

/// Distinct message ids among `requests`.
fn unique_ids(requests: &[Received]) -> HashSet<String> {
    requests.iter().filter_map(|r| r.header("danube-message-id")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_records_survive_kill_9_and_every_record_reaches_the_receiver() {
    use danube_connect_testkit::process::ConnectorProcess;
    let broker = broker().await;
    let receiver = Receiver::start().await;
    receiver.respond(|_, _| Reply::Delay(Duration::from_millis(5), 200));
    let topic = "/default/killed";
    let name = "killed";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(topic, name, 100);
    let key: Vec<u8> = (0u8..24).collect();
    let mut env = binary_env(&broker, name, topic, &receiver.url("/k"));
    env.extend(
        [
            ("CONNECTOR_SINK__CONCURRENCY", "4".to_string()),
            ("CONNECTOR_SINK__ORDERING", "none".to_string()),
            ("HTTP_SINK_BODY__MODE", "envelope".to_string()),
            (
                "HTTP_SINK_SIGNING__WEBHOOK_SECRET",
                format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(&key)),
            ),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let binary = std::path::Path::new(BINARY);
    let mut process = ConnectorProcess::spawn(binary, &env).expect("spawn");
    process.wait_ready(Duration::from_secs(30)).await.expect("ready");
    assert!(broker.wait_for_consumers(topic, name, 1, Duration::from_secs(20)).await);

    let total = 400;
    let publisher = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..total {
                offsets.push(broker.publish(topic, format!("{{\"n\":{i}}}").into_bytes(), HashMap::new(), None));
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            offsets
        })
    };
    assert!(eventually(Duration::from_secs(20), || receiver.delivered().len() >= 100).await);
    process.kill9();
    let acked_at_kill = broker.ack_count(topic, name);
    let delivered_at_kill = unique_ids(&receiver.delivered()).len() as u64;
    assert!(acked_at_kill < total as u64, "killed under load");
    assert!(acked_at_kill <= delivered_at_kill, "nothing acked before the receiver had it");
    let offsets = publisher.await.expect("publisher");

    let mut process = ConnectorProcess::spawn(binary, &env).expect("respawn");
    process.wait_ready(Duration::from_secs(30)).await.expect("ready again");
    let ids = |r: &Receiver| by_message_id(&r.delivered());
    let all_there = |r: &Receiver| {
        let got = ids(r);
        offsets.iter().all(|o| got.contains_key(&format!("{topic}:{o}")))
    };
    assert!(eventually(Duration::from_secs(60), || all_there(&receiver)).await, "log: {}", process.log());
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, name) == total as u64).await);
    assert_eq!(broker.unacked_count(topic, name), 0);

    // Every delivery of one record carries the same idempotency key, signature id and body.
    let delivered = ids(&receiver);
    assert_eq!(delivered.len(), total);
    for (id, deliveries) in &delivered {
        for d in deliveries {
            assert_eq!(d.header("webhook-id"), Some(id.as_str()), "webhook-id is the message id");
            assert_eq!(d.body, deliveries[0].body, "the same body on redelivery of {id}");
            let envelope: serde_json::Value = serde_json::from_slice(&d.body).expect("envelope");
            assert_eq!(envelope["id"], id.as_str());
            let ts = d.header("webhook-timestamp").expect("timestamp");
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("key");
            mac.update(format!("{id}.{ts}.").as_bytes());
            mac.update(&d.body);
            let expected =
                format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
            assert_eq!(d.header("webhook-signature"), Some(expected.as_str()));
        }
    }
    // Duplicates only for records the receiver had but Danube had not acked at the kill.
    let duplicates: u64 = delivered.values().map(|v| v.len() as u64 - 1).sum();
    println!("kill -9: {acked_at_kill} acked / {delivered_at_kill} delivered at the kill, {duplicates} duplicate deliveries after restart");
    assert!(
        duplicates <= delivered_at_kill - acked_at_kill,
        "duplicates {duplicates} > delivered-but-unacked at the kill {}",
        delivered_at_kill - acked_at_kill
    );
    assert!(broker.messages("/default/dlq-killed").is_empty());
    let status = process.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
    assert!(status.success(), "clean exit after the drain: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_deliveries_acks_them_and_exits_0() {
    use danube_connect_testkit::process::ConnectorProcess;
    let broker = broker().await;
    let receiver = Receiver::start().await;
    // Slow receiver: SIGTERM arrives with requests in flight.
    receiver.respond(|_, _| Reply::Delay(Duration::from_millis(300), 200));
    let topic = "/default/drained";
    let name = "drained";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(topic, name, 50);
    let mut env = binary_env(&broker, name, topic, &receiver.url("/d"));
    env.insert("CONNECTOR_SINK__CONCURRENCY".into(), "8".into());
    env.insert("CONNECTOR_SINK__ORDERING".into(), "none".into());
    let binary = std::path::Path::new(BINARY);
    let mut process = ConnectorProcess::spawn(binary, &env).expect("spawn");
    process.wait_ready(Duration::from_secs(30)).await.expect("ready");
    assert!(broker.wait_for_consumers(topic, name, 1, Duration::from_secs(20)).await);
    let offsets = publish_n(&broker, topic, "d", 200);
    assert!(eventually(Duration::from_secs(20), || receiver.requests().len() >= 20).await);
    let status = process.terminate(Duration::from_secs(25)).await.expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "a completed drain exits 0: {}", process.log());
    let acked = broker.ack_count(topic, name);
    let delivered = unique_ids(&receiver.delivered());
    assert!(acked < 200, "stopped before the end: {acked}");
    // The drain finished every request it had started and acked it: nothing the receiver
    // answered 2xx is left for redelivery.
    assert_eq!(receiver.requests().len(), receiver.delivered().len(), "no request cut off");
    assert_eq!(acked, delivered.len() as u64, "every delivered record acked by the drain");

    // The rest arrives after a restart, with no duplicate of what was drained.
    let mut process = ConnectorProcess::spawn(binary, &env).expect("respawn");
    process.wait_ready(Duration::from_secs(30)).await.expect("ready again");
    assert!(eventually(Duration::from_secs(60), || broker.ack_count(topic, name) == 200).await, "{}", process.log());
    let per_id = by_message_id(&receiver.delivered());
    assert_eq!(per_id.len(), 200);
    assert!(offsets.iter().all(|o| per_id.contains_key(&format!("{topic}:{o}"))));
    assert!(per_id.values().all(|v| v.len() == 1), "no duplicates after a clean drain");
    let status = process.terminate(Duration::from_secs(20)).await.expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_config_exits_1_naming_the_field() {
    let run = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(BINARY);
        command.arg("--check");
        for (k, v) in env {
            command.env(k, v);
        }
        let output = command.output().expect("run the binary");
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("connector.url"), "{stderr}");
    let (code, stderr) = run(&[("HTTP_SINK_URL", "ftp://hooks.example.com/x")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("connector.url") && stderr.contains("ftp"), "{stderr}");
    let (code, stderr) =
        run(&[("HTTP_SINK_URL", "https://hooks.example.com/x"), ("HTTP_SINK_SIGNING__WEBHOOK_SECRET", "plain")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("connector.signing.webhook_secret") && stderr.contains("whsec_"), "{stderr}");
    let (code, stderr) = run(&[("HTTP_SINK_URL", "https://hooks.example.com/x"), ("HTTP_SINK_METHOD", "DELETE")]);
    assert_eq!(code, Some(1));
    // A serde-level error (figment) names the key, upper-cased in its own format.
    assert!(stderr.to_lowercase().contains("method") && stderr.contains("DELETE"), "{stderr}");
    let (code, stderr) = run(&[
        ("HTTP_SINK_URL", "https://hooks.example.com/x"),
        ("HTTP_SINK_OUTCOMES__RETRYABLE", "[\"503\", \"6xx\"]"),
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("connector.outcomes.retryable[1]"), "{stderr}");
    // A cross-section check: a sink with nothing to consume fails `--check` as it fails the start.
    let (code, stderr) = run(&[("HTTP_SINK_URL", "https://hooks.example.com/x")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("sink.topics") && stderr.contains("is empty"), "{stderr}");
}

#[test]
fn check_prints_the_config_with_secrets_redacted() {
    let output = std::process::Command::new(BINARY)
        .arg("--check")
        .env("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/hooks"}]"#)
        .env("HTTP_SINK_URL", "{env=\"HOOK_URL\"}")
        .env("HOOK_URL", "https://hooks.example.com/services/T0/B0/s3cr3tPath?token=s3cr3tQuery")
        .env("HTTP_SINK_AUTH", "{type=\"bearer\", token=\"tok-very-secret\"}")
        .env("HTTP_SINK_SIGNING__WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("HTTP_SINK_HEADERS", "{x-api-key=\"hdr-very-secret\", x-from-env={env=\"HDR_VALUE\"}}")
        .env("HDR_VALUE", "env-hdr-secret")
        .env("HTTP_SINK_PROXY", "http://user:proxy-secret@127.0.0.1:3128")
        .output()
        .expect("run the binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("x-api-key") && !stdout.contains("hdr-very-secret"), "{stdout}");
    assert!(!stdout.contains("env-hdr-secret") && !stdout.contains("proxy-secret"), "{stdout}");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("hooks.example.com"), "{stdout}");
    assert!(!stdout.contains("tok-very-secret") && !stdout.contains("MfKQ9r8G"), "{stdout}");
    assert!(!stdout.contains("s3cr3t") && stdout.contains("https://hooks.example.com/<redacted>"), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_mode_posts_the_decoded_value_and_dead_letters_what_does_not_decode() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let topic = "/default/json-body";
    let mut cfg = config("jsonbody", &broker, topic, &receiver.url("/json"));
    cfg.connector.body.mode = BodyMode::Json;
    let sink = start_sink(&broker, cfg).await;
    broker.publish(topic, br#"{ "order": 1, "items": [ "a" ] }"#.to_vec(), HashMap::new(), None);
    let bad = broker.publish(topic, b"<xml/>".to_vec(), HashMap::new(), None);
    broker.publish(topic, b"42".to_vec(), HashMap::new(), None);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "jsonbody") == 3).await);
    let got = receiver.requests();
    assert_eq!(got.len(), 2, "the bad record never reaches the receiver");
    let bodies: HashSet<String> = got.iter().map(Received::text).collect();
    assert_eq!(bodies, HashSet::from([r#"{"items":["a"],"order":1}"#.to_string(), "42".to_string()]));
    assert!(got.iter().all(|r| r.header("content-type") == Some("application/json")));
    let dead = broker.wait_for_messages("/default/dlq-jsonbody", 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attributes.get("dlq.source_offset"), Some(&bad.to_string()));
    assert!(dead[0].attributes.get("dlq.error").is_some_and(|e| e.contains("JSON")), "{:?}", dead[0].attributes);

    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_body_mode_posts_avro_records_decoded_by_their_registry_schema() {
    use danube_connect_common::schema::SchemaKind;
    use danube_connect_core::{Runtime, RuntimeConfig, SchemaBinding, SourceRecord};
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("order.avsc");
    std::fs::write(
        &schema,
        r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"amount","type":"double"}]}"#,
    )
    .expect("write schema");
    let topic = "/default/orders-avro";
    // A producer side that encodes JSON into Avro with the registered schema.
    let mut source = RuntimeConfig { name: "avro-src".into(), ..Default::default() };
    source.danube.service_url = broker.url();
    source.ops.enabled = false;
    source.schemas =
        vec![SchemaBinding::new(topic, "orders-avro").with_file(SchemaKind::Avro, schema).with_json_input()];
    let producer = Runtime::start(source, tokio_util::sync::CancellationToken::new()).await.expect("source runtime");
    let publisher = producer.publisher();
    let order = |i: usize| {
        SourceRecord::from_json(topic, &serde_json::json!({"id": format!("o{i}"), "amount": i as f64 + 0.5}))
            .expect("json")
    };
    publisher.publish(order(0)).await.expect("publish creates the topic");

    let mut cfg = config("avrohook", &broker, topic, &receiver.url("/orders"));
    cfg.connector.body.mode = BodyMode::Json;
    let sink = start_sink(&broker, cfg).await;
    for i in 1..=3 {
        publisher.publish(order(i)).await.expect("publish");
    }
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "avrohook") == 3).await);
    let stored = broker.messages(topic);
    assert!(stored.iter().all(|m| m.schema_id.is_some() && m.payload.first() != Some(&b'{')), "Avro on the wire");
    let mut bodies: Vec<serde_json::Value> =
        receiver.requests().iter().map(|r| serde_json::from_slice(&r.body).expect("JSON body")).collect();
    bodies.sort_by_key(|b| b["id"].as_str().unwrap_or_default().to_string());
    let expected: Vec<serde_json::Value> =
        (1..=3).map(|i| serde_json::json!({"id": format!("o{i}"), "amount": i as f64 + 0.5})).collect();
    assert_eq!(bodies, expected, "the receiver gets the decoded record as JSON");
    assert!(broker.messages("/default/dlq-avrohook").is_empty());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_batch_delivers_the_decodable_records_and_dead_letters_the_rest() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let topic = "/default/json-batch";
    let mut cfg = config("jsonbatch", &broker, topic, &receiver.url("/batch"));
    cfg.connector.body.mode = BodyMode::Batch;
    cfg.connector.body.batch_item = danube_connector_http_sink::config::BatchItem::Json;
    cfg.runtime.sink.batch.max_records = 4;
    cfg.runtime.sink.batch.linger = Duration::from_secs(30);
    let sink = start_sink(&broker, cfg).await;
    for payload in [&b"1"[..], b"oops", b"{\"x\":3}", b"4"] {
        broker.publish(topic, payload.to_vec(), HashMap::new(), None);
    }
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "jsonbatch") == 4).await);
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    let items: serde_json::Value = serde_json::from_slice(&got[0].body).expect("JSON array");
    assert_eq!(items, serde_json::json!([1, {"x": 3}, 4]));
    let dead = broker.wait_for_messages("/default/dlq-jsonbatch", 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload.as_ref(), b"oops");
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_dead_letter_with_the_attempt_count_and_no_secret_from_the_url() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    // Always failing: a status for one record, a dropped connection for the other.
    receiver.respond(|req, _| if req.text() == "drop" { Reply::Drop } else { Reply::Full(503, vec![], "busy".into()) });
    let topic = "/default/exhausted";
    let secret_url = receiver.url("/services/T0/B0/s3cr3tPath?token=s3cr3tQuery");
    let mut cfg = config("exhausted", &broker, topic, &secret_url);
    cfg.runtime.retry.max_attempts = 3;
    cfg.connector.circuit_breaker.enabled = false;
    let sink = start_sink(&broker, cfg).await;
    let status_offset = broker.publish(topic, b"status".to_vec(), HashMap::new(), None);
    let drop_offset = broker.publish(topic, b"drop".to_vec(), HashMap::new(), None);
    let dead = broker.wait_for_messages("/default/dlq-exhausted", 2, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 2);
    assert!(
        eventually(Duration::from_secs(10), || broker.ack_count(topic, "exhausted") == 2).await,
        "acked once dead-lettered"
    );
    let per_id = by_message_id(&receiver.requests());
    for (offset, payload, expected) in [(status_offset, "status", "503"), (drop_offset, "drop", "failed")] {
        let d = dead.iter().find(|d| d.payload.as_ref() == payload.as_bytes()).expect("dead-lettered");
        let attr = |k: &str| d.attributes.get(k).cloned().unwrap_or_default();
        assert_eq!(attr("dlq.attempts"), "3", "{payload}");
        assert_eq!(attr("dlq.error_kind"), "retryable", "{payload}");
        assert_eq!(attr("dlq.source_offset"), offset.to_string());
        let error = attr("dlq.error");
        assert!(error.contains(expected) && error.contains("127.0.0.1"), "{payload}: {error}");
        assert!(
            !error.contains("s3cr3t") && !error.contains("services"),
            "{payload}: the URL path and query leaked: {error}"
        );
        let tries = &per_id[&format!("{topic}:{offset}")];
        assert_eq!(tries.iter().map(attempt).collect::<Vec<_>>(), vec![1, 2, 3], "{payload}");
        assert!(
            tries.iter().all(|r| r.path == "/services/T0/B0/s3cr3tPath?token=s3cr3tQuery"),
            "the real URL was used"
        );
    }
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_hints_are_cut_at_retry_after_max() {
    // 30 s asked, 1 s allowed: retried in process after about 1 s (not deferred for 30 s).
    let gap = retry_after_gap_with(
        "ra-capped",
        || "30".into(),
        |cfg| {
            cfg.connector.retry_after.max = Duration::from_secs(1);
            cfg.connector.retry_after.defer_threshold = Duration::from_secs(1);
        },
    )
    .await;
    assert!(gap >= Duration::from_millis(950) && gap < Duration::from_secs(5), "{gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_408_is_retried() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    receiver.respond(|req, before| {
        let id = req.header("danube-message-id");
        if before.iter().any(|r| r.header("danube-message-id") == id) {
            Reply::Status(200)
        } else {
            Reply::Status(408)
        }
    });
    let topic = "/default/timeout408";
    let sink = start_sink(&broker, config("t408", &broker, topic, &receiver.url("/"))).await;
    let offsets = publish_n(&broker, topic, "r", 2);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "t408") == 2).await);
    let per_id = by_message_id(&receiver.requests());
    for offset in offsets {
        let tries = &per_id[&format!("{topic}:{offset}")];
        assert_eq!(tries.iter().map(|r| r.status).collect::<Vec<_>>(), vec![Some(408), Some(200)]);
        assert_eq!(tries.iter().map(attempt).collect::<Vec<_>>(), vec![1, 2]);
    }
    assert!(broker.messages("/default/dlq-t408").is_empty());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_a_custom_auth_header_with_patch_reach_the_receiver() {
    let broker = broker().await;
    // Each receiver refuses (401, permanent) a request without the expected credentials.
    let expected_basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("danube:p@ss:w0rd"));
    let basic = Receiver::start().await;
    let wanted = expected_basic.clone();
    basic.respond(move |req, _| {
        if req.header("authorization") == Some(wanted.as_str()) {
            Reply::Status(204)
        } else {
            Reply::Status(401)
        }
    });
    let keyed = Receiver::start().await;
    keyed.respond(|req, _| {
        if req.header("x-api-key") == Some("key-123") && req.method == "PATCH" {
            Reply::Status(200)
        } else {
            Reply::Status(401)
        }
    });

    let mut cfg = config("basic", &broker, "/default/auth-basic", &basic.url("/b"));
    cfg.connector.auth = Some(AuthConfig::Basic { username: "danube".into(), password: Secret::new("p@ss:w0rd") });
    let basic_sink = start_sink(&broker, cfg).await;
    let mut cfg = config("apikey", &broker, "/default/auth-header", &keyed.url("/k"));
    cfg.connector.auth = Some(AuthConfig::Header { name: "x-api-key".into(), value: Secret::new("key-123") });
    cfg.connector.method = danube_connector_http_sink::config::HttpMethod::Patch;
    let keyed_sink = start_sink(&broker, cfg).await;

    publish_n(&broker, "/default/auth-basic", "b", 3);
    publish_n(&broker, "/default/auth-header", "k", 3);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count("/default/auth-basic", "basic") == 3).await);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count("/default/auth-header", "apikey") == 3).await);
    assert_eq!(basic.delivered().len(), 3);
    assert!(basic
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some(expected_basic.as_str()) && r.method == "POST"));
    assert_eq!(keyed.delivered().len(), 3);
    assert!(keyed.requests().iter().all(|r| r.method == "PATCH" && r.header("authorization").is_none()));
    assert!(broker.messages("/default/dlq-basic").is_empty() && broker.messages("/default/dlq-apikey").is_empty());
    basic_sink.stop().await;
    keyed_sink.stop().await;
}

/// `(key, n)` of a request whose body is `{key}-{n}`.
fn key_and_n(r: &Received) -> Option<(String, u64)> {
    let text = r.text();
    let (key, n) = text.rsplit_once('-')?;
    Some((key.to_string(), n.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_order_holds_in_batches_of_several_records_with_retries() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    // Every 4th record of a key fails once; the rest answer after a little while.
    receiver.respond(|req, before| match key_and_n(req) {
        Some((_, n)) if n % 4 == 1 && !before.iter().any(|r| r.body == req.body) => Reply::Status(503),
        _ => Reply::Delay(Duration::from_millis(20), 200),
    });
    let topic = "/default/ordered-batches";
    let mut cfg = config("obatch", &broker, topic, &receiver.url("/"));
    // One lane: requests can only overlap between keys of one multi-record batch.
    cfg.runtime.sink.concurrency = 1;
    cfg.runtime.sink.batch.max_records = 10;
    cfg.runtime.sink.batch.linger = Duration::from_millis(200);
    cfg.connector.circuit_breaker.enabled = false;
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    broker.set_max_unacked(topic, "obatch", 100);
    let sink = start_sink(&broker, cfg).await;
    let keys = ["a", "b", "c", "d", "e"];
    for n in 0..10 {
        for key in keys {
            broker.publish(topic, format!("{key}-{n}").into_bytes(), HashMap::new(), Some(key.to_string()));
        }
    }
    assert!(eventually(Duration::from_secs(30), || broker.ack_count(topic, "obatch") == 50).await);
    let requests = receiver.requests();
    for key in keys {
        let of_key: Vec<(u64, &Received)> =
            requests.iter().filter_map(|r| key_and_n(r).filter(|(k, _)| k == key).map(|(_, n)| (n, r))).collect();
        let delivered: Vec<u64> = of_key.iter().filter(|(_, r)| r.ok()).map(|(n, _)| *n).collect();
        assert_eq!(delivered, (0..10).collect::<Vec<u64>>(), "key {key} delivered in order");
        // Held back: no request of n+1 before the last request of n (its success).
        for n in 0..9 {
            let last = of_key.iter().filter(|(m, _)| *m == n).map(|(_, r)| r.at).max().expect("sent");
            let next = of_key.iter().filter(|(m, _)| *m == n + 1).map(|(_, r)| r.at).min().expect("sent");
            assert!(next >= last, "key {key}: {} sent before {n} succeeded", n + 1);
        }
    }
    assert_eq!(requests.iter().filter(|r| r.status == Some(503)).count(), 15, "n = 1, 5, 9 of each key failed once");
    assert!(receiver.max_in_flight() >= 2, "keys of one batch overlapped: {}", receiver.max_in_flight());
    assert!(broker.messages("/default/dlq-obatch").is_empty());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_ordered_mode_a_long_retry_after_is_waited_in_process_so_the_key_keeps_its_order() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    // k-0: a long Retry-After, then a plain 503, then 200.
    receiver.respond(|req, before| match (req.text().as_str(), before.len()) {
        ("k-0", 0) => Reply::Full(503, vec![("retry-after".into(), "3".into())], String::new()),
        ("k-0", 1) => Reply::Status(503),
        _ => Reply::Status(200),
    });
    let topic = "/default/ordered-defer";
    let mut cfg = config("odefer", &broker, topic, &receiver.url("/"));
    cfg.runtime.sink.ordering = danube_connect_core::config::Ordering::Key;
    // Shorter than the wait: the 503 after it is still retried (a fresh budget).
    cfg.runtime.retry.max_elapsed = Duration::from_secs(2);
    cfg.connector.retry_after.defer_threshold = Duration::from_secs(1);
    let sink = start_sink(&broker, cfg).await;
    for n in 0..3 {
        broker.publish(topic, format!("k-{n}").into_bytes(), HashMap::new(), Some("k".into()));
    }
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "odefer") == 3).await);
    let got = receiver.requests();
    let bodies: Vec<String> = got.iter().map(Received::text).collect();
    assert_eq!(bodies, vec!["k-0", "k-0", "k-0", "k-1", "k-2"], "k-1 waited for k-0");
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![Some(503), Some(503), Some(200), Some(200), Some(200)]
    );
    assert!(got[1].at - got[0].at >= Duration::from_millis(2900), "the hint was waited: {:?}", got[1].at - got[0].at);
    assert_eq!(got[..3].iter().map(attempt).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(broker.messages("/default/dlq-odefer").is_empty());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_deferred_more_than_max_defers_times_follows_the_failure_policy() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    receiver.respond(|_, _| Reply::Full(503, vec![("retry-after".into(), "2".into())], "maintenance".into()));
    let topic = "/default/max-defers";
    let mut cfg = config("maxdefers", &broker, topic, &receiver.url("/"));
    cfg.runtime.retry.max_attempts = 1;
    cfg.connector.circuit_breaker.enabled = false;
    cfg.connector.retry_after.defer_threshold = Duration::from_secs(1);
    cfg.connector.retry_after.max_defers = Some(1);
    let sink = start_sink(&broker, cfg).await;
    let offset = broker.publish(topic, b"r".to_vec(), HashMap::new(), None);
    let dead = broker.wait_for_messages("/default/dlq-maxdefers", 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    let attr = |k: &str| dead[0].attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(attr("dlq.source_offset"), offset.to_string());
    assert_eq!(attr("dlq.error_kind"), "retryable");
    assert!(attr("dlq.error").contains("503"), "{}", attr("dlq.error"));
    assert!(eventually(Duration::from_secs(10), || broker.ack_count(topic, "maxdefers") == 1).await);
    // One deferral (nack, redelivered after the hint), then the second answer is not deferred.
    let got = receiver.requests();
    assert_eq!(got.len(), 2, "deferred once, then given up");
    assert!(got[1].at - got[0].at >= Duration::from_millis(1900), "{:?}", got[1].at - got[0].at);
    assert_eq!(got.iter().map(attempt).collect::<Vec<_>>(), vec![1, 2]);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_with_retry_after_inside_a_batch_is_resent_only_after_the_hint() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    // One record of the five answers 429 with `Retry-After: 2` on its first try.
    receiver.respond(|req, before| {
        if req.text() == "r2" && !before.iter().any(|r| r.text() == "r2") {
            Reply::Full(429, vec![("retry-after".into(), "2".into())], "slow down".into())
        } else {
            Reply::Status(200)
        }
    });
    let topic = "/default/partial-retry-after";
    let mut cfg = config("partialra", &broker, topic, &receiver.url("/"));
    cfg.runtime.sink.batch.max_records = 5;
    cfg.runtime.sink.batch.linger = Duration::from_secs(30);
    let sink = start_sink(&broker, cfg).await;
    publish_n(&broker, topic, "r", 5);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "partialra") == 5).await);
    let got = receiver.requests();
    let r2: Vec<&Received> = got.iter().filter(|r| r.text() == "r2").collect();
    assert_eq!(r2.len(), 2, "refused once, then delivered");
    assert_eq!(r2.iter().map(|r| r.status).collect::<Vec<_>>(), vec![Some(429), Some(200)]);
    let gap = r2[1].at - r2[0].at;
    assert!(gap >= Duration::from_millis(1950) && gap < Duration::from_secs(6), "the retry waited the hint: {gap:?}");
    assert_eq!(got.len(), 6, "the four others were sent once, in the same batch");
    assert!(broker.messages("/default/dlq-partialra").is_empty());
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_ordered_mode_shutdown_hands_a_waiting_record_back_and_holds_its_key() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let healthy =
        receiver.fail_until_healthy(Reply::Full(503, vec![("retry-after".into(), "30".into())], String::new()));
    let topic = "/default/ordered-stop";
    let mut cfg = config("ostop", &broker, topic, &receiver.url("/"));
    cfg.runtime.sink.ordering = danube_connect_core::config::Ordering::Key;
    cfg.connector.retry_after.defer_threshold = Duration::from_secs(1);
    let sink = start_sink(&broker, cfg.clone()).await;
    for n in 0..3 {
        broker.publish(topic, format!("k-{n}").into_bytes(), HashMap::new(), Some("k".into()));
    }
    assert!(eventually(Duration::from_secs(10), || !receiver.requests().is_empty()).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Waiting out the 30 s hint in process; shutdown does not wait for it.
    let stopping = std::time::Instant::now();
    sink.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(8), "stopped without the 30 s wait: {:?}", stopping.elapsed());
    let bodies: Vec<String> = receiver.requests().iter().map(Received::text).collect();
    assert_eq!(bodies, vec!["k-0"], "the later records of the key were held back, unsent");
    assert_eq!(broker.ack_count(topic, "ostop"), 0);
    assert!(broker.messages("/default/dlq-ostop").is_empty());

    // After a restart every record of the key arrives.
    healthy.store(true, Ordering::SeqCst);
    let sink = start_sink(&broker, cfg).await;
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "ostop") == 3).await);
    let delivered: HashSet<String> = receiver.delivered().iter().map(Received::text).collect();
    assert_eq!(delivered, HashSet::from(["k-0".to_string(), "k-1".to_string(), "k-2".to_string()]));
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_ordered_mode_an_open_circuit_is_waited_out_in_process_and_the_key_keeps_its_order() {
    let broker = broker().await;
    let receiver = Receiver::start().await;
    let healthy = receiver.fail_until_healthy(Reply::Status(503));
    let topic = "/default/ordered-breaker";
    let mut cfg = config("obreaker", &broker, topic, &receiver.url("/"));
    cfg.runtime.sink.ordering = danube_connect_core::config::Ordering::Key;
    cfg.connector.circuit_breaker.failure_threshold = 2;
    cfg.connector.circuit_breaker.cool_down = Duration::from_secs(1);
    let sink = start_sink(&broker, cfg).await;
    for n in 0..5 {
        broker.publish(topic, format!("k-{n}").into_bytes(), HashMap::new(), Some("k".into()));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during_outage = receiver.requests();
    assert!(during_outage.iter().all(|r| r.text() == "k-0"), "only the first record of the key was tried");
    // 2 failures open the circuit, then about one probe per second.
    assert!((2..=6).contains(&during_outage.len()), "requests while open: {}", during_outage.len());
    assert_eq!(broker.ack_count(topic, "obreaker"), 0);
    healthy.store(true, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "obreaker") == 5).await);
    let delivered: Vec<String> = receiver.delivered().iter().map(Received::text).collect();
    assert_eq!(delivered, (0..5).map(|n| format!("k-{n}")).collect::<Vec<_>>(), "in order, once each");
    assert!(broker.messages("/default/dlq-obreaker").is_empty(), "an open circuit does not dead-letter");
    sink.stop().await;
}

/// `failure.policy = stop` and `nack` for a record the receiver refuses for good (422):
/// `stop` ends the run with the error (exit code 2) without acking it, and the next run
/// (with `dead_letter`) gets it again; `nack` hands it back to the broker, which redelivers
/// it after `failure.nack_delay`, again and again, while the other records are delivered
/// and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_client_error_with_policy_stop_or_nack_is_not_acked() {
    use danube_connect_core::config::FailurePolicy;
    let broker = broker().await;
    let receiver = Receiver::start().await;
    receiver.respond(|req, _| if req.text().starts_with("bad") { Reply::Status(422) } else { Reply::Status(204) });

    let topic = "/default/policy-stop";
    let mut stopping = config("pstop", &broker, topic, &receiver.url("/orders"));
    stopping.runtime.failure.policy = FailurePolicy::Stop;
    let sink = start_sink(&broker, stopping).await;
    broker.publish(topic, b"bad-stop".to_vec(), HashMap::new(), None);
    let report = tokio::time::timeout(Duration::from_secs(30), sink.run).await.expect("stops by itself").expect("join");
    assert_eq!(report.exit_code(), 2, "{:?}", report.fatal);
    assert_eq!(broker.ack_count(topic, "pstop"), 0, "the refused record is not acked");
    assert!(broker.messages("/default/dlq-pstop").is_empty(), "nothing dead-lettered");
    let sink = start_sink(&broker, config("pstop", &broker, topic, &receiver.url("/orders"))).await;
    let dead = broker.wait_for_messages("/default/dlq-pstop", 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1, "redelivered to the next run, which dead-letters it");
    assert_eq!(dead[0].payload.as_ref(), b"bad-stop");
    sink.stop().await;

    let topic = "/default/policy-nack";
    let mut nacking = config("pnack", &broker, topic, &receiver.url("/orders"));
    nacking.runtime.failure.policy = FailurePolicy::Nack;
    nacking.runtime.failure.nack_delay = Duration::from_millis(200);
    let sink = start_sink(&broker, nacking).await;
    broker.publish(topic, b"good-1".to_vec(), HashMap::new(), None);
    broker.publish(topic, b"bad-nack".to_vec(), HashMap::new(), None);
    broker.publish(topic, b"good-2".to_vec(), HashMap::new(), None);
    let redelivered = || receiver.requests().iter().filter(|r| r.text() == "bad-nack").count() >= 3;
    assert!(eventually(Duration::from_secs(20), redelivered).await, "the nacked record comes back");
    assert!(eventually(Duration::from_secs(10), || broker.ack_count(topic, "pnack") == 2).await, "only the good ones");
    assert!(broker.messages("/default/dlq-pnack").is_empty(), "nothing dead-lettered");
    assert!(!sink.run.is_finished(), "nack does not stop the sink");
    let report = sink.stop().await;
    assert_eq!(report.exit_code(), 0, "{:?}", report.fatal);
}
