//! The cdc-to-webhooks pipeline end to end with its own config files: a real PostgreSQL, a
//! Danube broker (the development broker, and the real one when `DANUBE_BROKER_BIN` is set),
//! the `danube-postgres-cdc` and `danube-http-sink` binaries of this build profile (`cargo
//! build -p danube-connector-postgres-cdc -p danube-connector-http-sink`, or
//! `scripts/test.sh`), and a real HTTP server on 127.0.0.1 that records every request.
//!
//! A writer inserts, updates and deletes rows of `orders` in paced transactions; every row
//! change must arrive as one webhook (duplicates, told apart by `danube-message-id`, are
//! allowed: delivery is at least once), with the change's op and row, and the changes of one
//! row in commit order.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::danube::reliable_producers;
use danube_connect_testkit::postgres::Postgres;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod pipeline;

use pipeline::{check_configs, spawn_env, start, workspace};

const PIPELINE: &str = "examples/pipelines/cdc-to-webhooks";
const TOPIC: &str = "/default/public-orders";
const SLOT: &str = "orders_webhooks";

/// One request the receiver got: its `danube-message-id` header and its JSON body.
#[derive(Debug, Clone)]
struct Hook {
    message_id: String,
    path: String,
    body: Value,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 that answers 200 to every request (keep-alive)
/// and records it.
async fn receiver() -> (u16, Arc<Mutex<Vec<Hook>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
    let port = listener.local_addr().expect("receiver address").port();
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let recorded = hooks.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, recorded.clone()));
        }
    });
    (port, hooks)
}

async fn serve(mut stream: TcpStream, hooks: Arc<Mutex<Vec<Hook>>>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
            })
        };
        let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
        let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
        let message_id = header("danube-message-id").unwrap_or_default();
        hooks.lock().expect("hooks").push(Hook { message_id, path, body });
        buf.drain(..head_end + length);
        if stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

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

/// One expected row change: op, id, and the status after it (none for a delete).
type Expected = (String, i64, Option<String>);

/// Each row's changes as received: the change and its (commit LSN, position in the transaction).
type ChangesPerRow = BTreeMap<i64, Vec<(Expected, (u64, u64))>>;

/// What a webhook body says: op, id, status after (none for a delete), and its position
/// `(commit_lsn, seq)`.
fn change_of(body: &Value) -> Option<(Expected, (u64, u64))> {
    let op = body["op"].as_str()?.to_string();
    let row = if op == "DELETE" { &body["before"] } else { &body["after"] };
    let id = row["id"].as_i64()?;
    let status = (op != "DELETE").then(|| row["status"].as_str().unwrap_or_default().to_string());
    let position = (lsn(body["commit_lsn"].as_str()?)?, body["seq"].as_u64()?);
    Some(((op, id, status), position))
}

/// `16/B374D848` as a number.
fn lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_change_arrives_as_a_webhook_in_order_per_row() {
    std::env::set_current_dir(workspace()).expect("cd to the workspace root");
    for kind in BrokerKind::all() {
        run_pipeline(kind).await;
    }
}

