//! The connection to Danube: [`DanubeConnection`] (the client built from `[danube]`, with
//! startup retries and a reachability probe) and [`SchemaRegistry`], its schema-registry
//! lookups. Neither names a `danube_client` type, so connectors and tools depend on core
//! only; operator tools that need the client itself (consumers) enable the `raw-client`
//! feature.
//!
//! `DanubeClient::builder().build()` is lazy and a refused connection is not retried by the
//! client, so the runtime retries the first connection itself until `danube.connect_timeout`.
//! A broker that refuses the credentials (`Unauthenticated`, `PermissionDenied`: a wrong or
//! expired token) ends the start at once, since retrying cannot help; when the deadline passes,
//! the last connection error (e.g. a TLS certificate the CA does not sign) is returned.

use std::time::{Duration, Instant};

use danube_client::errors::DanubeError;
use danube_client::DanubeClient;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::DanubeConfig;
use crate::error::{ClientError, RuntimeError};

/// A connection to Danube, built from `[danube]` (TLS, mutual TLS, JWT or token file).
/// Cheap to clone: clones share the client's connections.
#[derive(Clone)]
pub struct DanubeConnection {
    client: DanubeClient,
}

impl std::fmt::Debug for DanubeConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DanubeConnection").finish_non_exhaustive()
    }
}

impl DanubeConnection {
    /// Builds the client from `config` without connecting (the client connects lazily).
    pub async fn build(config: &DanubeConfig) -> Result<Self, RuntimeError> {
        Ok(Self { client: build_client(config).await? })
    }

    /// Builds the client and waits until the broker answers (see [`Self::wait_until_reachable`]).
    pub async fn connect(config: &DanubeConfig, cancel: &CancellationToken) -> Result<Self, RuntimeError> {
        let connection = Self::build(config).await?;
        connection.wait_until_reachable(config, cancel).await?;
        Ok(connection)
    }

    /// Waits until the broker answers, retrying with backoff until `config.connect_timeout`
    /// or cancellation. A refusal of the credentials fails at once; at the deadline the
    /// last connection error is returned (its chain names the cause, e.g. the TLS handshake).
    pub async fn wait_until_reachable(
        &self,
        config: &DanubeConfig,
        cancel: &CancellationToken,
    ) -> Result<(), RuntimeError> {
        wait_until_reachable(&self.client, config, cancel).await
    }

    /// The schema registry of this broker.
    pub fn schema_registry(&self) -> SchemaRegistry {
        SchemaRegistry { client: self.client.clone() }
    }

    /// The client itself, for operator tools that consume topics (feature `raw-client`).
    #[cfg(feature = "raw-client")]
    pub fn client(&self) -> &DanubeClient {
        &self.client
    }

    /// A connection over a client built elsewhere (feature `raw-client`).
    #[cfg(feature = "raw-client")]
    pub fn from_client(client: DanubeClient) -> Self {
        Self { client }
    }

    pub(crate) fn inner(&self) -> &DanubeClient {
        &self.client
    }

    pub(crate) fn from_inner(client: DanubeClient) -> Self {
        Self { client }
    }
}

/// The schema registry's lookups (Danube's registry, through the connection's client).
/// Cheap to clone.
#[derive(Clone)]
pub struct SchemaRegistry {
    client: DanubeClient,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry").finish_non_exhaustive()
    }
}

/// A schema version as the registry answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredSchema {
    /// The registry's id of the subject.
    pub schema_id: u64,
    /// The subject.
    pub subject: String,
    /// The version.
    pub version: u32,
    /// The type as the registry names it (`json_schema`, `avro`, ...).
    pub schema_type: String,
    /// The definition as the registry answered it (see
    /// [`registered_definition`](crate::schema::registered_definition) for the registered text).
    pub schema_definition: Vec<u8>,
}

impl RegisteredSchema {
    /// The definition as it was registered (unwrapping the real registry's JSON envelope).
    pub fn definition(&self) -> std::borrow::Cow<'_, [u8]> {
        crate::schema::registered_definition(&self.schema_definition)
    }

    fn from_info(info: danube_client::SchemaInfo) -> Self {
        Self {
            schema_id: info.schema_id,
            subject: info.subject,
            version: info.version,
            schema_type: info.schema_type,
            schema_definition: info.schema_definition,
        }
    }
}

impl SchemaRegistry {
    /// The latest version of `subject`.
    pub async fn latest(&self, subject: &str) -> Result<RegisteredSchema, ClientError> {
        let info = self.client.schema().get_latest_schema(subject.to_string()).await.map_err(ClientError::new)?;
        Ok(RegisteredSchema::from_info(info))
    }

    /// Schema `schema_id` at `version` (the latest when `None`).
    pub async fn version(&self, schema_id: u64, version: Option<u32>) -> Result<RegisteredSchema, ClientError> {
        let info = self.client.schema().get_schema_version(schema_id, version).await.map_err(ClientError::new)?;
        Ok(RegisteredSchema::from_info(info))
    }

    /// Schema `schema_id` as the registry answers a lookup by id alone.
    pub async fn by_id(&self, schema_id: u64) -> Result<RegisteredSchema, ClientError> {
        let info = self.client.schema().get_schema_by_id(schema_id).await.map_err(ClientError::new)?;
        Ok(RegisteredSchema::from_info(info))
    }
}

