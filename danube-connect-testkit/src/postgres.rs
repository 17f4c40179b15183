//! A real PostgreSQL 15 for tests: a private cluster (`initdb` into a temp dir, run as the
//! `postgres` user when the test runs as root) on a free 127.0.0.1 port with
//! `wal_level=logical`, stopped on drop. The machine's own cluster on 5432 is never touched.
//!
//! ```no_run
//! # fn demo() -> Result<(), danube_connect_testkit::HarnessError> {
//! let pg = danube_connect_testkit::postgres::Postgres::start()?;
//! pg.psql("CREATE TABLE t (id int primary key)")?;
//! let url = pg.url(); // postgres://postgres@127.0.0.1:{port}/postgres
//! # Ok(()) }
//! ```
//!
//! [`Postgres::start_with_options`] adds TLS with a chosen certificate name and a role that
//! must authenticate with SCRAM-SHA-256 ([`PostgresOptions`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;
use crate::{find_binary, HarnessError};

const INSTALL: &str = "apt-get install -y postgresql";
const BIN_DIRS: &[&str] = &["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/14/bin"];

/// How a [`Postgres::start_with_options`] cluster differs from [`Postgres::start`]'s.
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Extra `postgresql.conf` settings, e.g. `("log_connections", "on")`.
    pub settings: Vec<(String, String)>,
    /// Accept TCP connections only over TLS (`hostssl`), with a server certificate signed by
    /// a test CA ([`Postgres::ca_cert`]).
    pub tls: bool,
    /// The server certificate's `subjectAltName` entries (`DNS:name`, `IP:address`); empty
    /// means `DNS:localhost` and `IP:127.0.0.1`.
    pub tls_names: Vec<String>,
    /// With `tls`: a superuser role of this name that must present a certificate signed by
    /// the test CA naming it (`cert` in pg_hba.conf), for queries and replication alike (see
    /// [`Postgres::client_cert`]); `postgres` keeps `trust`.
    pub cert_user: Option<String>,
    /// A role `(name, password)` with `LOGIN REPLICATION` that must authenticate with
    /// `scram-sha-256` over TCP (queries and replication); `postgres` keeps `trust`.
    pub scram_user: Option<(String, String)>,
}

