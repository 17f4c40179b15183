//! Source side over real gRPC against the embedded broker: routing, key order, commits
//! only after broker acks, retries, outages.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{
    eventually, numbered, runtime_config, spawn_source, switchable_health, wait_for_readiness, CommitCheck,
    ScriptedSource,
};
use danube_connect_core::{Parts, Ready, Runtime, SourceOffset, SourceRecord};
use danube_dev_broker::{BrokerConfig, EmbeddedBroker};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_routed_to_their_own_topics() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let batch: Vec<SourceRecord> = (0..30u64)
        .map(|i| {
            let topic = format!("/default/route-{}", i % 3);
            SourceRecord::new(topic, format!("{}", i)).with_offset(SourceOffset::new("p", i))
        })
        .collect();
    let (token, run) = spawn_source(runtime_config("routing", &broker.url()), ScriptedSource::new(vec![batch])).await;
    for t in 0..3 {
        let topic = format!("/default/route-{t}");
        let messages = broker.wait_for_messages(&topic, 10, Duration::from_secs(10)).await;
        assert_eq!(messages.len(), 10, "topic {topic}");
        for m in &messages {
            let n: u64 = String::from_utf8_lossy(&m.payload).parse().expect("number");
            assert_eq!(n % 3, t, "record {n} landed on {topic}");
        }
    }
    token.cancel();
    assert_eq!(run.await.expect("join").exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_with_one_key_keep_their_order_across_the_producer_pool() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/keys";
    let mut batches = Vec::new();
    for chunk in 0..10u64 {
        batches.push(
            (0..50u64)
                .map(|j| {
                    let i = chunk * 50 + j;
                    SourceRecord::new(topic, format!("{}:{}", i % 7, i))
                        .with_key(format!("k{}", i % 7))
                        .with_offset(SourceOffset::new("p", i))
                })
                .collect(),
        );
    }
    let mut config = runtime_config("keys", &broker.url());
    config.source.producers_per_topic = 4;
    let (token, run) = spawn_source(config, ScriptedSource::new(batches)).await;
    let messages = broker.wait_for_messages(topic, 500, Duration::from_secs(20)).await;
    assert_eq!(messages.len(), 500);
    let mut last: HashMap<String, u64> = HashMap::new();
    for m in &messages {
        let text = String::from_utf8_lossy(&m.payload).into_owned();
        let (key, n) = text.split_once(':').expect("key:n");
        let n: u64 = n.parse().expect("n");
        assert_eq!(m.routing_key.as_deref(), Some(format!("k{key}").as_str()));
        if let Some(prev) = last.insert(key.to_string(), n) {
            assert!(prev < n, "key {key}: {n} arrived after {prev}");
        }
    }
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_is_called_only_for_records_the_broker_has() {
    let broker = Arc::new(EmbeddedBroker::start_default().await.expect("broker"));
    let topic = "/default/commits";
    let batches: Vec<Vec<SourceRecord>> = (0..10u64).map(|b| numbered(topic, b * 20..(b + 1) * 20)).collect();
    let mut source = ScriptedSource::new(batches);
    let seen = broker.clone();
    source.on_commit = Some(Box::new(move |offsets: &[SourceOffset]| {
        let stored: HashSet<String> =
            seen.messages(topic).iter().filter_map(|m| m.attributes.get("n").cloned()).collect();
        for offset in offsets {
            assert!(
                stored.contains(&offset.position.to_string()),
                "offset {} committed before the broker had it",
                offset.position
            );
        }
    }));
    let commits = source.commits.clone();
    broker.fail_next_sends(15);
    let (token, run) = spawn_source(runtime_config("commits", &broker.url()), source).await;
    assert!(eventually(Duration::from_secs(20), || commits.lock().expect("lock").len() == 200).await);
    let committed: Vec<u64> = commits.lock().expect("lock").iter().map(|o| o.position).collect();
    let mut sorted = committed.clone();
    sorted.sort_unstable();
    assert_eq!(committed, sorted, "commits follow poll order");
    assert_eq!(committed, (0..200).collect::<Vec<_>>());
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sends_are_retried_and_nothing_is_dropped() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/retries";
    broker.fail_next_sends(30);
    let source = ScriptedSource::new(vec![numbered(topic, 0..100)]);
    let commits = source.commits.clone();
    let (token, run) = spawn_source(runtime_config("retries", &broker.url()), source).await;
    assert!(eventually(Duration::from_secs(30), || commits.lock().expect("lock").len() == 100).await);
    let stored: HashSet<String> =
        broker.messages(topic).iter().filter_map(|m| m.attributes.get("n").cloned()).collect();
    for i in 0..100 {
        assert!(stored.contains(&i.to_string()), "record {i} missing");
    }
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_waits_for_a_broker_that_is_down_at_startup() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let url = format!("http://127.0.0.1:{port}");
    let topic = "/default/late-broker";
    let starter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let config =
            BrokerConfig { listen: format!("127.0.0.1:{port}").parse().expect("addr"), ..BrokerConfig::default() };
        EmbeddedBroker::start(config).await.expect("broker")
    });
    let source = ScriptedSource::new(vec![numbered(topic, 0..20)]);
    let commits = source.commits.clone();
    let (token, run) = spawn_source(runtime_config("late", &url), source).await;
    let broker = starter.await.expect("join");
    assert!(eventually(Duration::from_secs(20), || commits.lock().expect("lock").len() == 20).await);
    assert_eq!(broker.messages(topic).len(), 20);
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/restart";
    let batches: Vec<Vec<SourceRecord>> = (0..40u64).map(|b| numbered(topic, b * 10..(b + 1) * 10)).collect();
    let source = ScriptedSource::new(batches);
    let commits = source.commits.clone();
    let (token, run) = spawn_source(runtime_config("restart", &broker.url()), source).await;
    assert!(eventually(Duration::from_secs(10), || !commits.lock().expect("lock").is_empty()).await);
    broker.stop().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    broker.restart().await.expect("restart");
    assert!(
        eventually(Duration::from_secs(40), || commits.lock().expect("lock").len() == 400).await,
        "committed {}",
        commits.lock().expect("lock").len()
    );
    let stored: HashSet<String> =
        broker.messages(topic).iter().filter_map(|m| m.attributes.get("n").cloned()).collect();
    for i in 0..400 {
        assert!(stored.contains(&i.to_string()), "record {i} missing after restart");
    }
    token.cancel();
    run.await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_handle_returns_after_the_broker_ack_and_fails_while_it_is_away() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let mut config = runtime_config("push", &broker.url());
    config.source.publish_timeout = Duration::from_millis(800);
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime");
    let publisher = runtime.publisher();
    publisher.publish(SourceRecord::new("/default/push", "one")).await.expect("published");
    assert_eq!(broker.messages("/default/push").len(), 1, "publish returned before the broker had it");
    publisher
        .publish_batch(vec![SourceRecord::new("/default/push", "two"), SourceRecord::new("/default/push", "three")])
        .await
        .expect("batch");
    assert_eq!(broker.messages("/default/push").len(), 3);

    broker.stop().await;
    let error = publisher.publish(SourceRecord::new("/default/push", "four")).await.expect_err("broker is away");
    assert!(error.is_transient(), "{error}");
    broker.restart().await.expect("restart");
    let mut ok = false;
    for _ in 0..50 {
        if publisher.publish(SourceRecord::new("/default/push", "five")).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "publishing works again after the broker returns");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_record_is_published_whether_or_not_its_outcome_is_awaited() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/submit";
    let token = CancellationToken::new();
    let runtime = Runtime::start(runtime_config("submit", &broker.url()), token.clone()).await.expect("runtime");
    let publisher = runtime.publisher();

    let pending = publisher.submit(SourceRecord::new(topic, "awaited")).await.expect("queued");
    pending.await.expect("acked");
    assert_eq!(broker.messages(topic).len(), 1, "the pending publish resolved before the broker had it");

    // Dropped at once, as a request cut by its client or its timeout drops it.
    for n in 0..20 {
        drop(publisher.submit(SourceRecord::new(topic, format!("dropped-{n}"))).await.expect("queued"));
    }
    broker.wait_for_messages(topic, 21, Duration::from_secs(10)).await;
    let payloads: HashSet<Vec<u8>> = broker.messages(topic).iter().map(|m| m.payload.to_vec()).collect();
    for n in 0..20 {
        assert!(payloads.contains(format!("dropped-{n}").as_bytes()), "dropped-{n} was withdrawn");
    }

    publisher.close().await;
    let refused = publisher.submit(SourceRecord::new(topic, "late")).await.expect_err("closed");
    assert!(matches!(refused, danube_connect_core::PublishError::Closed), "{refused}");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_of_one_key_polled_together_in_one_task_are_queued_in_call_order() {
    // A source that pipelines publishes in one task (FuturesOrdered, join_all) polls many of
    // them in one go; past tokio's cooperative budget a budget-aware queue wait would return
    // Pending and be woken later in reverse order, and the records would be queued reversed.
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/ordered";
    let token = CancellationToken::new();
    let runtime = Runtime::start(runtime_config("ordered", &broker.url()), token.clone()).await.expect("runtime");
    let publisher = runtime.publisher();
    let publishes = (0..300).map(|n| publisher.publish(SourceRecord::new(topic, n.to_string()).with_key("one-key")));
    for result in futures::future::join_all(publishes).await {
        result.expect("acked");
    }
    let order: Vec<usize> =
        broker.messages(topic).iter().filter_map(|m| std::str::from_utf8(&m.payload).ok()?.parse().ok()).collect();
    assert_eq!(order, (0..300).collect::<Vec<_>>(), "records of one key are stored in call order");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_given_up_while_its_lane_is_full_leaves_nothing_queued_or_counted() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/submit-full";
    let mut config = runtime_config("submit-full", &broker.url());
    config.source.producers_per_topic = 1;
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime");
    let addr = runtime.ops_addr().expect("ops enabled");
    let publisher = runtime.publisher();
    publisher.publish(SourceRecord::new(topic, "first")).await.expect("producer ready");

    // Danube takes no sends: the lane retries its first record and its queue fills up.
    broker.fail_next_sends(usize::MAX);
    let mut queued = Vec::new();
    let given_up = loop {
        let n = queued.len();
        let submit = publisher.submit(SourceRecord::new(topic, format!("queued-{n}")));
        match tokio::time::timeout(Duration::from_millis(200), submit).await {
            Ok(pending) => queued.push(pending.expect("queued")),
            Err(_) => break n,
        }
        assert!(queued.len() <= 1_000, "the lane queue never filled up");
    };

    broker.fail_next_sends(0);
    for pending in queued {
        pending.await.expect("acked once Danube takes sends again");
    }
    let payloads: Vec<Vec<u8>> = broker.messages(topic).iter().map(|m| m.payload.to_vec()).collect();
    assert_eq!(payloads.len(), given_up + 1, "every queued record published once, the given-up one not at all");
    assert!(!payloads.contains(&format!("queued-{given_up}").into_bytes()), "the given-up record was published");
    let metrics = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("body");
    let gauge = format!("connector_in_flight_records{{connector=\"submit-full\",topic=\"{topic}\"}} 0");
    assert!(metrics.contains(&gauge), "in-flight count left behind: {metrics}");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_port_serves_metrics_health_and_readiness() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let token = CancellationToken::new();
    let runtime = Runtime::start(runtime_config("ops", &broker.url()), token.clone()).await.expect("runtime");
    let addr = runtime.ops_addr().expect("ops enabled");
    runtime.publisher().publish(SourceRecord::new("/default/ops", "x")).await.expect("publish");
    let http = reqwest::Client::new();
    let health = http.get(format!("http://{addr}/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("http://{addr}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    let metrics = http.get(format!("http://{addr}/metrics")).send().await.expect("metrics").text().await.expect("body");
    assert!(
        metrics.contains("connector_records_published_total{connector=\"ops\",topic=\"/default/ops\"} 1"),
        "{metrics}"
    );
    token.cancel();
}

/// Returns `first` at once, then waits for `gate` before returning `second`, then idles.
struct SplitOffsetSource {
    first: Option<Vec<SourceRecord>>,
    second: Option<Vec<SourceRecord>>,
    gate: Arc<tokio::sync::Notify>,
    check: CommitCheck,
    commits: Arc<std::sync::Mutex<Vec<SourceOffset>>>,
}

#[danube_connect_core::async_trait]
impl danube_connect_core::PullSource for SplitOffsetSource {
    async fn poll(&mut self) -> danube_connect_core::ConnectorResult<Vec<SourceRecord>> {
        if let Some(batch) = self.first.take() {
            return Ok(batch);
        }
        if let Some(batch) = self.second.take() {
            self.gate.notified().await;
            return Ok(batch);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Vec::new())
    }

    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> danube_connect_core::ConnectorResult<()> {
        (self.check)(&offsets);
        self.commits.lock().expect("lock").extend(offsets);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_shared_by_two_polls_is_committed_only_after_both_polls_are_acked() {
    let broker = Arc::new(EmbeddedBroker::start_default().await.expect("broker"));
    let topic = "/default/split-offset";
    let record = |n: u64, offset: u64| {
        SourceRecord::new(topic, format!("m{n}"))
            .with_attribute("n", n.to_string())
            .with_offset(SourceOffset::new("p", offset))
    };
    // Offset 2 is carried by the last record of the first poll and the first of the second.
    let first = vec![record(1, 1), record(2, 2)];
    let second = vec![record(3, 2), record(4, 3)];
    let records_of = |offset: u64| -> Vec<&'static str> {
        match offset {
            1 => vec!["1"],
            2 => vec!["2", "3"],
            _ => vec!["4"],
        }
    };
    let violations = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = broker.clone();
    let found = violations.clone();
    let gate = Arc::new(tokio::sync::Notify::new());
    let commits = Arc::new(std::sync::Mutex::new(Vec::new()));
    let source = SplitOffsetSource {
        first: Some(first),
        second: Some(second),
        gate: gate.clone(),
        check: Box::new(move |offsets: &[SourceOffset]| {
            let stored: HashSet<String> =
                seen.messages(topic).iter().filter_map(|m| m.attributes.get("n").cloned()).collect();
            for offset in offsets {
                for n in records_of(offset.position) {
                    if !stored.contains(n) {
                        found
                            .lock()
                            .expect("lock")
                            .push(format!("offset {} committed before record m{n} was in the broker", offset.position));
                    }
                }
            }
        }),
        commits: commits.clone(),
    };
    let mut config = runtime_config("split-offset", &broker.url());
    config.source.producers_per_topic = 1;
    let (token, run) = spawn_source(config, Ready(source)).await;
    assert_eq!(broker.wait_for_messages(topic, 2, Duration::from_secs(10)).await.len(), 2, "first poll published");
    // The second poll's sends fail for a while: its records stay pending.
    broker.fail_next_sends(6);
    gate.notify_one();
    assert!(
        eventually(Duration::from_secs(10), || commits.lock().expect("lock").first()
            == Some(&SourceOffset::new("p", 1)))
        .await,
        "offset 1 is committed while the second poll is still being retried"
    );
    assert!(
        eventually(Duration::from_secs(20), || commits.lock().expect("lock").len() == 3).await,
        "every offset is committed in the end: {:?}",
        commits.lock().expect("lock")
    );
    assert_eq!(
        commits.lock().expect("lock").iter().map(|o| o.position).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "each offset committed once, in poll order"
    );
    assert_eq!(violations.lock().expect("lock").clone(), Vec::<String>::new());
    token.cancel();
    assert_eq!(run.await.expect("join").exit_code(), 0);
}

/// An idle pull source whose health the test switches.
struct SwitchableHealthSource {
    healthy: Arc<std::sync::atomic::AtomicBool>,
}

#[danube_connect_core::async_trait]
impl danube_connect_core::PullSource for SwitchableHealthSource {
    async fn poll(&mut self) -> danube_connect_core::ConnectorResult<Vec<SourceRecord>> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Vec::new())
    }

    async fn commit(&mut self, _offsets: Vec<SourceOffset>) -> danube_connect_core::ConnectorResult<()> {
        Ok(())
    }

    async fn health_check(&self) -> danube_connect_core::ConnectorResult<()> {
        switchable_health(&self.healthy)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_pull_source_health_over_time() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let token = CancellationToken::new();
    let runtime = Runtime::start(runtime_config("push-health", &broker.url()), token.clone()).await.expect("runtime");
    let addr = runtime.ops_addr().expect("ops enabled");
    let run =
        tokio::spawn(runtime.run(Parts::new().with_pull(Ready(SwitchableHealthSource { healthy: healthy.clone() }))));
    let wait_for = |want: u16| wait_for_readiness(addr, want);
    assert!(wait_for(200).await, "ready while the source is healthy");
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(wait_for(503).await, "not ready once the pull source reports a problem");
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(wait_for(200).await, "ready again after it recovered");
    token.cancel();
    assert_eq!(run.await.expect("join").expect("run").exit_code(), 0);
}

/// A push source (never polled: the trait has no `poll`); records whether it was shut down.
struct SwitchablePushSource {
    healthy: Arc<std::sync::atomic::AtomicBool>,
    shut_down: Arc<std::sync::atomic::AtomicBool>,
}

#[danube_connect_core::async_trait]
impl danube_connect_core::PushSource for SwitchablePushSource {
    async fn shutdown(&mut self) -> danube_connect_core::ConnectorResult<()> {
        self.shut_down.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    async fn health_check(&self) -> danube_connect_core::ConnectorResult<()> {
        switchable_health(&self.healthy)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_source_is_health_checked_on_its_own_timer_and_shut_down() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let shut_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let token = CancellationToken::new();
    let runtime = Runtime::start(runtime_config("push-timer", &broker.url()), token.clone()).await.expect("runtime");
    let addr = runtime.ops_addr().expect("ops enabled");
    let publisher = runtime.publisher();
    let source = SwitchablePushSource { healthy: healthy.clone(), shut_down: shut_down.clone() };
    let run = tokio::spawn(runtime.run(Parts::new().with_push(Ready(source))));
    let wait_for = |want: u16| wait_for_readiness(addr, want);
    assert!(wait_for(200).await, "ready while the source is healthy");
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(wait_for(503).await, "not ready once the push source reports a problem");
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(wait_for(200).await, "ready again after it recovered");
    publisher.publish(SourceRecord::new("/default/push-timer", "pushed")).await.expect("push sources publish");
    assert_eq!(broker.messages("/default/push-timer").len(), 1);
    token.cancel();
    assert_eq!(run.await.expect("join").expect("run").exit_code(), 0);
    assert!(shut_down.load(std::sync::atomic::Ordering::SeqCst), "its shutdown ran");
}
