//! Kafka → Danube: a pull source over an rdkafka consumer group.
//!
//! `poll` returns up to `import.max_poll_records` records, each carrying its
//! `SourceOffset { partition: "topic/partition", position: offset }`. The runtime publishes
//! them and calls `commit` in poll order once Danube acked every record up to those
//! offsets; only then is `offset + 1` committed to Kafka. Auto-commit and the automatic
//! offset store are off, so a crash re-reads from the last acked position.
//!
//! Rebalances: when partitions are revoked, their records already handed to the runtime
//! still go to Danube, but the bridge stops committing for them (the consumer context
//! tracks ownership). The new owner starts from the last committed offset, which covers
//! only records Danube acked: some records may be imported twice, none is skipped.

use std::sync::Arc;

use bytes::Bytes;
use danube_connect_core::config::ConfigError;
use danube_connect_core::error::error_chain;
use danube_connect_core::Counter;
use danube_connect_core::{
    async_trait, ConnectorError, ConnectorResult, Context, Factory, PullSource, SourceOffset, SourceRecord,
};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::BridgeConfig;
use crate::kafka::{classify, consumer_config, BridgeConsumerContext};
use crate::mapping::{self, TopicRouter};
use crate::offsets::{OffsetTracker, TopicPartition};

type BridgeConsumer = StreamConsumer<BridgeConsumerContext>;

/// How long a readiness probe waits for Kafka metadata.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The import side of the bridge, built (no I/O) from its configuration; started, it
/// subscribes a consumer and returns the running [`KafkaImport`].
#[derive(Debug)]
pub struct Import {
    config: BridgeConfig,
    bridge_id: String,
    router: TopicRouter,
}

impl Import {
    /// An import for `config.import.mappings`; `bridge_id` marks records for loop protection.
    pub fn build(config: BridgeConfig, bridge_id: String) -> Result<Self, ConfigError> {
        let router = TopicRouter::new(&config.import.mappings).map_err(|e| {
            ConfigError::invalid("connector.import.mappings", format!("invalid pattern: {}", error_chain(&e)))
        })?;
        Ok(Self { config, bridge_id, router })
    }
}

#[async_trait]
impl Factory for Import {
    type Connector = KafkaImport;

    async fn start(self, ctx: Context) -> ConnectorResult<KafkaImport> {
        let skipped = ctx
            .metrics()
            .counter(
                "kafka_bridge_import_loop_skipped_total",
                "Kafka records not imported because this bridge exported them from the same Danube topic (loop protection).",
            )
            .map_err(|e| ConnectorError::fatal("register the import metrics", e))?;
        let client_id = format!("{}-import", ctx.name());
        let context = BridgeConsumerContext::default();
        let consumer: BridgeConsumer = consumer_config(&self.config, &client_id)
            .create_with_context(context.clone())
            .map_err(|e| ConnectorError::fatal("create kafka consumer", e))?;
        let subscription = self.router.subscription();
        let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| ConnectorError::fatal("subscribe to kafka topics", e))?;
        info!(
            group = %self.config.import.group_id,
            topics = ?subscription,
            start_from = self.config.import.start_from.as_reset(),
            "kafka import subscribed"
        );
        Ok(KafkaImport {
            config: self.config,
            bridge_id: self.bridge_id,
            router: self.router,
            context,
            consumer: Some(Arc::new(consumer)),
            tracker: OffsetTracker::default(),
            seen_generation: 0,
            last_committed: std::collections::HashMap::new(),
            skipped,
        })
    }
}

/// The running import (a [`PullSource`]).
pub struct KafkaImport {
    config: BridgeConfig,
    bridge_id: String,
    router: TopicRouter,
    context: BridgeConsumerContext,
    /// Taken at shutdown (the final commit and the group leave).
    consumer: Option<Arc<BridgeConsumer>>,
    tracker: OffsetTracker,
    seen_generation: u64,
    /// Offsets sent to Kafka, re-committed synchronously at shutdown.
    last_committed: std::collections::HashMap<TopicPartition, i64>,
    skipped: Counter,
}

