//! Routing to several topics (path segments, headers) and its `max_topics` bound,
//! attributes, routing keys, JSON validation, `accepted` mode and delivery-id
//! de-duplication (scheme defaults, `accepted` mode, in-flight reservation).

use std::time::Duration;

use danube_dev_broker::{BrokerConfig, EmbeddedBroker};
use reqwest::StatusCode;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::common::{client, hmac_sha256, now_secs, settle_messages, spawn, Connector};

const CONFIG: &str = r#"
[[connector.endpoints]]
id = "hooks"
path = "/hooks/{source}"
topic = "/default/{source}-{header.X-Event}"
methods = ["POST", "PUT"]
headers = ["X-Event", "X-Request-Id"]
query = ["env"]
routing_key = { header = "X-Device" }

[[connector.endpoints]]
id = "devices"
path = "/devices"
topic = "/default/devices"
routing_key = { json_pointer = "/device/id" }
validate_json = true
success_status = 202

[[connector.endpoints]]
id = "buffered"
path = "/buffered"
topic = "/default/buffered"
ack = "accepted"

[[connector.endpoints]]
id = "dedup"
path = "/dedup"
topic = "/default/dedup"
verification = { scheme = "github", secrets = ["dedup-secret"] }
dedup = { window = "1m" }

[[connector.endpoints]]
id = "fan"
path = "/fan"
topic = "/default/fan-{header.X-Event}"
max_topics = 2

[[connector.endpoints]]
id = "stripe-dedup"
path = "/stripe-dedup"
topic = "/default/stripe-dedup"
verification = { scheme = "stripe", secrets = ["stripe-dedup-secret"] }
dedup = { window = "1m" }

[[connector.endpoints]]
id = "standard-dedup"
path = "/standard-dedup"
topic = "/default/standard-dedup"
verification = { scheme = "standard_webhooks", secrets = ["whsec_c3RhbmRhcmQtZGVkdXAta2V5LTAxMjM0NTY3ODlhYmM="] }
dedup = { window = "1m" }

[[connector.endpoints]]
id = "accepted-dedup"
path = "/accepted-dedup"
topic = "/default/accepted-dedup"
ack = "accepted"
dedup = { id_header = "X-Delivery" }

[[connector.endpoints]]
id = "inflight-dedup"
path = "/inflight-dedup"
topic = "/default/inflight-dedup"
dedup = { id_header = "X-Delivery" }
"#;

/// The key behind `STANDARD_DEDUP`'s `whsec_` secret.
const STANDARD_DEDUP_KEY: &[u8] = b"standard-dedup-key-0123456789abc";

async fn start() -> (EmbeddedBroker, Connector) {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let connector = spawn(&broker, CONFIG, &[]).await;
    (broker, connector)
}

#[tokio::test]
async fn requests_are_routed_to_topics_from_path_segments_and_headers() {
    let (broker, connector) = start().await;
    let http = client();
    let post = |source: &str, event: &str, body: &str| {
        http.post(format!("{}/hooks/{source}?env=prod&other=x", connector.base))
            .header("X-Event", event)
            .header("X-Device", "dev-1")
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
    };
    assert_eq!(post("github", "push", "1").await.expect("send").status(), StatusCode::OK);
    assert_eq!(post("github", "issues", "2").await.expect("send").status(), StatusCode::OK);
    assert_eq!(post("gitlab", "push", "3").await.expect("send").status(), StatusCode::OK);
    let put = http
        .put(format!("{}/hooks/gitlab", connector.base))
        .header("X-Event", "push")
        .body("4")
        .send()
        .await
        .expect("send");
    assert_eq!(put.status(), StatusCode::OK, "PUT is configured");
    let missing_header = http.post(format!("{}/hooks/github", connector.base)).body("5").send().await.expect("send");
    assert_eq!(missing_header.status(), StatusCode::BAD_REQUEST, "the topic needs X-Event");
    let escape = http
        .post(format!("{}/hooks/github", connector.base))
        .header("X-Event", "../../other/ns")
        .body("6")
        .send()
        .await
        .expect("send");
    assert_eq!(escape.status(), StatusCode::OK);

    let push = settle_messages(&broker, "/default/github-push").await;
    assert_eq!(push.len(), 1);
    assert_eq!(push[0].payload.as_ref(), b"1");
    assert_eq!(broker.messages("/default/github-issues").len(), 1);
    let gitlab = broker.messages("/default/gitlab-push");
    assert_eq!(gitlab.iter().map(|m| m.payload.as_ref()).collect::<Vec<_>>(), vec![b"3".as_ref(), b"4"]);
    assert_eq!(broker.messages("/default/github-______other_ns").len(), 1, "header value cannot leave the namespace");

    let m = &push[0];
    let attr = |name: &str| m.attributes.get(name).map(String::as_str);
    assert_eq!(attr("http.method"), Some("POST"));
    assert_eq!(attr("http.path"), Some("/hooks/github"));
    assert_eq!(attr("http.endpoint"), Some("hooks"));
    assert_eq!(attr("http.verification"), Some("none"));
    assert_eq!(attr("http.path.source"), Some("github"));
    assert_eq!(attr("http.header.x-event"), Some("push"));
    assert_eq!(attr("http.header.x-request-id"), None, "absent headers are not invented");
    assert_eq!(attr("http.query.env"), Some("prod"));
    assert_eq!(attr("http.query.other"), None, "only configured query parameters are copied");
    assert_eq!(attr("http.content_type"), Some("application/json"));
    assert!(attr("http.remote_addr").is_some_and(|a| a.starts_with("127.0.0.1:")), "{:?}", m.attributes);
    assert!(attr("http.received_at").is_some_and(|t| t.ends_with('Z') && t.len() >= 20), "{:?}", m.attributes);
    assert_eq!(m.routing_key.as_deref(), Some("dev-1"));

    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", connector.process.ops_port))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_source_requests_total")
                && l.contains("endpoint=\"hooks\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no request counter for hooks/200 in {metrics}"));
    assert!(line.ends_with(" 5"), "five requests answered 200: {line}");
}

