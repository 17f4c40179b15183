//! Crash, drain and outage: nothing committed in PostgreSQL is missing from Danube.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{lsn, stop_cleanly, Env};

const TOPIC: &str = "/default/public-events";

/// Committed rows as `(id, WAL position read after its COMMIT returned)`: the commit's end
/// LSN is at or before that position.
type Written = Arc<Mutex<Vec<(i64, u64)>>>;

/// Inserts one row per transaction until stopped; returns the ids whose COMMIT succeeded and
/// records each in `written`.
fn start_writer(env: &Env, stop: Arc<AtomicBool>, written: Written) -> tokio::task::JoinHandle<Vec<i64>> {
    let url = env.pg.url();
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        let mut committed = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let row =
                client.query_one("INSERT INTO events (payload) VALUES ('x') RETURNING id", &[]).await.expect("insert");
            let id = row.get::<_, i64>(0);
            let at: String =
                client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("lsn").get(0);
            committed.push(id);
            written.lock().expect("writer list").push((id, lsn(&at)));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        committed
    })
}

/// Reads the slot's confirmed LSN, then the broker: every row committed at or before that LSN
/// must already be in Danube (the slot never confirms past an unacked record). Returns how
/// many rows the sample covered.
async fn check_confirmed_covers_only_acked(env: &Env, client: &tokio_postgres::Client, written: &Written) -> usize {
    let row = client
        .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'danube_cdc'", &[])
        .await
        .expect("slot query");
    let Some(confirmed) = row.and_then(|r| r.get::<_, Option<String>>(0)) else { return 0 };
    let confirmed = lsn(&confirmed);
    let covered: Vec<i64> =
        written.lock().expect("writer list").iter().filter(|(_, at)| *at <= confirmed).map(|(id, _)| *id).collect();
    let in_danube = ids_in_danube(env);
    let unacked: Vec<i64> = covered.iter().copied().filter(|id| !in_danube.contains_key(id)).collect();
    assert!(
        unacked.is_empty(),
        "slot confirmed {confirmed:x}, past {} rows not in Danube, e.g. {:?}",
        unacked.len(),
        &unacked[..unacked.len().min(10)]
    );
    covered.len()
}

