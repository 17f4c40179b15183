//! TLS of both PostgreSQL connections from [`PostgresTls`] (libpq's `sslmode` plus the shared
//! [`ClientTls`](danube_connect_common::tls::ClientTls)): the query connection's rustls
//! configuration ([`client_config`], roots and client identity from `ClientTls`) and the
//! replication connection's `pgwire-replication` settings ([`replication_tls`], which reads
//! the same files by path, client certificate included).
//!
//! `verify_ca` and the replication connection: `pgwire-replication` 0.5 tolerates a host
//! name mismatch only as rustls's old `NotValidForName` error, while rustls 0.23 reports
//! `NotValidForNameContext`, so its `verify_ca` refuses a certificate that does not name the
//! host. The query connection therefore records the DNS names of the certificate whose chain
//! it accepted ([`VerifiedNames`]), and the replication connection presents one of them as its
//! TLS server name: the chain is still checked, and the certificate must still carry the name.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use danube_connect_common::tls::{TlsError, TlsProblem};

use crate::config::{PostgresTls, TlsMode};
use crate::error::CdcError;

/// The DNS names of the last server certificate whose chain `verify_ca` accepted on the query
/// connection. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct VerifiedNames(Arc<Mutex<Vec<String>>>);

impl VerifiedNames {
    /// The first recorded name, if any.
    pub fn first(&self) -> Option<String> {
        let names = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        names.first().cloned()
    }

    fn set(&self, names: Vec<String>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = names;
    }
}

/// The configuration section every TLS error names.
const SECTION: &str = "connector.tls";

/// A rustls client configuration for the query connection, or `None` for `disable`; with
/// `verify_ca`, the names of an accepted certificate go to `names`. Roots and the client's
/// identity (mutual TLS) come from the shared `ClientTls`.
pub fn client_config(tls: &PostgresTls, names: &VerifiedNames) -> Result<Option<ClientConfig>, CdcError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CdcError::Setup(format!("TLS setup: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match tls.mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Require => Arc::new(AcceptAny(provider)),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = Arc::new(tls.client.roots(SECTION)?);
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| CdcError::Setup(format!("TLS verifier: {e}")))?;
            if tls.mode == TlsMode::VerifyCa {
                Arc::new(ChainOnly(webpki, names.clone()))
            } else {
                webpki
            }
        }
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let config = match tls.client.identity(SECTION)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| CdcError::Tls(TlsError::new(SECTION, "client_cert", TlsProblem::Rustls(e))))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Some(config))
}

/// The replication connection's TLS settings: the same mode, CA file and client certificate
/// (`pgwire-replication` reads them by path; without `ca` it trusts the built-in web roots,
/// as the query connection does). With `verify_ca`, the name the query connection's
/// accepted certificate carries is the TLS server name (see the module docs).
pub fn replication_tls(tls: &PostgresTls, names: &VerifiedNames) -> pgwire_replication::TlsConfig {
    use pgwire_replication::TlsConfig;
    let ca = tls.client.ca.clone();
    let config = match tls.mode {
        TlsMode::Disable => return TlsConfig::disabled(),
        TlsMode::Require => TlsConfig::require(),
        TlsMode::VerifyCa => match names.first() {
            Some(name) => TlsConfig::verify_ca(ca).with_sni_hostname(name),
            None => TlsConfig::verify_ca(ca),
        },
        TlsMode::VerifyFull => TlsConfig::verify_full(ca),
    };
    match (&tls.client.client_cert, &tls.client.client_key) {
        (Some(cert), Some(key)) => config.with_client_cert(cert, key),
        _ => config,
    }
}

/// `require`: encrypted, certificate not checked (libpq semantics); signatures still verified.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify_ca`: chain checked against the CA, host name not checked; the accepted
/// certificate's DNS names are recorded.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>, VerifiedNames);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                ServerCertVerified::assertion()
            }
            other => other?,
        };
        self.1.set(dns_names(end_entity.as_ref()));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The `dNSName` entries of a DER certificate's subjectAltName extension; empty when there is
/// none or the certificate does not decode. A wrong guess only makes the name check of the
/// replication connection fail.
pub fn dns_names(der: &[u8]) -> Vec<String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;

    let Ok(certificate) = x509_cert::Certificate::from_der(der) else { return Vec::new() };
    let Ok(Some((_, SubjectAltName(names)))) = certificate.tbs_certificate.get::<SubjectAltName>() else {
        return Vec::new();
    };
    names
        .into_iter()
        .filter_map(|name| match name {
            GeneralName::DnsName(name) => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_read_from_the_subject_alt_name_extension() {
        let names = ["db.example".to_string(), "127.0.0.1".to_string(), "b".to_string()];
        let certified = rcgen::generate_simple_self_signed(names).expect("certificate");
        let der = certified.cert.der().to_vec();
        assert_eq!(dns_names(&der), ["db.example", "b"], "DNS names only, not the IP address");
        assert!(dns_names(&der[..der.len() - 3]).is_empty(), "a truncated certificate yields nothing");
        assert!(dns_names(b"no extension here").is_empty());
    }
}
