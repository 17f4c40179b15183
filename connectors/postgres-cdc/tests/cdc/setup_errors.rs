//! Configuration and server-setup errors are clear and name what to fix.

use std::process::Command;
use std::time::Duration;

use danube_connect_testkit::postgres::Postgres;

use crate::common::{startup_error, stop_cleanly, Env, BIN};

#[test]
fn bad_config_names_the_field() {
    let cases = [
        ("POSTGRES_CDC_SLOT", "Bad-Slot", "connector.slot"),
        ("POSTGRES_CDC_TOPIC", "no-namespace", "connector.topic"),
        ("POSTGRES_CDC_TABLES", "[\"a.b.c\"]", "connector.tables[0]"),
        ("POSTGRES_CDC_SNAPSHOT", "sometimes", "snapshot"),
    ];
    for (var, value, field) in cases {
        let out = Command::new(BIN).arg("--check").env(var, value).output().expect("run binary");
        assert_eq!(out.status.code(), Some(1), "{var}={value} must be refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.to_lowercase().contains(field), "{var}={value}: error should name {field}: {stderr}");
    }
    let ok = Command::new(BIN).arg("--check").env("POSTGRES_CDC_PASSWORD", "hunter2").output().expect("run binary");
    assert_eq!(ok.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("slot = \"danube_cdc\""), "{stdout}");
    assert!(!stdout.contains("hunter2"), "password redacted: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_and_privileges_are_reported() {
    let env = Env::start().await;
    let log = startup_error(&env, &[("POSTGRES_CDC_TABLES", "[\"public.nope\"]")]).await;
    assert!(log.contains("table public.nope listed in connector.tables does not exist"), "{log}");
    env.pg.psql("CREATE ROLE plain LOGIN").unwrap();
    let url = format!("postgres://plain@127.0.0.1:{}/postgres", env.pg.port());
    let log = startup_error(&env, &[("POSTGRES_CDC_URL", &url)]).await;
    assert!(log.contains("REPLICATION privilege"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_not_logical_is_reported() {
    let pg = Postgres::start_with(&[("wal_level", "replica")]).expect("postgres");
    let broker = danube_dev_broker::EmbeddedBroker::start_default().await.expect("broker");
    let env = Env { pg, broker };
    let log = startup_error(&env, &[]).await;
    assert!(log.contains("wal_level is `replica`"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_and_publication_are_created_and_a_busy_slot_is_refused() {
    let env = Env::start().await;
    env.pg.psql("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)").unwrap();
    let mut first = env
        .spawn(&[("POSTGRES_CDC_SLOT", "s1"), ("POSTGRES_CDC_PUBLICATION", "p1"), ("POSTGRES_CDC_TABLES", "[\"a\"]")])
        .await;
    env.wait_streaming("s1", &first).await;
    assert_eq!(env.pg.psql("SELECT plugin FROM pg_replication_slots WHERE slot_name = 's1'").unwrap(), "pgoutput");
    assert_eq!(
        env.pg
            .psql(
                "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'p1'"
            )
            .unwrap(),
        "a,danube_cdc_signals",
        "the listed table and the signal table"
    );
    let log = startup_error(
        &env,
        &[
            ("CONNECTOR_NAME", "second"),
            ("POSTGRES_CDC_SLOT", "s1"),
            ("POSTGRES_CDC_PUBLICATION", "p1"),
            ("POSTGRES_CDC_SLOT_WAIT", "1s"),
        ],
    )
    .await;
    assert!(log.contains("replication slot s1 is active in another session"), "{log}");
    // Only the listed table is captured.
    env.pg.psql("INSERT INTO a VALUES (1); INSERT INTO b VALUES (1)").unwrap();
    env.broker.wait_for_messages("/default/public-a", 1, Duration::from_secs(30)).await;
    assert_eq!(env.broker.messages("/default/public-a").len(), 1, "{}", first.log());
    assert!(env.broker.messages("/default/public-b").is_empty());
    stop_cleanly(&mut first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_snapshot_marker_stops_startup_before_the_slot_exists() {
    let env = Env::start().await;
    env.pg
        .psql(
            "CREATE ROLE cdc LOGIN REPLICATION; CREATE TABLE accounts (id int PRIMARY KEY);
             INSERT INTO accounts VALUES (1); GRANT SELECT ON accounts TO cdc;
             CREATE PUBLICATION danube_cdc FOR TABLE accounts",
        )
        .unwrap();
    let url = format!("postgres://cdc@127.0.0.1:{}/postgres", env.pg.port());
    let log = startup_error(&env, &[("POSTGRES_CDC_URL", &url)]).await;
    assert!(
        log.contains("cannot record the snapshot progress of slot danube_cdc in the comment of publication danube_cdc"),
        "{log}"
    );
    assert_eq!(
        env.pg.psql("SELECT count(*) FROM pg_replication_slots").unwrap(),
        "0",
        "no slot is created without the marker: a crash during its snapshot could not be detected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_slot_false_refuses_a_missing_slot_and_keeps_an_interrupted_one() {
    let env = Env::start().await;
    env.pg
        .psql("CREATE TABLE accounts (id int PRIMARY KEY); CREATE PUBLICATION danube_cdc FOR TABLE accounts")
        .unwrap();
    let log = startup_error(&env, &[("POSTGRES_CDC_CREATE_SLOT", "false")]).await;
    assert!(log.contains("replication slot danube_cdc does not exist and connector.create_slot is false"), "{log}");
    // A slot whose initial snapshot was interrupted: it must be redone on a new slot, which
    // create_slot = false forbids, so the slot is left alone and startup fails.
    env.pg
        .psql(
            "SELECT pg_create_logical_replication_slot('danube_cdc', 'pgoutput');
             COMMENT ON PUBLICATION danube_cdc IS 'danube-cdc snapshot {\"danube_cdc\":\"pending\"}'",
        )
        .unwrap();
    let log = startup_error(&env, &[("POSTGRES_CDC_CREATE_SLOT", "false")]).await;
    assert!(log.contains("was interrupted and must be redone on a new slot"), "{log}");
    assert_eq!(env.pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'danube_cdc'").unwrap(), "1");
}
