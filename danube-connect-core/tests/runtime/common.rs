//! Shared pieces of the runtime integration tests: configs, test sources and sinks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use danube_connect_core::config::{RetryConfig, RuntimeConfig, SinkTopicConfig};
use danube_connect_core::{
    async_trait, ConnectorError, ConnectorResult, Context, Factory, Parts, PullSource, Ready, Runtime, Sink,
    SinkRecord, SourceOffset, SourceRecord,
};
use tokio_util::sync::CancellationToken;

/// A runtime config pointing at `url`, with fast retries and an ephemeral ops port.
pub(crate) fn runtime_config(name: &str, url: &str) -> RuntimeConfig {
    let mut config = RuntimeConfig { name: name.to_string(), ..RuntimeConfig::default() };
    config.danube.service_url = url.to_string();
    config.danube.connect_timeout = Duration::from_secs(30);
    config.ops.listen = "127.0.0.1:0".parse().expect("addr");
    config.retry = RetryConfig {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(10),
        ..RetryConfig::default()
    };
    config.shutdown.timeout = Duration::from_secs(20);
    config
}

/// A sink config over `topics` with default subscription settings.
pub(crate) fn with_topics(mut config: RuntimeConfig, topics: &[&str]) -> RuntimeConfig {
    config.sink.topics = topics.iter().map(|t| SinkTopicConfig::new(*t)).collect();
    config
}

/// Starts a runtime and runs `source` in the background; returns the shutdown token and
/// the join handle of the run.
pub(crate) async fn spawn_source<S: Factory>(
    config: RuntimeConfig,
    source: S,
) -> (CancellationToken, tokio::task::JoinHandle<danube_connect_core::RunReport>)
where
    S::Connector: PullSource,
{
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime starts");
    let handle = tokio::spawn(async move { runtime.run(Parts::new().with_pull(source)).await.expect("run") });
    (token, handle)
}

/// Starts a runtime and runs `sink` in the background.
pub(crate) async fn spawn_sink<K: Sink>(
    config: RuntimeConfig,
    sink: K,
) -> (CancellationToken, tokio::task::JoinHandle<danube_connect_core::RunReport>) {
    let token = CancellationToken::new();
    let runtime = Runtime::start(config, token.clone()).await.expect("runtime starts");
    let handle = tokio::spawn(async move { runtime.run(Parts::new().with_sink(Ready(sink))).await.expect("run") });
    (token, handle)
}

/// An assertion run at each commit.
pub(crate) type CommitCheck = Box<dyn Fn(&[SourceOffset]) + Send + Sync>;

/// A pull source that hands out prepared batches, then idles; records every commit.
pub(crate) struct ScriptedSource {
    batches: VecDeque<Vec<SourceRecord>>,
    /// Every offset passed to `commit`, in call order.
    pub commits: Arc<Mutex<Vec<SourceOffset>>>,
    /// Called at each commit with the offsets, before they are recorded (assertions).
    pub on_commit: Option<CommitCheck>,
    /// What `topics_at_start` returns.
    pub topics_at_start: Vec<String>,
}

impl ScriptedSource {
    /// A source that returns `batches` one per poll.
    pub(crate) fn new(batches: Vec<Vec<SourceRecord>>) -> Self {
        Self { batches: batches.into(), commits: Arc::default(), on_commit: None, topics_at_start: Vec::new() }
    }
}

#[async_trait]
impl Factory for ScriptedSource {
    type Connector = Self;

    fn topics_at_start(&self) -> Vec<String> {
        self.topics_at_start.clone()
    }

    async fn start(self, _ctx: Context) -> ConnectorResult<Self> {
        Ok(self)
    }
}

#[async_trait]
impl PullSource for ScriptedSource {
    async fn poll(&mut self) -> ConnectorResult<Vec<SourceRecord>> {
        match self.batches.pop_front() {
            Some(batch) => Ok(batch),
            None => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(Vec::new())
            }
        }
    }

    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> ConnectorResult<()> {
        if let Some(check) = &self.on_commit {
            check(&offsets);
        }
        self.commits.lock().expect("lock").extend(offsets);
        Ok(())
    }
}

