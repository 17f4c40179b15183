//! The registry of dynamic endpoints: an append-only JSON-lines file shared by every
//! instance (a shared volume), re-read every `dynamic.refresh_interval`.
//!
//! Each line is an event: `{"op":"create","endpoint":{…}}` or `{"op":"revoke","id":"…"}`.
//! Appends are one `write` of one line with `O_APPEND`, then `fsync`, so instances on one
//! file system never interleave lines. Replaying the file from the start gives the current
//! set; a revocation is seen by every instance at its next refresh, without restart.
//!
//! Why a file and not a Danube topic: with `danube-client` 0.16 a new subscription starts
//! at the end of a topic, so a restarted or new instance could not replay earlier events.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::{AckMode, Encoding, HttpSourceConfig, Scheme, VerificationConfig};
use crate::endpoint::Endpoint;

/// Timestamp tolerance of a dynamic endpoint that does not set one.
const DEFAULT_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(300);

/// The non-secret alias of a dynamic endpoint (`dyn-` and 12 hex digits of SHA-256 of its
/// id), used in logs, record attributes and dead-letter records: the id itself is the
/// endpoint's credential (whoever knows `/e/{id}` can post to it).
pub fn alias(id: &str) -> String {
    use sha2::Digest;
    format!("dyn-{}", hex::encode(&sha2::Sha256::digest(id.as_bytes())[..6]))
}

/// Verification of a dynamic endpoint, as stored in the registry (secrets in clear:
/// protect the registry file like a secret; it is created with mode 0600). `Debug` shows
/// no secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredVerification {
    /// The scheme.
    pub scheme: Scheme,
    /// The active secrets.
    pub secrets: Vec<String>,
    /// `token` / `hmac`: the header.
    #[serde(default)]
    pub header: Option<String>,
    /// `token` / `hmac`: the prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `hmac`: the encoding.
    #[serde(default)]
    pub encoding: Encoding,
    /// Timestamped schemes: how far the signed timestamp may be from now (`"10m"`);
    /// default 5 minutes.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<std::time::Duration>,
}

impl std::fmt::Debug for StoredVerification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredVerification")
            .field("scheme", &self.scheme)
            .field("secrets", &format_args!("[{} redacted]", self.secrets.len()))
            .field("header", &self.header)
            .field("prefix", &self.prefix)
            .field("encoding", &self.encoding)
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl StoredVerification {
    /// The equivalent endpoint verification config (tolerance default 5 minutes).
    pub fn to_config(&self) -> VerificationConfig {
        VerificationConfig {
            scheme: self.scheme,
            secrets: self.secrets.iter().map(danube_connect_core::Secret::new).collect(),
            header: self.header.clone(),
            prefix: self.prefix.clone(),
            encoding: self.encoding,
            tolerance: self.tolerance.unwrap_or(DEFAULT_TOLERANCE),
        }
    }
}

/// A dynamic endpoint as stored in the registry. `Debug` shows its alias, not its id.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicEndpoint {
    /// The random id; the endpoint's path is `/e/{id}`.
    pub id: String,
    /// Target topic.
    pub topic: String,
    /// Verification, if any.
    #[serde(default)]
    pub verification: Option<StoredVerification>,
    /// When to answer.
    #[serde(default)]
    pub ack: AckMode,
    /// Free text for operators.
    #[serde(default)]
    pub description: Option<String>,
    /// Creation time (RFC 3339).
    pub created_at: String,
}

impl std::fmt::Debug for DynamicEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicEndpoint")
            .field("alias", &alias(&self.id))
            .field("topic", &self.topic)
            .field("verification", &self.verification)
            .field("ack", &self.ack)
            .field("description", &self.description)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// One registry line. `Debug` shows no secret and no id.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Event {
    /// An endpoint was created.
    Create {
        /// Its definition.
        endpoint: DynamicEndpoint,
    },
    /// An endpoint was revoked.
    Revoke {
        /// Its id.
        id: String,
    },
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Create { endpoint } => f.debug_struct("Create").field("endpoint", endpoint).finish(),
            Self::Revoke { id } => f.debug_struct("Revoke").field("alias", &alias(id)).finish(),
        }
    }
}