fn ids_in_danube(env: &Env) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for payload in env.payloads(TOPIC) {
        if let Some(id) = payload["after"]["id"].as_i64() {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

async fn wait_for_ids(env: &Env, ids: &[i64], timeout: Duration) -> BTreeMap<i64, usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = ids_in_danube(env);
        if ids.iter().all(|id| got.contains_key(id)) || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_insert_load_loses_no_committed_row() {
    let env = Env::start().await;
    env.pg.psql("CREATE TABLE events (id bigserial PRIMARY KEY, payload text)").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written: Written = Arc::default();
    let writer = start_writer(&env, stop.clone(), written.clone());
    let sampler = env.client().await;
    let mut process = env.spawn(&[]).await;
    env.wait_streaming("danube_cdc", &process).await;
    // The rows committed before the slot existed come from the initial snapshot; until it is
    // acknowledged the slot sits at its consistent point (a crash then redoes the snapshot).
    let marker = "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'danube_cdc'";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !env.pg.psql(marker).unwrap_or_default().contains(r#""danube_cdc":"done""#) {
        assert!(tokio::time::Instant::now() < deadline, "snapshot never acknowledged: {}", process.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sample the confirmed LSN against Danube's content while the connector streams.
    let mut samples = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env.broker.messages(TOPIC).len() < 400 && tokio::time::Instant::now() < deadline {
        samples.push(check_confirmed_covers_only_acked(&env, &sampler, &written).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.kill9();
    let at_kill = ids_in_danube(&env).len();
    let confirmed_at_kill = env.confirmed_flush("danube_cdc");
    samples.push(check_confirmed_covers_only_acked(&env, &sampler, &written).await);
    assert!(at_kill >= 400, "rows in Danube before the kill: {at_kill}");
    assert!(
        samples.iter().filter(|n| **n > 0).count() >= 3,
        "the confirmed LSN covered committed rows in several samples: {samples:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // the writer keeps committing while the connector is down

    let mut restarted = env.spawn(&[]).await;
    let resumed = tokio::time::Instant::now();
    while resumed.elapsed() < Duration::from_secs(1) {
        check_confirmed_covers_only_acked(&env, &sampler, &written).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let committed = writer.await.expect("writer");
    let got = wait_for_ids(&env, &committed, Duration::from_secs(60)).await;
    let missing: Vec<i64> = committed.iter().copied().filter(|id| !got.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} committed rows missing, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        restarted.log()
    );
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    println!(
        "committed {} rows, {} in Danube at kill, {} duplicates after restart",
        committed.len(),
        at_kill,
        duplicates
    );
    // After the restart the slot confirms again, up to every committed row.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut covered = check_confirmed_covers_only_acked(&env, &sampler, &written).await;
    while covered < committed.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        covered = check_confirmed_covers_only_acked(&env, &sampler, &written).await;
    }
    assert_eq!(covered, committed.len(), "the slot confirms every committed row in the end");
    // Duplicates only come from after the last confirmed position, and carry the same
    // position fields as the first copy.
    let mut positions: BTreeMap<i64, BTreeSet<(String, String, u64)>> = BTreeMap::new();
    for payload in env.payloads(TOPIC) {
        let id = payload["after"]["id"].as_i64().unwrap_or_default();
        positions.entry(id).or_default().insert((
            payload["lsn"].as_str().unwrap_or_default().to_string(),
            payload["commit_lsn"].as_str().unwrap_or_default().to_string(),
            payload["seq"].as_u64().unwrap_or(u64::MAX),
        ));
    }
    for (id, copies) in &positions {
        assert_eq!(copies.len(), 1, "copies of row {id} differ in lsn/commit_lsn/seq: {copies:?}");
    }
    for payload in env.payloads(TOPIC) {
        let id = payload["after"]["id"].as_i64().unwrap_or_default();
        if got.get(&id).copied().unwrap_or(0) > 1 {
            let commit = lsn(payload["commit_lsn"].as_str().unwrap());
            assert!(
                commit >= confirmed_at_kill,
                "duplicate row {id} at {commit:x} was already confirmed ({confirmed_at_kill:x})"
            );
        }
    }
    stop_cleanly(&mut restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_confirms_and_restart_sends_no_duplicates() {
    let env = Env::start().await;
    env.pg.psql("CREATE TABLE events (id bigserial PRIMARY KEY, payload text)").unwrap();
    let mut process = env.spawn(&[]).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO events (payload) SELECT 'x' FROM generate_series(1, 3000)").unwrap();
    for _ in 0..200 {
        env.pg.psql("INSERT INTO events (payload) VALUES ('y')").unwrap_or_default();
    }
    let status = process.terminate(Duration::from_secs(30)).await.expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "clean drain exits 0: {}", process.log());
    let before_restart = ids_in_danube(&env);
    let confirmed = env.confirmed_flush("danube_cdc");
    assert!(confirmed > 0, "the drain confirmed a position");

    let mut restarted = env.spawn(&[]).await;
    env.wait_streaming("danube_cdc", &restarted).await;
    env.pg.psql("INSERT INTO events (payload) VALUES ('last')").unwrap();
    let all: Vec<i64> = (1..=3201).collect();
    let got = wait_for_ids(&env, &all, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 3201, "every row arrives: {}", restarted.log());
    let duplicates: Vec<(&i64, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "a drained shutdown confirms everything it published; re-sent: {} rows (had {} before restart)",
        duplicates.len(),
        before_restart.len()
    );
    stop_cleanly(&mut restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_pauses_streaming_and_the_slot_holds() {
    let env = Env::start().await;
    env.pg.psql("CREATE TABLE events (id bigserial PRIMARY KEY, payload text)").unwrap();
    let mut process = env.spawn(&[]).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO events (payload) SELECT 'a' FROM generate_series(1, 100)").unwrap();
    env.broker.wait_for_messages(TOPIC, 100, Duration::from_secs(30)).await;
    let before_outage = lsn(&env.pg.psql("SELECT pg_current_wal_lsn()").unwrap());
    env.broker.stop().await;
    env.pg.psql("INSERT INTO events (payload) SELECT 'b' FROM generate_series(1, 500)").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = env.confirmed_flush("danube_cdc");
    env.broker.restart().await.expect("broker back");
    let all: Vec<i64> = (1..=600).collect();
    let got = wait_for_ids(&env, &all, Duration::from_secs(90)).await;
    let missing = all.iter().filter(|id| !got.contains_key(id)).count();
    assert_eq!(missing, 0, "rows lost across the outage: {}", process.log());
    // The outage transaction's commit record was not confirmed while Danube was down
    // (heartbeats before it may legitimately have advanced the slot).
    let outage_commit = env
        .payloads(TOPIC)
        .iter()
        .find(|p| p["after"]["payload"] == "b")
        .map(|p| lsn(p["commit_lsn"].as_str().unwrap()))
        .expect("outage rows");
    assert!(
        during <= outage_commit,
        "the slot confirmed past rows Danube had not acked: {during:x} > {outage_commit:x}"
    );
    assert!(outage_commit > before_outage);
    let expected: BTreeSet<i64> = all.into_iter().collect();
    assert_eq!(got.keys().copied().collect::<BTreeSet<_>>(), expected);
    let mut confirmed = env.confirmed_flush("danube_cdc");
    for _ in 0..50 {
        if confirmed > before_outage {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        confirmed = env.confirmed_flush("danube_cdc");
    }
    assert!(confirmed > before_outage, "after recovery the slot advances again");
    stop_cleanly(&mut process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_advances_the_slot_while_captured_tables_are_idle() {
    let env = Env::start().await;
    env.pg.psql("CREATE TABLE events (id bigserial PRIMARY KEY, payload text); CREATE TABLE other (id int)").unwrap();
    let mut process = env.spawn(&[("POSTGRES_CDC_TABLES", "[\"events\"]")]).await;
    env.wait_streaming("danube_cdc", &process).await;
    // WAL from a table outside the publication: nothing to publish, the slot must still move.
    env.pg.psql("INSERT INTO other SELECT g FROM generate_series(1, 10000) g").unwrap();
    let after_writes = lsn(&env.pg.psql("SELECT pg_current_wal_lsn()").unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut confirmed = env.confirmed_flush("danube_cdc");
    while confirmed < after_writes && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        confirmed = env.confirmed_flush("danube_cdc");
    }
    assert!(confirmed >= after_writes, "slot stuck at {confirmed:x}, WAL at {after_writes:x}: {}", process.log());
    assert!(env.payloads(TOPIC).is_empty());
    stop_cleanly(&mut process).await;
}
