//! Row changes: order per key, JSON per type, replica identity, TOAST, truncate.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{stop_cleanly, wait_payloads, Env};

const TOPIC: &str = "/default/public-items";

const TYPES_TABLE: &str = "CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE TABLE items (
        id int PRIMARY KEY, name text, small smallint, big bigint, price numeric(12,4), ok boolean,
        ratio double precision, tags text[], nums int[], meta jsonb, doc json, at timestamptz,
        local timestamp, day date, uid uuid, raw bytea, feeling mood, code varchar(8), note text
    )";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_deletes_arrive_in_order_per_key_with_typed_json() {
    let env = Env::start().await;
    env.pg.psql(TYPES_TABLE).unwrap();
    let mut process =
        env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never"), ("POSTGRES_CDC_TABLES", "[\"public.items\"]")]).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg
        .psql(
            "INSERT INTO items VALUES (1, 'Alice', 7, 9000000000, 12.3456, true, 1.5, '{a,\"b c\"}', '{1,NULL,3}', \
             '{\"k\": [1, 2]}', '{\"j\": null}', '2024-01-02 03:04:05.123+00', '2024-01-02 03:04:05', '2024-01-02', \
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x0102ff', 'happy', 'abc', NULL);
             INSERT INTO items (id, name) VALUES (2, 'Bob');",
        )
        .unwrap();
    env.pg.psql("UPDATE items SET name = 'Alicia' WHERE id = 1").unwrap();
    env.pg.psql("BEGIN; DELETE FROM items WHERE id = 2; INSERT INTO items (id, name) VALUES (3, 'Carol'); UPDATE items SET name = 'Caroline' WHERE id = 3; COMMIT").unwrap();
    env.pg.psql("TRUNCATE items").unwrap();

    let got = wait_payloads(&env, TOPIC, 7, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 7, "{got:#?}\n{}", process.log());
    // Per key, changes keep their order (different keys may interleave across producers);
    // TRUNCATE is a barrier: it comes after every earlier change.
    let stored = env.broker.messages(TOPIC);
    let per_key = |key: &str| -> Vec<String> {
        stored
            .iter()
            .filter(|m| m.routing_key.as_deref() == Some(key))
            .map(|m| m.attributes.get("op").cloned().unwrap_or_default())
            .collect()
    };
    assert_eq!(per_key("1"), ["INSERT", "UPDATE"], "routing key is the primary key");
    assert_eq!(per_key("2"), ["INSERT", "DELETE"]);
    assert_eq!(per_key("3"), ["INSERT", "UPDATE"]);
    assert_eq!(got[6]["op"], "TRUNCATE", "{got:#?}");
    assert!(stored[6].routing_key.is_none());
    let find = |op: &str, id: i64| -> &Value {
        got.iter()
            .find(|p| p["op"] == op && p["after"]["id"].clone().max_or(&p["before"]["id"]) == json!(id))
            .unwrap_or_else(|| panic!("{op} {id} in {got:#?}"))
    };
    let first = find("INSERT", 1);
    assert_eq!(first["schema"], "public");
    assert_eq!(first["table"], "items");
    assert_eq!(first["before"], Value::Null);
    assert_eq!(
        first["after"],
        json!({
            "id": 1, "name": "Alice", "small": 7, "big": 9_000_000_000i64, "price": "12.3456", "ok": true,
            "ratio": 1.5, "tags": ["a", "b c"], "nums": [1, null, 3], "meta": {"k": [1, 2]}, "doc": {"j": null},
            "at": "2024-01-02T03:04:05.123+00:00", "local": "2024-01-02T03:04:05", "day": "2024-01-02",
            "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "raw": "AQL/", "feeling": "happy", "code": "abc", "note": null
        })
    );
    assert!(first["xid"].as_u64().unwrap() > 0);
    assert!(first["lsn"].as_str().unwrap().contains('/'));
    assert!(first["commit_ts"].as_str().unwrap().ends_with('Z'));
    assert_eq!(find("UPDATE", 1)["after"]["name"], "Alicia");
    // Default replica identity: a delete carries the key only.
    let (delete, insert, update) = (find("DELETE", 2), find("INSERT", 3), find("UPDATE", 3));
    assert_eq!(delete["before"], json!({"id": 2}));
    // One transaction: same commit_lsn and xid, increasing seq.
    assert_eq!(delete["commit_lsn"], update["commit_lsn"]);
    assert_eq!(delete["xid"], insert["xid"]);
    assert_eq!((delete["seq"].as_u64(), insert["seq"].as_u64(), update["seq"].as_u64()), (Some(0), Some(1), Some(2)));
    let insert_1 = stored.iter().find(|m| m.routing_key.as_deref() == Some("1")).unwrap();
    assert_eq!(insert_1.attributes.get("op").map(String::as_str), Some("INSERT"));
    assert_eq!(insert_1.attributes.get("table").map(String::as_str), Some("public.items"));
    assert!(insert_1.attributes.contains_key("lsn"));
    stop_cleanly(&mut process).await;
}

