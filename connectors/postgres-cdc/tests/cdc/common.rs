//! Shared harness: PostgreSQL + broker + the connector binary.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use danube_connect_testkit::postgres::Postgres;
use danube_connect_testkit::process::ConnectorProcess;
use danube_dev_broker::EmbeddedBroker;
use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_danube-postgres-cdc");

/// A private PostgreSQL and a broker.
pub(crate) struct Env {
    pub pg: Postgres,
    pub broker: EmbeddedBroker,
}

impl Env {
    pub(crate) async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like [`Self::start`], with extra PostgreSQL settings.
    pub(crate) async fn start_with(settings: &[(&str, &str)]) -> Self {
        let pg = Postgres::start_with(settings).expect("postgres (scripts/test.sh installs it)");
        let broker = EmbeddedBroker::start_default().await.expect("broker");
        Self { pg, broker }
    }

    /// Environment of the connector binary, plus `extra`.
    pub(crate) fn connector_env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = HashMap::from([
            ("DANUBE_SERVICE_URL".to_string(), self.broker.url()),
            ("CONNECTOR_NAME".to_string(), "pgcdc".to_string()),
            ("POSTGRES_CDC_URL".to_string(), self.pg.url()),
            ("POSTGRES_CDC_STATUS_INTERVAL".to_string(), "200ms".to_string()),
            ("POSTGRES_CDC_HEARTBEAT_INTERVAL".to_string(), "1s".to_string()),
        ]);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        env
    }

    /// Starts the connector and waits until it is ready.
    pub(crate) async fn spawn(&self, extra: &[(&str, &str)]) -> ConnectorProcess {
        let mut process = ConnectorProcess::spawn(Path::new(BIN), &self.connector_env(extra)).expect("spawn connector");
        process.wait_ready(Duration::from_secs(60)).await.expect("connector ready");
        process
    }

    /// Waits until the slot is streaming (held by a walsender).
    pub(crate) async fn wait_streaming(&self, slot: &str, process: &ConnectorProcess) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let active = self
                .pg
                .psql(&format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"))
                .unwrap_or_default();
            if active == "t" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("slot {slot} never became active: {}", process.log());
    }

    /// JSON payloads stored on `topic`, in order.
    pub(crate) fn payloads(&self, topic: &str) -> Vec<Value> {
        self.broker.messages(topic).iter().map(|m| serde_json::from_slice(&m.payload).expect("JSON payload")).collect()
    }

    /// A tokio-postgres client to the private cluster.
    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.pg.url(), tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    }

    /// The slot's confirmed flush LSN as a number.
    pub(crate) fn confirmed_flush(&self, slot: &str) -> u64 {
        let text = self
            .pg
            .psql(&format!(
                "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .expect("slot query");
        text.parse().unwrap_or(0)
    }
}

/// Parses `X/Y` LSN text.
pub(crate) fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').expect("lsn form");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

/// Waits until `topic` holds `count` messages; returns them as JSON.
pub(crate) async fn wait_payloads(env: &Env, topic: &str, count: usize, timeout: Duration) -> Vec<Value> {
    env.broker.wait_for_messages(topic, count, timeout).await;
    env.payloads(topic)
}

/// Starts the connector with `extra`, which must make startup fail within 60 s; its log.
pub(crate) async fn startup_error(env: &Env, extra: &[(&str, &str)]) -> String {
    let mut process = ConnectorProcess::spawn(Path::new(BIN), &env.connector_env(extra)).expect("spawn");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = process.try_wait() {
            assert_ne!(status.code(), Some(0), "startup must fail: {}", process.log());
            return process.log();
        }
        assert!(tokio::time::Instant::now() < deadline, "connector kept running: {}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM and asserts the connector exits 0 within 30 s.
pub(crate) async fn stop_cleanly(process: &mut ConnectorProcess) {
    let status = process.terminate(Duration::from_secs(30)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", process.log());
}

/// `GET http://127.0.0.1:<ops port><path>`: status and body.
pub(crate) async fn ops_get(process: &ConnectorProcess, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", process.ops_port);
    let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The value of the series `name` whose labels include every `labels` pair, in a Prometheus
/// text exposition.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let matches = metric == name && labels.iter().all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// Scrapes `/metrics` until `name{labels}` satisfies `accept`; its value (panics after `timeout`).
pub(crate) async fn wait_metric(
    process: &ConnectorProcess,
    name: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
    accept: impl Fn(f64) -> bool,
) -> f64 {
    let started = Instant::now();
    let mut last = None;
    loop {
        let (_, text) = ops_get(process, "/metrics").await;
        last = sample(&text, name, labels).or(last);
        if let Some(value) = last.filter(|v| accept(*v)) {
            return value;
        }
        assert!(started.elapsed() < timeout, "{name}{labels:?} never accepted, last {last:?}: {}", process.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
