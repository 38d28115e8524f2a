//! Logging set-up of the API's binaries: JSON on Lambda (for CloudWatch Logs), text elsewhere,
//! unless `LOG_FORMAT` says otherwise.

/// `LOG_FORMAT=json|text` (default: json on Lambda); level from `RUST_LOG` (default info).
pub fn init() {
    ocr_aws::process::init_logs("info", std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some());
}
