//! What every binary does the same way: the TLS crypto provider, logs and stop signals.

use tracing_subscriber::EnvFilter;

/// Logs to stderr: JSON (one flat object per line, for CloudWatch Logs) when `LOG_FORMAT=json`,
/// text when `text`, else `json_by_default`. Level from `RUST_LOG`, else `default_filter`.
pub fn init_logs(default_filter: &str, json_by_default: bool) {
    let json = match std::env::var("LOG_FORMAT") {
        Ok(v) => v.eq_ignore_ascii_case("json"),
        Err(_) => json_by_default,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}

/// Resolves at the first SIGTERM (systemd, Auto Scaling, `kill`) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
    }
}

/// Makes aws-lc-rs the process's rustls crypto provider, unless one is installed already.
///
/// The dependency graph enables both of rustls' providers (`ring` through reqwest, `aws-lc-rs`
/// through mysql_async and the AWS SDK), so rustls cannot pick one by itself, and mysql_async
/// builds its TLS configuration with the process default: without this, the first TLS
/// connection to the database panics. aws-lc-rs is the one the AWS SDK already uses (and the
/// one with a FIPS build). Every binary calls this first; the MySQL adapter calls it too.
pub fn install_crypto_provider() {
    // Err means another caller installed one first: fine, there is a provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
