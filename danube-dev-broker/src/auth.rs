//! Bearer-token check on every call, as the real broker does with authentication on.
//!
//! `danube-client` 0.16 sends `authorization: Bearer <token>` on every RPC once a token
//! (or token supplier) is configured. Without a configured token every call passes.

use crate::config::AuthToken;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The `authorization` metadata check installed in front of every service.
#[derive(Debug, Clone)]
pub(crate) struct AuthCheck {
    expected: Option<Arc<AuthToken>>,
}

impl AuthCheck {
    /// Checks for `token`; `None` lets every call through.
    pub(crate) fn new(token: Option<AuthToken>) -> Self {
        AuthCheck { expected: token.map(Arc::new) }
    }
}

impl Interceptor for AuthCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated("authorization token is missing"));
        };
        match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            // Constant time: how long the check takes says nothing about the expected token.
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid token")),
            None => Err(Status::unauthenticated("authorization is not a bearer token (`Bearer <token>`)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(check: &mut AuthCheck, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request.metadata_mut().insert("authorization", header.parse().expect("ascii"));
        }
        check.call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn without_a_configured_token_every_call_passes() {
        let mut check = AuthCheck::new(None);
        assert_eq!(call(&mut check, None), Ok(()));
        assert_eq!(call(&mut check, Some("Bearer whatever")), Ok(()));
    }

    #[test]
    fn a_missing_wrong_or_malformed_token_is_unauthenticated() {
        let mut check = AuthCheck::new(Some(AuthToken::new("s3cret")));
        assert_eq!(call(&mut check, Some("Bearer s3cret")), Ok(()));
        assert_eq!(call(&mut check, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut check, Some("Bearer other")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(&mut check, Some("s3cret")), Err(tonic::Code::Unauthenticated));
    }
}
