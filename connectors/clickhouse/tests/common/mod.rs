//! Set-up shared by the ClickHouse sink's broker tests (`conformance.rs`, `cdc.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use danube_connect_testkit::broker::{BrokerKind, TestBroker};
use danube_connect_testkit::clickhouse::ClickHouseServer;
use danube_connect_testkit::process::ConnectorProcess;

/// The sink binary under test.
pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_danube-clickhouse");

/// A process environment.
pub(crate) type Env = HashMap<String, String>;

/// The binary's environment: consume `topic` as `name` with the table mapping `mapping`
/// (one inline TOML table, e.g. `{topic="/default/x", table="x"}`), spooling in `spool`.
pub(crate) fn sink_env(
    broker: &TestBroker,
    ch: &ClickHouseServer,
    spool: &Path,
    name: &str,
    topic: &str,
    mapping: &str,
) -> Env {
    [
        ("DANUBE_SERVICE_URL", broker.url()),
        ("CONNECTOR_NAME", name.to_string()),
        ("CONNECTOR_SINK__TOPICS", format!("[{{topic=\"{topic}\"}}]")),
        ("CONNECTOR_SINK__BATCH__MAX_RECORDS", "10".into()),
        ("CONNECTOR_SINK__BATCH__LINGER", "5ms".into()),
        ("CONNECTOR_RETRY__INITIAL_BACKOFF", "50ms".into()),
        ("CONNECTOR_RETRY__MAX_BACKOFF", "500ms".into()),
        ("CLICKHOUSE_URL", ch.url()),
        ("CLICKHOUSE_TABLES", format!("[{mapping}]")),
        ("CLICKHOUSE_SPOOL__DIR", spool.display().to_string()),
        ("CLICKHOUSE_BATCH__MAX_LINGER", "200ms".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Starts the sink and waits until it is ready and consuming its topic (Danube subscriptions
/// start at the end of a topic, so nothing may be published before).
pub(crate) async fn start_sink(kind: BrokerKind, env: &Env) -> ConnectorProcess {
    let mut process = ConnectorProcess::spawn(Path::new(BINARY), env).expect("spawn the sink");
    process.wait_ready(Duration::from_secs(30)).await.unwrap_or_else(|e| panic!("{kind}: sink not ready: {e}"));
    process
        .wait_consuming(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{kind}: the sink never subscribed: {e}"));
    process
}
