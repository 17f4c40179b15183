//! Detection of a sink subscription that the broker stopped feeding (Danube 0.15 defect).
//!
//! On the real Danube broker (v0.15.1) a reliable subscription's dispatcher reads new
//! messages from the topic's in-memory live broadcast (256 messages) and polls it only while
//! its dispatch window (`max_unacked_messages`, default 10) has room. When the backlog the
//! sink has not acked grows past about window + 256 messages (a burst), the broadcast
//! overflows: the dispatcher skips the messages it lagged by and its ack cursor stays at the
//! first one it skipped. The skipped messages stay in the WAL but this subscription will not
//! deliver them until the topic is loaded again; newer messages still flow. A single v0.15
//! broker cannot reload a topic (UnloadTopic is refused, a restart fails); a cluster can move
//! it to another broker, whose new dispatcher starts at the subscription's stored cursor and
//! delivers the skipped messages when that broker can read the topic's history (shared
//! segment storage). See `docs/running-on-danube.md`, "Known broker defects".
//!
//! What the sink sees: nothing, or only newer records. What the broker sees: the
//! subscription's lag (`danube_subscription_lag_messages`, WAL head minus ack cursor) stays
//! above zero and its cursor does not move. This module compares the broker's figures
//! (its Prometheus exporter, `danube.broker_metrics_url`) with what the sink itself holds:
//! a partition is stalled when, over `sink.stall_timeout`,
//! - the broker reports a lag above zero at the end,
//! - the ack cursor (`danube_topic_messages_in_total` minus the lag) did not advance,
//! - the sink held no record of that partition for the whole time (so the cursor is not
//!   waiting on the sink), nacked nothing and had no failed ack for the last 60 s before,
//! - and the sink either acked records of that partition (so the cursor is stuck on a
//!   message it never received) or received nothing at all from it.
//!
//! The figures come from the broker's exporter (`danube.broker_metrics_url`), or, with
//! `danube.broker_admin_url`, from the exporter of whichever broker of the cluster owns each
//! partition now (`DescribeTopic`, `ListBrokers`), so they follow a topic that moves.
//!
//! A stalled topic marks the runtime not ready (`/readyz`), sets the gauge
//! `connector_sink_stalled{connector,topic,subscription}` to 1 and logs one error naming the
//! cause and the operator action; it clears when the cursor moves again. With
//! `sink.stall_recovery` and an admin URL it also asks the cluster to move the stalled
//! partition to another broker (`UnloadTopic`), once per stall.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use danube_core::admin_proto::broker_admin_client::BrokerAdminClient;
use danube_core::admin_proto::topic_admin_client::TopicAdminClient;
use danube_core::admin_proto::{DescribeTopicRequest, Empty, TopicRequest};
use danube_core::message::StreamMessage;
use tonic::transport::Channel;
use tracing::{error, info, warn};

use crate::health::Health;

/// A nack's redelivery delay is capped at 60 s by the broker; an ack timeout is 30 s by
/// default. For this long after a nack or a failed ack the cursor may rightly stand still.
const SETTLE_GRACE: Duration = Duration::from_secs(60);

/// What a sink topic's consumer holds and has settled, per partition (the broker topic name
/// in `msg_id.topic_name`: the topic itself, or `{topic}-part-{i}`).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    inner: Mutex<ProgressInner>,
}

#[derive(Debug, Default)]
struct ProgressInner {
    partitions: HashMap<String, PartitionProgress>,
    /// Last nack or failed ack: the broker redelivers later, the cursor waits meanwhile.
    last_unsettled_return: Option<Instant>,
}

#[derive(Debug, Default, Clone)]
struct PartitionProgress {
    received: u64,
    acked: u64,
    /// Offsets received and not yet acked or nacked, with when they arrived.
    held: HashMap<u64, Instant>,
}

/// One partition's figures at one moment.
#[derive(Debug, Clone, Copy)]
struct PartitionSnapshot {
    received: u64,
    acked: u64,
    oldest_held: Option<Instant>,
}

