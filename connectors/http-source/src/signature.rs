//! Request verification: shared tokens, generic HMAC-SHA256, GitHub, Stripe, Slack and
//! Standard Webhooks (v1 HMAC and v1a ed25519).
//!
//! Every scheme accepts several secrets (rotation), compares in constant time (HMAC
//! `verify_slice`, `subtle` for tokens) and, where the scheme signs a timestamp, refuses
//! requests whose timestamp is further than the tolerance from now (replays).
//!
//! Strings to sign, as documented by each provider:
//!
//! | scheme | header(s) | signed bytes |
//! |---|---|---|
//! | `hmac` | configured, optional prefix, hex or base64 | `{body}` |
//! | `github` | `X-Hub-Signature-256: sha256=<hex>` | `{body}` |
//! | `stripe` | `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]` | `{t}.{body}` |
//! | `slack` | `X-Slack-Signature: v0=<hex>`, `X-Slack-Request-Timestamp` | `v0:{ts}:{body}` |
//! | `standard_webhooks` | `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64> v1a,<b64>` | `{id}.{ts}.{body}` |

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Encoding, Scheme, VerificationConfig};

type HmacSha256 = Hmac<Sha256>;

/// Why a request failed verification (answered with 401; the text names no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header the scheme needs is absent.
    #[error("header `{0}` is missing")]
    MissingHeader(String),
    /// A header is present but not in the scheme's form.
    #[error("header `{0}` is malformed")]
    Malformed(String),
    /// The signed timestamp is outside the tolerance (a replay, or a skewed clock).
    #[error("timestamp is outside the tolerance")]
    StaleTimestamp,
    /// No active secret produces the given signature or token.
    #[error("signature does not match")]
    Mismatch,
}

/// What verification learned about the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// The provider's delivery id, if the scheme carries one (`X-GitHub-Delivery`, `webhook-id`).
    pub delivery_id: Option<String>,
}

#[derive(Clone)]
pub(crate) enum Key {
    /// An HMAC key.
    Hmac(Vec<u8>),
    /// SHA-256 of a shared token (compared in constant time, length hidden).
    Token([u8; 32]),
    /// An ed25519 public key (Standard Webhooks `v1a`).
    Ed25519(VerifyingKey),
}

/// A compiled verification scheme for one endpoint.
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
    keys: Vec<Key>,
    header: HeaderName,
    prefix: String,
    encoding: Encoding,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("scheme", &self.scheme).field("keys", &self.keys.len()).finish()
    }
}

/// Parses a Standard Webhooks secret: `whsec_<base64>` (HMAC key), `whpk_<base64>`
/// (32-byte ed25519 public key) or bare base64 (HMAC key).
pub(crate) fn standard_webhooks_key(secret: &str) -> Result<Key, String> {
    if let Some(encoded) = secret.strip_prefix("whpk_") {
        let bytes = STANDARD.decode(encoded).map_err(|_| "whpk_ key is not base64".to_string())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| "whpk_ key must be 32 bytes".to_string())?;
        return VerifyingKey::from_bytes(&bytes)
            .map(Key::Ed25519)
            .map_err(|_| "whpk_ key is not an ed25519 public key".to_string());
    }
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    STANDARD
        .decode(encoded)
        .map(Key::Hmac)
        .map_err(|_| "must be whsec_ followed by base64 (or whpk_ and a base64 ed25519 public key)".to_string())
}

