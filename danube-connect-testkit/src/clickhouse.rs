//! Starts a real ClickHouse server for tests: the packaged `clickhouse-server` (18.16 on
//! Debian 12) on free loopback ports, with its data, tmp and log directories in a temp dir,
//! running as the `clickhouse` user. Stopped (SIGKILL) when the handle drops.
//!
//! ```no_run
//! # async fn demo() -> Result<(), danube_connect_testkit::HarnessError> {
//! let server = danube_connect_testkit::clickhouse::ClickHouseServer::start().await?;
//! server.exec("CREATE TABLE t (x UInt32) ENGINE = MergeTree ORDER BY x").await?;
//! assert_eq!(server.query("SELECT count() FROM t").await?, "0");
//! # Ok(()) }
//! ```

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ports::free_port;
use crate::{find_binary, HarnessError};

const INSTALL: &str = "apt-get install -y clickhouse-server clickhouse-client";
const STOCK_CONFIG: &str = "/etc/clickhouse-server/config.xml";
const STOCK_USERS: &str = "/etc/clickhouse-server/users.xml";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A private ClickHouse server on 127.0.0.1.
pub struct ClickHouseServer {
    child: Option<Child>,
    binary: PathBuf,
    config: PathBuf,
    account: Option<(u32, u32)>,
    /// The HTTP port (`http://127.0.0.1:{http_port}`).
    pub http_port: u16,
    /// The native TCP port (for `clickhouse-client --port`).
    pub tcp_port: u16,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl ClickHouseServer {
    /// Starts a server on free ports and waits until `GET /ping` answers.
    pub async fn start() -> Result<Self, HarnessError> {
        let binary = find_binary("clickhouse-server", &["/usr/sbin", "/usr/bin"], INSTALL)?;
        let dir = tempfile::tempdir().map_err(|source| io("create the ClickHouse temp dir", source))?;
        let http_port = free_port();
        let tcp_port = free_port();
        let interserver_port = free_port();
        let config = write_config(dir.path(), http_port, tcp_port, interserver_port)?;
        let account = if running_as_root() {
            let account = clickhouse_account()?;
            chown_recursive(dir.path(), account)?;
            Some(account)
        } else {
            None
        };
        let mut server =
            Self { child: None, binary, config, account, http_port, tcp_port, dir, http: reqwest::Client::new() };
        server.spawn().await?;
        Ok(server)
    }

    /// `http://127.0.0.1:{http_port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The temp dir holding data, logs and config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one statement over HTTP and returns the trimmed response body.
    pub async fn query(&self, sql: &str) -> Result<String, HarnessError> {
        self.query_with_settings(sql, &[]).await
    }

    /// Runs one statement with ClickHouse settings (URL parameters, e.g.
    /// `("allow_experimental_low_cardinality_type", "1")` on 18.16).
    pub async fn query_with_settings(&self, sql: &str, settings: &[(&str, &str)]) -> Result<String, HarnessError> {
        let response = self
            .http
            .post(self.url())
            .query(settings)
            .body(sql.to_string())
            .send()
            .await
            .map_err(|e| io(format!("ClickHouse query `{sql}`"), std::io::Error::other(e)))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| io(format!("ClickHouse response to `{sql}`"), std::io::Error::other(e)))?;
        if !status.is_success() {
            return Err(io(format!("ClickHouse query `{sql}`"), std::io::Error::other(format!("{status}: {body}"))));
        }
        Ok(body.trim().to_string())
    }

    /// Runs one statement whose result does not matter (DDL, inserts).
    pub async fn exec(&self, sql: &str) -> Result<(), HarnessError> {
        self.query(sql).await.map(|_| ())
    }

