//! The Danube broker a test runs against: the in-process development broker, or the real
//! Danube broker (`danube-broker` v0.15.1) started as a process on free loopback ports.
//!
//! The real broker is found through the environment variable [`BROKER_BIN_ENV`]
//! (`DANUBE_BROKER_BIN`). It is not on any package registry, so a machine without it runs the
//! suites on the development broker only and [`BrokerKind::all`] prints one loud line saying
//! that the real-broker suite did not run. `.ci/run` sets the variable whenever the binary is
//! at hand, so CI always runs both.
//!
//! One test body runs on both brokers:
//!
//! ```no_run
//! # async fn demo() -> Result<(), danube_connect_testkit::HarnessError> {
//! use danube_connect_testkit::broker::{BrokerKind, TestBroker};
//! for kind in BrokerKind::all() {
//!     let broker = TestBroker::start(kind).await?;
//!     // point the connector at broker.url(), count what arrived, ...
//!     # let _ = broker;
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use danube_core::admin_proto::broker_admin_client::BrokerAdminClient;
use danube_core::admin_proto::topic_admin_client::TopicAdminClient;
use danube_core::admin_proto::{
    DescribeTopicRequest, DispatchStrategy, Empty, PartitionedTopicRequest, SetSubscriptionDispatchConfigRequest,
    SubscriptionDispatchConfig, TopicRequest,
};
use danube_dev_broker::{BrokerConfig, EmbeddedBroker};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ports::free_port;
use crate::HarnessError;

/// The environment variable naming the real `danube-broker` binary.
pub const BROKER_BIN_ENV: &str = "DANUBE_BROKER_BIN";

/// The environment variable naming an already running Danube broker (e.g. a staging cluster)
/// to run the real-broker suite against instead of starting one: its client URL. Its admin
/// API and Prometheus exporter come from `DANUBE_BROKER_ADMIN_URL` and
/// `DANUBE_BROKER_METRICS_URL`.
pub const BROKER_URL_ENV: &str = "DANUBE_BROKER_URL";

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// `danube-dev-broker`, in process.
    Dev,
    /// The real Danube broker, as a process ([`BROKER_BIN_ENV`]).
    Real,
}

impl BrokerKind {
    /// The brokers to run a conformance test on: always the development broker, and the real
    /// one when [`BROKER_BIN_ENV`] is set. When it is not, one loud line says so (once per
    /// test binary).
    pub fn all() -> Vec<BrokerKind> {
        if real_broker_configured() {
            vec![BrokerKind::Dev, BrokerKind::Real]
        } else {
            announce_real_suite_skipped();
            vec![BrokerKind::Dev]
        }
    }

    /// The real broker alone, or nothing (with the loud line) when it is not configured.
    pub fn real_only() -> Vec<BrokerKind> {
        if real_broker_configured() {
            vec![BrokerKind::Real]
        } else {
            announce_real_suite_skipped();
            Vec::new()
        }
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Dev => "dev broker",
            BrokerKind::Real => "real broker",
        })
    }
}

/// Whether a real broker is at hand: a binary to start, or a running one.
fn real_broker_configured() -> bool {
    external_broker_url().is_some() || real_broker_binary().is_some()
}

fn external_broker_url() -> Option<String> {
    std::env::var(BROKER_URL_ENV).ok().filter(|url| !url.is_empty())
}

/// The real broker's binary, when [`BROKER_BIN_ENV`] names an existing file.
///
/// # Panics
/// When the variable is set but names no file: a misconfigured run must not pass quietly.
pub fn real_broker_binary() -> Option<PathBuf> {
    let value = std::env::var_os(BROKER_BIN_ENV)?;
    if value.is_empty() {
        return None;
    }
    let path = PathBuf::from(value);
    assert!(path.is_file(), "{BROKER_BIN_ENV}={} is not a file", path.display());
    Some(path)
}

fn announce_real_suite_skipped() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "REAL BROKER SUITE DID NOT RUN: {BROKER_BIN_ENV} and {BROKER_URL_ENV} are unset; these tests ran on the development broker only"
        );
    });
}

