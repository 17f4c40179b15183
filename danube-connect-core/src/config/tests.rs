//! Tests of loading and validation.

use super::*;
use std::time::Duration;

use figment::providers::Serialized;
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Demo {
    listen: String,
    password: Option<Secret>,
}
impl Validate for Demo {}

#[test]
fn file_then_extra_layers_override_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "name = \"demo\"\n[retry]\nmax_attempts = 9\n[connector]\nlisten = \"a\"\n").expect("write");
    let extra = Figment::new().merge(Serialized::default("connector.listen", "b"));
    let cfg = ConnectorConfig::<Demo>::load_from(Some(&file), "DEMO_TEST_NONE", extra).expect("load");
    assert_eq!(cfg.runtime.name, "demo");
    assert_eq!(cfg.runtime.retry.max_attempts, 9);
    assert_eq!(cfg.connector.listen, "b");
}

#[test]
fn yaml_files_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        "name: yaml-demo\nsink:\n  batch:\n    max_records: 7\n    linger: 250ms\nconnector:\n  listen: y\n",
    )
    .expect("write");
    let cfg = ConnectorConfig::<Demo>::load_from(Some(&file), "DEMO_TEST_NONE", Figment::new()).expect("load");
    assert_eq!(cfg.runtime.name, "yaml-demo");
    assert_eq!(cfg.runtime.sink.batch.max_records, 7);
    assert_eq!(cfg.runtime.sink.batch.linger, Duration::from_millis(250));
    assert_eq!(cfg.connector.listen, "y");
}

#[test]
fn wrong_type_names_the_field() {
    let extra = Figment::new().merge(Serialized::default("retry.max_attempts", "many"));
    let err = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect_err("must fail");
    let text = crate::error::error_chain(&err);
    assert!(text.contains("retry.max_attempts"), "{text}");
}

#[test]
fn bad_service_url_names_the_field() {
    let extra = Figment::new().merge(Serialized::default("danube.service_url", "127.0.0.1:6650"));
    let err = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect_err("must fail");
    assert!(err.to_string().contains("danube.service_url"), "{err}");
}

#[test]
fn secrets_are_redacted_in_debug_and_check_output() {
    let extra = Figment::new().merge(Serialized::default("connector.password", "hunter2"));
    let cfg = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect("load");
    assert_eq!(cfg.connector.password.as_ref().map(Secret::expose), Some("hunter2"));
    assert!(!format!("{cfg:?}").contains("hunter2"));
    let text = cfg.to_redacted_toml();
    assert!(!text.contains("hunter2") && text.contains("<redacted>"), "{text}");
}

#[test]
fn secret_from_file_is_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("s");
    std::fs::write(&file, "s3cret\n").expect("write");
    let extra = Figment::new().merge(Serialized::default("connector.password", serde_json::json!({ "file": file })));
    let cfg = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect("load");
    assert_eq!(cfg.connector.password.as_ref().map(Secret::expose), Some("s3cret"));
}

#[test]
fn connector_prefix_variables_override_nested_fields() {
    std::env::set_var("DEMOENVTEST_LISTEN", "from-env");
    std::env::set_var("DEMOENVTEST_PASSWORD", "pw");
    let cfg = ConnectorConfig::<Demo>::load_from(None, "DEMOENVTEST", Figment::new()).expect("load");
    assert_eq!(cfg.connector.listen, "from-env");
    assert_eq!(cfg.connector.password.as_ref().map(Secret::expose), Some("pw"));
    std::env::remove_var("DEMOENVTEST_LISTEN");
    std::env::remove_var("DEMOENVTEST_PASSWORD");
}

#[test]
fn unknown_top_level_section_is_refused() {
    let extra = Figment::new().merge(Serialized::default("retyr.max_attempts", 3));
    let err = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect_err("typo");
    assert!(err.to_string().contains("retyr"), "{err}");
}

#[test]
fn worker_threads_outside_its_range_names_the_field() {
    let extra = Figment::new().merge(Serialized::default("runtime.worker_threads", 0));
    let err = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect_err("zero workers");
    assert!(err.to_string().contains("runtime.worker_threads"), "{err}");
    let extra = Figment::new().merge(Serialized::default("runtime.worker_threads", 2));
    let cfg = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect("two workers");
    assert_eq!(cfg.runtime.runtime.worker_threads, Some(2));
    assert_eq!(
        ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", Figment::new())
            .expect("default")
            .runtime
            .runtime
            .worker_threads,
        None
    );
}

#[test]
fn topic_names_must_have_a_namespace() {
    assert!(validate_topic("f", "/default/t").is_ok());
    assert!(validate_topic("f", "default/t").is_err());
    assert!(validate_topic("f", "/t").is_err());
    let error = validate_topic("connector.topic", "/default/public.users").unwrap_err().to_string();
    assert!(error.contains("connector.topic") && error.contains("`.`"), "{error}");
    assert!(validate_topic("f", "/default/a_b-9").is_ok());
}
