//! Routing to several topics (path segments, headers), attributes, routing keys, JSON
//! validation, `accepted` mode and delivery-id de-duplication.

use std::time::Duration;

use danube_dev_broker::EmbeddedBroker;
use reqwest::StatusCode;

use crate::common::{client, hmac_sha256, settle_messages, spawn, Connector};

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
"#;

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
        .find(|l| l.starts_with("http_source_requests_total") && l.contains("endpoint=\"hooks\"") && l.contains("status=\"200\""))
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
    let numeric = http
        .post(format!("{}/devices", connector.base))
        .body(r#"{"device":{"id":42}}"#)
        .send()
        .await
        .expect("send");
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
