//! Request verification: shared tokens, generic HMAC-SHA256, GitHub, Stripe, Slack and
//! Standard Webhooks (v1 HMAC and v1a ed25519).
//!
//! Every scheme accepts several secrets (rotation), compares in constant time (`subtle`)
//! and, where the scheme signs a timestamp, refuses requests whose timestamp is further than
//! the tolerance from now (replays).
//!
//! Cost is bounded whatever a sender puts in the headers: verification is split into
//! [`Verifier::check_headers`] (parses the headers, refuses empty signatures and more than
//! [`MAX_CANDIDATES`] of them, checks the timestamp; no body needed, so a bad request is
//! refused before its body is read) and [`Checked::verify_body`], which computes each
//! configured HMAC secret's MAC once and compares it with every candidate. Only ed25519
//! (`v1a`) costs one verification per candidate and public key, bounded by the cap.
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
use danube_connect_common::webhook;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::{Encoding, Scheme, VerificationConfig};

/// Signatures one header may carry, at most (Stripe `v1=` items, Standard Webhooks
/// `v1,`/`v1a,` items); more → 401 before the body is read.
pub const MAX_CANDIDATES: usize = 8;

/// Items of any kind one header may carry, at most (Stripe's `t=`, `v0=`, unknown items).
const MAX_ITEMS: usize = 2 * MAX_CANDIDATES;

/// Why a request failed verification (answered with 401; the text names no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A header the scheme needs is absent.
    #[error("header `{0}` is missing")]
    MissingHeader(String),
    /// A header is present but not in the scheme's form.
    #[error("header `{0}` is malformed")]
    Malformed(String),
    /// A header carries an empty signature.
    #[error("header `{0}` carries an empty signature")]
    EmptySignature(String),
    /// A header carries more signatures (or items) than allowed.
    #[error("header `{header}` carries more than {max} signatures")]
    TooManySignatures {
        /// The header.
        header: String,
        /// The cap.
        max: usize,
    },
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

/// A request whose headers passed [`Verifier::check_headers`]; the body check remains.
#[derive(Debug)]
pub struct Checked {
    /// Bytes signed before the body (`{t}.` for Stripe, `{id}.{ts}.` for Standard Webhooks).
    signed_prefix: Vec<u8>,
    /// Candidate HMAC-SHA256 values (wrong lengths never match).
    hmac: Vec<Vec<u8>>,
    /// Candidate ed25519 signatures (Standard Webhooks `v1a`).
    ed25519: Vec<Signature>,
    /// Nothing left to check (token schemes).
    done: bool,
    delivery_id: Option<String>,
}

impl Checked {
    fn done(delivery_id: Option<String>) -> Self {
        Self { signed_prefix: Vec::new(), hmac: Vec::new(), ed25519: Vec::new(), done: true, delivery_id }
    }

    fn signed(prefix: Vec<u8>, hmac: Vec<Vec<u8>>, delivery_id: Option<String>) -> Self {
        Self { signed_prefix: prefix, hmac, ed25519: Vec::new(), done: false, delivery_id }
    }

    /// Whether the body still has to be checked (false for token schemes).
    pub fn needs_body(&self) -> bool {
        !self.done
    }