#[tokio::test]
async fn json_pointer_routing_key_and_json_validation() {
    let (broker, connector) = start().await;
    let http = client();
    let ok = http
        .post(format!("{}/devices", connector.base))
        .body(r#"{"device":{"id":"d-7"},"t":1}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), StatusCode::ACCEPTED, "success_status = 202");
    let numeric =
        http.post(format!("{}/devices", connector.base)).body(r#"{"device":{"id":42}}"#).send().await.expect("send");
    assert_eq!(numeric.status(), StatusCode::ACCEPTED);
    let bad = http.post(format!("{}/devices", connector.base)).body("{not json").send().await.expect("send");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let messages = settle_messages(&broker, "/default/devices").await;
    assert_eq!(messages.len(), 2, "the invalid body was not published");
    assert_eq!(messages[0].routing_key.as_deref(), Some("d-7"));
    assert_eq!(messages[1].routing_key.as_deref(), Some("42"));
}

#[tokio::test]
async fn accepted_mode_answers_202_and_publishes_from_the_buffer() {
    let (broker, connector) = start().await;
    let http = client();
    for i in 0..20 {
        let response =
            http.post(format!("{}/buffered", connector.base)).body(format!("b{i}")).send().await.expect("send");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let messages = broker.wait_for_messages("/default/buffered", 20, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 20);
}

#[tokio::test]
async fn repeated_delivery_ids_are_published_once() {
    let (broker, connector) = start().await;
    let http = client();
    let send = |delivery: &str, body: &'static str| {
        let signature = format!("sha256={}", hex::encode(hmac_sha256(b"dedup-secret", &[body.as_bytes()])));
        http.post(format!("{}/dedup", connector.base))
            .header("X-Hub-Signature-256", signature)
            .header("X-GitHub-Delivery", delivery)
            .body(body)
            .send()
    };
    assert_eq!(send("d-1", "first").await.expect("send").status(), StatusCode::OK);
    let again = send("d-1", "first").await.expect("send");
    assert_eq!(again.status(), StatusCode::OK, "a redelivery is answered as delivered");
    assert!(again.text().await.expect("body").contains("duplicate"));
    assert_eq!(send("d-2", "second").await.expect("send").status(), StatusCode::OK);
    let messages = settle_messages(&broker, "/default/dedup").await;
    assert_eq!(messages.iter().map(|m| m.payload.as_ref()).collect::<Vec<_>>(), vec![b"first".as_ref(), b"second"]);
    assert_eq!(messages[0].attributes.get("http.delivery_id").map(String::as_str), Some("d-1"));
}

#[tokio::test]
async fn templated_topics_stop_at_max_topics() {
    let (broker, connector) = start().await;
    let http = client();
    let post = |event: &str| {
        http.post(format!("{}/fan", connector.base)).header("X-Event", event).body(event.to_string()).send()
    };
    assert_eq!(post("a").await.expect("send").status(), StatusCode::OK);
    assert_eq!(post("b").await.expect("send").status(), StatusCode::OK);
    let third = post("c").await.expect("send");
    assert_eq!(third.status(), StatusCode::BAD_REQUEST, "a third distinct topic is refused");
    let text = third.text().await.expect("body");
    assert!(text.contains("max_topics") && text.contains('2'), "{text}");
    assert_eq!(post("a").await.expect("send").status(), StatusCode::OK, "known topics keep working");
    assert_eq!(settle_messages(&broker, "/default/fan-a").await.len(), 2);
    assert_eq!(broker.messages("/default/fan-b").len(), 1);
    assert!(broker.messages("/default/fan-c").is_empty(), "nothing published to the refused topic");
}

#[tokio::test]
async fn stripe_redeliveries_are_deduplicated_by_the_event_id() {
    let (broker, connector) = start().await;
    let http = client();
    // A redelivery carries the same event with a new timestamp and signature.
    let send = |body: &'static str, t: u64| {
        let t = t.to_string();
        let signature = hex::encode(hmac_sha256(b"stripe-dedup-secret", &[t.as_bytes(), b".", body.as_bytes()]));
        http.post(format!("{}/stripe-dedup", connector.base))
            .header("Stripe-Signature", format!("t={t},v1={signature}"))
            .body(body)
            .send()
    };
    let now = now_secs();
    let first = r#"{"id":"evt_1","type":"charge.succeeded"}"#;
    assert_eq!(send(first, now).await.expect("send").status(), StatusCode::OK);
    let again = send(first, now + 1).await.expect("send");
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.text().await.expect("body").contains("duplicate"), "the redelivery is recognised by /id");
    let second = r#"{"id":"evt_2","type":"charge.succeeded"}"#;
    assert_eq!(send(second, now).await.expect("send").status(), StatusCode::OK);
    let messages = settle_messages(&broker, "/default/stripe-dedup").await;
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_ref()).collect();
    assert_eq!(payloads, vec![first.as_bytes(), second.as_bytes()]);
    assert_eq!(messages[0].attributes.get("http.delivery_id").map(String::as_str), Some("evt_1"));
}

