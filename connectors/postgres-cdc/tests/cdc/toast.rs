//! The three treatments of unchanged TOAST columns (`connector.toast`), against a table whose
//! large text column is stored out of line.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{stop_cleanly, wait_payloads, Env};

/// A 12 kB value that cannot be compressed below the TOAST threshold.
const BIG: &str = "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 375) g";

/// Creates `docs` (replica identity `identity`) with one row whose `body` is out of line,
/// starts the connector with `extra`, updates another column, and returns the row's records
/// and the big value.
async fn update_record(env: &Env, identity: &str, extra: &[(&str, &str)]) -> (Vec<Value>, String) {
    env.pg
        .psql(&format!(
            "CREATE TABLE docs (id int PRIMARY KEY, body text, n int); \
             ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL; ALTER TABLE docs REPLICA IDENTITY {identity}"
        ))
        .unwrap();
    let big = env.pg.psql(BIG).unwrap();
    assert_eq!(big.len(), 12_000);
    let mut extra = extra.to_vec();
    extra.push(("POSTGRES_CDC_SNAPSHOT", "never"));
    let mut process = env.spawn(&extra).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql(&format!("INSERT INTO docs VALUES (1, ({BIG}), 0)")).unwrap();
    let toast_bytes: i64 = env
        .pg
        .psql("SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'docs'")
        .unwrap()
        .parse()
        .unwrap();
    assert!(toast_bytes > 0, "the value is stored out of line");
    env.pg.psql("UPDATE docs SET n = 1 WHERE id = 1").unwrap();
    let payloads = wait_payloads(env, "/default/public-docs", 2, Duration::from_secs(30)).await;
    assert_eq!(payloads.len(), 2, "{}", process.log());
    assert_eq!(payloads[0]["op"], "INSERT");
    assert_eq!(payloads[0]["after"]["body"], json!(big), "an INSERT carries the whole value");
    assert_eq!(payloads[1]["op"], "UPDATE");
    stop_cleanly(&mut process).await;
    (payloads, big)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_list_mode_leaves_the_column_out_and_lists_it() {
    let env = Env::start().await;
    let (payloads, _) = update_record(&env, "DEFAULT", &[]).await;
    let update = &payloads[1];
    assert_eq!(update["after"], json!({"id": 1, "n": 1}), "{update}");
    assert_eq!(update["unchanged_toast"], json!(["body"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_placeholder_mode_fills_the_configured_value() {
    let env = Env::start().await;
    let extra = [("POSTGRES_CDC_TOAST", "placeholder"), ("POSTGRES_CDC_TOAST_PLACEHOLDER", "<unchanged>")];
    let (payloads, _) = update_record(&env, "DEFAULT", &extra).await;
    let update = &payloads[1];
    assert_eq!(update["after"], json!({"id": 1, "body": "<unchanged>", "n": 1}), "{update}");
    assert_eq!(update["unchanged_toast"], json!(["body"]), "the filled column is still named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_before_mode_fills_from_the_full_old_row() {
    let env = Env::start().await;
    let (payloads, big) = update_record(&env, "FULL", &[("POSTGRES_CDC_TOAST", "before")]).await;
    let update = &payloads[1];
    assert_eq!(update["before"]["body"], json!(big), "REPLICA IDENTITY FULL sends the old value");
    assert_eq!(update["after"], json!({"id": 1, "body": big, "n": 1}));
    assert!(update.get("unchanged_toast").is_none(), "nothing left unknown: {update}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toast_before_mode_without_replica_identity_full_keeps_the_list() {
    let env = Env::start().await;
    let (payloads, _) = update_record(&env, "DEFAULT", &[("POSTGRES_CDC_TOAST", "before")]).await;
    let update = &payloads[1];
    assert_eq!(update["after"], json!({"id": 1, "n": 1}), "{update}");
    assert_eq!(update["unchanged_toast"], json!(["body"]));
}
