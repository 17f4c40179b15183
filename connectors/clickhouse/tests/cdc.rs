//! CDC mode (`mode = "cdc"`) of the `danube-clickhouse` binary against a real ClickHouse
//! server, on both brokers (`BrokerKind::all()`; the real one when `DANUBE_BROKER_BIN`
//! names it).
//!
//! The change records are made by danube-postgres-cdc's own record builder
//! (`change::Change::to_record`), so the payloads and attributes are byte for byte what the
//! connector publishes, and sent with raw `danube-client` producers. A small in-test model
//! of the source table says what `SELECT ... FINAL WHERE _deleted = 0` must return.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use danube_client::Producer;
use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::clickhouse::ClickHouseServer;
use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::process::ConnectorProcess;
use danube_postgres_cdc::change::{Change, Table, TxnInfo};
use danube_postgres_cdc::pgoutput::{Column, Relation, TupleValue};

mod common;

use common::{sink_env, start_sink, BINARY};

fn suffix(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Dev => "dev",
        BrokerKind::Real => "real",
    }
}

/// A captured table `public.{name}` and the model of its rows (`id -> other columns`).
struct Source {
    table: Table,
    rows: BTreeMap<i64, Vec<Option<String>>>,
    commit_lsn: u64,
    records: Vec<(Vec<u8>, HashMap<String, String>)>,
}

/// One transaction's changes, numbered in order.
struct Txn<'a> {
    source: &'a mut Source,
    info: TxnInfo,
    seq: u64,
}

/// `value` escaped as ClickHouse writes it in TSV.
fn tsv(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n")
}

fn text(value: &str) -> TupleValue {
    TupleValue::Text(bytes::Bytes::copy_from_slice(value.as_bytes()))
}

impl Source {
    /// `public.{name}` with `id int4` (the key) and the `text`/`int4` columns given.
    fn new(name: &str, columns: &[(&str, u32)]) -> Self {
        Self { table: Self::table(name, columns), rows: BTreeMap::new(), commit_lsn: 0x0100_0000, records: Vec::new() }
    }

    fn table(name: &str, columns: &[(&str, u32)]) -> Table {
        let mut all = vec![Column { key: true, name: "id".into(), type_oid: 23, type_modifier: -1 }];
        all.extend(columns.iter().map(|(n, oid)| Column {
            key: false,
            name: n.to_string(),
            type_oid: *oid,
            type_modifier: -1,
        }));
        let relation =
            Relation { oid: 1, namespace: "public".into(), name: name.into(), replica_identity: b'd', columns: all };
        Table::new(relation, &["id".to_string()], "/default/unused".into())
    }

    /// ALTER TABLE ... ADD COLUMN: later changes carry it (existing rows hold NULL).
    fn add_column(&mut self, name: &str, oid: u32) {
        let mut columns: Vec<(String, u32)> =
            self.table.relation.columns.iter().skip(1).map(|c| (c.name.clone(), c.type_oid)).collect();
        columns.push((name.to_string(), oid));
        let refs: Vec<(&str, u32)> = columns.iter().map(|(n, o)| (n.as_str(), *o)).collect();
        self.table = Self::table(&self.table.relation.name, &refs);
        for row in self.rows.values_mut() {
            row.push(None);
        }
    }

