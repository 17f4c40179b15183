//! # danube-http-sink
//!
//! Delivers Danube records to HTTP endpoints the way a webhook platform does: a stable
//! message id and attempt number on every request, Standard Webhooks signatures, retries
//! with `Retry-After`, a circuit breaker per endpoint, and an ack to Danube only after the
//! receiver answered 2xx (or the record was dead-lettered).
//!
//! Modules: [`config`] (the `[connector]` section), [`connector`] (the [`HttpSink`]),
//! [`template`] (URL templates), [`body`] (raw, envelope, batch bodies), [`signature`]
//! (Standard Webhooks and HMAC), [`outcome`] (status classes, `Retry-After`), [`breaker`]
//! (circuit breaker), [`ssrf`] (private-target guard).

pub mod body;
pub mod breaker;
pub mod config;
pub mod connector;
mod error;
mod metrics;
pub mod outcome;
pub mod signature;
pub mod ssrf;
pub mod template;

pub use config::HttpSinkConfig;
pub use connector::{HttpSink, HttpSinkFactory};
