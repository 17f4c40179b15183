//! Baselines shared by the postgres-cdc benches.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use danube_connect_testkit::postgres::Postgres;

/// Put before a measured write: the test kit's PostgreSQL runs with `synchronous_commit = off`
/// (fast tests), so a COMMIT reaches the walsender only when the WAL writer flushes it, up to
/// 3 x `wal_writer_delay` (about 400 ms measured) later; PostgreSQL's default flushes at COMMIT.
pub(crate) const FLUSHED_COMMIT: &str = "SET synchronous_commit = on; ";

/// `pg_recvlogical` on its own pgoutput slot `raw_slot` (publication `bench_pub`): the raw
/// reader the connector is compared with.
pub(crate) struct RawReader {
    binary: PathBuf,
    port: String,
}

impl RawReader {
    /// Creates the slot; made before the measured rows are written.
    pub(crate) fn create(pg: &Postgres) -> Self {
        let reader = Self { binary: pg.bin_dir().join("pg_recvlogical"), port: pg.port().to_string() };
        let created = Command::new(&reader.binary)
            .args(reader.connection())
            .args(["-S", "raw_slot", "-P", "pgoutput", "--create-slot"])
            .status()
            .expect("pg_recvlogical");
        assert!(created.success(), "create the raw slot");
        reader
    }

    fn connection(&self) -> [&str; 8] {
        ["-h", "127.0.0.1", "-p", self.port.as_str(), "-U", "postgres", "-d", "postgres"]
    }

    /// Streams the transaction ending at `end` raw to `/dev/null`; returns its rows per second.
    pub(crate) fn rate(&self, end: &str, rows: usize) -> f64 {
        let started = Instant::now();
        let raw = Command::new(&self.binary)
            .args(self.connection())
            .args([
                "-S",
                "raw_slot",
                "--start",
                "--endpos",
                end,
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=bench_pub",
                "-f",
                "/dev/null",
            ])
            .status()
            .expect("pg_recvlogical");
        let rate = rows as f64 / started.elapsed().as_secs_f64();
        assert!(raw.success(), "pg_recvlogical");
        rate
    }
}
