//! Integration tests of the PostgreSQL CDC connector against a real PostgreSQL 15 (private
//! cluster per test) and the in-process Danube broker.

mod auth;
mod changes;
mod common;
mod decoder;
mod health;
mod incremental;
mod lifecycle;
mod schema;
mod setup_errors;
mod snapshot;
mod tables;
mod tls;
mod toast;