impl Verifier {
    /// Compiles a validated verification config.
    pub fn new(config: &VerificationConfig) -> Result<Self, String> {
        let mut keys = Vec::with_capacity(config.secrets.len());
        for secret in &config.secrets {
            let value = secret.expose();
            keys.push(match config.scheme {
                Scheme::Token => Key::Token(Sha256::digest(value.as_bytes()).into()),
                Scheme::StandardWebhooks => standard_webhooks_key(value)?,
                _ => Key::Hmac(value.as_bytes().to_vec()),
            });
        }
        let header = match (&config.header, config.scheme) {
            (Some(h), _) => h.as_str(),
            (None, Scheme::Token) => "authorization",
            (None, Scheme::Github) => "x-hub-signature-256",
            (None, Scheme::Stripe) => "stripe-signature",
            (None, Scheme::Slack) => "x-slack-signature",
            (None, Scheme::StandardWebhooks) => "webhook-signature",
            (None, Scheme::Hmac) => return Err("the hmac scheme needs `header`".into()),
        };
        let header = HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("`{header}` is not a header name"))?;
        let prefix = match (&config.prefix, config.scheme) {
            (Some(p), _) => p.clone(),
            (None, Scheme::Token) if config.header.is_none() => "Bearer ".into(),
            _ => String::new(),
        };
        Ok(Self { scheme: config.scheme, keys, header, prefix, encoding: config.encoding, tolerance: config.tolerance })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Verifies one request against every active secret.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        match self.scheme {
            Scheme::Token => self.verify_token(headers),
            Scheme::Hmac => self.verify_hmac(headers, body),
            Scheme::Github => self.verify_github(headers, body),
            Scheme::Stripe => self.verify_stripe(headers, body, now),
            Scheme::Slack => self.verify_slack(headers, body, now),
            Scheme::StandardWebhooks => self.verify_standard(headers, body, now),
        }
    }

    fn verify_token(&self, headers: &HeaderMap) -> Result<Verified, VerifyError> {
        let value = header_str(headers, self.header.as_str())?;
        let token = strip_prefix_ignore_case(value, &self.prefix)
            .ok_or_else(|| VerifyError::Malformed(self.header.to_string()))?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let mut matched = subtle::Choice::from(0);
        for key in &self.keys {
            if let Key::Token(expected) = key {
                matched |= expected.ct_eq(&digest);
            }
        }
        if bool::from(matched) {
            Ok(Verified::default())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn verify_hmac(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        let value = header_str(headers, self.header.as_str())?;
        let encoded = strip_prefix_ignore_case(value.trim(), &self.prefix)
            .ok_or_else(|| VerifyError::Malformed(self.header.to_string()))?;
        let signature = match self.encoding {
            Encoding::Hex => hex::decode(encoded).ok(),
            Encoding::Base64 => STANDARD.decode(encoded).or_else(|_| STANDARD_NO_PAD.decode(encoded)).ok(),
        }
        .ok_or_else(|| VerifyError::Malformed(self.header.to_string()))?;
        self.any_hmac(&[body], &signature)?;
        Ok(Verified::default())
    }

    fn verify_github(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, VerifyError> {
        let value = header_str(headers, "x-hub-signature-256")?;
        let signature = value
            .trim()
            .strip_prefix("sha256=")
            .and_then(|hex_sig| hex::decode(hex_sig).ok())
            .ok_or_else(|| VerifyError::Malformed("x-hub-signature-256".into()))?;
        self.any_hmac(&[body], &signature)?;
        Ok(Verified { delivery_id: optional_header(headers, "x-github-delivery") })
    }

    fn verify_stripe(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let value = header_str(headers, "stripe-signature")?;
        let malformed = || VerifyError::Malformed("stripe-signature".into());
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for item in value.split(',') {
            let (name, val) = item.trim().split_once('=').ok_or_else(malformed)?;
            match name {
                "t" => timestamp = Some(val),
                "v1" => signatures.push(hex::decode(val).map_err(|_| malformed())?),
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or_else(malformed)?;
        if signatures.is_empty() {
            return Err(malformed());
        }
        self.check_timestamp(timestamp, "stripe-signature", now)?;
        for signature in &signatures {
            if self.any_hmac(&[timestamp.as_bytes(), b".", body], signature).is_ok() {
                return Ok(Verified::default());
            }
        }
        Err(VerifyError::Mismatch)
    }

    fn verify_slack(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let timestamp = header_str(headers, "x-slack-request-timestamp")?.trim();
        let value = header_str(headers, "x-slack-signature")?;
        let signature = value
            .trim()
            .strip_prefix("v0=")
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| VerifyError::Malformed("x-slack-signature".into()))?;
        self.check_timestamp(timestamp, "x-slack-request-timestamp", now)?;
        self.any_hmac(&[b"v0:", timestamp.as_bytes(), b":", body], &signature)?;
        Ok(Verified::default())
    }

    fn verify_standard(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        let id = header_str(headers, "webhook-id")?.trim();
        let timestamp = header_str(headers, "webhook-timestamp")?.trim();
        let value = header_str(headers, "webhook-signature")?;
        self.check_timestamp(timestamp, "webhook-timestamp", now)?;
        let signed: Vec<u8> = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
        let mut saw_any = false;
        for item in value.split_whitespace() {
            let Some((version, encoded)) = item.split_once(',') else { continue };
            let Ok(signature) = STANDARD.decode(encoded) else { continue };
            saw_any = true;
            for key in &self.keys {
                let ok = match (version, key) {
                    ("v1", Key::Hmac(secret)) => hmac_matches(secret, &[&signed], &signature),
                    ("v1a", Key::Ed25519(public)) => {
                        Signature::from_slice(&signature).is_ok_and(|sig| public.verify_strict(&signed, &sig).is_ok())
                    }
                    _ => false,
                };
                if ok {
                    return Ok(Verified { delivery_id: Some(id.to_string()) });
                }
            }
        }
        if saw_any {
            Err(VerifyError::Mismatch)
        } else {
            Err(VerifyError::Malformed("webhook-signature".into()))
        }
    }

    fn any_hmac(&self, parts: &[&[u8]], signature: &[u8]) -> Result<(), VerifyError> {
        for key in &self.keys {
            if let Key::Hmac(secret) = key {
                if hmac_matches(secret, parts, signature) {
                    return Ok(());
                }
            }
        }
        Err(VerifyError::Mismatch)
    }

    fn check_timestamp(&self, timestamp: &str, header: &str, now: SystemTime) -> Result<(), VerifyError> {
        let seconds: u64 = timestamp.parse().map_err(|_| VerifyError::Malformed(header.to_string()))?;
        let now = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if now.abs_diff(seconds) > self.tolerance.as_secs() {
            return Err(VerifyError::StaleTimestamp);
        }
        Ok(())
    }
}

fn hmac_matches(key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else { return false };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(signature).is_ok()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, VerifyError> {
    let value = headers.get(name).ok_or_else(|| VerifyError::MissingHeader(name.to_string()))?;
    value.to_str().map_err(|_| VerifyError::Malformed(name.to_string()))
}

fn optional_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    if value.len() < prefix.len() || !value.is_char_boundary(prefix.len()) {
        return None;
    }
    let (head, tail) = value.split_at(prefix.len());
    head.eq_ignore_ascii_case(prefix).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use danube_connect_core::Secret;

    fn verifier(scheme: Scheme, secrets: &[&str]) -> Verifier {
        Verifier::new(&VerificationConfig {
            scheme,
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            header: None,
            prefix: None,
            encoding: Encoding::Hex,
            tolerance: Duration::from_secs(300),
        })
        .expect("verifier")
    }

    #[test]
    fn token_accepts_any_active_secret_and_rejects_others() {
        let v = verifier(Scheme::Token, &["old-token", "new-token"]);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer new-token".parse().expect("header"));
        assert!(v.verify(&headers, b"", SystemTime::now()).is_ok());
        headers.insert("authorization", "bearer old-token".parse().expect("header"));
        assert!(v.verify(&headers, b"", SystemTime::now()).is_ok());
        headers.insert("authorization", "Bearer other".parse().expect("header"));
        assert_eq!(v.verify(&headers, b"", SystemTime::now()), Err(VerifyError::Mismatch));
        headers.insert("authorization", "Basic new-token".parse().expect("header"));
        assert!(matches!(v.verify(&headers, b"", SystemTime::now()), Err(VerifyError::Malformed(_))));
    }

    #[test]
    fn github_known_vector_from_the_docs() {
        // GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!".
        let v = verifier(Scheme::Github, &["It's a Secret to Everybody"]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".parse().expect("header"),
        );
        assert!(v.verify(&headers, b"Hello, World!", SystemTime::now()).is_ok());
        assert_eq!(v.verify(&headers, b"Hello, World?", SystemTime::now()), Err(VerifyError::Mismatch));
    }

    #[test]
    fn timestamps_outside_tolerance_are_refused() {
        let v = verifier(Scheme::Slack, &["s"]);
        let mut headers = HeaderMap::new();
        headers.insert("x-slack-request-timestamp", "1000".parse().expect("header"));
        headers.insert("x-slack-signature", "v0=00".parse().expect("header"));
        let now = UNIX_EPOCH + Duration::from_secs(1000 + 301);
        assert_eq!(v.verify(&headers, b"", now), Err(VerifyError::StaleTimestamp));
    }
}
