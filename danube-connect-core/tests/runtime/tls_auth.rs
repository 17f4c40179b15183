//! TLS, mutual TLS and bearer tokens against the development broker with TLS on: the
//! certificates are generated per test (a throwaway CA, broker and client certificates).

use std::path::PathBuf;
use std::time::Duration;

use crate::common::{eventually, runtime_config, spawn_source, ScriptedSource};
use danube_connect_core::config::{RuntimeConfig, Secret};
use danube_connect_core::error::error_chain;
use danube_connect_core::{Runtime, SourceOffset, SourceRecord};
use danube_dev_broker::{AuthToken, BrokerConfig, EmbeddedBroker, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use tokio_util::sync::CancellationToken;

/// A throwaway certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        Self { cert, key }
    }

    /// A certificate for `purpose` signed by this CA: (certificate PEM, key PEM).
    fn issue(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }
}

/// The broker's CA, the broker's TLS settings and the PEM files a connector is given.
struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(ca_name: &str) -> Self {
        Self { ca: Ca::new(ca_name), dir: tempfile::tempdir().expect("tempdir") }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write pem");
        path
    }

    fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca.cert.pem())
    }

    /// Broker TLS; with `verify_clients`, client certificates signed by this CA are required.
    fn broker_tls(&self, verify_clients: bool) -> TlsConfig {
        let (cert, key) = self.ca.issue("danube-dev-broker", ExtendedKeyUsagePurpose::ServerAuth);
        TlsConfig {
            cert_pem: cert.into_bytes(),
            key_pem: key.into_bytes(),
            client_ca_pem: verify_clients.then(|| self.ca.cert.pem().into_bytes()),
        }
    }

    /// A client certificate and key signed by this CA, written to files.
    fn client_files(&self) -> (PathBuf, PathBuf) {
        let (cert, key) = self.ca.issue("connector", ExtendedKeyUsagePurpose::ClientAuth);
        (self.write("client.pem", &cert), self.write("client.key", &key))
    }
}

async fn tls_broker(tls: TlsConfig, token: Option<&str>) -> EmbeddedBroker {
    let broker = EmbeddedBroker::start(BrokerConfig {
        tls: Some(tls),
        auth_token: token.map(AuthToken::new),
        ..BrokerConfig::default()
    })
    .await
    .expect("broker");
    assert!(broker.url().starts_with("https://"), "{}", broker.url());
    broker
}

fn numbered(topic: &str, count: u64) -> Vec<SourceRecord> {
    (0..count).map(|i| SourceRecord::new(topic, format!("m{i}")).with_offset(SourceOffset::new("p", i))).collect()
}

/// Runs a source of `count` records with `config`, asserts every one reached the broker and
/// was committed, and that the run ends cleanly.
async fn publishes_through(broker: &EmbeddedBroker, config: RuntimeConfig, topic: &str, count: u64) {
    let source = ScriptedSource::new(vec![numbered(topic, count)]);
    let commits = source.commits.clone();
    let (token, run) = spawn_source(config, source).await;
    assert_eq!(broker.wait_for_messages(topic, count as usize, Duration::from_secs(15)).await.len(), count as usize);
    assert!(
        eventually(Duration::from_secs(10), || commits.lock().expect("lock").len() == count as usize).await,
        "every record committed after the broker acked it"
    );
    token.cancel();
    assert_eq!(run.await.expect("join").exit_code(), 0);
}

/// Starts a runtime that must fail; returns the error chain.
async fn start_fails(config: RuntimeConfig) -> String {
    match Runtime::start(config, CancellationToken::new()).await {
        Ok(_) => panic!("the runtime started although the broker must refuse it"),
        Err(error) => error_chain(&error),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_publishes_through_tls_verified_with_the_broker_ca() {
    let pki = Pki::new("danube-connect test CA");
    let broker = tls_broker(pki.broker_tls(false), None).await;
    let mut config = runtime_config("tls", &broker.url());
    // The old spelling (`danube.tls_ca`) still works.
    config.danube.tls_ca = Some(pki.ca_file());
    publishes_through(&broker, config, "/default/tls", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_fails_the_start_with_the_tls_cause() {
    let pki = Pki::new("danube-connect test CA");
    let broker = tls_broker(pki.broker_tls(false), None).await;
    let other = Pki::new("another CA");
    let mut config = runtime_config("wrong-ca", &broker.url());
    config.danube.tls.ca = Some(other.ca_file());
    config.danube.connect_timeout = Duration::from_secs(1);
    let error = start_fails(config).await;
    assert!(error.contains("invalid peer certificate: UnknownIssuer"), "names the TLS cause: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate_publishes() {
    let pki = Pki::new("danube-connect test CA");
    let broker = tls_broker(pki.broker_tls(true), None).await;
    let (cert, key) = pki.client_files();
    let mut config = runtime_config("mtls", &broker.url());
    config.danube.tls.ca = Some(pki.ca_file());
    config.danube.tls.client_cert = Some(cert);
    config.danube.tls.client_key = Some(key);
    publishes_through(&broker, config, "/default/mtls", 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_without_a_client_certificate_is_refused() {
    let pki = Pki::new("danube-connect test CA");
    let broker = tls_broker(pki.broker_tls(true), None).await;
    let mut config = runtime_config("no-client-cert", &broker.url());
    config.danube.tls.ca = Some(pki.ca_file());
    config.danube.connect_timeout = Duration::from_secs(1);
    let error = start_fails(config).await;
    // TLS 1.3: the broker refuses the handshake after the client finished it, so the client
    // sees its connection closed (or its first write hit the closed socket) on the first call.
    let closed = ["connection closed", "broken pipe", "Certificate"];
    assert!(closed.iter().any(|cause| error.contains(cause)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_and_a_token_file_are_accepted_by_a_broker_checking_tokens() {
    let pki = Pki::new("danube-connect test CA");
    let broker = tls_broker(pki.broker_tls(false), Some("connector-jwt")).await;
    let mut config = runtime_config("token", &broker.url());
    config.danube.tls.ca = Some(pki.ca_file());
    config.danube.token = Some(Secret::new("connector-jwt"));
    publishes_through(&broker, config, "/default/token", 10).await;

    let mut config = runtime_config("token-file", &broker.url());
    config.danube.tls.ca = Some(pki.ca_file());
    config.danube.token_file = Some(pki.write("token", "connector-jwt\n"));
    publishes_through(&broker, config, "/default/token-file", 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_at_start_with_an_error_naming_the_cause() {
    let pki = Pki::new("danube-connect test CA");
    let broker = tls_broker(pki.broker_tls(false), Some("connector-jwt")).await;
    let mut config = runtime_config("wrong-token", &broker.url());
    config.danube.tls.ca = Some(pki.ca_file());
    config.danube.token = Some(Secret::new("stale-jwt"));
    // Refused at once, not after retrying until connect_timeout (30 s here).
    let started = std::time::Instant::now();
    let error = start_fails(config.clone()).await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(error.contains("authentication credentials") && error.contains("invalid token"), "{error}");

    config.danube.token = None;
    config.danube.token_file = Some(pki.write("token", "stale-jwt"));
    let error = start_fails(config).await;
    assert!(error.contains("authentication credentials") && error.contains("invalid token"), "{error}");
}
