//! `danube-clickhouse`: consumes Danube topics and batches their records into ClickHouse.

use danube_connect_core::{cli, Parts};
use danube_connector_clickhouse::config::SyncMode;
use danube_connector_clickhouse::{ClickHouseSinkConfig, ClickHouseSinkFactory};
use tracing::warn;

/// mimalloc as the process's global allocator: connectors allocate per record, and glibc's
/// malloc took nearly a quarter of the HTTP source's per-request instructions (callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The dispatch window (and `sink.batch.max_records`) from which the sink reached the
/// throughput target in the benchmark (README, Throughput).
const RECOMMENDED_WINDOW: usize = 1000;

fn main() -> std::process::ExitCode {
    cli::run::<ClickHouseSinkConfig, _>("danube-clickhouse", "CLICKHOUSE", |config| {
        let sink_topics: Vec<&str> = config.runtime.sink.topics.iter().map(|t| t.topic.as_str()).collect();
        for mapping in &config.connector.tables {
            if !sink_topics.contains(&mapping.topic.as_str()) {
                warn!(topic = %mapping.topic, "a table is mapped for a topic that is not in sink.topics; nothing will be consumed for it");
            }
        }
        let max_records = config.runtime.sink.batch.max_records;
        if max_records < RECOMMENDED_WINDOW {
            let sync = match config.connector.spool.sync {
                SyncMode::Always => "always",
                SyncMode::Never => "never",
            };
            warn!(
                sink_batch_max_records = max_records,
                spool_sync = sync,
                "throughput is bounded by the dispatch window: records are acked only once spooled, one spool write (and with \
                 spool.sync = always one fdatasync) per batch of at most sink.batch.max_records records, so at the broker's default \
                 window (max_unacked_messages = 10) the sink reached 19-44% of the raw Danube consume rate in the benchmark. For the throughput \
                 target, raise the subscription's max_unacked_messages to at least {RECOMMENDED_WINDOW} on the broker and set \
                 CONNECTOR_SINK__BATCH__MAX_RECORDS to the same value or below: a batch larger than the window is never filled \
                 and waits its whole sink.batch.linger (see the README, Throughput)"
            );
        }
        Ok(Parts::new().with_sink(ClickHouseSinkFactory::build(config.connector.clone())?))
    })
}
