//! Shutdown deadlines: what is still unacked when `shutdown.timeout` passes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{eventually, numbered, runtime_config, spawn_source};
use danube_connect_core::{async_trait, ConnectorResult, PullSource, Ready, SourceOffset, SourceRecord};
use danube_dev_broker::EmbeddedBroker;

/// Returns `first` at once and `second` once `open` is set, idling (empty polls) in between
/// and after; records commits.
struct GatedSource {
    first: Option<Vec<SourceRecord>>,
    second: Option<Vec<SourceRecord>>,
    open: Arc<AtomicBool>,
    commits: Arc<Mutex<Vec<SourceOffset>>>,
}

#[async_trait]
impl PullSource for GatedSource {
    async fn poll(&mut self) -> ConnectorResult<Vec<SourceRecord>> {
        if let Some(batch) = self.first.take() {
            return Ok(batch);
        }
        if self.open.load(Ordering::SeqCst) {
            if let Some(batch) = self.second.take() {
                return Ok(batch);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Vec::new())
    }

    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> ConnectorResult<()> {
        self.commits.lock().expect("lock").extend(offsets);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_danube_never_acked_by_the_drain_deadline_exit_3_and_stay_uncommitted() {
    let broker = EmbeddedBroker::start_default().await.expect("broker");
    let topic = "/default/drain-deadline";
    let open = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(Mutex::new(Vec::new()));
    let source = GatedSource {
        first: Some(numbered(topic, 0..5)),
        second: Some(numbered(topic, 5..10)),
        open: open.clone(),
        commits: commits.clone(),
    };
    let mut config = runtime_config("drain-deadline", &broker.url());
    config.shutdown.timeout = Duration::from_secs(1);
    let (token, run) = spawn_source(config, Ready(source)).await;
    assert!(
        eventually(Duration::from_secs(10), || commits.lock().expect("lock").len() == 5).await,
        "the first batch is acked and committed"
    );
    assert_eq!(broker.messages(topic).len(), 5);
    // From now on Danube refuses every send: the second batch is retried and never acked.
    broker.fail_next_sends(1_000_000);
    open.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    let report =
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("run ends after the deadline").expect("join");
    assert!(!report.drained);
    assert!(report.fatal.is_none(), "{:?}", report.fatal);
    assert_eq!(report.exit_code(), 3);
    // Give the stopped tasks a moment: nothing of the second batch may be committed later either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored: HashSet<u64> =
        broker.messages(topic).iter().filter_map(|m| m.attributes.get("n")?.parse().ok()).collect();
    let committed: Vec<u64> = commits.lock().expect("lock").iter().map(|o| o.position).collect();
    assert_eq!(committed, vec![0, 1, 2, 3, 4], "what Danube acked is committed, nothing else");
    for position in &committed {
        assert!(stored.contains(position), "offset {position} committed but not in Danube");
    }
    assert!((5..10).all(|n| !stored.contains(&n)), "the broker refused the second batch: {stored:?}");
}
