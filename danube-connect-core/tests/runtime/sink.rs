//! Sink side over real gRPC against the embedded broker: acks only after `Ok`, batching
//! by size and by linger under the dispatch window, failure policies, retries.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{eventually, runtime_config, spawn_sink, with_topics, Behaviour, RecordingSink};
use danube_connect_core::config::FailurePolicy;
use danube_dev_broker::EmbeddedBroker;

/// Lets the connector subscribe: a new subscription starts at the end of the topic, so
/// records published before it exists would not be delivered to it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

fn publish_n(broker: &EmbeddedBroker, topic: &str, n: usize) {
    for i in 0..n {
        broker.publish(topic, format!("r{i}").into_bytes(), HashMap::new(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_acked_only_after_process_returned_ok() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/ack-after-ok";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let sink = RecordingSink::new(Behaviour::Accept);
    let (token, run) = spawn_sink(with_topics(runtime_config("ackok", &broker.url()), &[topic]), sink.clone()).await;
    settle().await;
    publish_n(&broker, topic, 50);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "ackok") == 50).await);
    let accepted = sink.accepted_payloads();
    assert_eq!(accepted.len(), 50);
    assert!((0..50).all(|i| accepted.contains(&format!("r{i}"))));
    token.cancel();
    assert_eq!(run.await.expect("join").exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failure_is_retried_then_acked_and_not_acked_before() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/retry-sink";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let mut config = with_topics(runtime_config("retrysink", &broker.url()), &[topic]);
    config.retry.max_attempts = 10;
    config.retry.initial_backoff = Duration::from_millis(200);
    config.retry.max_backoff = Duration::from_millis(200);
    let sink = RecordingSink::new(Behaviour::FailRetryable(3));
    let (token, run) = spawn_sink(config, sink.clone()).await;
    settle().await;
    publish_n(&broker, topic, 1);
    assert!(eventually(Duration::from_secs(15), || *sink.calls.lock().expect("lock") >= 1).await);
    // While the sink is failing, nothing is acked.
    assert_eq!(broker.ack_count(topic, "retrysink"), 0);
    assert!(eventually(Duration::from_secs(15), || broker.ack_count(topic, "retrysink") == 1).await);
    assert!(*sink.calls.lock().expect("lock") >= 4, "three failures then a success");
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_cut_at_max_records() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/batch-size";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let mut config = with_topics(runtime_config("bsize", &broker.url()), &[topic]);
    config.sink.batch.max_records = 5;
    config.sink.batch.linger = Duration::from_secs(30);
    let sink = RecordingSink::new(Behaviour::Accept);
    let (token, run) = spawn_sink(config, sink.clone()).await;
    settle().await;
    publish_n(&broker, topic, 20);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "bsize") >= 20).await);
    let sizes: Vec<usize> = sink.batches.lock().expect("lock").iter().map(Vec::len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 20);
    assert_eq!(sizes.iter().filter(|s| **s == 5).count(), 4, "four full batches of 5: {sizes:?}");
    assert!(sizes.iter().all(|s| *s <= 5), "{sizes:?}");
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linger_flushes_batches_under_the_default_dispatch_window_of_ten() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/batch-linger";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let mut config = with_topics(runtime_config("blinger", &broker.url()), &[topic]);
    // Bigger than the broker's window: only the timer can flush.
    config.sink.batch.max_records = 100;
    config.sink.batch.linger = Duration::from_millis(300);
    let sink = RecordingSink::new(Behaviour::Accept);
    let (token, run) = spawn_sink(config, sink.clone()).await;
    settle().await;
    publish_n(&broker, topic, 35);
    assert!(eventually(Duration::from_secs(30), || broker.ack_count(topic, "blinger") >= 35).await);
    let sizes: Vec<usize> = sink.batches.lock().expect("lock").iter().map(Vec::len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 35);
    assert!(sizes.iter().all(|s| *s <= 10), "the window of 10 bounds every batch: {sizes:?}");
    assert!(sizes.iter().any(|s| *s > 1), "linger gathered several records: {sizes:?}");
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_record_is_dead_lettered_with_its_error_and_the_rest_is_written() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/dlq-src";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let mut config = with_topics(runtime_config("dlqsink", &broker.url()), &[topic]);
    config.sink.batch.max_records = 10;
    config.sink.batch.linger = Duration::from_millis(100);
    let sink = RecordingSink::new(Behaviour::RejectBad);
    let (token, run) = spawn_sink(config, sink.clone()).await;
    settle().await;
    let mut attrs = HashMap::new();
    attrs.insert("origin".to_string(), "test".to_string());
    broker.publish(topic, b"good-1".to_vec(), HashMap::new(), None);
    let bad_offset = broker.publish(topic, b"bad".to_vec(), attrs, Some("key-1".into()));
    broker.publish(topic, b"good-2".to_vec(), HashMap::new(), None);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "dlqsink") >= 3).await);
    let dead = broker.wait_for_messages("/default/dlq-dlqsink", 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.payload.as_ref(), b"bad");
    assert_eq!(d.attributes.get("origin").map(String::as_str), Some("test"), "original attributes kept");
    assert!(d.attributes.get("dlq.error").is_some_and(|e| e.contains("payload is bad")), "{:?}", d.attributes);
    assert_eq!(d.attributes.get("dlq.error_kind").map(String::as_str), Some("invalid"));
    assert_eq!(d.attributes.get("dlq.connector").map(String::as_str), Some("dlqsink"));
    assert_eq!(d.attributes.get("dlq.source_topic").map(String::as_str), Some(topic));
    assert_eq!(d.attributes.get("dlq.source_offset"), Some(&bad_offset.to_string()));
    assert_eq!(d.attributes.get("dlq.attempts").map(String::as_str), Some("1"));
    assert_eq!(d.routing_key.as_deref(), Some("key-1"));
    let accepted = sink.accepted_payloads();
    assert!(accepted.contains(&"good-1".to_string()) && accepted.contains(&"good-2".to_string()));
    assert!(!accepted.contains(&"bad".to_string()));
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_follow_the_nack_policy_and_the_record_stays_unacked() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/nack-policy";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let mut config = with_topics(runtime_config("nacker", &broker.url()), &[topic]);
    config.failure.policy = FailurePolicy::Nack;
    config.failure.nack_delay = Duration::from_millis(200);
    config.retry.max_attempts = 2;
    let sink = RecordingSink::new(Behaviour::FailRetryable(usize::MAX));
    let (token, run) = spawn_sink(config, sink.clone()).await;
    settle().await;
    publish_n(&broker, topic, 1);
    // The record is processed, nacked, redelivered, processed again — never acked.
    assert!(eventually(Duration::from_secs(20), || *sink.calls.lock().expect("lock") >= 4).await);
    assert_eq!(broker.ack_count(topic, "nacker"), 0);
    assert!(broker.messages("/default/dlq-nacker").is_empty(), "nack policy does not dead-letter");
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_policy_exits_non_zero_without_acking() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/stop-policy";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let mut config = with_topics(runtime_config("stopper", &broker.url()), &[topic]);
    config.failure.policy = FailurePolicy::Stop;
    config.retry.max_attempts = 2;
    let sink = RecordingSink::new(Behaviour::FailRetryable(usize::MAX));
    let (_token, run) = spawn_sink(config, sink.clone()).await;
    settle().await;
    publish_n(&broker, topic, 1);
    let report = tokio::time::timeout(Duration::from_secs(30), run).await.expect("stops by itself").expect("join");
    assert_eq!(report.exit_code(), 2);
    assert_eq!(broker.ack_count(topic, "stopper"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_error_stops_the_connector_without_acking() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/fatal";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let sink = RecordingSink::new(Behaviour::Fatal);
    let (_token, run) = spawn_sink(with_topics(runtime_config("fatal", &broker.url()), &[topic]), sink).await;
    settle().await;
    publish_n(&broker, topic, 1);
    let report = tokio::time::timeout(Duration::from_secs(30), run).await.expect("stops").expect("join");
    assert!(report.fatal.is_some());
    assert_eq!(broker.ack_count(topic, "fatal"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_topic_does_not_stall_the_others() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let slow = "/default/slow-topic";
    let fast = "/default/fast-topic";
    broker.publish(slow, b"create".to_vec(), HashMap::new(), None);
    broker.publish(fast, b"create".to_vec(), HashMap::new(), None);

    /// Blocks on the slow topic until released.
    #[derive(Clone)]
    struct Gate {
        release: std::sync::Arc<tokio::sync::Notify>,
        fast_seen: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }
    #[danube_connect_core::async_trait]
    impl danube_connect_core::Sink for Gate {
        async fn process(&self, record: &danube_connect_core::SinkRecord) -> danube_connect_core::ConnectorResult<()> {
            if record.topic.contains("slow") {
                self.release.notified().await;
            } else {
                self.fast_seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
    }
    let gate = Gate { release: Default::default(), fast_seen: Default::default() };
    let (token, run) =
        spawn_sink(with_topics(runtime_config("slowfast", &broker.url()), &[slow, fast]), gate.clone()).await;
    settle().await;
    publish_n(&broker, slow, 5);
    publish_n(&broker, fast, 20);
    assert!(
        eventually(Duration::from_secs(15), || gate.fast_seen.load(std::sync::atomic::Ordering::SeqCst) >= 20).await,
        "fast topic flowed while the slow one was blocked"
    );
    assert_eq!(broker.ack_count(slow, "slowfast"), 0);
    gate.release.notify_waiters();
    for _ in 0..20 {
        gate.release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_resumes_after_a_broker_restart_and_loses_nothing() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/sink-restart";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let mut config = with_topics(runtime_config("sinkrestart", &broker.url()), &[topic]);
    config.retry.max_attempts = 20;
    let sink = RecordingSink::new(Behaviour::Accept);
    let (token, run) = spawn_sink(config, sink.clone()).await;
    settle().await;
    publish_n(&broker, topic, 20);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "sinkrestart") >= 20).await);
    broker.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.restart().await.expect("restart");
    for i in 20..40 {
        broker.publish(topic, format!("r{i}").into_bytes(), HashMap::new(), None);
    }
    assert!(
        eventually(Duration::from_secs(60), || {
            let accepted = sink.accepted_payloads();
            (0..40).all(|i| accepted.contains(&format!("r{i}")))
        })
        .await,
        "every record reached the sink after the restart"
    );
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_policy_leaves_every_record_after_the_failed_one_unacked() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/stop-order";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let mut config = with_topics(runtime_config("stop-order", &broker.url()), &[topic]);
    config.failure.policy = FailurePolicy::Stop;
    config.sink.batch.linger = Duration::from_millis(300);
    let sink = RecordingSink::new(Behaviour::RejectBad);
    let (_token, run) = spawn_sink(config, sink.clone()).await;
    settle().await;
    for payload in ["a", "bad", "c", "d", "e"] {
        broker.publish(topic, payload.as_bytes().to_vec(), HashMap::new(), None);
    }
    let report = tokio::time::timeout(Duration::from_secs(30), run).await.expect("stops by itself").expect("join");
    assert_eq!(report.exit_code(), 2, "stopped by the invalid record");
    assert!(sink.accepted_payloads().contains(&"a".to_string()), "the record before the failure was written");
    assert_eq!(
        broker.ack_count(topic, "stop-order"),
        1,
        "only the record before the failed one is acked; the later ones wait for the restart"
    );
}

/// Fails the record `hint` of its first batch with a `retry_after` hint; records when
/// each record was handed over.
#[derive(Clone, Default)]
struct RetryAfterSink {
    calls: std::sync::Arc<std::sync::Mutex<Vec<(String, std::time::Instant)>>>,
}

#[danube_connect_core::async_trait]
impl danube_connect_core::Sink for RetryAfterSink {
    async fn process(&self, record: &danube_connect_core::SinkRecord) -> danube_connect_core::ConnectorResult<()> {
        self.process_batch(std::slice::from_ref(record)).await
    }

    async fn process_batch(
        &self,
        records: &[danube_connect_core::SinkRecord],
    ) -> danube_connect_core::ConnectorResult<()> {
        let mut calls = self.calls.lock().expect("lock");
        let first_time = !calls.iter().any(|(p, _)| p == "hint");
        let mut failures = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let payload = String::from_utf8_lossy(&record.payload).into_owned();
            if payload == "hint" && first_time {
                failures.push((
                    index,
                    danube_connect_core::ConnectorError::Retryable {
                        message: "429 Too Many Requests".into(),
                        retry_after: Some(Duration::from_millis(700)),
                        source: None,
                    },
                ));
            }
            calls.push((payload, std::time::Instant::now()));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(danube_connect_core::ConnectorError::PartialBatch { failures })
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_waits_for_the_retry_after_hint_before_re_sending() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/retry-after";
    broker.publish(topic, b"create".to_vec(), HashMap::new(), None);
    let mut config = with_topics(runtime_config("retry-after", &broker.url()), &[topic]);
    config.sink.batch.linger = Duration::from_millis(200);
    let sink = RetryAfterSink::default();
    let (token, run) = spawn_sink(config, sink.clone()).await;
    settle().await;
    broker.publish(topic, b"hint".to_vec(), HashMap::new(), None);
    broker.publish(topic, b"ok".to_vec(), HashMap::new(), None);
    assert!(eventually(Duration::from_secs(20), || broker.ack_count(topic, "retry-after") == 2).await, "both acked");
    let calls = sink.calls.lock().expect("lock").clone();
    let attempts: Vec<std::time::Instant> = calls.iter().filter(|(p, _)| p == "hint").map(|(_, at)| *at).collect();
    assert_eq!(attempts.len(), 2, "failed once, re-sent once: {calls:?}");
    let gap = attempts[1] - attempts[0];
    assert!(gap >= Duration::from_millis(700), "re-sent after {gap:?}, before the 700 ms Retry-After");
    token.cancel();
    assert_eq!(run.await.expect("join").exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_without_topics_is_a_config_error_naming_sink_topics() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let token = tokio_util::sync::CancellationToken::new();
    let runtime = danube_connect_core::Runtime::start(runtime_config("no-topics", &broker.url()), token.clone())
        .await
        .expect("runtime");
    let parts =
        danube_connect_core::Parts::new().with_sink(danube_connect_core::Ready(RecordingSink::new(Behaviour::Accept)));
    let error = runtime.run(parts).await.expect_err("no topics to consume");
    let text = danube_connect_core::error::error_chain(&error);
    assert!(matches!(error, danube_connect_core::RuntimeError::Config(_)), "{text}");
    assert!(text.contains("sink.topics"), "the error names the field: {text}");
    token.cancel();
}