/// Builds a client from config (TLS, mTLS, JWT or token file) without connecting.
pub(crate) async fn build_client(config: &DanubeConfig) -> Result<DanubeClient, RuntimeError> {
    let tls = config.client_tls()?;
    if tls.ca.is_some() || config.token.is_some() || config.token_file.is_some() {
        danube_connect_common::tls::install_default_crypto_provider();
    }
    let mut builder = DanubeClient::builder().service_url(config.service_url.clone());
    match (&tls.ca, &tls.client_cert, &tls.client_key) {
        (Some(ca), Some(cert), Some(key)) => {
            builder = builder.with_mtls(ca, cert, key).map_err(client_error)?;
        }
        (Some(ca), _, _) => builder = builder.with_tls(ca).map_err(client_error)?,
        _ => {}
    }
    if let Some(token) = &config.token {
        builder = builder.with_token(token.expose());
    }
    if let Some(path) = config.token_file.clone() {
        // Read at every request (token rotation); a read failure is logged once until the
        // file is readable again, since the client calls this for every RPC.
        let warned = std::sync::atomic::AtomicBool::new(false);
        builder = builder.with_token_supplier(move || match std::fs::read_to_string(&path) {
            Ok(token) => {
                warned.store(false, std::sync::atomic::Ordering::Relaxed);
                token.trim().to_string()
            }
            Err(error) => {
                // The broker will refuse the empty token; say why.
                if !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    warn!(path = %path.display(), error = %error, "cannot read danube.token_file, sending an empty token");
                }
                String::new()
            }
        });
    }
    builder.build().await.map_err(client_error)
}

fn client_error(error: DanubeError) -> RuntimeError {
    RuntimeError::Client(ClientError::new(error))
}

/// Whether an error means the broker could not be reached (as opposed to a refusal).
pub(crate) fn is_unreachable(error: &DanubeError) -> bool {
    match error {
        DanubeError::TonicTransportError(_) => true,
        DanubeError::FromStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        DanubeError::Unrecoverable(text) => text.contains("not connected"),
        _ => false,
    }
}

/// Whether an error is the broker refusing this client's credentials (retrying cannot help).
pub(crate) fn is_refused_credentials(error: &DanubeError) -> bool {
    matches!(
        error,
        DanubeError::FromStatus(status)
            if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
    )
}

/// What one round trip to the broker showed.
enum ProbeOutcome {
    /// The broker answered (whatever it answered, except a credentials refusal).
    Answered,
    /// The broker refused the credentials.
    Refused(DanubeError),
    /// No answer: the error, or `None` when the probe timed out.
    Unreachable(Option<DanubeError>),
}

async fn probe_once(client: &DanubeClient) -> ProbeOutcome {
    let call = client.resolve_topic_broker("/default/__connector_readiness_probe");
    match tokio::time::timeout(Duration::from_secs(3), call).await {
        Ok(Ok(_)) => ProbeOutcome::Answered,
        Ok(Err(error)) if is_refused_credentials(&error) => ProbeOutcome::Refused(error),
        Ok(Err(error)) if is_unreachable(&error) => ProbeOutcome::Unreachable(Some(error)),
        Ok(Err(_)) => ProbeOutcome::Answered,
        Err(_) => ProbeOutcome::Unreachable(None),
    }
}

/// One round trip to the broker: `true` if it answered (whatever it answered).
pub(crate) async fn probe(client: &DanubeClient) -> bool {
    !matches!(probe_once(client).await, ProbeOutcome::Unreachable(_))
}

/// Waits until the broker answers (see [`DanubeConnection::wait_until_reachable`]).
pub(crate) async fn wait_until_reachable(
    client: &DanubeClient,
    config: &DanubeConfig,
    cancel: &CancellationToken,
) -> Result<(), RuntimeError> {
    let started = Instant::now();
    let mut backoff = crate::retry::Backoff::between(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let last_error = match probe_once(client).await {
            ProbeOutcome::Answered => {
                info!(url = %config.service_url, "connected to Danube");
                return Ok(());
            }
            ProbeOutcome::Refused(error) => {
                error!(url = %config.service_url, error = %crate::error::error_chain(&error), "Danube broker refused the credentials (danube.token / danube.token_file)");
                return Err(client_error(error));
            }
            ProbeOutcome::Unreachable(error) => error,
        };
        if started.elapsed() >= config.connect_timeout {
            error!(url = %config.service_url, timeout = ?config.connect_timeout, "Danube broker unreachable until danube.connect_timeout");
            return Err(client_error(last_error.unwrap_or_else(|| {
                DanubeError::Unrecoverable(format!(
                    "broker {} did not answer within {:?}",
                    config.service_url, config.connect_timeout
                ))
            })));
        }
        let delay = backoff.next_delay();
        let cause = last_error.as_ref().map(|e| crate::error::error_chain(e)).unwrap_or_else(|| "no answer".into());
        warn!(url = %config.service_url, retry_in = ?delay, error = %cause, "Danube broker unreachable, retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => {
                return Err(client_error(DanubeError::Unrecoverable("cancelled while connecting".into())));
            }
        }
    }
}
