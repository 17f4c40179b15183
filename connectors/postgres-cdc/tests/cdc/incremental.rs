//! Incremental snapshots on signal: a table read in primary-key chunks between watermarks
//! while the stream goes on; resumed after a kill -9; stopped by a signal; a signalled table
//! outside the publication joins it on the same slot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::common::{lsn, stop_cleanly, Env};

const SLOT: &str = "danube_cdc";

/// Inserts a signal row into the default signal table.
fn signal(env: &Env, id: &str, kind: &str, data: &str) {
    env.pg
        .psql(&format!(
            "INSERT INTO danube_cdc_signals (id, type, data) VALUES ('{id}', '{kind}', '{}')",
            data.replace('\'', "''")
        ))
        .unwrap();
}

/// The recorded progress of the slot's incremental snapshots (`null` before any).
fn progress(env: &Env) -> Value {
    let text = env
        .pg
        .psql(&format!("SELECT coalesce(data::text, 'null') FROM danube_cdc_signals WHERE id = 'progress:{SLOT}'"))
        .unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Waits until the recorded progress satisfies `accept`.
async fn wait_progress(env: &Env, what: &str, timeout: Duration, accept: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = progress(env);
        if accept(&value) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: progress stayed {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Payloads and attributes stored on `topic`, in order.
fn messages(env: &Env, topic: &str) -> Vec<(Value, Option<String>)> {
    env.broker
        .messages(topic)
        .iter()
        .map(|m| (serde_json::from_slice(&m.payload).expect("JSON"), m.attributes.get("snapshot").cloned()))
        .collect()
}

fn reads(env: &Env, topic: &str) -> Vec<i64> {
    messages(env, topic)
        .iter()
        .filter(|(p, _)| p["op"] == "READ")
        .filter_map(|(p, _)| p["after"]["id"].as_i64())
        .collect()
}

/// How many `READ` records `topic` holds (from the attributes, without parsing payloads).
fn read_count(env: &Env, topic: &str) -> usize {
    env.broker.messages(topic).iter().filter(|m| m.attributes.get("op").map(String::as_str) == Some("READ")).count()
}

/// Folds the records by key in their order: the table they describe.
fn fold(payloads: &[Value]) -> BTreeMap<i64, Value> {
    let mut table = BTreeMap::new();
    for payload in payloads {
        match payload["op"].as_str() {
            Some("READ" | "INSERT" | "UPDATE") => {
                let row = payload["after"].clone();
                table.insert(row["id"].as_i64().expect("id"), row);
            }
            Some("DELETE") => {
                table.remove(&payload["before"]["id"].as_i64().expect("id"));
            }
            other => panic!("unexpected op {other:?}"),
        }
    }
    table
}

/// The table's rows as JSON objects by id (`to_jsonb`, so types map like the connector's).
fn table_rows(env: &Env, table: &str) -> BTreeMap<i64, Value> {
    let text = env.pg.psql(&format!("SELECT coalesce(jsonb_agg(to_jsonb(t))::text, '[]') FROM {table} t")).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&text).expect("rows");
    rows.into_iter().map(|row| (row["id"].as_i64().expect("id"), row)).collect()
}

/// Waits until the slot confirmed everything written so far: every record is acknowledged.
async fn wait_confirmed_now(env: &Env, timeout: Duration) {
    let now = lsn(&env.pg.psql("SELECT pg_current_wal_lsn()::text").unwrap());
    let deadline = tokio::time::Instant::now() + timeout;
    while env.confirmed_flush(SLOT) < now {
        assert!(tokio::time::Instant::now() < deadline, "the slot never confirmed {now:x}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Updates, deletes and re-inserts random rows of `big` (ids 1..=rows), one per transaction,
/// until stopped; returns how many statements ran.
fn start_writer(env: &Env, rows: i64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let url = env.pg.url();
    tokio::spawn(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut statements = 0;
        while !stop.load(Ordering::Relaxed) {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let id = ((state >> 33) % rows as u64) as i32 + 1;
            let sql = match (state >> 20) % 10 {
                0..=5 => "UPDATE big SET v = v + 1, note = 'updated' WHERE id = $1",
                6..=7 => "DELETE FROM big WHERE id = $1",
                _ => "INSERT INTO big VALUES ($1, 0, 'reinserted') ON CONFLICT (id) DO NOTHING",
            };
            client.execute(sql, &[&id]).await.expect("writer statement");
            statements += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        statements
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_snapshot_under_writes_folds_to_the_final_table_across_a_kill_9() {
    const ROWS: i64 = 100_000;
    const TOPIC: &str = "/default/public-big";
    let env = Env::start().await;
    env.pg
        .psql(&format!(
            "CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, note text); \
             INSERT INTO big SELECT g, 0, 'initial' FROM generate_series(1, {ROWS}) g"
        ))
        .unwrap();
    // No initial snapshot: the rows reach Danube only through the incremental one.
    let extra = [("POSTGRES_CDC_TABLES", "[\"big\"]"), ("POSTGRES_CDC_SNAPSHOT", "never")];
    let mut first = env.spawn(&extra).await;
    env.wait_streaming(SLOT, &first).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(&env, ROWS, stop.clone());
    let started = std::time::Instant::now();
    signal(&env, "snap-1", "execute-snapshot", r#"{"data-collections": ["public.big"]}"#);

    // Kill once a third of the table is out and some progress is recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let recorded = progress(&env)["tables"][0]["last_key"].is_array();
        if recorded && read_count(&env, TOPIC) as i64 >= ROWS / 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot did not progress ({} READs of {} records, progress {}): {}",
            read_count(&env, TOPIC),
            env.broker.messages(TOPIC).len(),
            progress(&env),
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill9();
    let read_at_kill = read_count(&env, TOPIC);
    let at_kill = progress(&env);
    let resume_after: i64 = at_kill["tables"][0]["last_key"][0].as_str().expect("recorded key").parse().expect("int");
    assert!((read_at_kill as i64) < ROWS, "killed in the middle of the snapshot ({read_at_kill} rows read)");
    assert!(resume_after > 0 && resume_after < ROWS, "{at_kill}");

    let messages_before_restart = env.broker.messages(TOPIC).len();
    let mut second = env.spawn(&extra).await;
    wait_progress(&env, "the resumed snapshot finishes", Duration::from_secs(180), |p| {
        p["tables"].as_array().is_some_and(Vec::is_empty) && p["finished"][0] == "snap-1"
    })
    .await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let statements = writer.await.expect("writer");
    wait_confirmed_now(&env, Duration::from_secs(60)).await;

    // The restart resumed after the recorded chunk instead of starting again.
    let after_restart = &messages(&env, TOPIC)[messages_before_restart..];
    let reread: Vec<i64> = after_restart
        .iter()
        .filter(|(p, _)| p["op"] == "READ")
        .filter_map(|(p, _)| p["after"]["id"].as_i64())
        .collect();
    assert!(!reread.is_empty());
    assert!(
        reread.iter().all(|id| *id > resume_after),
        "every READ after the restart is past the recorded key {resume_after}: min {:?}",
        reread.iter().min()
    );
    assert!(
        after_restart
            .iter()
            .filter(|(p, _)| p["op"] == "READ")
            .all(|(_, snapshot)| snapshot.as_deref() == Some("snap-1")),
        "READ records carry the snapshot id"
    );
    let all = messages(&env, TOPIC);
    let payloads: Vec<Value> = all.iter().map(|(p, _)| p.clone()).collect();
    let folded = fold(&payloads);
    let expected = table_rows(&env, "big");
    let differing: Vec<&i64> =
        expected.keys().chain(folded.keys()).filter(|id| folded.get(id) != expected.get(id)).take(10).collect();
    if let Some(id) = differing.first() {
        let history: Vec<&Value> = payloads
            .iter()
            .filter(|p| p["after"]["id"].as_i64() == Some(**id) || p["before"]["id"].as_i64() == Some(**id))
            .collect();
        panic!(
            "fold differs from the table at ids {differing:?}; id {id}: folded {:?}, table {:?}, records {history:?}",
            folded.get(id),
            expected.get(id)
        );
    }
    let total_reads = read_count(&env, TOPIC);
    println!(
        "incremental snapshot of {ROWS} rows with {statements} concurrent writes in {elapsed:?}; killed after \
         {read_at_kill} READs (recorded up to id {resume_after}); {total_reads} READs in all, {} records, fold = table \
         ({} rows)",
        all.len(),
        expected.len()
    );
    assert_eq!(env.pg.psql("SELECT count(*) FROM pg_replication_slots").unwrap(), "1");
    stop_cleanly(&mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_snapshot_stops_a_running_incremental_snapshot() {
    const ROWS: i64 = 20_000;
    const TOPIC: &str = "/default/public-slow";
    let env = Env::start().await;
    env.pg
        .psql(&format!(
            "CREATE TABLE slow (id int PRIMARY KEY, v text); INSERT INTO slow SELECT g, 'x' FROM generate_series(1, {ROWS}) g"
        ))
        .unwrap();
    let extra = [
        ("POSTGRES_CDC_TABLES", "[\"slow\"]"),
        ("POSTGRES_CDC_SNAPSHOT", "never"),
        ("POSTGRES_CDC_INCREMENTAL_CHUNK_SIZE", "50"),
        ("CONNECTOR_SOURCE__MAX_IN_FLIGHT", "16"),
    ];
    let mut process = env.spawn(&extra).await;
    env.wait_streaming(SLOT, &process).await;
    signal(&env, "slow-1", "execute-snapshot", r#"{"data-collections": ["public.slow"]}"#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while read_count(&env, TOPIC) < 500 {
        assert!(tokio::time::Instant::now() < deadline, "the snapshot never started: {}", process.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&env, "stop-1", "stop-snapshot", r#"{"data-collections": ["public.slow"]}"#);
    wait_progress(&env, "the stop is recorded", Duration::from_secs(30), |p| {
        p["tables"].as_array().is_some_and(Vec::is_empty) && p["finished"][0] == "slow-1"
    })
    .await;
    // Rows emitted before the stop was seen are still published; then nothing more.
    wait_confirmed_now(&env, Duration::from_secs(30)).await;
    let at_stop = read_count(&env, TOPIC);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = read_count(&env, TOPIC);
    assert_eq!(later, at_stop, "no READ after the stop: {}", process.log());
    assert!((later as i64) < ROWS, "stopped before the end ({later} of {ROWS})");
    assert!(process.log().contains("incremental snapshot stopped"), "{}", process.log());
    // The stream goes on.
    env.pg.psql("UPDATE slow SET v = 'after stop' WHERE id = 1").unwrap();
    env.broker.wait_for_messages(TOPIC, later + 1, Duration::from_secs(30)).await;
    let last = messages(&env, TOPIC).pop().expect("a record").0;
    assert_eq!((last["op"].as_str(), last["after"]["v"].as_str()), (Some("UPDATE"), Some("after stop")));
    println!("stop-snapshot stopped the snapshot after {later} of {ROWS} rows");
    stop_cleanly(&mut process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signalled_table_outside_the_publication_joins_it_and_is_snapshotted_on_the_same_slot() {
    const TOPIC: &str = "/default/public-late";
    let env = Env::start().await;
    env.pg.psql("CREATE TABLE a (id int PRIMARY KEY, v text)").unwrap();
    let mut process = env.spawn(&[("POSTGRES_CDC_TABLES", "[\"a\"]")]).await;
    env.wait_streaming(SLOT, &process).await;
    // Created while the connector runs, with rows, outside the publication.
    env.pg
        .psql(
            "CREATE TABLE late (id int PRIMARY KEY, v text); \
             INSERT INTO late SELECT g, 'old' FROM generate_series(1, 300) g",
        )
        .unwrap();
    env.pg.psql("UPDATE late SET v = 'unpublished change' WHERE id = 2").unwrap();
    let published = "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'danube_cdc' AND tablename = 'late'";
    assert_eq!(env.pg.psql(published).unwrap(), "0");
    signal(&env, "late-1", "execute-snapshot", r#"{"data-collections": ["late"], "filter": "id <= 200"}"#);
    wait_progress(&env, "the snapshot of late finishes", Duration::from_secs(60), |p| p["finished"][0] == "late-1")
        .await;
    assert_eq!(env.pg.psql(published).unwrap(), "1", "late joined the publication");
    let mut ids = reads(&env, TOPIC);
    ids.sort_unstable();
    assert_eq!(ids, (1..=200).collect::<Vec<i64>>(), "the filtered rows, each once: {}", process.log());
    let payloads = messages(&env, TOPIC);
    let row2 = payloads.iter().find(|(p, _)| p["after"]["id"] == 2).expect("row 2");
    assert_eq!(row2.0["after"]["v"], "unpublished change");
    assert_eq!(row2.1.as_deref(), Some("late-1"), "the snapshot id is an attribute");

    // Later changes come through the stream, on the same slot.
    env.pg.psql("INSERT INTO late VALUES (1000, 'new'); UPDATE late SET v = 'changed' WHERE id = 3; DELETE FROM late WHERE id = 4").unwrap();
    env.broker.wait_for_messages(TOPIC, 203, Duration::from_secs(30)).await;
    let mut streamed: Vec<(String, i64)> = messages(&env, TOPIC)[200..]
        .iter()
        .map(|(p, _)| {
            let row = if p["after"].is_null() { &p["before"] } else { &p["after"] };
            (p["op"].as_str().unwrap_or_default().to_string(), row["id"].as_i64().unwrap_or(-1))
        })
        .collect();
    streamed.sort();
    assert_eq!(
        streamed,
        [("DELETE".to_string(), 4), ("INSERT".to_string(), 1000), ("UPDATE".to_string(), 3)],
        "{}",
        process.log()
    );
    assert_eq!(env.pg.psql("SELECT count(*) FROM pg_replication_slots").unwrap(), "1");
    assert_eq!(process.log().matches("replication slot created").count(), 1, "no new slot");
    // The signal table itself is never published as data.
    assert!(env.broker.messages("/default/public-danube_cdc_signals").is_empty());
    stop_cleanly(&mut process).await;
}
