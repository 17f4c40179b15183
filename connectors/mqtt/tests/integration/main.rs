//! Integration tests of `danube-mqtt` against a real Mosquitto, the embedded rumqttd and
//! the in-process Danube broker.

mod client_mode;
mod common;
mod embedded_mode;
mod embedded_security;
mod failure_policy;
mod outbound;
mod security;
mod wildcards;