#[tokio::test]
async fn standard_webhooks_redeliveries_are_deduplicated_by_webhook_id() {
    let (broker, connector) = start().await;
    let http = client();
    let send = |id: &'static str, body: &'static str| {
        let t = now_secs().to_string();
        let signature = STANDARD
            .encode(hmac_sha256(STANDARD_DEDUP_KEY, &[id.as_bytes(), b".", t.as_bytes(), b".", body.as_bytes()]));
        http.post(format!("{}/standard-dedup", connector.base))
            .header("webhook-id", id)
            .header("webhook-timestamp", t)
            .header("webhook-signature", format!("v1,{signature}"))
            .body(body)
            .send()
    };
    assert_eq!(send("msg_1", "one").await.expect("send").status(), StatusCode::OK);
    let again = send("msg_1", "one").await.expect("send");
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.text().await.expect("body").contains("duplicate"), "the redelivery is recognised by webhook-id");
    assert_eq!(send("msg_2", "two").await.expect("send").status(), StatusCode::OK);
    let messages = settle_messages(&broker, "/default/standard-dedup").await;
    assert_eq!(messages.iter().map(|m| m.payload.as_ref()).collect::<Vec<_>>(), vec![b"one".as_ref(), b"two"]);
    assert_eq!(messages[0].attributes.get("http.delivery_id").map(String::as_str), Some("msg_1"));
}

#[tokio::test]
async fn accepted_mode_deduplicates_delivery_ids() {
    let (broker, connector) = start().await;
    let http = client();
    let send = |id: &str, body: &str| {
        http.post(format!("{}/accepted-dedup", connector.base)).header("X-Delivery", id).body(body.to_string()).send()
    };
    assert_eq!(send("d-1", "a1").await.expect("send").status(), StatusCode::ACCEPTED);
    let again = send("d-1", "a1").await.expect("send");
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.text().await.expect("body").contains("duplicate"));
    assert_eq!(send("d-2", "a2").await.expect("send").status(), StatusCode::ACCEPTED);
    broker.wait_for_messages("/default/accepted-dedup", 2, Duration::from_secs(10)).await;
    let messages = settle_messages(&broker, "/default/accepted-dedup").await;
    let mut payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_ref()).collect();
    payloads.sort();
    assert_eq!(payloads, vec![b"a1".as_ref(), b"a2"], "the repeated delivery was not buffered again");
}

