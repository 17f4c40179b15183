//! A topic bound to a JSON Schema (core `[[schemas]]`): a body that fails the schema never
//! enters the topic (with `failure.policy = nack` it gets 400 with the violation, with the
//! default `dead_letter` it is dead-lettered); a valid one carries the schema id.

use danube_dev_broker::EmbeddedBroker;
use reqwest::StatusCode;

use crate::common::{client, settle_messages, spawn_in};

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["id", "amount"],
  "properties": { "id": { "type": "string" }, "amount": { "type": "number" } }
}"#;

const CONFIG: &str = r#"
[[connector.endpoints]]
path = "/orders"
topic = "/default/orders"

[[schemas]]
topic = "/default/orders"
subject = "orders-value"
type = "json_schema"
file = "$DIR/orders.schema.json"
"#;

#[tokio::test]
async fn body_failing_the_topic_schema_gets_400_with_the_violation_with_failure_policy_nack() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("orders.schema.json"), SCHEMA).expect("write schema");
    let connector = spawn_in(&broker, CONFIG, &[("CONNECTOR_FAILURE__POLICY", "nack")], dir).await;
    let http = client();
    let url = format!("{}/orders", connector.base);

    let ok = http.post(&url).body(r#"{"id":"o-1","amount":12.5}"#).send().await.expect("send");
    assert_eq!(ok.status(), StatusCode::OK, "{}", connector.process.log());
    let bad = http.post(&url).body(r#"{"id":"o-2","amount":"lots"}"#).send().await.expect("send");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.headers().get("retry-after").is_none(), "resending the same body cannot succeed");
    let text = bad.text().await.expect("body");
    assert!(text.contains("amount") && text.contains("lots"), "the violation is named: {text}");
    let missing = http.post(&url).body(r#"{"id":"o-3"}"#).send().await.expect("send");
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);

    let messages = settle_messages(&broker, "/default/orders").await;
    assert_eq!(messages.len(), 1, "only the valid body was published");
    assert_eq!(messages[0].payload.as_ref(), br#"{"id":"o-1","amount":12.5}"#);
    assert!(messages[0].schema_id.is_some(), "the record references the schema");
}

#[tokio::test]
async fn accepted_body_failing_the_schema_goes_to_the_dead_letter_topic() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("orders.schema.json"), SCHEMA).expect("write schema");
    let config =
        CONFIG.replace("topic = \"/default/orders\"\n\n", "topic = \"/default/orders\"\nack = \"accepted\"\n\n");
    assert!(config.contains("ack = \"accepted\""));
    let connector = spawn_in(&broker, &config, &[], dir).await;
    let url = format!("{}/orders", connector.base);
    let bad = client().post(&url).body(r#"{"id":"o-9","amount":"lots"}"#).send().await.expect("send");
    assert_eq!(bad.status(), StatusCode::ACCEPTED, "answered before validation in accepted mode");
    let dead = broker.wait_for_messages("/default/dlq-http-test", 1, std::time::Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1, "{}", connector.process.log());
    assert_eq!(dead[0].payload.as_ref(), br#"{"id":"o-9","amount":"lots"}"#);
    assert_eq!(dead[0].attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"));
    assert!(broker.messages("/default/orders").is_empty());
}
