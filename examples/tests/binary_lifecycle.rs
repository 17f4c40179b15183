//! A connector binary under signals: SIGTERM drains (exit 0, everything committed is in
//! Danube), kill -9 loses nothing committed, bad config names the field.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;

const SOURCE_BIN: &str = env!("CARGO_BIN_EXE_minimal_source");

fn source_env(broker: &EmbeddedBroker, topic: &str, state: &Path) -> HashMap<String, String> {
    HashMap::from([
        ("DANUBE_SERVICE_URL".to_string(), broker.url()),
        ("CONNECTOR_NAME".to_string(), "counter".to_string()),
        ("COUNTER_TOPIC".to_string(), topic.to_string()),
        ("COUNTER_BATCH".to_string(), "50".to_string()),
        ("COUNTER_INTERVAL".to_string(), "2".to_string()),
        ("COUNTER_STATE_FILE".to_string(), state.display().to_string()),
    ])
}

fn committed(state: &Path) -> Option<u64> {
    std::fs::read_to_string(state).ok().and_then(|t| t.trim().parse().ok())
}

fn stored_numbers(broker: &EmbeddedBroker, topic: &str) -> Vec<u64> {
    broker.messages(topic).iter().filter_map(|m| m.attributes.get("n").and_then(|n| n.parse().ok())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_everything_committed_is_in_danube() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let topic = "/default/drain";
    let mut process =
        ConnectorProcess::spawn(Path::new(SOURCE_BIN), &source_env(&broker, topic, &state)).expect("spawn");
    process.wait_ready(Duration::from_secs(30)).await.expect("ready");
    broker.wait_for_messages(topic, 2000, Duration::from_secs(30)).await;
    let status = process.terminate(Duration::from_secs(30)).await.expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "clean drain exits 0: {}", process.log());
    let last = committed(&state).expect("a committed position");
    let stored: BTreeSet<u64> = stored_numbers(&broker, topic).into_iter().collect();
    for n in 0..=last {
        assert!(stored.contains(&n), "record {n} committed but not in Danube");
    }
    // A drain publishes what was polled and commits it: nothing in Danube is left uncommitted.
    assert_eq!(stored.iter().max().copied(), Some(last), "drain committed every published record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_committed_and_restart_resumes() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let topic = "/default/kill9";
    let env = source_env(&broker, topic, &state);
    let mut process = ConnectorProcess::spawn(Path::new(SOURCE_BIN), &env).expect("spawn");
    process.wait_ready(Duration::from_secs(30)).await.expect("ready");
    broker.wait_for_messages(topic, 1500, Duration::from_secs(30)).await;
    process.kill9();
    let at_kill = committed(&state).expect("committed before the kill");
    let stored: BTreeSet<u64> = stored_numbers(&broker, topic).into_iter().collect();
    for n in 0..=at_kill {
        assert!(stored.contains(&n), "record {n} committed but lost by kill -9");
    }

    let mut restarted = ConnectorProcess::spawn(Path::new(SOURCE_BIN), &env).expect("respawn");
    restarted.wait_ready(Duration::from_secs(30)).await.expect("ready again");
    let target = stored.len() + 1000;
    broker.wait_for_messages(topic, target, Duration::from_secs(30)).await;
    let status = restarted.terminate(Duration::from_secs(30)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", restarted.log());
    let last = committed(&state).expect("committed");
    assert!(last > at_kill, "restart resumed and committed further");
    let numbers = stored_numbers(&broker, topic);
    let unique: BTreeSet<u64> = numbers.iter().copied().collect();
    for n in 0..=last {
        assert!(unique.contains(&n), "record {n} missing after restart");
    }
    let duplicates = numbers.len() - unique.len();
    eprintln!("kill -9 test: committed {last}, duplicates re-sent after the crash: {duplicates}");
}

#[test]
fn bad_config_exits_non_zero_naming_the_field() {
    let output = Command::new(SOURCE_BIN).env("CONNECTOR_RETRY__MAX_ATTEMPTS", "lots").output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(stderr.contains("retry.max_attempts") && stderr.contains("lots"), "{stderr}");

    let output = Command::new(SOURCE_BIN).env("COUNTER_TOPIC", "no-namespace").output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connector.topic") && stderr.contains("/namespace/topic"), "{stderr}");

    let output = Command::new(SOURCE_BIN).env("DANUBE_SERVICE_URL", "localhost:6650").output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("danube.service_url"));
}

#[test]
fn check_prints_the_effective_config_with_secrets_redacted() {
    let output = Command::new(SOURCE_BIN)
        .arg("--check")
        .env("DANUBE_TOKEN", "super-secret-token")
        .env("CONNECTOR_NAME", "checked")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("name = \"checked\""), "{stdout}");
    assert!(!stdout.contains("super-secret-token"), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
}

/// A sink with no `sink.topics` is refused by `--check` as it is at start (exit 1, naming
/// the field), before any connection attempt: `--check` runs the same build.
#[test]
fn check_refuses_a_sink_without_topics_as_the_start_does() {
    for check in [true, false] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_minimal_sink"));
        if check {
            command.arg("--check");
        }
        // Nothing listens here: the refusal comes before any connection attempt.
        let output = command
            .env("DANUBE_SERVICE_URL", "http://127.0.0.1:9")
            .env("CONNECTOR_OPS__ENABLED", "false")
            .env_remove("CONNECTOR_SINK__TOPICS")
            .output()
            .expect("run minimal_sink");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "check={check}: {stderr}");
        assert!(stderr.contains("sink.topics"), "check={check} must name sink.topics: {stderr}");
    }
}