    fn begin(&mut self) -> Txn<'_> {
        self.commit_lsn += 0x100;
        let info = TxnInfo::new((self.commit_lsn >> 8) as u32, self.commit_lsn, 0);
        Txn { source: self, info, seq: 0 }
    }

    /// The model as ClickHouse's TSV of `id, columns...` ordered by id (`\N` for NULL).
    fn expected(&self) -> String {
        self.rows
            .iter()
            .map(|(id, values)| {
                let mut fields = vec![id.to_string()];
                fields.extend(values.iter().map(|v| v.as_deref().map_or_else(|| "\\N".to_string(), tsv)));
                fields.join("\t")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `SELECT id, columns... FROM {table} FINAL WHERE _deleted = 0 ORDER BY id`.
    fn select(&self, table: &str) -> String {
        let columns: Vec<String> = self.table.relation.columns.iter().map(|c| format!("`{}`", c.name)).collect();
        format!("SELECT {} FROM {table} FINAL WHERE _deleted = 0 ORDER BY id FORMAT TSV", columns.join(", "))
    }
}

impl Txn<'_> {
    fn tuple(&self, id: i64, values: &[Option<String>]) -> Vec<TupleValue> {
        let mut tuple = vec![text(&id.to_string())];
        tuple.extend(values.iter().map(|v| v.as_deref().map_or(TupleValue::Null, text)));
        tuple
    }

    fn push(&mut self, op: &'static str, before: Option<Vec<TupleValue>>, after: Option<Vec<TupleValue>>) {
        let change = Change {
            op,
            table: &self.source.table,
            before: before.as_ref().map(|t| (b'K', t)),
            after: after.as_ref(),
            lsn: self.info.commit_lsn - 0x80 + self.seq,
            txn: &self.info,
            seq: self.seq,
        };
        let record = change.to_record().expect("record");
        self.source.records.push((record.payload.to_vec(), record.attributes));
        self.seq += 1;
    }

    fn insert(&mut self, id: i64, values: &[Option<&str>]) {
        let values: Vec<Option<String>> = values.iter().map(|v| v.map(str::to_string)).collect();
        let after = self.tuple(id, &values);
        self.push("INSERT", None, Some(after));
        self.source.rows.insert(id, values);
    }

    fn update(&mut self, id: i64, values: &[Option<&str>]) {
        let values: Vec<Option<String>> = values.iter().map(|v| v.map(str::to_string)).collect();
        let after = self.tuple(id, &values);
        self.push("UPDATE", None, Some(after));
        self.source.rows.insert(id, values);
    }

    /// `UPDATE ... SET id = new_id`: the old key comes as the before image.
    fn change_key(&mut self, id: i64, new_id: i64) {
        let values = self.source.rows.remove(&id).expect("row exists");
        let before = vec![text(&id.to_string())];
        let after = self.tuple(new_id, &values);
        self.push("UPDATE", Some(before), Some(after));
        self.source.rows.insert(new_id, values);
    }

    fn delete(&mut self, id: i64) {
        self.push("DELETE", Some(vec![text(&id.to_string())]), None);
        self.source.rows.remove(&id);
    }

    fn truncate(&mut self) {
        self.push("TRUNCATE", None, None);
        self.source.rows.clear();
    }
}

/// Sends the records `from..` one at a time (retrying while the broker is away).
async fn publish(kind: BrokerKind, producer: &Producer, records: &[(Vec<u8>, HashMap<String, String>)]) {
    for (payload, attributes) in records {
        let mut failures = 0;
        while let Err(error) = producer.send(payload.clone(), Some(attributes.clone())).await {
            failures += 1;
            assert!(failures < 100, "{kind}: publishing failed for 30 s: {error}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Polls `sql` until it answers `expected`; returns the last answer.
async fn wait_for(ch: &ClickHouseServer, sql: &str, expected: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let got = ch.query(sql).await.unwrap_or_else(|e| format!("error: {e}"));
        if got == expected || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows the sink inserted so far (its `clickhouse_rows_inserted_total`).
async fn rows_inserted(sink: &ConnectorProcess) -> u64 {
    let url = format!("http://127.0.0.1:{}/metrics", sink.ops_port);
    let Ok(response) = reqwest::get(&url).await else { return 0 };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("clickhouse_rows_inserted_total"))
        .filter_map(|line| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

async fn count(ch: &ClickHouseServer, sql: &str) -> u64 {
    ch.query(sql).await.ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_and_deletes_converge_and_redelivery_changes_nothing() {
    let ch = ClickHouseServer::start().await.expect("start ClickHouse");
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let spool = tempfile::tempdir().expect("spool dir");
        let database = format!("cdc_{}", suffix(kind));
        let (name, topic) = ("ch-cdc", "/default/pg_public_orders");
        let producer = reliable_producers(broker.url(), topic, "ch-cdc-p", 1).await.expect("producer").remove(0);
        let mapping = format!(
            r#"{{topic="{topic}", table="{database}.{{schema}}_{{table}}", mode="cdc", create_tables=true, key_columns=["id"]}}"#
        );
        let env = sink_env(&broker, &ch, spool.path(), name, topic, &mapping);
        let mut sink = start_sink(kind, &env).await;

        let mut source = Source::new("orders", &[("item", 25), ("qty", 23)]);
        let mut txn = source.begin();
        for id in 1..=30 {
            txn.insert(id, &[Some(&format!("item {id}")), Some(&id.to_string())]);
        }
        let mut txn = source.begin();
        for id in 1..=10 {
            txn.update(id, &[Some(&format!("item {id}")), Some(&(id * 100).to_string())]);
        }
        // The same row twice in one transaction: the later change wins.
        txn.update(5, &[Some("first"), Some("1")]);
        txn.update(5, &[Some("second \"quoted\"\ttab"), None]);
        for id in 11..=15 {
            txn.delete(id);
        }
        let mut txn = source.begin();
        txn.change_key(20, 120);
        txn.insert(11, &[Some("back again"), Some("11")]);
        // Inserted and deleted in one transaction: gone.
        txn.insert(200, &[Some("short-lived"), Some("0")]);
        txn.delete(200);
        let records = source.records.clone();
        publish(kind, &producer, &records).await;

        let table = format!("{database}.public_orders");
        let select = source.select(&table);
        let expected = source.expected();
        let got = wait_for(&ch, &select, &expected, WAIT).await;
        assert_eq!(got, expected, "{kind}: FINAL equals the source table: {}", sink.log());
        // The metric follows the insert by a moment.
        let deadline = Instant::now() + WAIT;
        let mut rows_once = rows_inserted(&sink).await;
        while rows_once < records.len() as u64 + 1 {
            assert!(Instant::now() < deadline, "{kind}: every change became a row, the key change two ({rows_once})");
            tokio::time::sleep(Duration::from_millis(50)).await;
            rows_once = rows_inserted(&sink).await;
        }

        // Every record again (new messages, as a restarted source would send them), newest
        // first: versions, not arrival order, decide.
        let mut again = records.clone();
        again.reverse();
        publish(kind, &producer, &again).await;
        let deadline = Instant::now() + WAIT;
        while rows_inserted(&sink).await < 2 * rows_once {
            assert!(Instant::now() < deadline, "{kind}: the redelivered rows arrive: {}", sink.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let got = ch.query(&select).await.expect("select");
        assert_eq!(got, expected, "{kind}: redelivery in reverse order changes nothing");
        let ddl = ch.query(&format!("SHOW CREATE TABLE {table}")).await.expect("show create");
        assert!(ddl.contains("ReplacingMergeTree(_version)") && ddl.contains("ORDER BY id"), "{kind}: {ddl}");
        println!(
            "{kind}: {} change records, {} rows in the source, {rows_once} rows inserted per delivery",
            records.len(),
            source.rows.len()
        );
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_column_is_added_and_truncate_deletes_only_older_rows() {
    let ch = ClickHouseServer::start().await.expect("start ClickHouse");
    for kind in BrokerKind::all() {
        let broker = TestBroker::start(kind).await.expect("broker starts");
        let spool = tempfile::tempdir().expect("spool dir");
        let table = format!("items_{}", suffix(kind));
        let (name, topic) = ("ch-cdc-ddl", "/default/pg_public_items");
        let producer = reliable_producers(broker.url(), topic, "ch-cdc-ddl-p", 1).await.expect("producer").remove(0);
        let mapping =
            format!(r#"{{topic="{topic}", table="{table}", mode="cdc", create_tables=true, key_columns=["id"]}}"#);
        let env = sink_env(&broker, &ch, spool.path(), name, topic, &mapping);
        let mut sink = start_sink(kind, &env).await;

        let mut source = Source::new("items", &[("label", 25)]);
        let mut txn = source.begin();
        for id in 1..=10 {
            txn.insert(id, &[Some(&format!("l{id}"))]);
        }
        source.add_column("note", 25);
        let mut txn = source.begin();
        txn.update(1, &[Some("l1"), Some("a note")]);
        txn.insert(11, &[Some("l11"), Some("new")]);
        publish(kind, &producer, &source.records).await;
        let got = wait_for(&ch, &source.select(&table), &source.expected(), WAIT).await;
        assert_eq!(got, source.expected(), "{kind}: the note column was added and filled: {}", sink.log());
        let note_type = ch
            .query(&format!("SELECT type FROM system.columns WHERE table = '{table}' AND name = 'note'"))
            .await
            .expect("type");
        assert_eq!(note_type, "Nullable(String)", "{kind}");

        // TRUNCATE, then new rows in later transactions: only those remain.
        let sent = source.records.len();
        let mut txn = source.begin();
        txn.truncate();
        let truncate = source.records[sent..].to_vec();
        let mut txn = source.begin();
        txn.insert(100, &[Some("after"), None]);
        txn.insert(3, &[Some("l3 again"), Some("reborn")]);
        publish(kind, &producer, &source.records[sent..]).await;
        let got = wait_for(&ch, &source.select(&table), &source.expected(), WAIT).await;
        assert_eq!(got, source.expected(), "{kind}: after TRUNCATE only the later rows: {}", sink.log());

        // The same TRUNCATE delivered again deletes nothing newer than itself.
        let deleted = format!("SELECT count() FROM {table} WHERE _deleted = 1");
        let tombstones = count(&ch, &deleted).await;
        publish(kind, &producer, &truncate).await;
        let deadline = Instant::now() + WAIT;
        while sink.log().matches("TRUNCATE applied").nth(1).is_none() {
            assert!(Instant::now() < deadline, "{kind}: the second TRUNCATE is applied: {}", sink.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(ch.query(&source.select(&table)).await.expect("select"), source.expected(), "{kind}: unchanged");
        println!("{kind}: truncate wrote {tombstones} deleted rows; applied twice");
        let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: clean exit: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_table_is_used_as_is_and_truncate_can_be_ignored() {
    let ch = ClickHouseServer::start().await.expect("start ClickHouse");
    let kind = BrokerKind::Dev;
    let broker = TestBroker::start(kind).await.expect("broker starts");
    let spool = tempfile::tempdir().expect("spool dir");
    ch.exec(
        "CREATE TABLE kept (id Int64, label String, _deleted UInt8, _version UInt64) \
         ENGINE = ReplacingMergeTree(_version) ORDER BY id",
    )
    .await
    .expect("create table");
    let (name, topic) = ("ch-cdc-kept", "/default/pg_public_kept");
    let producer = reliable_producers(broker.url(), topic, "ch-cdc-kept-p", 1).await.expect("producer").remove(0);
    let mapping = format!(r#"{{topic="{topic}", table="kept", mode="cdc", truncate="ignore"}}"#);
    let mut sink = start_sink(kind, &sink_env(&broker, &ch, spool.path(), name, topic, &mapping)).await;
    let mut source = Source::new("kept", &[("label", 25)]);
    let mut txn = source.begin();
    txn.insert(1, &[Some("one")]);
    txn.insert(2, &[Some("two")]);
    let mut txn = source.begin();
    txn.change_key(2, 22);
    txn.truncate();
    publish(kind, &producer, &source.records).await;
    // Ignored truncate: the rows stay; the key change was recognised from the table's ORDER BY.
    let expected = "1\tone\n22\ttwo";
    let got = wait_for(&ch, &source.select("kept"), expected, WAIT).await;
    assert_eq!(got, expected, "{kind}: {}", sink.log());
    assert!(sink.log().contains("TRUNCATE ignored"), "{}", sink.log());
    let status = sink.terminate(Duration::from_secs(20)).await.expect("exits on SIGTERM");
    assert!(status.success(), "clean exit: {status}");
}

#[test]
fn a_bad_cdc_config_is_refused_naming_the_field() {
    let cases = [
        (r#"{topic="/default/a", table="{schema}_{table}"}"#, "connector.tables[0].table"),
        (r#"{topic="/default/a", table="t", mode="cdc", version_column=""}"#, "connector.tables[0].version_column"),
        (r#"{topic="/default/a", table="t", mode="cdc", truncate="drop"}"#, "truncate"),
        (r#"{topic="/default/a", table="t", create_tables=true}"#, "connector.tables[0].mode"),
    ];
    for (tables, field) in cases {
        let output = std::process::Command::new(BINARY)
            .arg("--check")
            .env("DANUBE_SERVICE_URL", "http://127.0.0.1:1")
            .env("CONNECTOR_NAME", "bad")
            .env("CONNECTOR_SINK__TOPICS", r#"[{topic="/default/a"}]"#)
            .env("CLICKHOUSE_TABLES", format!("[{tables}]"))
            .output()
            .expect("run --check");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success() && text.contains(field), "{tables}: expected `{field}` in: {text}");
    }
}