trait MaxOr {
    fn max_or(self, other: &Value) -> Value;
}

impl MaxOr for Value {
    fn max_or(self, other: &Value) -> Value {
        if self.is_null() {
            other.clone()
        } else {
            self
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_sends_old_rows_and_unchanged_toast_is_marked() {
    let env = Env::start().await;
    env.pg
        .psql(
            "CREATE TABLE full_t (id int PRIMARY KEY, name text, blob text);
             ALTER TABLE full_t REPLICA IDENTITY FULL;
             CREATE TABLE dflt (id int PRIMARY KEY, name text, blob text);
             ALTER TABLE dflt ALTER COLUMN blob SET STORAGE EXTERNAL;",
        )
        .unwrap();
    let mut process =
        env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never"), ("POSTGRES_CDC_TOPIC", "/default/{table}")]).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg
        .psql(
            "INSERT INTO full_t VALUES (1, 'a', 'x');
             UPDATE full_t SET name = 'b' WHERE id = 1;
             DELETE FROM full_t WHERE id = 1;
             INSERT INTO dflt VALUES (1, 'a', repeat('0123456789', 1000));
             UPDATE dflt SET name = 'b' WHERE id = 1;",
        )
        .unwrap();
    let full = wait_payloads(&env, "/default/full_t", 3, Duration::from_secs(30)).await;
    assert_eq!(full.len(), 3, "{}", process.log());
    assert_eq!(full[1]["before"], json!({"id": 1, "name": "a", "blob": "x"}), "FULL: whole old row on update");
    assert_eq!(full[1]["after"], json!({"id": 1, "name": "b", "blob": "x"}));
    assert_eq!(full[2]["before"], json!({"id": 1, "name": "b", "blob": "x"}), "FULL: whole old row on delete");
    assert_eq!(
        env.broker.messages("/default/full_t")[1].routing_key.as_deref(),
        Some("1"),
        "key stays the primary key"
    );

    let dflt = wait_payloads(&env, "/default/dflt", 2, Duration::from_secs(30)).await;
    assert_eq!(dflt.len(), 2, "{}", process.log());
    assert_eq!(dflt[0]["after"]["blob"].as_str().map(str::len), Some(10_000));
    assert_eq!(dflt[1]["before"], Value::Null, "default identity, key unchanged: no old row");
    assert_eq!(dflt[1]["after"], json!({"id": 1, "name": "b"}), "unchanged TOAST value is not shown as null");
    assert_eq!(dflt[1]["unchanged_toast"], json!(["blob"]));
    stop_cleanly(&mut process).await;
}

const ALL_TYPES: &str = "CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE TABLE typed (
        id int PRIMARY KEY, name text, small smallint, big bigint, price numeric(12,4), ok boolean,
        ratio double precision, r real, tags text[], nums int[], meta jsonb, doc json, at timestamptz,
        local timestamp, day date, uid uuid, raw bytea, feeling mood, code varchar(8), note text,
        span interval, uids uuid[], metas jsonb[], ats timestamptz[], moods mood[]
    );
    ALTER TABLE typed REPLICA IDENTITY FULL;";

/// SET list (and VALUES tail) of the first image.
const VALUES_A: &str = "'Alice', 7, 9000000000, 12.3456, true, 1.5, 2.5, '{a,\"b c\"}', '{1,NULL,3}', \
    '{\"k\": [1, 2]}', '{\"j\": null}', '2024-01-02 03:04:05.123+00', '2024-01-02 03:04:05', '2024-01-02', \
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x0102ff', 'happy', 'abc', NULL, '1 day 02:03:04', \
    '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,00000000-0000-0000-0000-000000000000}', \
    ARRAY['{\"a\": 1}', '[2]']::jsonb[], '{\"2024-01-02 03:04:05+00\"}', '{sad,happy}'";

const UPDATE_TO_B: &str = "UPDATE typed SET name = 'Bob', small = -1, big = -5, price = 'NaN', ok = false, \
    ratio = '-Infinity', r = 'NaN', tags = '{}', nums = '{{1,2},{3,4}}', meta = '[1, \"x\"]', doc = '\"s\"', \
    at = '1999-12-31 23:59:59.999999+00', local = '2000-02-29 00:00:00', day = '1970-01-01', \
    uid = '00000000-0000-0000-0000-000000000001', raw = '\\x', feeling = 'sad', code = 'xyz', note = 'n', \
    span = '-3 months', uids = '{}', metas = '{NULL}', ats = '{NULL,\"2024-06-01 00:00:00+00\"}', \
    moods = '{happy,NULL}' WHERE id = 1";

fn image_a(id: i64) -> Value {
    json!({
        "id": id, "name": "Alice", "small": 7, "big": 9_000_000_000i64, "price": "12.3456", "ok": true,
        "ratio": 1.5, "r": 2.5, "tags": ["a", "b c"], "nums": [1, null, 3], "meta": {"k": [1, 2]},
        "doc": {"j": null}, "at": "2024-01-02T03:04:05.123+00:00", "local": "2024-01-02T03:04:05",
        "day": "2024-01-02", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "raw": "AQL/", "feeling": "happy",
        "code": "abc", "note": null, "span": "P1DT2H3M4S",
        "uids": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"],
        "metas": [{"a": 1}, [2]], "ats": ["2024-01-02T03:04:05+00:00"], "moods": ["sad", "happy"]
    })
}

fn image_b() -> Value {
    json!({
        "id": 1, "name": "Bob", "small": -1, "big": -5, "price": "NaN", "ok": false,
        "ratio": "-Infinity", "r": "NaN", "tags": [], "nums": [[1, 2], [3, 4]], "meta": [1, "x"],
        "doc": "s", "at": "1999-12-31T23:59:59.999999+00:00", "local": "2000-02-29T00:00:00",
        "day": "1970-01-01", "uid": "00000000-0000-0000-0000-000000000001", "raw": "", "feeling": "sad",
        "code": "xyz", "note": "n", "span": "P-3M", "uids": [], "metas": [null],
        "ats": [null, "2024-06-01T00:00:00+00:00"], "moods": ["happy", null]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_in_snapshot_insert_and_full_identity_update_and_delete() {
    let env = Env::start().await;
    env.pg.psql(ALL_TYPES).unwrap();
    env.pg.psql(&format!("INSERT INTO typed VALUES (0, {VALUES_A})")).unwrap();
    let mut process = env.spawn(&[("POSTGRES_CDC_TABLES", "[\"public.typed\"]")]).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql(&format!("INSERT INTO typed VALUES (1, {VALUES_A})")).unwrap();
    env.pg.psql(UPDATE_TO_B).unwrap();
    env.pg.psql("DELETE FROM typed WHERE id = 1").unwrap();
    let got = wait_payloads(&env, "/default/public-typed", 4, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 4, "{got:#?}\n{}", process.log());
    let ops: Vec<&str> = got.iter().map(|p| p["op"].as_str().unwrap_or_default()).collect();
    assert_eq!(ops, ["READ", "INSERT", "UPDATE", "DELETE"], "{got:#?}");
    assert_eq!(got[0]["after"], image_a(0), "snapshot row");
    assert_eq!(got[1]["after"], image_a(1), "streamed insert");
    assert_eq!(got[2]["before"], image_a(1), "FULL identity: old row of the update, every type");
    assert_eq!(got[2]["after"], image_b(), "new row of the update, every type");
    assert_eq!(got[3]["before"], image_b(), "FULL identity: old row of the delete, every type");
    assert_eq!(got[3]["after"], Value::Null);
    stop_cleanly(&mut process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_topic_transaction_boundaries_and_multi_table_truncate() {
    let env = Env::start().await;
    env.pg.psql("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)").unwrap();
    let mut process = env
        .spawn(&[
            ("POSTGRES_CDC_SNAPSHOT", "never"),
            ("POSTGRES_CDC_TABLES", "[\"a\", \"b\"]"),
            ("POSTGRES_CDC_TOPIC", "/default/all"),
            ("POSTGRES_CDC_TRANSACTION_TOPIC", "/default/txns"),
        ])
        .await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); INSERT INTO b VALUES (2); COMMIT").unwrap();
    env.pg.psql("TRUNCATE a, b").unwrap();
    let got = wait_payloads(&env, "/default/all", 5, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 5, "{got:#?}\n{}", process.log());
    let stored = env.broker.messages("/default/all");
    let tables: Vec<(&str, &str)> = stored
        .iter()
        .map(|m| {
            (m.attributes.get("op").map_or("", String::as_str), m.attributes.get("table").map_or("", String::as_str))
        })
        .collect();
    let inserts: Vec<&(&str, &str)> = tables[..3].iter().collect();
    assert!(inserts.iter().all(|(op, _)| *op == "INSERT"), "both tables' changes on the one topic: {tables:?}");
    assert_eq!(inserts.iter().filter(|(_, t)| *t == "public.b").count(), 2, "{tables:?}");
    // TRUNCATE a, b: one record per table, both after every earlier change, distinct seq.
    let mut truncated: Vec<&str> = tables[3..].iter().map(|(op, t)| if *op == "TRUNCATE" { *t } else { "" }).collect();
    truncated.sort_unstable();
    assert_eq!(truncated, ["public.a", "public.b"], "{tables:?}");
    assert_eq!(got[3]["commit_lsn"], got[4]["commit_lsn"]);
    assert_ne!(got[3]["seq"], got[4]["seq"]);
    // BEGIN/COMMIT records for both transactions, keyed by xid, COMMIT counting the events.
    let txns = wait_payloads(&env, "/default/txns", 4, Duration::from_secs(30)).await;
    for (first, events) in [(&got[0], 3), (&got[3], 2)] {
        let mine: Vec<&Value> = txns.iter().filter(|t| t["xid"] == first["xid"]).collect();
        assert_eq!(mine.len(), 2, "BEGIN and COMMIT of xid {}: {txns:#?}", first["xid"]);
        assert_eq!((mine[0]["op"].as_str(), mine[1]["op"].as_str()), (Some("BEGIN"), Some("COMMIT")));
        assert_eq!(mine[1]["commit_lsn"], first["commit_lsn"]);
        assert_eq!(mine[1]["events"], json!(events));
    }
    let boundary = &env.broker.messages("/default/txns")[0];
    assert_eq!(boundary.routing_key.as_deref(), Some(txns[0]["xid"].to_string().as_str()), "keyed by xid");
    stop_cleanly(&mut process).await;
}

/// Table and schema names come from the database, where a quoted identifier may hold any
/// character: `"x/y"` and `"a.b"` must not add a topic level or produce a name the broker
/// refuses. They are sanitized to `_`, and the record still names the real table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_names_from_the_database_are_sanitized_into_the_topic() {
    let env = Env::start().await;
    env.pg
        .psql(
            "CREATE SCHEMA \"we.ird\";
             CREATE TABLE \"x/y\" (id int PRIMARY KEY);
             CREATE TABLE \"we.ird\".\"a b\" (id int PRIMARY KEY);",
        )
        .unwrap();
    let mut process = env.spawn(&[("POSTGRES_CDC_SNAPSHOT", "never")]).await;
    env.wait_streaming("danube_cdc", &process).await;
    env.pg.psql("INSERT INTO \"x/y\" VALUES (1); INSERT INTO \"we.ird\".\"a b\" VALUES (2);").unwrap();
    let slash = wait_payloads(&env, "/default/public-x_y", 1, Duration::from_secs(30)).await;
    assert_eq!(slash.len(), 1, "{}", process.log());
    assert_eq!(slash[0]["table"], "x/y", "the record keeps the real name");
    let dotted = wait_payloads(&env, "/default/we_ird-a_b", 1, Duration::from_secs(30)).await;
    assert_eq!(dotted.len(), 1, "{}", process.log());
    assert_eq!((dotted[0]["schema"].as_str(), dotted[0]["table"].as_str()), (Some("we.ird"), Some("a b")));
    stop_cleanly(&mut process).await;
}
