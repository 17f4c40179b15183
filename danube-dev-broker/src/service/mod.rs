//! gRPC service implementations (thin adapters over [`BrokerState`](crate::state::BrokerState)).

pub(crate) mod consumer;
pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod producer;
pub(crate) mod schema;
