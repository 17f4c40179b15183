//! The example pipelines' configuration files are valid for their connector binaries.
//!
//! The binaries belong to other packages of the workspace: `scripts/test.sh` builds them
//! (`cargo build --workspace`) before the tests run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's `target/<profile>` dir, where this test binary and the connectors live.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is not built; run `cargo build --workspace` first", path.display());
    path
}

fn check(binary_name: &str, config: &str) -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(binary(binary_name))
        .args(["--check", "--config", config])
        .current_dir(&workspace)
        .output()
        .expect("run --check");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{binary_name} --check {config} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn webhook_analytics_configs_are_valid() {
    let dir = "examples/pipelines/webhook-analytics";
    let source = check("danube-http-source", &format!("{dir}/http-source.toml"));
    assert!(source.contains("orders-value") && source.contains("json"), "{source}");
    let analytics = check("danube-clickhouse", &format!("{dir}/clickhouse.toml"));
    assert!(analytics.contains("/default/orders"), "{analytics}");
    let export = check("danube-kafka-bridge", &format!("{dir}/kafka-bridge.toml"));
    assert!(export.contains("/default/orders"), "{export}");
}
