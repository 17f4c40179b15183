//! Serving the gRPC services on a TCP listener that can be stopped hard.
//!
//! Every accepted connection is wrapped in [`KillableIo`], which fails all
//! reads and writes once the server's kill token is cancelled. That makes
//! `stop` close established HTTP/2 connections at once (clients see the
//! connection drop) instead of waiting for long-lived streams to finish.
//!
//! With [`TlsConfig`](crate::TlsConfig) the listener speaks TLS (and verifies
//! client certificates when a client CA is set); every call goes through
//! [`AuthCheck`] (a no-op without a configured token).

use crate::auth::AuthCheck;
use crate::config::TlsConfig;
use crate::error::BrokerError;
use crate::service::consumer::ConsumerSvc;
use crate::service::discovery::DiscoverySvc;
use crate::service::health::HealthSvc;
use crate::service::producer::ProducerSvc;
use crate::service::schema::SchemaSvc;
use crate::state::BrokerState;
use danube_core::proto::consumer_service_server::ConsumerServiceServer;
use danube_core::proto::danube_schema::schema_registry_server::SchemaRegistryServer;
use danube_core::proto::discovery_server::DiscoveryServer;
use danube_core::proto::health_check_server::HealthCheckServer;
use danube_core::proto::producer_service_server::ProducerServiceServer;
use futures::StreamExt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::service::InterceptorLayer;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// Largest request any service decodes: gRPC's default limit, which Danube v0.15 keeps
/// (a larger request is refused with `OutOfRange`, "decoded message length too large",
/// whatever `max_message_size` says), so a payload that fits here fits there.
pub const MAX_REQUEST_SIZE: usize = 4 * 1024 * 1024;

/// Binds `addr` with `SO_REUSEADDR`, so a restarted broker gets its port back.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A running server.
#[derive(Debug)]
pub(crate) struct ServerHandle {
    kill: CancellationToken,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Serves all services on `listener` until stopped. Fails when the TLS
    /// certificate or key cannot be used.
    pub(crate) fn spawn(state: Arc<BrokerState>, listener: TcpListener) -> Result<ServerHandle, BrokerError> {
        let kill = CancellationToken::new();
        let conn_kill = kill.clone();
        let incoming = TcpListenerStream::new(listener).map(move |res| {
            res.map(|stream| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                KillableIo::new(stream, conn_kill.clone())
            })
        });
        let limit = MAX_REQUEST_SIZE;
        let mut builder = Server::builder();
        if let Some(tls) = &state.config.tls {
            builder = builder.tls_config(server_tls(tls)).map_err(|source| BrokerError::Tls { source })?;
        }
        let router = builder
            .layer(InterceptorLayer::new(AuthCheck::new(state.config.auth_token.clone())))
            .add_service(
                ProducerServiceServer::new(ProducerSvc { state: Arc::clone(&state) }).max_decoding_message_size(limit),
            )
            .add_service(ConsumerServiceServer::new(ConsumerSvc { state: Arc::clone(&state) }))
            .add_service(DiscoveryServer::new(DiscoverySvc { state: Arc::clone(&state) }))
            .add_service(HealthCheckServer::new(HealthSvc { state: Arc::clone(&state) }))
            .add_service(SchemaRegistryServer::new(SchemaSvc { state }).max_decoding_message_size(limit));
        let shutdown = kill.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, shutdown).await {
                tracing::error!(error = %e, "gRPC server failed");
            }
        });
        Ok(ServerHandle { kill, task })
    }

    /// Stops accepting, kills open connections and waits for the server task.
    pub(crate) async fn shutdown(mut self) {
        self.kill.cancel();
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task).await.is_err() {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    /// Synchronous variant for `Drop`: cancels and aborts without waiting.
    pub(crate) fn abort(&self) {
        self.kill.cancel();
        self.task.abort();
    }
}

/// tonic's server TLS settings from the broker's.
fn server_tls(tls: &TlsConfig) -> ServerTlsConfig {
    danube_connect_common::tls::install_default_crypto_provider();
    let config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    match &tls.client_ca_pem {
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}

/// A TCP connection that fails once `kill` is cancelled.
pub(crate) struct KillableIo {
    io: TcpStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableIo {
    fn new(io: TcpStream, kill: CancellationToken) -> Self {
        KillableIo { io, killed: Box::pin(kill.cancelled_owned()) }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "broker stopped")),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for KillableIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
