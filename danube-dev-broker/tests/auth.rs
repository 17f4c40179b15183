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