impl Progress {
    /// A record arrived from the broker.
    pub(crate) fn received(&self, message: &StreamMessage) {
        if let Ok(mut inner) = self.inner.lock() {
            let partition = inner.partitions.entry(message.msg_id.topic_name.clone()).or_default();
            partition.received += 1;
            partition.held.insert(message.msg_id.topic_offset, Instant::now());
        }
    }

    /// A record was acked (`true`) or handed back: nacked, or its ack failed (`false`).
    pub(crate) fn settled(&self, message: &StreamMessage, acked: bool) {
        if let Ok(mut inner) = self.inner.lock() {
            if !acked {
                inner.last_unsettled_return = Some(Instant::now());
            }
            if let Some(partition) = inner.partitions.get_mut(&message.msg_id.topic_name) {
                partition.held.remove(&message.msg_id.topic_offset);
                if acked {
                    partition.acked += 1;
                }
            }
        }
    }

    /// Records dropped unsettled (the consumer closed): the broker redelivers them.
    pub(crate) fn forget_held(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            for partition in inner.partitions.values_mut() {
                partition.held.clear();
            }
            inner.last_unsettled_return = Some(Instant::now());
        }
    }

    fn snapshot(&self) -> (HashMap<String, PartitionSnapshot>, Option<Instant>) {
        let Ok(inner) = self.inner.lock() else { return (HashMap::new(), None) };
        let partitions = inner
            .partitions
            .iter()
            .map(|(name, p)| {
                let snapshot = PartitionSnapshot {
                    received: p.received,
                    acked: p.acked,
                    oldest_held: p.held.values().min().copied(),
                };
                (name.clone(), snapshot)
            })
            .collect();
        (partitions, inner.last_unsettled_return)
    }
}

/// The broker's figures for one partition of a subscription.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BrokerFigures {
    /// `danube_subscription_lag_messages`: WAL head minus the subscription's ack cursor.
    pub(crate) lag: f64,
    /// `danube_topic_messages_in_total`: messages the topic took in since it was loaded.
    pub(crate) messages_in: f64,
}

/// Picks the subscription's figures for `topic` and its partitions (`{topic}-part-{i}`)
/// out of the broker's Prometheus text. Lines that do not parse are skipped.
pub(crate) fn parse_broker_metrics(text: &str, topic: &str, subscription: &str) -> HashMap<String, BrokerFigures> {
    let partition_prefix = format!("{topic}-part-");
    let ours = |name: &str| name == topic || name.starts_with(&partition_prefix);
    let mut lags: HashMap<String, f64> = HashMap::new();
    let mut ins: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = split_sample(line) else { continue };
        match name {
            "danube_subscription_lag_messages" => {
                if let (Some(t), Some(s)) = (label(labels, "topic"), label(labels, "subscription")) {
                    if s == subscription && ours(t) {
                        lags.insert(t.to_string(), value);
                    }
                }
            }
            "danube_topic_messages_in_total" => {
                if let Some(t) = label(labels, "topic") {
                    if ours(t) {
                        ins.insert(t.to_string(), value);
                    }
                }
            }
            _ => {}
        }
    }
    lags.into_iter()
        .map(|(name, lag)| {
            let messages_in = ins.get(&name).copied().unwrap_or(0.0);
            (name, BrokerFigures { lag, messages_in })
        })
        .collect()
}

/// `name{labels} value` → (name, labels, value); None for comments and other forms.
fn split_sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let open = line.find('{')?;
    let close = line.rfind('}')?;
    if close < open {
        return None;
    }
    let value = line[close + 1..].split_whitespace().next()?.parse().ok()?;
    Some((&line[..open], &line[open + 1..close], value))
}

/// The value of `key` in `a="x",b="y"` (values here carry no escaped quotes).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = labels;
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let name = rest[..eq].trim_start_matches(',').trim();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let end = after.find('"')?;
        if name == key {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
    None
}

/// One look at the broker and at the sink.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    broker: HashMap<String, BrokerFigures>,
    sink: HashMap<String, PartitionSnapshot>,
}

