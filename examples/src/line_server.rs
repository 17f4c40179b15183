//! A push source: a TCP server taking one record per line, answering `ok` once Danube has it.

use std::net::SocketAddr;

use danube_connect_core::config::{validate_topic, ConfigError, Validate};
use danube_connect_core::failure::{FailureHandler, Handback};
use danube_connect_core::{async_trait, ConnectorError, ConnectorResult, Context, Factory, PushSource, SourceRecord};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `[connector]` section of the line server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Target topic.
    pub topic: String,
}

impl Default for LineServerConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 7070)), topic: "/default/lines".into() }
    }
}

impl Validate for LineServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_topic("connector.topic", &self.topic)
    }
}

#[async_trait]
impl Factory for LineServerConfig {
    type Connector = LineServer;

    /// Binds the listener and serves until shutdown.
    async fn start(self, ctx: Context) -> ConnectorResult<LineServer> {
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|e| ConnectorError::fatal(format!("bind {} (connector.listen)", self.listen), e))?;
        let server = tokio::spawn(serve(listener, self.topic, ctx.failures().clone(), ctx.shutdown().clone()));
        Ok(LineServer { server: Some(server) })
    }
}

/// The running line server.
pub struct LineServer {
    /// Taken at shutdown.
    server: Option<JoinHandle<()>>,
}

#[async_trait]
impl PushSource for LineServer {
    /// The server stopped accepting at shutdown; wait until every client got its answer.
    async fn shutdown(&mut self) -> ConnectorResult<()> {
        if let Some(server) = self.server.take() {
            server.await.map_err(|e| ConnectorError::fatal("line server task", e))?;
        }
        Ok(())
    }
}

async fn serve(listener: TcpListener, topic: String, failures: FailureHandler, shutdown: CancellationToken) {
    let mut clients = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Ok((stream, _)) = listener.accept() => {
                clients.spawn(client(stream, topic.clone(), failures.clone(), shutdown.clone()));
            }
        }
    }
    while clients.join_next().await.is_some() {}
}

/// Publishes each line, then answers `ok` (in Danube or dead-lettered) or `retry`.
async fn client(stream: TcpStream, topic: String, failures: FailureHandler, shutdown: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = tokio::select! {
            _ = shutdown.cancelled() => break,
            line = lines.next_line() => line,
        };
        let Ok(Some(line)) = line else { break };
        // `Possible`: the client still holds the line until it reads `ok`.
        let delivery = failures.publish_or_dead_letter(SourceRecord::new(&topic, line), Handback::Possible).await;
        let answer = if delivery.is_delivered() { "ok\n" } else { "retry\n" };
        if write.write_all(answer.as_bytes()).await.is_err() {
            break;
        }
    }
}
