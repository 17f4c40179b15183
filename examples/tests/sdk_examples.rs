//! The three connectors of `docs/writing-a-connector.md`, each run by the runtime against the
//! development broker: records flow end to end and the delivery rule holds.

use std::time::{Duration, Instant};

use danube_connect_core::config::{RuntimeConfig, SinkTopicConfig};
use danube_connect_core::{Parts, RunReport, Runtime, RuntimeError};
use danube_connect_examples::counter_source::CounterConfig;
use danube_connect_examples::line_server::LineServerConfig;
use danube_connect_examples::line_sink::LineSinkConfig;
use danube_dev_broker::EmbeddedBroker;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn runtime_config(name: &str, broker: &EmbeddedBroker) -> RuntimeConfig {
    let mut config = RuntimeConfig { name: name.to_string(), ..RuntimeConfig::default() };
    config.danube.service_url = broker.url();
    config.ops.listen = "127.0.0.1:0".parse().expect("static address");
    config
}

async fn run(config: RuntimeConfig, parts: Parts) -> (CancellationToken, JoinHandle<Result<RunReport, RuntimeError>>) {
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime starts");
    (token, tokio::spawn(runtime.run(parts)))
}

async fn stop(token: CancellationToken, run: JoinHandle<Result<RunReport, RuntimeError>>) {
    token.cancel();
    let report = run.await.expect("join").expect("run");
    assert_eq!(report.exit_code(), 0, "a clean drain: {report:?}");
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pull_source_publishes_and_commits_only_what_danube_acked() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let topic = "/default/sdk-pull";
    let source =
        CounterConfig { topic: topic.into(), batch: 10, interval: 1, limit: 50, state_file: Some(state.clone()) };
    let (token, handle) = run(runtime_config("sdk-pull", &broker), Parts::new().with_pull(source)).await;
    assert_eq!(broker.wait_for_messages(topic, 50, Duration::from_secs(30)).await.len(), 50);
    let committed = || std::fs::read_to_string(&state).ok().and_then(|text| text.trim().parse::<u64>().ok());
    eventually("the last record is committed", || committed() == Some(49)).await;
    stop(token, handle).await;
    // Without a routing key records spread over the producer pool: no order promise.
    let mut numbers: Vec<u64> =
        broker.messages(topic).iter().filter_map(|m| m.attributes.get("n")?.parse().ok()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..50).collect::<Vec<_>>(), "every record, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_source_answers_ok_only_after_danube_has_the_line() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/sdk-push";
    let listen = danube_connect_testkit::ports::free_addr();
    let server = LineServerConfig { listen, topic: topic.into() };
    let (token, handle) = run(runtime_config("sdk-push", &broker), Parts::new().with_push(server)).await;
    // The runtime starts the server in the background: connect once it listens.
    let started = Instant::now();
    let stream = loop {
        match tokio::net::TcpStream::connect(listen).await {
            Ok(stream) => break stream,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(30), "the server never listened: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (read, mut write) = stream.into_split();
    let mut answers = BufReader::new(read).lines();
    for line in ["first", "second", "third"] {
        write.write_all(format!("{line}\n").as_bytes()).await.expect("send a line");
        let answer = answers.next_line().await.expect("read").expect("an answer");
        assert_eq!(answer, "ok");
        let stored: Vec<String> =
            broker.messages(topic).iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
        assert_eq!(stored.last().map(String::as_str), Some(line), "in Danube before the answer");
    }
    drop(write);
    stop(token, handle).await;
    assert_eq!(broker.messages(topic).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_writes_every_record_and_danube_sees_the_acks() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("lines.txt");
    let topic = "/default/sdk-sink";
    // The topic exists before the sink subscribes (a new subscription starts at its end).
    broker.publish(topic, b"before".to_vec(), Default::default(), None);
    let mut config = runtime_config("sdk-sink", &broker);
    config.sink.topics = vec![SinkTopicConfig::new(topic)];
    let sink = LineSinkConfig { path: Some(out.clone()) };
    let (token, handle) = run(config, Parts::new().with_sink(sink)).await;
    let written = || std::fs::read_to_string(&out).unwrap_or_default();
    // Probe until the subscription exists: the first probe the sink writes proves it.
    let started = Instant::now();
    while written().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "the sink never consumed");
        broker.publish(topic, b"probe".to_vec(), Default::default(), None);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in 0..20 {
        broker.publish(topic, format!("record-{n}").into_bytes(), Default::default(), None);
    }
    eventually("every record is written", || (0..20).all(|n| written().contains(&format!("\trecord-{n}\n")))).await;
    stop(token, handle).await;
    let lines = written().lines().count() as u64;
    assert_eq!(broker.ack_count(topic, "sdk-sink"), lines, "each written record acked, nothing else: {}", written());
}
