//! Optional bearer-token authentication.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
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
    /// How much of a refused request's body to read before answering (see `drain_body`).
    drain_limit: usize,
}

impl ApiKeys {
    pub fn new(keys: &[String], drain_limit: usize) -> Self {
        Self {
            digests: keys.iter().map(|k| digest(k.trim())).collect(),
            drain_limit,
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

pub async fn require_token(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if !keys.is_enabled() {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let refusal = match token {
        Some(t) if keys.accepts(t.trim()) => return next.run(request).await,
        Some(_) => ApiError::Unauthorized("the bearer token is not valid"),
        None => ApiError::Unauthorized("this endpoint needs `Authorization: Bearer <token>`"),
    };
    super::drain_body(
        request.into_body(),
        keys.drain_limit,
        Duration::from_secs(10),
    )
    .await;
    refusal.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let keys = ApiKeys::new(&["alpha".into(), "beta".into()], 0);
        assert!(keys.accepts("alpha"));
        assert!(keys.accepts("beta"));
        assert!(!keys.accepts("alph"));
        assert!(!keys.accepts(""));
        assert!(!ApiKeys::default().is_enabled());
    }
}
