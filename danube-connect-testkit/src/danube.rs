//! Raw `danube-client` producers: the baseline every benchmark compares its connector with.
//!
//! ```no_run
//! # async fn run(url: String) -> Result<(), danube_client::errors::DanubeError> {
//! let producers = danube_connect_testkit::danube::reliable_producers(url, "/default/raw", "raw", 4).await?;
//! assert_eq!(producers.len(), 4);
//! # Ok(()) }
//! ```

use danube_client::errors::DanubeError;
use danube_client::{DanubeClient, Producer, ProducerOptions};

/// `count` created producers on `topic` (reliable dispatch, names `{prefix}-{i}`), sharing one
/// client; `danube-client` allows one send in flight per producer, so a baseline pipelines
/// across them like the connectors' producer pools do.
pub async fn reliable_producers(
    service_url: String,
    topic: &str,
    prefix: &str,
    count: usize,
) -> Result<Vec<Producer>, DanubeError> {
    let client = DanubeClient::builder().service_url(service_url).build().await?;
    let mut producers = Vec::with_capacity(count);
    for i in 0..count {
        let mut producer = client
            .new_producer()
            .with_topic(topic.to_string())
            .with_name(format!("{prefix}-{i}"))
            .with_options(ProducerOptions::new(1, 50, 500))
            .with_reliable_dispatch()
            .build()?;
        producer.create().await?;
        producers.push(producer);
    }
    Ok(producers)
}
