//! Runtime integration tests over real gRPC against the embedded development broker.

mod common;
mod sink;
mod schema;
mod source;
