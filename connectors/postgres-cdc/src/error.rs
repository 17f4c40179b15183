//! Errors of the CDC source, classified into the runtime's taxonomy by [`CdcError::into_connector`].

use danube_connect_core::ConnectorError;

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    /// A query on the regular connection failed.
    #[error("{what}")]
    Query {
        /// What was being done.
        what: String,
        /// The driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The replication connection failed.
    #[error("{what}")]
    Replication {
        /// What was being done.
        what: String,
        /// The replication client error.
        #[source]
        source: pgwire_replication::PgWireError,
    },
    /// A `pgoutput` message could not be decoded.
    #[error("decoding a pgoutput message at {lsn}")]
    Decode {
        /// The LSN of the message.
        lsn: String,
        /// The decoder error.
        #[source]
        source: crate::pgoutput::DecodeError,
    },
    /// The server is not set up for this connector (wal_level, privileges, missing table,
    /// slot in use): operator action needed.
    #[error("{0}")]
    Setup(String),
    /// A `connector.tls` file is not usable (the error names the field and the file).
    #[error("TLS")]
    Tls(#[from] danube_connect_common::tls::TlsError),
    /// PostgreSQL invalidated the replication slot (`wal_status = lost`): the WAL it needed
    /// was removed, so changes since its confirmed position cannot be read any more.
    #[error(
        "replication slot {slot} was invalidated by PostgreSQL (wal_status = lost): it fell more than \
         max_slot_wal_keep_size behind the server's WAL (confirmed flush LSN {confirmed}) and the WAL it still \
         needed was removed, so the changes since then cannot be streamed. Recovery: drop the slot \
         (SELECT pg_drop_replication_slot('{slot}')) and start the connector again with connector.snapshot = \
         initial: it creates a new slot and snapshots the captured tables, so consumers get every current row \
         (op READ) and the stream continues from there; changes between the loss and the new snapshot are only \
         visible as their result"
    )]
    SlotLost {
        /// The slot.
        slot: String,
        /// Its last confirmed flush LSN (`X/Y`, or `unknown`).
        confirmed: String,
    },
    /// A record could not be serialized.
    #[error("serialize record")]
    Serialize(#[source] serde_json::Error),
    /// A table's schema could not be registered (`connector.schema`): the registry is
    /// unreachable (transient) or refused it, e.g. as incompatible (fatal).
    #[error("schema of table {table}")]
    Schema {
        /// `schema.table`.
        table: String,
        /// The registry error.
        #[source]
        source: danube_connect_core::schema::SchemaSetupError,
    },
}

impl CdcError {
    /// Whether reconnecting may help (network, server restart). A refused TLS handshake (e.g.
    /// a certificate from another CA) or a refused configuration (e.g. the server asks for a
    /// password and none is set) is not: it needs a configuration change.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Query { source, .. } => {
                (source.is_closed() || source.as_db_error().is_none())
                    && !is_tls_refusal(source)
                    && !is_config_refusal(source)
            }
            Self::Replication { source, .. } => source.is_transient(),
            Self::Schema { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// The runtime error kind: transient errors are retryable, the rest fatal.
    pub fn into_connector(self) -> ConnectorError {
        if self.is_transient() {
            ConnectorError::retryable("postgres", self)
        } else {
            ConnectorError::fatal("postgres", self)
        }
    }
}

/// Whether a TLS error (a `rustls::Error`, possibly inside an `io::Error`) is in the chain.
fn is_tls_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        let inner = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        if error.is::<rustls::Error>() || inner.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        next = error.source();
    }
    false
}

/// Whether the driver refused its configuration (`tokio-postgres` has no public error kind;
/// its `Config` errors display as `invalid configuration: ...`, e.g. `password missing`).
fn is_config_refusal(error: &tokio_postgres::Error) -> bool {
    error.to_string().starts_with("invalid configuration")
}

/// Shorthand for a query error with context.
pub fn query(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> CdcError {
    let what = what.into();
    move |source| CdcError::Query { what, source }
}

/// Shorthand for a replication error with context.
pub fn replication(what: impl Into<String>) -> impl FnOnce(pgwire_replication::PgWireError) -> CdcError {
    let what = what.into();
    move |source| CdcError::Replication { what, source }
}