impl std::fmt::Debug for KafkaImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaImport").field("bridge_id", &self.bridge_id).finish_non_exhaustive()
    }
}

impl KafkaImport {
    fn consumer(&self) -> ConnectorResult<Arc<BridgeConsumer>> {
        self.consumer.clone().ok_or_else(|| ConnectorError::fatal_msg("kafka import used after shutdown"))
    }

    /// Converts one Kafka message; `None` when it is skipped (loop protection: this bridge
    /// exported it from the Danube topic it maps to). A record of
    /// a topic no mapping matches (librdkafka's regex engine accepted a topic the mapping's
    /// regex does not) is a fatal error: skipping it would drop it silently.
    fn convert(
        &mut self,
        message: &BorrowedMessage<'_>,
        commit_now: &mut TopicPartitionList,
    ) -> ConnectorResult<Option<SourceRecord>> {
        let topic = message.topic();
        let partition = message.partition();
        let offset = message.offset();
        let tp: TopicPartition = (topic.to_string(), partition);
        let origin = &self.config.origin_attribute.0;
        let Some(mapped) = self.router.danube_topic(topic) else {
            return Err(ConnectorError::fatal_msg(format!(
                "kafka topic `{topic}` matched the subscription but no connector.import.mappings entry; \
                 librdkafka and the bridge read the pattern differently: simplify the regex"
            )));
        };
        // An echo: this bridge's export wrote the record from the very Danube topic it
        // would be imported into. Records exported from another Danube topic are imported.
        let header = |name: &str| {
            message.headers().and_then(|headers| headers.iter().find(|h| h.key == name).and_then(|h| h.value))
        };
        let echo = header(origin.as_str()) == Some(self.bridge_id.as_bytes())
            && header(mapping::HEADER_DANUBE_TOPIC) == Some(mapped.as_bytes());
        if echo {
            self.skipped.inc();
            if let Some(next) = self.tracker.skipped(&tp, offset) {
                if self.context.owns(&tp) {
                    let _ = commit_now.add_partition_offset(topic, partition, Offset::Offset(next));
                }
            }
            return Ok(None);
        }
        let payload = message.payload().map(Bytes::copy_from_slice);
        let tombstone = payload.is_none();
        let mut record = SourceRecord::new(mapped, payload.unwrap_or_default())
            .with_offset(SourceOffset::new(format!("{topic}/{partition}"), offset.max(0) as u64));
        if let Some(key) = message.key() {
            let (key, hex) = mapping::routing_key(key);
            record = record.with_key(key);
            if hex {
                record = record.with_attribute(mapping::ATTR_KEY_ENCODING, "hex");
            }
        }
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                mapping::add_header(&mut record.attributes, header.key, header.value);
            }
        }
        if tombstone {
            record = record.with_attribute(mapping::ATTR_TOMBSTONE, "true");
        }
        if let Some(ms) = message.timestamp().to_millis() {
            record = record.with_attribute(mapping::ATTR_TIMESTAMP, ms.to_string());
        }
        record = record
            .with_attribute(mapping::ATTR_TOPIC, topic)
            .with_attribute(mapping::ATTR_PARTITION, partition.to_string())
            .with_attribute(mapping::ATTR_OFFSET, offset.to_string())
            .with_attribute(origin.clone(), self.bridge_id.clone());
        self.tracker.returned(&tp, offset);
        Ok(Some(record))
    }

    fn sync_generation(&mut self) {
        let generation = self.context.generation();
        if generation != self.seen_generation {
            self.tracker.reset_committed();
            self.last_committed.retain(|tp, _| self.context.owns(tp));
            self.seen_generation = generation;
        }
    }

    fn send_commit(&mut self, consumer: &BridgeConsumer, list: &TopicPartitionList) -> ConnectorResult<()> {
        if list.count() == 0 {
            return Ok(());
        }
        for element in list.elements() {
            if let Offset::Offset(next) = element.offset() {
                self.last_committed.insert((element.topic().to_string(), element.partition()), next);
            }
        }
        match consumer.commit(list, CommitMode::Async) {
            Ok(()) => Ok(()),
            Err(error) => match classify("commit kafka offsets", error) {
                fatal @ ConnectorError::Fatal { .. } => Err(fatal),
                // A lost commit only means re-reading acked records later, never a gap;
                // the next ack commits a later offset anyway.
                other => {
                    warn!(error = %other.chain(), "kafka offset commit refused; continuing");
                    Ok(())
                }
            },
        }
    }
}