#[tokio::test]
async fn a_delivery_id_stays_reserved_until_its_publish_ends() {
    // The broker refuses payloads above 1 KiB for good: a definitive publish failure.
    let broker = EmbeddedBroker::start(BrokerConfig { max_message_size: 1024, ..BrokerConfig::default() })
        .await
        .expect("broker");
    let env = [
        ("CONNECTOR_SOURCE__PUBLISH_TIMEOUT", "2s"),
        ("HTTP_SOURCE_REQUEST_TIMEOUT", "3s"),
        ("HTTP_SOURCE_RETRY_AFTER", "1s"),
        // Refused records are answered (502), not dead-lettered.
        ("CONNECTOR_FAILURE__POLICY", "nack"),
    ];
    let connector = spawn(&broker, CONFIG, &env).await;
    let url = format!("{}/inflight-dedup", connector.base);
    let send = |id: &'static str, body: Vec<u8>| {
        let request = client().post(&url).header("X-Delivery", id).body(body);
        async move {
            let response = request.send().await.expect("send");
            let status = response.status();
            let retry_after = response.headers().contains_key("retry-after");
            (status, retry_after, response.text().await.expect("body"))
        }
    };
    // Danube takes no sends: the first delivery is in flight until its request times out;
    // the same id arriving meanwhile is not published a second time.
    broker.fail_next_sends(1_000_000);
    let first = tokio::spawn(send("d-race", b"x".to_vec()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = send("d-race", b"x".to_vec()).await;
    let first = first.await.expect("first request");
    let mut statuses = vec![first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, vec![StatusCode::CONFLICT, StatusCode::SERVICE_UNAVAILABLE], "{}", connector.process.log());
    assert!(first.1 && second.1, "both answers carry Retry-After");
    // The timed-out publish may still land: until it ends, a retry is told to wait.
    let retry = send("d-race", b"x".to_vec()).await;
    assert_eq!(retry.0, StatusCode::CONFLICT, "{}", retry.2);
    assert!(broker.messages("/default/inflight-dedup").is_empty());

    // Danube takes sends again: the lingering publish lands, and the retry is a duplicate.
    broker.fail_next_sends(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let (status, _, text) = send("d-race", b"x".to_vec()).await;
        if status == StatusCode::OK {
            break text;
        }
        assert!(
            [StatusCode::CONFLICT, StatusCode::SERVICE_UNAVAILABLE].contains(&status),
            "{status} while the publish lands: {text}"
        );
        assert!(std::time::Instant::now() < deadline, "never answered: {}", connector.process.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(answer.contains("duplicate"), "the record is already in Danube: {answer}");
    assert_eq!(broker.messages("/default/inflight-dedup").len(), 1, "published exactly once");

    // A publish that failed for good frees its id: the sender's retry is published.
    let refused = send("d-big", vec![b'z'; 4096]).await;
    assert_eq!(refused.0, StatusCode::BAD_GATEWAY, "{}", refused.2);
    let fixed = send("d-big", b"small".to_vec()).await;
    assert_eq!(fixed.0, StatusCode::OK, "{}", fixed.2);
    assert!(fixed.2.contains("published"), "{}", fixed.2);
    let messages = settle_messages(&broker, "/default/inflight-dedup").await;
    assert_eq!(messages.iter().map(|m| m.payload.as_ref()).collect::<Vec<_>>(), vec![b"x".as_ref(), b"small"]);
}

/// Subscribes a raw client consumer to `topic`; fails while the topic does not exist.
pub(crate) async fn subscribe(broker: &EmbeddedBroker, topic: &str) -> Result<danube_client::Consumer, String> {
    let client =
        danube_client::DanubeClient::builder().service_url(broker.url()).build().await.map_err(|e| e.to_string())?;
    let mut consumer = client
        .new_consumer()
        .with_topic(topic.to_string())
        .with_consumer_name("early".to_string())
        .with_subscription("early".to_string())
        .with_subscription_type(danube_client::SubType::Exclusive)
        .build()
        .map_err(|e| e.to_string())?;
    consumer.subscribe().await.map_err(|e| e.to_string())?;
    Ok(consumer)
}

#[tokio::test]
async fn static_topics_exist_before_the_first_request() {
    let (broker, connector) = start().await;
    assert!(
        subscribe(&broker, "/default/never-used").await.is_err(),
        "sanity: a topic nobody created has no subscription"
    );
    assert!(
        subscribe(&broker, "/default/github-push").await.is_err(),
        "templated topics are created by their first request only"
    );
    let mut early = subscribe(&broker, "/default/devices").await.expect("the static topic exists at start");
    let response = client()
        .post(format!("{}/devices", connector.base))
        .body(r#"{"device":{"id":"d-1"}}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let mut stream = early.receive().await.expect("receive");
    let message =
        tokio::time::timeout(Duration::from_secs(10), stream.recv()).await.expect("in time").expect("a message");
    assert_eq!(
        message.payload,
        br#"{"device":{"id":"d-1"}}"#.to_vec(),
        "the subscriber made before it saw the first request"
    );
}
