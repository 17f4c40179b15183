//! Starts a real Kafka-API broker (`tansu`, in-memory storage) on a free loopback port.
//!
//! ```text
//! tansu broker --listener-url tcp://127.0.0.1:PORT \
//!     --advertised-listener-url tcp://127.0.0.1:PORT --storage-engine memory://tansu/
//! ```
//!
//! Installed by `scripts/test.sh` (`cargo install tansu --version 0.6.0 --locked
//! --features dynostore` into `/root/.cache/danube-connect/tools`). The broker is ready
//! when it answers a Kafka `ApiVersions` request; it is killed when the handle drops.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::{find_binary, HarnessError};

const INSTALL: &str =
    "cargo install tansu --version 0.6.0 --locked --features dynostore --root /root/.cache/danube-connect/tools";

/// Where `scripts/test.sh` installs tansu (checked before PATH).
const TOOL_DIRS: &[&str] = &["/root/.cache/danube-connect/tools/bin"];

/// A running tansu broker; killed when dropped.
pub struct Tansu {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts tansu on a free port and waits until it answers Kafka requests.
    pub async fn start() -> Result<Self, HarnessError> {
        let binary = match std::env::var_os("TANSU_BIN") {
            Some(path) => PathBuf::from(path),
            None => find_binary("tansu", TOOL_DIRS, INSTALL)?,
        };
        let dir = tempfile::tempdir().map_err(|source| HarnessError::Io { what: "tempdir".into(), source })?;
        let log = dir.path().join("tansu.log");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log_file =
            std::fs::File::create(&log).map_err(|source| HarnessError::Io { what: "tansu log".into(), source })?;
        let log_err = log_file.try_clone().map_err(|source| HarnessError::Io { what: "tansu log".into(), source })?;
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .current_dir(dir.path())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|source| HarnessError::Io { what: format!("spawn {}", binary.display()), source })?;
        let mut tansu = Self { child: Some(child), binary, port, log, _dir: dir };
        tansu.wait_ready(Duration::from_secs(30)).await?;
        Ok(tansu)
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates `topic` with `partitions` partitions (`tansu topic create`, the binary this
    /// broker runs).
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), HarnessError> {
        let what = format!("tansu topic create {topic}");
        let output = Command::new(&self.binary)
            .args(["topic", "create", topic, "--partitions", &partitions.to_string(), "--broker"])
            .arg(format!("tcp://{}", self.bootstrap()))
            .output()
            .map_err(|source| HarnessError::Io { what: what.clone(), source })?;
        if output.status.success() {
            return Ok(());
        }
        let status = format!("exited with {}", output.status);
        let what = format!("{what} {status}: {}", String::from_utf8_lossy(&output.stderr));
        Err(HarnessError::Io { what, source: std::io::Error::other(status) })
    }

    /// The broker's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        let mut last = String::from("no answer yet");
        while started.elapsed() < timeout {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(HarnessError::NotReady {
                        what: "tansu".into(),
                        seconds: timeout.as_secs(),
                        detail: format!("exited with {status}: {}", self.log()),
                    });
                }
            }
            let port = self.port;
            match tokio::task::spawn_blocking(move || api_versions(port)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(HarnessError::NotReady {
            what: "tansu".into(),
            seconds: timeout.as_secs(),
            detail: format!("{last}; log: {}", self.log()),
        })
    }
}

/// Sends a Kafka `ApiVersions` v0 request and reads a well-formed reply.
fn api_versions(port: u16) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let client_id = b"testkit";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // api key: ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes()); // api version 0
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    stream.write_all(&request)?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let size = i32::from_be_bytes(size);
    if !(6..=1 << 20).contains(&size) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("reply size {size}")));
    }
    let mut reply = vec![0u8; size as usize];
    stream.read_exact(&mut reply)?;
    let correlation = i32::from_be_bytes([reply[0], reply[1], reply[2], reply[3]]);
    let error_code = i16::from_be_bytes([reply[4], reply[5]]);
    if correlation != 7 || error_code != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("correlation {correlation}, error {error_code}"),
        ));
    }
    Ok(())
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
