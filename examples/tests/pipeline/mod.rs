//! Set-up shared by the example pipeline tests: the workspace's connector binaries, run with
//! a pipeline's config file, and started until they log that they are at work.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use danube_connect_testkit::process::ConnectorProcess;

/// A connector binary of the workspace (built by `cargo build --workspace`).
pub(crate) fn binary(name: &str) -> PathBuf {
    danube_connect_testkit::process::workspace_binary(name)
}

/// The workspace root, where the pipelines' config paths start.
pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The environment of a connector run with `{pipeline}/{config}` plus `env`.
pub(crate) fn spawn_env(pipeline: &str, config: &str, env: &[(&str, String)]) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    vars.insert("CONNECTOR_CONFIG_FILE".into(), format!("{pipeline}/{config}"));
    vars
}

/// Starts `binary_name` and waits until it is ready and has logged `wait_for`.
pub(crate) async fn start(binary_name: &str, vars: &HashMap<String, String>, wait_for: &str) -> ConnectorProcess {
    let mut process = ConnectorProcess::spawn(&binary(binary_name), vars).expect("spawn");
    if let Err(e) = process.wait_ready(Duration::from_secs(60)).await {
        panic!("{binary_name} not ready: {e}\n{}", process.log());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !process.log().contains(wait_for) {
        assert!(Instant::now() < deadline, "{binary_name} never logged `{wait_for}`: {}", process.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process
}

/// Runs `--check` on each `(binary, config file in pipeline, text its output must contain)`,
/// from the workspace root as a user would.
pub(crate) fn check_configs(pipeline: &str, checks: &[(&str, &str, &str)]) {
    std::env::set_current_dir(workspace()).expect("cd to the workspace root");
    for (binary_name, config, expect) in checks {
        let output = std::process::Command::new(binary(binary_name))
            .args(["--check", "--config", &format!("{pipeline}/{config}")])
            .output()
            .expect("run --check");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains(expect),
            "{binary_name} --check {config}: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
