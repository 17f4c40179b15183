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

/// A raw `danube-client` consumer on its own Exclusive subscription that acks and keeps every
/// message it receives: what a test reads back from a topic on either broker.
///
/// Danube subscriptions start at the end of the topic, so subscribe before the connector
/// publishes. On the real broker v0.15.1 a subscription skips what its backlog grows beyond
/// its dispatch window + 256 messages (266 at the default window; see
/// `docs/running-on-danube.md`); the reader acks each message as soon as it arrives to keep
/// the backlog small, and tests keep their bursts below that.
pub struct TopicReader {
    received: std::sync::Arc<std::sync::Mutex<Vec<danube_core::message::StreamMessage>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TopicReader {
    /// Subscribes `subscription` (Exclusive) to `topic` and starts collecting.
    pub async fn subscribe(service_url: String, topic: &str, subscription: &str) -> Result<Self, DanubeError> {
        let client = DanubeClient::builder().service_url(service_url).build().await?;
        let mut consumer = client
            .new_consumer()
            .with_topic(topic.to_string())
            .with_consumer_name(format!("{subscription}-reader"))
            .with_subscription(subscription.to_string())
            .with_subscription_type(danube_client::SubType::Exclusive)
            .build()?;
        consumer.subscribe().await?;
        let mut messages = consumer.receive().await?;
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Some(message) = messages.recv().await {
                let _ = consumer.ack(&message).await;
                sink.lock().expect("reader lock").push(message);
            }
        });
        Ok(Self { received, task })
    }

    /// The messages received so far, in arrival order.
    pub fn messages(&self) -> Vec<danube_core::message::StreamMessage> {
        self.received.lock().expect("reader lock").clone()
    }

    /// How many messages arrived so far.
    pub fn count(&self) -> usize {
        self.received.lock().expect("reader lock").len()
    }

    /// Waits until `count` messages arrived or `timeout` passed; returns what arrived.
    pub async fn wait_for(
        &self,
        count: usize,
        timeout: std::time::Duration,
    ) -> Vec<danube_core::message::StreamMessage> {
        let deadline = std::time::Instant::now() + timeout;
        while self.count() < count && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.messages()
    }
}

impl Drop for TopicReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}
