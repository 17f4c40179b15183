//! Environment layering of the runtime config, in its own process (it sets env vars).

use danube_connect_core::config::{ConnectorConfig, Validate};
use danube_connect_core::schema::PayloadInput;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Empty {}

impl Validate for Empty {}

#[test]
fn schema_bindings_and_sink_settings_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("order.avsc");
    std::fs::write(&file, r#"{"type":"record","name":"O","fields":[{"name":"id","type":"string"}]}"#).expect("write");
    std::env::set_var(
        "CONNECTOR_SCHEMAS",
        format!(
            r#"[{{topic="/default/orders", subject="orders-value", type="avro", file="{}", input="json"}}]"#,
            file.display()
        ),
    );
    std::env::set_var("CONNECTOR_SINK__DECODE_SCHEMAS", "false");
    let config = ConnectorConfig::<Empty>::load(None, "EMPTY").expect("loads");
    let binding = &config.runtime.schemas[0];
    assert_eq!(binding.topic, "/default/orders");
    assert_eq!(binding.subject, "orders-value");
    assert_eq!(binding.input, PayloadInput::Json);
    assert!(binding.validate);
    assert!(!config.runtime.sink.decode_schemas);

    std::env::set_var("CONNECTOR_SCHEMAS", r#"[{topic="orders", subject="s"}]"#);
    let error = ConnectorConfig::<Empty>::load(None, "EMPTY").expect_err("bad topic");
    assert!(error.to_string().contains("schemas[0].topic"), "{error}");
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Sized {
    max_body_bytes: usize,
}

impl Validate for Sized {}

#[test]
fn a_wrong_type_in_a_prefixed_variable_names_the_field_as_written_in_a_file() {
    std::env::set_var("SIZEDTEST_MAX_BODY_BYTES", "lots");
    let error = ConnectorConfig::<Sized>::load(None, "SIZEDTEST").expect_err("bad value");
    let text = error.to_string();
    assert!(text.contains("connector.max_body_bytes"), "{text}");
    assert!(text.contains("lots"), "the bad value is shown: {text}");
}
