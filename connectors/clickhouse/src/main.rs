//! `danube-clickhouse`: consumes Danube topics and batches their records into ClickHouse.

use danube_connector_clickhouse::{ClickHouseSink, ClickHouseSinkConfig, SinkSettings};
use tracing::warn;

fn main() -> std::process::ExitCode {
    danube_connect_core::cli::run::<ClickHouseSinkConfig, _, _>("danube-clickhouse", "CLICKHOUSE", |config, runtime| async move {
        let sink_topics: Vec<&str> = config.runtime.sink.topics.iter().map(|t| t.topic.as_str()).collect();
        for mapping in &config.connector.tables {
            if !sink_topics.contains(&mapping.topic.as_str()) {
                warn!(topic = %mapping.topic, "a table is mapped for a topic that is not in sink.topics; nothing will be consumed for it");
            }
        }
        if config.runtime.sink.batch.max_records == 1 {
            warn!("sink.batch.max_records is 1: set it to the broker's dispatch window (max_unacked_messages, default 10) so one spool sync covers several records");
        }
        let settings = SinkSettings {
            connector_name: config.runtime.name.clone(),
            dead_letter_topic: config.runtime.dead_letter_topic(),
            retry: config.runtime.retry.clone(),
        };
        runtime.run_sink(ClickHouseSink::new(config.connector, settings)).await
    })
}