/// Settings of a real broker that standalone mode cannot change (cluster mode with a YAML
/// config, single node).
#[derive(Debug, Clone, Default)]
pub struct RealBrokerOptions {
    /// `dispatch.max_unacked_messages` (the broker's default is 10).
    pub max_unacked_messages: Option<u32>,
    /// Namespaces to create at start besides `default`.
    pub namespaces: Vec<String>,
    /// Where reliable topics keep their messages (`storage.mode`).
    pub storage: StorageMode,
}

/// Where the brokers keep reliable topics' messages (`storage.mode` in the broker config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StorageMode {
    /// Each broker's own WAL directory (`local`, Danube's default). A topic that moves to
    /// another broker starts there without its earlier messages.
    #[default]
    Local,
    /// Each broker's own WAL plus segments exported to a directory every broker of the
    /// cluster shares (`shared_fs`, a temp dir here; an NFS mount in production). A topic
    /// that moves to another broker is read there from the shared segments.
    SharedFs,
}

/// What a broker of a [`RealCluster`] needs to know about the others.
#[derive(Debug, Clone)]
struct ClusterSeat {
    /// Every broker's Raft address (`meta_store.seed_nodes`).
    seeds: Vec<String>,
    /// The directory the brokers share for [`StorageMode::SharedFs`].
    shared: PathBuf,
}

/// A real Danube broker process on free 127.0.0.1 ports with a temp data dir, killed on drop;
/// or, with [`BROKER_URL_ENV`] set, a broker that is already running elsewhere.
pub struct RealBroker {
    external: Option<ExternalBroker>,
    binary: PathBuf,
    options: Option<RealBrokerOptions>,
    broker_port: u16,
    admin_port: u16,
    prometheus_port: u16,
    raft_port: u16,
    child: Option<Child>,
    runs: u32,
    dir: tempfile::TempDir,
    seat: Option<ClusterSeat>,
}

/// The URLs of a broker this process did not start.
struct ExternalBroker {
    url: String,
    admin_url: String,
    metrics_url: String,
}

impl RealBroker {
    /// Starts the broker in standalone mode (its defaults: `default` namespace, topics
    /// auto-created, dispatch window 10).
    pub async fn start() -> Result<Self, HarnessError> {
        Self::launch(None).await
    }

    /// Starts the broker in cluster mode (single node) with a YAML config made from `options`.
    pub async fn start_with(options: RealBrokerOptions) -> Result<Self, HarnessError> {
        Self::launch(Some(options)).await
    }

