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
    ///
    /// The first subscription must succeed (its error is returned). After that the reader
    /// survives broker outages the way the connectors' sink runtime does: when
    /// `danube-client` gives up on its stream (after a few retries, about 2-3 s of outage),
    /// the reader closes the consumer and subscribes again until the broker answers.
    pub async fn subscribe(service_url: String, topic: &str, subscription: &str) -> Result<Self, DanubeError> {
        let client = DanubeClient::builder().service_url(service_url).build().await?;
        let identity = ReaderIdentity {
            topic: topic.to_string(),
            consumer: format!("{subscription}-reader"),
            subscription: subscription.to_string(),
        };
        let (consumer, messages) = identity.subscribe(&client).await?;
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&received);
        let task = tokio::spawn(async move {
            let (mut consumer, mut messages) = (consumer, messages);
            loop {
                while let Some(message) = messages.recv().await {
                    let _ = consumer.ack(&message).await;
                    sink.lock().expect("reader lock").push(message);
                }
                consumer.close().await;
                (consumer, messages) = loop {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    if let Ok(subscribed) = identity.subscribe(&client).await {
                        break subscribed;
                    }
                };
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

/// What a [`TopicReader`] subscribes with, kept for re-subscribing after an outage.
struct ReaderIdentity {
    topic: String,
    consumer: String,
    subscription: String,
}

impl ReaderIdentity {
    async fn subscribe(
        &self,
        client: &DanubeClient,
    ) -> Result<(danube_client::Consumer, tokio::sync::mpsc::Receiver<danube_core::message::StreamMessage>), DanubeError>
    {
        let mut consumer = client
            .new_consumer()
            .with_topic(self.topic.clone())
            .with_consumer_name(self.consumer.clone())
            .with_subscription(self.subscription.clone())
            .with_subscription_type(danube_client::SubType::Exclusive)
            .build()?;
        consumer.subscribe().await?;
        let messages = consumer.receive().await?;
        Ok((consumer, messages))
    }
}

impl Drop for TopicReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes `payload(n)` for `n` in `0..total` from all `producers` at once (each takes
/// the next `n`); returns the publish rate in messages/s.
pub async fn burst(producers: Vec<Producer>, total: u64, payload: fn(u64) -> Vec<u8>) -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    let started = std::time::Instant::now();
    let next = std::sync::Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = producers
        .into_iter()
        .map(|producer| {
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return;
                    }
                    producer.send(payload(n), None).await.expect("publish");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("producer task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// The sink benchmarks' baseline: a raw `danube-client` consumer on a Shared subscription
/// that acks each message as it arrives and counts them, until `stop_after`.
pub struct CountingConsumer {
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<danube_client::Consumer>,
}

impl CountingConsumer {
    /// Subscribes `subscription` (Shared) to `topic`, which must exist, and starts counting.
    pub async fn subscribe(
        service_url: String,
        topic: &str,
        subscription: &str,
        stop_after: u64,
    ) -> Result<Self, DanubeError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let client = DanubeClient::builder().service_url(service_url).build().await?;
        let mut consumer = client
            .new_consumer()
            .with_topic(topic.to_string())
            .with_consumer_name(format!("{subscription}-0"))
            .with_subscription(subscription.to_string())
            .with_subscription_type(danube_client::SubType::Shared)
            .build()?;
        consumer.subscribe().await?;
        let mut messages = consumer.receive().await?;
        let acked = std::sync::Arc::new(AtomicU64::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = messages.recv().await {
                consumer.ack(&message).await.expect("ack");
                if counter.fetch_add(1, Ordering::Relaxed) + 1 >= stop_after {
                    break;
                }
            }
            consumer
        });
        Ok(Self { acked, task })
    }

    /// The count of acked messages, shared with the consuming task.
    pub fn acked(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.acked.clone()
    }

    /// Waits for the consuming task (it ends at `stop_after`) and closes the consumer.
    pub async fn close(self) {
        let mut consumer = self.task.await.expect("consumer task");
        consumer.close().await;
    }
}

/// Waits until `progress` reaches `target` (panics naming `what` after `timeout`); returns
/// the rate in units/s since `started`.
pub async fn wait_progress(
    progress: &std::sync::atomic::AtomicU64,
    target: u64,
    started: std::time::Instant,
    timeout: std::time::Duration,
    what: &str,
) -> f64 {
    use std::sync::atomic::Ordering;
    let deadline = started + timeout;
    while progress.load(Ordering::Relaxed) < target {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: only {} of {target} in {timeout:?}",
            progress.load(Ordering::Relaxed)
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    target as f64 / started.elapsed().as_secs_f64()
}
