//! Configuration errors stop the binary before it serves, naming the field; `--check`
//! redacts secrets; the documented compose configuration is valid.

use std::collections::HashMap;
use std::process::{Command, Output};

use crate::common::BINARY;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args).env("DANUBE_SERVICE_URL", "http://127.0.0.1:1").env_remove("CONNECTOR_CONFIG_FILE");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run the binary")
}

fn assert_rejected(env: &[(&str, &str)], field: &str, hint: &str) {
    let output = run(&["--check"], env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{env:?} accepted: {stderr}");
    // Type errors come from the config loader, which spells environment keys in capitals.
    assert!(stderr.to_lowercase().contains(&field.to_lowercase()), "error does not name `{field}`: {stderr}");
    assert!(stderr.contains(hint), "error does not say `{hint}`: {stderr}");
}

#[test]
fn bad_config_exits_1_naming_the_field() {
    assert_rejected(&[], "connector.endpoints", "at least one endpoint");
    assert_rejected(
        &[("HTTP_SOURCE_ENDPOINTS", r#"[{path="github", topic="/default/github"}]"#)],
        "connector.endpoints[0].path",
        "must start with /",
    );
    assert_rejected(
        &[(
            "HTTP_SOURCE_ENDPOINTS",
            r#"[{path="/a", topic="/default/a"}, {path="/b/{repo}", topic="/default/{rep}"}]"#,
        )],
        "connector.endpoints[1].topic",
        "{rep}",
    );
    assert_rejected(
        &[(
            "HTTP_SOURCE_ENDPOINTS",
            r#"[{path="/a", topic="/default/a", verification={scheme="hmac", secrets=["s"]}}]"#,
        )],
        "connector.endpoints[0].verification.header",
        "signature header",
    );
    assert_rejected(
        &[(
            "HTTP_SOURCE_ENDPOINTS",
            r#"[{path="/a", topic="/default/a", verification={scheme="stripe", secrets=[]}}]"#,
        )],
        "connector.endpoints[0].verification.secrets",
        "at least one secret",
    );
    assert_rejected(
        &[("HTTP_SOURCE_ADMIN__TOKEN", "0123456789abcdef0123")],
        "connector.dynamic.registry_path",
        "required",
    );
    assert_rejected(
        &[("HTTP_SOURCE_ENDPOINTS", r#"[{path="/a", topic="/default/a"}]"#), ("HTTP_SOURCE_MAX_BODY_BYTES", "lots")],
        "max_body_bytes",
        "lots",
    );
}

#[test]
fn bad_config_fails_before_connecting_or_listening() {
    // Not `--check`: the real start path also refuses, with exit code 1.
    let output = run(&[], &[("HTTP_SOURCE_ENDPOINTS", r#"[{path="/e/mine", topic="/default/a"}]"#)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("connector.endpoints[0].path") && stderr.contains("reserved"), "{stderr}");
}

#[test]
fn check_prints_the_config_with_secrets_redacted() {
    let output = run(
        &["--check"],
        &[
            (
                "HTTP_SOURCE_ENDPOINTS",
                r#"[{id="gh", path="/github", topic="/default/github", verification={scheme="github", secrets=["gh-secret-value"]}}]"#,
            ),
            ("HTTP_SOURCE_ADMIN__TOKEN", "admin-token-value-0123"),
            ("HTTP_SOURCE_DYNAMIC__REGISTRY_PATH", "/tmp/registry.jsonl"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("/default/github") && stdout.contains("registry.jsonl"), "{stdout}");
    assert!(!stdout.contains("gh-secret-value") && !stdout.contains("admin-token-value"), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
}

/// Replaces compose's `${VAR:-default}` with the default and `${VAR:?message}` with a stand-in.
fn compose_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        // `${VAR:-default}` takes its default; `${VAR:?message}` (a secret the operator must
        // set) takes a stand-in value, as if it had been set.
        match (inner.split_once(":-"), inner.split_once(":?")) {
            (Some((_, default)), _) => out.push_str(default),
            (None, Some((name, _))) => out.push_str(&format!("test-value-of-{name}")),
            (None, None) => {}
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_compose_file_configuration_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docker/http-source.compose.yml");
    let text = std::fs::read_to_string(path).expect("compose file");
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let environment: HashMap<String, String> =
        serde_yaml::from_value(compose["services"]["http-source"]["environment"].clone()).expect("environment map");
    let env: Vec<(String, String)> = environment.iter().map(|(k, v)| (k.clone(), compose_defaults(v))).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let output = run(&["--check"], &env);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("/default/github-{header.X-GitHub-Event}") && stdout.contains("stripe"), "{stdout}");
    assert!(!stdout.contains("whsec_change_me"), "{stdout}");
}