    async fn launch(options: Option<RealBrokerOptions>) -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir().map_err(|source| HarnessError::Io { what: "broker tempdir".into(), source })?;
        if let Some(url) = external_broker_url() {
            let external = ExternalBroker {
                url,
                admin_url: std::env::var("DANUBE_BROKER_ADMIN_URL").unwrap_or_default(),
                metrics_url: std::env::var("DANUBE_BROKER_METRICS_URL").unwrap_or_default(),
            };
            return Ok(Self {
                external: Some(external),
                binary: PathBuf::new(),
                options,
                broker_port: 0,
                admin_port: 0,
                prometheus_port: 0,
                raft_port: 0,
                child: None,
                runs: 0,
                dir,
                seat: None,
            });
        }
        let binary = real_broker_binary().ok_or_else(|| HarnessError::Missing {
            binary: "danube-broker".into(),
            install: format!("set {BROKER_BIN_ENV} to the real Danube broker binary"),
        })?;
        let mut broker = Self::unstarted(binary, options, dir);
        broker.spawn().await?;
        Ok(broker)
    }

    /// A broker on fresh free ports, not started yet.
    fn unstarted(binary: PathBuf, options: Option<RealBrokerOptions>, dir: tempfile::TempDir) -> Self {
        Self {
            external: None,
            binary,
            options,
            broker_port: free_port(),
            admin_port: free_port(),
            prometheus_port: free_port(),
            raft_port: free_port(),
            child: None,
            runs: 0,
            dir,
            seat: None,
        }
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn url(&self) -> String {
        match &self.external {
            Some(external) => external.url.clone(),
            None => format!("http://127.0.0.1:{}", self.broker_port),
        }
    }

    /// The admin gRPC endpoint (`danube_core::admin_proto`).
    pub fn admin_url(&self) -> String {
        match &self.external {
            Some(external) => external.admin_url.clone(),
            None => format!("http://127.0.0.1:{}", self.admin_port),
        }
    }

    /// The Prometheus exporter's `/metrics` URL.
    pub fn metrics_url(&self) -> String {
        match &self.external {
            Some(external) => external.metrics_url.clone(),
            None => format!("http://127.0.0.1:{}/metrics", self.prometheus_port),
        }
    }

    /// Whether this is a broker the suite did not start ([`BROKER_URL_ENV`]): it cannot be
    /// restarted or frozen.
    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// The broker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the broker logged in its current and earlier runs.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| std::fs::read_to_string(self.log_path(run)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("broker-{run}.log"))
    }

    /// Stops the broker with SIGTERM (SIGKILL after 10 s) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let started = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if started.elapsed() < Duration::from_secs(10) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Kills the broker with SIGKILL (a crash) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker and starts it again on the same ports with the same data.
    ///
    /// Danube v0.15.1 keeps its metadata state machine in memory and purges its Raft log
    /// after the first snapshot (1,000 entries, reached within seconds of uptime), so a
    /// restart on the same data fails ("Failed to get log entries") once the broker has run
    /// for more than a few seconds. [`Self::freeze`] is the outage that works on it.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        if self.is_external() {
            return Err(HarnessError::Missing {
                binary: "danube-broker".into(),
                install: format!("a broker given by {BROKER_URL_ENV} cannot be restarted by the suite"),
            });
        }
        self.stop().await;
        self.spawn().await
    }

    /// Freezes the broker (SIGSTOP) for `duration`, then lets it go on (SIGCONT): an outage
    /// in which every connection stays open but nothing is answered.
    pub async fn freeze(&mut self, duration: Duration) {
        if self.is_external() {
            eprintln!("OUTAGE NOT TESTED: the broker given by {BROKER_URL_ENV} is not ours to freeze");
            tokio::time::sleep(duration).await;
            return;
        }
        if let Some(pid) = self.pid() {
            let pid = Pid::from_raw(pid as i32);
            let _ = kill(pid, Signal::SIGSTOP);
            tokio::time::sleep(duration).await;
            let _ = kill(pid, Signal::SIGCONT);
        }
    }

    async fn spawn(&mut self) -> Result<(), HarnessError> {
        self.start_process()?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Starts the process without waiting for it (the brokers of a cluster wait for each other).
    fn start_process(&mut self) -> Result<(), HarnessError> {
        self.runs += 1;
        let log_path = self.log_path(self.runs);
        let log = std::fs::File::create(&log_path)
            .map_err(|source| HarnessError::Io { what: "broker log".into(), source })?;
        let mut command = Command::new(&self.binary);
        let data = self.dir.path().join("data");
        match &self.options {
            None => {
                command
                    .args(["--mode", "standalone", "--data-dir"])
                    .arg(&data)
                    .arg("--broker-addr")
                    .arg(format!("127.0.0.1:{}", self.broker_port))
                    .arg("--admin-addr")
                    .arg(format!("127.0.0.1:{}", self.admin_port))
                    .arg("--prom-exporter")
                    .arg(format!("127.0.0.1:{}", self.prometheus_port))
                    .arg("--raft-addr")
                    .arg(format!("127.0.0.1:{}", self.raft_port));
            }
            Some(options) => {
                let config = self.dir.path().join("danube_broker.yml");
                std::fs::write(&config, self.cluster_config(options, &data))
                    .map_err(|source| HarnessError::Io { what: "broker config".into(), source })?;
                command.arg("--config-file").arg(&config);
            }
        }
        let child = command
            .env("NO_COLOR", "1")
            .env("RUST_LOG", std::env::var("DANUBE_BROKER_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::from(log.try_clone().map_err(|source| HarnessError::Io { what: "log".into(), source })?))
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|source| HarnessError::Io { what: format!("spawn {}", self.binary.display()), source })?;
        self.child = Some(child);
        Ok(())
    }

    fn cluster_config(&self, options: &RealBrokerOptions, data: &std::path::Path) -> String {
        let mut namespaces = vec!["default".to_string()];
        namespaces.extend(options.namespaces.iter().cloned());
        let namespaces: String = namespaces.iter().map(|ns| format!("  - \"{ns}\"\n")).collect();
        let seeds: String = match &self.seat {
            Some(seat) => {
                let peers: String = seat.seeds.iter().map(|peer| format!("    - \"{peer}\"\n")).collect();
                format!("  seed_nodes:\n{peers}")
            }
            None => String::new(),
        };
        let storage = match (options.storage, &self.seat) {
            (StorageMode::SharedFs, Some(seat)) => {
                format!("  mode: shared_fs\n  durable:\n    root: \"{}\"\n", seat.shared.display())
            }
            (StorageMode::SharedFs, None) => {
                format!("  mode: shared_fs\n  durable:\n    root: \"{}/shared\"\n", data.display())
            }
            (StorageMode::Local, _) => "  mode: local\n".to_string(),
        };
        format!(
            "cluster_name: \"TEST\"\n\
             broker:\n  host: \"127.0.0.1\"\n  ports:\n    client: {client}\n    admin: {admin}\n    raft: {raft}\n    prometheus: {prom}\n\
             meta_store:\n  data_dir: \"{data}/raft\"\n{seeds}\
             bootstrap_namespaces:\n{namespaces}\
             auto_create_topics: true\n\
             auth:\n  mode: none\n\
             load_manager:\n  assignment_strategy: \"fair\"\n  load_report_interval_seconds: 30\n  rebalancing:\n    enabled: false\n    aggressiveness: \"balanced\"\n    check_interval_seconds: 300\n    max_moves_per_hour: 10\n    cooldown_seconds: 60\n    min_brokers_for_rebalance: 2\n    min_topic_age_seconds: 300\n    blacklist_topics: []\n\
             storage:\n{storage}  local_wal_root: \"{data}/wal\"\n  metadata_prefix: \"/danube\"\n  local_retention:\n    time_minutes: 2880\n    size_mb: 20480\n    check_interval_minutes: 5\n  wal:\n    rotation:\n      max_bytes: 536870912\n\
             dispatch:\n  max_unacked_messages: {window}\n\
             policies:\n  max_producers_per_topic: 0\n  max_subscriptions_per_topic: 0\n  max_consumers_per_topic: 0\n  max_consumers_per_subscription: 0\n  max_publish_rate: 0\n  max_subscription_dispatch_rate: 0\n  max_message_size: 10485760\n",
            client = self.broker_port,
            admin = self.admin_port,
            raft = self.raft_port,
            prom = self.prometheus_port,
            data = data.display(),
            window = options.max_unacked_messages.unwrap_or(10),
        )
    }

    /// Waits until the log says the gRPC server listens and its port accepts connections.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.broker_port));
        let started = Instant::now();
        let log_path = self.log_path(self.runs);
        while started.elapsed() < timeout {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(HarnessError::NotReady {
                    what: "danube-broker".into(),
                    seconds: timeout.as_secs(),
                    detail: format!("exited with {status}: {}", tail(&self.log())),
                });
            }
            let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
            if logged.contains("broker gRPC server listening")
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(HarnessError::NotReady {
            what: "danube-broker".into(),
            seconds: timeout.as_secs(),
            detail: tail(&self.log()),
        })
    }

    async fn admin(&self) -> Result<TopicAdminClient<tonic::transport::Channel>, HarnessError> {
        Ok(TopicAdminClient::new(self.admin_channel().await?))
    }

    /// A connection to the broker's admin API, for any of its services.
    async fn admin_channel(&self) -> Result<tonic::transport::Channel, HarnessError> {
        let connect = |e: tonic::transport::Error| HarnessError::Io {
            what: "connect to the broker's admin API".into(),
            source: std::io::Error::other(e),
        };
        tonic::transport::Endpoint::from_shared(self.admin_url()).map_err(connect)?.connect().await.map_err(connect)
    }

    /// Creates a reliable partitioned topic through the admin API.
    pub async fn create_partitioned_topic(&self, topic: &str, partitions: u32) -> Result<(), HarnessError> {
        let mut admin = self.admin().await?;
        admin
            .create_partitioned_topic(PartitionedTopicRequest {
                base_name: topic.to_string(),
                partitions,
                schema_subject: None,
                dispatch_strategy: DispatchStrategy::Reliable as i32,
            })
            .await
            .map_err(|status| admin_error("CreatePartitionedTopic", status))?;
        Ok(())
    }

    /// Sets a subscription's dispatch window (`max_unacked_messages`) through the admin API.
    /// Danube v0.15.1 stores the value but its dispatchers keep the broker-wide window
    /// ([`RealBrokerOptions::max_unacked_messages`] is the setting that takes effect).
    pub async fn set_dispatch_window(&self, topic: &str, subscription: &str, window: u32) -> Result<(), HarnessError> {
        let mut admin = self.admin().await?;
        admin
            .set_subscription_dispatch_config(SetSubscriptionDispatchConfigRequest {
                topic: topic.to_string(),
                subscription: subscription.to_string(),
                dispatch_config: Some(SubscriptionDispatchConfig { max_unacked_messages: window }),
            })
            .await
            .map_err(|status| admin_error("SetSubscriptionDispatchConfig", status))?;
        Ok(())
    }

    /// Asks the cluster to move `topic` off the broker that owns it (`UnloadTopic`): the owner
    /// closes the topic and another broker loads it, with new dispatchers that start at each
    /// subscription's stored cursor. Danube refuses it on a single broker.
    pub async fn unload_topic(&self, topic: &str) -> Result<(), HarnessError> {
        let mut admin = self.admin().await?;
        admin
            .unload_topic(TopicRequest { name: topic.to_string() })
            .await
            .map_err(|status| admin_error("UnloadTopic", status))?;
        Ok(())
    }

    /// The id of the broker that owns `topic` (`DescribeTopic`), empty while unassigned.
    pub async fn topic_owner(&self, topic: &str) -> Result<String, HarnessError> {
        let mut admin = self.admin().await?;
        let described = admin
            .describe_topic(DescribeTopicRequest { name: topic.to_string() })
            .await
            .map_err(|status| admin_error("DescribeTopic", status))?;
        Ok(described.into_inner().broker_id)
    }

    /// The brokers of the cluster as `(broker id, client URL, status)` (`ListBrokers`).
    pub async fn list_brokers(&self) -> Result<Vec<(String, String, String)>, HarnessError> {
        let mut admin = BrokerAdminClient::new(self.admin_channel().await?);
        let listed = admin.list_brokers(Empty {}).await.map_err(|status| admin_error("ListBrokers", status))?;
        Ok(listed.into_inner().brokers.into_iter().map(|b| (b.broker_id, b.broker_addr, b.broker_status)).collect())
    }

    /// The broker's Prometheus metrics as text.
    pub async fn metrics(&self) -> Result<String, HarnessError> {
        let response = reqwest::get(self.metrics_url())
            .await
            .map_err(|e| HarnessError::Io { what: "scrape broker metrics".into(), source: std::io::Error::other(e) })?;
        response
            .text()
            .await
            .map_err(|e| HarnessError::Io { what: "read broker metrics".into(), source: std::io::Error::other(e) })
    }

    /// The sum of a metric's samples whose labels contain every `label="value"` in `labels`.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64, HarnessError> {
        Ok(sum_samples(&self.metrics().await?, name, labels))
    }
}