/// What a [`RecordingSink`] does with each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Accept every record.
    Accept,
    /// Fail with a retryable error this many times in total, then accept.
    FailRetryable(usize),
    /// Reject records whose payload is `bad` as invalid.
    RejectBad,
    /// Fail fatally.
    Fatal,
}

/// A sink that records batches and accepted records.
#[derive(Clone)]
pub(crate) struct RecordingSink {
    /// Batches as handed to `process_batch` (payloads).
    pub batches: Arc<Mutex<Vec<Vec<String>>>>,
    /// Accepted records in processing order.
    pub accepted: Arc<Mutex<Vec<SinkRecord>>>,
    /// Calls to `process_batch`.
    pub calls: Arc<Mutex<usize>>,
    behaviour: Behaviour,
    failures_left: Arc<Mutex<usize>>,
}

impl RecordingSink {
    /// A sink with `behaviour`.
    pub(crate) fn new(behaviour: Behaviour) -> Self {
        let failures = match behaviour {
            Behaviour::FailRetryable(n) => n,
            _ => 0,
        };
        Self {
            batches: Arc::default(),
            accepted: Arc::default(),
            calls: Arc::default(),
            behaviour,
            failures_left: Arc::new(Mutex::new(failures)),
        }
    }

    /// Payloads accepted so far.
    pub(crate) fn accepted_payloads(&self) -> Vec<String> {
        self.accepted.lock().expect("lock").iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect()
    }
}

#[async_trait]
impl Sink for RecordingSink {
    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()> {
        self.process_batch(std::slice::from_ref(record)).await
    }

    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        *self.calls.lock().expect("lock") += 1;
        self.batches
            .lock()
            .expect("lock")
            .push(records.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect());
        match self.behaviour {
            Behaviour::Fatal => return Err(ConnectorError::fatal_msg("sink broken")),
            Behaviour::FailRetryable(_) => {
                let mut left = self.failures_left.lock().expect("lock");
                if *left > 0 {
                    *left -= 1;
                    return Err(ConnectorError::retryable_msg("outside system down"));
                }
            }
            Behaviour::RejectBad => {
                let failures: Vec<(usize, ConnectorError)> = records
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.payload.as_ref() == b"bad")
                    .map(|(i, _)| (i, ConnectorError::invalid_msg("payload is bad")))
                    .collect();
                let mut accepted = self.accepted.lock().expect("lock");
                for (i, r) in records.iter().enumerate() {
                    if !failures.iter().any(|(f, _)| *f == i) {
                        accepted.push(r.clone());
                    }
                }
                return if failures.is_empty() { Ok(()) } else { Err(ConnectorError::PartialBatch { failures }) };
            }
            Behaviour::Accept => {}
        }
        self.accepted.lock().expect("lock").extend(records.iter().cloned());
        Ok(())
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub(crate) async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < timeout {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// Polls the ops port's `/readyz` until it answers `want` (true) or 20 s pass (false).
pub(crate) async fn wait_for_readiness(addr: std::net::SocketAddr, want: u16) -> bool {
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let status = http.get(format!("http://{addr}/readyz")).send().await.map(|r| r.status().as_u16());
        if status.ok() == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A `health_check` answer that follows `healthy` (a test switches it).
pub(crate) fn switchable_health(healthy: &std::sync::atomic::AtomicBool) -> ConnectorResult<()> {
    if healthy.load(std::sync::atomic::Ordering::SeqCst) {
        Ok(())
    } else {
        Err(danube_connect_core::ConnectorError::retryable_msg("listener down"))
    }
}

/// Records `m{i}` for `i` in `range`, each with attribute `n = i` and offset `("p", i)`.
pub(crate) fn numbered(topic: &str, range: std::ops::Range<u64>) -> Vec<SourceRecord> {
    range
        .map(|i| {
            SourceRecord::new(topic, format!("m{i}"))
                .with_attribute("n", i.to_string())
                .with_offset(SourceOffset::new("p", i))
        })
        .collect()
}
