//! Running a connector binary under test: start with env vars, wait for `/readyz`,
//! stop with SIGTERM (graceful drain) or SIGKILL (crash).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ports::free_port;
use crate::HarnessError;

/// A running connector process; killed with SIGKILL when dropped.
pub struct ConnectorProcess {
    child: Option<Child>,
    /// The ops port (`/metrics`, `/healthz`, `/readyz`).
    pub ops_port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ConnectorProcess {
    /// Starts `binary` with `env` (plus `CONNECTOR_OPS__LISTEN` on a free port and
    /// `CONNECTOR_NAME` unless given). stderr goes to a log file read by [`Self::log`].
    pub fn spawn(binary: &Path, env: &HashMap<String, String>) -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir().map_err(|source| HarnessError::Io { what: "tempdir".into(), source })?;
        let log = dir.path().join("connector.log");
        let log_file =
            std::fs::File::create(&log).map_err(|source| HarnessError::Io { what: "log file".into(), source })?;
        let ops_port = free_port();
        let mut command = Command::new(binary);
        command
            .env("CONNECTOR_OPS__LISTEN", format!("127.0.0.1:{ops_port}"))
            .env("CONNECTOR_SHUTDOWN__TIMEOUT", "20s")
            .env("RUST_LOG", std::env::var("DANUBE_CONNECT_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .map_err(|source| HarnessError::Io { what: format!("spawn {}", binary.display()), source })?;
        Ok(Self { child: Some(child), ops_port, log, _dir: dir })
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let url = format!("http://127.0.0.1:{}/readyz", self.ops_port);
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.try_wait() {
                return Err(HarnessError::NotReady {
                    what: "connector".into(),
                    seconds: timeout.as_secs(),
                    detail: format!("exited with {status}: {}", self.log()),
                });
            }
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(HarnessError::NotReady { what: "connector".into(), seconds: timeout.as_secs(), detail: self.log() })
    }

    /// Waits until the sink runtime logged `consuming` (its subscription is live). Danube
    /// subscriptions start at the end of a topic, so a test publishes only after this.
    pub async fn wait_consuming(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        while !self.log().contains("consuming") {
            if started.elapsed() > timeout || self.try_wait().is_some() {
                return Err(HarnessError::NotReady {
                    what: "sink subscription".into(),
                    seconds: timeout.as_secs(),
                    detail: self.log(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGKILL (a crash) and reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ConnectorProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The path of a workspace binary (e.g. `danube-http-source`) next to the running test's
/// own `target/<profile>` dir. Binaries of other packages are not built for a test by
/// cargo: `scripts/test.sh` runs `cargo build --workspace` first. Panics with that advice
/// when the binary is missing.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is not built; run `cargo build --workspace` first", path.display());
    path
}
