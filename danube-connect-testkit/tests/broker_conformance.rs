//! The development broker against the real one: each test body runs on both brokers
//! (`BrokerKind::all`), so a behaviour of the real Danube broker that the development broker
//! does not copy fails here. Known differences that cannot be copied are listed in the dev
//! broker's crate docs.

use std::collections::HashSet;
use std::time::Duration;

use danube_client::{DanubeClient, ProducerOptions};
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::{reliable_producers, TopicReader};

async fn client(broker: &TestBroker) -> DanubeClient {
    DanubeClient::builder().service_url(broker.url()).build().await.expect("client")
}

/// Creates a producer on `topic` and returns the error text, or `None` when it was created.
async fn producer_error(broker: &TestBroker, topic: &str, reliable: bool) -> Option<String> {
    let client = client(broker).await;
    let mut builder = client
        .new_producer()
        .with_topic(topic.to_string())
        .with_name(format!("p-{}", topic.replace('/', "_")))
        .with_options(ProducerOptions::new(0, 50, 100));
    if reliable {
        builder = builder.with_reliable_dispatch();
    }
    let mut producer = builder.build().expect("build producer");
    match tokio::time::timeout(Duration::from_secs(15), producer.create()).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("timed out".into()),
    }
}

#[tokio::test]
async fn published_messages_arrive_once_each() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let topic = "/default/conformance-delivery";
        let producers = reliable_producers(broker.url(), topic, "raw", 4).await.expect("producers");
        let reader = TopicReader::subscribe(broker.url(), topic, "check").await.expect("reader");
        let mut producers = producers;
        for i in 0..400u32 {
            let producer = &mut producers[i as usize % 4];
            producer.send(format!("m-{i}").into_bytes(), None).await.expect("send");
        }
        let got = reader.wait_for(400, Duration::from_secs(30)).await;
        let distinct: HashSet<_> = got.iter().map(|m| m.payload.clone()).collect();
        assert_eq!(distinct.len(), 400, "{kind}: distinct messages received");
        assert_eq!(got.len(), 400, "{kind}: no duplicates without failures");
    }
}

#[tokio::test]
async fn topic_names_accept_letters_digits_dash_and_underscore_only() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        assert_eq!(producer_error(&broker, "/default/ok_name-1", true).await, None, "{kind}");
        let refused = producer_error(&broker, "/default/public.users", true).await.expect("a dot is refused");
        assert!(refused.contains("invalid format"), "{kind}: {refused}");
    }
}

#[tokio::test]
async fn a_topic_whose_name_prefixes_an_existing_topic_cannot_be_created() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        assert_eq!(producer_error(&broker, "/default/sib-a", true).await, None, "{kind}");
        let refused = producer_error(&broker, "/default/sib", true).await.expect("prefix of sib-a is refused");
        assert!(refused.contains("partitioned topics with this base name"), "{kind}: {refused}");
        // Not only `X-...`: any name that starts with X blocks X.
        assert_eq!(producer_error(&broker, "/default/pfxlonger", true).await, None, "{kind}");
        let refused = producer_error(&broker, "/default/pfx", true).await.expect("prefix of pfxlonger is refused");
        assert!(refused.contains("partitioned topics with this base name"), "{kind}: {refused}");
        // The other order is fine: the shorter name first.
        assert_eq!(producer_error(&broker, "/default/short", true).await, None, "{kind}");
        assert_eq!(producer_error(&broker, "/default/short-dlq", true).await, None, "{kind}");
    }
}

#[tokio::test]
async fn a_reliable_producer_on_a_non_reliable_topic_is_refused() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        assert_eq!(producer_error(&broker, "/default/fire-and-forget", false).await, None, "{kind}");
        let refused = producer_error(&broker, "/default/fire-and-forget", true).await.expect("mismatch is refused");
        assert!(refused.contains("dispatch strategy does not match"), "{kind}: {refused}");
    }
}

