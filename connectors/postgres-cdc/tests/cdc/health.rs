//! Slot and stream health: the lag metric, readiness on lag, and a slot PostgreSQL invalidated.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{lsn, ops_get, sample, startup_error, stop_cleanly, wait_metric, Env};

const TOPIC: &str = "/default/public-events";
const LAG: &str = "postgres_cdc_replication_lag_bytes";
const SLOT: [(&str, &str); 1] = [("slot", "danube_cdc")];
/// `POSTGRES_CDC_READINESS_MAX_LAG_BYTES` of the lag test.
const MAX_LAG: u64 = 256 * 1024;

fn wal_position(env: &Env) -> u64 {
    lsn(&env.pg.psql("SELECT pg_current_wal_lsn()").expect("wal position"))
}

/// Commits `rows` single-row transactions with a 2 kB payload each (random hex: compression
/// cannot shrink its WAL).
async fn insert_rows(client: &tokio_postgres::Client, rows: usize) {
    for _ in 0..rows {
        client
            .execute(
                "INSERT INTO events (payload) SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 64)",
                &[],
            )
            .await
            .expect("insert");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_metric_grows_while_danube_is_down_and_falls_after_recovery() {
    let env = Env::start().await;
    env.pg.psql("CREATE TABLE events (id bigserial PRIMARY KEY, payload text)").unwrap();
    let max_lag = MAX_LAG.to_string();
    let mut process = env
        .spawn(&[
            ("POSTGRES_CDC_SLOT_CHECK_INTERVAL", "200ms"),
            ("POSTGRES_CDC_READINESS_MAX_LAG_BYTES", max_lag.as_str()),
        ])
        .await;
    env.wait_streaming("danube_cdc", &process).await;
    let client = env.client().await;
    insert_rows(&client, 10).await;
    env.broker.wait_for_messages(TOPIC, 10, Duration::from_secs(30)).await;
    let settled = wait_metric(&process, LAG, &SLOT, Duration::from_secs(30), |v| v < MAX_LAG as f64).await;
    let reserved = [("slot", "danube_cdc"), ("status", "reserved")];
    wait_metric(&process, "postgres_cdc_slot_wal_status", &reserved, Duration::from_secs(10), |v| v == 1.0).await;

    // Danube down: the records wait unacknowledged, the slot stays where it was, WAL grows.
    env.broker.stop().await;
    let outage_start = wal_position(&env);
    insert_rows(&client, 150).await;
    let half = wal_position(&env) - outage_start;
    // Single-row transactions: the slot cannot confirm past the first unacknowledged commit.
    let slack = 64 * 1024;
    let lag_half =
        wait_metric(&process, LAG, &SLOT, Duration::from_secs(30), |v| v >= half.saturating_sub(slack) as f64).await;
    insert_rows(&client, 150).await;
    let full = wal_position(&env) - outage_start;
    assert!(full > 2 * MAX_LAG, "the outage wrote {full} bytes of WAL");
    let lag_full =
        wait_metric(&process, LAG, &SLOT, Duration::from_secs(30), |v| v >= full.saturating_sub(slack) as f64).await;
    assert!(lag_full > lag_half, "the lag grows with the WAL written during the outage: {lag_half} then {lag_full}");
    assert!(lag_full > MAX_LAG as f64, "{lag_full}");
    let (status, body) = ops_get(&process, "/readyz").await;
    assert_eq!(status, 503, "not ready while the lag is above the threshold: {body}");
    assert!(body.contains("connector.readiness_max_lag_bytes"), "/readyz names the lag threshold: {body}");

    // Danube back: everything is published and acknowledged, the slot catches up.
    env.broker.restart().await.expect("broker back");
    env.broker.wait_for_messages(TOPIC, 310, Duration::from_secs(60)).await;
    let recovered = wait_metric(&process, LAG, &SLOT, Duration::from_secs(60), |v| v < MAX_LAG as f64).await;
    process.wait_ready(Duration::from_secs(30)).await.expect("ready again once the lag is below the threshold");
    println!(
        "lag: settled {settled} B, outage {lag_half} B then {lag_full} B (WAL written {half} / {full} B), recovered {recovered} B"
    );

    let (_, text) = ops_get(&process, "/metrics").await;
    let inserts = sample(&text, "postgres_cdc_records_total", &[("table", "public.events"), ("op", "INSERT")]);
    assert_eq!(inserts, Some(310.0), "records per table and op:\n{text}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    let last_commit = sample(&text, "postgres_cdc_last_commit_timestamp_seconds", &SLOT).expect("last commit time");
    assert!((now - last_commit).abs() < 120.0, "last commit {last_commit} is recent (now {now})");
    stop_cleanly(&mut process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_stops_the_connector_with_the_cause_and_the_recovery() {
    // `max_slot_wal_keep_size` below one segment: a checkpoint invalidates a slot whose
    // restart position is in an older segment than its redo position.
    let env = Env::start_with(&[("max_slot_wal_keep_size", "1MB")]).await;
    env.pg
        .psql("CREATE TABLE events (id bigserial PRIMARY KEY, payload text); CREATE TABLE filler (id int, pad text)")
        .unwrap();
    env.pg.psql("INSERT INTO events (payload) SELECT 'before' FROM generate_series(1, 5)").unwrap();
    let extra = [("POSTGRES_CDC_SLOT_CHECK_INTERVAL", "200ms"), ("POSTGRES_CDC_TABLES", "[\"events\"]")];
    let mut process = env.spawn(&extra).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.broker.wait_for_messages(TOPIC, 5, Duration::from_secs(30)).await;

    // Danube down: three changes wait unacknowledged, so the slot cannot advance, while other
    // tables fill segment after segment.
    env.broker.stop().await;
    env.pg.psql("INSERT INTO events (payload) VALUES ('a'); INSERT INTO events (payload) VALUES ('b')").unwrap();
    env.pg.psql("INSERT INTO events (payload) VALUES ('c')").unwrap();
    let mut status = String::new();
    for _ in 0..10 {
        env.pg
            .psql(
                "INSERT INTO filler SELECT g, repeat('y', 500) FROM generate_series(1, 2000) g; SELECT pg_switch_wal()",
            )
            .unwrap();
        env.pg.psql("CHECKPOINT").unwrap();
        status = env
            .pg
            .psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'danube_cdc'")
            .unwrap_or_default();
        if status == "lost" {
            break;
        }
    }
    assert_eq!(status, "lost", "PostgreSQL invalidated the slot: {}", env.pg.log());

    // The running connector stops with an error that names the cause and the recovery.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !process.log().contains("wal_status = lost") {
        assert!(tokio::time::Instant::now() < deadline, "the lost slot was not reported: {}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Danube back so the shutdown drain does not wait for it.
    env.broker.restart().await.expect("broker back");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let exit = loop {
        if let Some(status) = process.try_wait() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the connector kept running: {}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = process.log();
    assert_ne!(exit.code(), Some(0), "a lost slot is a failure: {log}");
    for expected in [
        "replication slot danube_cdc was invalidated",
        "max_slot_wal_keep_size",
        "pg_drop_replication_slot('danube_cdc')",
        "snapshot",
    ] {
        assert!(log.contains(expected), "the error says `{expected}`: {log}");
    }
    // A restart refuses the lost slot at startup with the same explanation.
    let startup = startup_error(&env, &extra).await;
    assert!(startup.contains("wal_status = lost") && startup.contains("pg_drop_replication_slot"), "{startup}");

    // The documented recovery: drop the slot, start again; a new slot and a snapshot follow.
    env.pg.psql("SELECT pg_drop_replication_slot('danube_cdc')").unwrap();
    let earlier = env.payloads(TOPIC).len();
    let mut recovered = env.spawn(&extra).await;
    env.wait_streaming("danube_cdc", &recovered).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let reads = loop {
        let reads: Vec<i64> = env
            .payloads(TOPIC)
            .iter()
            .skip(earlier)
            .filter(|p| p["op"] == "READ")
            .filter_map(|p| p["after"]["id"].as_i64())
            .collect();
        if reads.len() >= 8 || tokio::time::Instant::now() > deadline {
            break reads;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut ids = reads.clone();
    ids.sort_unstable();
    assert_eq!(ids, (1..=8).collect::<Vec<i64>>(), "the new snapshot has every row: {}", recovered.log());
    let table = [("table", "public.events")];
    let done =
        wait_metric(&recovered, "postgres_cdc_snapshot_rows", &table, Duration::from_secs(10), |v| v == 8.0).await;
    let (_, text) = ops_get(&recovered, "/metrics").await;
    assert_eq!(sample(&text, "postgres_cdc_snapshot_rows_estimated", &table), Some(8.0), "{text}");
    assert_eq!(done, 8.0);
    stop_cleanly(&mut recovered).await;
}
