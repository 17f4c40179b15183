//! Danube → Kafka: a sink over an idempotent `FutureProducer` (`enable.idempotence=true`,
//! `acks=all`).
//!
//! Each record goes to the Kafka topic named by `export.topics` / `export.topic_template`,
//! with the routing key as Kafka key and the attributes as headers, plus the origin header
//! (this bridge's id) and `danube.topic` (the Danube topic the record came from), which
//! the import side uses for loop protection. `process` returns `Ok`
//! only after librdkafka's delivery report succeeded, so the runtime acks the Danube
//! message only once Kafka has it. A record the broker refuses for its content (too
//! large, invalid) is an `InvalidRecord` and follows the failure policy (dead-letter by
//! default); transient failures are retried by the runtime.

use std::time::Duration;

use danube_connect_core::config::ConfigError;
use danube_connect_core::Counter;
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Context, Factory, Sink, SinkRecord};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tracing::{debug, info};

use crate::config::{BridgeConfig, KafkaTopics};
use crate::kafka::{classify, producer_config, BridgeClientContext};
use crate::mapping;

/// How long a send may wait for room in librdkafka's queue before it counts as a
/// (retryable) failure.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The export side of the bridge, built (no I/O) from its configuration; started, it
/// creates the producer and returns the running [`KafkaExport`].
#[derive(Debug)]
pub struct Export {
    config: BridgeConfig,
    topics: KafkaTopics,
    bridge_id: String,
}

impl Export {
    /// An export; `bridge_id` marks records for loop protection. Fails when
    /// `export.topic_template` is not a template of Kafka topic names.
    pub fn build(config: BridgeConfig, bridge_id: String) -> Result<Self, ConfigError> {
        let topics = config
            .export
            .kafka_topics()
            .map_err(|e| ConfigError::invalid("connector.export.topic_template", e.to_string()))?;
        Ok(Self { config, topics, bridge_id })
    }
}

#[async_trait]
impl Factory for Export {
    type Connector = KafkaExport;

    async fn start(self, ctx: Context) -> ConnectorResult<KafkaExport> {
        let skipped = ctx
            .metrics()
            .counter(
                "kafka_bridge_export_loop_skipped_total",
                "Danube records not exported because this bridge imported them from the same Kafka topic.",
            )
            .map_err(|e| ConnectorError::fatal("register the export metrics", e))?;
        let client_id = format!("{}-export", ctx.name());
        let context = BridgeClientContext::default();
        let producer: FutureProducer<BridgeClientContext> = producer_config(&self.config, &client_id)
            .create_with_context(context.clone())
            .map_err(|e| ConnectorError::fatal("create kafka producer", e))?;
        info!(
            compression = self.config.export.compression.as_str(),
            linger = ?self.config.export.linger,
            "kafka export producer ready (idempotent, acks=all)"
        );
        Ok(KafkaExport {
            config: self.config,
            topics: self.topics,
            bridge_id: self.bridge_id,
            context,
            producer,
            skipped,
        })
    }
}

/// The running export (a [`Sink`]).
pub struct KafkaExport {
    config: BridgeConfig,
    topics: KafkaTopics,
    bridge_id: String,
    context: BridgeClientContext,
    producer: FutureProducer<BridgeClientContext>,
    skipped: Counter,
}

impl std::fmt::Debug for KafkaExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaExport").field("bridge_id", &self.bridge_id).finish_non_exhaustive()
    }
}

impl KafkaExport {
    /// Whether sending this record to Kafka topic `kafka_topic` would echo it: this
    /// bridge's import read it from that very Kafka topic. A record this bridge imported
    /// from another Kafka topic is exported like any other.
    fn is_echo(&self, record: &SinkRecord, kafka_topic: &str) -> bool {
        record.attribute(&self.config.origin_attribute.0) == Some(self.bridge_id.as_str())
            && record.attribute(mapping::ATTR_TOPIC) == Some(kafka_topic)
    }