async fn run_pipeline(kind: BrokerKind) {
    let pg = Postgres::start().expect("postgres (scripts/test.sh installs it)");
    let init = std::fs::read_to_string(format!("{PIPELINE}/init.sql")).expect("init.sql");
    pg.psql(&init).expect("create the table");
    let broker = TestBroker::start(kind).await.expect("broker");
    let (port, hooks) = receiver().await;

    // The topic must exist before the sink subscribes (a new subscription starts at its end).
    drop(reliable_producers(broker.url(), TOPIC, "topic-init", 1).await.expect("create the topic"));
    let sink_vars = spawn_env(
        PIPELINE,
        "http-sink.toml",
        &[("DANUBE_SERVICE_URL", broker.url()), ("HTTP_SINK_URL", format!("http://127.0.0.1:{port}/hooks/orders"))],
    );
    let sink = start("danube-http-sink", &sink_vars, "consuming").await;
    let cdc_vars = spawn_env(
        PIPELINE,
        "postgres-cdc.toml",
        &[
            ("DANUBE_SERVICE_URL", broker.url()),
            ("POSTGRES_CDC_URL", pg.url()),
            ("POSTGRES_CDC_STATUS_INTERVAL", "200ms".into()),
        ],
    );
    let cdc = start("danube-postgres-cdc", &cdc_vars, "streaming changes").await;

    // Paced transactions: an insert, an update of a random live row, now and then a delete.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut expected: Vec<Expected> = Vec::new();
    let mut live: Vec<i64> = Vec::new();
    let statuses = ["new", "paid", "shipped", "cancelled"];
    for step in 0..80i64 {
        let id = step + 1;
        let mut sql = format!("BEGIN; INSERT INTO orders VALUES ({id}, 'customer {id}', 'new', {id}.50);");
        expected.push(("INSERT".into(), id, Some("new".into())));
        live.push(id);
        let target = live[rng.below(live.len() as u64) as usize];
        let status = statuses[rng.below(statuses.len() as u64) as usize];
        sql.push_str(&format!("UPDATE orders SET status = '{status}' WHERE id = {target};"));
        expected.push(("UPDATE".into(), target, Some(status.into())));
        if rng.below(4) == 0 {
            let gone = live.remove(rng.below(live.len() as u64) as usize);
            sql.push_str(&format!("DELETE FROM orders WHERE id = {gone};"));
            expected.push(("DELETE".into(), gone, None));
        }
        sql.push_str("COMMIT;");
        pg.psql(&sql).unwrap_or_else(|e| panic!("step {step}: {e}"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Wait until every change arrived (counted once per message id).
    let deadline = Instant::now() + Duration::from_secs(90);
    let received = loop {
        let hooks = hooks.lock().expect("hooks").clone();
        let distinct: HashSet<&str> = hooks.iter().map(|h| h.message_id.as_str()).collect();
        if distinct.len() >= expected.len() || Instant::now() > deadline {
            break hooks;
        }
        drop(distinct);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Every webhook: the configured path, a message id, a change body.
    let mut seen_ids = HashSet::new();
    let mut per_row: ChangesPerRow = BTreeMap::new();
    for hook in &received {
        assert_eq!(hook.path, "/hooks/orders", "{kind}: the configured target path");
        assert!(!hook.message_id.is_empty(), "{kind}: every webhook carries danube-message-id");
        let Some((change, position)) = change_of(&hook.body) else {
            panic!("{kind}: a webhook body that is not a change record: {}", hook.body)
        };
        if seen_ids.insert(hook.message_id.clone()) {
            per_row.entry(change.1).or_default().push((change, position));
        }
    }
    let mut expected_per_row: BTreeMap<i64, Vec<Expected>> = BTreeMap::new();
    for change in &expected {
        expected_per_row.entry(change.1).or_default().push(change.clone());
    }
    let got_per_row: BTreeMap<i64, Vec<Expected>> =
        per_row.iter().map(|(id, changes)| (*id, changes.iter().map(|(c, _)| c.clone()).collect())).collect();
    if got_per_row != expected_per_row {
        let differing: Vec<_> = expected_per_row
            .iter()
            .filter(|(id, changes)| got_per_row.get(id) != Some(changes))
            .take(3)
            .map(|(id, changes)| (id, changes, got_per_row.get(id)))
            .collect();
        panic!(
            "{kind}: webhooks differ from the row changes ({} distinct of {} expected); first rows that differ \
             (expected, got): {differing:?}\n--- sink\n{}\n--- cdc\n{}",
            seen_ids.len(),
            expected.len(),
            sink.log(),
            cdc.log()
        );
    }
    // In commit order per row, as the record positions say too.
    for (id, changes) in &per_row {
        let positions: Vec<(u64, u64)> = changes.iter().map(|(_, p)| *p).collect();
        let mut sorted = positions.clone();
        sorted.sort_unstable();
        assert_eq!(positions, sorted, "{kind}: the changes of row {id} arrived in commit order");
    }
    println!(
        "cdc-to-webhooks ({kind}): {} row changes in {} webhooks ({} distinct), every one as expected",
        expected.len(),
        received.len(),
        seen_ids.len()
    );
    for (name, mut process) in [("postgres-cdc", cdc), ("http-sink", sink)] {
        let status = process.terminate(Duration::from_secs(30)).await.expect("exits on SIGTERM");
        assert!(status.success(), "{kind}: {name}: clean exit: {status}");
    }
}

#[test]
fn cdc_to_webhooks_configs_are_valid() {
    check_configs(
        PIPELINE,
        &[
            ("danube-postgres-cdc", "postgres-cdc.toml", SLOT),
            ("danube-http-sink", "http-sink.toml", "/default/public-orders"),
        ],
    );
}
