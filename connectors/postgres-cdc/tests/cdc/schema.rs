//! `connector.schema = "json_schema"`: a schema per table derived from its columns, registered,
//! and every record published with it; a new version after ALTER TABLE; a refused
//! registration stops the connector without advancing the slot or losing the change.

use std::time::Duration;

use danube_connect_core::schema::{Schema, SchemaCache, SchemaKind};
use danube_connect_core::{Runtime, RuntimeConfig, SinkRecord};
use danube_dev_broker::StoredMessage;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::{lsn, stop_cleanly, wait_payloads, Env};

const TYPED: &str = "CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE TABLE typed (
        id int PRIMARY KEY, name text, small smallint, big bigint, price numeric(12,4), ok boolean,
        ratio double precision, r real, tags text[], nums int[], meta jsonb, doc json, at timestamptz,
        local timestamp, day date, uid uuid, raw bytea, feeling mood, code varchar(8), note text,
        span interval, uids uuid[], metas jsonb[], ats timestamptz[], moods mood[], blob text
    );
    ALTER TABLE typed ALTER COLUMN blob SET STORAGE EXTERNAL;";

const VALUES: &str = "'Alice', 7, 9000000000, 12.3456, true, 1.5, 2.5, '{a,\"b c\"}', '{1,NULL,3}', \
    '{\"k\": [1, 2]}', '{\"j\": null}', '2024-01-02 03:04:05.123+00', '2024-01-02 03:04:05', '2024-01-02', \
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x0102ff', 'happy', 'abc', NULL, '1 day 02:03:04', \
    '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', ARRAY['{\"a\": 1}', '[2]']::jsonb[], \
    '{\"2024-01-02 03:04:05+00\"}', '{sad,happy}', repeat('0123456789', 1000)";

/// Odd values of every type: NaN and infinities, nested arrays, infinite and BC timestamps.
const ODD_UPDATE: &str = "UPDATE typed SET price = 'NaN', ratio = '-Infinity', r = 'NaN', nums = '{{1,2},{3,4}}', \
    meta = '[1, \"x\"]', doc = '\"s\"', at = 'infinity', local = '-infinity', day = '0044-03-15 BC', raw = '\\x', \
    feeling = 'sad', tags = '{}', ats = '{NULL}', moods = '{happy,NULL}' WHERE id = 1";

/// A runtime on the test's broker, for its registry client and a sink-side schema cache.
async fn registry(env: &Env) -> Runtime {
    let mut config = RuntimeConfig { name: "schema-check".into(), ..RuntimeConfig::default() };
    config.danube.service_url = env.broker.url();
    config.ops.enabled = false;
    Runtime::start(config, CancellationToken::new()).await.expect("runtime on the broker")
}

/// The registered definition of a message's schema id and version, compiled.
async fn definition(runtime: &Runtime, message: &StoredMessage) -> (Value, Schema) {
    let id = message.schema_id.expect("the message carries a schema id");
    let info = runtime.schema_registry().version(id, message.schema_version).await.expect("registered");
    assert_eq!(info.schema_type, "json_schema");
    let registered = danube_connect_core::schema::registered_definition(&info.schema_definition);
    let value: Value = serde_json::from_slice(&registered).expect("definition is JSON");
    (value, Schema::compile(SchemaKind::JsonSchema, &registered).expect("compiles"))
}

