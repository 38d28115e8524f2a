//! The API and the upload-event poller on this machine (LocalStack + MariaDB):
//! the same Router and handler as the Lambda functions, on a TCP port.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use ocr_api::config::{ProducerArgs, UploadEventQueueArgs, UploadRetryArgs};
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
    /// The upload-events queues; when set, the poller runs in this process (a loop per queue).
    #[command(flatten)]
    upload_events: UploadEventQueueArgs,
    /// Receive loops on the express upload-events queue (on AWS: the express event source
    /// mapping's MaximumConcurrency, OnUploadExpressMaxConcurrency).
    #[arg(long, env = "UPLOAD_EVENTS_EXPRESS_LOOPS", default_value_t = 2)]
    upload_events_express_loops: usize,
    /// Receive loops on the bulk upload-events queue (on AWS: OnUploadBulkMaxConcurrency): a
    /// bulk backlog is checked this many batches at a time.
    #[arg(long, env = "UPLOAD_EVENTS_BULK_LOOPS", default_value_t = 4)]
    upload_events_bulk_loops: usize,
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
    let state = services.app_state(api).await?;
    // Waiting requests (`?wait=`) answer at once on shutdown instead of holding it up to 20 s.
    let waits = state.waits.clone();
    // The browser page (functions/api/web/index.html) beside the API, same origin.
    let app = ocr_api::routes::router(state).merge(
        axum::Router::new()
            .route("/ui/", axum::routing::get(web_page))
            .route("/ui", axum::routing::get(|| async { axum::response::Redirect::permanent("/ui/") })),
    );
    let (stop_tx, stop_rx) = watch::channel(false);

    let events = &config.upload_events;
    let queues: Vec<(&String, usize)> = [
        (events.upload_events_express_queue_url.as_ref(), config.upload_events_express_loops),
        (events.upload_events_bulk_queue_url.as_ref(), config.upload_events_bulk_loops),
    ]
    .into_iter()
    .filter_map(|(url, loops)| url.map(|url| (url, loops.max(1))))
    .collect();
    let poller = (!queues.is_empty()).then(|| {
        let handler = services.upload_handler(api.max_upload_bytes, api.max_pages);
        let consumers = queues.into_iter().map(|(url, loops)| (SqsConsumer::new(&services.aws, url), loops)).collect();
        let retry = &config.upload_retry;
        let settings = ocr_api::poller::PollerSettings {
            backoff: retry.backoff(),
            dead_letters: retry.upload_events_dlq_url.as_ref().map(|dlq| {
                let every = std::time::Duration::from_secs(retry.upload_dlq_sweep_secs.max(1));
                (SqsConsumer::new(&services.aws, dlq), every)
            }),
        };
        tokio::spawn(ocr_api::poller::run(handler, consumers, settings, stop_rx.clone()))
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
    waits.close();
    let _ = stop_tx.send(true);
    server.await??;
    if let Some(p) = poller {
        p.await?;
    }
    Ok(())
}

/// The static browser page: pick a file, see its boxes and text.
async fn web_page() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("../../web/index.html"))
}
