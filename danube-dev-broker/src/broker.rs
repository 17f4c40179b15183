//! [`EmbeddedBroker`]: lifecycle and test-facing API.

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::message::StoredMessage;
use crate::server::{bind, ServerHandle};
use crate::state::BrokerState;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
struct Inner {
    state: Arc<BrokerState>,
    addr: SocketAddr,
    server: tokio::sync::Mutex<Option<ServerHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(server) = self.server.get_mut().take() {
            server.abort();
        }
        self.state.drop_streams();
        self.state.shutdown.cancel();
    }
}

/// An in-process, Danube-compatible development broker.
///
/// Cheap to clone (all clones share one broker). When the last clone is
/// dropped the server stops and the dispatchers end. Must be started and
/// used inside a Tokio runtime.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

impl EmbeddedBroker {
    /// Loads `config.data_dir` (if any), binds `config.listen` and starts serving.
    pub async fn start(config: BrokerConfig) -> Result<EmbeddedBroker, BrokerError> {
        let requested = config.listen;
        let listener = bind(requested).map_err(|source| BrokerError::Bind { addr: requested, source })?;
        let addr = listener.local_addr().map_err(|source| BrokerError::Bind { addr: requested, source })?;
        let host = if addr.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        } else {
            addr
        };
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let state = BrokerState::open(config, format!("{scheme}://{host}"))?;
        let server = ServerHandle::spawn(Arc::clone(&state), listener)?;
        state.start_dispatchers();
        tracing::info!(%addr, "danube-dev-broker started");
        Ok(EmbeddedBroker { inner: Arc::new(Inner { state, addr, server: tokio::sync::Mutex::new(Some(server)) }) })
    }

    /// Starts a broker with the default configuration on an ephemeral port.
    pub async fn start_default() -> Result<EmbeddedBroker, BrokerError> {
        Self::start(BrokerConfig::default()).await
    }

    /// Service URL for clients, e.g. `http://127.0.0.1:6650` (`https://` with TLS).
    pub fn url(&self) -> String {
        self.inner.state.broker_url.clone()
    }

    /// Bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The configuration the broker runs with.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.state.config
    }

    /// Everything published to `topic` (for a partitioned topic name, all
    /// partitions in partition order). Empty for an unknown topic.
    pub fn messages(&self, topic: &str) -> Vec<StoredMessage> {
        self.inner.state.messages(topic)
    }

    /// How many messages `topic` holds (all partitions for a partitioned topic name),
    /// without copying them: cheap enough to poll in a benchmark.
    pub fn message_count(&self, topic: &str) -> usize {
        self.inner.state.message_count(topic)
    }

    /// Waits until `topic` holds at least `count` messages or `timeout`
    /// elapses, and returns what it holds then.
    pub async fn wait_for_messages(&self, topic: &str, count: usize, timeout: Duration) -> Vec<StoredMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.inner.state.message_count(topic) < count && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.messages(topic)
    }

    /// Number of acknowledgements received on a subscription (each message
    /// counted once; summed over partitions).
    pub fn ack_count(&self, topic: &str, subscription: &str) -> u64 {
        self.inner.state.ack_count(topic, subscription)
    }

    /// Messages delivered (or waiting for redelivery) and not yet acknowledged
    /// on a subscription (summed over partitions). Always 0 on a non-reliable topic.
    pub fn unacked_count(&self, topic: &str, subscription: &str) -> usize {
        self.inner.state.unacked_count(topic, subscription)
    }

    /// Consumers with an open `ReceiveMessages` stream on a subscription
    /// (summed over partitions).
    pub fn connected_consumers(&self, topic: &str, subscription: &str) -> usize {
        self.inner.state.connected_consumers(topic, subscription)
    }

    /// Waits until a subscription has at least `n` connected consumers or
    /// `timeout` elapses; returns whether it got there.
    pub async fn wait_for_consumers(&self, topic: &str, subscription: &str, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.connected_consumers(topic, subscription) >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Makes the next `n` `SendMessage` calls fail with `Unavailable` (the
    /// messages are not stored).
    pub fn fail_next_sends(&self, n: usize) {
        self.inner.state.fail_next_sends(n);
    }

    /// Makes every later `CreateProducer` call wait `delay` before it is
    /// answered (a slow broker); `Duration::ZERO` turns it off.
    pub fn delay_producer_creation(&self, delay: Duration) {
        self.inner.state.delay_producer_creation(delay);
    }

    /// Ends every open `ReceiveMessages` stream; unacknowledged messages go
    /// back to their subscription. Clients re-open their streams.
    pub fn drop_streams(&self) {
        self.inner.state.drop_streams();
    }

    /// Stops serving: the port is closed and every connection and stream
    /// ends. State is kept (and flushed to the data directory, if any).
    pub async fn stop(&self) {
        let server = self.inner.server.lock().await.take();
        self.inner.state.drop_streams();
        if let Some(server) = server {
            server.shutdown().await;
            tracing::info!(addr = %self.inner.addr, "danube-dev-broker stopped");
        }
        let state = Arc::clone(&self.inner.state);
        let _ = tokio::task::spawn_blocking(move || state.flush()).await;
    }

    /// Serves again on the same address with the same state. No-op when running.
    pub async fn restart(&self) -> Result<(), BrokerError> {
        let mut server = self.inner.server.lock().await;
        if server.is_some() {
            return Ok(());
        }
        let addr = self.inner.addr;
        let listener = bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
        *server = Some(ServerHandle::spawn(Arc::clone(&self.inner.state), listener)?);
        tracing::info!(%addr, "danube-dev-broker restarted");
        Ok(())
    }

    /// Creates a partitioned topic `topic-part-0 .. topic-part-{partitions-1}`
    /// (reliable dispatch; the namespace is created if missing).
    pub fn create_partitioned_topic(&self, topic: &str, partitions: usize) {
        self.inner.state.create_partitioned_topic(topic, partitions);
    }

    /// Creates a namespace (no-op if it exists).
    pub fn create_namespace(&self, ns: &str) {
        self.inner.state.create_namespace(ns);
    }

    /// Overrides the dispatch window (max unacknowledged messages) of a
    /// subscription; applies to every partition and to a subscription created later.
    pub fn set_max_unacked(&self, topic: &str, subscription: &str, n: usize) {
        self.inner.state.set_max_unacked(topic, subscription, n);
    }

    /// Injects a message as if a producer had sent it and returns its offset.
    /// Creates the topic (reliable) and its namespace if needed. For a
    /// partitioned topic name, the partition is chosen by routing-key hash,
    /// or round robin without a key.
    pub fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        attributes: HashMap<String, String>,
        routing_key: Option<String>,
    ) -> u64 {
        self.inner.state.publish(topic, payload, attributes, routing_key)
    }

    /// Blocks until everything written so far is flushed to the data
    /// directory (no-op without one).
    pub async fn flush(&self) {
        let state = Arc::clone(&self.inner.state);
        let _ = tokio::task::spawn_blocking(move || state.flush()).await;
    }
}
