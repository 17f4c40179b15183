//! A table added to `connector.tables` on a restart joins the existing publication and is
//! snapshotted, on the same slot.

use std::time::Duration;

use serde_json::Value;

use crate::common::{stop_cleanly, wait_payloads, Env};

const TOPIC_A: &str = "/default/public-a";
const TOPIC_B: &str = "/default/public-b";

fn ops(payloads: &[Value]) -> Vec<(String, i64)> {
    payloads
        .iter()
        .map(|p| {
            let row = if p["after"].is_null() { &p["before"] } else { &p["after"] };
            (p["op"].as_str().unwrap_or_default().to_string(), row["id"].as_i64().unwrap_or(-1))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_the_list_joins_the_publication_and_is_snapshotted_on_the_same_slot() {
    let env = Env::start().await;
    env.pg
        .psql(
            "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text); \
             INSERT INTO a SELECT g, 'a' FROM generate_series(1, 3) g; \
             INSERT INTO b SELECT g, 'b' FROM generate_series(1, 4) g",
        )
        .unwrap();
    let mut first = env.spawn(&[("POSTGRES_CDC_TABLES", "[\"a\"]")]).await;
    env.wait_streaming("danube_cdc", &first).await;
    env.pg.psql("INSERT INTO a VALUES (4, 'streamed')").unwrap();
    let a = wait_payloads(&env, TOPIC_A, 4, Duration::from_secs(30)).await;
    assert_eq!(ops(&a)[3], ("INSERT".to_string(), 4));
    stop_cleanly(&mut first).await;
    assert!(first.log().contains("replication slot created"));

    // While the connector is down: changes in both tables.
    env.pg.psql("INSERT INTO a VALUES (5, 'while down'); INSERT INTO b VALUES (5, 'b')").unwrap();
    let mut second = env.spawn(&[("POSTGRES_CDC_TABLES", "[\"a\", \"b\"]")]).await;
    env.wait_streaming("danube_cdc", &second).await;
    let published = env.pg.psql("SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'danube_cdc'").unwrap();
    assert_eq!(published, "a,b,danube_cdc_signals", "b joined the existing publication");
    let b = wait_payloads(&env, TOPIC_B, 5, Duration::from_secs(30)).await;
    let mut reads: Vec<i64> = ops(&b).iter().filter(|(op, _)| op == "READ").map(|(_, id)| *id).collect();
    reads.sort_unstable();
    assert_eq!(reads, vec![1, 2, 3, 4, 5], "b snapshotted: {}", second.log());
    assert!(!second.log().contains("replication slot created"), "no new slot: {}", second.log());
    assert_eq!(env.pg.psql("SELECT count(*) FROM pg_replication_slots").unwrap(), "1");

    // b streams from now on; a resumed where the slot was, without a second snapshot.
    env.pg
        .psql("UPDATE b SET v = 'changed' WHERE id = 2; DELETE FROM b WHERE id = 3; INSERT INTO a VALUES (6, 'after')")
        .unwrap();
    let b = wait_payloads(&env, TOPIC_B, 7, Duration::from_secs(30)).await;
    // Different keys go through different producers: compare without their relative order.
    let mut streamed = ops(&b)[5..].to_vec();
    streamed.sort();
    assert_eq!(streamed, [("DELETE".to_string(), 3), ("UPDATE".to_string(), 2)], "{b:?}");
    let a = wait_payloads(&env, TOPIC_A, 6, Duration::from_secs(30)).await;
    let a_ops = ops(&a);
    assert_eq!(a_ops.iter().filter(|(op, _)| op == "READ").count(), 3, "a is not snapshotted again: {a_ops:?}");
    let mut resumed = a_ops[4..].to_vec();
    resumed.sort();
    assert_eq!(resumed, [("INSERT".to_string(), 5), ("INSERT".to_string(), 6)]);
    let comment = env
        .pg
        .psql("SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'danube_cdc'")
        .unwrap();
    assert!(!comment.contains("danube_cdc:added"), "the added table's snapshot is recorded as done: {comment}");
    stop_cleanly(&mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_the_added_tables_snapshot_resumes_it_on_restart() {
    const ROWS: usize = 5_000;
    let env = Env::start().await;
    env.pg
        .psql(&format!(
            "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text); \
             INSERT INTO b SELECT g, 'b' FROM generate_series(1, {ROWS}) g"
        ))
        .unwrap();
    let mut first = env.spawn(&[("POSTGRES_CDC_TABLES", "[\"a\"]")]).await;
    env.wait_streaming("danube_cdc", &first).await;
    stop_cleanly(&mut first).await;

    // Small chunks and few records in flight keep the snapshot of b running for a while.
    let extra = [
        ("POSTGRES_CDC_TABLES", "[\"a\", \"b\"]"),
        ("POSTGRES_CDC_INCREMENTAL_CHUNK_SIZE", "100"),
        ("POSTGRES_CDC_BUFFER", "64"),
        ("CONNECTOR_SOURCE__MAX_IN_FLIGHT", "64"),
    ];
    let progress = |env: &Env| -> Value {
        let text = env
            .pg
            .psql("SELECT coalesce(data::text, 'null') FROM danube_cdc_signals WHERE id = 'progress:danube_cdc'")
            .unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    let mut second = env.spawn(&extra).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env.broker.messages(TOPIC_B).len() < 200 || !progress(&env)["tables"][0]["last_key"].is_array() {
        assert!(tokio::time::Instant::now() < deadline, "the snapshot of b never progressed: {}", second.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    second.kill9();
    let at_kill = env.broker.messages(TOPIC_B).len();
    assert!(at_kill < ROWS, "killed in the middle of the snapshot ({at_kill} of {ROWS} rows)");
    let recorded = progress(&env);
    assert_eq!(recorded["tables"][0]["table"], "b", "{recorded}");
    let resume_after: i64 = recorded["tables"][0]["last_key"][0].as_str().expect("key").parse().expect("int");
    let comment = env
        .pg
        .psql("SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'danube_cdc'")
        .unwrap();
    assert!(!comment.contains("danube_cdc:added"), "handed over to the incremental snapshot: {comment}");

    let mut third = env.spawn(&extra).await;
    env.wait_streaming("danube_cdc", &third).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !progress(&env)["tables"].as_array().is_some_and(Vec::is_empty) {
        assert!(tokio::time::Instant::now() < deadline, "the snapshot never finished: {}", third.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payloads = env.payloads(TOPIC_B);
    let ids: std::collections::BTreeSet<i64> =
        payloads.iter().filter(|p| p["op"] == "READ").filter_map(|p| p["after"]["id"].as_i64()).collect();
    assert_eq!(ids.len(), ROWS, "every row of b was read: {}", third.log());
    let reread: Vec<i64> =
        payloads[at_kill..].iter().filter(|p| p["op"] == "READ").filter_map(|p| p["after"]["id"].as_i64()).collect();
    assert!(reread.iter().all(|id| *id > resume_after), "the restart resumed after id {resume_after}");
    println!(
        "added-table snapshot killed after {at_kill} of {ROWS} rows; resumed after id {resume_after}, {} rows read again",
        reread.len()
    );
    stop_cleanly(&mut third).await;
}
