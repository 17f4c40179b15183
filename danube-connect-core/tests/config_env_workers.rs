//! `CONNECTOR_RUNTIME__WORKER_THREADS`, in a process of its own (it sets env vars).

use danube_connect_core::config::{ConnectorConfig, Validate};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Empty {}

impl Validate for Empty {}

#[test]
fn worker_threads_come_from_the_environment_and_zero_names_the_field() {
    std::env::set_var("CONNECTOR_RUNTIME__WORKER_THREADS", "1");
    let config = ConnectorConfig::<Empty>::load(None, "EMPTY").expect("loads");
    assert_eq!(config.runtime.runtime.worker_threads, Some(1));
    std::env::set_var("CONNECTOR_RUNTIME__WORKER_THREADS", "0");
    let error = ConnectorConfig::<Empty>::load(None, "EMPTY").expect_err("zero workers");
    assert!(error.to_string().contains("runtime.worker_threads"), "{error}");
    std::env::remove_var("CONNECTOR_RUNTIME__WORKER_THREADS");
}