/// Errors reading or writing the registry file.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read or written.
    #[error("registry file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An event could not be encoded.
    #[error("encode registry event")]
    Encode(#[source] serde_json::Error),
    /// The blocking task failed.
    #[error("registry task failed")]
    Task(#[source] tokio::task::JoinError),
}

#[derive(Default)]
struct ReadState {
    offset: u64,
    partial: Vec<u8>,
}

/// The live set of dynamic endpoints.
pub struct Registry {
    path: PathBuf,
    global: Arc<HttpSourceConfig>,
    endpoints: RwLock<HashMap<String, (DynamicEndpoint, Arc<Endpoint>)>>,
    read: Mutex<ReadState>,
    write: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry over `path` (nothing read yet: call [`refresh`](Self::refresh)).
    pub fn new(path: PathBuf, global: Arc<HttpSourceConfig>) -> Arc<Self> {
        Arc::new(Self {
            path,
            global,
            endpoints: RwLock::new(HashMap::new()),
            read: Mutex::new(ReadState::default()),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// The live endpoint with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Endpoint>> {
        self.endpoints.read().ok()?.get(id).map(|(_, e)| e.clone())
    }

    /// Every live endpoint's definition.
    pub fn list(&self) -> Vec<DynamicEndpoint> {
        let mut list: Vec<DynamicEndpoint> = match self.endpoints.read() {
            Ok(map) => map.values().map(|(d, _)| d.clone()).collect(),
            Err(_) => Vec::new(),
        };
        list.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        list
    }

    /// Number of live endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.read().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether there is no live endpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads what was appended since the last read (by any instance) and applies it.
    pub async fn refresh(self: &Arc<Self>) -> Result<(), RegistryError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.refresh_blocking()).await.map_err(RegistryError::Task)?
    }

    /// Appends an event (durably) and applies it together with anything new in the file.
    pub async fn append(self: &Arc<Self>, event: &Event) -> Result<(), RegistryError> {
        let mut line = serde_json::to_vec(event).map_err(RegistryError::Encode)?;
        line.push(b'\n');
        let _guard = self.write.lock().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || append_line(&path, &line)).await.map_err(RegistryError::Task)??;
        self.refresh().await
    }

    fn refresh_blocking(&self) -> Result<(), RegistryError> {
        let io = |source| RegistryError::Io { path: self.path.clone(), source };
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let len = file.metadata().map_err(io)?.len();
        let Ok(mut state) = self.read.lock() else { return Ok(()) };
        if len < state.offset {
            // Replaced or truncated: rebuild from the start.
            *state = ReadState::default();
            if let Ok(mut map) = self.endpoints.write() {
                map.clear();
            }
        }
        if len == state.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(state.offset)).map_err(io)?;
        let mut buffer = Vec::with_capacity((len - state.offset) as usize);
        file.read_to_end(&mut buffer).map_err(io)?;
        state.offset += buffer.len() as u64;
        let mut data = std::mem::take(&mut state.partial);
        data.extend_from_slice(&buffer);
        let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        state.partial = data.split_off(complete);
        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Event>(line) {
                Ok(event) => self.apply(event),
                Err(error) => warn!(path = %self.path.display(), %error, "skipping unreadable registry line"),
            }
        }
        Ok(())
    }

    fn apply(&self, event: Event) {
        let Ok(mut map) = self.endpoints.write() else { return };
        match event {
            Event::Create { endpoint } => match Endpoint::from_dynamic(&endpoint, &self.global) {
                Ok(compiled) => {
                    map.insert(endpoint.id.clone(), (endpoint, Arc::new(compiled)));
                }
                Err(error) => warn!(%error, "skipping invalid dynamic endpoint"),
            },
            Event::Revoke { id } => {
                map.remove(&id);
            }
        }
    }
}

fn append_line(path: &Path, line: &[u8]) -> Result<(), RegistryError> {
    let io = |source| RegistryError::Io { path: path.to_path_buf(), source };
    // 0600: the file holds every dynamic endpoint's id and secrets.
    let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(line).map_err(io)?;
    file.sync_data().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> DynamicEndpoint {
        DynamicEndpoint {
            id: "the-secret-endpoint-id".into(),
            topic: "/default/x".into(),
            verification: Some(StoredVerification {
                scheme: Scheme::Token,
                secrets: vec!["the-secret-token".into()],
                header: None,
                prefix: None,
                encoding: Encoding::Hex,
                tolerance: None,
            }),
            ack: AckMode::Durable,
            description: None,
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn debug_of_registry_types_shows_no_secret_and_no_id() {
        let endpoint = endpoint();
        for text in [
            format!("{endpoint:?}"),
            format!("{:?}", Event::Create { endpoint: endpoint.clone() }),
            format!("{:?}", Event::Revoke { id: endpoint.id.clone() }),
        ] {
            assert!(!text.contains("the-secret"), "{text}");
            assert!(text.contains(&alias(&endpoint.id)), "{text}");
        }
    }

    #[test]
    fn the_registry_file_is_created_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("registry.jsonl");
        append_line(&path, b"{}\n").expect("append");
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }

    #[test]
    fn aliases_are_stable_and_do_not_contain_the_id() {
        let a = alias("abc");
        assert_eq!(a, alias("abc"));
        assert_ne!(a, alias("abd"));
        assert!(a.starts_with("dyn-") && a.len() == 16 && !a.contains("abc"), "{a}");
    }
}
