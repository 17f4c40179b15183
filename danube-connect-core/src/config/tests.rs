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
fn wrong_type_in_the_connector_section_names_the_field() {
    let extra = Figment::new().merge(Serialized::default("connector.listen", vec![1, 2]));
    let err = ConnectorConfig::<Demo>::load_from(None, "DEMO_TEST_NONE", extra).expect_err("must fail");
    match err {
        ConfigError::Invalid { field, .. } => assert_eq!(field, "connector.listen"),
        other => panic!("expected an invalid field, got {other:?}"),
    }
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

/// A self-signed certificate and its key, written as PEM files in `dir`.
fn pem_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.key_pair.serialize_pem()).expect("write key");
    (cert, key)
}

fn load_danube(file_text: &str, extra: Figment) -> Result<ConnectorConfig<Demo>, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, file_text).expect("write");
    ConnectorConfig::<Demo>::load_from(Some(&file), "DEMO_TEST_NONE", extra)
}

fn invalid_field(result: Result<ConnectorConfig<Demo>, ConfigError>) -> (String, String) {
    match result {
        Err(ConfigError::Invalid { field, message }) => (field, message),
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[test]
fn danube_tls_takes_the_shared_client_type_and_the_old_keys_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pem_files(dir.path());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());

    let new = format!("[danube]\ntls = {{ ca = {cert:?}, client_cert = {cert:?}, client_key = {key:?} }}\n");
    let cfg = load_danube(&new, Figment::new()).expect("new spelling");
    assert_eq!(cfg.runtime.danube.tls.ca.as_deref(), Some(std::path::Path::new(&cert)));
    assert_eq!(cfg.runtime.danube.tls.client_key.as_deref(), Some(std::path::Path::new(&key)));

    // The old spelling lands in `tls`, and `--check` prints the new one.
    let old = format!("[danube]\ntls_ca = {cert:?}\ntls_cert = {cert:?}\ntls_key = {key:?}\n");
    let cfg = load_danube(&old, Figment::new()).expect("old spelling");
    assert_eq!(cfg.runtime.danube.tls.client_cert.as_deref(), Some(std::path::Path::new(&cert)));
    assert_eq!(cfg.runtime.danube.tls_ca, None);
    let printed = cfg.to_redacted_toml();
    assert!(printed.contains("[danube.tls]") && !printed.contains("tls_ca"), "{printed}");

    // The old keys also come from layers other than the file (the environment's `DANUBE_TLS_CA`).
    let extra = Figment::new().merge(Serialized::default("danube.tls_ca", &cert));
    let cfg = load_danube("", extra).expect("old key from a later layer");
    assert_eq!(cfg.runtime.danube.tls.ca.as_deref(), Some(std::path::Path::new(&cert)));

    // One field in both spellings is refused, naming it.
    let both = format!("[danube]\ntls_ca = {cert:?}\ntls = {{ ca = {cert:?} }}\n");
    let (field, message) = invalid_field(load_danube(&both, Figment::new()));
    assert_eq!(field, "danube.tls.ca");
    assert!(message.contains("danube.tls_ca"), "{message}");
}

#[test]
fn danube_tls_refuses_what_the_client_cannot_do_and_bad_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = pem_files(dir.path());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());

    let roots = format!("[danube.tls]\nca = {cert:?}\nbuiltin_roots = true\n");
    let (field, message) = invalid_field(load_danube(&roots, Figment::new()));
    assert_eq!(field, "danube.tls.builtin_roots");
    assert!(message.contains("only the CA file"), "{message}");

    let no_ca = format!("[danube.tls]\nclient_cert = {cert:?}\nclient_key = {key:?}\n");
    assert_eq!(invalid_field(load_danube(&no_ca, Figment::new())).0, "danube.tls.ca");

    let half = format!("[danube.tls]\nca = {cert:?}\nclient_cert = {cert:?}\n");
    assert_eq!(invalid_field(load_danube(&half, Figment::new())).0, "danube.tls.client_cert");

    // The key file given as the CA: the loader names the field and the file.
    let not_a_cert = format!("[danube]\ntls_ca = {key:?}\n");
    let (field, message) = invalid_field(load_danube(&not_a_cert, Figment::new()));
    assert_eq!(field, "danube.tls.ca");
    assert!(message.contains("key.pem"), "{message}");
}
