//! Embedded mode: an MQTT broker (rumqttd, MQTT 3.1.1) runs inside the connector and what
//! devices publish on mapped filters is published to Danube.
//!
//! What this guarantees, honestly: rumqttd PUBACKs a device's QoS 1 message as soon as it
//! received it, before Danube has it, and keeps messages in memory only. So:
//! - while the connector runs, every message on a mapped filter is published to Danube;
//!   if Danube is unavailable the connector keeps retrying (in memory, bounded by
//!   `max_in_flight`; beyond it rumqttd's own in-memory log absorbs the backlog and drops
//!   the oldest data once its segments are full);
//! - on a crash (kill -9, OOM, power loss) messages received but not yet acked by Danube
//!   are lost, although the devices got their PUBACK;
//! - on SIGTERM the connector stops taking messages from rumqttd and finishes publishing
//!   the ones it already took (up to the shutdown timeout). rumqttd itself cannot be
//!   stopped from outside: until the process exits it keeps accepting connections and
//!   PUBACKing device messages, and those (with any backlog still in its memory) are lost.
//!
//! Use client mode with an external broker that persists sessions when that is not enough.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use danube_connect_core::error::error_chain;
use danube_connect_core::health::Health;
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, SourceConnector, SourceContext};
use futures::stream::{FuturesOrdered, StreamExt};
use rumqttd::local::LinkRx;
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{EmbeddedConfig, MqttConfig};
use crate::inbound::{Delivery, Inbound, Message};
use crate::mapping::Router;

/// The health component this source reports.
pub const HEALTH_COMPONENT: &str = "mqtt-embedded";

const RETRY_DELAY: Duration = Duration::from_millis(500);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The embedded-broker source.
pub struct EmbeddedSource {
    config: MqttConfig,
    router: Router,
    dead_letter_topic: String,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSource").field("listen", &self.config.embedded.listen).finish_non_exhaustive()
    }
}

impl EmbeddedSource {
    /// A source for `config`; unmappable messages go to `dead_letter_topic`.
    pub fn new(config: MqttConfig, dead_letter_topic: String) -> ConnectorResult<Self> {
        let router = Router::new(&config.mappings).map_err(ConnectorError::fatal_msg)?;
        Ok(Self { config, router, dead_letter_topic, stop: CancellationToken::new(), task: None })
    }
}

/// The rumqttd configuration for `embedded`: one MQTT 3.1.1 listener, in-memory log.
pub fn broker_config(embedded: &EmbeddedConfig) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: u16::try_from(embedded.connection_timeout.as_millis()).unwrap_or(u16::MAX),
        max_payload_size: embedded.max_payload_size,
        max_inflight_count: embedded.max_inflight_count,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "v4".into(),
        listen: embedded.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: embedded.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Config::default()
    }
}