/// Why a partition counts as stalled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stall {
    /// The broker topic (the topic or one of its partitions).
    pub(crate) partition: String,
    /// The broker's lag at the end of the period.
    pub(crate) lag: f64,
    /// Records of this partition the sink acked meanwhile (cursor stuck on a skipped one),
    /// zero when it received nothing at all.
    pub(crate) acked_meanwhile: u64,
    /// The cursor as the broker's figures give it (messages in minus lag).
    pub(crate) cursor: f64,
    /// The broker's `danube_topic_messages_in_total` then (it restarts at 0 when the topic
    /// is loaded again, e.g. on another broker).
    pub(crate) messages_in: f64,
}

impl Stall {
    /// Whether `now` shows this partition's cursor past where it stalled: no lag left, the
    /// cursor advanced, or (counters restarted because the topic was loaded again) a lag
    /// smaller than at the stall.
    fn resumed(&self, now: &BrokerFigures) -> bool {
        if now.lag <= 0.0 {
            return true;
        }
        if now.messages_in >= self.messages_in {
            now.messages_in - now.lag > self.cursor
        } else {
            now.lag < self.lag
        }
    }
}

/// The decision rule (see the module docs), from the oldest sample at least `timeout` old.
fn find_stall(old: &Sample, now: &Sample, last_unsettled_return: Option<Instant>) -> Option<Stall> {
    if let Some(at) = last_unsettled_return {
        if at + SETTLE_GRACE > old.at {
            return None;
        }
    }
    let mut names: Vec<&String> = now.broker.keys().collect();
    names.sort();
    for name in names {
        let figures = now.broker[name];
        let Some(before) = old.broker.get(name) else { continue };
        if figures.lag <= 0.0 || figures.messages_in < before.messages_in {
            continue; // caught up, or the broker restarted (counters reset)
        }
        let cursor_moved = (figures.messages_in - figures.lag) - (before.messages_in - before.lag);
        if cursor_moved > 0.0 {
            continue;
        }
        let zero = PartitionSnapshot { received: 0, acked: 0, oldest_held: None };
        let sink_now = now.sink.get(name).copied().unwrap_or(zero);
        let sink_then = old.sink.get(name).copied().unwrap_or(zero);
        if sink_now.oldest_held.is_some_and(|at| at <= old.at) {
            continue; // the sink itself holds the record the cursor waits for
        }
        let acked_meanwhile = sink_now.acked - sink_then.acked;
        let received_meanwhile = sink_now.received - sink_then.received;
        if acked_meanwhile > 0 || received_meanwhile == 0 {
            let cursor = figures.messages_in - figures.lag;
            return Some(Stall {
                partition: name.clone(),
                lag: figures.lag,
                acked_meanwhile,
                cursor,
                messages_in: figures.messages_in,
            });
        }
    }
    None
}

/// Where the broker's figures come from.
#[derive(Debug, Clone)]
pub(crate) struct FigureSource {
    /// One broker's exporter (`danube.broker_metrics_url`), used without an admin URL.
    pub(crate) metrics_url: Option<String>,
    /// The cluster's admin API (`danube.broker_admin_url`): finds each partition's owner and
    /// moves a stalled one.
    pub(crate) admin_url: Option<String>,
}

/// Why the figures could not be read.
#[derive(Debug, thiserror::Error)]
enum SourceError {
    #[error("cannot read the broker's metrics at {url}")]
    Scrape {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("admin API {call} at {url}")]
    Admin {
        call: &'static str,
        url: String,
        #[source]
        source: tonic::Status,
    },
    #[error("no HTTP client for the broker's metrics")]
    HttpClient(#[source] reqwest::Error),
    #[error("bad admin URL {url}")]
    AdminUrl {
        url: String,
        #[source]
        source: tonic::codegen::http::uri::InvalidUri,
    },
}

/// One reading: figures per partition and, with the admin API, each partition's owner.
struct Figures {
    figures: HashMap<String, BrokerFigures>,
    owners: HashMap<String, String>,
}

/// Reads figures from a [`FigureSource`].
struct Reader {
    http: reqwest::Client,
    metrics_url: Option<String>,
    admin: Option<(String, Channel)>,
}

/// `host:port`, `http://host:port` or `http://host:port/metrics` → the `/metrics` URL.
fn metrics_endpoint(address: &str) -> String {
    let base = address.trim_end_matches('/');
    let base = if base.contains("://") { base.to_string() } else { format!("http://{base}") };
    if base.ends_with("/metrics") {
        base
    } else {
        format!("{base}/metrics")
    }
}

impl Reader {
    fn new(source: &FigureSource) -> Result<Self, SourceError> {
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(SourceError::HttpClient)?;
        let admin = match &source.admin_url {
            Some(url) => {
                let channel = Channel::from_shared(url.clone())
                    .map_err(|source| SourceError::AdminUrl { url: url.clone(), source })?
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(5))
                    .connect_lazy();
                Some((url.clone(), channel))
            }
            None => None,
        };
        Ok(Self { http, metrics_url: source.metrics_url.as_deref().map(metrics_endpoint), admin })
    }

