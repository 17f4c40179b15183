//! `danube-postgres-cdc`: PostgreSQL logical replication into Danube.

use danube_postgres_cdc::{PostgresCdcConfig, PostgresCdcSource};

fn main() -> std::process::ExitCode {
    danube_connect_core::cli::run::<PostgresCdcConfig, _, _>(
        "danube-postgres-cdc",
        "POSTGRES_CDC",
        |config, runtime| async move { runtime.run_source(PostgresCdcSource::new(config.connector)).await },
    )
}
