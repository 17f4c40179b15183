//! kill -9 under load and SIGTERM drains, for each direction.
//!
//! Import: a Kafka offset is committed only after Danube acked every record up to it, so
//! right after a kill every offset below the committed one is in Danube, and after a
//! restart every produced record is (duplicates counted). Export: a Danube message is acked
//! only after Kafka's delivery report, so right after a kill every acked Danube message is
//! in Kafka (checked as sets), and after a restart all of them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_dev_broker::EmbeddedBroker;

use crate::common::*;

/// Waits until the imported messages of `topic` cover `total` distinct Kafka positions;
/// returns (stored, distinct positions).
async fn wait_imported(
    danube: &EmbeddedBroker,
    topic: &str,
    total: usize,
    timeout: Duration,
) -> (usize, HashSet<(i32, i64)>) {
    let deadline = Instant::now() + timeout;
    loop {
        let stored = danube.messages(topic);
        let unique: HashSet<(i32, i64)> = stored.iter().map(kafka_position).collect();
        if unique.len() >= total || Instant::now() >= deadline {
            return (stored.len(), unique);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads every record of a Kafka topic; returns the payloads.
async fn kafka_payloads(bootstrap: &str, topic: &str, partitions: i32) -> Vec<String> {
    read_everything(bootstrap, topic, partitions).await.iter().map(KafkaRecord::payload_str).collect()
}

/// Waits until Kafka holds `total` distinct payloads; returns (records, distinct).
async fn wait_exported(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    total: usize,
    timeout: Duration,
) -> (usize, HashSet<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let payloads = kafka_payloads(bootstrap, topic, partitions).await;
        let unique: HashSet<String> = payloads.iter().cloned().collect();
        if unique.len() >= total || Instant::now() >= deadline {
            return (payloads.len(), unique);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Publishes `total` keyed messages (`payload = i`) to a Danube topic in paced chunks.
fn publish_in_background(
    danube: Arc<EmbeddedBroker>,
    topic: &'static str,
    total: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..total {
            danube.publish(topic, format!("{i}").into_bytes(), HashMap::new(), Some(format!("key-{}", i % 32)));
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_records_survive_kill_9_under_load() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "load", 3).await;
    let env = bridge_env(
        &systems,
        "kill-import",
        &[
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", "kill-import"),
            ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["load"]}]"#),
        ],
    );
    let total = 3000usize;
    let producing = produce_in_background(&bootstrap, "load", total);
    let mut bridge = spawn_bridge(&env).await;
    systems.danube.wait_for_messages("/default/load", 800, WAIT).await;
    bridge.kill9();

    // The invariant at the moment of the crash: committed ⇒ in Danube.
    let committed_at_kill = committed(&bootstrap, "kill-import", "load", 3).await;
    let stored_at_kill = systems.danube.messages("/default/load");
    let imported_at_kill: HashSet<(i32, i64)> = stored_at_kill.iter().map(kafka_position).collect();
    assert!(committed_at_kill.iter().any(|&c| c > 0), "offsets were committed before the kill: {committed_at_kill:?}");
    assert_eq!(
        first_committed_but_missing(&committed_at_kill, &imported_at_kill),
        None,
        "a committed kafka offset is not in danube (committed {committed_at_kill:?})"
    );

    let bridge = spawn_bridge(&env).await;
    producing.await.expect("producer");
    let (stored, unique) = wait_imported(&systems.danube, "/default/load", total, Duration::from_secs(90)).await;
    eprintln!(
        "import kill -9: {} stored at the kill (committed {committed_at_kill:?}), {stored} stored, {} unique, {} duplicates",
        stored_at_kill.len(),
        unique.len(),
        stored - unique.len()
    );
    assert!(stored_at_kill.len() < total, "the kill happened under load");
    assert_eq!(unique.len(), total, "no kafka record missing after kill -9; log:\n{}", bridge.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_drains_on_sigterm_and_commits_exactly_what_danube_has() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "drain-in", 3).await;
    let env = bridge_env(
        &systems,
        "drain-import",
        &[
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", "drain-import"),
            ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["drain-in"]}]"#),
        ],
    );
    let total = 3000usize;
    let producing = produce_in_background(&bootstrap, "drain-in", total);
    let mut bridge = spawn_bridge(&env).await;
    systems.danube.wait_for_messages("/default/drain-in", 600, WAIT).await;
    let status = bridge.terminate(Duration::from_secs(30)).await.expect("bridge exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "drained cleanly; log:\n{}", bridge.log());

    // After a drain the group's offsets are exactly the end of what reached Danube.
    let committed_at_stop = committed(&bootstrap, "drain-import", "drain-in", 3).await;
    let stored_at_stop = systems.danube.messages("/default/drain-in");
    let imported: HashSet<(i32, i64)> = stored_at_stop.iter().map(kafka_position).collect();
    assert_eq!(stored_at_stop.len(), imported.len(), "no duplicates before the restart");
    assert!(stored_at_stop.len() < total, "SIGTERM came under load");
    assert_eq!(first_committed_but_missing(&committed_at_stop, &imported), None, "committed ⇒ in danube");
    for p in 0..3i32 {
        let end = imported.iter().filter(|(q, _)| *q == p).map(|(_, o)| o + 1).max().unwrap_or(0);
        assert_eq!(
            committed_at_stop[p as usize].max(0),
            end,
            "partition {p}: everything imported was committed by the drain"
        );
    }

    let bridge = spawn_bridge(&env).await;
    producing.await.expect("producer");
    let (stored, unique) = wait_imported(&systems.danube, "/default/drain-in", total, Duration::from_secs(90)).await;
    eprintln!("import SIGTERM: {} stored at stop, {stored} stored, {} unique", stored_at_stop.len(), unique.len());
    assert_eq!(unique.len(), total, "every kafka record imported; log:\n{}", bridge.log());
    assert_eq!(stored, total, "a drained stop re-reads nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_records_survive_kill_9_under_load() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "load-out", 3).await;
    systems.danube.publish("/default/load-out", b"before".to_vec(), HashMap::new(), None);
    let env = bridge_env(
        &systems,
        "kill-export",
        &[
            ("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/load-out"}]"#),
            ("CONNECTOR_SINK__BATCH__MAX_RECORDS", "10"),
            ("CONNECTOR_SINK__CONCURRENCY", "4"),
        ],
    );
    let mut bridge = spawn_bridge(&env).await;
    assert!(systems.danube.wait_for_consumers("/default/load-out", "kill-export", 1, WAIT).await);
    let total = 2000usize;
    let danube = Arc::new(systems.danube);
    let publishing = publish_in_background(danube.clone(), "/default/load-out", total);
    let deadline = Instant::now() + WAIT;
    while danube.ack_count("/default/load-out", "kill-export") < 400 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bridge.kill9();

    // The invariant at the moment of the crash: acked in Danube ⇒ in Kafka, compared as
    // sets. The broker does not say which messages were acked, but with no consumer left
    // it dispatches nothing more: the messages dispatched so far are the first
    // `acked + unacked` published (one publisher, in order), of which exactly `unacked`
    // are not acked. So Kafka must hold only dispatched messages, and all of them except
    // at most `unacked`. (Unacked read first: a late ack only widens the bound.)
    let deadline = Instant::now() + WAIT;
    while danube.connected_consumers("/default/load-out", "kill-export") > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unacked_at_kill = danube.unacked_count("/default/load-out", "kill-export");
    let acked_at_kill = danube.ack_count("/default/load-out", "kill-export") as usize;
    let in_kafka_at_kill: HashSet<String> = kafka_payloads(&bootstrap, "load-out", 3).await.into_iter().collect();
    assert!(acked_at_kill >= 400, "the bridge acked records before the kill");
    let dispatched: HashSet<String> = (0..acked_at_kill + unacked_at_kill).map(|i| i.to_string()).collect();
    let foreign: Vec<&String> = in_kafka_at_kill.difference(&dispatched).collect();
    assert!(foreign.is_empty(), "kafka holds records danube never dispatched: {foreign:?}");
    let not_in_kafka: Vec<&String> = dispatched.difference(&in_kafka_at_kill).collect();
    assert!(
        not_in_kafka.len() <= unacked_at_kill,
        "{} dispatched records are not in kafka but only {unacked_at_kill} were unacked (acked {acked_at_kill}): \
         an acked record is missing from kafka; missing {not_in_kafka:?}",
        not_in_kafka.len()
    );

    let bridge = spawn_bridge(&env).await;
    publishing.await.expect("publisher");
    let (records, unique) = wait_exported(&bootstrap, "load-out", 3, total, Duration::from_secs(90)).await;
    eprintln!(
        "export kill -9: {acked_at_kill} acked and {unacked_at_kill} unacked at the kill ({} in kafka), {records} in kafka, {} unique, {} duplicates",
        in_kafka_at_kill.len(),
        unique.len(),
        records - unique.len()
    );
    assert!(acked_at_kill < total, "the kill happened under load");
    assert_eq!(unique.len(), total, "no danube record missing in kafka after kill -9; log:\n{}", bridge.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_drains_on_sigterm_and_acks_only_what_kafka_has() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "drain-out", 3).await;
    systems.danube.publish("/default/drain-out", b"before".to_vec(), HashMap::new(), None);
    let env = bridge_env(
        &systems,
        "drain-export",
        &[
            ("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/drain-out"}]"#),
            ("CONNECTOR_SINK__BATCH__MAX_RECORDS", "10"),
            ("CONNECTOR_SINK__CONCURRENCY", "4"),
        ],
    );
    let mut bridge = spawn_bridge(&env).await;
    assert!(systems.danube.wait_for_consumers("/default/drain-out", "drain-export", 1, WAIT).await);
    let total = 2000usize;
    let danube = Arc::new(systems.danube);
    let publishing = publish_in_background(danube.clone(), "/default/drain-out", total);
    let deadline = Instant::now() + WAIT;
    while danube.ack_count("/default/drain-out", "drain-export") < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = bridge.terminate(Duration::from_secs(30)).await.expect("bridge exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "drained cleanly; log:\n{}", bridge.log());

    let acked_at_stop = danube.ack_count("/default/drain-out", "drain-export") as usize;
    let at_stop = kafka_payloads(&bootstrap, "drain-out", 3).await;
    let unique_at_stop: HashSet<&String> = at_stop.iter().collect();
    assert!(acked_at_stop < total, "SIGTERM came under load");
    assert_eq!(unique_at_stop.len(), at_stop.len(), "no duplicates in kafka before the restart");
    // A drain acks every record it wrote, and nothing it did not write.
    assert_eq!(at_stop.len(), acked_at_stop, "kafka holds exactly the records danube saw acked");

    let bridge = spawn_bridge(&env).await;
    publishing.await.expect("publisher");
    let (records, unique) = wait_exported(&bootstrap, "drain-out", 3, total, Duration::from_secs(90)).await;
    eprintln!("export SIGTERM: {acked_at_stop} acked at stop, {records} in kafka, {} unique", unique.len());
    assert_eq!(unique.len(), total, "every danube record exported; log:\n{}", bridge.log());
    assert_eq!(records, total, "a drained stop writes nothing twice");
}
