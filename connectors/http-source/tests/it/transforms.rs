//! `[[transforms]]` through the real binary: a webhook's field is removed and a header-based
//! attribute added before the record reaches Danube, a filtered event is answered 200 and
//! never published, a failing program answers 400 naming the transform (`failure.policy =
//! nack`), and a program that
//! does not compile fails `--check` naming the line and column.

use std::process::Command;

use danube_dev_broker::EmbeddedBroker;
use reqwest::StatusCode;

use crate::common::{client, settle_messages, spawn, BINARY};

const CONFIG: &str = r#"
[[connector.endpoints]]
path = "/hooks"
topic = "/default/hooks"

[[transforms]]
name = "strip"
topics = ["/default/hooks"]
source = '''
if .test == true { abort }
del(.password)
.amount = int!(.amount)
%attributes.stripped = "password"
'''
"#;

#[tokio::test]
async fn a_webhook_field_is_removed_before_it_reaches_danube() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    // With `nack` a failing program is refused to the sender (400); with the default
    // `dead_letter` it would be dead-lettered and answered 202.
    let connector = spawn(&broker, CONFIG, &[("CONNECTOR_FAILURE__POLICY", "nack")]).await;
    let http = client();
    let post = |body: &'static str| {
        http.post(format!("{}/hooks", connector.base)).header("Content-Type", "application/json").body(body).send()
    };
    let kept = post(r#"{"user":"ana","password":"hunter2","amount":5}"#).await.expect("send");
    assert_eq!(kept.status(), StatusCode::OK);
    let dropped = post(r#"{"user":"test","password":"x","amount":1,"test":true}"#).await.expect("send");
    assert_eq!(dropped.status(), StatusCode::OK, "a dropped event is accepted: nothing to send again");
    let failing = post(r#"{"user":"bob","amount":"five"}"#).await.expect("send");
    assert_eq!(failing.status(), StatusCode::BAD_REQUEST, "a transform error is the sender's record's fault");
    let text = failing.text().await.expect("body");
    assert!(text.contains("transform `strip` failed"), "{text}");

    let messages = settle_messages(&broker, "/default/hooks").await;
    assert_eq!(messages.len(), 1, "only the kept event is published");
    let value: serde_json::Value = serde_json::from_slice(&messages[0].payload).expect("json");
    assert_eq!(value, serde_json::json!({"user": "ana", "amount": 5}));
    assert_eq!(messages[0].attributes.get("stripped").map(String::as_str), Some("password"));
    assert!(messages[0].attributes.contains_key("http.method"), "the connector's attributes stay");
    let metrics = client()
        .get(format!("http://127.0.0.1:{}/metrics", connector.process.ops_port))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let dropped_line = metrics
        .lines()
        .find(|l| l.starts_with("connector_transform_dropped_total") && l.contains("transform=\"strip\""))
        .unwrap_or_else(|| panic!("no drop metric: {metrics}"));
    assert!(dropped_line.ends_with(" 1"), "{dropped_line}");
}

#[test]
fn a_program_that_does_not_compile_fails_check_naming_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[connector]\n[[connector.endpoints]]\npath = \"/a\"\ntopic = \"/default/a\"\n\n[[transforms]]\nname = \"bad\"\nsource = \"\"\"\ndel(.a)\n.b = upcas(.c)\n\"\"\"\n",
    )
    .expect("write");
    let output = Command::new(BINARY)
        .args(["--check", "--config"])
        .arg(&file)
        .env_remove("CONNECTOR_CONFIG_FILE")
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "accepted: {stderr}");
    assert!(stderr.contains("transforms[0].source"), "{stderr}");
    assert!(stderr.contains("line 2, column 6"), "{stderr}");
    assert!(stderr.contains("upcas"), "VRL's diagnostic shows the source: {stderr}");

    // The same program, fixed, passes.
    std::fs::write(
        &file,
        "[connector]\n[[connector.endpoints]]\npath = \"/a\"\ntopic = \"/default/a\"\n\n[[transforms]]\nname = \"ok\"\nsource = \"del(.a)\"\n",
    )
    .expect("write");
    let output = Command::new(BINARY).args(["--check", "--config"]).arg(&file).output().expect("run");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}
