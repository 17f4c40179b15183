//! Standard Webhooks v1 (<https://www.standardwebhooks.com>), one implementation for the
//! sender that signs (danube-http-sink) and the receiver that verifies (danube-http-source).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, signed with
//! HMAC-SHA256 under the secret's key and sent as `webhook-signature: v1,<base64>`
//! (several space-separated signatures may be sent during a key rotation).
//!
//! One rule for secrets ([`secret_key`]): `whsec_` followed by the standard base64 of the
//! key (the prefix may be left out, as the reference libraries allow), the key at least
//! [`MIN_KEY_BYTES`] bytes.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header names of Standard Webhooks.
pub mod headers {
    /// The message id (the same on every attempt).
    pub const ID: &str = "webhook-id";
    /// Unix seconds of this attempt.
    pub const TIMESTAMP: &str = "webhook-timestamp";
    /// `v1,<base64 HMAC-SHA256>`, space-separated when several.
    pub const SIGNATURE: &str = "webhook-signature";
}

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The shortest key accepted (the specification asks for 24 to 64 bytes).
pub const MIN_KEY_BYTES: usize = 16;

/// Why a `whsec_` secret is not usable (the text names no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The part after `whsec_` is not standard base64.
    #[error("must be `whsec_` followed by the base64 of the key")]
    NotBase64,
    /// The key is too short.
    #[error("the key must be at least {MIN_KEY_BYTES} bytes ({} base64 characters)", MIN_KEY_BYTES.div_ceil(3) * 4)]
    TooShort,
}

/// The HMAC key of a Standard Webhooks secret: `whsec_<base64>` or bare base64.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, SecretError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = STANDARD.decode(encoded.trim()).map_err(|_| SecretError::NotBase64)?;
    if key.len() < MIN_KEY_BYTES {
        return Err(SecretError::TooShort);
    }
    Ok(key)
}

/// The bytes signed before the body: `{id}.{timestamp}.`.
pub fn signed_prefix(id: &str, timestamp: &str) -> Vec<u8> {
    format!("{id}.{timestamp}.").into_bytes()
}

/// HMAC-SHA256 under `key` of `{prefix}{body}` (the v1 signature, raw).
pub fn mac(key: &[u8], prefix: &[u8], body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` never fails for it.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else { return [0; 32] };
    mac.update(prefix);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Signs with the key of a `whsec_` secret; its `Debug` output hides the key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// A signer for a secret ([`secret_key`]'s rule).
    pub fn from_secret(secret: &str) -> Result<Self, SecretError> {
        secret_key(secret).map(|key| Self { key })
    }

    /// A signer for the raw key bytes.
    pub fn from_key(key: Vec<u8>) -> Self {
        Self { key }
    }

    /// The `webhook-signature` value of one attempt: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mac = mac(&self.key, &signed_prefix(id, &timestamp.to_string()), body);
        format!("v1,{}", STANDARD.encode(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference implementations.
    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        let signer = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let signature = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn one_rule_for_secrets() {
        let bare = secret_key("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("bare base64");
        assert_eq!(secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("prefixed"), bare);
        assert_eq!(secret_key("whsec_not base64!"), Err(SecretError::NotBase64));
        assert_eq!(secret_key("whsec_c2hvcnQ="), Err(SecretError::TooShort));
        assert!(!format!("{:?}", Signer::from_key(bare)).contains("MfKQ"));
    }
}
