//! Broker configuration.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Default cap on unacknowledged messages per subscription (Danube's
/// `dispatch.max_unacked_messages`).
pub const DEFAULT_MAX_UNACKED: usize = 10;
/// Default maximum payload size accepted by `SendMessage` (10 MB, as in Danube).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// What happens to a message that was redelivered `max_redeliveries` times and
/// still not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PoisonPolicy {
    /// Keep the message unacknowledged and stop dispatching on the subscription
    /// until it is acknowledged (Danube's default).
    #[default]
    Block,
    /// Discard the message (it counts as settled, not as acknowledged).
    Drop,
    /// Append the message to the given dead-letter topic (created on demand in
    /// the same broker, namespace created if needed) and settle it.
    DeadLetter(String),
}

/// Configuration of an [`EmbeddedBroker`](crate::EmbeddedBroker).
///
/// All fields are public; build it with `BrokerConfig { field: .., ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Address to listen on. Port 0 picks an ephemeral port (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// When set, topics, messages, subscriptions, acknowledgements, schemas and
    /// client registrations are appended to files in this directory and
    /// reloaded at start.
    pub data_dir: Option<PathBuf>,
    /// Maximum unacknowledged messages outstanding per subscription on a
    /// reliable topic (default 10).
    pub max_unacked_messages: usize,
    /// Time a delivered message may stay unacknowledged before it is scheduled
    /// for redelivery (default 30 s).
    pub ack_timeout: Duration,
    /// Maximum number of redeliveries of one message before the poison policy
    /// applies (default 5).
    pub max_redeliveries: u32,
    /// First redelivery delay; doubled on every further redelivery (default 1 s).
    pub redelivery_base_delay: Duration,
    /// Cap of the redelivery delay, also the cap of a nack's `delay_ms` (default 60 s).
    pub redelivery_max_delay: Duration,
    /// Policy for messages that exceeded `max_redeliveries` (default [`PoisonPolicy::Block`]).
    pub poison_policy: PoisonPolicy,
    /// Maximum payload size in bytes (default 10 MB, as Danube's). As on Danube, a request
    /// over 4 MiB ([`MAX_REQUEST_SIZE`](crate::MAX_REQUEST_SIZE)) is refused before this
    /// check, with `OutOfRange`.
    pub max_message_size: usize,
    /// Namespaces that exist at start (default `["default"]`).
    pub namespaces: Vec<String>,
    /// TLS on the gRPC listener, optionally with client-certificate verification
    /// (default: plaintext).
    pub tls: Option<TlsConfig>,
    /// When set, every call must carry `authorization: Bearer <token>` with this
    /// token, or it is refused with `Unauthenticated` (default: no authentication).
    pub auth_token: Option<AuthToken>,
}

/// TLS settings of the gRPC listener, as PEM contents (so tests can pass
/// certificates generated in memory).
#[derive(Clone)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Server private key (PEM).
    pub key_pem: Vec<u8>,
    /// CA certificate(s) (PEM) that client certificates must chain to. When
    /// set, a client without a valid certificate is refused (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("client_ca_pem", &self.client_ca_pem.as_ref().map(|ca| ca.len()))
            .finish()
    }
}

/// The bearer token the broker accepts; redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        AuthToken(token.into())
    }

    /// The token itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            data_dir: None,
            max_unacked_messages: DEFAULT_MAX_UNACKED,
            ack_timeout: Duration::from_secs(30),
            max_redeliveries: 5,
            redelivery_base_delay: Duration::from_secs(1),
            redelivery_max_delay: Duration::from_secs(60),
            poison_policy: PoisonPolicy::Block,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            namespaces: vec!["default".to_string()],
            tls: None,
            auth_token: None,
        }
    }
}

impl BrokerConfig {
    /// Delay before the `n`-th redelivery (1-based): `base * 2^(n-1)`, capped.
    pub(crate) fn backoff(&self, redelivery: u32) -> Duration {
        let exp = redelivery.saturating_sub(1).min(20);
        let delay = self.redelivery_base_delay.saturating_mul(1u32 << exp);
        delay.min(self.redelivery_max_delay)
    }
}
