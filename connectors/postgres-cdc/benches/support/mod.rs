//! Baselines shared by the postgres-cdc benches.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// `pg_recvlogical` streams the transaction ending at `end` raw (pgoutput, publication
/// `bench_pub`) from slot `raw_slot` to `/dev/null`; returns its rows per second.
pub(crate) fn recvlogical_rate(recvlogical: &Path, connection: &[&str], end: &str, rows: usize) -> f64 {
    let started = Instant::now();
    let raw = Command::new(recvlogical)
        .args(connection)
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