#[tokio::test]
async fn a_new_subscription_starts_at_the_end_and_a_durable_one_keeps_what_came_while_away() {
    for kind in BrokerKind::all() {
        let mut broker = TestBroker::start_persistent(kind).await.expect("broker");
        let topic = "/default/conformance-durable";
        let producers = reliable_producers(broker.url(), topic, "raw", 1).await.expect("producers");
        producers[0].send(b"before".to_vec(), None).await.expect("send");
        {
            let reader = TopicReader::subscribe(broker.url(), topic, "durable").await.expect("reader");
            producers[0].send(b"first".to_vec(), None).await.expect("send");
            let got = reader.wait_for(1, Duration::from_secs(15)).await;
            assert_eq!(got.len(), 1, "{kind}: only the message after subscribing");
            assert_eq!(&got[0].payload[..], b"first", "{kind}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for i in 0..20 {
            producers[0].send(format!("away-{i}").into_bytes(), None).await.expect("send");
        }
        // An outage while nobody consumes: a dev-broker restart, a real-broker freeze.
        broker.outage(Duration::from_secs(2)).await.expect("outage");
        let reader = TopicReader::subscribe(broker.url(), topic, "durable").await.expect("re-subscribe");
        let got = reader.wait_for(20, Duration::from_secs(30)).await;
        let payloads: HashSet<String> = got.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
        for i in 0..20 {
            assert!(payloads.contains(&format!("away-{i}")), "{kind}: away-{i} missing: {payloads:?}");
        }
        assert!(!payloads.contains("before"), "{kind}: a message from before the subscription was delivered");
    }
}

/// Danube v0.15.1 cannot restart on its own data once it has taken its first Raft snapshot
/// (1,000 metadata log entries; an idle standalone broker writes about 200 a second). This
/// documents the defect (docs/running-on-danube.md) and fails once a fixed broker is used.
#[tokio::test]
async fn real_broker_cannot_restart_on_its_data_after_its_first_raft_snapshot() {
    for kind in BrokerKind::real_only() {
        let TestBroker::Real(mut broker) = TestBroker::start(kind).await.expect("broker") else { unreachable!() };
        if broker.is_external() {
            eprintln!("RESTART DEFECT NOT CHECKED: the broker given by DANUBE_BROKER_URL is not ours to restart");
            continue;
        }
        tokio::time::sleep(Duration::from_secs(12)).await;
        let restarted = broker.restart().await;
        let error = restarted.expect_err("a restart after 12 s of uptime fails on Danube v0.15.1");
        assert!(error.to_string().contains("Failed to get log entries"), "{error}");
    }
}

#[tokio::test]
async fn partitioned_topics_are_created_by_the_producer_and_read_across_every_partition() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let topic = "/default/conformance-parts";
        let client = client(&broker).await;
        let mut producer = client
            .new_producer()
            .with_topic(topic.to_string())
            .with_name("parts")
            .with_partitions(3)
            .with_reliable_dispatch()
            .build()
            .expect("build producer");
        producer.create().await.expect("partitions created by the producer");
        let reader = TopicReader::subscribe(broker.url(), topic, "all-parts").await.expect("reader");
        for i in 0..60 {
            producer.send(format!("k-{i}").into_bytes(), None).await.expect("send");
        }
        let got = reader.wait_for(60, Duration::from_secs(30)).await;
        let partitions: HashSet<String> = got.iter().map(|m| m.msg_id.topic_name.clone()).collect();
        assert_eq!(got.len(), 60, "{kind}: every message from every partition");
        assert_eq!(partitions.len(), 3, "{kind}: messages spread over the partitions: {partitions:?}");
        assert!(partitions.iter().all(|p| p.starts_with("/default/conformance-parts-part-")), "{kind}: {partitions:?}");
        // The base name is now taken by its partitions: a plain topic of that name is refused.
        let refused = producer_error(&broker, topic, true).await.expect("plain topic over partitions is refused");
        assert!(refused.contains("partitioned topics with this base name"), "{kind}: {refused}");
    }
}

#[tokio::test]
async fn a_request_over_4_mib_is_refused_with_out_of_range_whatever_max_message_size_says() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let topic = "/default/conformance-size";
        let mut producers = reliable_producers(broker.url(), topic, "size", 1).await.expect("producer");
        let producer = &mut producers[0];
        producer.send(vec![b'a'; 3 * 1024 * 1024], None).await.expect("3 MiB fits");
        let refused = producer.send(vec![b'b'; 4 * 1024 * 1024 + 1], None).await.expect_err("over 4 MiB");
        let code = refused.extract_status().map(|s| s.code());
        assert_eq!(code, Some(tonic::Code::OutOfRange), "{kind}: {refused}");
    }
}

#[tokio::test]
async fn the_registry_answers_a_definition_wrapped_in_danubes_schema_definition_json() {
    use danube_client::SchemaType;
    const DEFINITION: &str = r#"{"type":"object","properties":{"id":{"type":"integer"}}}"#;
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let client = client(&broker).await;
        let registry = client.schema();
        let id = registry
            .register_schema("conformance-wrapped")
            .with_type(SchemaType::JsonSchema)
            .with_schema_data(DEFINITION.as_bytes())
            .execute()
            .await
            .expect("register");
        for answer in [
            registry.get_latest_schema("conformance-wrapped").await.expect("latest").schema_definition,
            registry.get_schema_version(id, Some(1)).await.expect("by id").schema_definition,
        ] {
            let wrapped: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
            assert_eq!(wrapped["JsonSchema"]["raw_schema"], DEFINITION, "{kind}: {wrapped}");
            assert!(wrapped["JsonSchema"]["fingerprint"].is_string(), "{kind}: {wrapped}");
        }
    }
}
