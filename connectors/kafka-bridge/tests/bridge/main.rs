//! The bridge against a real Kafka-API broker (tansu, started per test) and the embedded
//! Danube broker, driving the real `danube-kafka-bridge` binary.

mod common;

mod bidirectional;
mod config;
mod durability;
mod export;
mod import;
