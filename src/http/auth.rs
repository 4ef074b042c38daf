//! Optional bearer-token authentication.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::problem::ApiError;

/// The accepted tokens, kept as SHA-256 digests: comparing digests in constant time
/// reveals neither a token's bytes nor its length.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k.trim())).collect(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    fn accepts(&self, token: &str) -> bool {
        let d = digest(token);
        // Check every key, so the time taken does not say which one matched.
        self.digests
            .iter()
            .fold(0u8, |found, key| found | key.ct_eq(&d).unwrap_u8())
            == 1
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Whether the request carries an accepted token (always, with no keys configured).
pub fn check(keys: &ApiKeys, headers: &HeaderMap) -> Result<(), ApiError> {
    if !keys.is_enabled() {
        return Ok(());
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match token {
        Some(t) if keys.accepts(t.trim()) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("the bearer token is not valid")),
        None => Err(ApiError::Unauthorized(
            "this endpoint needs `Authorization: Bearer <token>`",
        )),
    }
}

pub async fn require_token(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    // A refused upload is read before the 401 goes out, by `drain::drain_unread`.
    match check(&keys, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let keys = ApiKeys::new(&["alpha".into(), "beta".into()]);
        assert!(keys.accepts("alpha"));
        assert!(keys.accepts("beta"));
        assert!(!keys.accepts("alph"));
        assert!(!keys.accepts(""));
        assert!(!ApiKeys::default().is_enabled());
    }
}
