//! Bearer-token checking over real gRPC: what `danube-client` 0.16 sends
//! (`authorization: Bearer <token>`) is accepted, anything else is `Unauthenticated`.

use danube_core::proto::discovery_client::DiscoveryClient;
use danube_core::proto::TopicLookupRequest;
use danube_dev_broker::{AuthToken, BrokerConfig, EmbeddedBroker};

async fn partitions(broker: &EmbeddedBroker, authorization: Option<&str>) -> Result<(), tonic::Status> {
    let mut client = DiscoveryClient::connect(broker.url()).await.expect("connect");
    let mut request = tonic::Request::new(TopicLookupRequest { request_id: 1, topic: "/default/auth".into() });
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.parse().expect("ascii"));
    }
    client.topic_partitions(request).await.map(|_| ())
}

#[tokio::test]
async fn calls_without_the_configured_bearer_token_are_unauthenticated() {
    let broker = EmbeddedBroker::start(BrokerConfig {
        auth_token: Some(AuthToken::new("dev-token")),
        ..BrokerConfig::default()
    })
    .await
    .expect("broker");
    partitions(&broker, Some("Bearer dev-token")).await.expect("the configured token is accepted");
    let missing = partitions(&broker, None).await.expect_err("no token");
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    assert!(missing.message().contains("missing"), "{missing:?}");
    let wrong = partitions(&broker, Some("Bearer other")).await.expect_err("wrong token");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(wrong.message().contains("invalid token"), "{wrong:?}");
}

#[tokio::test]
async fn without_a_configured_token_calls_need_no_authorization() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    partitions(&broker, None).await.expect("plaintext, no auth by default");
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

async fn partitions_at(url: &str, authorization: Option<&str>) -> Result<(), tonic::Status> {
    let mut client = DiscoveryClient::connect(url.to_string()).await.expect("connect");
    let mut request = tonic::Request::new(TopicLookupRequest { request_id: 1, topic: "/default/auth".into() });
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value.parse().expect("ascii"));
    }
    client.topic_partitions(request).await.map(|_| ())
}

/// The broker binary started with `args` and `env`; killed on drop.
struct BrokerProcess(std::process::Child);

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn spawn_binary(port: u16, args: &[&str], env: &[(&str, &str)]) -> BrokerProcess {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_danube-dev-broker"));
    command.arg("--listen").arg(format!("127.0.0.1:{port}")).args(args);
    command.env_remove("DANUBE_DEV_BROKER_AUTH_TOKEN").env_remove("DANUBE_DEV_BROKER_AUTH_TOKEN_FILE");
    command.envs(env.iter().copied()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let process = BrokerProcess(command.spawn().expect("spawn danube-dev-broker"));
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return process;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("danube-dev-broker did not listen on {port}");
}

/// The token can come from a file (or an environment variable), not only the command line
/// where every local user could read it.
#[tokio::test]
async fn the_binary_reads_its_token_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "file-token\n").expect("write token");
    let file = file.display().to_string();
    for (args, env, token) in [
        (vec!["--auth-token-file", file.as_str()], vec![], "file-token"),
        (vec![], vec![("DANUBE_DEV_BROKER_AUTH_TOKEN_FILE", file.as_str())], "file-token"),
        (vec![], vec![("DANUBE_DEV_BROKER_AUTH_TOKEN", "env-token")], "env-token"),
    ] {
        let port = free_port();
        let _broker = spawn_binary(port, &args, &env).await;
        let url = format!("http://127.0.0.1:{port}");
        partitions_at(&url, Some(&format!("Bearer {token}"))).await.expect("the token is accepted");
        let missing = partitions_at(&url, None).await.expect_err("no token");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated, "{args:?} {env:?}");
        let wrong = partitions_at(&url, Some("Bearer not-the-token")).await.expect_err("wrong token");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    }
    // Both a token and a token file: refused.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_danube-dev-broker"))
        .args(["--auth-token", "a", "--auth-token-file", file.as_str(), "--listen", "127.0.0.1:9"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("auth-token-file"));
    // An empty file: refused with a message.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_danube-dev-broker"))
        .args(["--auth-token-file", &empty.display().to_string(), "--listen", "127.0.0.1:9"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("empty"), "{}", String::from_utf8_lossy(&output.stderr));
}
