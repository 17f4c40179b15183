//! TLS shared by every connector and the runtime: the process-wide rustls crypto provider,
//! and the one configuration type for clients ([`ClientTls`]) and one for servers
//! ([`ServerTls`]), with the same field names everywhere and PEM loading whose errors
//! name the field and the file.
//!
//! Client rule: with `ca`, only the certificates in `ca` are trusted (as curl's `--cacert`,
//! libpq's `sslrootcert`); `builtin_roots = true` trusts the built-in web roots too, and
//! without `ca` they are what is trusted. `client_cert` and `client_key` (both or neither)
//! are the client's identity for mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// Makes rustls' `ring` provider the process-wide default, unless a default is already set.
///
/// Libraries that build TLS configs without naming a provider (tonic's client and server TLS,
/// so `danube-client` and the dev broker) ask rustls for the process default. rustls can pick
/// one by itself only when exactly one of its `ring` / `aws-lc-rs` features is enabled; in a
/// binary or test that links crates enabling both, it panics instead. Calling this before
/// TLS is configured avoids that. Calling it again is harmless.
pub fn install_default_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one meanwhile; either way a default now exists.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// TLS of a client connection (to an HTTP endpoint, an MQTT broker, PostgreSQL, Danube).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// CA certificates (PEM) to trust; the only ones trusted unless `builtin_roots`.
    /// `ca_file` is the old spelling.
    #[serde(alias = "ca_file")]
    pub ca: Option<PathBuf>,
    /// Trust the built-in web roots as well as `ca` (always, without `ca`).
    pub builtin_roots: bool,
    /// Old spelling: `ca_only = false` is `builtin_roots = true`; `true` is the default now.
    #[serde(skip_serializing)]
    pub ca_only: Option<bool>,
    /// The client's certificate chain (PEM), for mutual TLS; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The client's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

/// A certificate chain and its private key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// TLS of a server's listener (the HTTP source, the embedded MQTT broker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A TLS setting that is not usable: the field (`connector.tls.cert`) and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{field}")]
pub struct TlsError {
    /// The configuration field.
    pub field: String,
    /// What is wrong with it.
    #[source]
    pub problem: TlsProblem,
}

