//! Initial snapshot consistent with the slot: every row exactly once across snapshot and stream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::{lsn, stop_cleanly, Env};

const TOPIC: &str = "/default/public-accounts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_concurrent_writes_are_seen_exactly_once() {
    let env = Env::start().await;
    env.pg
        .psql("CREATE TABLE accounts (id int PRIMARY KEY, v int); INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 5000) g")
        .unwrap();
    let mut process = env.spawn(&[("POSTGRES_CDC_SNAPSHOT_CHUNK_SIZE", "500")]).await;
    // Writes racing the snapshot: new rows and updates of existing ones.
    let client = env.client().await;
    for i in 0..200 {
        client.execute("INSERT INTO accounts VALUES ($1, 1)", &[&(10_000 + i)]).await.unwrap();
        client.execute("UPDATE accounts SET v = v + 1 WHERE id = $1", &[&(i + 1)]).await.unwrap();
    }
    let expected = 5000 + 200 + 200;
    env.broker.wait_for_messages(TOPIC, expected, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let payloads = env.payloads(TOPIC);
    let mut reads: BTreeMap<i64, usize> = BTreeMap::new();
    let mut read_v: BTreeMap<i64, i64> = BTreeMap::new();
    let mut inserts: BTreeMap<i64, usize> = BTreeMap::new();
    let mut updates: BTreeMap<i64, usize> = BTreeMap::new();
    for p in &payloads {
        let id = p["after"]["id"].as_i64().unwrap();
        match p["op"].as_str().unwrap() {
            "READ" => {
                *reads.entry(id).or_default() += 1;
                read_v.insert(id, p["after"]["v"].as_i64().unwrap());
            }
            "INSERT" => *inserts.entry(id).or_default() += 1,
            "UPDATE" => *updates.entry(id).or_default() += 1,
            other => panic!("unexpected op {other}"),
        }
    }
    let snapshot_ids: Vec<i64> = reads.keys().copied().filter(|id| *id < 10_000).collect();
    assert_eq!(snapshot_ids.len(), 5000, "every pre-existing row in the snapshot");
    // A racing insert is either in the snapshot or streamed, never both, never neither.
    for i in 0..200i64 {
        let id = 10_000 + i;
        let seen = reads.get(&id).copied().unwrap_or(0) + inserts.get(&id).copied().unwrap_or(0);
        assert_eq!(seen, 1, "row {id} seen {seen} times");
    }
    assert!(reads.values().all(|n| *n == 1), "no row read twice");
    // A racing update (v 0 -> 1) is either already in the snapshot row or streamed, exactly once.
    for id in 1..=200i64 {
        let (v, streamed) = (read_v[&id], updates.get(&id).copied().unwrap_or(0));
        assert!(
            (v == 1 && streamed == 0) || (v == 0 && streamed == 1),
            "row {id}: snapshot v = {v}, {streamed} streamed updates"
        );
    }
    assert!(updates.keys().all(|id| (1..=200).contains(id)), "updates only of updated rows");
    let update_count: usize = updates.values().sum();
    assert_eq!(payloads.len(), 5000 + 200 + update_count, "no extra records: {}", process.log());
    // Snapshot rows have no before image and carry the slot's consistent point as `lsn` and
    // `commit_lsn`; `seq` numbers them uniquely.
    let log = process.log();
    let point = log
        .split("consistent_point=")
        .nth(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_hexdigit() || *c == '/').collect::<String>())
        .unwrap_or_else(|| panic!("slot creation logged: {log}"));
    let snapshot_rows: Vec<&serde_json::Value> = payloads.iter().filter(|p| p["op"] == "READ").collect();
    let mut seqs = BTreeSet::new();
    for p in &snapshot_rows {
        assert!(p["before"].is_null());
        assert_eq!((p["lsn"].as_str(), p["commit_lsn"].as_str()), (Some(point.as_str()), Some(point.as_str())), "{p}");
        assert!(seqs.insert(p["seq"].as_u64().unwrap()), "seq {} twice", p["seq"]);
    }
    // Every streamed change committed after the consistent point.
    for p in payloads.iter().filter(|p| p["op"] != "READ") {
        assert!(lsn(p["commit_lsn"].as_str().unwrap()) >= lsn(&point), "{p} before the consistent point {point}");
    }
    stop_cleanly(&mut process).await;
    assert_eq!(
        env.pg
            .psql("SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'danube_cdc'")
            .unwrap(),
        r#"danube-cdc snapshot {"danube_cdc":"done"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_seq_is_unique_across_tables_and_slots_sharing_a_publication_keep_their_markers() {
    let env = Env::start().await;
    env.pg
        .psql(
            "CREATE TABLE t1 (id int PRIMARY KEY); CREATE TABLE t2 (id int PRIMARY KEY);
             INSERT INTO t1 SELECT generate_series(1, 30); INSERT INTO t2 SELECT generate_series(1, 20);
             CREATE PUBLICATION shared FOR TABLE t1, t2",
        )
        .unwrap();
    let mut first = env
        .spawn(&[
            ("POSTGRES_CDC_SLOT", "s1"),
            ("POSTGRES_CDC_PUBLICATION", "shared"),
            ("POSTGRES_CDC_TOPIC", "/default/one"),
        ])
        .await;
    env.wait_streaming("s1", &first).await;
    let mut second = env
        .spawn(&[
            ("CONNECTOR_NAME", "second"),
            ("POSTGRES_CDC_SLOT", "s2"),
            ("POSTGRES_CDC_PUBLICATION", "shared"),
            ("POSTGRES_CDC_TOPIC", "/default/two"),
        ])
        .await;
    env.wait_streaming("s2", &second).await;
    // Each connector replaces its own entry by "done" once its snapshot is acknowledged.
    let marker = || -> serde_json::Value {
        let comment = env
            .pg
            .psql("SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'shared'")
            .unwrap();
        serde_json::from_str(comment.strip_prefix("danube-cdc snapshot ").expect("marker prefix")).expect("marker JSON")
    };
    let both_done = serde_json::json!({"s1": "done", "s2": "done"});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while marker() != both_done && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(marker(), both_done, "one entry per slot: {}\n{}", first.log(), second.log());
    for topic in ["/default/one", "/default/two"] {
        let rows = env.payloads(topic);
        assert_eq!(rows.len(), 50, "both tables into the fixed topic {topic}");
        let ids: BTreeSet<(String, u64)> =
            rows.iter().map(|p| (p["commit_lsn"].as_str().unwrap().to_string(), p["seq"].as_u64().unwrap())).collect();
        assert_eq!(ids.len(), 50, "(commit_lsn, seq) unique over both tables of {topic}");
    }
    for process in [&mut first, &mut second] {
        stop_cleanly(process).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_only_publishes_the_table_and_does_not_stream() {
    let env = Env::start().await;
    env.pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, v int); INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 300) g").unwrap();
    let mut process = env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "initial_only")]).await;
    env.broker.wait_for_messages(TOPIC, 300, Duration::from_secs(60)).await;
    env.pg.psql("INSERT INTO accounts VALUES (100000, 1)").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let payloads = env.payloads(TOPIC);
    assert_eq!(payloads.len(), 300, "{}", process.log());
    assert!(payloads.iter().all(|p| p["op"] == "READ"));
    // The slot was temporary and is gone once the snapshot is acknowledged: no WAL retained.
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'danube_cdc'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.pg.psql(slots).unwrap() != "0" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.pg.psql(slots).unwrap(), "0", "slot dropped after initial_only: {}", process.log());
    stop_cleanly(&mut process).await;
    // A restart sees the "done" marker and publishes nothing again.
    let mut again = env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "initial_only")]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !again.log().contains("already published") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.log().contains("already published"), "{}", again.log());
    assert_eq!(env.payloads(TOPIC).len(), 300, "no second snapshot");
    assert_eq!(env.pg.psql(slots).unwrap(), "0", "no slot left by the restart");
    stop_cleanly(&mut again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_snapshot_redoes_it_and_loses_nothing() {
    let env = Env::start().await;
    env.pg
        .psql("CREATE TABLE accounts (id int PRIMARY KEY, v int); INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 20000) g")
        .unwrap();
    let extra = [("POSTGRES_CDC_SNAPSHOT_CHUNK_SIZE", "100"), ("CONNECTOR_SOURCE__MAX_IN_FLIGHT", "64")];
    let mut process = env.spawn(&extra).await;
    env.broker.wait_for_messages(TOPIC, 500, Duration::from_secs(60)).await;
    process.kill9();
    let at_kill = env.payloads(TOPIC).len();
    assert!(at_kill < 20000, "the kill hit the snapshot midway ({at_kill} rows)");
    assert_eq!(
        env.pg
            .psql("SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'danube_cdc'")
            .unwrap(),
        r#"danube-cdc snapshot {"danube_cdc":"pending"}"#
    );
    env.pg.psql("INSERT INTO accounts VALUES (50000, 1)").unwrap();
    let mut restarted = env.spawn(&[]).await;
    env.broker.wait_for_messages(TOPIC, at_kill + 20001, Duration::from_secs(120)).await;
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for p in env.payloads(TOPIC) {
        *seen.entry(p["after"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    let missing: Vec<i64> = (1..=20000).chain([50000]).filter(|id| !seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "{} rows missing after the snapshot restart: {}", missing.len(), restarted.log());
    stop_cleanly(&mut restarted).await;
}
