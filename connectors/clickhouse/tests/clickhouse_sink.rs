//! The `danube-clickhouse` binary against a real ClickHouse server (started by the testkit)
//! and the embedded Danube broker.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use danube_connect_testkit::clickhouse::ClickHouseServer;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;

const NAME: &str = "chsink";
const LOW_CARDINALITY: &[(&str, &str)] = &[("allow_experimental_low_cardinality_type", "1")];

struct Setup {
    broker: EmbeddedBroker,
    ch: ClickHouseServer,
    spool: tempfile::TempDir,
}

async fn setup() -> Setup {
    let broker = EmbeddedBroker::start_default().await.expect("start the embedded broker");
    let ch = ClickHouseServer::start().await.expect("start ClickHouse (scripts/test.sh installs it)");
    let spool = tempfile::tempdir().expect("spool dir");
    Setup { broker, ch, spool }
}

fn env(s: &Setup, topic: &str, table_json: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    base_env(&s.broker, &s.ch.url(), s.spool.path(), topic, table_json, extra)
}

fn base_env(
    broker: &EmbeddedBroker,
    clickhouse_url: &str,
    spool: &Path,
    topic: &str,
    table_json: &str,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", NAME.to_string()),
        ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
        ("CONNECTOR_SINK__BATCH__MAX_RECORDS", "10".into()),
        ("CONNECTOR_SINK__BATCH__LINGER", "5ms".into()),
        ("CONNECTOR_RETRY__INITIAL_BACKOFF", "50ms".into()),
        ("CONNECTOR_RETRY__MAX_BACKOFF", "500ms".into()),
        ("CLICKHOUSE_URL", clickhouse_url.to_string()),
        ("CLICKHOUSE_TABLES", format!("[{table_json}]")),
        ("CLICKHOUSE_SPOOL__DIR", spool.display().to_string()),
        ("CLICKHOUSE_BATCH__MAX_LINGER", "200ms".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

async fn spawn(s: &Setup, topic: &str, env: &HashMap<String, String>) -> ConnectorProcess {
    if s.broker.messages(topic).is_empty() {
        // The broker refuses subscriptions to unknown topics; a new subscription starts
        // after this message, so the sink never sees it.
        publish(s, topic, "priming message before the subscription");
    }
    let mut sink = ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-clickhouse")), env).expect("spawn");
    sink.wait_ready(Duration::from_secs(30)).await.expect("sink ready");
    assert!(
        s.broker.wait_for_consumers(topic, NAME, 1, Duration::from_secs(20)).await,
        "the sink never subscribed: {}",
        sink.log()
    );
    sink
}

fn publish(s: &Setup, topic: &str, payload: impl Into<Vec<u8>>) {
    s.broker.publish(topic, payload.into(), HashMap::new(), None);
}

async fn count(ch: &ClickHouseServer, sql: &str) -> u64 {
    ch.query(sql).await.expect("query").parse().expect("a count")
}

/// Polls `sql` (a count) until it equals `expected`; returns the last value.
async fn wait_count(ch: &ClickHouseServer, sql: &str, expected: u64, timeout: Duration) -> u64 {
    let started = Instant::now();
    loop {
        let n = ch.query(sql).await.ok().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
        if n == expected || started.elapsed() > timeout {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_is_converted_and_inserted() {
    let s = setup().await;
    s.ch.query_with_settings(
        "CREATE TABLE typed (i8 Int8, i64 Int64, u64 UInt64, f32 Float32, f64 Float64, s String, fs FixedString(3), \
         b UInt8, d Date, dt DateTime, dt_iso DateTime, n Nullable(Int32), a Array(String), an Array(Nullable(UInt16)), \
         lc LowCardinality(String), u UUID, dec Decimal(10, 2), nn Nullable(Int32), en Enum8('a' = 1, 'b' = 2), \
         en_num Enum8('a' = 1, 'b' = 2), _topic String, _offset UInt64, _time DateTime, _key Nullable(String)) \
         ENGINE = MergeTree ORDER BY tuple()",
        LOW_CARDINALITY,
    )
    .await
    .expect("create table");
    let topic = "/default/typed";
    let table = r#"{topic="/default/typed", table="typed", topic_column="_topic", offset_column="_offset", publish_time_column="_time", key_column="_key"}"#;
    let mut sink = spawn(&s, topic, &env(&s, topic, table, &[])).await;
    let payload = r#"{"i8":-128,"i64":"-9007199254740993","u64":18446744073709551615,"f32":1.5,"f64":-2.25e-3,"s":"h\u00e9 \"q\"\ttab",
            "fs":"abc","b":true,"d":"2024-02-29","dt":1700000000,"dt_iso":"2023-11-15T00:13:20+02:00","n":null,
            "a":["x","y"],"an":[1,null,3],"lc":"red","u":"123E4567-E89B-12D3-A456-426614174000","dec":"-12.5",
            "nn":-7,"en":"b","en_num":1}"#;
    s.broker.publish(topic, payload.as_bytes().to_vec(), HashMap::new(), Some("key-1".into()));
    let n = wait_count(&s.ch, "SELECT count() FROM typed", 1, Duration::from_secs(20)).await;
    assert_eq!(n, 1, "{}", sink.log());
    let row = s
        .ch
        .query(
            "SELECT i8, i64, u64, f32, f64, s, fs, b, d, toUnixTimestamp(dt), toUnixTimestamp(dt_iso), n, a, an, lc, u, dec, \
             nn, en, en_num, _topic, _offset, toUnixTimestamp(_time) > 1700000000, _key FROM typed FORMAT TSV",
        )
        .await
        .expect("select");
    let fields: Vec<&str> = row.split('\t').collect();
    let expected = [
        "-128",
        "-9007199254740993",
        "18446744073709551615",
        "1.5",
        "-0.00225",
        "h\u{e9} \"q\"\\ttab",
        "abc",
        "1",
        "2024-02-29",
        "1700000000",
        "1700000000",
        "\\N",
        "['x','y']",
        "[1,NULL,3]",
        "red",
        "123e4567-e89b-12d3-a456-426614174000",
        "-12.50",
        "-7",
        "b",
        "a",
        "/default/typed",
        "1",
        "1",
        "key-1",
    ];
    assert_eq!(fields, expected, "row: {row}");
    assert!(sink.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fields_take_the_column_defaults() {
    let s = setup().await;
    s.ch.exec(
        "CREATE TABLE defaults (id UInt32, name String, n Nullable(Int8), tags Array(String), \
         score UInt32 DEFAULT 42, label String DEFAULT concat('id-', toString(id))) ENGINE = MergeTree ORDER BY id",
    )
    .await
    .expect("create table");
    let topic = "/default/defaults";
    let mut sink = spawn(&s, topic, &env(&s, topic, r#"{topic="/default/defaults", table="defaults"}"#, &[])).await;
    publish(&s, topic, r#"{"id":1}"#);
    publish(&s, topic, r#"{"id":2,"score":7,"label":"given","name":"b","n":null,"extra":"ignored"}"#);
    let n = wait_count(&s.ch, "SELECT count() FROM defaults", 2, Duration::from_secs(20)).await;
    assert_eq!(n, 2, "{}", sink.log());
    let rows =
        s.ch.query("SELECT id, name, n, tags, score, label FROM defaults ORDER BY id FORMAT TSV")
            .await
            .expect("select");
    assert_eq!(rows, "1\t\t\\N\t[]\t42\tid-1\n2\tb\t\\N\t[]\t7\tgiven", "{rows}");
    // The tests run at the broker's default window (10): the start-up log says what that costs.
    assert!(sink.log().contains("throughput is bounded by the dispatch window"), "{}", sink.log());
    sink.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_dead_lettered_while_the_rest_of_their_batch_is_inserted() {
    let s = setup().await;
    s.ch.exec("CREATE TABLE events (id UInt32, small Int8) ENGINE = MergeTree ORDER BY id").await.expect("create");
    let topic = "/default/events";
    let table = r#"{topic="/default/events", table="events", unknown_fields="error"}"#;
    // A long runtime linger so the whole burst forms one process_batch call.
    let env = env(&s, topic, table, &[("CONNECTOR_SINK__BATCH__LINGER", "500ms")]);
    let mut sink = spawn(&s, topic, &env).await;
    let payloads: [&str; 8] = [
        r#"{"id":1,"small":1}"#,
        r#"{"id":2,"small":300}"#, // out of Int8 range: ClickHouse would wrap it silently
        r#"{"id":3,"small":3}"#,
        "not json",
        r#"{"id":5,"small":5}"#,
        r#"{"id":6,"unknown":1}"#, // unknown_fields = error
        r#"{"id":7,"small":7}"#,
        r#"{"id":8,"small":8}"#,
    ];
    for p in payloads {
        publish(&s, topic, p);
    }
    let n = wait_count(&s.ch, "SELECT count() FROM events", 5, Duration::from_secs(20)).await;
    assert_eq!(n, 5, "{}", sink.log());
    let dlq = s.broker.wait_for_messages(&format!("/default/dlq-{NAME}"), 3, Duration::from_secs(20)).await;
    assert_eq!(dlq.len(), 3, "{}", sink.log());
    let mut dead: Vec<String> = dlq.iter().map(|m| String::from_utf8_lossy(&m.payload).to_string()).collect();
    dead.sort();
    assert_eq!(dead, vec!["not json", r#"{"id":2,"small":300}"#, r#"{"id":6,"unknown":1}"#]);
    for m in &dlq {
        let error = m.attributes.get("dlq.error").expect("dlq.error attribute");
        assert!(error.contains("events"), "{error}");
    }
    assert_eq!(
        s.ch.query("SELECT groupArray(id) FROM (SELECT id FROM events ORDER BY id)").await.expect("ids"),
        "[1,3,5,7,8]"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.broker.ack_count(topic, NAME) < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.broker.ack_count(topic, NAME), 8, "every record is acked: inserted or dead-lettered");
    sink.kill9();
}

/// The value of the Prometheus sample `name{...}` whose labels contain all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .find(|line| labels.iter().all(|l| line.contains(l)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_clickhouse_refuses_is_isolated_and_dead_lettered_while_the_others_are_inserted() {
    let s = setup().await;
    // Tuple values are passed through unchecked: only ClickHouse finds "x" is no UInt8.
    s.ch.exec("CREATE TABLE enums (id UInt32, e Tuple(UInt8, String)) ENGINE = MergeTree ORDER BY id")
        .await
        .expect("create");
    let topic = "/default/enums";
    let env = env(&s, topic, r#"{topic="/default/enums", table="enums"}"#, &[("CLICKHOUSE_BATCH__MAX_ROWS", "6")]);
    let mut sink = spawn(&s, topic, &env).await;
    for (id, e) in [
        (1, r#"[1,"a"]"#),
        (2, r#"[2,"b"]"#),
        (3, r#"[3,"c"]"#),
        (4, r#"["x","d"]"#),
        (5, r#"[5,"e"]"#),
        (6, r#"[6,"f"]"#),
    ] {
        publish(&s, topic, format!(r#"{{"id":{id},"e":{e}}}"#));
    }
    let n = wait_count(&s.ch, "SELECT count() FROM enums", 5, Duration::from_secs(30)).await;
    assert_eq!(n, 5, "{}", sink.log());
    assert_eq!(
        s.ch.query("SELECT groupArray(id) FROM (SELECT id FROM enums ORDER BY id)").await.expect("ids"),
        "[1,2,3,5,6]"
    );
    let dlq = s.broker.wait_for_messages(&format!("/default/dlq-{NAME}"), 1, Duration::from_secs(20)).await;
    assert_eq!(dlq.len(), 1, "{}", sink.log());
    assert_eq!(String::from_utf8_lossy(&dlq[0].payload), r#"{"id":4,"e":["x","d"]}"#);
    assert_eq!(dlq[0].attributes.get("clickhouse.table").map(String::as_str), Some("default.enums"));
    let error = dlq[0].attributes.get("dlq.error").expect("dlq.error attribute");
    assert!(error.contains("rejected the insert"), "{error}");
    let table = "table=\"default.enums\"";
    // The counter moves just after the dead-letter publish returns.
    eventually(Duration::from_secs(10), || async {
        metric(&ops_get(&sink, "/metrics").await.1, "clickhouse_rows_dead_lettered_total", &[table]) == Some(1.0)
    })
    .await;
    let (_, metrics) = ops_get(&sink, "/metrics").await;
    assert_eq!(metric(&metrics, "clickhouse_rows_dead_lettered_total", &[table]), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "clickhouse_rows_inserted_total", &[table]), Some(5.0), "{metrics}");
    // The whole segment, then the half holding the bad row, then the row alone.
    let rejected = metric(&metrics, "clickhouse_inserts_total", &[table, "outcome=\"rejected\""]).unwrap_or(0.0);
    assert!(rejected >= 2.0, "rejected inserts counted: {metrics}");
    assert!(
        eventually(Duration::from_secs(10), || async { s.broker.ack_count(topic, NAME) >= 6 }).await,
        "all six records acked"
    );
    assert!(sink.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", sink.log());
    assert!(sink.log().contains("spool empty"), "nothing left to retry: {}", sink.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_flush_at_max_rows_and_at_max_linger() {
    let s = setup().await;
    s.ch.exec("CREATE TABLE flush (id UInt32) ENGINE = MergeTree ORDER BY id").await.expect("create");
    let topic = "/default/flush";
    let env = env(
        &s,
        topic,
        r#"{topic="/default/flush", table="flush"}"#,
        // A linger far beyond the test: only the row bound can flush.
        &[("CLICKHOUSE_BATCH__MAX_ROWS", "25"), ("CLICKHOUSE_BATCH__MAX_LINGER", "300s")],
    );
    let mut sink = spawn(&s, topic, &env).await;
    for id in 0..50 {
        publish(&s, topic, format!(r#"{{"id":{id}}}"#));
    }
    let n = wait_count(&s.ch, "SELECT count() FROM flush", 50, Duration::from_secs(30)).await;
    assert_eq!(n, 50, "two full batches of 25 are inserted without waiting for the linger: {}", sink.log());
    // Level-0 parts are inserts (kept for a while even after a background merge): two of 25 rows.
    let parts = s
        .ch
        .query("SELECT groupArray(rows) FROM (SELECT rows FROM system.parts WHERE table = 'flush' AND level = 0 ORDER BY min_block_number)")
        .await
        .expect("parts");
    assert_eq!(parts, "[25,25]");
    assert!(sink.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", sink.log());

    let mut env = env;
    env.insert("CLICKHOUSE_BATCH__MAX_LINGER".into(), "3s".into());
    let mut sink = spawn(&s, topic, &env).await;
    let tail_started = Instant::now();
    for id in 50..55 {
        publish(&s, topic, format!(r#"{{"id":{id}}}"#));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(&s.ch, "SELECT count() FROM flush").await, 50, "a partial batch waits for the linger");
    let n = wait_count(&s.ch, "SELECT count() FROM flush", 55, Duration::from_secs(10)).await;
    assert_eq!(n, 55, "{}", sink.log());
    assert!(tail_started.elapsed() >= Duration::from_secs(3), "flushed after {:?}", tail_started.elapsed());
    sink.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_then_up_loses_nothing() {
    let mut s = setup().await;
    s.ch.exec("CREATE TABLE outage (id UInt32) ENGINE = MergeTree ORDER BY id").await.expect("create");
    let topic = "/default/outage";
    let mut sink = spawn(&s, topic, &env(&s, topic, r#"{topic="/default/outage", table="outage"}"#, &[])).await;
    for id in 0..100 {
        publish(&s, topic, format!(r#"{{"id":{id}}}"#));
    }
    assert_eq!(
        wait_count(&s.ch, "SELECT count() FROM outage", 100, Duration::from_secs(20)).await,
        100,
        "{}",
        sink.log()
    );

    s.ch.stop();
    for id in 100..400 {
        publish(&s, topic, format!(r#"{{"id":{id}}}"#));
    }
    // The spool takes them (synced to disk) while ClickHouse is down.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.broker.ack_count(topic, NAME) < 400 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.broker.ack_count(topic, NAME), 400, "{}", sink.log());
    tokio::time::sleep(Duration::from_secs(1)).await; // a few failing insert attempts

    s.ch.restart().await.expect("restart ClickHouse");
    let n = wait_count(&s.ch, "SELECT count() FROM outage", 400, Duration::from_secs(30)).await;
    assert_eq!(n, 400, "{}", sink.log());
    assert_eq!(count(&s.ch, "SELECT uniqExact(id) FROM outage").await, 400);
    let status = sink.terminate(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", sink.log());
    assert!(sink.log().contains("spool empty"), "{}", sink.log());
}

/// Continuous ingest of `TOTAL` records with a kill -9 in the middle; returns
/// `(rows in ClickHouse, distinct ids, acked before the kill)` once every id arrived.
async fn kill_9_under_load(s: &Setup, table: &str, batch_column: bool) -> (u64, u64, u64) {
    const TOTAL: u64 = 6_000;
    let extra = if batch_column { ", _batch String" } else { "" };
    s.ch.exec(&format!("CREATE TABLE {table} (id UInt32, pad String{extra}) ENGINE = MergeTree ORDER BY id"))
        .await
        .expect("create");
    let topic = format!("/default/{table}");
    let mapping = if batch_column {
        format!(r#"{{topic="{topic}", table="{table}", batch_id_column="_batch"}}"#)
    } else {
        format!(r#"{{topic="{topic}", table="{table}"}}"#)
    };
    let env = env(s, &topic, &mapping, &[("CLICKHOUSE_BATCH__MAX_ROWS", "500")]);
    let mut sink = spawn(s, &topic, &env).await;
    let pad = "x".repeat(80);
    let mut published = 0u64;
    let mut killed_at: Option<(u64, u64, Instant)> = None; // (acked, inserted, when) at the kill
    let mut restarted = None;
    let started = Instant::now();
    let mut round = 0u64;
    // Continuous ingest (a backlog of at most 1,000 unacked records): kill -9 once inserts
    // are landing, restart while ingest goes on.
    while published < TOTAL {
        assert!(started.elapsed() < Duration::from_secs(180), "ingest stalled: {}", sink.log());
        round += 1;
        if published.saturating_sub(s.broker.ack_count(&topic, NAME)) < 1_000 {
            for _ in 0..50 {
                publish(s, &topic, format!(r#"{{"id":{published},"pad":"{pad}"}}"#));
                published += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        if killed_at.is_none() && round.is_multiple_of(10) {
            let inserted = count(&s.ch, &format!("SELECT count() FROM {table}")).await;
            if inserted >= 1_000 {
                let acked = s.broker.ack_count(&topic, NAME);
                sink.kill9();
                killed_at = Some((acked, inserted, Instant::now()));
            }
        }
        if restarted.is_none() && killed_at.is_some_and(|(_, _, at)| at.elapsed() > Duration::from_millis(500)) {
            restarted = Some(spawn(s, &topic, &env).await);
        }
    }
    let (acked_before_kill, inserted_before_kill, _) =
        killed_at.unwrap_or_else(|| panic!("never killed: {}", sink.log()));
    assert!(inserted_before_kill > 0, "nothing was inserted before the kill: {}", sink.log());
    let mut sink = match restarted {
        Some(sink) => sink,
        None => spawn(s, &topic, &env).await,
    };
    let unique = wait_count(&s.ch, &format!("SELECT uniqExact(id) FROM {table}"), TOTAL, Duration::from_secs(90)).await;
    assert_eq!(unique, TOTAL, "every published record is in ClickHouse: {}", sink.log());
    // Everything is acked (nothing left to redeliver) and the spool is drained.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.broker.unacked_count(&topic, NAME) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.broker.unacked_count(&topic, NAME), 0, "every delivered record is acked: {}", sink.log());
    assert!(sink.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", sink.log());
    assert!(sink.log().contains("spool empty"), "{}", sink.log());
    let rows = count(&s.ch, &format!("SELECT count() FROM {table}")).await;
    assert_eq!(s.ch.query(&format!("SELECT max(id) FROM {table}")).await.expect("max"), (TOTAL - 1).to_string());
    eprintln!("{table}: killed at {acked_before_kill} acked / {inserted_before_kill} inserted records");
    (rows, unique, acked_before_kill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_records_survive_kill_9() {
    let s = setup().await;
    let (rows, unique, acked) = kill_9_under_load(&s, "crash", false).await;
    let duplicates = rows - unique;
    eprintln!(
        "kill -9 at {acked} acked records: {rows} rows for {unique} records, {duplicates} duplicates \
         (no batch_id_column; ClickHouse 18.16 has no insert_deduplication_token)"
    );
    // Without a batch id column, only a segment inserted but not yet marked done at the
    // kill can be inserted twice: at most one segment (max_rows = 500).
    assert!(duplicates <= 500, "at most one segment may be inserted twice, got {duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_batch_id_column_kill_9_neither_loses_nor_doubles() {
    let s = setup().await;
    let (rows, unique, acked) = kill_9_under_load(&s, "crash_exact", true).await;
    eprintln!("kill -9 at {acked} acked records: {rows} rows for {unique} records");
    assert_eq!(rows, unique, "no record is inserted twice");
    // Every insert carried its batch token.
    assert_eq!(count(&s.ch, "SELECT count() FROM crash_exact WHERE _batch = ''").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_found_in_clickhouse_is_not_inserted_again() {
    let s = setup().await;
    s.ch.exec("CREATE TABLE again (id UInt32, _batch String) ENGINE = MergeTree ORDER BY id").await.expect("create");
    let topic = "/default/again";
    let mapping = r#"{topic="/default/again", table="again", batch_id_column="_batch"}"#;
    let env = env(&s, topic, mapping, &[("CLICKHOUSE_BATCH__MAX_ROWS", "50")]);
    let mut sink = spawn(&s, topic, &env).await;
    for id in 0..50 {
        publish(&s, topic, format!(r#"{{"id":{id}}}"#));
    }
    assert_eq!(wait_count(&s.ch, "SELECT count() FROM again", 50, Duration::from_secs(20)).await, 50, "{}", sink.log());
    assert!(sink.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", sink.log());
    // Simulate a crash between the insert and its bookkeeping: the segment is back in the
    // insert queue although ClickHouse has it.
    let spool = s.spool.path().join("default.again");
    let done: Vec<_> = std::fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "done"))
        .collect();
    // Usually one segment of 50 rows; the linger timer may seal a first part early.
    assert!(!done.is_empty(), "inserted segments are marked done: {}", sink.log());
    for segment in &done {
        std::fs::rename(segment, segment.with_extension("ready")).expect("requeue");
    }
    let mut sink = spawn(&s, topic, &env).await;
    let requeued_left = || done.iter().filter(|d| d.with_extension("ready").exists()).count();
    let deadline = Instant::now() + Duration::from_secs(20);
    while requeued_left() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(requeued_left(), 0, "the requeued segments were handled: {}", sink.log());
    assert_eq!(count(&s.ch, "SELECT count() FROM again").await, 50, "{}", sink.log());
    assert!(sink.log().contains("batch already in ClickHouse"), "{}", sink.log());
    assert_eq!(count(&s.ch, "SELECT uniqExact(_batch) FROM again").await, done.len() as u64);
    sink.kill9();
}

/// `(status, body)` of the sink's ops endpoint `path` (`/readyz`, `/metrics`).
async fn ops_get(sink: &ConnectorProcess, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", sink.ops_port);
    match reqwest::get(&url).await {
        Ok(resp) => (resp.status().as_u16(), resp.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Polls until `check` holds or `timeout` passes; returns whether it held.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_failure_after_an_insert_is_retried_without_stopping_the_flusher() {
    let s = setup().await;
    s.ch.exec("CREATE TABLE stuck (id UInt32) ENGINE = MergeTree ORDER BY id").await.expect("create");
    let topic = "/default/stuck";
    let env = env(
        &s,
        topic,
        r#"{topic="/default/stuck", table="stuck"}"#,
        &[("CLICKHOUSE_BATCH__MAX_ROWS", "10"), ("CLICKHOUSE_BATCH__MAX_LINGER", "300s")],
    );
    let mut sink = spawn(&s, topic, &env).await;
    // A directory where the first segment's `.done` file goes: after its insert, the
    // rename `.ready -> .done` fails (even for root) until the directory is removed.
    let blocker = s.spool.path().join("default.stuck").join(format!("{:016}.done", 0));
    std::fs::create_dir_all(blocker.join("in-the-way")).expect("blocker");
    for id in 0..10 {
        publish(&s, topic, format!(r#"{{"id":{id}}}"#));
    }
    assert_eq!(wait_count(&s.ch, "SELECT count() FROM stuck", 10, Duration::from_secs(20)).await, 10, "{}", sink.log());
    let unhealthy = eventually(Duration::from_secs(10), || async {
        let (status, body) = ops_get(&sink, "/readyz").await;
        status == 503 && body.contains("stuck")
    })
    .await;
    assert!(unhealthy, "/readyz reports the spool problem: {:?} {}", ops_get(&sink, "/readyz").await, sink.log());
    // Intake goes on into the spool meanwhile: a second full segment queues behind the first.
    for id in 10..20 {
        publish(&s, topic, format!(r#"{{"id":{id}}}"#));
    }
    assert!(
        eventually(Duration::from_secs(20), || async { s.broker.ack_count(topic, NAME) >= 20 }).await,
        "acked once spooled: {}",
        sink.log()
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // several failing attempts
    assert_eq!(count(&s.ch, "SELECT count() FROM stuck").await, 10, "the first segment is not inserted again");
    let log = sink.log();
    assert!(log.contains("cannot mark an inserted segment done"), "{log}");
    assert!(log.matches("spool operation failed; retrying").count() >= 2, "retried with backoff: {log}");

    std::fs::remove_dir_all(&blocker).expect("remove the blocker");
    let n = wait_count(&s.ch, "SELECT count() FROM stuck", 20, Duration::from_secs(20)).await;
    assert_eq!(n, 20, "the flusher went on with the next segment: {}", sink.log());
    assert_eq!(count(&s.ch, "SELECT uniqExact(id) FROM stuck").await, 20);
    assert!(blocker.is_file(), "the first segment was marked done");
    let healthy = eventually(Duration::from_secs(10), || async { ops_get(&sink, "/readyz").await.0 == 200 }).await;
    assert!(healthy, "ready again: {:?}", ops_get(&sink, "/readyz").await);
    assert!(sink.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", sink.log());
    assert_eq!(count(&s.ch, "SELECT count() FROM stuck").await, 20, "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_spool_into_clickhouse() {
    let s = setup().await;
    s.ch.exec("CREATE TABLE drain (id UInt32) ENGINE = MergeTree ORDER BY id").await.expect("create");
    let topic = "/default/drain";
    // Nothing would be inserted for a minute without the drain.
    let env = env(&s, topic, r#"{topic="/default/drain", table="drain"}"#, &[("CLICKHOUSE_BATCH__MAX_LINGER", "60s")]);
    let mut sink = spawn(&s, topic, &env).await;
    for id in 0..300 {
        publish(&s, topic, format!(r#"{{"id":{id}}}"#));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.broker.ack_count(topic, NAME) < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(s.broker.ack_count(topic, NAME), 300, "acked once spooled: {}", sink.log());
    assert_eq!(count(&s.ch, "SELECT count() FROM drain").await, 0, "still lingering in the spool");
    let status = sink.terminate(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "SIGTERM exits 0: {}", sink.log());
    assert_eq!(count(&s.ch, "SELECT count() FROM drain").await, 300, "{}", sink.log());
    assert!(sink.log().contains("spool empty"), "{}", sink.log());
}

#[test]
fn a_bad_config_is_refused_naming_the_field() {
    let run = |extra: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_danube-clickhouse"));
        command
            .arg("--check")
            .env("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/events"}]"#)
            .env("CLICKHOUSE_URL", "http://127.0.0.1:8123")
            .env("CLICKHOUSE_TABLES", r#"[{topic="/default/events", table="events"}]"#)
            .env("CLICKHOUSE_PASSWORD", "hunter2");
        for (k, v) in extra {
            command.env(k, v);
        }
        command.output().expect("run danube-clickhouse --check")
    };
    let ok = run(&[]);
    let printed = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(ok.status.success(), "{printed} {}", String::from_utf8_lossy(&ok.stderr));
    assert!(!printed.contains("hunter2"), "the password is redacted: {printed}");
    for (key, value, field) in [
        ("CLICKHOUSE_BATCH__MAX_ROWS", "0", "connector.batch.max_rows"),
        ("CLICKHOUSE_URL", "127.0.0.1:8123", "connector.url"),
        ("CLICKHOUSE_URL", "http://default:in-url-pw@127.0.0.1:8123", "connector.url"),
        ("CLICKHOUSE_TABLES", r#"[{topic="/default/events", table="a.b.c"}]"#, "connector.tables[0].table"),
        // A cross-section check: a sink with nothing to consume fails `--check` too.
        ("CONNECTOR_SINK__TOPICS", "[]", "sink.topics"),
    ] {
        let out = run(&[(key, value)]);
        assert_eq!(out.status.code(), Some(1), "{key}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(field), "{key}={value}: {stderr}");
        assert!(!stderr.contains("in-url-pw") && !stderr.contains("hunter2"), "no secret in the error: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_the_server_cannot_honour_stop_the_connector_naming_them() {
    let s = setup().await;
    s.ch.exec("CREATE TABLE unsupported (id UInt32) ENGINE = MergeTree ORDER BY id").await.expect("create");
    let topic = "/default/unsupported";
    publish(&s, topic, "priming message");
    // ClickHouse 18.16 has no async inserts.
    let env = env(
        &s,
        topic,
        r#"{topic="/default/unsupported", table="unsupported"}"#,
        &[("CLICKHOUSE_ASYNC_INSERT", "true")],
    );
    let mut sink = ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-clickhouse")), &env).expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = sink.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = status.unwrap_or_else(|| panic!("the connector kept running: {}", sink.log()));
    assert!(!status.success(), "{}", sink.log());
    assert!(sink.log().contains("connector.async_insert"), "{}", sink.log());
}

/// The analytics leg of a schema'd pipeline: Avro records (published with a registry
/// subject) are decoded by their schema id and their typed fields land in the columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_are_decoded_by_schema_id_into_typed_columns() {
    use danube_connect_common::schema::SchemaKind;
    use danube_connect_core::config::RuntimeConfig;
    use danube_connect_core::{Runtime, SchemaBinding, SourceRecord};

    const ORDER: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},
      {"name":"amount","type":"double"},{"name":"currency","type":"string","default":"EUR"}]}"#;
    let s = setup().await;
    s.ch.exec("CREATE TABLE orders (id String, amount Float64, currency String) ENGINE = MergeTree ORDER BY id")
        .await
        .expect("create table");
    let topic = "/default/orders-avro";
    let schema_dir = tempfile::tempdir().expect("tempdir");
    let schema_file = schema_dir.path().join("order.avsc");
    std::fs::write(&schema_file, ORDER).expect("schema file");
    let mut config = RuntimeConfig { name: "webhooks".into(), ..RuntimeConfig::default() };
    config.danube.service_url = s.broker.url();
    config.ops.enabled = false;
    config.schemas =
        vec![SchemaBinding::new(topic, "orders-value").with_file(SchemaKind::Avro, &schema_file).with_json_input()];
    let runtime = Runtime::start(config, tokio_util::sync::CancellationToken::new()).await.expect("runtime");
    let publisher = runtime.publisher();
    let order = |i: u32, currency: &str| {
        SourceRecord::new(topic, format!(r#"{{"id":"o{i}","amount":{i}.25,"currency":"{currency}"}}"#).into_bytes())
    };
    publisher.publish(order(0, "EUR")).await.expect("creates the topic");

    let mut sink = spawn(&s, topic, &env(&s, topic, r#"{topic="/default/orders-avro", table="orders"}"#, &[])).await;
    for i in 1..=4 {
        publisher.publish(order(i, if i % 2 == 0 { "USD" } else { "EUR" })).await.expect("publish");
    }
    assert!(s.broker.messages(topic).iter().all(|m| m.schema_id.is_some() && m.payload.first() != Some(&b'{')));
    let n = wait_count(&s.ch, "SELECT count() FROM orders", 4, Duration::from_secs(30)).await;
    assert_eq!(n, 4, "{}", sink.log());
    let rows = s.ch.query("SELECT id, amount, currency FROM orders ORDER BY id FORMAT TSV").await.expect("select");
    assert_eq!(rows, "o1\t1.25\tEUR\no2\t2.25\tUSD\no3\t3.25\tEUR\no4\t4.25\tUSD", "{rows}");
    assert!(sink.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", sink.log());
}

/// One HTTP request the fake ClickHouse received: its decoded URL parameters and body.
#[derive(Debug, Clone)]
struct SeenRequest {
    params: Vec<(String, String)>,
    body: Vec<u8>,
}

impl SeenRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP/1.1 request (Content-Length or chunked body); `None` at end of stream.
async fn read_request(reader: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<(String, Vec<u8>)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let target = line.split_whitespace().nth(1)?.to_string();
    let (mut length, mut chunked) = (0usize, false);
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await.ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body).await.ok()?;
    }
    Some((target, body))
}

/// A stand-in for a ClickHouse 23.8 HTTP endpoint that knows one table `t (id UInt32)` and
/// answers the first `fail_inserts` inserts with HTTP 500; it records every insert.
async fn fake_clickhouse(fail_inserts: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<SeenRequest>>>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake ClickHouse");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let inserts: std::sync::Arc<std::sync::Mutex<Vec<SeenRequest>>> = Default::default();
    let seen = inserts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = tokio::io::BufReader::new(read);
                while let Some((target, body)) = read_request(&mut reader).await {
                    let params: Vec<(String, String)> = target
                        .split_once('?')
                        .map(|(_, q)| q)
                        .unwrap_or("")
                        .split('&')
                        .filter_map(|pair| pair.split_once('='))
                        .map(|(k, v)| (form_decode(k), form_decode(v)))
                        .collect();
                    let request = SeenRequest { params, body };
                    let sql = request
                        .param("query")
                        .map(str::to_string)
                        .unwrap_or_else(|| String::from_utf8_lossy(&request.body).into_owned());
                    let (status, answer) = if sql.contains("version()") {
                        ("200 OK", "{\"v\":\"23.8.1.1\"}\n".to_string())
                    } else if sql.contains("system.columns") {
                        ("200 OK", "{\"name\":\"id\",\"type\":\"UInt32\",\"default_kind\":\"\"}\n".to_string())
                    } else if sql.starts_with("INSERT") {
                        let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        seen.push(request);
                        if seen.len() <= fail_inserts {
                            (
                                "500 Internal Server Error",
                                "Code: 999. DB::Exception: simulated failure after the request arrived".to_string(),
                            )
                        } else {
                            ("200 OK", String::new())
                        }
                    } else {
                        ("400 Bad Request", format!("Code: 62. DB::Exception: the fake does not know {sql}"))
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if write.write_all(response.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (url, inserts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_insert_carries_the_same_deduplication_token_and_body() {
    let broker = EmbeddedBroker::start_default().await.expect("start the embedded broker");
    let spool = tempfile::tempdir().expect("spool dir");
    let (url, inserts) = fake_clickhouse(1).await;
    let topic = "/default/dedup";
    let env = base_env(
        &broker,
        &url,
        spool.path(),
        topic,
        r#"{topic="/default/dedup", table="t"}"#,
        &[
            ("CLICKHOUSE_DEDUPLICATION_TOKEN", "always"),
            ("CLICKHOUSE_COMPRESSION", "none"),
            ("CLICKHOUSE_BATCH__MAX_ROWS", "5"),
            ("CLICKHOUSE_BATCH__MAX_LINGER", "300s"),
            ("CONNECTOR_SINK__BATCH__MAX_RECORDS", "1000"),
        ],
    );
    broker.publish(topic, b"priming message before the subscription".to_vec(), HashMap::new(), None);
    let mut sink = ConnectorProcess::spawn(Path::new(env!("CARGO_BIN_EXE_danube-clickhouse")), &env).expect("spawn");
    sink.wait_ready(Duration::from_secs(30)).await.expect("sink ready");
    assert!(broker.wait_for_consumers(topic, NAME, 1, Duration::from_secs(20)).await, "{}", sink.log());
    for id in 0..5 {
        broker.publish(topic, format!(r#"{{"id":{id}}}"#).into_bytes(), HashMap::new(), None);
    }
    let seen = || inserts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(
        eventually(Duration::from_secs(20), || async { seen().len() >= 2 }).await,
        "two insert attempts: {:?} {}",
        seen(),
        sink.log()
    );
    let attempts = seen();
    assert_eq!(attempts.len(), 2, "one failed attempt, one retry: {attempts:?}");
    let tokens: Vec<Option<&str>> = attempts.iter().map(|a| a.param("insert_deduplication_token")).collect();
    let token = tokens[0].expect("the first attempt carries insert_deduplication_token");
    assert_eq!(token.len(), 32, "a 128-bit hex token: {token}");
    assert_eq!(tokens[1], Some(token), "the retry carries the same token");
    assert_eq!(attempts[0].body, attempts[1].body, "the retry sends the same rows");
    assert_eq!(attempts[0].param("query"), attempts[1].param("query"));
    let body = String::from_utf8_lossy(&attempts[0].body).into_owned();
    assert_eq!(body, "{\"id\":0}\n{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n{\"id\":4}\n");
    assert!(sink.log().contains("insert failed; the rows stay in the spool"), "{}", sink.log());
    assert!(sink.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", sink.log());
    assert!(sink.log().contains("spool empty"), "{}", sink.log());
    assert_eq!(seen().len(), 2, "nothing inserted a third time");
    assert!(!sink.log().contains("throughput is bounded"), "no window warning at max_records = 1000: {}", sink.log());
}

/// `failure.policy` on the post-spool path: a row ClickHouse refuses after it was spooled and
/// acked to Danube. `dead_letter` dead-letters it with the inserts it was in as `dlq.attempts`;
/// `stop` stops the sink (exit 2) and `nack`, which cannot hand an acked row back to Danube,
/// does the same: the segment stays in the spool, nothing is dead-lettered, and the next start
/// (here with `dead_letter`) inserts the good rows and dead-letters the bad one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policy_is_honoured_for_rows_clickhouse_refuses_after_spooling() {
    for (policy, says) in [("stop", "failure.policy = stop"), ("nack", "cannot hand it back")] {
        let s = setup().await;
        s.ch.exec("CREATE TABLE enums (id UInt32, e Tuple(UInt8, String)) ENGINE = MergeTree ORDER BY id")
            .await
            .expect("create");
        let topic = "/default/enums";
        let table = r#"{topic="/default/enums", table="enums"}"#;
        let stopping =
            env(&s, topic, table, &[("CLICKHOUSE_BATCH__MAX_ROWS", "4"), ("CONNECTOR_FAILURE__POLICY", policy)]);
        let mut sink = spawn(&s, topic, &stopping).await;
        for (id, e) in [(1, r#"[1,"a"]"#), (2, r#"["x","b"]"#), (3, r#"[3,"c"]"#), (4, r#"[4,"d"]"#)] {
            publish(&s, topic, format!(r#"{{"id":{id},"e":{e}}}"#));
        }
        let started = Instant::now();
        let status = loop {
            if let Some(status) = sink.try_wait() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(60) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{policy}: {}", sink.log());
        assert!(sink.log().contains(says), "{policy}: {}", sink.log());
        assert_eq!(s.broker.ack_count(topic, NAME), 4, "{policy}: the rows were acked once spooled");
        assert!(s.broker.messages(&format!("/default/dlq-{NAME}")).is_empty(), "{policy}: nothing dead-lettered");

        // The next start, with dead_letter: the spooled segment is inserted again.
        let restarted = env(&s, topic, table, &[("CLICKHOUSE_BATCH__MAX_ROWS", "4")]);
        let mut sink = spawn(&s, topic, &restarted).await;
        let dlq = s.broker.wait_for_messages(&format!("/default/dlq-{NAME}"), 1, Duration::from_secs(30)).await;
        assert_eq!(dlq.len(), 1, "{policy}: {}", sink.log());
        assert_eq!(String::from_utf8_lossy(&dlq[0].payload), r#"{"id":2,"e":["x","b"]}"#, "{policy}");
        let attempts: usize = dlq[0].attributes.get("dlq.attempts").and_then(|a| a.parse().ok()).unwrap_or(0);
        assert!(attempts >= 2, "{policy}: the segment's insert and the salvage's: {:?}", dlq[0].attributes);
        let ids = "SELECT count(DISTINCT id) FROM enums";
        assert_eq!(wait_count(&s.ch, ids, 3, Duration::from_secs(30)).await, 3, "{policy}: {}", sink.log());
        assert!(sink.terminate(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "{}", sink.log());
    }
}
