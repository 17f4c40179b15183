//! The pg-to-clickhouse pipeline end to end with its own config files: a real PostgreSQL, the
//! development Danube broker, a real ClickHouse, and the `danube-postgres-cdc` and
//! `danube-clickhouse` binaries of this build profile (`cargo build -p
//! danube-connector-postgres-cdc -p danube-connector-clickhouse`, or `scripts/test.sh`).
//!
//! A writer inserts, updates and deletes rows (and adds a column) continuously; meanwhile
//! postgres-cdc and the sink are each killed with SIGKILL once and restarted, and the broker is
//! restarted once. At the end `SELECT ... FINAL WHERE _deleted = 0` must equal the PostgreSQL
//! table, every row and every value.
//!
//! Broker: the development broker only. Danube v0.15.1 (the real broker) fails to restart on
//! its own data after about 8 s of uptime (its first Raft snapshot; see
//! `/docs/running-on-danube.md`), and the restart is part of this test; the CDC mode's own
//! tests (`connectors/clickhouse/tests/cdc.rs`) run on both brokers.

use std::time::{Duration, Instant};

use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::clickhouse::ClickHouseServer;
use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::postgres::Postgres;

mod pipeline;

use pipeline::{check_configs, spawn_env, start, workspace};

const PIPELINE: &str = "examples/pipelines/pg-to-clickhouse";
const TOPIC: &str = "/default/public-accounts";
const COLUMNS: &str = "id, owner, balance, note, tier";

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The PostgreSQL table as TSV (`COPY ... TO STDOUT`: `\N` for NULL, escapes like ClickHouse).
fn source_rows(pg: &Postgres) -> String {
    pg.psql(&format!("COPY (SELECT {COLUMNS} FROM accounts ORDER BY id) TO STDOUT")).expect("copy accounts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_clickhouse_converges_through_kills_and_a_broker_restart() {
    std::env::set_current_dir(workspace()).expect("cd to the workspace root");
    let pg = Postgres::start().expect("postgres (scripts/test.sh installs it)");
    let init = std::fs::read_to_string(format!("{PIPELINE}/init.sql")).expect("init.sql");
    pg.psql(&init).expect("create the table");
    let ch = ClickHouseServer::start().await.expect("start ClickHouse (scripts/test.sh installs it)");
    let mut broker = TestBroker::start_persistent(BrokerKind::Dev).await.expect("dev broker");
    let spool = tempfile::tempdir().expect("spool dir");

    // Rows before the connector starts: they arrive as the snapshot (READ).
    pg.psql("INSERT INTO accounts SELECT i, 'owner ' || i, i * 10, NULL FROM generate_series(1, 50) i")
        .expect("seed rows");
    // The topic must exist before the sink subscribes, and the sink must subscribe before the
    // snapshot is published (a new subscription starts at the end of its topic).
    drop(reliable_producers(broker.url(), TOPIC, "topic-init", 1).await.expect("create the topic"));
    // The window the example's sink batches (sink.batch.max_records = 1000) are made for, as
    // compose.yml runs the broker (`--max-unacked 10000`); kept across the broker's restart.
    broker.set_dispatch_window(TOPIC, "shop-to-clickhouse", 10_000).await.expect("dispatch window");
    let sink_vars = spawn_env(
        PIPELINE,
        "clickhouse.toml",
        &[
            ("DANUBE_SERVICE_URL", broker.url()),
            ("CLICKHOUSE_URL", ch.url()),
            ("CLICKHOUSE_SPOOL__DIR", spool.path().display().to_string()),
        ],
    );
    let mut sink = start("danube-clickhouse", &sink_vars, "consuming").await;
    let cdc_vars = spawn_env(
        PIPELINE,
        "postgres-cdc.toml",
        &[
            ("DANUBE_SERVICE_URL", broker.url()),
            ("POSTGRES_CDC_URL", pg.url()),
            ("POSTGRES_CDC_STATUS_INTERVAL", "200ms".into()),
            ("POSTGRES_CDC_HEARTBEAT_INTERVAL", "1s".into()),
        ],
    );
    let mut cdc = start("danube-postgres-cdc", &cdc_vars, "").await;

    let started = Instant::now();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut next_id = 51u64;
    let mut tier_added = false;
    let steps = 240;
    // Logs of the killed processes, for failure messages.
    let mut earlier_logs = String::new();
    for step in 0..steps {
        match step {
            40 => {
                cdc.kill9();
                earlier_logs.push_str(&format!("--- postgres-cdc before kill -9\n{}\n", cdc.log()));
            }
            55 => cdc = start("danube-postgres-cdc", &cdc_vars, "").await,
            80 => {
                sink.kill9();
                earlier_logs.push_str(&format!("--- sink before kill -9\n{}\n", sink.log()));
            }
            95 => sink = start("danube-clickhouse", &sink_vars, "consuming").await,
            120 => {
                pg.psql("ALTER TABLE accounts ADD COLUMN tier integer").expect("add a column");
                tier_added = true;
            }
            160 => broker.restart().await.expect("restart the dev broker"),
            _ => {}
        }
        // One transaction: an insert, an update or two (one may hit the same row twice), and
        // now and then a delete or a key change.
        let mut sql = String::from("BEGIN;");
        sql.push_str(&format!("INSERT INTO accounts (id, owner, balance) VALUES ({next_id}, 'o{next_id}', {step});"));
        next_id += 1;
        for _ in 0..2 {
            let id = 1 + rng.below(next_id);
            let note = if rng.below(3) == 0 { "NULL".to_string() } else { format!("'note {step} \t\\ \"q\"'") };
            let tier = if tier_added { format!(", tier = {}", rng.below(5)) } else { String::new() };
            sql.push_str(&format!("UPDATE accounts SET balance = balance + 1, note = {note}{tier} WHERE id = {id};"));
        }
        if rng.below(4) == 0 {
            sql.push_str(&format!("DELETE FROM accounts WHERE id = {};", 1 + rng.below(next_id)));
        }
        if rng.below(10) == 0 {
            let id = 1 + rng.below(next_id);
            sql.push_str(&format!(
                "UPDATE accounts SET id = {} WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM accounts WHERE id = {});",
                next_id + 100_000,
                next_id + 100_000
            ));
        }
        sql.push_str("COMMIT;");
        pg.psql(&sql).unwrap_or_else(|e| panic!("step {step}: {e}"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let written = started.elapsed();

    let expected = source_rows(&pg);
    let select =
        format!("SELECT {COLUMNS} FROM analytics.public_accounts FINAL WHERE _deleted = 0 ORDER BY id FORMAT TSV");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got;
    loop {
        got = ch.query(&select).await.unwrap_or_else(|e| format!("error: {e}"));
        if got == expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rows = expected.lines().count();
    assert!(rows > 100, "the source holds rows: {rows}");
    if got != expected {
        let got_lines: Vec<&str> = got.lines().collect();
        let expected_lines: Vec<&str> = expected.lines().collect();
        let missing: Vec<&&str> = expected_lines.iter().filter(|l| !got_lines.contains(l)).take(5).collect();
        let extra: Vec<&&str> = got_lines.iter().filter(|l| !expected_lines.contains(l)).take(5).collect();
        panic!(
            "ClickHouse differs from PostgreSQL ({} vs {} rows); missing {missing:?}, extra {extra:?}\n{earlier_logs}--- sink\n{}\n--- cdc\n{}",
            got_lines.len(),
            expected_lines.len(),
            sink.log(),
            cdc.log()
        );
    }
    let stored = ch.query("SELECT count() FROM analytics.public_accounts").await.expect("count");
    println!(
        "pg-to-clickhouse (dev broker): {steps} transactions in {written:?} with kill -9 of postgres-cdc and of the sink and a \
         broker restart; {rows} rows equal after {:?} in total; {stored} stored rows before merges",
        started.elapsed()
    );
    for (name, mut process) in [("sink", sink), ("postgres-cdc", cdc)] {
        let status = process.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{name}: clean exit: {status}");
    }
}

#[test]
fn pg_to_clickhouse_configs_are_valid() {
    check_configs(
        PIPELINE,
        &[
            ("danube-postgres-cdc", "postgres-cdc.toml", "shop_to_clickhouse"),
            ("danube-clickhouse", "clickhouse.toml", "{schema}_{table}"),
        ],
    );
}
