//! Client mode: subscribe to an external MQTT broker and publish what arrives to Danube.
//!
//! End-to-end QoS 1:
//! - the session is persistent (clean session off, fixed client id), so the broker keeps
//!   QoS 1 messages while the connector is down or disconnected;
//! - acks are manual: a message's PUBACK goes out only after Danube acked its record (or
//!   its dead-letter record), and PUBACKs go out in the order the PUBLISHes arrived
//!   (MQTT 3.1.1 section 4.6), while the Danube publishes themselves are pipelined;
//! - each (re)connection is an epoch: an ack whose message arrived on an earlier
//!   connection is not sent (the broker redelivers that message with DUP set, and the
//!   redelivered copy is acked instead), so an ack never lands on a reused packet id;
//!   packets read just before a connection failed are dropped with it, not handed out
//!   after the reconnect;
//! - when Danube cannot take a message (unavailable past `source.publish_timeout`), it is
//!   not acked and the connection is closed, so the broker redelivers it on reconnect.
//!
//! Delivery is at least once: a message can reach Danube twice when the connector
//! crashed after Danube's ack and before the PUBACK.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use danube_connect_core::config::ConfigError;
use danube_connect_core::error::error_chain;
use danube_connect_core::Health;
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Context, Factory, PushSource};
use futures::stream::{FuturesOrdered, StreamExt};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, Publish, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, warn};

use crate::config::MqttConfig;
use crate::connection::{client, mqtt_options, ACK_REQUEST_CHANNEL};
use crate::inbound::{Inbound, Message};
use crate::mapping::Router;
use danube_connect_core::failure::{Delivery, Handback};
use danube_connect_core::retry::Backoff;

/// The health component this source reports.
pub const HEALTH_COMPONENT: &str = "mqtt-client";

/// How long `shutdown` waits for in-flight messages to be acked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// A message handed from the event loop to the ack pipeline.
struct Item {
    publish: Publish,
    epoch: u64,
}

/// The client-mode source, built (no I/O) from its configuration; started, it connects,
/// subscribes and returns the running [`ClientSource`].
pub struct Client {
    config: MqttConfig,
    router: Router,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("client_id", &self.config.broker.client_id).finish_non_exhaustive()
    }
}

impl Client {
    /// A source for `config`; messages that cannot be delivered follow `failure.policy`.
    pub fn build(config: MqttConfig) -> Result<Self, ConfigError> {
        let router = Router::new(&config.mappings).map_err(|e| ConfigError::invalid("connector.mappings", e))?;
        Ok(Self { config, router })
    }
}

/// The running client-mode source.
pub struct ClientSource {
    config: MqttConfig,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ClientSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSource").field("client_id", &self.config.broker.client_id).finish_non_exhaustive()
    }
}

#[async_trait]
impl Factory for Client {
    type Connector = ClientSource;

    fn topics_at_start(&self) -> Vec<String> {
        self.router.static_topics()
    }

    async fn start(self, ctx: Context) -> ConnectorResult<ClientSource> {
        let broker = &self.config.broker;
        let options = mqtt_options(broker, &broker.client_id, broker.clean_session, true)
            .map_err(|e| ConnectorError::fatal("MQTT client options", e))?;
        let (client, eventloop) = client(options, broker, ACK_REQUEST_CHANNEL);
        let inbound = Inbound::new(self.router.clone(), &ctx)
            .map_err(|e| ConnectorError::fatal("register the MQTT metrics", e))?;
        ctx.health().set_component(HEALTH_COMPONENT, Some("not connected to the MQTT broker yet".into()));
        let stop = CancellationToken::new();
        let (items_tx, items_rx) = mpsc::channel(self.config.max_in_flight);
        let epoch = Arc::new(AtomicU64::new(0));
        // Overlapping filters are not all subscribed: the broker would send one copy per
        // matching subscription.
        let filters: Vec<SubscribeFilter> = self
            .router
            .subscriptions()
            .into_iter()
            .map(|(filter, qos)| SubscribeFilter::new(filter, qos.into()))
            .collect();
        let driver = EventLoopDriver {
            eventloop,
            client: client.clone(),
            items: Some(items_tx),
            epoch: epoch.clone(),
            filters,
            health: ctx.health().clone(),
            backoff: Backoff::between(broker.reconnect_initial_backoff, broker.reconnect_max_backoff),
            stop: stop.clone(),
            address: format!("{}:{}", broker.host, broker.port),
        };
        let mut tasks = vec![tokio::spawn(driver.run())];
        let pipeline = AckPipeline { inbound, client, epoch, max_in_flight: self.config.max_in_flight };
        tasks.push(tokio::spawn(pipeline.run(items_rx)));
        Ok(ClientSource { config: self.config, stop, tasks })
    }
}