    async fn scrape(&self, url: &str) -> Result<String, SourceError> {
        let scrape = |source| SourceError::Scrape { url: url.to_string(), source };
        let response = self.http.get(url).send().await.and_then(|r| r.error_for_status()).map_err(scrape)?;
        response.text().await.map_err(scrape)
    }

    /// The subscription's figures per partition of `topic`, and (with the admin API) the
    /// broker that owns each partition.
    async fn figures(&self, topic: &str, subscription: &str) -> Result<Figures, SourceError> {
        let Some((admin_url, channel)) = &self.admin else {
            let url = self.metrics_url.as_deref().unwrap_or_default();
            let figures = parse_broker_metrics(&self.scrape(url).await?, topic, subscription);
            return Ok(Figures { figures, owners: HashMap::new() });
        };
        let admin = |call: &'static str| move |source| SourceError::Admin { call, url: admin_url.clone(), source };
        let brokers = BrokerAdminClient::new(channel.clone())
            .list_brokers(Empty {})
            .await
            .map_err(admin("ListBrokers"))?
            .into_inner()
            .brokers;
        // Every broker's view: a broker that owned a partition before keeps exporting its
        // last figures, so each partition's figures are taken from its owner now.
        let mut per_broker: HashMap<String, HashMap<String, BrokerFigures>> = HashMap::new();
        for broker in &brokers {
            let text = self.scrape(&metrics_endpoint(&broker.metrics_addr)).await?;
            per_broker.insert(broker.broker_id.clone(), parse_broker_metrics(&text, topic, subscription));
        }
        let mut partitions: Vec<String> = per_broker.values().flat_map(|m| m.keys().cloned()).collect();
        partitions.sort();
        partitions.dedup();
        let mut figures = HashMap::new();
        let mut owners = HashMap::new();
        for partition in partitions {
            let owner = TopicAdminClient::new(channel.clone())
                .describe_topic(DescribeTopicRequest { name: partition.clone() })
                .await
                .map_err(admin("DescribeTopic"))?
                .into_inner()
                .broker_id;
            // A broker that does not name the owner (standalone mode may not) leaves the one
            // broker that reports the partition, if only one does.
            let found = per_broker.get(&owner).and_then(|m| m.get(&partition)).copied().or_else(|| {
                let mut reporting = per_broker.values().filter_map(|m| m.get(&partition));
                match (reporting.next(), reporting.next()) {
                    (Some(only), None) => Some(*only),
                    _ => None,
                }
            });
            if let Some(found) = found {
                figures.insert(partition.clone(), found);
            }
            owners.insert(partition, owner);
        }
        Ok(Figures { figures, owners })
    }

    /// Asks the cluster to move `partition` to another broker.
    async fn move_partition(&self, partition: &str) -> Result<bool, SourceError> {
        let Some((admin_url, channel)) = &self.admin else { return Ok(false) };
        TopicAdminClient::new(channel.clone())
            .unload_topic(TopicRequest { name: partition.to_string() })
            .await
            .map_err(|source| SourceError::Admin { call: "UnloadTopic", url: admin_url.clone(), source })?;
        Ok(true)
    }
}

