//! Outbound mode: Danube -> MQTT.
//!
//! Each Danube message is published to the MQTT topic its template renders, with the
//! configured QoS and retain flag. `process` returns `Ok` (and the runtime acks Danube)
//! only after the broker's PUBACK for QoS 1, or after the PUBLISH was written for QoS 0.
//!
//! One PUBLISH is in flight at a time on a clean-session connection of its own
//! (`{client_id}-out`): a PUBACK is matched by its packet id to the one waiting publish of
//! the current connection, so an ack can never be credited to the wrong message. A lost
//! connection or a missing PUBACK fails the attempt as retryable (the runtime retries, so
//! the broker may see a message twice: at least once). After an ack timeout the
//! connection is reset before the next publish, so a late PUBACK cannot be mistaken.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use danube_connect_core::config::ConfigError;
use danube_connect_core::error::error_chain;
use danube_connect_core::Health;
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Context, Factory, Sink, SinkRecord};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{BrokerConfig, OutboundConfig};
use crate::connection::{client, mqtt_options, PUBLISH_REQUEST_CHANNEL};
use crate::mapping::OutboundTemplate;
use danube_connect_core::retry::Backoff;

/// The health component this sink reports.
pub const HEALTH_COMPONENT: &str = "mqtt-outbound";

/// Why an outbound publish did not complete.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The connection to the broker dropped before the PUBACK.
    #[error("MQTT connection lost before the PUBACK")]
    Disconnected,
    /// The broker did not answer in time.
    #[error("no PUBACK within {0:?}")]
    AckTimeout(Duration),
    /// Not connected to the broker.
    #[error("not connected to the MQTT broker")]
    NotConnected,
    /// The request could not be handed to the MQTT client.
    #[error("MQTT client request failed")]
    Client(#[from] rumqttc::ClientError),
}

struct Waiter {
    generation: u64,
    pkid: Option<u16>,
    qos: QoS,
    reply: oneshot::Sender<Result<(), OutboundError>>,
}

struct Shared {
    client: AsyncClient,
    waiter: Mutex<Option<Waiter>>,
    /// Connection generation, bumped on every CONNACK.
    generation: watch::Sender<u64>,
    connected: AtomicBool,
    one_in_flight: tokio::sync::Mutex<()>,
    published: AtomicU64,
}

/// The Danube -> MQTT sink, built (no I/O) from its configuration; started, it connects
/// and returns the running [`OutboundSink`].
#[derive(Debug)]
pub struct Outbound {
    broker: BrokerConfig,
    config: OutboundConfig,
    template: OutboundTemplate,
}

impl Outbound {
    /// A sink publishing to `broker` as `{client_id}-out`; the topic template must parse.
    pub fn build(broker: BrokerConfig, config: OutboundConfig) -> Result<Self, ConfigError> {
        let template = OutboundTemplate::parse(&config.topic)
            .map_err(|e| ConfigError::invalid("connector.outbound.topic", e.to_string()))?;
        Ok(Self { broker, config, template })
    }
}

#[async_trait]
impl Factory for Outbound {
    type Connector = OutboundSink;

    async fn start(self, ctx: Context) -> ConnectorResult<OutboundSink> {
        let client_id = format!("{}-out", self.broker.client_id);
        // A clean session: nothing of an earlier connection is ever resent by rumqttc.
        let options = mqtt_options(&self.broker, &client_id, true, false)
            .map_err(|e| ConnectorError::fatal("MQTT client options", e))?;
        let (client, eventloop) = client(options, &self.broker, PUBLISH_REQUEST_CHANNEL);
        let (generation, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            client,
            waiter: Mutex::new(None),
            generation,
            connected: AtomicBool::new(false),
            one_in_flight: tokio::sync::Mutex::new(()),
            published: AtomicU64::new(0),
        });
        ctx.health().set_component(HEALTH_COMPONENT, Some("not connected to the MQTT broker yet".into()));
        let stop = CancellationToken::new();
        let driver = Driver {
            eventloop,
            shared: shared.clone(),
            health: ctx.health().clone(),
            backoff: Backoff::between(self.broker.reconnect_initial_backoff, self.broker.reconnect_max_backoff),
            stop: stop.clone(),
            address: format!("{}:{}", self.broker.host, self.broker.port),
        };
        tokio::spawn(driver.run());
        Ok(OutboundSink { config: self.config, template: self.template, shared, stop })
    }
}

/// The running Danube -> MQTT sink.
pub struct OutboundSink {
    config: OutboundConfig,
    template: OutboundTemplate,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl std::fmt::Debug for OutboundSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundSink").field("topic", &self.config.topic).finish_non_exhaustive()
    }
}