#[async_trait]
impl PushSource for ClientSource {
    async fn shutdown(&mut self) -> ConnectorResult<()> {
        info!("stopping MQTT intake; finishing in-flight messages");
        self.stop.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let drain = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
            warn!("MQTT drain timed out; unacked messages stay with the broker");
        }
        Ok(())
    }
}

/// Owns the rumqttc event loop: (re)connects, subscribes, forwards publishes.
struct EventLoopDriver {
    eventloop: EventLoop,
    client: AsyncClient,
    items: Option<mpsc::Sender<Item>>,
    epoch: Arc<AtomicU64>,
    filters: Vec<SubscribeFilter>,
    health: Health,
    backoff: Backoff,
    stop: CancellationToken,
    address: String,
}

impl EventLoopDriver {
    async fn run(mut self) {
        let mut subscribed = false;
        loop {
            let polled = tokio::select! {
                biased;
                _ = self.stop.cancelled(), if self.items.is_some() => {
                    // Stop taking new messages; keep polling so the pipeline's last acks
                    // and its DISCONNECT go out.
                    self.items = None;
                    continue;
                }
                polled = self.eventloop.poll() => polled,
            };
            match polled {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
                    self.backoff.reset();
                    info!(address = %self.address, session_present = ack.session_present, epoch, "connected to the MQTT broker");
                    if !ack.session_present || !subscribed {
                        if let Err(e) = self.client.try_subscribe_many(self.filters.clone()) {
                            error!(error = %e, "cannot queue SUBSCRIBE");
                        }
                    } else {
                        self.health.set_component(HEALTH_COMPONENT, None);
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    let refused: Vec<String> = ack
                        .return_codes
                        .iter()
                        .zip(&self.filters)
                        .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                        .map(|(_, f)| f.path.clone())
                        .collect();
                    if refused.is_empty() {
                        subscribed = true;
                        info!(filters = self.filters.len(), "subscribed");
                        self.health.set_component(HEALTH_COMPONENT, None);
                    } else {
                        error!(?refused, "the MQTT broker refused subscriptions");
                        self.health.set_component(
                            HEALTH_COMPONENT,
                            Some(format!("subscriptions refused: {}", refused.join(", "))),
                        );
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    if let Some(items) = &self.items {
                        let epoch = self.epoch.load(Ordering::Acquire);
                        trace!(pkid = publish.pkid, dup = publish.dup, epoch, "PUBLISH received");
                        // Waits when the pipeline is full: backpressure to the broker.
                        if items.send(Item { publish, epoch }).await.is_err() {
                            self.items = None;
                        }
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) if self.stop.is_cancelled() => {
                    debug!("DISCONNECT sent");
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                    // A read that failed mid-batch leaves the batch's already decoded
                    // packets in rumqttc's event buffer, and they would come out after the
                    // next CONNACK, tagged with the new epoch and acked with packet ids of
                    // the dead connection. Drop them: the broker redelivers every unacked
                    // QoS 1 message of the persistent session after the reconnect.
                    let dropped = self.eventloop.state.events.len();
                    self.eventloop.state.events.clear();
                    if dropped > 0 {
                        debug!(dropped, "dropped events read before the connection failed");
                    }
                    if self.stop.is_cancelled() {
                        debug!(error = %error_chain(&e), "connection closed while stopping");
                        break;
                    }
                    let delay = self.backoff.next_delay();
                    warn!(address = %self.address, error = %error_chain(&e), retry_in = ?delay, "MQTT connection lost");
                    self.health.set_component(HEALTH_COMPONENT, Some("disconnected from the MQTT broker".into()));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.stop.cancelled() => break,
                    }
                }
            }
        }
        self.health.set_component(HEALTH_COMPONENT, Some("stopped".into()));
    }
}

/// Publishes messages to Danube (pipelined) and sends their PUBACKs in arrival order.
struct AckPipeline {
    inbound: Inbound,
    client: AsyncClient,
    epoch: Arc<AtomicU64>,
    max_in_flight: usize,
}

impl AckPipeline {
    async fn run(self, mut items: mpsc::Receiver<Item>) {
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        // An epoch in which a message could not be delivered: later acks of that epoch
        // are held back too (PUBACK order), the broker redelivers after the reconnect.
        let mut failed_epoch: Option<u64> = None;
        let mut skipped = 0usize;
        loop {
            tokio::select! {
                item = items.recv(), if open && in_flight.len() < self.max_in_flight => match item {
                    Some(item) => {
                        let inbound = self.inbound.clone();
                        in_flight.push_back(async move {
                            let message = to_message(&item.publish);
                            // Mosquitto keeps a QoS 1 message until its PUBACK; a QoS 0
                            // message is gone from it once sent.
                            let handback = match item.publish.qos {
                                QoS::AtMostOnce => Handback::Impossible,
                                _ => Handback::Possible,
                            };
                            let delivery = inbound.deliver(message, handback).await;
                            (item, delivery)
                        });
                    }
                    None => open = false,
                },
                Some((item, delivery)) = in_flight.next() => {
                    self.finish(item, delivery, &mut failed_epoch, &mut skipped).await;
                }
                else => break,
            }
        }
        if skipped > 0 {
            debug!(count = skipped, "messages left unacked for the broker to redeliver");
        }
        // All acks are queued; DISCONNECT goes out after them (same channel, in order).
        if let Err(e) = self.client.disconnect().await {
            debug!(error = %e, "DISCONNECT not queued");
        }
    }

