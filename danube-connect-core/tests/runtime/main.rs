//! Runtime integration tests over real gRPC against the embedded development broker.

mod common;
mod failure;
mod key_order;
mod run_time_schema;
mod schema;
mod shutdown;
mod sink;
mod source;
mod tls_auth;
mod topics;
mod transforms;