    /// Checks the body against the candidates: each HMAC secret's MAC is computed once over
    /// `{prefix}{body}` and compared in constant time with every candidate.
    pub fn verify_body(self, verifier: &Verifier, body: &[u8]) -> Result<Verified, VerifyError> {
        if self.done {
            return Ok(Verified { delivery_id: self.delivery_id });
        }
        let mut matched = Choice::from(0);
        if !self.hmac.is_empty() {
            for key in &verifier.keys {
                let Key::Hmac(secret) = key else { continue };
                let expected = webhook::mac(secret, &self.signed_prefix, body);
                for candidate in &self.hmac {
                    if candidate.len() == expected.len() {
                        matched |= expected.as_slice().ct_eq(candidate);
                    }
                }
            }
        }
        if !bool::from(matched) && !self.ed25519.is_empty() {
            let message = [self.signed_prefix.as_slice(), body].concat();
            let ok = verifier.keys.iter().any(|key| match key {
                Key::Ed25519(public) => self.ed25519.iter().any(|sig| public.verify_strict(&message, sig).is_ok()),
                _ => false,
            });
            matched |= Choice::from(u8::from(ok));
        }
        if bool::from(matched) {
            Ok(Verified { delivery_id: self.delivery_id })
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

/// Parses a Standard Webhooks secret: `whpk_<base64>` (32-byte ed25519 public key), or an
/// HMAC key by the one rule for `whsec_` secrets ([`webhook::secret_key`]).
pub(crate) fn standard_webhooks_key(secret: &str) -> Result<Key, String> {
    if let Some(encoded) = secret.strip_prefix("whpk_") {
        let bytes = STANDARD.decode(encoded).map_err(|_| "whpk_ key is not base64".to_string())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| "whpk_ key must be 32 bytes".to_string())?;
        return VerifyingKey::from_bytes(&bytes)
            .map(Key::Ed25519)
            .map_err(|_| "whpk_ key is not an ed25519 public key".to_string());
    }
    webhook::secret_key(secret)
        .map(Key::Hmac)
        .map_err(|e| format!("{e} (or whpk_ followed by the base64 of an ed25519 public key)"))
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

    /// Verifies one request against every active secret (headers, then body).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<Verified, VerifyError> {
        self.check_headers(headers, now)?.verify_body(self, body)
    }

    /// Everything that can be checked without the body: header presence and form, the
    /// number of signatures, the timestamp, and the whole token scheme.
    pub fn check_headers(&self, headers: &HeaderMap, now: SystemTime) -> Result<Checked, VerifyError> {
        match self.scheme {
            Scheme::Token => self.verify_token(headers).map(|()| Checked::done(None)),
            Scheme::Hmac => self.check_hmac(headers),
            Scheme::Github => self.check_github(headers),
            Scheme::Stripe => self.check_stripe(headers, now),
            Scheme::Slack => self.check_slack(headers, now),
            Scheme::StandardWebhooks => self.check_standard(headers, now),
        }
    }

    fn verify_token(&self, headers: &HeaderMap) -> Result<(), VerifyError> {
        let value = header_str(headers, self.header.as_str())?;
        let token = strip_prefix_ignore_case(value, &self.prefix)
            .ok_or_else(|| VerifyError::Malformed(self.header.to_string()))?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let mut matched = Choice::from(0);
        for key in &self.keys {
            if let Key::Token(expected) = key {
                matched |= expected.ct_eq(&digest);
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn check_hmac(&self, headers: &HeaderMap) -> Result<Checked, VerifyError> {
        let value = header_str(headers, self.header.as_str())?;
        let encoded = strip_prefix_ignore_case(value.trim(), &self.prefix)
            .ok_or_else(|| VerifyError::Malformed(self.header.to_string()))?;
        if encoded.is_empty() {
            return Err(VerifyError::EmptySignature(self.header.to_string()));
        }
        let signature = match self.encoding {
            Encoding::Hex => hex::decode(encoded).ok(),
            Encoding::Base64 => STANDARD.decode(encoded).or_else(|_| STANDARD_NO_PAD.decode(encoded)).ok(),
        }
        .ok_or_else(|| VerifyError::Malformed(self.header.to_string()))?;
        Ok(Checked::signed(Vec::new(), vec![signature], None))
    }

    fn check_github(&self, headers: &HeaderMap) -> Result<Checked, VerifyError> {
        let name = "x-hub-signature-256";
        let encoded = header_str(headers, name)?
            .trim()
            .strip_prefix("sha256=")
            .ok_or_else(|| VerifyError::Malformed(name.into()))?;
        if encoded.is_empty() {
            return Err(VerifyError::EmptySignature(name.into()));
        }
        let signature = hex::decode(encoded).map_err(|_| VerifyError::Malformed(name.into()))?;
        Ok(Checked::signed(Vec::new(), vec![signature], optional_header(headers, "x-github-delivery")))
    }

    fn check_stripe(&self, headers: &HeaderMap, now: SystemTime) -> Result<Checked, VerifyError> {
        let name = "stripe-signature";
        let value = header_str(headers, name)?;
        let malformed = || VerifyError::Malformed(name.into());
        let too_many = || VerifyError::TooManySignatures { header: name.into(), max: MAX_CANDIDATES };
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for (index, item) in value.split(',').enumerate() {
            if index >= MAX_ITEMS {
                return Err(too_many());
            }
            let (key, val) = item.trim().split_once('=').ok_or_else(malformed)?;
            match key {
                "t" => timestamp = Some(val),
                "v1" => {
                    if val.is_empty() {
                        return Err(VerifyError::EmptySignature(name.into()));
                    }
                    if signatures.len() == MAX_CANDIDATES {
                        return Err(too_many());
                    }
                    signatures.push(hex::decode(val).map_err(|_| malformed())?);
                }
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or_else(malformed)?;
        if signatures.is_empty() {
            return Err(malformed());
        }
        self.check_timestamp(timestamp, name, now)?;
        Ok(Checked::signed(format!("{timestamp}.").into_bytes(), signatures, None))
    }

    fn check_slack(&self, headers: &HeaderMap, now: SystemTime) -> Result<Checked, VerifyError> {
        let name = "x-slack-signature";
        let timestamp = header_str(headers, "x-slack-request-timestamp")?.trim();
        let encoded =
            header_str(headers, name)?.trim().strip_prefix("v0=").ok_or_else(|| VerifyError::Malformed(name.into()))?;
        if encoded.is_empty() {
            return Err(VerifyError::EmptySignature(name.into()));
        }
        let signature = hex::decode(encoded).map_err(|_| VerifyError::Malformed(name.into()))?;
        self.check_timestamp(timestamp, "x-slack-request-timestamp", now)?;
        Ok(Checked::signed(format!("v0:{timestamp}:").into_bytes(), vec![signature], None))
    }

    fn check_standard(&self, headers: &HeaderMap, now: SystemTime) -> Result<Checked, VerifyError> {
        let name = webhook::headers::SIGNATURE;
        let id = header_str(headers, webhook::headers::ID)?.trim();
        let timestamp = header_str(headers, webhook::headers::TIMESTAMP)?.trim();
        let value = header_str(headers, name)?;
        let mut hmac = Vec::new();
        let mut ed25519 = Vec::new();
        for (index, item) in value.split_whitespace().enumerate() {
            if index >= MAX_CANDIDATES {
                return Err(VerifyError::TooManySignatures { header: name.into(), max: MAX_CANDIDATES });
            }
            let Some((version, encoded)) = item.split_once(',') else {
                return Err(VerifyError::Malformed(name.into()));
            };
            if encoded.is_empty() {
                return Err(VerifyError::EmptySignature(name.into()));
            }
            let Ok(signature) = STANDARD.decode(encoded) else { return Err(VerifyError::Malformed(name.into())) };
            match version {
                "v1" => hmac.push(signature),
                "v1a" => {
                    if let Ok(signature) = Signature::from_slice(&signature) {
                        ed25519.push(signature);
                    }
                }
                // Versions this gateway does not know (a newer sender) are skipped.
                _ => {}
            }
        }
        if hmac.is_empty() && ed25519.is_empty() {
            return Err(VerifyError::Malformed(name.into()));
        }
        self.check_timestamp(timestamp, webhook::headers::TIMESTAMP, now)?;
        let mut checked = Checked::signed(webhook::signed_prefix(id, timestamp), hmac, Some(id.to_string()));
        checked.ed25519 = ed25519;
        Ok(checked)
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
    use hmac::{Hmac, Mac};

    type HmacSha256 = Hmac<Sha256>;

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

    fn stripe_header(ts: u64, candidates: &[String]) -> HeaderMap {
        let mut value = format!("t={ts}");
        for c in candidates {
            value.push_str(&format!(",v1={c}"));
        }
        let mut headers = HeaderMap::new();
        headers.insert("stripe-signature", value.parse().expect("header"));
        headers
    }

    #[test]
    fn stripe_accepts_a_right_candidate_among_the_cap_and_refuses_more_or_empty_ones() {
        let v = verifier(Scheme::Stripe, &["old", "new"]);
        let now = SystemTime::now();
        let ts = now.duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let mut mac = HmacSha256::new_from_slice(b"new").expect("key");
        mac.update(format!("{ts}.").as_bytes());
        mac.update(b"body");
        let right = hex::encode(mac.finalize().into_bytes());
        let mut candidates = vec!["00".repeat(32); MAX_CANDIDATES - 1];
        candidates.push(right.clone());
        assert!(v.verify(&stripe_header(ts, &candidates), b"body", now).is_ok());
        assert_eq!(v.verify(&stripe_header(ts, &candidates), b"other", now), Err(VerifyError::Mismatch));
        candidates.push(right);
        assert!(matches!(
            v.check_headers(&stripe_header(ts, &candidates), now),
            Err(VerifyError::TooManySignatures { max: MAX_CANDIDATES, .. })
        ));
        let empty = stripe_header(ts, &vec![String::new(); 100_000]);
        assert!(matches!(v.check_headers(&empty, now), Err(VerifyError::EmptySignature(_))));
    }

    #[test]
    fn standard_webhooks_caps_candidates_and_refuses_empty_ones() {
        let key = STANDARD.encode(b"a-standard-webhooks-key");
        let v = verifier(Scheme::StandardWebhooks, &[&format!("whsec_{key}")]);
        let now = SystemTime::now();
        let ts = now.duration_since(UNIX_EPOCH).expect("clock").as_secs().to_string();
        let mut mac = HmacSha256::new_from_slice(b"a-standard-webhooks-key").expect("key");
        mac.update(format!("msg_1.{ts}.").as_bytes());
        mac.update(b"body");
        let right = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        let headers = |signature: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("webhook-id", "msg_1".parse().expect("header"));
            headers.insert("webhook-timestamp", ts.parse().expect("header"));
            headers.insert("webhook-signature", signature.parse().expect("header"));
            headers
        };
        let wrong = format!("v1,{}", STANDARD.encode([0u8; 32]));
        let seven_wrong = [wrong.as_str(); MAX_CANDIDATES - 1].join(" ");
        let verified = v.verify(&headers(&format!("{seven_wrong} {right}")), b"body", now).expect("right one");
        assert_eq!(verified.delivery_id.as_deref(), Some("msg_1"));
        let nine = format!("{seven_wrong} {wrong} {right}");
        assert!(matches!(v.check_headers(&headers(&nine), now), Err(VerifyError::TooManySignatures { .. })));
        assert!(matches!(v.check_headers(&headers("v1, v1,"), now), Err(VerifyError::EmptySignature(_))));
    }

    /// A signature made by http-sink's signers (built as the sink builds them from its
    /// config) verifies here, for every scheme both support: Standard Webhooks v1, and the
    /// generic body HMAC-SHA256 (hex with a prefix, base64 without).
    #[test]
    fn http_sink_signatures_verify_for_every_shared_scheme() {
        use danube_connector_http_sink::config::{decode_webhook_secret, HmacAlgorithm, HmacConfig, HmacEncoding};
        use danube_connector_http_sink::signature::{BodySigner, WebhookSigner};

        let now = SystemTime::now();
        let ts = now.duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signer = WebhookSigner::from_key(decode_webhook_secret(&Secret::new(secret)).expect("sink secret"));
        let mut headers = HeaderMap::new();
        headers.insert(webhook::headers::ID, "msg_cross".parse().expect("header"));
        headers.insert(webhook::headers::TIMESTAMP, ts.to_string().parse().expect("header"));
        let signature = signer.sign("msg_cross", ts, b"body");
        headers.insert(webhook::headers::SIGNATURE, signature.parse().expect("header"));
        let standard = verifier(Scheme::StandardWebhooks, &[secret]);
        let verified = standard.verify(&headers, b"body", now).expect("the sink's signature verifies");
        assert_eq!(verified.delivery_id.as_deref(), Some("msg_cross"));
        assert_eq!(standard.verify(&headers, b"tampered", now), Err(VerifyError::Mismatch));

        for (sink_encoding, encoding, prefix) in
            [(HmacEncoding::Hex, Encoding::Hex, "sha256="), (HmacEncoding::Base64, Encoding::Base64, "")]
        {
            let signer = BodySigner::new(&HmacConfig {
                header: "x-signature".into(),
                secret: Secret::new("a-shared-hmac-key"),
                algorithm: HmacAlgorithm::Sha256,
                encoding: sink_encoding,
                prefix: prefix.into(),
            });
            let hmac = Verifier::new(&VerificationConfig {
                scheme: Scheme::Hmac,
                secrets: vec![Secret::new("a-shared-hmac-key")],
                header: Some("x-signature".into()),
                prefix: Some(prefix.into()),
                encoding,
                tolerance: Duration::from_secs(300),
            })
            .expect("verifier");
            let mut headers = HeaderMap::new();
            headers.insert("x-signature", signer.sign(b"body").parse().expect("header"));
            assert!(hmac.verify(&headers, b"body", now).is_ok(), "{encoding:?}");
            assert_eq!(hmac.verify(&headers, b"tampered", now), Err(VerifyError::Mismatch), "{encoding:?}");
        }
    }
}