    async fn finish(&self, item: Item, delivery: Delivery, failed_epoch: &mut Option<u64>, skipped: &mut usize) {
        let current = self.epoch.load(Ordering::Acquire);
        trace!(pkid = item.publish.pkid, epoch = item.epoch, current, ?delivery, "message finished");
        match delivery {
            Delivery::Published | Delivery::DeadLettered => {
                if item.publish.qos == QoS::AtMostOnce {
                    return;
                }
                if item.epoch != current || *failed_epoch == Some(item.epoch) {
                    // Arrived on an earlier connection, or behind an undelivered message:
                    // the broker redelivers it; acking now could hit a reused packet id.
                    *skipped += 1;
                    return;
                }
                if let Err(e) = self.client.ack(&item.publish).await {
                    warn!(error = %e, "PUBACK not queued");
                }
            }
            // Refused (`failure.policy = nack`), stopping (`stop`) or Danube unavailable: the
            // PUBACK is withheld, so the broker keeps the message and redelivers it.
            Delivery::Refused | Delivery::Stopped | Delivery::NotDelivered { .. } => {
                let reason = match &delivery {
                    Delivery::NotDelivered { reason } => reason.as_str(),
                    Delivery::Refused => "refused (failure.policy = nack)",
                    _ => "the connector is stopping (failure.policy = stop)",
                };
                if item.publish.qos == QoS::AtMostOnce {
                    self.inbound.count("dropped_qos0");
                    warn!(%reason, topic = %item.publish.topic, "QoS 0 message lost: not in Danube");
                    return;
                }
                if item.epoch == current && *failed_epoch != Some(item.epoch) {
                    *failed_epoch = Some(item.epoch);
                    warn!(
                        %reason,
                        topic = %item.publish.topic,
                        "Danube did not take a QoS 1 message: not acked; reconnecting so the broker redelivers it"
                    );
                    if let Err(e) = self.client.disconnect().await {
                        debug!(error = %e, "DISCONNECT not queued");
                    }
                }
            }
        }
    }
}

fn to_message(publish: &Publish) -> Message {
    Message {
        topic: publish.topic.clone(),
        payload: publish.payload.clone(),
        qos: Some(match publish.qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        }),
        retain: Some(publish.retain),
        dup: Some(publish.dup),
    }
}