impl Drop for RealBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn admin_error(call: &str, status: tonic::Status) -> HarnessError {
    HarnessError::Io {
        what: format!("admin {call}: {} {}", status.code(), status.message()),
        source: std::io::Error::other(status),
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Sums the samples of `name` in Prometheus text whose label set contains every pair of
/// `labels`.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let matches = labels.iter().all(|(key, want)| label_text.contains(&format!("{key}=\"{want}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Several real Danube brokers forming one cluster on loopback (cluster mode, each broker
/// with its own ports and data dir, every one listed in `meta_store.seed_nodes`), stopped on
/// drop. What a single broker cannot do, a cluster can: move a topic to another broker
/// ([`RealBroker::unload_topic`]).
pub struct RealCluster {
    brokers: Vec<RealBroker>,
    _shared: tempfile::TempDir,
}

impl RealCluster {
    /// Starts `nodes` brokers (at least 2) with `options` and waits until every one is up and
    /// listed as active by the cluster.
    pub async fn start(nodes: usize, options: RealBrokerOptions) -> Result<Self, HarnessError> {
        let binary = real_broker_binary().ok_or_else(|| HarnessError::Missing {
            binary: "danube-broker".into(),
            install: format!("set {BROKER_BIN_ENV} to the real Danube broker binary"),
        })?;
        let tempdir =
            || tempfile::tempdir().map_err(|source| HarnessError::Io { what: "broker tempdir".into(), source });
        let shared = tempdir()?;
        let mut brokers = Vec::with_capacity(nodes);
        for _ in 0..nodes.max(2) {
            brokers.push(RealBroker::unstarted(binary.clone(), Some(options.clone()), tempdir()?));
        }
        let seeds: Vec<String> = brokers.iter().map(|b| format!("127.0.0.1:{}", b.raft_port)).collect();
        for broker in &mut brokers {
            broker.seat = Some(ClusterSeat { seeds: seeds.clone(), shared: shared.path().to_path_buf() });
            broker.start_process()?;
        }
        for broker in &mut brokers {
            broker.wait_ready(Duration::from_secs(60)).await?;
        }
        let cluster = Self { brokers, _shared: shared };
        cluster.wait_members(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    async fn wait_members(&self, timeout: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < timeout {
            match self.brokers[0].list_brokers().await {
                Ok(listed)
                    if listed.iter().filter(|(_, _, status)| status == "active").count() == self.brokers.len() =>
                {
                    return Ok(());
                }
                Ok(listed) => last = format!("{listed:?}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(HarnessError::NotReady {
            what: "danube cluster".into(),
            seconds: timeout.as_secs(),
            detail: format!("brokers listed: {last}"),
        })
    }

    /// The brokers, in start order.
    pub fn brokers(&self) -> &[RealBroker] {
        &self.brokers
    }

    /// The first broker's client URL (any broker redirects a client to a topic's owner).
    pub fn url(&self) -> String {
        self.brokers[0].url()
    }

    /// The broker that owns `topic` now, if the cluster assigned it.
    pub async fn owner(&self, topic: &str) -> Result<Option<&RealBroker>, HarnessError> {
        let id = self.brokers[0].topic_owner(topic).await?;
        if id.is_empty() {
            return Ok(None);
        }
        let listed = self.brokers[0].list_brokers().await?;
        let url = listed.into_iter().find(|(broker, _, _)| *broker == id).map(|(_, url, _)| url);
        Ok(url.and_then(|url| self.brokers.iter().find(|b| b.url() == url)))
    }

    /// Moves `topic` to another broker ([`RealBroker::unload_topic`]) and waits until another
    /// broker owns it; returns that broker's index.
    pub async fn move_topic(&self, topic: &str, timeout: Duration) -> Result<usize, HarnessError> {
        let before = self.owner(topic).await?.map(RealBroker::url);
        self.brokers[0].unload_topic(topic).await?;
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(owner)) = self.owner(topic).await {
                if Some(owner.url()) != before {
                    let url = owner.url();
                    return Ok(self.brokers.iter().position(|b| b.url() == url).unwrap_or(0));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(HarnessError::NotReady {
            what: format!("topic {topic} on another broker"),
            seconds: timeout.as_secs(),
            detail: format!("owner before: {before:?}"),
        })
    }

    /// Every broker's log, one after the other.
    pub fn log(&self) -> String {
        self.brokers.iter().map(RealBroker::log).collect::<Vec<_>>().join("\n")
    }
}

/// A broker for a test, of either kind, with the operations both support.
pub enum TestBroker {
    /// The development broker, in process.
    Dev(EmbeddedBroker),
    /// The real broker, as a process (boxed: it is much larger than the handle of the other).
    Real(Box<RealBroker>),
}

impl TestBroker {
    /// Starts a broker of `kind` with its defaults (the real one in standalone mode).
    pub async fn start(kind: BrokerKind) -> Result<Self, HarnessError> {
        match kind {
            BrokerKind::Dev => Ok(TestBroker::Dev(start_dev(BrokerConfig::default()).await?)),
            BrokerKind::Real => Ok(TestBroker::Real(Box::new(RealBroker::start().await?))),
        }
    }

    /// Starts a broker of `kind` that keeps its data across [`Self::restart`] (the dev broker
    /// persists to a temp dir; the real one always does).
    pub async fn start_persistent(kind: BrokerKind) -> Result<Self, HarnessError> {
        match kind {
            BrokerKind::Dev => {
                let dir = tempfile::tempdir()
                    .map_err(|source| HarnessError::Io { what: "dev broker data dir".into(), source })?
                    .keep();
                let config = BrokerConfig { data_dir: Some(dir), ..BrokerConfig::default() };
                Ok(TestBroker::Dev(start_dev(config).await?))
            }
            BrokerKind::Real => Ok(TestBroker::Real(Box::new(RealBroker::start().await?))),
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> BrokerKind {
        match self {
            TestBroker::Dev(_) => BrokerKind::Dev,
            TestBroker::Real(_) => BrokerKind::Real,
        }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        match self {
            TestBroker::Dev(broker) => broker.url(),
            TestBroker::Real(broker) => broker.url(),
        }
    }

    /// The real broker's admin API URL (the dev broker has no admin API).
    pub fn admin_url(&self) -> Option<String> {
        match self {
            TestBroker::Dev(_) => None,
            TestBroker::Real(broker) => Some(broker.admin_url()),
        }
    }

    /// Stops the broker and starts it again with the same data and address.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        match self {
            TestBroker::Dev(broker) => {
                broker.stop().await;
                broker.restart().await.map_err(|e| HarnessError::Io {
                    what: "restart the dev broker".into(),
                    source: std::io::Error::other(e),
                })
            }
            TestBroker::Real(broker) => broker.restart().await,
        }
    }

    /// Makes the broker unreachable for `duration` in the way each broker survives: the dev
    /// broker is stopped and restarted with its state; the real broker is frozen and resumed
    /// ([`RealBroker::freeze`]), because Danube v0.15.1 cannot restart on its own data after
    /// its first Raft snapshot ([`RealBroker::restart`]).
    pub async fn outage(&mut self, duration: Duration) -> Result<(), HarnessError> {
        match self {
            TestBroker::Dev(broker) => {
                broker.stop().await;
                tokio::time::sleep(duration).await;
                broker.restart().await.map_err(|e| HarnessError::Io {
                    what: "restart the dev broker".into(),
                    source: std::io::Error::other(e),
                })
            }
            TestBroker::Real(broker) => {
                broker.freeze(duration).await;
                Ok(())
            }
        }
    }

    /// Creates a reliable topic with `partitions` partitions (`{topic}-part-{i}`).
    pub async fn create_partitioned_topic(&self, topic: &str, partitions: u32) -> Result<(), HarnessError> {
        match self {
            TestBroker::Dev(broker) => {
                broker.create_partitioned_topic(topic, partitions as usize);
                Ok(())
            }
            TestBroker::Real(broker) => broker.create_partitioned_topic(topic, partitions).await,
        }
    }

    /// Sets a subscription's dispatch window (`max_unacked_messages`).
    pub async fn set_dispatch_window(&self, topic: &str, subscription: &str, window: u32) -> Result<(), HarnessError> {
        match self {
            TestBroker::Dev(broker) => {
                broker.set_max_unacked(topic, subscription, window as usize);
                Ok(())
            }
            TestBroker::Real(broker) => broker.set_dispatch_window(topic, subscription, window).await,
        }
    }

    /// The real broker's log (empty for the dev broker, which logs through `tracing`).
    pub fn log(&self) -> String {
        match self {
            TestBroker::Dev(_) => String::new(),
            TestBroker::Real(broker) => broker.log(),
        }
    }
}

async fn start_dev(config: BrokerConfig) -> Result<EmbeddedBroker, HarnessError> {
    EmbeddedBroker::start(config)
        .await
        .map_err(|e| HarnessError::Io { what: "start the dev broker".into(), source: std::io::Error::other(e) })
}

#[cfg(test)]
mod tests {
    use super::sum_samples;

    #[test]
    fn sums_matching_samples_only() {
        let text = "# HELP x\n\
                    danube_subscription_lag_messages{topic=\"/default/a\",subscription=\"s\"} 3\n\
                    danube_subscription_lag_messages{topic=\"/default/a\",subscription=\"t\"} 4\n\
                    danube_subscription_lag_messages{topic=\"/default/b\",subscription=\"s\"} 5\n\
                    other 9\n";
        assert_eq!(sum_samples(text, "danube_subscription_lag_messages", &[("topic", "/default/a")]), 7.0);
        assert_eq!(sum_samples(text, "danube_subscription_lag_messages", &[("subscription", "s")]), 8.0);
        assert_eq!(sum_samples(text, "other", &[]), 9.0);
        assert_eq!(sum_samples(text, "missing", &[]), 0.0);
    }
}
