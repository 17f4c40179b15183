//! Configuration errors name the field; secrets are redacted.

#[test]
fn check_names_the_bad_field() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_danube-kafka-bridge"))
        .arg("--check")
        .env("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{danube_topic="/default/x"}]"#)
        .output()
        .expect("run --check");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("connector.import.mappings[0].topics"), "{stderr}");
}

/// A cross-section check (neither import mappings nor `sink.topics`) fails `--check` as it
/// fails the start.
#[test]
fn check_refuses_a_bridge_with_nothing_to_do() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_danube-kafka-bridge"))
        .arg("--check")
        .env_remove("CONNECTOR_SINK__TOPICS")
        .output()
        .expect("run --check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("connector.import.mappings") && stderr.contains("nothing to do"), "{stderr}");
    let (code, stderr) = run_to_exit(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("nothing to do"), "{stderr}");
}

#[test]
fn check_redacts_secret_properties() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_danube-kafka-bridge"))
        .arg("--check")
        .env("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["orders"], danube_topic="/default/orders"}]"#)
        .env("KAFKA_BRIDGE_KAFKA__PROPERTIES__SASL_PASSWORD", "hunter2")
        .env("KAFKA_BRIDGE_KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
        .env("KAFKA_BRIDGE_KAFKA__PROPERTIES__SSL_KEY_PASSWORD", "key-pass-42")
        .env("KAFKA_BRIDGE_EXPORT__PROPERTIES__SASL_USERNAME", r#"{env="KAFKA_TEST_USER"}"#)
        .env("KAFKA_TEST_USER", "user-from-env-7")
        .env("KAFKA_BRIDGE_KAFKA__PROPERTIES__SSL_KEY_LOCATION", "/etc/kafka/client.key")
        .output()
        .expect("run --check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("security.protocol") && stdout.contains("SASL_PLAINTEXT"), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stdout.contains("key-pass-42"), "{stdout}");
    assert!(!stdout.contains("user-from-env-7"), "a value read from the environment is a secret: {stdout}");
    assert!(stdout.contains("/etc/kafka/client.key"), "a path is shown: {stdout}");
}

/// Runs the bridge (no `--check`) with `env` and returns (exit code, stderr); fails the test
/// if it is still running after 30 s.
fn run_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stderr");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_danube-kafka-bridge"));
    command.stdout(std::process::Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
    // Nothing listens here: a config error must be reported before any connection attempt.
    command.env("DANUBE_SERVICE_URL", "http://127.0.0.1:9").env("CONNECTOR_OPS__ENABLED", "false");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn bridge");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("bridge still running with a bad config: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn bad_bootstrap_server_stops_startup_naming_the_field() {
    let (code, stderr) = run_to_exit(&[
        ("KAFKA_BRIDGE_KAFKA__BOOTSTRAP_SERVERS", "kafka-without-port"),
        ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["orders"]}]"#),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("connector.kafka.bootstrap_servers"), "{stderr}");
}

#[test]
fn reserved_consumer_property_stops_startup_naming_the_field() {
    let (code, stderr) = run_to_exit(&[
        ("KAFKA_BRIDGE_KAFKA__PROPERTIES__ENABLE_AUTO_COMMIT", "true"),
        ("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{topics=["orders"]}]"#),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("connector.kafka.properties.enable.auto.commit"), "{stderr}");
}

#[test]
fn invalid_import_regex_stops_startup_naming_the_field() {
    let (code, stderr) =
        run_to_exit(&[("KAFKA_BRIDGE_IMPORT__MAPPINGS", r#"[{pattern="orders.(", danube_topic="/default/x"}]"#)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("connector.import.mappings[0].pattern"), "{stderr}");
}
