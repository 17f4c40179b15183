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
//!
//! Access: `embedded.users` makes every device log in (rumqttd compares the password in
//! constant time); without users the connector refuses to listen on a non-loopback
//! address unless `embedded.allow_anonymous = true`. With `embedded.tls` the connector
//! terminates TLS itself (rustls) on `listen` and hands the plain MQTT stream to rumqttd
//! on a loopback port of its own (`127.0.0.1`, ephemeral), at most `max_connections` at a
//! time; a handshake must finish within `connection_timeout`. That loopback port is
//! reachable by local processes without TLS, but not without a login when users are set.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danube_connect_core::config::ConfigError;
use danube_connect_core::Health;
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Context, Factory, PushSource};
use futures::stream::{FuturesOrdered, StreamExt};
use rumqttd::local::LinkRx;
use rumqttd::{Broker, Config, ConnectionSettings, Notification, RouterConfig, ServerSettings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{EmbeddedConfig, MqttConfig};
use crate::inbound::{Inbound, Message};
use crate::mapping::Router;
use danube_connect_common::tls::ServerTls;
use danube_connect_core::failure::{Delivery, Handback};

/// The health component this source reports.
pub const HEALTH_COMPONENT: &str = "mqtt-embedded";

const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// The embedded-broker source, built (no I/O) from its configuration; started, it runs the
/// broker and returns the running [`EmbeddedSource`].
pub struct Embedded {
    config: MqttConfig,
    router: Router,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").field("listen", &self.config.embedded.listen).finish_non_exhaustive()
    }
}

impl Embedded {
    /// A source for `config`; messages that cannot be delivered follow `failure.policy`.
    pub fn build(config: MqttConfig) -> Result<Self, ConfigError> {
        let router = Router::new(&config.mappings).map_err(|e| ConfigError::invalid("connector.mappings", e))?;
        Ok(Self { config, router })
    }
}

/// The running embedded-broker source.
pub struct EmbeddedSource {
    config: MqttConfig,
    stop: CancellationToken,
    /// Taken at shutdown.
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSource").field("listen", &self.config.embedded.listen).finish_non_exhaustive()
    }
}