#[async_trait]
impl SourceConnector for EmbeddedSource {
    async fn initialize(&mut self, ctx: SourceContext) -> ConnectorResult<()> {
        let listen = self.config.embedded.listen;
        // rumqttd only logs a bind failure from its server thread: check first.
        TcpListener::bind(listen)
            .map_err(|e| ConnectorError::fatal(format!("embedded MQTT listener cannot bind {listen}"), e))?;
        let mut broker = Broker::new(broker_config(&self.config.embedded));
        let (mut link_tx, link_rx) =
            broker.link("danube-bridge").map_err(|e| ConnectorError::fatal("embedded broker link", e))?;
        // One subscription to everything: rumqttd forwards a message once per matching
        // subscription, so overlapping mapped filters would duplicate it. The mapping
        // table picks the first matching filter, and unmapped topics are skipped.
        link_tx.subscribe("#").map_err(|e| ConnectorError::fatal("subscribe the bridge link to #", e))?;
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    error!(error = %e, "embedded MQTT broker stopped");
                }
            })
            .map_err(|e| ConnectorError::fatal("start the embedded broker thread", e))?;
        ctx.health.set_component(HEALTH_COMPONENT, Some("embedded broker starting".into()));
        let waited = wait_listening(listen, Duration::from_secs(10)).await;
        if !waited {
            return Err(ConnectorError::fatal_msg(format!("embedded MQTT broker not listening on {listen}")));
        }
        info!(%listen, "embedded MQTT broker listening");
        ctx.health.set_component(HEALTH_COMPONENT, None);
        let inbound = Inbound::new(
            self.router.clone(),
            ctx.publisher.clone(),
            self.dead_letter_topic.clone(),
            &ctx.name,
            &ctx.metrics,
        );
        // The link must live as long as the forwarder.
        let forwarder = Forwarder {
            inbound,
            health: ctx.health.clone(),
            stop: self.stop.clone(),
            max_in_flight: self.config.max_in_flight,
        };
        self.task = Some(tokio::spawn(async move {
            let _link_tx = link_tx;
            forwarder.run(link_rx).await;
        }));
        Ok(())
    }

    async fn shutdown(&mut self) -> ConnectorResult<()> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(DRAIN_TIMEOUT, task).await.is_err() {
                warn!("embedded mode drain timed out: messages not yet in Danube are lost");
            }
        }
        Ok(())
    }
}

async fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let target = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let started = Instant::now();
    while started.elapsed() < timeout {
        let probe =
            tokio::task::spawn_blocking(move || TcpStream::connect_timeout(&target, Duration::from_millis(200)));
        if let Ok(Ok(_)) = probe.await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

struct Forwarder {
    inbound: Inbound,
    health: Health,
    stop: CancellationToken,
    max_in_flight: usize,
}

impl Forwarder {
    async fn run(self, mut link: LinkRx) {
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled(), if open => open = false,
                Some(()) = in_flight.next() => {}
                notification = link.next(), if open && in_flight.len() < self.max_in_flight => match notification {
                    Ok(Some(Notification::Forward(forward))) => {
                        let topic = match std::str::from_utf8(&forward.publish.topic) {
                            Ok(topic) => topic.to_string(),
                            Err(e) => {
                                warn!(error = %e, "topic is not UTF-8; message skipped");
                                self.inbound.count("invalid_topic");
                                continue;
                            }
                        };
                        if self.inbound.router().route(&topic).is_none() {
                            self.inbound.count("unmapped");
                            continue;
                        }
                        let message = Message {
                            topic,
                            payload: forward.publish.payload.clone(),
                            qos: None,
                            // rumqttd clears the retain flag before it forwards a message
                            // to a live subscription, so it carries no information here.
                            retain: None,
                            dup: None,
                        };
                        in_flight.push_back(deliver_until_done(self.inbound.clone(), message, self.stop.clone()));
                    }
                    Ok(Some(Notification::Unschedule)) => {
                        // rumqttd paused this link because its outgoing buffer filled up
                        // (200 notifications); it stays paused until the link says it is
                        // ready again. Everything before this marker has been taken.
                        if let Err(e) = link.wake().await {
                            error!(error = %e, "cannot wake the embedded broker link");
                            self.health.set_component(HEALTH_COMPONENT, Some("embedded broker link closed".into()));
                            open = false;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        error!(error = %e, "embedded broker link closed");
                        self.health.set_component(HEALTH_COMPONENT, Some("embedded broker link closed".into()));
                        open = false;
                    }
                },
                else => break,
            }
        }
    }
}

/// Rumqttd already acked the device: keep trying until Danube has it (or we stop).
async fn deliver_until_done(inbound: Inbound, message: Message, stop: CancellationToken) {
    loop {
        match inbound.deliver(message.clone()).await {
            Delivery::Published | Delivery::DeadLettered => return,
            Delivery::NotDelivered(error) => {
                if stop.is_cancelled() {
                    warn!(error = %error_chain(&error), topic = %message.topic, "stopping: message not in Danube is lost");
                    return;
                }
                warn!(error = %error_chain(&error), topic = %message.topic, "Danube unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }
}