    /// Stops the server hard (SIGKILL), keeping its data and ports for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data after [`Self::stop`].
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.spawn().await
    }

    /// Whether the server answers `GET /ping`.
    pub async fn is_up(&self) -> bool {
        match self.http.get(format!("{}/ping", self.url())).timeout(Duration::from_secs(2)).send().await {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    }

    /// The server's error log (for failure messages).
    pub fn error_log(&self) -> String {
        let path = self.dir.path().join("log").join("clickhouse-server.err.log");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    async fn spawn(&mut self) -> Result<(), HarnessError> {
        let mut command = Command::new(&self.binary);
        command
            .arg(format!("--config-file={}", self.config.display()))
            .arg("--")
            .arg("--listen_host=127.0.0.1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.account {
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().map_err(|source| io(format!("spawn {}", self.binary.display()), source))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(HarnessError::NotReady {
                        what: "clickhouse-server".into(),
                        seconds: START_TIMEOUT.as_secs(),
                        detail: format!("exited with {status}: {}", self.error_log()),
                    });
                }
            }
            if self.is_up().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(HarnessError::NotReady {
            what: "clickhouse-server".into(),
            seconds: START_TIMEOUT.as_secs(),
            detail: self.error_log(),
        })
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn io(what: impl Into<String>, source: std::io::Error) -> HarnessError {
    HarnessError::Io { what: what.into(), source }
}

/// Copies the stock config with ports and paths pointing into `dir`.
fn write_config(dir: &Path, http_port: u16, tcp_port: u16, interserver_port: u16) -> Result<PathBuf, HarnessError> {
    let stock = std::fs::read_to_string(STOCK_CONFIG)
        .map_err(|source| io(format!("read {STOCK_CONFIG} (install with: {INSTALL})"), source))?;
    let users = std::fs::read_to_string(STOCK_USERS)
        .map_err(|source| io(format!("read {STOCK_USERS} (install with: {INSTALL})"), source))?;
    let d = dir.display();
    for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|source| io(format!("create {d}/{sub}"), source))?;
    }
    let replacements = [
        ("<http_port>8123</http_port>", format!("<http_port>{http_port}</http_port>")),
        ("<tcp_port>9000</tcp_port>", format!("<tcp_port>{tcp_port}</tcp_port>")),
        (
            "<interserver_http_port>9009</interserver_http_port>",
            format!("<interserver_http_port>{interserver_port}</interserver_http_port>"),
        ),
        ("<path>/var/lib/clickhouse/</path>", format!("<path>{d}/data/</path>")),
        ("<tmp_path>/var/lib/clickhouse/tmp/</tmp_path>", format!("<tmp_path>{d}/tmp/</tmp_path>")),
        (
            "<user_files_path>/var/lib/clickhouse/user_files/</user_files_path>",
            format!("<user_files_path>{d}/user_files/</user_files_path>"),
        ),
        (
            "<format_schema_path>/var/lib/clickhouse/format_schemas/</format_schema_path>",
            format!("<format_schema_path>{d}/format_schemas/</format_schema_path>"),
        ),
        ("/var/log/clickhouse-server/", format!("{d}/log/")),
    ];
    let mut config = stock;
    for (from, to) in replacements {
        if !config.contains(from) {
            return Err(io(
                format!("patch {STOCK_CONFIG}"),
                std::io::Error::other(format!("expected `{from}` in the stock config")),
            ));
        }
        config = config.replace(from, &to);
    }
    let path = dir.join("config.xml");
    std::fs::write(&path, config).map_err(|source| io("write config.xml", source))?;
    std::fs::write(dir.join("users.xml"), users).map_err(|source| io("write users.xml", source))?;
    Ok(path)
}

/// Whether this process runs as root (the owner of `/proc/self` is the effective uid).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// The `clickhouse` user's uid and gid from /etc/passwd.
fn clickhouse_account() -> Result<(u32, u32), HarnessError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|source| io("read /etc/passwd", source))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.first() == Some(&"clickhouse") && fields.len() > 3 {
                Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
            } else {
                None
            }
        })
        .ok_or_else(|| HarnessError::Missing { binary: "user clickhouse".into(), install: INSTALL.into() })
}

fn chown_recursive(dir: &Path, (uid, gid): (u32, u32)) -> Result<(), HarnessError> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .map_err(|source| io(format!("chown {}", dir.display()), source))?;
    let entries = std::fs::read_dir(dir).map_err(|source| io(format!("read {}", dir.display()), source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io(format!("read {}", dir.display()), source))?;
        let path = entry.path();
        if path.is_dir() {
            chown_recursive(&path, (uid, gid))?;
        } else {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|source| io(format!("chown {}", path.display()), source))?;
        }
    }
    Ok(())
}
