//! Kafka → Danube: mapping, start positions, rebalances, offsets held while Danube is down.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_carries_keys_headers_and_metadata_and_commits_only_acked_offsets() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "orders", 3).await;
    let producer = producer(&bootstrap);
    let keys = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let total = 60;
    for i in 0..total {
        let key = keys[i % keys.len()];
        produce(&producer, "orders", Some(key), &format!("{key}:{i}"), &[("tenant", "acme"), ("seq", &i.to_string())])
            .await;
    }
    let group = format!("g-{}", rand_suffix());
    let env = bridge_env(
        &systems,
        "import-basic",
        &[
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", &group),
            ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["orders"], danube_topic="/default/kafka-{topic}"}]"#),
        ],
    );
    let mut bridge = spawn_bridge(&env).await;
    let stored = systems.danube.wait_for_messages("/default/kafka-orders", total, WAIT).await;
    assert_eq!(stored.len(), total, "all records imported; log:\n{}", bridge.log());

    let mut partitions_seen = HashSet::new();
    let mut last_seq_per_key: HashMap<String, i64> = HashMap::new();
    for m in &stored {
        let key = m.routing_key.clone().expect("kafka key becomes the routing key");
        let payload = String::from_utf8_lossy(&m.payload).into_owned();
        assert!(payload.starts_with(&format!("{key}:")), "payload {payload} belongs to key {key}");
        assert_eq!(m.attributes.get("tenant").map(String::as_str), Some("acme"), "headers become attributes");
        assert_eq!(m.attributes.get("kafka.topic").map(String::as_str), Some("orders"));
        assert!(m.attributes.contains_key("kafka.timestamp"));
        assert!(m.attributes.contains_key("kafka.offset"));
        partitions_seen.insert(m.attributes.get("kafka.partition").cloned().expect("partition attribute"));
        let seq: i64 = m.attributes.get("seq").and_then(|s| s.parse().ok()).expect("seq header");
        if let Some(prev) = last_seq_per_key.insert(key.clone(), seq) {
            assert!(seq > prev, "per-key order kept for {key}: {prev} then {seq}");
        }
    }
    assert!(partitions_seen.len() >= 2, "records came from several partitions: {partitions_seen:?}");

    let status = bridge.terminate(Duration::from_secs(30)).await.expect("bridge exits on SIGTERM");
    assert!(status.success(), "clean exit; log:\n{}", bridge.log());
    // Every partition's committed offset is its end: all records were acked by Danube.
    let ends = {
        let records = read_all(&bootstrap, "orders", 3, total, WAIT).await;
        let mut ends = vec![0i64; 3];
        for r in records {
            ends[r.partition as usize] = ends[r.partition as usize].max(r.offset + 1);
        }
        ends
    };
    let committed = committed(&bootstrap, &group, "orders", 3).await;
    for p in 0..3 {
        if ends[p] > 0 {
            assert_eq!(committed[p], ends[p], "partition {p} committed up to its end");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_position_earliest_reads_history_and_latest_only_new_records() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "history", 1).await;
    let producer = producer(&bootstrap);
    for i in 0..5 {
        produce(&producer, "history", None, &format!("old-{i}"), &[]).await;
    }
    let latest_env = bridge_env(
        &systems,
        "latest",
        &[
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", "latest-group"),
            ("KAFKA_BRIDGE_IMPORT__START_FROM", "latest"),
            ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["history"], danube_topic="/default/latest-{topic}"}]"#),
        ],
    );
    let latest = spawn_bridge(&latest_env).await;
    assert!(wait_for_log(&latest, "kafka partitions assigned", 1, WAIT).await, "{}", latest.log());
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..5 {
        produce(&producer, "history", None, &format!("new-{i}"), &[]).await;
    }
    let earliest_env = bridge_env(
        &systems,
        "earliest",
        &[
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", "earliest-group"),
            ("KAFKA_BRIDGE_IMPORT__START_FROM", "earliest"),
            ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["history"], danube_topic="/default/earliest-{topic}"}]"#),
        ],
    );
    let earliest = spawn_bridge(&earliest_env).await;
    let all = systems.danube.wait_for_messages("/default/earliest-history", 10, WAIT).await;
    assert_eq!(all.len(), 10, "earliest reads the history; log:\n{}", earliest.log());
    let new = systems.danube.wait_for_messages("/default/latest-history", 5, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let new_payloads: Vec<String> = systems
        .danube
        .messages("/default/latest-history")
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    assert_eq!(new.len(), 5, "latest imports only new records; log:\n{}", latest.log());
    assert!(new_payloads.iter().all(|p| p.starts_with("new-")), "{new_payloads:?}");
}

