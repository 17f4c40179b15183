//! `danube-postgres-cdc`: PostgreSQL logical replication into Danube.

use danube_connect_core::{cli, Parts};
use danube_postgres_cdc::{PostgresCdc, PostgresCdcConfig};

/// mimalloc as the process's global allocator: connectors allocate per record, and glibc's
/// malloc took nearly a quarter of the HTTP source's per-request instructions (callgrind).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::run::<PostgresCdcConfig, _>("danube-postgres-cdc", "POSTGRES_CDC", |config| {
        Ok(Parts::new().with_pull(PostgresCdc::build(config.connector.clone())?))
    })
}