impl OutboundSink {
    async fn publish(&self, shared: &Shared, topic: String, record: &SinkRecord) -> Result<(), OutboundError> {
        let _one = shared.one_in_flight.lock().await;
        let timeout = self.config.ack_timeout;
        let generation = wait_connected(shared, timeout).await?;
        let qos: QoS = self.config.qos.into();
        let (reply, rx) = oneshot::channel();
        if let Ok(mut slot) = shared.waiter.lock() {
            *slot = Some(Waiter { generation, pkid: None, qos, reply });
        }
        shared.client.publish_bytes(topic, qos, self.config.retain, record.payload.clone()).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(OutboundError::Disconnected),
            Err(_) => {
                if let Ok(mut slot) = shared.waiter.lock() {
                    slot.take();
                }
                // Reset the connection before the next publish so a late PUBACK for this
                // packet id cannot complete another message.
                warn!(?timeout, "no PUBACK in time; resetting the MQTT connection");
                let _ = shared.client.disconnect().await;
                let mut changes = shared.generation.subscribe();
                let _ = tokio::time::timeout(timeout, changes.wait_for(|g| *g > generation)).await;
                Err(OutboundError::AckTimeout(timeout))
            }
        }
    }
}

async fn wait_connected(shared: &Shared, timeout: Duration) -> Result<u64, OutboundError> {
    let mut changes = shared.generation.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if shared.connected.load(Ordering::Acquire) {
            return Ok(*changes.borrow_and_update());
        }
        if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
            return Err(OutboundError::NotConnected);
        }
    }
}

#[async_trait]
impl Sink for OutboundSink {
    async fn process(&self, record: &SinkRecord) -> ConnectorResult<()> {
        let topic = self
            .template
            .render(record)
            .map_err(|reason| ConnectorError::invalid_msg(format!("no MQTT topic for the message: {reason}")))?;
        let shared = &self.shared;
        match self.publish(shared, topic, record).await {
            Ok(()) => {
                shared.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => Err(ConnectorError::retryable("publish to MQTT", error)),
        }
    }

    async fn shutdown(&self) -> ConnectorResult<()> {
        let _ = self.shared.client.try_disconnect();
        info!(published = self.shared.published.load(Ordering::Relaxed), "outbound MQTT stopping");
        self.stop.cancel();
        Ok(())
    }

    async fn health_check(&self) -> ConnectorResult<()> {
        if self.shared.connected.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(ConnectorError::retryable_msg("not connected to the MQTT broker"))
        }
    }
}

struct Driver {
    eventloop: EventLoop,
    shared: Arc<Shared>,
    health: Health,
    backoff: Backoff,
    stop: CancellationToken,
    address: String,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let polled = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    self.backoff.reset();
                    self.fail_waiter();
                    self.shared.generation.send_modify(|g| *g += 1);
                    self.shared.connected.store(true, Ordering::Release);
                    self.health.set_component(HEALTH_COMPONENT, None);
                    info!(address = %self.address, "outbound connected to the MQTT broker");
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => self.on_sent(pkid),
                Ok(Event::Incoming(Incoming::PubAck(ack))) => self.on_acked(ack.pkid),
                Ok(_) => {}
                Err(e) => {
                    self.shared.connected.store(false, Ordering::Release);
                    self.fail_waiter();
                    self.health.set_component(HEALTH_COMPONENT, Some("disconnected from the MQTT broker".into()));
                    let delay = self.backoff.next_delay();
                    warn!(address = %self.address, error = %error_chain(&e), retry_in = ?delay, "outbound MQTT connection lost");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.cancelled() => break,
                    }
                }
            }
        }
        self.shared.connected.store(false, Ordering::Release);
    }

    fn current_generation(&self) -> u64 {
        *self.shared.generation.borrow()
    }

    fn on_sent(&self, pkid: u16) {
        let generation = self.current_generation();
        let Ok(mut slot) = self.shared.waiter.lock() else { return };
        let Some(waiter) = slot.as_mut() else {
            debug!(pkid, "PUBLISH sent with nobody waiting (an abandoned attempt)");
            return;
        };
        if waiter.generation != generation || waiter.pkid.is_some() {
            return;
        }
        if waiter.qos == QoS::AtMostOnce {
            if let Some(waiter) = slot.take() {
                let _ = waiter.reply.send(Ok(()));
            }
        } else {
            waiter.pkid = Some(pkid);
        }
    }

    fn on_acked(&self, pkid: u16) {
        let Ok(mut slot) = self.shared.waiter.lock() else { return };
        if slot.as_ref().is_some_and(|w| w.pkid == Some(pkid) && w.generation == self.current_generation()) {
            if let Some(waiter) = slot.take() {
                let _ = waiter.reply.send(Ok(()));
            }
        }
    }

    fn fail_waiter(&self) {
        if let Ok(mut slot) = self.shared.waiter.lock() {
            if let Some(waiter) = slot.take() {
                let _ = waiter.reply.send(Err(OutboundError::Disconnected));
            }
        }
    }
}
