//! The API and the upload-event poller on this machine (LocalStack + MariaDB):
//! the same Router and handler as the Lambda functions, on a TCP port.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use ocr_api::config::{ProducerArgs, UploadRetryArgs};
use ocr_api::startup::Services;
use ocr_aws::SqsConsumer;
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(version, about = "ocr-fleet API and upload-event poller, served locally")]
struct Config {
    #[command(flatten)]
    producer: ProducerArgs,
    /// Address to listen on.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    bind_addr: SocketAddr,
    /// Queue of S3 upload events; when set, the poller runs in this process.
    #[arg(long, env = "UPLOAD_EVENTS_QUEUE_URL")]
    upload_events_queue_url: Option<String>,
    #[command(flatten)]
    upload_retry: UploadRetryArgs,
    /// Apply database migrations at start.
    #[arg(long, env = "DB_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    db_migrate: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ocr_aws::process::install_crypto_provider();
    ocr_api::telemetry::init();
    let config = Config::parse();
    let ProducerArgs { resources, db, api } = &config.producer;
    let services = Services::new(resources, db).await?;
    if config.db_migrate {
        services.store.migrate().await.context("database migrations")?;
    }
    let app = ocr_api::routes::router(services.app_state(api).await?);
    let (stop_tx, stop_rx) = watch::channel(false);

    let poller = config.upload_events_queue_url.clone().map(|url| {
        let handler = services.upload_handler(api.max_upload_bytes);
        let consumer = SqsConsumer::new(&services.aws, url);
        let retry = &config.upload_retry;
        let settings = ocr_api::poller::PollerSettings {
            backoff: retry.backoff(),
            dead_letters: retry.upload_events_dlq_url.as_ref().map(|dlq| {
                let every = std::time::Duration::from_secs(retry.upload_dlq_sweep_secs.max(1));
                (SqsConsumer::new(&services.aws, dlq), every)
            }),
        };
        tokio::spawn(ocr_api::poller::run(handler, consumer, settings, stop_rx.clone()))
    });

    let listener = tokio::net::TcpListener::bind(config.bind_addr)
        .await
        .with_context(|| format!("binding {}", config.bind_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "api listening");
    let mut server_stop = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(async move { server.await });

    ocr_aws::process::shutdown_signal().await;
    let _ = stop_tx.send(true);
    server.await??;
    if let Some(p) = poller {
        p.await?;
    }
    Ok(())
}
