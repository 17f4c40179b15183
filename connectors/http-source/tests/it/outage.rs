//! Broker outage: requests get 503 with Retry-After while Danube is away and succeed
//! after it returns; every 2xx answer has its record in the topic.

use std::time::{Duration, Instant};

use danube_dev_broker::EmbeddedBroker;
use reqwest::StatusCode;

use crate::common::{client, spawn};

const CONFIG: &str = r#"
[[connector.endpoints]]
path = "/events"
topic = "/default/outage"
"#;

#[tokio::test]
async fn broker_outage_gets_503_then_recovers() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let env = [
        ("CONNECTOR_SOURCE__PUBLISH_TIMEOUT", "2s"),
        ("HTTP_SOURCE_REQUEST_TIMEOUT", "5s"),
        ("HTTP_SOURCE_RETRY_AFTER", "2s"),
    ];
    let connector = spawn(&broker, CONFIG, &env).await;
    let http = client();
    let url = format!("{}/events", connector.base);
    let mut acked = Vec::new();
    assert_eq!(http.post(&url).body("before").send().await.expect("send").status(), StatusCode::OK);
    acked.push("before".to_string());

    broker.stop().await;
    let started = Instant::now();
    let down = http.post(&url).body("during").send().await.expect("send");
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE, "{}", connector.process.log());
    assert_eq!(down.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("2"));
    assert!(started.elapsed() < Duration::from_secs(8), "503 within the request timeout");
    let again = http.post(&url).body("during-2").send().await.expect("send");
    assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);

    broker.restart().await.expect("restart");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut recovered = false;
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let body = format!("after-{n}");
        let response = http.post(&url).body(body.clone()).send().await.expect("send");
        if response.status().is_success() {
            acked.push(body);
            recovered = true;
            break;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "no success after the broker returned: {}", connector.process.log());
    let stored: Vec<String> =
        broker.messages("/default/outage").iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    for body in &acked {
        assert!(stored.contains(body), "acked {body} missing from {stored:?}");
    }
}
