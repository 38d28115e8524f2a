//! Mapping SDK errors onto [`PortError`], deciding whether a retry can help.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use ocr_core::PortError;

/// Throttling, timeouts, dispatch failures and 5xx are worth retrying; other 4xx are not.
pub(crate) fn sdk_error<E>(service: &'static str, err: SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let (retryable, message) = match &err {
        SdkError::ServiceError(service_err) => {
            let e = service_err.err();
            let code = e.code().unwrap_or("error");
            let retryable = status.is_none_or(|s| s >= 500 || s == 429 || s == 408)
                || code.contains("Throttl")
                || matches!(code, "RequestTimeout" | "SlowDown" | "ServiceUnavailable");
            (retryable, format!("{code}: {}", e.message().unwrap_or("no message")))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            (true, error_chain(&err))
        }
        _ => (false, error_chain(&err)),
    };
    if retryable { PortError::unavailable(service, message) } else { PortError::permanent(service, message) }
}

/// The error and its sources on one line, so logs show the root cause (e.g. "connection refused").
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
