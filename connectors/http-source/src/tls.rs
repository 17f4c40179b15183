//! HTTPS: a rustls listener for the serving loop. Handshakes run in their own tasks (bounded
//! by a timeout, and in number) so a slow client cannot hold up accepting others, nor open
//! connections without bound while handshaking.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::config::TlsConfig;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors loading the certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file could not be parsed.
    #[error("parse PEM in {path}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key file holds no private key.
    #[error("{0} holds no private key")]
    NoKey(PathBuf),
    /// The certificate file holds no certificate.
    #[error("{0} holds no certificate")]
    NoCert(PathBuf),
    /// rustls refused the certificate or key.
    #[error("TLS configuration")]
    Rustls(#[source] rustls::Error),
}

/// Builds the rustls acceptor from PEM files.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let read = |path: &PathBuf| std::fs::read(path).map_err(|source| TlsError::Read { path: path.clone(), source });
    let cert_pem = read(&config.cert)?;
    let key_pem = read(&config.key)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { path: config.cert.clone(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(config.cert.clone()));
    }
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => return Err(TlsError::NoKey(config.key.clone())),
        Err(source) => return Err(TlsError::Pem { path: config.key.clone(), source }),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// A listener yielding TLS connections whose handshake completed.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Wraps a bound TCP listener; at most `max_handshakes` connections are accepted and
    /// not yet handed to the serving loop (more wait in the kernel's accept queue).
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, max_handshakes: usize) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let pending = Arc::new(tokio::sync::Semaphore::new(max_handshakes.max(1)));
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok(permit) = pending.clone().acquire_owned().await else { return };
                let (stream, remote) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        debug!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, remote)).await;
                            drop(permit);
                        }
                        Ok(Err(error)) => debug!(%remote, %error, "TLS handshake failed"),
                        Err(_) => debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready, accept_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task only ends when aborted (on drop): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
