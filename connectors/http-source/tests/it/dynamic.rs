//! Dynamic endpoints: create → use → revoke → 404, survival across restart, revocation
//! reaching another instance without restart, readiness when the registry is unreadable,
//! the `max_endpoints` limit (409) and a per-endpoint timestamp tolerance.

use std::time::{Duration, Instant};

use danube_dev_broker::EmbeddedBroker;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{client, hmac_sha256, now_secs, settle_messages, spawn_in, spawn_with, Connector};

const TOKEN: &str = "admin-token-0123456789";

fn config(registry: &str) -> String {
    format!(
        r#"
admin = {{ token = "{TOKEN}" }}
dynamic = {{ registry_path = "{registry}", refresh_interval = "200ms" }}
"#
    )
}

async fn create(connector: &Connector, body: Value) -> Value {
    let response = client()
        .post(format!("{}/admin/endpoints", connector.base))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("json")
}

async fn post(connector: &Connector, path: &str, token: Option<&str>, body: &str) -> StatusCode {
    let mut request = client().post(format!("{}{path}", connector.base)).body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("post").status()
}

#[tokio::test]
async fn dynamic_endpoint_create_use_revoke_and_survive_restart() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry.jsonl").display().to_string();
    let mut connector = spawn_in(&broker, &config(&registry), &[], tempfile::tempdir().expect("tempdir")).await;
    let http = client();
    let url = format!("{}/admin/endpoints", connector.base);

    let anonymous = http.post(&url).json(&json!({"topic": "/default/x"})).send().await.expect("send");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = http.get(&url).bearer_auth("admin-token-wrong-000").send().await.expect("send");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let bad_topic = http.post(&url).bearer_auth(TOKEN).json(&json!({"topic": "nope"})).send().await.expect("send");
    assert_eq!(bad_topic.status(), StatusCode::BAD_REQUEST);
    let bad_ns = http.post(&url).bearer_auth(TOKEN).json(&json!({"topic": "/other/x"})).send().await.expect("send");
    assert_eq!(bad_ns.status(), StatusCode::BAD_REQUEST);

    let a = create(
        &connector,
        json!({"topic": "/default/dyn-a", "verification": {"scheme": "token", "secrets": ["dyn-secret"]}}),
    )
    .await;
    let b = create(&connector, json!({"topic": "/default/dyn-b"})).await;
    let path_a = a["path"].as_str().expect("path").to_string();
    let path_b = b["path"].as_str().expect("path").to_string();
    let id_a = a["id"].as_str().expect("id").to_string();
    assert!(path_a.starts_with("/e/") && id_a.len() >= 32, "{a}");
    assert_ne!(path_a, path_b);

    assert_eq!(post(&connector, &path_a, Some("dyn-secret"), "a1").await, StatusCode::OK);
    assert_eq!(post(&connector, &path_a, None, "unsigned").await, StatusCode::UNAUTHORIZED);
    assert_eq!(post(&connector, &path_b, None, "b1").await, StatusCode::OK);
    let listed = http.get(&url).bearer_auth(TOKEN).send().await.expect("list");
    let text = listed.text().await.expect("text");
    let list: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(list["endpoints"].as_array().map(Vec::len), Some(2), "{text}");
    assert!(!text.contains("dyn-secret"), "the list does not show secrets: {text}");

    // Survives a restart (same registry file).
    connector.process.terminate(Duration::from_secs(20)).await.expect("stopped");
    let mut connector = spawn_in(&broker, &config(&registry), &[], tempfile::tempdir().expect("tempdir")).await;
    assert_eq!(post(&connector, &path_a, Some("dyn-secret"), "a2").await, StatusCode::OK);

    // Revoke: 204, then 404 at once; revoking again is 404.
    let revoke = http
        .delete(format!("{}/admin/endpoints/{id_a}", connector.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    assert_eq!(post(&connector, &path_a, Some("dyn-secret"), "a3").await, StatusCode::NOT_FOUND);
    let again = http
        .delete(format!("{}/admin/endpoints/{id_a}", connector.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("revoke");
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    // The revocation survives a restart too; the other endpoint still works.
    connector.process.terminate(Duration::from_secs(20)).await.expect("stopped");
    let connector = spawn_in(&broker, &config(&registry), &[], tempfile::tempdir().expect("tempdir")).await;
    assert_eq!(post(&connector, &path_a, Some("dyn-secret"), "a4").await, StatusCode::NOT_FOUND);
    assert_eq!(post(&connector, &path_b, None, "b2").await, StatusCode::OK);

    let a_messages = settle_messages(&broker, "/default/dyn-a").await;
    assert_eq!(a_messages.iter().map(|m| m.payload.as_ref()).collect::<Vec<_>>(), vec![b"a1".as_ref(), b"a2"]);
    assert_eq!(a_messages[0].attributes.get("http.verification").map(String::as_str), Some("token"));
    assert_eq!(broker.messages("/default/dyn-b").len(), 2);
}

#[tokio::test]
async fn revocation_reaches_another_instance_without_restart() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry.jsonl").display().to_string();
    let one = spawn_in(&broker, &config(&registry), &[], tempfile::tempdir().expect("tempdir")).await;
    let two = spawn_in(&broker, &config(&registry), &[], tempfile::tempdir().expect("tempdir")).await;
    let created = create(&one, json!({"topic": "/default/shared"})).await;
    let path = created["path"].as_str().expect("path").to_string();
    let id = created["id"].as_str().expect("id").to_string();

    let wait_for = |connector: &Connector, expected: StatusCode| {
        let path = path.clone();
        let base = connector.base.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let status = client().post(format!("{base}{path}")).body("x").send().await.expect("post").status();
                if status == expected || Instant::now() > deadline {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(wait_for(&two, StatusCode::OK).await, StatusCode::OK, "created on one, served by two");
    let revoke =
        client().delete(format!("{}/admin/endpoints/{id}", one.base)).bearer_auth(TOKEN).send().await.expect("revoke");
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    assert_eq!(wait_for(&two, StatusCode::NOT_FOUND).await, StatusCode::NOT_FOUND, "revoked on one, gone on two");
}

#[tokio::test]
async fn unreadable_registry_degrades_readiness() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry");
    std::fs::create_dir(&registry).expect("a directory where the file should be");
    let connector = spawn_with(
        &broker,
        &config(&registry.display().to_string()),
        &[],
        tempfile::tempdir().expect("tempdir"),
        false,
    )
    .await;
    let readyz = format!("http://127.0.0.1:{}/readyz", connector.process.ops_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let degraded = loop {
        let response = client().get(&readyz).send().await;
        if let Ok(response) = response {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if status == StatusCode::SERVICE_UNAVAILABLE && text.contains("dynamic-endpoints") {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(degraded, "readiness did not report the registry: {}", connector.process.log());

    std::fs::remove_dir(&registry).expect("remove dir");
    std::fs::write(&registry, b"").expect("empty registry file");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = client().get(&readyz).send().await.is_ok_and(|r| r.status() == StatusCode::OK);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "readiness did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn dynamic_endpoints_stop_at_max_endpoints_and_take_their_own_tolerance() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("registry.jsonl").display().to_string();
    let config = format!(
        r#"
admin = {{ token = "{TOKEN}" }}
dynamic = {{ registry_path = "{registry}", refresh_interval = "200ms", max_endpoints = 2 }}
"#
    );
    let connector = spawn_in(&broker, &config, &[], tempfile::tempdir().expect("tempdir")).await;
    let http = client();
    let url = format!("{}/admin/endpoints", connector.base);
    let stripe = |tolerance: Option<&str>| {
        let mut verification = json!({"scheme": "stripe", "secrets": ["dyn-stripe"]});
        if let Some(tolerance) = tolerance {
            verification["tolerance"] = json!(tolerance);
        }
        verification
    };
    let zero = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&json!({"topic": "/default/dyn-zero", "verification": stripe(Some("0s"))}))
        .send()
        .await
        .expect("send");
    assert_eq!(zero.status(), StatusCode::BAD_REQUEST, "a zero tolerance is refused");
    let wide = create(&connector, json!({"topic": "/default/dyn-wide", "verification": stripe(Some("20m"))})).await;
    crate::routing::subscribe(&broker, "/default/dyn-wide")
        .await
        .expect("the topic exists once the endpoint is created");
    let narrow = create(&connector, json!({"topic": "/default/dyn-narrow", "verification": stripe(None)})).await;
    let third =
        http.post(&url).bearer_auth(TOKEN).json(&json!({"topic": "/default/dyn-third"})).send().await.expect("send");
    assert_eq!(third.status(), StatusCode::CONFLICT, "max_endpoints = 2");
    assert!(third.text().await.expect("body").contains("limit"));

    // Signed ten minutes ago: within 20m, outside the default 5m.
    let t = (now_secs() - 600).to_string();
    let body = r#"{"id":"evt_old"}"#;
    let signature = hex::encode(hmac_sha256(b"dyn-stripe", &[t.as_bytes(), b".", body.as_bytes()]));
    let post = |endpoint: &Value| {
        http.post(format!("{}{}", connector.base, endpoint["path"].as_str().expect("path")))
            .header("Stripe-Signature", format!("t={t},v1={signature}"))
            .body(body)
            .send()
    };
    assert_eq!(post(&wide).await.expect("send").status(), StatusCode::OK, "tolerance 20m");
    assert_eq!(post(&narrow).await.expect("send").status(), StatusCode::UNAUTHORIZED, "default tolerance 5m");

    // Revoking one frees a place.
    let id = narrow["id"].as_str().expect("id");
    let revoke = http.delete(format!("{url}/{id}")).bearer_auth(TOKEN).send().await.expect("revoke");
    assert_eq!(revoke.status(), StatusCode::NO_CONTENT);
    create(&connector, json!({"topic": "/default/dyn-third"})).await;
    assert_eq!(settle_messages(&broker, "/default/dyn-wide").await.len(), 1);
    assert!(broker.messages("/default/dyn-narrow").is_empty());
}
