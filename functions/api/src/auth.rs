//! Who is calling. On AWS the HTTP API's JWT authorizer has already checked the
//! token and we read its `sub` claim; locally, static bearer tokens map to callers.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller. Every job has one owner; other callers never see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// How [`Caller`] is derived from a request.
#[derive(Clone)]
pub enum Authenticator {
    /// Trust the claims API Gateway's JWT authorizer put in the request context.
    Jwt,
    /// Bearer tokens, kept as SHA-256 digests so lookups don't compare secrets byte by byte.
    Static(HashMap<[u8; 32], String>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::Jwt => f.write_str("Jwt"),
            Authenticator::Static(m) => write!(f, "Static({} tokens)", m.len()),
        }
    }
}

impl Authenticator {
    /// Parses `token:caller,token2:caller2`.
    pub fn from_static_tokens(spec: &str) -> Result<Self, String> {
        let mut map = HashMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (token, caller) =
                pair.split_once(':').ok_or("API_TOKENS entries are token:caller, separated by commas")?;
            if token.len() < 16 {
                return Err("API_TOKENS tokens must be at least 16 characters".into());
            }
            if caller.is_empty() {
                return Err("API_TOKENS caller names must not be empty".into());
            }
            if caller.chars().count() > MAX_OWNER_CHARS {
                return Err(format!("API_TOKENS caller names must be at most {MAX_OWNER_CHARS} characters"));
            }
            map.insert(digest(token), caller.to_owned());
        }
        if map.is_empty() {
            return Err("AUTH_MODE=static needs at least one API_TOKENS entry".into());
        }
        Ok(Authenticator::Static(map))
    }

    fn caller(&self, parts: &Parts) -> Option<Caller> {
        match self {
            Authenticator::Static(tokens) => {
                let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
                let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
                tokens.get(&digest(token.trim())).cloned().map(Caller)
            }
            Authenticator::Jwt => jwt_subject(parts).map(|sub| Caller(owner_key(&sub))),
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Longest owner the jobs table holds (`owner VARCHAR(191)`, the most utf8mb4 an index takes).
pub const MAX_OWNER_CHARS: usize = 191;

/// What a hashed owner key starts with.
const HASHED: &str = "sha256:";

/// The owner key of a JWT subject: the subject itself, or for a longer one (the JWT spec sets
/// no limit) `sha256:` and its digest in hex, so every valid token still gets its own jobs. A
/// subject that itself starts with `sha256:` is hashed too: where callers choose their subject
/// (a user name), one could otherwise name the key of someone else's long subject.
pub fn owner_key(subject: &str) -> String {
    if subject.chars().count() <= MAX_OWNER_CHARS && !subject.starts_with(HASHED) {
        return subject.to_owned();
    }
    format!("{HASHED}{}", hex::encode(digest(subject)))
}

/// The `sub` claim the HTTP API's JWT authorizer validated, from the Lambda request context.
fn jwt_subject(parts: &Parts) -> Option<String> {
    use lambda_http::request::RequestContext;
    match parts.extensions.get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(ctx) => {
            let jwt = ctx.authorizer.as_ref()?.jwt.as_ref()?;
            jwt.claims.get("sub").filter(|s| !s.is_empty()).cloned()
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        state.auth.caller(parts).ok_or(ApiError::Unauthenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_static_tokens() {
        assert!(Authenticator::from_static_tokens("").is_err());
        assert!(Authenticator::from_static_tokens("short:alice").is_err());
        assert!(Authenticator::from_static_tokens("0123456789abcdef").is_err());
        let Authenticator::Static(m) =
            Authenticator::from_static_tokens("0123456789abcdef:alice, fedcba9876543210:bob").unwrap()
        else {
            panic!("static");
        };
        assert_eq!(m.len(), 2);
        let long = format!("0123456789abcdef:{}", "a".repeat(MAX_OWNER_CHARS + 1));
        assert!(Authenticator::from_static_tokens(&long).is_err());
    }

    #[test]
    fn long_subjects_get_a_stable_owner_key_that_fits() {
        let short = "auth0|5f7c8ec7c33c6c004bbafe82";
        assert_eq!(owner_key(short), short);
        let fits = "é".repeat(MAX_OWNER_CHARS);
        assert_eq!(owner_key(&fits), fits);
        let long = "x".repeat(5_000);
        let key = owner_key(&long);
        assert_eq!(key, owner_key(&long));
        assert!(key.starts_with("sha256:") && key.len() == 71, "{key}");
        assert_ne!(key, owner_key(&"x".repeat(4_999)));
        // Naming that key as one's subject does not reach its jobs.
        assert_ne!(owner_key(&key), key);
        assert!(owner_key(&key).starts_with("sha256:"));
    }
}
