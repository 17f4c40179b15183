//! Request signatures: Standard Webhooks v1 and a generic body HMAC.
//!
//! Standard Webhooks (<https://www.standardwebhooks.com>): the signed content is
//! `{webhook-id}.{webhook-timestamp}.{body}`, signed with HMAC-SHA256 under the key that
//! follows `whsec_` (base64), sent as `webhook-signature: v1,<base64 signature>`. The
//! implementation is [`danube_connect_common::webhook`], which http-source verifies with.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};

use crate::config::{HmacAlgorithm, HmacConfig, HmacEncoding};

/// Header names of Standard Webhooks.
pub use danube_connect_common::webhook::headers;
/// The Standard Webhooks signer (one implementation, shared with http-source's verifier).
pub use danube_connect_common::webhook::Signer as WebhookSigner;

/// A generic `header: prefix + digest(HMAC(body))` signer.
#[derive(Clone)]
pub struct BodySigner {
    header: String,
    key: Vec<u8>,
    algorithm: HmacAlgorithm,
    encoding: HmacEncoding,
    prefix: String,
}

impl std::fmt::Debug for BodySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySigner").field("header", &self.header).finish_non_exhaustive()
    }
}

impl BodySigner {
    /// A signer from its configuration.
    pub fn new(config: &HmacConfig) -> Self {
        Self {
            header: config.header.clone(),
            key: config.secret.expose().as_bytes().to_vec(),
            algorithm: config.algorithm,
            encoding: config.encoding,
            prefix: config.prefix.clone(),
        }
    }

    /// The header name.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// The header value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let digest = match self.algorithm {
            HmacAlgorithm::Sha256 => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
                mac.update(body);
                mac.finalize().into_bytes().to_vec()
            }
            HmacAlgorithm::Sha512 => {
                let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
                mac.update(body);
                mac.finalize().into_bytes().to_vec()
            }
        };
        let encoded = match self.encoding {
            HmacEncoding::Hex => hex::encode(digest),
            HmacEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(digest),
        };
        format!("{}{}", self.prefix, encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_hmac_uses_prefix_and_encoding() {
        let signer = BodySigner::new(&HmacConfig {
            header: "x-sig".into(),
            secret: danube_connect_core::Secret::new("key"),
            algorithm: HmacAlgorithm::Sha256,
            encoding: HmacEncoding::Hex,
            prefix: "sha256=".into(),
        });
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog") from RFC examples.
        assert_eq!(
            signer.sign(b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
