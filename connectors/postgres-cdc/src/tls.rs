//! TLS for the query connection (the replication connection uses `pgwire-replication`'s own
//! TLS with the same mode): rustls with the same semantics as libpq's `sslmode`.
//!
//! `verify_ca` and the replication connection: `pgwire-replication` 0.5 tolerates a host
//! name mismatch only as rustls's old `NotValidForName` error, while rustls 0.23 reports
//! `NotValidForNameContext`, so its `verify_ca` refuses a certificate that does not name the
//! host. The query connection therefore records the DNS names of the certificate whose chain
//! it accepted ([`VerifiedNames`]), and the replication connection presents one of them as its
//! TLS server name: the chain is still checked, and the certificate must still carry the name.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsMode;
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

/// A rustls client configuration for `mode`, or `None` for `disable`; with `verify_ca`, the
/// names of an accepted certificate go to `names`.
pub fn client_config(
    mode: TlsMode,
    ca: Option<&Path>,
    names: &VerifiedNames,
) -> Result<Option<ClientConfig>, CdcError> {
    if mode == TlsMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CdcError::Setup(format!("TLS setup: {e}")))?;
    let config = match mode {
        TlsMode::Disable => return Ok(None),
        TlsMode::Require => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(provider))).with_no_client_auth()
        }
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = Arc::new(roots(ca)?);
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| CdcError::Setup(format!("TLS verifier: {e}")))?;
            let verifier: Arc<dyn ServerCertVerifier> =
                if mode == TlsMode::VerifyCa { Arc::new(ChainOnly(webpki, names.clone())) } else { webpki };
            builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        }
    };
    Ok(Some(config))
}

fn roots(ca: Option<&Path>) -> Result<RootCertStore, CdcError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| CdcError::Setup(format!("connector.tls_ca {}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(CdcError::Setup(format!("connector.tls_ca {}: no certificate", path.display())));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
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

/// The `dNSName` entries of a DER certificate's subjectAltName extension (found by its OID,
/// 2.5.29.17); empty when there is none or the encoding is not understood. A wrong guess only
/// makes the name check of the replication connection fail.
pub fn dns_names(der: &[u8]) -> Vec<String> {
    const SAN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
    let Some(at) = der.windows(SAN_OID.len()).position(|window| window == SAN_OID) else { return Vec::new() };
    let mut rest = &der[at + SAN_OID.len()..];
    if rest.first() == Some(&0x01) {
        // `critical BOOLEAN`
        let Some((_, _, after)) = element(rest) else { return Vec::new() };
        rest = after;
    }
    let Some((0x04, value, _)) = element(rest) else { return Vec::new() };
    let Some((0x30, mut names, _)) = element(value) else { return Vec::new() };
    let mut found = Vec::new();
    while let Some((tag, content, after)) = element(names) {
        // `[2] IMPLICIT IA5String`
        if tag == 0x82 {
            if let Ok(name) = std::str::from_utf8(content) {
                found.push(name.to_string());
            }
        }
        names = after;
    }
    found
}

/// One DER element: its tag, its content and what follows it.
fn element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |len, byte| (len << 8) | usize::from(*byte));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_are_read_from_the_subject_alt_name_extension() {
        // Extension { extnID 2.5.29.17, critical TRUE, extnValue { [2] "db.example", [7] 127.0.0.1, [2] "b" } }
        let mut der = vec![0x30, 0x21];
        der.extend([0x06, 0x03, 0x55, 0x1d, 0x11, 0x01, 0x01, 0xff, 0x04, 0x17, 0x30, 0x15]);
        der.extend([0x82, 0x0a]);
        der.extend(b"db.example");
        der.extend([0x87, 0x04, 127, 0, 0, 1, 0x82, 0x01, b'b']);
        assert_eq!(dns_names(&der), ["db.example", "b"]);
        assert!(dns_names(&der[..der.len() - 3]).is_empty(), "a truncated extension yields nothing");
        assert!(dns_names(b"no extension here").is_empty());
    }
}