/// The rumqttd configuration for `embedded`: one MQTT 3.1.1 listener on `listen` (the
/// configured address, or the loopback port behind the TLS front), in-memory log, the
/// configured logins.
pub fn broker_config(embedded: &EmbeddedConfig, listen: SocketAddr) -> Config {
    let auth = (!embedded.users.is_empty())
        .then(|| embedded.users.iter().map(|(user, password)| (user.clone(), password.expose().to_string())).collect());
    let connections = ConnectionSettings {
        connection_timeout_ms: u16::try_from(embedded.connection_timeout.as_millis()).unwrap_or(u16::MAX),
        max_payload_size: embedded.max_payload_size,
        max_inflight_count: embedded.max_inflight_count,
        auth,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings { name: "v4".into(), listen, tls: None, next_connection_delay_ms: 1, connections };
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
impl Factory for Embedded {
    type Connector = EmbeddedSource;

    fn topics_at_start(&self) -> Vec<String> {
        self.router.static_topics()
    }

    async fn start(self, ctx: Context) -> ConnectorResult<EmbeddedSource> {
        let stop = CancellationToken::new();
        let embedded = &self.config.embedded;
        let listen = embedded.listen;
        // rumqttd only logs a bind failure from its server thread: check first.
        let probe = TcpListener::bind(listen)
            .map_err(|e| ConnectorError::fatal(format!("embedded MQTT listener cannot bind {listen}"), e))?;
        let (broker_listen, front) = match &embedded.tls {
            None => {
                drop(probe);
                (listen, None)
            }
            Some(tls) => {
                let acceptor = tls_acceptor(tls)?;
                probe.set_nonblocking(true).map_err(|e| ConnectorError::fatal("embedded TLS listener", e))?;
                let listener = tokio::net::TcpListener::from_std(probe)
                    .map_err(|e| ConnectorError::fatal("embedded TLS listener", e))?;
                let backend = TcpListener::bind(("127.0.0.1", 0))
                    .and_then(|l| l.local_addr())
                    .map_err(|e| ConnectorError::fatal("a loopback port for the embedded broker", e))?;
                (backend, Some((listener, acceptor, backend)))
            }
        };
        let mut broker = Broker::new(broker_config(embedded, broker_listen));
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
        ctx.health().set_component(HEALTH_COMPONENT, Some("embedded broker starting".into()));
        let waited = wait_listening(broker_listen, Duration::from_secs(10)).await;
        if !waited {
            return Err(ConnectorError::fatal_msg(format!("embedded MQTT broker not listening on {broker_listen}")));
        }
        if let Some((listener, acceptor, backend)) = front {
            let front = TlsFront {
                acceptor,
                backend,
                connections: Arc::new(tokio::sync::Semaphore::new(self.config.embedded.max_connections)),
                handshake_timeout: self.config.embedded.connection_timeout,
                stop: stop.clone(),
            };
            tokio::spawn(front.run(listener));
        }
        info!(
            %listen,
            tls = self.config.embedded.tls.is_some(),
            users = self.config.embedded.users.len(),
            "embedded MQTT broker listening"
        );
        ctx.health().set_component(HEALTH_COMPONENT, None);
        let inbound = Inbound::new(self.router.clone(), &ctx)
            .map_err(|e| ConnectorError::fatal("register the MQTT metrics", e))?;
        // The link must live as long as the forwarder.
        let forwarder = Forwarder {
            inbound,
            health: ctx.health().clone(),
            stop: stop.clone(),
            max_in_flight: self.config.max_in_flight,
        };
        let task = tokio::spawn(async move {
            let _link_tx = link_tx;
            forwarder.run(link_rx).await;
        });
        Ok(EmbeddedSource { config: self.config, stop, task: Some(task) })
    }
}

#[async_trait]
impl PushSource for EmbeddedSource {
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

/// A TLS acceptor from `connector.embedded.tls` (errors name the field and the file).
fn tls_acceptor(tls: &ServerTls) -> ConnectorResult<tokio_rustls::TlsAcceptor> {
    let config =
        tls.rustls_config("connector.embedded.tls", Vec::new()).map_err(|e| ConnectorError::fatal("TLS", e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Terminates TLS on the public listener and relays each connection to rumqttd.
struct TlsFront {
    acceptor: tokio_rustls::TlsAcceptor,
    backend: SocketAddr,
    connections: Arc<tokio::sync::Semaphore>,
    handshake_timeout: Duration,
    stop: CancellationToken,
}

impl TlsFront {
    async fn run(self, listener: tokio::net::TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    warn!(error = %e, "embedded TLS listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                debug!(%peer, "embedded TLS listener: max_connections reached, connection closed");
                continue;
            };
            let acceptor = self.acceptor.clone();
            let (backend, timeout) = (self.backend, self.handshake_timeout);
            tokio::spawn(async move {
                let _permit = permit;
                let _ = stream.set_nodelay(true);
                let mut tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "embedded TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "embedded TLS handshake timed out");
                        return;
                    }
                };
                let mut plain = match tokio::net::TcpStream::connect(backend).await {
                    Ok(plain) => plain,
                    Err(e) => {
                        warn!(error = %e, "embedded broker unreachable behind the TLS listener");
                        return;
                    }
                };
                let _ = plain.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
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
                        in_flight.push_back(deliver_until_done(self.inbound.clone(), message));
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

/// Rumqttd already PUBACKed the device, so nothing can hand the message back: core's failure
/// handling retries while Danube is unavailable (until the publisher closes at the end of the
/// drain) and applies `failure.policy` to a message that cannot be delivered, `nack` acting as
/// `stop`.
async fn deliver_until_done(inbound: Inbound, message: Message) {
    let topic = message.topic.clone();
    match inbound.deliver(message, Handback::Impossible).await {
        Delivery::Published | Delivery::DeadLettered => {}
        Delivery::Refused | Delivery::Stopped => {
            error!(%topic, "a message acked to its device cannot be delivered; the connector stops and the message is lost")
        }
        Delivery::NotDelivered { reason } => {
            warn!(%topic, %reason, "stopping: message not in Danube is lost")
        }
    }
}
