//! Test harness shared by every connector's integration tests.
//!
//! Each outside system is started for real, on loopback, on a free port, with its data in
//! a temp dir, and stopped when its handle drops. A binary that is missing makes the test
//! fail with the install command to run (`scripts/test.sh` installs everything).
//!
//! - [`broker`]: the Danube broker a test runs on, the development one or the real one
//!   (`DANUBE_BROKER_BIN`), with one test body for both;
//! - [`process`]: run a connector binary, wait until ready, SIGTERM or kill -9 it;
//! - [`ports`]: free loopback ports;
//! - [`danube`]: raw `danube-client` producers, the benchmarks' baseline;
//! - [`procfs`]: memory, CPU time and load of processes, for the benchmarks;
//! - [`postgres`], [`clickhouse`], [`mosquitto`], [`kafka`]: the outside systems.

pub mod broker;
pub mod clickhouse;
pub mod danube;
pub mod kafka;
pub mod mosquitto;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod procfs;

/// Errors starting a test dependency.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A required binary is not installed.
    #[error("{binary} not found; run scripts/test.sh (or: {install})")]
    Missing {
        /// The binary looked for.
        binary: String,
        /// How to install it.
        install: String,
    },
    /// Starting or talking to a process failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The system did not become ready in time.
    #[error("{what} not ready after {seconds}s: {detail}")]
    NotReady {
        /// Which system.
        what: String,
        /// How long we waited.
        seconds: u64,
        /// Its log tail or last error.
        detail: String,
    },
}

/// Finds `binary` on PATH or at one of `extra` paths.
pub fn find_binary(binary: &str, extra: &[&str], install: &str) -> Result<std::path::PathBuf, HarnessError> {
    for dir in extra {
        let candidate = std::path::Path::new(dir).join(binary);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(binary);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(HarnessError::Missing { binary: binary.to_string(), install: install.to_string() })
}
