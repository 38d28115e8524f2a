//! Logging set-up shared by the binaries: JSON for CloudWatch Logs, text for people.

use tracing_subscriber::EnvFilter;

/// `LOG_FORMAT=json` (the default on Lambda) or `text`; level from `RUST_LOG` (default info).
pub fn init() {
    let json = match std::env::var("LOG_FORMAT") {
        Ok(v) => v.eq_ignore_ascii_case("json"),
        Err(_) => std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        // No ANSI colours and no span list: one flat, parseable object per line.
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).with_ansi(false).init();
    } else {
        builder.with_ansi(false).init();
    }
}
