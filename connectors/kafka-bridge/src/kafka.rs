//! librdkafka plumbing: client configuration, the client/consumer contexts (logs, errors,
//! rebalance tracking) and the classification of Kafka errors into runtime actions.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use danube_connect_core::ConnectorError;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::TopicPartitionList;
use tracing::{debug, error, info, warn};

use crate::config::{BridgeConfig, KafkaProperties};
use crate::offsets::TopicPartition;

/// Builds the consumer configuration: shared properties, the bridge's fixed settings, then
/// the consumer-only overrides.
pub fn consumer_config(config: &BridgeConfig, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("client.id", client_id)
        .set("auto.offset.reset", config.import.start_from.as_reset());
    apply(&mut client, &config.kafka.properties);
    apply(&mut client, &config.import.properties);
    // Never overridable (validation refuses them): offsets move only after Danube's ack.
    client
        .set("group.id", &config.import.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    client
}

/// Builds the producer configuration: idempotent, `acks=all`, compression and linger from
/// the export settings, then the shared and producer-only properties.
pub fn producer_config(config: &BridgeConfig, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The Java client's partitioner: keyed records land where Kafka-native producers put them.
        .set("partitioner", "murmur2_random")
        .set("compression.type", config.export.compression.as_str())
        .set("linger.ms", config.export.linger.as_millis().to_string())
        .set("message.timeout.ms", config.export.delivery_timeout.as_millis().to_string());
    apply(&mut client, &config.kafka.properties);
    apply(&mut client, &config.export.properties);
    client
}

fn apply(client: &mut ClientConfig, properties: &KafkaProperties) {
    for (name, value) in properties.iter() {
        client.set(name, value);
    }
}

/// Classifies a Kafka error: authorization and fatal client errors stop the connector,
/// a record the broker refuses for its content is invalid, everything else is retried.
pub fn classify(what: &str, error: KafkaError) -> ConnectorError {
    match error.rdkafka_error_code() {
        Some(code) if is_fatal_code(code) => ConnectorError::fatal(what.to_string(), error),
        Some(code) if is_invalid_record_code(code) => ConnectorError::invalid(what.to_string(), error),
        _ => ConnectorError::retryable(what.to_string(), error),
    }
}

fn is_fatal_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fatal
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::InvalidConfig
            // The producer's `acks` setting, not the record: every record would fail alike.
            | RDKafkaErrorCode::InvalidRequiredAcks
            | RDKafkaErrorCode::UnsupportedSASLMechanism
    )
}

fn is_invalid_record_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

/// Client context shared by producer and consumer: routes librdkafka logs and errors to
/// `tracing` and remembers whether all brokers are down (for `/readyz`).
#[derive(Debug, Default, Clone)]
pub struct BridgeClientContext {
    brokers_down: Arc<AtomicBool>,
}

impl BridgeClientContext {
    /// Whether librdkafka last reported that no broker is reachable.
    pub fn brokers_down(&self) -> bool {
        self.brokers_down.load(Ordering::Relaxed)
    }

    /// Marks the brokers reachable again (a message or delivery report came through).
    pub fn mark_up(&self) {
        self.brokers_down.store(false, Ordering::Relaxed);
    }
}

impl ClientContext for BridgeClientContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                error!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility = fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility = fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.brokers_down.store(true, Ordering::Relaxed);
        }
        warn!(target: "librdkafka", error = %error, reason, "kafka client error");
    }
}

/// The partitions this consumer owns now, and a counter bumped on every change.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Owned partitions.
    pub owned: HashSet<TopicPartition>,
    /// Incremented on every assignment change.
    pub generation: u64,
}

/// Consumer context: tracks the assignment across rebalances so the import never commits
/// for a partition it no longer owns, and logs failed commits.
#[derive(Debug, Default, Clone)]
pub struct BridgeConsumerContext {
    /// Logs, errors, broker reachability.
    pub client: BridgeClientContext,
    /// The current assignment (read by the import before committing).
    pub assignment: Arc<Mutex<Assignment>>,
}

impl BridgeConsumerContext {
    /// Whether `tp` is assigned to this consumer now.
    pub fn owns(&self, tp: &TopicPartition) -> bool {
        self.assignment.lock().map(|a| a.owned.contains(tp)).unwrap_or(false)
    }

    /// The assignment generation.
    pub fn generation(&self) -> u64 {
        self.assignment.lock().map(|a| a.generation).unwrap_or(0)
    }

    fn partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
        list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
    }
}

impl ClientContext for BridgeConsumerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.client.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.client.error(error, reason);
    }
}

impl ConsumerContext for BridgeConsumerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Revoked partitions stop being committed from here on. Their records already
        // handed to the runtime still reach Danube; the partition's next owner re-reads
        // from the last committed offset (which covers only acked records): duplicates,
        // never a gap.
        if let Rebalance::Revoke(list) = rebalance {
            let revoked = Self::partitions(list);
            info!(partitions = revoked.len(), "kafka partitions revoked");
            if let Ok(mut assignment) = self.assignment.lock() {
                for tp in &revoked {
                    assignment.owned.remove(tp);
                }
                assignment.generation += 1;
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = Self::partitions(list);
                info!(partitions = assigned.len(), "kafka partitions assigned");
                if let Ok(mut assignment) = self.assignment.lock() {
                    assignment.owned.extend(assigned);
                    assignment.generation += 1;
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => warn!(error = %error, "kafka rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => debug!(partitions = offsets.count(), "kafka offsets committed"),
            // A lost commit means re-reading acked records after a restart, never a gap.
            Err(error) => warn!(error = %error, partitions = offsets.count(), "kafka offset commit failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_required_acks_is_fatal_not_a_bad_record() {
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRequiredAcks);
        assert!(matches!(classify("deliver", error), ConnectorError::Fatal { .. }));
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(!matches!(classify("deliver", error), ConnectorError::Fatal { .. }));
        let error = KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut);
        assert!(matches!(classify("deliver", error), ConnectorError::Retryable { .. }));
    }
}