#[async_trait]
impl PullSource for KafkaImport {
    async fn poll(&mut self) -> ConnectorResult<Vec<SourceRecord>> {
        let consumer = self.consumer()?;
        let max = self.config.import.max_poll_records;
        let mut records = Vec::new();
        let mut commit_now = TopicPartitionList::new();
        let first = tokio::time::timeout(self.config.import.poll_timeout, consumer.recv()).await;
        self.sync_generation();
        match first {
            Err(_elapsed) => {}
            Ok(Err(error)) => return Err(classify("read from kafka", error)),
            Ok(Ok(message)) => {
                self.context.client.mark_up();
                records.extend(self.convert(&message, &mut commit_now)?);
                // Take what is already buffered without waiting.
                let mut taken = 1;
                while taken < max {
                    match consumer.recv().now_or_never() {
                        Some(Ok(message)) => {
                            taken += 1;
                            records.extend(self.convert(&message, &mut commit_now)?);
                        }
                        Some(Err(error)) => {
                            warn!(error = %error, "kafka read error; returning the records read so far");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
        self.send_commit(&consumer, &commit_now)?;
        Ok(records)
    }

    async fn commit(&mut self, offsets: Vec<SourceOffset>) -> ConnectorResult<()> {
        let consumer = self.consumer()?;
        self.sync_generation();
        let mut list = TopicPartitionList::new();
        for offset in offsets {
            let Some((topic, partition)) = offset.partition.rsplit_once('/') else { continue };
            let Ok(partition) = partition.parse::<i32>() else { continue };
            let tp: TopicPartition = (topic.to_string(), partition);
            let acked = i64::try_from(offset.position).unwrap_or(i64::MAX - 1);
            if let Some(next) = self.tracker.acked(&tp, acked) {
                if self.context.owns(&tp) {
                    let _ = list.add_partition_offset(topic, partition, Offset::Offset(next));
                }
            }
        }
        self.send_commit(&consumer, &list)
    }

    async fn shutdown(&mut self) -> ConnectorResult<()> {
        let Some(consumer) = self.consumer.take() else { return Ok(()) };
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &self.last_committed {
            if self.context.owns(&(topic.clone(), *partition)) {
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*next));
            }
        }
        // A synchronous commit and the group leave block: keep them off the async workers.
        let result = tokio::task::spawn_blocking(move || {
            let committed = if list.count() > 0 { consumer.commit(&list, CommitMode::Sync) } else { Ok(()) };
            drop(consumer);
            committed
        })
        .await
        .map_err(|e| ConnectorError::retryable("kafka consumer close task", e))?;
        result.map_err(|e| classify("final kafka offset commit", e))
    }

    async fn health_check(&self) -> ConnectorResult<()> {
        if !self.context.client.brokers_down() {
            return Ok(());
        }
        // librdkafka reports "all brokers down" but no "back up": ask for metadata.
        let consumer = self.consumer()?;
        let reachable = tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, HEALTH_TIMEOUT).is_ok())
            .await
            .unwrap_or(false);
        if reachable {
            self.context.client.mark_up();
            Ok(())
        } else {
            Err(ConnectorError::retryable_msg("all kafka brokers are down"))
        }
    }
}
