//! `GET /v1/webhook-secret` and `POST /v1/webhook-secret/rotate`: each caller reads (and
//! rotates) the key its webhooks are signed with, and only its own (`ocr_core::signing`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use ocr_core::signing::{DEFAULT_OVERLAP, KeyState, MAX_OVERLAP};
use serde::Serialize;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// What a caller sees of its signing keys.
#[derive(Debug, Serialize)]
pub struct SecretView {
    /// The key that signs now (`v1=` in `Ocr-Signature`).
    pub secret: String,
    pub generation: u32,
    /// The previous key, while a rotation's overlap lasts: it signs too (a second `v1=`).
    pub previous: Option<PreviousView>,
}

#[derive(Debug, Serialize)]
pub struct PreviousView {
    pub secret: String,
    pub generation: u32,
    /// RFC 3339: when it stops signing.
    pub valid_until: String,
}

/// The overlap a rotation asks for: an empty body, or `{"overlap_seconds": n}` with `n` an
/// integer (JSON Schema's sense: `227.0` is one) from 0 to [`MAX_OVERLAP`]; anything else is
/// refused.
fn overlap_of(body: &[u8]) -> Result<Duration, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_OVERLAP);
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let invalid = |m: &str| ApiError::InvalidRequest(m.to_owned());
    let object = value.as_object().ok_or_else(|| invalid("the body must be a JSON object"))?;
    if let Some(unknown) = object.keys().find(|k| *k != "overlap_seconds") {
        return Err(invalid(&format!("unknown field {unknown:?}: only overlap_seconds")));
    }
    let Some(n) = object.get("overlap_seconds") else { return Ok(DEFAULT_OVERLAP) };
    let max = MAX_OVERLAP.as_secs();
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=max as f64).contains(&f) => Ok(Duration::from_secs(f as u64)),
        _ => Err(invalid(&format!("overlap_seconds must be an integer from 0 to {max}"))),
    }
}

pub async fn get_secret(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    signing_enabled(&state)?;
    let keys = state.ports.keys.key_state(&caller.0).await?;
    Ok(axum::Json(view(&state, &caller, &keys)).into_response())
}

pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::MalformedJson(format!("unreadable body: {e}")))?;
    let overlap = overlap_of(&body)?;
    signing_enabled(&state)?;
    let now = state.ports.clock.now_ms();
    let keys = state.ports.keys.rotate_key(&caller.0, overlap, now).await?;
    tracing::info!(generation = keys.generation, overlap_secs = overlap.as_secs(), "webhook key rotated");
    Ok(axum::Json(view(&state, &caller, &keys)).into_response())
}

fn signing_enabled(state: &AppState) -> Result<(), ApiError> {
    if state.signing.is_empty() {
        return Err(ApiError::Internal("webhook signing is not configured (WEBHOOK_SECRET)".into()));
    }
    Ok(())
}

fn view(state: &AppState, caller: &Caller, keys: &KeyState) -> SecretView {
    let now = state.ports.clock.now_ms();
    let previous = match (keys.signing(now).get(1), keys.previous_until_ms) {
        (Some(&generation), Some(until)) => Some(PreviousView {
            secret: state.signing.caller_key(&caller.0, generation),
            generation,
            valid_until: crate::view::rfc3339(until),
        }),
        _ => None,
    };
    SecretView { secret: state.signing.caller_key(&caller.0, keys.generation), generation: keys.generation, previous }
}
