//! Shared test setup: an embedded broker, the connector binary, an HTTP client.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use danube_connect_testkit::ports::free_port;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;

pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_danube-http-source");

/// A running connector process with its config.
pub(crate) struct Connector {
    pub process: ConnectorProcess,
    pub port: u16,
    pub base: String,
    _dir: tempfile::TempDir,
}

/// Starts the connector against `broker` with `connector_toml` as the `[connector]`
/// section body (without the header) plus `env`.
pub(crate) async fn spawn(broker: &EmbeddedBroker, connector_toml: &str, env: &[(&str, &str)]) -> Connector {
    let dir = tempfile::tempdir().expect("tempdir");
    spawn_in(broker, connector_toml, env, dir).await
}

/// Like [`spawn`], reusing a directory (its files survive a restart).
pub(crate) async fn spawn_in(
    broker: &EmbeddedBroker,
    connector_toml: &str,
    env: &[(&str, &str)],
    dir: tempfile::TempDir,
) -> Connector {
    spawn_with(broker, connector_toml, env, dir, true).await
}

/// Starts the connector; with `ready`, waits for `/readyz` too (else only for the port).
pub(crate) async fn spawn_with(
    broker: &EmbeddedBroker,
    connector_toml: &str,
    env: &[(&str, &str)],
    dir: tempfile::TempDir,
    ready: bool,
) -> Connector {
    spawn_full(broker, connector_toml, env, dir, ready, free_port()).await
}

/// Like [`spawn_in`] on a given webhook port (a restart on the same address).
pub(crate) async fn spawn_on_port(
    broker: &EmbeddedBroker,
    connector_toml: &str,
    env: &[(&str, &str)],
    dir: tempfile::TempDir,
    port: u16,
) -> Connector {
    spawn_full(broker, connector_toml, env, dir, true, port).await
}

async fn spawn_full(
    broker: &EmbeddedBroker,
    connector_toml: &str,
    env: &[(&str, &str)],
    dir: tempfile::TempDir,
    ready: bool,
    port: u16,
) -> Connector {
    let config = dir.path().join("connector.toml");
    let text = format!(
        "name = \"http-test\"\n[connector]\nlisten = \"127.0.0.1:{port}\"\n{}\n",
        connector_toml.replace("$DIR", &dir.path().display().to_string())
    );
    std::fs::write(&config, text).expect("write config");
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("DANUBE_SERVICE_URL".into(), broker.url());
    vars.insert("CONNECTOR_CONFIG_FILE".into(), config.display().to_string());
    for (k, v) in env {
        vars.insert((*k).into(), (*v).into());
    }
    let mut process = ConnectorProcess::spawn(Path::new(BINARY), &vars).expect("spawn connector");
    if ready {
        process.wait_ready(Duration::from_secs(30)).await.expect("connector ready");
    }
    wait_listening(port, &process).await;
    Connector { process, port, base: format!("http://127.0.0.1:{port}"), _dir: dir }
}

/// Waits until the webhook port accepts connections.
pub(crate) async fn wait_listening(port: u16, process: &ConnectorProcess) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("webhook port {port} never opened: {}", process.log());
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client")
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// HMAC-SHA256 over the concatenation of `parts`, computed independently of the code under test.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Messages in `topic` after giving the broker a moment.
pub(crate) async fn settle_messages(broker: &EmbeddedBroker, topic: &str) -> Vec<danube_dev_broker::StoredMessage> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.messages(topic)
}