/// A running private PostgreSQL cluster; stopped (`pg_ctl stop -m immediate`) when dropped.
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    data: PathBuf,
    socket_dir: PathBuf,
    as_postgres: bool,
    running: bool,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Initialises and starts a cluster with logical replication enabled.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(&[])
    }

    /// Like [`Self::start`], with extra `-c name=value` server settings (e.g. `("wal_level", "replica")`).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Self, HarnessError> {
        let settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::start_with_options(&PostgresOptions { settings, ..Default::default() })
    }

    /// A cluster that accepts TCP connections only over TLS (`hostssl` in pg_hba.conf), with a
    /// server certificate for `127.0.0.1`/`localhost` signed by a test CA ([`Self::ca_cert`]).
    pub fn start_tls() -> Result<Self, HarnessError> {
        Self::start_with_options(&PostgresOptions { tls: true, ..Default::default() })
    }

    /// The test CA certificate (PEM) of a [`Self::start_tls`] cluster.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A CA certificate (PEM) that did not sign the server certificate (made on each call),
    /// for tests that must see a certificate refused.
    pub fn foreign_ca(&self) -> Result<PathBuf, HarnessError> {
        let dir = self.dir.path();
        let path = |name: &str| dir.join(name).display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=danube-foreign-ca",
            "-keyout",
            &path("foreign-ca.key"),
            "-out",
            &path("foreign-ca.crt"),
        ])?;
        Ok(dir.join("foreign-ca.crt"))
    }

    /// A client certificate and key (PEM files) for `role`, signed by the test CA (made on
    /// each call), for a cluster started with [`PostgresOptions::cert_user`].
    pub fn client_cert(&self, role: &str) -> Result<(PathBuf, PathBuf), HarnessError> {
        let dir = self.dir.path();
        let path = |name: &str| dir.join(name).display().to_string();
        let (key, csr, cert) =
            (format!("client-{role}.key"), format!("client-{role}.csr"), format!("client-{role}.crt"));
        let subject = format!("/CN={role}");
        // Extensions make it an X.509 v3 certificate (rustls refuses v1).
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )
        .map_err(|source| HarnessError::Io { what: "certificate extensions".into(), source })?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &subject,
            "-keyout",
            &path(&key),
            "-out",
            &path(&csr),
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &path(&csr),
            "-CA",
            &path("ca.crt"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path("client.ext"),
            "-out",
            &path(&cert),
        ])?;
        Ok((dir.join(cert), dir.join(key)))
    }

    /// The server log so far (connection and authentication lines with `log_connections = on`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Initialises and starts a cluster set up as `options` says (logical replication on).
    pub fn start_with_options(options: &PostgresOptions) -> Result<Self, HarnessError> {
        let initdb = find_binary("initdb", BIN_DIRS, INSTALL)?;
        let bin = initdb.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = tempfile::tempdir().map_err(|source| HarnessError::Io { what: "postgres tempdir".into(), source })?;
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        std::fs::create_dir_all(&socket_dir)
            .map_err(|source| HarnessError::Io { what: "postgres socket dir".into(), source })?;
        let as_postgres = running_as_root();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|source| HarnessError::Io { what: "chown postgres tempdir".into(), source })?;
            if !status.success() {
                return Err(HarnessError::NotReady {
                    what: "postgres".into(),
                    seconds: 0,
                    detail: "chown to postgres failed".into(),
                });
            }
        }
        let mut pg = Self { bin, port: free_port(), data, socket_dir, as_postgres, running: false, dir };
        let out = pg.run_tool(
            "initdb",
            &["-D", &pg.data.display().to_string(), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
        )?;
        if !out.status.success() {
            return Err(HarnessError::NotReady {
                what: "initdb".into(),
                seconds: 0,
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut conf = String::from(
            "listen_addresses = '127.0.0.1'\nwal_level = logical\nmax_replication_slots = 20\nmax_wal_senders = 20\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 64MB\nlog_min_messages = warning\n",
        );
        conf.push_str(&format!("port = {}\nunix_socket_directories = '{}'\n", pg.port, pg.socket_dir.display()));
        for (name, value) in &options.settings {
            conf.push_str(&format!("{name} = '{value}'\n"));
        }
        if options.tls {
            pg.make_certificates(&options.tls_names)?;
            conf.push_str("ssl = on\n");
            if let Some(user) = &options.cert_user {
                conf.push_str(&format!("ssl_ca_file = '{}'\n", pg.ca_cert().display()));
                pg.write_hba(&format!(
                    "local all all trust\n\
                     hostssl all {user} 127.0.0.1/32 cert\n\
                     hostssl replication {user} 127.0.0.1/32 cert\n\
                     hostssl all all 127.0.0.1/32 trust\n\
                     hostssl replication all 127.0.0.1/32 trust\n"
                ))?;
            }
        }
        if let Some((user, _)) = &options.scram_user {
            conf.push_str("password_encryption = 'scram-sha-256'\n");
            pg.write_hba(&scram_hba(user, options.tls))?;
        }
        let auto = pg.data.join("postgresql.auto.conf");
        std::fs::write(&auto, conf)
            .map_err(|source| HarnessError::Io { what: "postgresql.auto.conf".into(), source })?;
        if as_postgres {
            let _ = Command::new("chown").args(["postgres:postgres"]).arg(&auto).status();
        }
        pg.spawn()?;
        if let Some(user) = &options.cert_user {
            pg.psql(&format!("CREATE ROLE {} LOGIN REPLICATION SUPERUSER", quote_ident(user)))?;
        }
        if let Some((user, password)) = &options.scram_user {
            pg.psql(&format!(
                "CREATE ROLE {} LOGIN REPLICATION PASSWORD '{}'",
                quote_ident(user),
                password.replace('\'', "''")
            ))?;
        }
        Ok(pg)
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres` (trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The directory holding the server binaries (`pg_recvlogical`, `psql`, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Runs SQL through `psql` (unaligned, tuples only, stop on error) and returns stdout.
    pub fn psql(&self, sql: &str) -> Result<String, HarnessError> {
        let psql = self.bin.join("psql");
        let out = Command::new(psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| HarnessError::Io { what: "run psql".into(), source })?;
        if !out.status.success() {
            return Err(HarnessError::NotReady {
                what: "psql".into(),
                seconds: 0,
                detail: format!("{sql}: {}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) -> Result<(), HarnessError> {
        if self.running {
            self.running = false;
            let data = self.data.display().to_string();
            self.run_tool("pg_ctl", &["-D", &data, "-m", "fast", "-w", "-t", "30", "stop"])?;
        }
        Ok(())
    }

    /// Starts a stopped server again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop()?;
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let data = self.data.display().to_string();
        let log = self.dir.path().join("postgres.log").display().to_string();
        let out = self.run_tool("pg_ctl", &["-D", &data, "-l", &log, "-w", "-t", "60", "start"])?;
        if !out.status.success() {
            return Err(HarnessError::NotReady {
                what: "postgres".into(),
                seconds: 60,
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            });
        }
        self.running = true;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if self.psql("SELECT 1").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::NotReady {
            what: "postgres".into(),
            seconds: 30,
            detail: std::fs::read_to_string(&log).unwrap_or_default(),
        })
    }

    /// A CA, a server key and certificate in the data dir, and a TLS-only pg_hba.conf.
    fn make_certificates(&self, names: &[String]) -> Result<(), HarnessError> {
        let dir = self.dir.path();
        let ext = dir.join("server.ext");
        let names = if names.is_empty() { "DNS:localhost,IP:127.0.0.1".to_string() } else { names.join(",") };
        std::fs::write(&ext, format!("basicConstraints=CA:FALSE\nsubjectAltName={names}\n"))
            .map_err(|source| HarnessError::Io { what: "certificate extensions".into(), source })?;
        let path = |name: &str| dir.join(name).display().to_string();
        let data = |name: &str| self.data.join(name).display().to_string();
        let steps: Vec<Vec<String>> = vec![
            vec![
                "req".into(),
                "-x509".into(),
                "-newkey".into(),
                "rsa:2048".into(),
                "-nodes".into(),
                "-days".into(),
                "2".into(),
                "-subj".into(),
                "/CN=danube-test-ca".into(),
                "-keyout".into(),
                path("ca.key"),
                "-out".into(),
                path("ca.crt"),
            ],
            vec![
                "req".into(),
                "-newkey".into(),
                "rsa:2048".into(),
                "-nodes".into(),
                "-subj".into(),
                "/CN=localhost".into(),
                "-keyout".into(),
                data("server.key"),
                "-out".into(),
                path("server.csr"),
            ],
            vec![
                "x509".into(),
                "-req".into(),
                "-in".into(),
                path("server.csr"),
                "-CA".into(),
                path("ca.crt"),
                "-CAkey".into(),
                path("ca.key"),
                "-CAcreateserial".into(),
                "-days".into(),
                "2".into(),
                "-extfile".into(),
                path("server.ext"),
                "-out".into(),
                data("server.crt"),
            ],
        ];
        for args in steps {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            openssl(&args)?;
        }
        self.write_hba(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl replication all 127.0.0.1/32 trust\n",
        )?;
        if self.as_postgres {
            let _ = Command::new("chown")
                .arg("postgres:postgres")
                .arg(self.data.join("server.key"))
                .arg(self.data.join("server.crt"))
                .status();
        }
        let _ = Command::new("chmod").arg("600").arg(self.data.join("server.key")).status();
        Ok(())
    }

    /// Replaces `pg_hba.conf` (read at server start).
    fn write_hba(&self, hba: &str) -> Result<(), HarnessError> {
        let path = self.data.join("pg_hba.conf");
        std::fs::write(&path, hba).map_err(|source| HarnessError::Io { what: "pg_hba.conf".into(), source })?;
        if self.as_postgres {
            let _ = Command::new("chown").arg("postgres:postgres").arg(&path).status();
        }
        Ok(())
    }

    fn run_tool(&self, tool: &str, args: &[&str]) -> Result<Output, HarnessError> {
        let binary = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&binary);
            c
        } else {
            Command::new(&binary)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|source| HarnessError::Io { what: format!("run {tool}"), source })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data.display().to_string();
            let _ = self.run_tool("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "-t", "30", "stop"]);
        }
    }
}

/// `pg_hba.conf` where `user` must use SCRAM-SHA-256 over TCP (TLS-only with `tls`) and
/// `postgres` (the harness's `psql`) keeps `trust`.
fn scram_hba(user: &str, tls: bool) -> String {
    let host = if tls { "hostssl" } else { "host" };
    format!(
        "local all all trust\n\
         {host} all postgres 127.0.0.1/32 trust\n\
         {host} replication postgres 127.0.0.1/32 trust\n\
         {host} all {user} 127.0.0.1/32 scram-sha-256\n\
         {host} replication {user} 127.0.0.1/32 scram-sha-256\n"
    )
}

/// `"name"` with inner quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs `openssl` with `args`, failing with its stderr.
fn openssl(args: &[&str]) -> Result<(), HarnessError> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Io { what: "run openssl (apt-get install -y openssl)".into(), source })?;
    if !out.status.success() {
        return Err(HarnessError::NotReady {
            what: "openssl".into(),
            seconds: 0,
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}
