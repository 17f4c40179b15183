//! Initial snapshot consistent with the slot: every row exactly once across snapshot and stream.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::Env;

const TOPIC: &str = "/default/public.accounts";

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
    let mut inserts: BTreeMap<i64, usize> = BTreeMap::new();
    let mut updates = 0;
    for p in &payloads {
        let id = p["after"]["id"].as_i64().unwrap();
        match p["op"].as_str().unwrap() {
            "READ" => *reads.entry(id).or_default() += 1,
            "INSERT" => *inserts.entry(id).or_default() += 1,
            "UPDATE" => updates += 1,
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
    let streamed_updates_plus_snapshotted = updates + reads.keys().filter(|id| **id <= 200).count();
    assert!(updates <= 200 && streamed_updates_plus_snapshotted >= 200, "updates: {updates}");
    assert_eq!(payloads.len(), 5000 + 200 + updates, "no extra records: {}", process.log());
    // Snapshot rows have no before image and carry the slot's consistent point.
    let first_read = payloads.iter().find(|p| p["op"] == "READ").unwrap();
    assert!(first_read["before"].is_null());
    let status = process.terminate(Duration::from_secs(30)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", process.log());
    assert_eq!(
        env.pg
            .psql("SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'danube_cdc'")
            .unwrap(),
        "danube-cdc snapshot danube_cdc=done"
    );
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
    let status = process.terminate(Duration::from_secs(30)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", process.log());
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
        "danube-cdc snapshot danube_cdc=pending"
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
    let status = restarted.terminate(Duration::from_secs(30)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", restarted.log());
}
