//! Integration tests: real HTTP clients against the connector binary and the embedded broker.

mod common;
mod config;
mod dynamic;
mod hardening;
mod limits;
mod outage;
mod routing;
mod schema;
mod signatures;
mod survival;
mod transforms;
