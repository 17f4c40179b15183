//! Embedded mode hardening: device logins, TLS, no open listener on a public address by
//! accident, and the cap on the Danube topics a mapping may create.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{binary, plain, start_connector, wait_for_numbers, TestClient};
use crate::embedded_mode::embedded_env;
use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};

/// How a connection attempt ended: the CONNACK code, or the error that ended it first.
async fn connect_outcome(options: MqttOptions) -> Result<ConnectReturnCode, String> {
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    let attempt = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => return Ok(ack.code),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt).await.unwrap_or_else(|_| Err("no answer in 10 s".into()))
}

fn options(port: u16, id: &str, login: Option<(&str, &str)>) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_with_users_refuses_anonymous_and_wrong_logins() {
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let port = free_port();
    let mut env = embedded_env(&danube, port, r#"[{filter="auth/#", topic="/default/auth"}]"#);
    env.insert("MQTT_EMBEDDED__USERS".into(), r#"{device1="s3cret-dev"}"#.into());
    let check = std::process::Command::new(binary()).arg("--check").envs(&env).output().expect("--check");
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{printed}{}", String::from_utf8_lossy(&check.stderr));
    assert!(printed.contains("device1") && !printed.contains("s3cret-dev"), "--check redacts passwords:\n{printed}");
    let connector = start_connector(&env).await;

    let anonymous = connect_outcome(options(port, "anon", None)).await;
    assert!(!matches!(anonymous, Ok(ConnectReturnCode::Success)), "anonymous client refused: {anonymous:?}");
    let wrong = connect_outcome(options(port, "wrong", Some(("device1", "guess")))).await;
    assert!(!matches!(wrong, Ok(ConnectReturnCode::Success)), "wrong password refused: {wrong:?}");
    let unknown = connect_outcome(options(port, "unknown", Some(("nobody", "s3cret-dev")))).await;
    assert!(!matches!(unknown, Ok(ConnectReturnCode::Success)), "unknown user refused: {unknown:?}");
    let right = connect_outcome(options(port, "right", Some(("device1", "s3cret-dev")))).await;
    assert_eq!(right, Ok(ConnectReturnCode::Success), "the configured login is accepted");

    // And what a logged-in device publishes arrives.
    let mut device = TestClient::connect_with(options(port, "device-auth", Some(("device1", "s3cret-dev"))));
    device.publish_many(10, QoS::AtLeastOnce, |i| ("auth/d1".to_string(), i.to_string().into_bytes())).await;
    let seen = wait_for_numbers(&danube, "/default/auth", 10, Duration::from_secs(20)).await;
    assert_eq!(seen.len(), 10, "{}", connector.log());
    assert!(!plain(&connector.log()).contains("s3cret-dev"), "the password is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_refuses_to_start_open_on_a_public_address() {
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let port = free_port();
    let mut env = embedded_env(&danube, port, r#"[{filter="open/#", topic="/default/open"}]"#);
    env.insert("MQTT_EMBEDDED__LISTEN".into(), format!("0.0.0.0:{port}"));

    let mut open = ConnectorProcess::spawn(binary(), &env).expect("spawn");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = open.try_wait() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still running:\n{}", open.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = plain(&open.log());
    assert!(!status.success(), "refused to start:\n{log}");
    assert!(log.contains("connector.embedded.allow_anonymous"), "the error names the field:\n{log}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens on the port");

    // The explicit opt-in makes the same configuration valid (checked without binding
    // 0.0.0.0: the tests stay on loopback).
    env.insert("MQTT_EMBEDDED__ALLOW_ANONYMOUS".into(), "true".into());
    let check = std::process::Command::new(binary()).arg("--check").envs(&env).output().expect("--check");
    assert!(check.status.success(), "allow_anonymous = true is accepted: {}", String::from_utf8_lossy(&check.stderr));
    // Users instead of the opt-in are accepted too.
    env.remove("MQTT_EMBEDDED__ALLOW_ANONYMOUS");
    env.insert("MQTT_EMBEDDED__USERS".into(), r#"{d="pw"}"#.into());
    let check = std::process::Command::new(binary()).arg("--check").envs(&env).output().expect("--check");
    assert!(check.status.success(), "users make it valid: {}", String::from_utf8_lossy(&check.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_speaks_tls_when_configured() {
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("certificate");
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).expect("write key");
    let port = free_port();
    let mut env = embedded_env(&danube, port, r#"[{filter="tls/#", topic="/default/tls"}]"#);
    env.insert("MQTT_EMBEDDED__USERS".into(), r#"{device1="tls-pw"}"#.into());
    env.insert(
        "MQTT_EMBEDDED__TLS".into(),
        format!(r#"{{cert="{}", key="{}"}}"#, cert_file.display(), key_file.display()),
    );
    let connector = start_connector(&env).await;

    // Plain MQTT on the TLS port gets no CONNACK.
    let plain_attempt = connect_outcome(options(port, "plain", Some(("device1", "tls-pw")))).await;
    assert!(plain_attempt.is_err(), "plain MQTT refused on the TLS port: {plain_attempt:?}");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("trust the test certificate");
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tls = options(port, "device-tls", Some(("device1", "tls-pw")));
    tls.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(client_config.clone()))));
    let mut anonymous = options(port, "anon-tls", None);
    anonymous.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(client_config))));
    let refused = connect_outcome(anonymous).await;
    assert!(!matches!(refused, Ok(ConnectReturnCode::Success)), "login still needed over TLS: {refused:?}");

    let mut device = TestClient::connect_with(tls);
    device.publish_many(10, QoS::AtLeastOnce, |i| ("tls/d1".to_string(), i.to_string().into_bytes())).await;
    let seen = wait_for_numbers(&danube, "/default/tls", 10, Duration::from_secs(20)).await;
    assert_eq!(seen.len(), 10, "messages arrive over TLS\n{}", connector.log());
}

/// Devices publishing on ever new MQTT topics cannot make a templated mapping open
/// producers without end: beyond `max_topics` messages go to the dead-letter topic, with
/// the reason; known topics keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_topic_cap_dead_letters_messages_for_further_topics() {
    let danube = EmbeddedBroker::start_default().await.expect("danube");
    let port = free_port();
    let env = embedded_env(&danube, port, r#"[{filter="cap/+", topic="/default/cap-{1}", max_topics=2}]"#);
    let connector = start_connector(&env).await;

    let mut device = TestClient::connect(port, "device-cap");
    for topic in ["cap/a", "cap/b", "cap/c", "cap/d", "cap/a"] {
        device.publish(topic, QoS::AtLeastOnce, false, topic.as_bytes().to_vec()).await;
    }
    let dlq = danube.wait_for_messages("/default/dlq-mqtt-embedded", 2, Duration::from_secs(20)).await;
    let a = danube.wait_for_messages("/default/cap-a", 2, Duration::from_secs(20)).await;
    assert_eq!(a.len(), 2, "a known topic keeps working past the cap\n{}", connector.log());
    assert_eq!(danube.messages("/default/cap-b").len(), 1);
    assert_eq!(danube.message_count("/default/cap-c"), 0, "no third topic");
    assert_eq!(danube.message_count("/default/cap-d"), 0, "no fourth topic");
    // Dead-letter records of different keys may be stored in either order.
    let refused: std::collections::BTreeSet<&[u8]> = dlq.iter().map(|m| &m.payload[..]).collect();
    assert_eq!(refused, [&b"cap/c"[..], &b"cap/d"[..]].into(), "each refused message is dead-lettered");
    for message in &dlq {
        let error = message.attributes.get("dlq.error").cloned().unwrap_or_default();
        assert!(error.contains("max_topics") && error.contains("mappings[0]"), "the reason: {error}");
        assert_eq!(message.attributes.get("dlq.error_kind").map(String::as_str), Some("topic_limit"));
    }
}
