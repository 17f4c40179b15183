//! Quickstart: a real pipeline on the embedded development broker, in one process.
//!
//! counter source → `/default/quickstart` → line sink (a temp file), then a summary.
//! Run with `cargo run -p danube-connect-examples --bin quickstart`.

use std::time::{Duration, Instant};

use danube_connect_core::config::{RuntimeConfig, SinkTopicConfig};
use danube_connect_core::{Parts, Runtime};
use danube_connect_examples::counter_source::CounterConfig;
use danube_connect_examples::line_sink::LineSinkConfig;
use danube_dev_broker::EmbeddedBroker;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "/default/quickstart";
const RECORDS: u64 = 5_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    danube_connect_core::cli::init_logging(&danube_connect_core::config::LogConfig {
        level: "warn".into(),
        ..Default::default()
    });
    let broker = EmbeddedBroker::start_default().await?;
    println!("embedded development broker on {}", broker.url());

    let base = |name: &str| {
        let mut config = RuntimeConfig { name: name.to_string(), ..RuntimeConfig::default() };
        config.danube.service_url = broker.url();
        config.ops.listen = "127.0.0.1:0".parse().expect("static address");
        config
    };

    // The sink subscribes first: a new subscription starts at the end of the topic.
    broker.publish(TOPIC, b"{\"hello\":true}".to_vec(), Default::default(), None);
    let out = std::env::temp_dir().join(format!("danube-quickstart-{}.txt", std::process::id()));
    let mut sink_config = base("quickstart-sink");
    sink_config.sink.topics = vec![SinkTopicConfig::new(TOPIC)];
    sink_config.sink.batch.max_records = 10;
    sink_config.sink.batch.linger = Duration::from_millis(20);
    let sink_stop = CancellationToken::new();
    let sink_runtime = Runtime::start(sink_config, sink_stop.clone()).await?;
    let sink = LineSinkConfig { path: Some(out.clone()) };
    let sink_run = tokio::spawn(sink_runtime.run(Parts::new().with_sink(sink)));
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let started = Instant::now();
    let source_stop = CancellationToken::new();
    let source_runtime = Runtime::start(base("quickstart-source"), source_stop.clone()).await?;
    let source = CounterConfig { topic: TOPIC.into(), batch: 100, interval: 1, limit: RECORDS, state_file: None };
    let source_run = tokio::spawn(source_runtime.run(Parts::new().with_pull(source)));

    let published = broker.wait_for_messages(TOPIC, RECORDS as usize + 1, Duration::from_secs(60)).await.len() - 1;
    let publish_secs = started.elapsed().as_secs_f64();
    let mut written = 0;
    for _ in 0..600 {
        written = std::fs::read_to_string(&out).map(|t| t.lines().count()).unwrap_or(0);
        if written >= published {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total_secs = started.elapsed().as_secs_f64();
    source_stop.cancel();
    sink_stop.cancel();
    let source_report = source_run.await??;
    let sink_report = sink_run.await??;

    println!("counter source -> {TOPIC}: {published} records acked by the broker in {publish_secs:.2}s");
    println!("{TOPIC} -> line sink: {written} records written to {} in {total_secs:.2}s", out.display());
    println!("acks seen by the broker for the sink's subscription: {}", broker.ack_count(TOPIC, "quickstart-sink"));
    println!("clean shutdown: source drained={} sink drained={}", source_report.drained, sink_report.drained);
    let _ = std::fs::remove_file(&out);
    if written < published || published < RECORDS as usize {
        return Err(format!("pipeline incomplete: published {published}, written {written}").into());
    }
    println!("quickstart OK");
    Ok(())
}
