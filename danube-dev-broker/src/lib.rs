//! # danube-dev-broker
//!
//! An in-process, Danube-compatible **development** broker for tests,
//! examples and local trials. It is **not** a replacement for Danube: one
//! process, no cluster, no retention, no admin API, and persistence (when
//! enabled) is a pair of append-only files. TLS, mutual TLS and a bearer
//! token are optional ([`BrokerConfig::tls`], [`BrokerConfig::auth_token`]);
//! by default it is plaintext without authentication.
//!
//! It serves the Danube wire protocol (`danube-core` 0.16) so that the real
//! `danube-client` 0.16 talks to it unchanged:
//! `ProducerService`, `ConsumerService`, `Discovery`, `HealthCheck` and
//! `danube_schema.SchemaRegistry`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use danube_dev_broker::EmbeddedBroker;
//! let broker = EmbeddedBroker::start_default().await?;
//! // connect danube-client to broker.url() ...
//! let stored = broker.messages("/default/orders");
//! # let _ = stored; Ok(()) }
//! ```
//!
//! ## Behaviour (follows the real broker)
//! - Topics are `/namespace/topic`; a fresh broker has only the `default`
//!   namespace. Producers auto-create topics; creation in a missing namespace
//!   fails with `Unavailable("Unable to find the namespace ...")`.
//! - `Discovery/TopicLookup` always answers `Connect` with this broker's URL;
//!   `TopicPartitions` returns `[topic]`, the `-part-N` names of a partitioned
//!   topic, or an empty list for an unknown topic.
//! - `SendMessage` with an unknown producer id is `NotFound`. The topic's
//!   dispatch strategy is the one of the producer that created it; a producer
//!   asking for the other one is refused with `FailedPrecondition` ("Producer
//!   requested dispatch strategy does not match topic strategy").
//! - Topic names: each part of `/namespace/topic` holds letters, digits, `_`
//!   and `-` only (`InvalidArgument`, "has an invalid format"), also in
//!   `Discovery` look-ups.
//! - Like Danube, which finds a topic's partitions by a prefix scan of its
//!   metadata store, a topic `X` cannot be created while any topic whose name
//!   starts with `X` exists (`X-dlq`, `Xy`: `AlreadyExists`, "partitioned
//!   topics with this base name already exist"), and `X-part-N` cannot be
//!   created while a plain topic `X` exists.
//! - A new subscription starts at the end of the topic; subscriptions on
//!   reliable topics are durable.
//! - Reliable dispatch: at most `max_unacked_messages` (default 10)
//!   unacknowledged messages per subscription; ack timeout (default 30 s)
//!   then redelivery after an exponential delay from 1 s up to 60 s; at most
//!   5 redeliveries, then the [`PoisonPolicy`] (default Block). A nack's
//!   `delay_ms` is the minimum delay, capped at 60 s. Unacknowledged messages
//!   of a consumer whose stream ends are redelivered to the next consumer.
//! - Non-reliable dispatch: fire and forget, no ack tracking; messages
//!   published while a subscription has no connected consumer are lost.
//! - Subscription types Exclusive, Shared (round robin), Failover (first
//!   connected consumer in subscription order is active), KeyShared (same
//!   routing key to the same consumer, key filters are `*`/`?` globs).
//! - Health checks answer `OK` for known producer/consumer ids and `CLOSE`
//!   otherwise.
//! - With [`TlsConfig`] the listener serves TLS and [`EmbeddedBroker::url`] is
//!   `https://`; with a client CA, a client without a certificate signed by it
//!   fails the handshake (mutual TLS).
//! - With an [`AuthToken`], every call must carry `authorization: Bearer
//!   <token>` (what `danube-client` 0.16 sends for `with_token` and
//!   `with_token_supplier`); a call without it, with another token or another
//!   scheme is refused with `Unauthenticated`.
//! - A request over 4 MiB ([`MAX_REQUEST_SIZE`], gRPC's default decode limit,
//!   which Danube v0.15 keeps although its `max_message_size` is 10 MB) is
//!   refused with `OutOfRange`, "decoded message length too large".
//! - The schema registry answers `GetSchema` and `GetLatestSchema` as Danube
//!   v0.15 does: with the JSON of Danube's own `SchemaDefinition` enum
//!   (`{"Avro":{"raw_schema":"...","fingerprint":"..."}}`, `{"JsonSchema":...}`,
//!   `{"Protobuf":{"raw_proto":...,"message_name":"DefaultMessage",...}}`,
//!   `"String"`, `"Number"`, `"Bytes"`), not with the registered bytes.
//!
//! ## Deviations and simplifications
//! The conformance suite (`danube-connect-testkit` `broker`, and each
//! connector's `tests/conformance.rs`) runs the same test bodies on this broker
//! and on Danube v0.15.1; what it found that this broker deliberately does not
//! copy (see `docs/running-on-danube.md`):
//! - Danube v0.15.1 cannot restart on its own data once it has run for a few
//!   seconds (its Raft state machine lives in memory and its log is purged
//!   after the first snapshot); this broker restarts with its state.
//! - Danube's reliable subscriptions stop receiving for good when their
//!   backlog outgrows the WAL's live broadcast and replay cache (about 2,000
//!   messages beyond the dispatch window); this broker keeps dispatching.
//! - No admin API and no Prometheus exporter.
//! - The bearer token is compared with one configured string; the real broker
//!   verifies a JWT (signature, expiry) and maps it to a principal. A JWT is
//!   accepted here when it equals the configured token, whatever its claims.
//! - Payloads above `max_message_size` (10 MB) are refused with
//!   `InvalidArgument` (not retried by the client); the real broker's exact
//!   code is not documented.
//! - Incompatible schema registration fails with `FailedPrecondition`
//!   (the real broker reports `Internal` with the reason in the message).
//!   Definitions are compiled and compatibility is checked with
//!   `danube_connect_common` (the connectors' own codecs and rules: Avro
//!   resolution, JSON Schema and Protobuf simplifications), which need not
//!   match the real registry's checks exactly; see the `schema` module.
//!   A definition that does not compile is refused with `InvalidArgument`.
//! - A second consumer with another name on an Exclusive subscription is
//!   refused with `PermissionDenied` while the holder has an open stream (or
//!   subscribed less than 12 s ago without opening one yet); after that, the
//!   holder is evicted.
//! - Subscribing with another type to an existing subscription keeps the
//!   existing type.
//! - KeyShared picks, like Danube, `fnv1a(key) % eligible` among the
//!   connected consumers whose filters accept the key (the key falls back to
//!   the producer name). A message that no connected consumer accepts waits
//!   for one (and counts against the dispatch window). Redelivered messages
//!   can overtake later messages of the same key.
//! - Topics made by the test helpers (`publish`, `create_partitioned_topic`)
//!   are reliable.
//! - `ProducerAccessMode::Exclusive` is not enforced.
//! - Persistence never compacts; deleted schema versions are not persisted.
//!   After a process restart, in-flight messages are delivered again and the
//!   redelivery counters start over.

mod auth;
mod broker;
mod config;
mod error;
mod glob;
mod message;
mod persist;
mod schema;
mod server;
mod service;
mod state;
mod subscription;
mod topic;

pub use broker::EmbeddedBroker;
pub use config::{AuthToken, BrokerConfig, PoisonPolicy, TlsConfig, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_UNACKED};
pub use error::BrokerError;
pub use message::StoredMessage;
pub use server::MAX_REQUEST_SIZE;