/// What is wrong with a TLS setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM.
    #[error("{path} is not PEM")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    /// The file holds no private key.
    #[error("{0} holds no private key")]
    NoKey(PathBuf),
    /// A setting that needs another one.
    #[error("needs `{0}` too")]
    Needs(&'static str),
    /// rustls refused the settings (e.g. the key does not match the certificate).
    #[error("not usable by rustls")]
    Rustls(#[source] rustls::Error),
}

impl TlsError {
    /// The error of field `name` of section `section` (`connector.tls`, `client_cert`).
    pub fn new(section: &str, name: &str, problem: TlsProblem) -> Self {
        Self { field: format!("{section}.{name}"), problem }
    }

    /// The problem with its causes, one line (for a configuration error naming `field`).
    pub fn reason(&self) -> String {
        crate::error_chain(&self.problem)
    }
}

/// The certificates in a PEM file (at least one).
pub fn load_certificates(section: &str, name: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |problem| TlsError::new(section, name, problem);
    let pem = std::fs::read(path).map_err(|source| fail(TlsProblem::Read { path: path.to_path_buf(), source }))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| fail(TlsProblem::Pem { path: path.to_path_buf(), source }))?;
    if certs.is_empty() {
        return Err(fail(TlsProblem::NoCertificate(path.to_path_buf())));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_private_key(section: &str, name: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let fail = |problem| TlsError::new(section, name, problem);
    let pem = std::fs::read(path).map_err(|source| fail(TlsProblem::Read { path: path.to_path_buf(), source }))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => fail(TlsProblem::NoKey(path.to_path_buf())),
        source => fail(TlsProblem::Pem { path: path.to_path_buf(), source }),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ClientTls {
    /// Whether the built-in web roots are trusted.
    pub fn trusts_builtin_roots(&self) -> bool {
        self.ca.is_none() || self.builtin_roots || self.ca_only == Some(false)
    }

    /// Checks the settings of the section `section` (`connector.tls`) and loads every file
    /// once, so a bad one fails at configuration load.
    pub fn validate(&self, section: &str) -> Result<(), TlsError> {
        if self.ca.is_none() && (self.ca_only.is_some() || self.builtin_roots) {
            let name = if self.builtin_roots { "builtin_roots" } else { "ca_only" };
            return Err(TlsError::new(section, name, TlsProblem::Needs("ca")));
        }
        self.roots(section)?;
        self.identity(section)?;
        Ok(())
    }

    /// The certificates of `ca`, if set.
    pub fn ca_certificates(&self, section: &str) -> Result<Option<Vec<CertificateDer<'static>>>, TlsError> {
        self.ca.as_deref().map(|path| load_certificates(section, "ca", path)).transpose()
    }

    /// The trusted roots: `ca`, and the built-in web roots when trusted.
    pub fn roots(&self, section: &str) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(certs) = self.ca_certificates(section)? {
            for cert in certs {
                roots.add(cert).map_err(|e| TlsError::new(section, "ca", TlsProblem::Rustls(e)))?;
            }
        }
        if self.trusts_builtin_roots() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        Ok(roots)
    }

    /// The client's certificate chain and key, when mutual TLS is configured.
    pub fn identity(&self, section: &str) -> Result<Option<Identity>, TlsError> {
        match (&self.client_cert, &self.client_key) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::new(section, "client_cert", TlsProblem::Needs("client_key"))),
            (None, Some(_)) => Err(TlsError::new(section, "client_key", TlsProblem::Needs("client_cert"))),
            (Some(cert), Some(key)) => Ok(Some((
                load_certificates(section, "client_cert", cert)?,
                load_private_key(section, "client_key", key)?,
            ))),
        }
    }

    /// The rustls client configuration (ring provider, safe default protocol versions).
    pub fn rustls_config(&self, section: &str) -> Result<rustls::ClientConfig, TlsError> {
        let rustls = |e| TlsError::new(section, "client_cert", TlsProblem::Rustls(e));
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls)?
            .with_root_certificates(self.roots(section)?);
        match self.identity(section)? {
            Some((certs, key)) => builder.with_client_auth_cert(certs, key).map_err(rustls),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

impl ServerTls {
    /// Loads the certificate chain and key once, so a bad file fails at configuration load.
    pub fn validate(&self, section: &str) -> Result<(), TlsError> {
        self.rustls_config(section, Vec::new()).map(drop)
    }

    /// The rustls server configuration (ring provider, safe default protocol versions, no
    /// client authentication) offering `alpn` protocols.
    pub fn rustls_config(&self, section: &str, alpn: Vec<Vec<u8>>) -> Result<rustls::ServerConfig, TlsError> {
        let certs = load_certificates(section, "cert", &self.cert)?;
        let key = load_private_key(section, "key", &self.key)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(section, "cert", TlsProblem::Rustls(e)))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::new(section, "key", TlsProblem::Rustls(e)))?;
        config.alpn_protocols = alpn;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field_and_the_file() {
        let dir = std::env::temp_dir().join(format!("danube-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let server = ServerTls { cert: dir.join("missing.pem"), key: not_pem.clone() };
        let err = server.validate("connector.tls").expect_err("missing file");
        assert_eq!(err.field, "connector.tls.cert");
        assert!(err.reason().contains("missing.pem"), "{}", err.reason());
        let client = ClientTls { ca: Some(not_pem.clone()), ..Default::default() };
        let err = client.validate("connector.broker.tls").expect_err("no certificate");
        assert_eq!(err.field, "connector.broker.tls.ca");
        assert!(err.reason().contains("not.pem"), "{}", err.reason());
        let half = ClientTls { client_cert: Some(not_pem), ..Default::default() };
        assert_eq!(half.validate("danube.tls").expect_err("needs the key").field, "danube.tls.client_cert");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn with_a_ca_only_it_is_trusted_unless_builtin_roots() {
        let none = ClientTls::default();
        assert!(none.trusts_builtin_roots());
        let ca = ClientTls { ca: Some("/x".into()), ..Default::default() };
        assert!(!ca.trusts_builtin_roots());
        assert!(ClientTls { builtin_roots: true, ..ca.clone() }.trusts_builtin_roots());
        let old: ClientTls = serde_json::from_str(r#"{"ca_file": "/x", "ca_only": false}"#).expect("old spelling");
        assert_eq!(old.ca.as_deref(), Some(Path::new("/x")));
        assert!(old.trusts_builtin_roots());
    }

    #[test]
    fn a_default_provider_exists_afterwards_and_a_second_call_is_harmless() {
        install_default_crypto_provider();
        install_default_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
