//! Every failure the API reports, and the one place that turns it into HTTP.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ocr_core::quota::QuotaRefusal;
use ocr_core::{PortError, RequestError};
use serde_json::json;

/// A failure answered as `{"error": {"code", "message", "retryable"}}` with a 4xx/5xx status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// A query parameter the route reads is malformed (e.g. `wait` out of range).
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("job not found")]
    NotFound,
    /// The job has no result to give (it has not succeeded, or its result is past retention).
    #[error("{0}")]
    NoResult(String),
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    /// This caller is over its own limit; other callers go on.
    #[error("{0}; retry later")]
    Quota(QuotaRefusal),
    #[error("the {queue} queue is too deep; retry later")]
    QueueFull { queue: &'static str, retry_after_secs: u64 },
    #[error("{0}")]
    Internal(String),
    #[error("a backing service is unavailable; retry later")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::NoResult(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::IdempotencyConflict => StatusCode::CONFLICT,
            ApiError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::Unavailable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::InvalidParameter(_) => "invalid_parameter",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooLarge(_) => "too_large",
            ApiError::NotFound => "not_found",
            ApiError::NoResult(_) => "no_result",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::IdempotencyConflict => "idempotency_conflict",
            ApiError::Quota(QuotaRefusal::TooManyWaiting { .. }) => "caller_queue_full",
            ApiError::Quota(QuotaRefusal::RateLimited { .. }) => "caller_rate_limited",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::Internal(_) => "internal",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    /// Whether the same request may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(self, ApiError::Quota(_) | ApiError::QueueFull { .. } | ApiError::Unavailable(_))
    }
}

impl From<PortError> for ApiError {
    fn from(err: PortError) -> Self {
        match err {
            PortError::NotFound => ApiError::NotFound,
            e if e.is_retryable() => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::MalformedJson(m) => ApiError::MalformedJson(m),
            RequestError::Invalid(m) => ApiError::InvalidRequest(m),
            RequestError::UnsupportedMediaType(m) => ApiError::UnsupportedMediaType(m),
            RequestError::TooLarge(m) => ApiError::TooLarge(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Backend detail goes to the log, not to the caller.
        let message = match &self {
            ApiError::Internal(detail) | ApiError::Unavailable(detail) => {
                tracing::error!(code = self.code(), detail = %detail, "request failed");
                match self {
                    ApiError::Internal(_) => "internal error".to_owned(),
                    _ => self.to_string(),
                }
            }
            _ => self.to_string(),
        };
        let body = json!({
            "error": { "code": self.code(), "message": message, "retryable": self.retryable() }
        });
        let mut response = (status, axum::Json(body)).into_response();
        let retry_after = match &self {
            ApiError::QueueFull { retry_after_secs, .. } => Some(*retry_after_secs),
            ApiError::Quota(refusal) => Some(refusal.retry_after_secs()),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
