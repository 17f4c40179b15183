//! Username/password and TLS to a real Mosquitto.

use std::time::Duration;

use crate::common::{client_env, plain, start_connector, wait_for_numbers};
use danube_connect_testkit::mosquitto::{Mosquitto, MosquittoOptions};
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;

/// Publishes `count` numbered QoS 1 messages with `mosquitto_pub` (extra args: TLS, login).
fn mosquitto_pub(port: u16, topic: &str, count: usize, extra: &[&str]) {
    let lines: String = (0..count).map(|n| format!("{n}\n")).collect();
    let mut child = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", topic, "-l"])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub (apt-get install -y mosquitto-clients)");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(lines.as_bytes()).expect("write lines");
    let status = child.wait().expect("mosquitto_pub exit");
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_protected_broker_needs_the_configured_credentials() {
    let options =
        MosquittoOptions { persistence: true, credentials: Some(("bridge".into(), "s3cret-pw".into())), tls: false };
    let mqtt = Mosquitto::start_with_options(&options).expect("mosquitto");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let mut env = client_env(&danube, mqtt.port(), "it-auth", r#"[{filter="auth/#", topic="/default/auth", qos=1}]"#);
    env.insert("MQTT_BROKER__USERNAME".into(), "bridge".into());

    // Wrong password: the broker refuses the connection, the connector keeps retrying and
    // does not report ready.
    env.insert("MQTT_BROKER__PASSWORD".into(), "wrong".into());
    let mut refused = ConnectorProcess::spawn(crate::common::binary(), &env).expect("spawn");
    assert!(refused.wait_ready(Duration::from_secs(3)).await.is_err(), "not ready with a wrong password");
    let log = plain(&refused.log());
    assert!(log.contains("MQTT connection lost"), "the refusal is logged:\n{log}");
    assert!(!log.contains("wrong"), "the password is never logged:\n{log}");
    refused.kill9();

    env.insert("MQTT_BROKER__PASSWORD".into(), "s3cret-pw".into());
    let check =
        std::process::Command::new(crate::common::binary()).arg("--check").envs(&env).output().expect("--check");
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && !printed.contains("s3cret-pw"), "--check redacts the password:\n{printed}");

    let _connector = start_connector(&env).await;
    mosquitto_pub(mqtt.port(), "auth/d1", 20, &["-u", "bridge", "-P", "s3cret-pw"]);
    let seen = wait_for_numbers(&danube, "/default/auth", 20, Duration::from_secs(20)).await;
    assert_eq!(seen.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_broker_is_reached_with_the_configured_ca() {
    let options = MosquittoOptions { persistence: true, credentials: None, tls: true };
    let mqtt = Mosquitto::start_with_options(&options).expect("mosquitto with TLS");
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let ca = mqtt.ca_file().display().to_string();
    let mut env = client_env(&danube, mqtt.port(), "it-tls", r#"[{filter="tls/#", topic="/default/tls", qos=1}]"#);
    env.insert("MQTT_BROKER__TLS".into(), format!(r#"{{ca="{ca}"}}"#));
    let _connector = start_connector(&env).await;

    mosquitto_pub(mqtt.port(), "tls/d1", 20, &["--cafile", &ca]);
    let seen = wait_for_numbers(&danube, "/default/tls", 20, Duration::from_secs(20)).await;
    assert_eq!(seen.len(), 20, "messages arrive over TLS");
}
