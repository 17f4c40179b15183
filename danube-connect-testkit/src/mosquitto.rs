//! A real Mosquitto MQTT broker for tests: a private instance on a free 127.0.0.1 port,
//! configured from a file in a temp dir (anonymous access, persistence to the temp dir so
//! persistent sessions survive a restart), stopped on drop. Never the system one on 1883.
//! [`MosquittoOptions`] adds a user name/password requirement or a TLS listener (a test CA
//! and a certificate for 127.0.0.1, made with `openssl`).
//!
//! ```no_run
//! # fn demo() -> Result<(), danube_connect_testkit::HarnessError> {
//! let mut broker = danube_connect_testkit::mosquitto::Mosquitto::start()?;
//! let port = broker.port();
//! broker.restart()?; // same port, same persisted sessions
//! # Ok(()) }
//! ```

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::ports::free_port;
use crate::{find_binary, HarnessError};

const INSTALL: &str = "apt-get install -y mosquitto mosquitto-clients";

/// How to start Mosquitto.
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Write sessions and queued messages to the temp dir (they survive a restart).
    pub persistence: bool,
    /// Require this user name and password (anonymous access off).
    pub credentials: Option<(String, String)>,
    /// Serve TLS instead of plain TCP; the CA is at [`Mosquitto::ca_file`].
    pub tls: bool,
}

/// A running Mosquitto; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts Mosquitto with persistence on, on a free loopback port.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(true)
    }

    /// Starts Mosquitto; `persistence` writes sessions and queued messages to the temp dir
    /// on shutdown (and every second), so they survive [`Self::restart`].
    pub fn start_with(persistence: bool) -> Result<Self, HarnessError> {
        Self::start_with_options(&MosquittoOptions { persistence, ..MosquittoOptions::default() })
    }

    /// Starts Mosquitto as `options` say.
    pub fn start_with_options(options: &MosquittoOptions) -> Result<Self, HarnessError> {
        let persistence = options.persistence;
        let binary = find_binary("mosquitto", &["/usr/sbin", "/usr/local/sbin"], INSTALL)?;
        let dir =
            tempfile::tempdir().map_err(|source| HarnessError::Io { what: "mosquitto tempdir".into(), source })?;
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)
            .map_err(|source| HarnessError::Io { what: "mosquitto data dir".into(), source })?;
        let log = dir.path().join("mosquitto.log");
        let config = dir.path().join("mosquitto.conf");
        let mut security = String::new();
        match &options.credentials {
            Some((user, password)) => {
                let file = dir.path().join("passwords");
                run_tool("mosquitto_passwd", &["-c", "-b", &file.display().to_string(), user, password])?;
                security.push_str(&format!("allow_anonymous false\npassword_file {}\n", file.display()));
            }
            None => security.push_str("allow_anonymous true\n"),
        }
        if options.tls {
            make_certificates(dir.path())?;
            security.push_str(&format!(
                "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
                d = dir.path().display()
            ));
        }
        let text = format!(
            "listener {port} 127.0.0.1\n\
             {security}\
             persistence {persistence}\n\
             persistence_location {data}/\n\
             autosave_interval 1\n\
             pid_file {pid}\n\
             log_dest file {log}\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             max_queued_messages 100000\n\
             max_inflight_messages 20\n",
            persistence = if persistence { "true" } else { "false" },
            data = data.display(),
            pid = dir.path().join("mosquitto.pid").display(),
            log = log.display(),
        );
        std::fs::write(&config, text).map_err(|source| HarnessError::Io { what: "mosquitto config".into(), source })?;
        chown_to_mosquitto(dir.path())?;
        let mut broker = Self { child: None, port, binary, config, log, dir };
        broker.spawn()?;
        Ok(broker)
    }

    /// The listening port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1`, for a client's host setting.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The CA certificate (PEM) that signed the TLS listener's certificate (with `tls`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The data directory (persistence files).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the broker gracefully (SIGTERM: persistence is written) and waits for it.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let started = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if started.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops and starts the broker again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.spawn()
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| HarnessError::Io { what: format!("spawn {}", self.binary.display()), source })?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let started = Instant::now();
        let timeout = Duration::from_secs(10);
        // The port can stay busy for a moment after a restart: retry until it listens.
        while started.elapsed() < timeout {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    // Exited (e.g. the port was still in TIME_WAIT): try again shortly.
                    if started.elapsed() + Duration::from_millis(200) >= timeout {
                        return Err(HarnessError::NotReady {
                            what: "mosquitto".into(),
                            seconds: timeout.as_secs(),
                            detail: format!("exited with {status}: {}", self.log()),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    let child = Command::new(&self.binary)
                        .arg("-c")
                        .arg(&self.config)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .map_err(|source| HarnessError::Io {
                            what: format!("spawn {}", self.binary.display()),
                            source,
                        })?;
                    self.child = Some(child);
                    continue;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::NotReady { what: "mosquitto".into(), seconds: timeout.as_secs(), detail: self.log() })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// As root, Mosquitto drops privileges to user `mosquitto`: it must be able to write `dir`.
/// (Not root, or no such user: Mosquitto runs as the current user and nothing is needed.)
fn chown_to_mosquitto(dir: &Path) -> Result<(), HarnessError> {
    let Some((uid, gid)) = mosquitto_user() else {
        return Ok(());
    };
    let mut entries = vec![dir.to_path_buf()];
    if let Ok(listing) = std::fs::read_dir(dir) {
        entries.extend(listing.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    for entry in entries {
        match std::os::unix::fs::chown(&entry, Some(uid), Some(gid)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(()),
            Err(source) => return Err(HarnessError::Io { what: format!("chown {}", entry.display()), source }),
        }
    }
    Ok(())
}

fn mosquitto_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"mosquitto") && fields.len() > 3 {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Runs a helper tool (from the mosquitto or openssl packages), failing with its output.
fn run_tool(tool: &str, args: &[&str]) -> Result<(), HarnessError> {
    let install = if tool == "openssl" { "apt-get install -y openssl" } else { INSTALL };
    let path = find_binary(tool, &["/usr/bin", "/usr/sbin"], install)?;
    let output = Command::new(&path)
        .args(args)
        .output()
        .map_err(|source| HarnessError::Io { what: format!("run {}", path.display()), source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Io {
            what: format!("{tool} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr)),
            source: std::io::Error::other(format!("exit {}", output.status)),
        })
    }
}

/// A test CA (`ca.pem`) and a server certificate for 127.0.0.1 / localhost
/// (`server.pem`, `server.key`) in `dir`.
fn make_certificates(dir: &Path) -> Result<(), HarnessError> {
    let p = |name: &str| dir.join(name).display().to_string();
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .map_err(|source| HarnessError::Io { what: "server.ext".into(), source })?;
    run_tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=danube-connect test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ],
    )?;
    run_tool(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ],
    )?;
    run_tool(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("server.ext"),
            "-out",
            &p("server.pem"),
        ],
    )
}
