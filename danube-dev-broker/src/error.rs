//! Error type of the broker's own API.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors returned by [`EmbeddedBroker`](crate::EmbeddedBroker) lifecycle calls.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The listen address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Address that was requested.
        addr: SocketAddr,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The data directory could not be read or written.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// A persisted file is not in the expected format.
    #[error("corrupt data file {path}: {reason}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The TLS certificate or key of the listener cannot be used.
    #[error("TLS setup of the listener")]
    Tls {
        /// Why tonic refused the certificate or key.
        source: tonic::transport::Error,
    },
}