fn sink_record(topic: &str, message: &StoredMessage) -> SinkRecord {
    let mut record = SinkRecord::new(topic, 0, message.payload.clone());
    record.schema_id = message.schema_id;
    record.schema_version = message.schema_version;
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_carries_the_table_schema_which_validates_it_and_decodes_it_by_id() {
    let env = Env::start().await;
    let topic = "/default/public-typed";
    env.pg.psql(TYPED).unwrap();
    env.pg.psql(&format!("INSERT INTO typed VALUES (0, {VALUES})")).unwrap();
    let mut process =
        env.spawn(&[("POSTGRES_CDC_TABLES", "[\"public.typed\"]"), ("POSTGRES_CDC_SCHEMA", "json_schema")]).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql(&format!("INSERT INTO typed VALUES (1, {VALUES})")).unwrap();
    env.pg.psql("UPDATE typed SET name = 'Bob' WHERE id = 1").unwrap();
    env.pg.psql(ODD_UPDATE).unwrap();
    env.pg.psql("DELETE FROM typed WHERE id = 1").unwrap();
    env.pg.psql("TRUNCATE typed").unwrap();
    let got = wait_payloads(&env, topic, 6, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 6, "{got:#?}\n{}", process.log());
    let ops: Vec<&str> = got.iter().map(|p| p["op"].as_str().unwrap_or_default()).collect();
    assert_eq!(ops, ["READ", "INSERT", "UPDATE", "UPDATE", "DELETE", "TRUNCATE"], "{}", process.log());
    assert_eq!(got[2]["unchanged_toast"], json!(["blob"]), "the TOAST marker is part of what is validated");
    assert_eq!(got[3]["after"]["at"], "infinity");

    let stored = env.broker.messages(topic);
    let first = (stored[0].schema_id, stored[0].schema_version);
    assert!(first.0.is_some(), "the snapshot row carries the schema id");
    assert_eq!(first.1, Some(1));
    assert!(
        stored.iter().all(|m| (m.schema_id, m.schema_version) == first),
        "snapshot and stream share one version: {:?}",
        stored.iter().map(|m| (m.schema_id, m.schema_version)).collect::<Vec<_>>()
    );

    let runtime = registry(&env).await;
    let (definition, schema) = definition(&runtime, &stored[0]).await;
    let after = &definition["properties"]["after"]["properties"];
    assert_eq!(after["id"]["type"], json!(["integer", "null"]));
    assert_eq!(after["price"]["type"], json!(["string", "null"]), "numeric as text");
    assert_eq!(after["uid"]["format"], "uuid");
    assert_eq!(after["nums"]["type"], json!(["array", "string", "null"]));
    assert_eq!(after["feeling"]["type"], json!(["string", "null"]), "enum as text");
    assert_eq!(after.as_object().map(|o| o.len()), Some(26), "one property per column");
    for (message, payload) in stored.iter().zip(&got) {
        schema.validate(&message.payload).unwrap_or_else(|e| panic!("{e}: {payload:#}"));
    }
    // The definition is no blanket: a record of another shape is refused.
    let mut wrong = got[1].clone();
    wrong["after"]["id"] = json!("one");
    assert!(schema.validate(&serde_json::to_vec(&wrong).unwrap()).is_err(), "a text id is refused");

    // A sink decodes by schema id (and version) through core's cache.
    let cache = SchemaCache::new(runtime.schema_registry());
    for (message, payload) in stored.iter().zip(&got) {
        let mut record = sink_record(topic, message);
        cache.decode(&mut record).await.expect("decodes by schema id");
        assert_eq!(record.value.as_ref(), Some(payload));
    }
    stop_cleanly(&mut process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_add_column_registers_a_new_version_and_earlier_records_keep_theirs() {
    let env = Env::start().await;
    let topic = "/default/public-people";
    env.pg.psql("CREATE TABLE people (id int PRIMARY KEY, name text)").unwrap();
    let mut process = env
        .spawn(&[
            ("POSTGRES_CDC_SNAPSHOT", "never"),
            ("POSTGRES_CDC_SCHEMA", "json_schema"),
            ("POSTGRES_CDC_SCHEMA_SUBJECT", "cdc-{table}"),
        ])
        .await;
    env.wait_streaming("danube_cdc", &process).await;
    // Separate transactions (psql -c runs one); the first record is in before the ALTER.
    env.pg.psql("INSERT INTO people VALUES (1, 'a')").unwrap();
    assert_eq!(wait_payloads(&env, topic, 1, Duration::from_secs(30)).await.len(), 1, "{}", process.log());
    env.pg.psql("ALTER TABLE people ADD COLUMN age int").unwrap();
    env.pg.psql("INSERT INTO people VALUES (2, 'b', 42)").unwrap();
    let got = wait_payloads(&env, topic, 2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "{}", process.log());
    let stored = env.broker.messages(topic);
    let versions: Vec<Option<u32>> = stored.iter().map(|m| m.schema_version).collect();
    assert_eq!(versions, [Some(1), Some(2)], "{}", process.log());
    assert_eq!(stored[0].schema_id, stored[1].schema_id, "one subject");
    assert_eq!(got[1]["after"], json!({"id": 2, "name": "b", "age": 42}));

    let runtime = registry(&env).await;
    let latest = runtime.schema_registry().latest("cdc-people").await.expect("subject");
    assert_eq!(latest.version, 2, "the subject template names the subject");
    let (v1, v1_schema) = definition(&runtime, &stored[0]).await;
    let (v2, v2_schema) = definition(&runtime, &stored[1]).await;
    assert!(v1["properties"]["after"]["properties"].get("age").is_none());
    assert_eq!(v2["properties"]["after"]["properties"]["age"]["type"], json!(["integer", "null"]));
    v1_schema.validate(&stored[0].payload).expect("v1 validates the record sent under it");
    v2_schema.validate(&stored[1].payload).expect("v2 validates the record sent under it");
    let cache = SchemaCache::new(runtime.schema_registry());
    for (message, payload) in stored.iter().zip(&got) {
        let mut record = sink_record(topic, message);
        cache.decode(&mut record).await.expect("decodes");
        assert_eq!(record.value.as_ref(), Some(payload));
    }

    // A restart finds the same definition registered: no third version.
    stop_cleanly(&mut process).await;
    let mut process = env
        .spawn(&[
            ("POSTGRES_CDC_SNAPSHOT", "never"),
            ("POSTGRES_CDC_SCHEMA", "json_schema"),
            ("POSTGRES_CDC_SCHEMA_SUBJECT", "cdc-{table}"),
        ])
        .await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO people VALUES (3, 'c', 7)").unwrap();
    let got = wait_payloads(&env, topic, 3, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 3, "{}", process.log());
    assert_eq!(env.broker.messages(topic)[2].schema_version, Some(2));
    stop_cleanly(&mut process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_schema_change_stops_the_connector_without_advancing_the_slot_or_losing_the_change() {
    let env = Env::start().await;
    let topic = "/default/public-counters";
    env.pg.psql("CREATE TABLE counters (id int PRIMARY KEY, n int)").unwrap();
    let settings = |compatibility: &'static str| {
        [
            ("POSTGRES_CDC_SNAPSHOT", "never"),
            ("POSTGRES_CDC_SCHEMA", "json_schema"),
            ("POSTGRES_CDC_SCHEMA_COMPATIBILITY", compatibility),
        ]
    };
    let mut process = env.spawn(&settings("full")).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO counters VALUES (1, 10)").unwrap();
    let got = wait_payloads(&env, topic, 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "{}", process.log());

    // `n` becomes text: incompatible both ways, refused under `full`.
    env.pg.psql("ALTER TABLE counters ALTER COLUMN n TYPE text USING n::text").unwrap();
    env.pg.psql("INSERT INTO counters VALUES (2, 'two')").unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = process.try_wait() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the connector kept running: {}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = process.log();
    assert_eq!(status.code(), Some(2), "a fatal stop: {log}");
    assert!(log.contains("public.counters") && log.contains("incompatible"), "the log says why: {log}");
    let confirmed_at_stop = env.confirmed_flush("danube_cdc");
    assert_eq!(env.broker.message_count(topic), 1, "nothing of the table left without its schema");

    // Allowing the change, the restarted connector delivers the row it stopped at (and may
    // send again what the slot had not confirmed yet: at least once).
    let mut process = env.spawn(&settings("none")).await;
    let started = std::time::Instant::now();
    while !env.payloads(topic).iter().any(|p| p["after"]["id"] == 2) {
        assert!(started.elapsed() < Duration::from_secs(30), "row 2 never arrived: {}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = env.payloads(topic);
    let stored = env.broker.messages(topic);
    let stamped: Vec<(Value, Option<u32>)> =
        got.iter().zip(&stored).map(|(p, m)| (p["after"].clone(), m.schema_version)).collect();
    let row_one = (json!({"id": 1, "n": 10}), Some(1));
    let row_two = (json!({"id": 2, "n": "two"}), Some(2));
    assert_eq!(stamped[0], row_one, "{stamped:?}");
    assert_eq!(stamped.iter().filter(|s| **s == row_two).count(), 1, "row 2 once, under version 2: {stamped:?}");
    assert!(
        stamped.iter().all(|s| *s == row_one || *s == row_two),
        "only row 1 (possibly again, under version 1) and row 2: {stamped:?}"
    );
    let two = got.iter().find(|p| p["after"]["id"] == 2).expect("row 2");
    let commit = lsn(two["commit_lsn"].as_str().expect("commit_lsn"));
    assert!(
        confirmed_at_stop <= commit,
        "the slot was at {confirmed_at_stop:x}, not past the refused commit {commit:x}"
    );
    stop_cleanly(&mut process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_retried_and_the_change_arrives_with_its_new_version() {
    let env = Env::start().await;
    let topic = "/default/public-gauges";
    env.pg.psql("CREATE TABLE gauges (id int PRIMARY KEY, v int)").unwrap();
    let mut process = env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never"), ("POSTGRES_CDC_SCHEMA", "json_schema")]).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO gauges VALUES (1, 1)").unwrap();
    assert_eq!(wait_payloads(&env, topic, 1, Duration::from_secs(30)).await.len(), 1, "{}", process.log());

    // Registry (and broker) down while the table changes: the new version cannot be registered.
    env.broker.stop().await;
    env.pg.psql("ALTER TABLE gauges ADD COLUMN unit text").unwrap();
    env.pg.psql("INSERT INTO gauges VALUES (2, 2, 'kPa')").unwrap();
    let started = std::time::Instant::now();
    while !process.log().contains("schema of table public.gauges") {
        assert!(started.elapsed() < Duration::from_secs(30), "no registration attempt seen: {}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(process.try_wait().is_none(), "an unreachable registry is not fatal: {}", process.log());
    env.broker.restart().await.expect("broker back");

    let started = std::time::Instant::now();
    while !env.payloads(topic).iter().any(|p| p["after"]["id"] == 2) {
        assert!(started.elapsed() < Duration::from_secs(60), "row 2 never arrived: {}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = env.payloads(topic);
    let stored = env.broker.messages(topic);
    let two = got.iter().position(|p| p["after"]["id"] == 2).expect("row 2");
    assert_eq!(got[two]["after"], json!({"id": 2, "v": 2, "unit": "kPa"}));
    assert_eq!(stored[two].schema_version, Some(2), "published with the version registered after the outage");
    assert!(
        got.iter().zip(&stored).all(|(p, m)| p["after"]["id"] == 2 || m.schema_version == Some(1)),
        "row 1 (and any re-sent copy) stays version 1"
    );
    stop_cleanly(&mut process).await;
}
