//! HTTPS: a rustls listener for the serving loop. Handshakes run in their own tasks (bounded
//! by a timeout, and in number) so a slow client cannot hold up accepting others, nor open
//! connections without bound while handshaking.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use danube_connect_common::tls::ServerTls;
pub use danube_connect_common::tls::TlsError;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls acceptor of `connector.tls` (HTTP/1.1 by ALPN); its errors name the field
/// and the file.
pub fn acceptor(config: &ServerTls) -> Result<TlsAcceptor, TlsError> {
    let server = config.rustls_config("connector.tls", vec![b"http/1.1".to_vec()])?;
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
