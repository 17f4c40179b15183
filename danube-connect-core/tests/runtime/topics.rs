//! Topics on both brokers (`DANUBE_BROKER_BIN` adds the real one): what Danube refuses stops
//! the start with the topic and the fix, known topics are created shorter names first, and
//! partitioned topics keep per-key order.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{runtime_config, spawn_source, ScriptedSource};
use danube_client::DanubeClient;
use danube_connect_core::{Parts, PublishError, Runtime, RuntimeError, SourceOffset, SourceRecord};
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::TopicReader;
use tokio_util::sync::CancellationToken;

/// Creates `topic` with a non-reliable producer, as a fire-and-forget client would.
async fn create_non_reliable(url: &str, topic: &str) {
    let client = DanubeClient::builder().service_url(url.to_string()).build().await.expect("client");
    let mut producer =
        client.new_producer().with_topic(topic.to_string()).with_name("fire-and-forget").build().expect("producer");
    producer.create().await.expect("non-reliable topic created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_of_the_other_dispatch_strategy_stops_the_start_naming_topic_and_fix() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        create_non_reliable(&broker.url(), "/default/dlq-mismatch").await;
        let config = runtime_config("mismatch", &broker.url());
        let runtime = Runtime::start(config, CancellationToken::new()).await.expect("runtime starts");
        let run = runtime.run(Parts::new().with_pull(ScriptedSource::new(Vec::new())));
        let error = tokio::time::timeout(Duration::from_secs(30), run).await.expect("no hang").expect_err("refused");
        let RuntimeError::Publish(PublishError::TopicRefused { topic, fix, .. }) = &error else {
            panic!("{kind}: expected a topic refusal, got {error:?}");
        };
        assert_eq!(topic, "/default/dlq-mismatch", "{kind}");
        assert!(fix.contains("dispatch strategy"), "{kind}: {fix}");
        let text = danube_connect_core::error::error_chain(&error);
        assert!(text.contains("/default/dlq-mismatch") && text.contains("source.reliable"), "{kind}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_known_at_start_are_created_shorter_names_first() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let runtime = Runtime::start(runtime_config("ordering", &broker.url()), CancellationToken::new())
            .await
            .expect("runtime starts");
        // In the other order Danube would refuse `/default/wave` for good.
        let topics = ["/default/wave-longer".to_string(), "/default/wave".to_string(), "/default/wavex".to_string()];
        let pending = runtime.publisher().prepare_all(topics, Duration::from_secs(10)).await.expect("prepared");
        assert!(pending.is_empty(), "{kind}: {pending:?}");
        for topic in ["/default/wave", "/default/wave-longer", "/default/wavex"] {
            runtime.publisher().publish(SourceRecord::new(topic, "x")).await.unwrap_or_else(|e| {
                panic!("{kind}: publish to {topic}: {}", danube_connect_core::error::error_chain(&e))
            });
        }
    }
}

/// A source's own static topics are created at start, shorter names first, although its
/// first record goes to the longer one: in arrival order Danube would refuse the shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_topics_at_start_exist_before_its_first_record() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let (short, long) = ("/default/mapped", "/default/mapped-all");
        let mut source = ScriptedSource::new(vec![
            vec![SourceRecord::new(long, "first").with_offset(SourceOffset::new("p", 1))],
            vec![SourceRecord::new(short, "second").with_offset(SourceOffset::new("p", 2))],
        ]);
        source.topics_at_start = vec![long.to_string(), short.to_string()];
        let commits = source.commits.clone();
        let (token, run) = spawn_source(runtime_config("mapped", &broker.url()), source).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while commits.lock().expect("lock").len() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        token.cancel();
        let report = run.await.expect("join");
        assert_eq!(commits.lock().expect("lock").len(), 2, "{kind}: both records acked");
        assert!(report.fatal.is_none(), "{kind}: {report:?}");
        // Both topics exist, so a new publisher can write to the shorter one.
        let runtime = Runtime::start(runtime_config("mapped-check", &broker.url()), CancellationToken::new())
            .await
            .expect("runtime starts");
        runtime
            .publisher()
            .publish(SourceRecord::new(short, "third"))
            .await
            .unwrap_or_else(|e| panic!("{kind}: publish to {short}: {}", danube_connect_core::error::error_chain(&e)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_clashing_with_another_topics_name_fails_its_records_at_once_with_the_fix() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let runtime = Runtime::start(runtime_config("clash", &broker.url()), CancellationToken::new())
            .await
            .expect("runtime starts");
        let publisher = runtime.publisher();
        publisher.publish(SourceRecord::new("/default/clash-b", "x")).await.expect("first topic");
        let started = std::time::Instant::now();
        let error = publisher.publish(SourceRecord::new("/default/clash", "y")).await.expect_err("refused");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{kind}: a permanent refusal is not retried until the publish timeout"
        );
        let PublishError::TopicRefused { topic, fix, .. } = &error else {
            panic!("{kind}: expected a topic refusal, got {error:?}");
        };
        assert_eq!(topic, "/default/clash", "{kind}");
        assert!(fix.contains("starts with this one"), "{kind}: {fix}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_source_topic_spreads_records_and_keeps_per_key_order() {
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker");
        let topic = "/default/parted";
        let mut config = runtime_config("parted", &broker.url());
        config.source.partitions.insert(topic.to_string(), 3);
        // The runtime creates the partitioned topic at start; subscribe before any record.
        let runtime = Runtime::start(config.clone(), CancellationToken::new()).await.expect("runtime starts");
        drop(runtime);
        let reader = TopicReader::subscribe(broker.url(), topic, "check").await.expect("reader");
        let records: Vec<SourceRecord> = (0..300u64)
            .map(|i| {
                SourceRecord::new(topic, format!("{}:{i}", i % 10))
                    .with_key(format!("k{}", i % 10))
                    .with_offset(SourceOffset::new("p", i))
            })
            .collect();
        let (token, run) = spawn_source(config, ScriptedSource::new(vec![records])).await;
        let got = reader.wait_for(300, Duration::from_secs(30)).await;
        assert_eq!(got.len(), 300, "{kind}: every record arrived");
        let mut partition_of_key: HashMap<String, String> = HashMap::new();
        let mut last: HashMap<String, u64> = HashMap::new();
        for message in &got {
            let text = String::from_utf8_lossy(&message.payload).into_owned();
            let (key, n) = text.split_once(':').expect("key:n");
            let n: u64 = n.parse().expect("n");
            let partition = message.msg_id.topic_name.clone();
            assert!(partition.starts_with("/default/parted-part-"), "{kind}: {partition}");
            let first = partition_of_key.entry(key.to_string()).or_insert_with(|| partition.clone());
            assert_eq!(first, &partition, "{kind}: key {key} stays on one partition");
            if let Some(previous) = last.insert(key.to_string(), n) {
                assert!(previous < n, "{kind}: key {key}: {n} arrived after {previous}");
            }
        }
        let used: std::collections::HashSet<&String> = partition_of_key.values().collect();
        assert!(used.len() > 1, "{kind}: ten keys spread over more than one partition");
        token.cancel();
        run.await.expect("join");
    }
}