    async fn deliver(&self, record: &SinkRecord) -> ConnectorResult<()> {
        let topic = self.topics.kafka_topic(&record.topic);
        if self.is_echo(record, &topic) {
            self.skipped.inc();
            return Ok(());
        }
        let producer = &self.producer;
        let key = mapping::kafka_key(record.routing_key.as_deref(), &record.attributes);
        let origin = self.config.origin_attribute.0.as_str();
        let mut headers = OwnedHeaders::new_with_capacity(record.attributes.len() + 2);
        for (name, value) in mapping::kafka_headers(&record.attributes) {
            if name != origin && name != mapping::HEADER_DANUBE_TOPIC {
                headers = headers.insert(Header { key: &name, value: Some(&value) });
            }
        }
        headers = headers.insert(Header { key: origin, value: Some(self.bridge_id.as_bytes()) });
        headers = headers.insert(Header { key: mapping::HEADER_DANUBE_TOPIC, value: Some(record.topic.as_bytes()) });
        let schema_id = record.schema_id.map(|id| id.to_string());
        let schema_version = record.schema_version.map(|v| v.to_string());
        if let Some(id) = &schema_id {
            headers = headers.insert(Header { key: mapping::HEADER_SCHEMA_ID, value: Some(id.as_bytes()) });
        }
        if let Some(version) = &schema_version {
            headers = headers.insert(Header { key: mapping::HEADER_SCHEMA_VERSION, value: Some(version.as_bytes()) });
        }
        let tombstone = record.payload.is_empty() && record.attribute(mapping::ATTR_TOMBSTONE) == Some("true");
        let mut kafka_record = FutureRecord::<[u8], [u8]>::to(&topic).headers(headers);
        if !tombstone {
            kafka_record = kafka_record.payload(&record.payload[..]);
        }
        if let Some(key) = &key {
            kafka_record = kafka_record.key(&key[..]);
        }
        match producer.send(kafka_record, Timeout::After(QUEUE_TIMEOUT)).await {
            Ok(delivery) => {
                self.context.mark_up();
                debug!(topic = %topic, partition = delivery.partition, offset = delivery.offset, "delivered to kafka");
                Ok(())
            }
            Err((error, _message)) => Err(classify(&format!("deliver to kafka topic {topic}"), error)),
        }
    }
}

#[async_trait]
impl Sink for KafkaExport {
    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()> {
        self.deliver(record).await
    }

    /// Sends the whole batch to librdkafka at once (in order, so one key keeps its order
    /// within its partition) and waits for every delivery report.
    async fn process_batch(&self, records: &[SinkRecord]) -> ConnectorResult<()> {
        if let [record] = records {
            return self.deliver(record).await;
        }
        let results = futures::future::join_all(records.iter().map(|r| self.deliver(r))).await;
        let failures: Vec<(usize, ConnectorError)> =
            results.into_iter().enumerate().filter_map(|(i, r)| r.err().map(|e| (i, e))).collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::PartialBatch { failures })
        }
    }

    async fn shutdown(&self) -> ConnectorResult<()> {
        let producer = self.producer.clone();
        // Every record was already acked after its delivery report; flush anything else.
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(Duration::from_secs(10))))
            .await
            .map_err(|e| ConnectorError::retryable("kafka producer flush task", e))?
            .map_err(|e| classify("flush kafka producer", e))
    }

    async fn health_check(&self) -> ConnectorResult<()> {
        if !self.context.brokers_down() {
            return Ok(());
        }
        // librdkafka reports "all brokers down" but no "back up": ask for metadata.
        let producer = self.producer.clone();
        let reachable =
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(2)).is_ok())
                .await
                .unwrap_or(false);
        if reachable {
            self.context.mark_up();
            Ok(())
        } else {
            Err(ConnectorError::retryable_msg("all kafka brokers are down"))
        }
    }
}