/// Which bridge imported a message (its origin attribute).
fn origin(m: &danube_dev_broker::StoredMessage) -> Option<&str> {
    m.attributes.get("danube-connect-origin").map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_in_one_group_share_partitions_and_skip_nothing_across_rebalances() {
    two_bridges_share_then_one_leaves(false).await;
}

/// As above, but A dies with kill -9: B gets A's partitions after the session timeout and
/// re-reads from A's last commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_member_killed_with_kill_9_leaves_nothing_committed_missing() {
    two_bridges_share_then_one_leaves(true).await;
}

/// Two bridges in one group under load; both must import while both are members, then A
/// leaves (SIGTERM, or kill -9 with `kill`): every committed offset is in Danube at that
/// moment and every produced record ends up there.
async fn two_bridges_share_then_one_leaves(kill: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "events", 4).await;
    let mapping = r#"[{topics=["events"]}]"#;
    let env_a = bridge_env(
        &systems,
        "bridge-a",
        &[("KAFKA_BRIDGE_IMPORT__GROUP_ID", "shared"), ("KAFKA_BRIDGE_IMPORT__MAPPINGS", mapping)],
    );
    let env_b = bridge_env(
        &systems,
        "bridge-b",
        &[("KAFKA_BRIDGE_IMPORT__GROUP_ID", "shared"), ("KAFKA_BRIDGE_IMPORT__MAPPINGS", mapping)],
    );
    // Produces until told to stop (and at least `minimum` records), so the load lasts
    // across both rebalances however slow the machine is; returns the count.
    let minimum = 1200usize;
    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let bootstrap = bootstrap.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let producer = producer(&bootstrap);
            let mut produced = 0usize;
            while produced < minimum || !stop.load(Ordering::Relaxed) {
                let sends = (produced..produced + 20).map(|i| {
                    let key = format!("key-{}", i % 16);
                    let producer = producer.clone();
                    async move { produce(&producer, "events", Some(&key), &format!("{i}"), &[]).await }
                });
                futures::future::join_all(sends).await;
                produced += 20;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            produced
        })
    };
    let mut a = spawn_bridge(&env_a).await;
    systems.danube.wait_for_messages("/default/events", 100, WAIT).await;
    let b = spawn_bridge(&env_b).await;
    assert!(wait_for_log(&b, "kafka partitions assigned", 1, WAIT).await, "b joins the group; log:\n{}", b.log());
    // Sharing, not a hand-over: while A is still in the group, both import.
    let deadline = std::time::Instant::now() + WAIT;
    let (mut by_a, mut by_b) = (0, 0);
    while std::time::Instant::now() < deadline {
        let stored = systems.danube.messages("/default/events");
        by_a = stored.iter().filter(|m| origin(m) == Some("bridge-a")).count();
        by_b = stored.iter().filter(|m| origin(m) == Some("bridge-b")).count();
        if by_a > 0 && by_b > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        by_a > 0 && by_b > 0,
        "both bridges import while both are in the group (a {by_a}, b {by_b}); b log:\n{}",
        b.log()
    );
    // A leaves under load: B takes over all partitions.
    if kill {
        a.kill9();
    } else {
        let status = a.terminate(Duration::from_secs(30)).await.expect("a exits");
        assert!(status.success(), "{}", a.log());
    }
    let committed_after_leave = committed(&bootstrap, "shared", "events", 4).await;
    let imported_after_leave: HashSet<(i32, i64)> =
        systems.danube.messages("/default/events").iter().map(kafka_position).collect();
    assert_eq!(
        first_committed_but_missing(&committed_after_leave, &imported_after_leave),
        None,
        "a committed kafka offset is not in danube (committed {committed_after_leave:?})"
    );
    // Keep producing until B imported records of its own after A left.
    let by_b_at_leave =
        systems.danube.messages("/default/events").iter().filter(|m| origin(m) == Some("bridge-b")).count();
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline
        && systems.danube.messages("/default/events").iter().filter(|m| origin(m) == Some("bridge-b")).count()
            <= by_b_at_leave + 100
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // With tansu 0.6 a killed member's partitions were seen to stay assigned to it for
    // over a minute (B got only its own half back after the session timeout), so A comes
    // back as a new member and the group rebalances again, like a restarted pod.
    let _restarted = if kill { Some(spawn_bridge(&env_a).await) } else { None };
    stop.store(true, Ordering::Relaxed);
    let total = producing.await.expect("producer");
    let deadline = std::time::Instant::now() + WAIT;
    let mut unique = HashSet::new();
    let mut stored = Vec::new();
    while std::time::Instant::now() < deadline {
        stored = systems.danube.messages("/default/events");
        unique = stored.iter().map(kafka_position).collect::<HashSet<_>>();
        if unique.len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let duplicates = stored.len() - unique.len();
    eprintln!(
        "rebalance (kill -9: {kill}): {total} produced, {} stored, {} unique, {duplicates} duplicates; a {by_a} and b {by_b} while sharing",
        stored.len(),
        unique.len()
    );
    assert_eq!(unique.len(), total, "every kafka record is in danube; b log:\n{}", b.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_not_committed_while_danube_is_down() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    create_topic(&bootstrap, "held", 1).await;
    let producer = producer(&bootstrap);
    let env = bridge_env(
        &systems,
        "held",
        &[("KAFKA_BRIDGE_IMPORT__GROUP_ID", "held-group"), ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["held"]}]"#)],
    );
    let bridge = spawn_bridge(&env).await;
    for i in 0..5 {
        produce(&producer, "held", None, &format!("first-{i}"), &[]).await;
    }
    assert_eq!(systems.danube.wait_for_messages("/default/held", 5, WAIT).await.len(), 5, "{}", bridge.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while committed(&bootstrap, "held-group", "held", 1).await[0] != 5 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(committed(&bootstrap, "held-group", "held", 1).await[0], 5, "acked records are committed");

    systems.danube.stop().await;
    for i in 0..5 {
        produce(&producer, "held", None, &format!("second-{i}"), &[]).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(committed(&bootstrap, "held-group", "held", 1).await[0], 5, "nothing Danube did not ack is committed");
    systems.danube.restart().await.expect("restart danube");
    assert_eq!(systems.danube.wait_for_messages("/default/held", 10, WAIT).await.len(), 10, "{}", bridge.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while committed(&bootstrap, "held-group", "held", 1).await[0] != 10 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(committed(&bootstrap, "held-group", "held", 1).await[0], 10, "committed after Danube acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_and_named_mappings_in_one_process_route_each_topic_to_its_template() {
    let systems = start().await;
    let bootstrap = systems.tansu.bootstrap();
    for topic in ["logs-app", "logs-db", "metrics", "other"] {
        create_topic(&bootstrap, topic, 2).await;
    }
    let producer = producer(&bootstrap);
    for i in 0..5 {
        for topic in ["logs-app", "logs-db", "metrics", "other"] {
            produce(&producer, topic, Some(&format!("k{i}")), &format!("{topic}-{i}"), &[]).await;
        }
    }
    let env = bridge_env(
        &systems,
        "multi-map",
        &[
            ("KAFKA_BRIDGE_IMPORT__GROUP_ID", "multi-map"),
            (
                "KAFKA_BRIDGE_IMPORT__MAPPINGS",
                r#"[{pattern="^logs-.*", danube_topic="/default/l-{topic}"}, {topics=["metrics"], danube_topic="/default/m-{topic}"}]"#,
            ),
        ],
    );
    let bridge = spawn_bridge(&env).await;
    for (kafka, danube) in
        [("logs-app", "/default/l-logs-app"), ("logs-db", "/default/l-logs-db"), ("metrics", "/default/m-metrics")]
    {
        let stored = systems.danube.wait_for_messages(danube, 5, WAIT).await;
        let mut payloads: Vec<String> =
            stored.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
        payloads.sort();
        let expected: Vec<String> = (0..5).map(|i| format!("{kafka}-{i}")).collect();
        assert_eq!(payloads, expected, "{kafka} lands on {danube}; log:\n{}", bridge.log());
        assert!(stored.iter().all(|m| m.attributes.get("kafka.topic").map(String::as_str) == Some(kafka)));
    }
    // A topic neither mapping matches is not read at all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for topic in ["/default/other", "/default/l-other", "/default/m-other"] {
        assert!(systems.danube.messages(topic).is_empty(), "{topic} got records of an unmapped topic");
    }
    assert_eq!(systems.danube.messages("/default/l-logs-app").len(), 5, "each record once");
    assert_eq!(committed(&bootstrap, "multi-map", "other", 2).await, vec![-1, -1], "the group never read `other`");
    let committed_sum = |offsets: Vec<i64>| offsets.iter().map(|&c| c.max(0)).sum::<i64>();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while committed_sum(committed(&bootstrap, "multi-map", "metrics", 2).await) < 5
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        committed_sum(committed(&bootstrap, "multi-map", "metrics", 2).await),
        5,
        "the named mapping's offsets are committed"
    );
    let mut bridge = bridge;
    assert!(bridge.try_wait().is_none(), "the bridge is still running; log:\n{}", bridge.log());
}