/// Watches one sink topic until `shutdown`; see the module docs.
pub(crate) struct StallWatch {
    /// Where the broker's figures come from.
    pub(crate) source: FigureSource,
    /// The sink topic (as configured).
    pub(crate) topic: String,
    /// The subscription name.
    pub(crate) subscription: String,
    /// How long the cursor may stand still before the topic counts as stalled.
    pub(crate) timeout: Duration,
    /// Move a stalled partition to another broker (`sink.stall_recovery`, needs an admin URL).
    pub(crate) recovery: bool,
    /// Readiness to mark.
    pub(crate) health: Health,
    /// `connector_sink_stalled{connector,topic,subscription}`.
    pub(crate) gauge: prometheus::IntGauge,
    /// Told when a partition moved to another broker: the topic's consumer must subscribe
    /// again, because Danube 0.15 does not end the old broker's stream of a stalled
    /// subscription (its dispatcher is blocked), so `danube-client` never follows the move.
    pub(crate) moved: std::sync::Arc<tokio::sync::Notify>,
}

impl StallWatch {
    /// Samples every `timeout / 6` (at least 500 ms, at most 5 s) until cancelled.
    pub(crate) async fn run(self, progress: std::sync::Arc<Progress>, shutdown: tokio_util::sync::CancellationToken) {
        let interval = (self.timeout / 6).clamp(Duration::from_millis(500), Duration::from_secs(5));
        let component = format!("stall {}", self.topic);
        let reader = match Reader::new(&self.source) {
            Ok(reader) => reader,
            Err(e) => {
                warn!(error = %crate::error::error_chain(&e), "stall detection off");
                return;
            }
        };
        let mut samples: VecDeque<Sample> = VecDeque::new();
        // While stalled: the stall; cleared only when its cursor moves (or the lag is gone),
        // not when a sample merely lacks evidence.
        let mut stalled: Option<Stall> = None;
        let mut scrape_failing = false;
        let mut owners: HashMap<String, String> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
            let broker = match reader.figures(&self.topic, &self.subscription).await {
                Ok(Figures { figures, owners: now_owners }) => {
                    let moved: Vec<&String> = now_owners
                        .iter()
                        .filter(|(partition, owner)| owners.get(*partition).is_some_and(|before| before != *owner))
                        .map(|(partition, _)| partition)
                        .collect();
                    if !moved.is_empty() {
                        info!(topic = %self.topic, partitions = ?moved, "partition moved to another broker; subscribing again there");
                        self.moved.notify_one();
                        // The new owner's counters start again: compare only figures from now on.
                        samples.clear();
                    }
                    owners = now_owners;
                    figures
                }
                Err(e) => {
                    if !scrape_failing {
                        warn!(error = %crate::error::error_chain(&e), "stall detection paused");
                        scrape_failing = true;
                    }
                    continue;
                }
            };
            if scrape_failing {
                info!(topic = %self.topic, "broker figures readable again; stall detection resumed");
                scrape_failing = false;
            }
            let (sink, last_return) = progress.snapshot();
            let now = Sample { at: Instant::now(), broker, sink };
            // Keep the newest sample at least `timeout` old, and everything after it.
            while samples.len() >= 2 && samples[1].at + self.timeout <= now.at {
                samples.pop_front();
            }
            let verdict = match samples.front() {
                Some(old) if old.at + self.timeout <= now.at => Some(find_stall(old, &now, last_return)),
                _ => None,
            };
            let resumed = stalled
                .as_ref()
                .is_some_and(|stall| now.broker.get(&stall.partition).is_some_and(|f| stall.resumed(f)));
            samples.push_back(now);
            match verdict {
                Some(Some(stall)) if stalled.is_none() => {
                    self.report(&stall, &component);
                    if self.recovery {
                        self.recover(&reader, &stall.partition).await;
                    }
                    stalled = Some(stall);
                }
                _ if resumed => {
                    stalled = None;
                    self.gauge.set(0);
                    info!(topic = %self.topic, subscription = %self.subscription, "sink delivery resumed: the subscription's cursor moves again");
                    self.health.set_component(&component, None);
                }
                _ => {}
            }
        }
    }

    fn report(&self, stall: &Stall, component: &str) {
        self.gauge.set(1);
        let cause = if stall.acked_meanwhile > 0 {
            "the broker skipped messages this subscription lagged by and its ack cursor is stuck on them"
        } else {
            "the broker stopped dispatching to this subscription"
        };
        let action = if self.recovery && self.source.admin_url.is_some() {
            "This sink asks the cluster to move the topic to another broker (sink.stall_recovery), whose new dispatcher re-reads them from the stored cursor when it can read the topic's history (shared_fs or object_store storage)"
        } else {
            "Operator action: move the topic to another broker of the cluster (danube-admin topics unload TOPIC; needs 2 brokers and shared_fs or object_store storage), or set danube.broker_admin_url and the sink does it; on a single broker re-send the missing records from their origin"
        };
        error!(
            topic = %self.topic,
            subscription = %self.subscription,
            partition = %stall.partition,
            broker_lag = stall.lag,
            stalled_for = ?self.timeout,
            "sink stalled: the broker reports {} messages not acked on this subscription while this sink holds none and its cursor has not moved for {:?}; {cause}. This is a Danube 0.15 reliable-dispatch defect after a burst larger than the dispatch window + 256 messages. The messages are in the broker's WAL but this subscription's dispatcher will not deliver them; only a reload of the topic re-reads them. {action}. To prevent it, raise `dispatch.max_unacked_messages` in the broker config (up to 10000) and keep `sink.prefetch` at least as large. See docs/running-on-danube.md, Known broker defects",
            stall.lag,
            self.timeout,
        );
        self.health.set_component(
            component,
            Some(format!(
                "subscription {} on {} stalled by the broker ({} messages behind); see docs/running-on-danube.md",
                self.subscription, stall.partition, stall.lag
            )),
        );
    }

    async fn recover(&self, reader: &Reader, partition: &str) {
        match reader.move_partition(partition).await {
            Ok(true) => warn!(
                topic = %self.topic,
                partition = %partition,
                "stall recovery: asked the cluster to move the partition to another broker (UnloadTopic); its new dispatcher starts at the subscription's stored cursor"
            ),
            Ok(false) => {}
            Err(e) => error!(
                topic = %self.topic,
                partition = %partition,
                error = %crate::error::error_chain(&e),
                "stall recovery failed: the cluster did not move the partition (a single broker refuses UnloadTopic); re-send the missing records from their origin"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RuntimeConfig, Validate};

    #[test]
    fn bad_settings_name_their_field() {
        let mut config = RuntimeConfig::default();
        config.danube.broker_metrics_url = Some("127.0.0.1:9040".into());
        let error = config.validate().expect_err("no scheme").to_string();
        assert!(error.contains("danube.broker_metrics_url"), "{error}");
        let mut config = RuntimeConfig::default();
        config.sink.prefetch = 0;
        assert!(config.validate().expect_err("zero").to_string().contains("sink.prefetch"));
        let mut config = RuntimeConfig::default();
        config.sink.stall_timeout = Duration::from_millis(10);
        assert!(config.validate().expect_err("too short").to_string().contains("sink.stall_timeout"));
        for bad in ["127.0.0.1:50051", "https://127.0.0.1:50051", "http://bad host"] {
            let mut config = RuntimeConfig::default();
            config.danube.broker_admin_url = Some(bad.into());
            assert!(config.validate().expect_err(bad).to_string().contains("danube.broker_admin_url"), "{bad}");
        }
    }

    #[test]
    fn metrics_addresses_become_urls() {
        assert_eq!(metrics_endpoint("127.0.0.1:9040"), "http://127.0.0.1:9040/metrics");
        assert_eq!(metrics_endpoint("http://127.0.0.1:9040/"), "http://127.0.0.1:9040/metrics");
        assert_eq!(metrics_endpoint("http://h:9040/metrics"), "http://h:9040/metrics");
    }

    #[test]
    fn a_stall_resumes_when_its_cursor_moves_or_the_topic_reloaded_with_less_lag() {
        let stall =
            Stall { partition: "/default/t".into(), lag: 400.0, acked_meanwhile: 0, cursor: 100.0, messages_in: 500.0 };
        let figures = |lag, messages_in| BrokerFigures { lag, messages_in };
        assert!(!stall.resumed(&figures(400.0, 500.0)), "nothing changed");
        assert!(!stall.resumed(&figures(450.0, 550.0)), "newer messages, same cursor");
        assert!(stall.resumed(&figures(300.0, 500.0)), "cursor advanced");
        assert!(stall.resumed(&figures(0.0, 500.0)), "caught up");
        // Loaded again on another broker: its counter starts at 0, the lag is absolute.
        assert!(!stall.resumed(&figures(400.0, 0.0)), "moved, still stuck");
        assert!(stall.resumed(&figures(250.0, 0.0)), "moved and delivering");
    }

    const TEXT: &str = r#"# HELP danube_subscription_lag_messages lag
# TYPE danube_subscription_lag_messages gauge
danube_subscription_lag_messages{broker="1",topic="/default/t",subscription="s"} 392
danube_subscription_lag_messages{broker="1",topic="/default/t",subscription="other"} 7
danube_subscription_lag_messages{broker="1",topic="/default/t-part-1",subscription="s"} 0
danube_subscription_lag_messages{broker="1",topic="/default/tt",subscription="s"} 5
danube_topic_messages_in_total{broker="1",topic="/default/t"} 549
danube_topic_messages_in_total{broker="1",topic="/default/t-part-1"} 12
"#;

    #[test]
    fn parses_the_subscription_and_its_partitions_only() {
        let figures = parse_broker_metrics(TEXT, "/default/t", "s");
        assert_eq!(figures.len(), 2);
        assert_eq!(figures["/default/t"], BrokerFigures { lag: 392.0, messages_in: 549.0 });
        assert_eq!(figures["/default/t-part-1"], BrokerFigures { lag: 0.0, messages_in: 12.0 });
    }

    #[test]
    fn hostile_text_parses_to_nothing() {
        for text in
            ["", "}{", "danube_subscription_lag_messages{topic=\"/default/t\" 5", "a{b=}c 1", "x{=\"\"} NaN-ish"]
        {
            assert!(parse_broker_metrics(text, "/default/t", "s").is_empty(), "{text}");
        }
    }

    fn sample(at: Instant, lag: f64, messages_in: f64, received: u64, acked: u64, held: Option<Instant>) -> Sample {
        let mut broker = HashMap::new();
        broker.insert("/default/t".to_string(), BrokerFigures { lag, messages_in });
        let mut sink = HashMap::new();
        sink.insert("/default/t".to_string(), PartitionSnapshot { received, acked, oldest_held: held });
        Sample { at, broker, sink }
    }

    #[test]
    fn decision_rule() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(30);
        // Nothing received, lag stands still: stalled.
        assert!(find_stall(&sample(t0, 400.0, 500.0, 100, 100, None), &sample(t1, 400.0, 500.0, 100, 100, None), None)
            .is_some());
        // Newer records flow and are acked, the cursor stands still: stalled (skipped messages).
        let stall =
            find_stall(&sample(t0, 400.0, 500.0, 100, 100, None), &sample(t1, 450.0, 550.0, 150, 150, None), None);
        assert_eq!(stall.map(|s| s.acked_meanwhile), Some(50));
        // The cursor moved: healthy catch-up.
        assert!(find_stall(&sample(t0, 400.0, 500.0, 100, 100, None), &sample(t1, 300.0, 500.0, 200, 200, None), None)
            .is_none());
        // Caught up.
        assert!(find_stall(&sample(t0, 0.0, 500.0, 100, 100, None), &sample(t1, 0.0, 500.0, 100, 100, None), None)
            .is_none());
        // The sink holds a record since before the period: its own outside system is slow.
        assert!(find_stall(
            &sample(t0, 400.0, 500.0, 100, 90, Some(t0)),
            &sample(t1, 400.0, 500.0, 100, 90, Some(t0)),
            None
        )
        .is_none());
        // A recent nack: the broker redelivers later.
        assert!(find_stall(
            &sample(t0, 400.0, 500.0, 100, 100, None),
            &sample(t1, 400.0, 500.0, 100, 100, None),
            Some(t0)
        )
        .is_none());
        // Received but acked nothing, holding only young records: still working.
        assert!(find_stall(
            &sample(t0, 400.0, 500.0, 100, 100, None),
            &sample(t1, 400.0, 500.0, 110, 100, Some(t1)),
            None
        )
        .is_none());
        // Broker restarted (counters reset).
        assert!(find_stall(&sample(t0, 400.0, 500.0, 100, 100, None), &sample(t1, 400.0, 20.0, 100, 100, None), None)
            .is_none());
    }
}
