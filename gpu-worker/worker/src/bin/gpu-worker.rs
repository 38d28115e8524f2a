//! The GPU worker process: thin `main` — settings, adapters, engine, then the pipeline.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gpu_worker::lifecycle::{self, Imds};
use gpu_worker::metrics::Metrics;
use gpu_worker::pipeline::{Pipeline, PipelineDeps, Settings};
use gpu_worker::ssrf::{Policy, SystemResolver};
use gpu_worker::webhook::{self, HttpConnector, Webhooks};
use gpu_worker::{EngineRecognizer, WorkerConfig};
use ocr_aws::{MySqlJobStore, S3ObjectStore, SqsDeadLetters, SqsJobSource};
use tokio::sync::{mpsc, watch};

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // ONNX Runtime logs every session option at info: keep it to warnings.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    // JSON unless asked otherwise: CloudWatch Logs (via the agent) reads it.
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("text")) {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let config = WorkerConfig::parse();
    tracing::info!(?config, "starting");

    // Models load once, before any message is taken; a GPU provider that cannot
    // register is an error here, never a silent fall back to CPU.
    let engine_args = config.engine.clone();
    let loading = std::time::Instant::now();
    let recognizer = tokio::task::spawn_blocking(move || EngineRecognizer::load(&engine_args))
        .await?
        .context("loading the OCR engine")?;
    tracing::info!(seconds = loading.elapsed().as_secs_f64(), model_set = %config.engine.model_set, "engine ready");

    let aws = ocr_aws::aws_config_from_env().await;
    let store = Arc::new(MySqlJobStore::new(&config.database_url, config.db_pool_max)?);
    if config.db_migrate {
        store.migrate().await.context("database migrations")?;
    }
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics port {}", config.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let metrics_server = tokio::spawn(gpu_worker::metrics::serve(listener, metrics.clone(), stop_rx.clone()));

    let (notify_tx, notify_rx) = mpsc::channel(10_000);
    let webhooks = Arc::new(Webhooks {
        policy: Policy::new(&config.webhook_allow_hosts),
        resolver: Arc::new(SystemResolver),
        connector: Arc::new(HttpConnector { timeout: Duration::from_secs(10) }),
        store: store.clone(),
        metrics: metrics.clone(),
        secret: config.webhook_secret.as_bytes().to_vec(),
        max_attempts: config.webhook_max_attempts,
        backoff: Duration::from_secs(1),
        result_url_base: config.result_url_base.clone(),
    });
    let webhook_task = tokio::spawn(webhook::run(webhooks, notify_rx, 16));
    if config.webhook_sweep_secs > 0 {
        tokio::spawn(webhook::sweep(
            store.clone(),
            notify_tx.clone(),
            Duration::from_secs(config.webhook_sweep_secs),
            Duration::from_secs(config.webhook_lease_secs),
            stop_rx.clone(),
        ));
    }

    match (&config.express_dlq_url, &config.bulk_dlq_url) {
        (Some(express), Some(bulk)) if config.dlq_sweep_secs > 0 => {
            tokio::spawn(gpu_worker::dead_letters::run(
                Arc::new(SqsDeadLetters::new(&aws, express, bulk)),
                store.clone(),
                metrics.clone(),
                Duration::from_secs(config.dlq_sweep_secs),
                stop_rx.clone(),
            ));
        }
        _ if config.dlq_sweep_secs > 0 => tracing::warn!(
            "dead-letter sweep off: EXPRESS_DLQ_URL and BULK_DLQ_URL are not both set, so a job whose worker dies on its last attempt stays processing"
        ),
        _ => {}
    }

    if config.cloudwatch_interval_secs > 0 {
        tokio::spawn(gpu_worker::cloudwatch::run(
            aws_sdk_cloudwatch::Client::new(&aws),
            metrics.clone(),
            config.cloudwatch_namespace.clone(),
            config.fleet_name.clone(),
            Duration::from_secs(config.cloudwatch_interval_secs),
            stop_rx.clone(),
        ));
    }

    let signal_stop = stop_tx.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
        }
        let _ = signal_stop.send(true);
    });
    let departure = if config.ec2_lifecycle {
        let drain = stop_tx.clone();
        Some(tokio::spawn(async move { lifecycle::watch(&Imds::new(), Duration::from_secs(5), drain).await }))
    } else {
        None
    };

    let deps = PipelineDeps {
        source: Arc::new(SqsJobSource::new(&aws, &config.express_queue_url, &config.bulk_queue_url)),
        store: store.clone(),
        objects: Arc::new(S3ObjectStore::new(&aws, &config.upload_bucket)),
        metrics: metrics.clone(),
        notify: notify_tx,
    };
    let settings = Settings {
        batch_max: config.batch_max,
        batch_wait: Duration::from_millis(config.batch_wait_ms),
        bulk_share: config.bulk_share,
        receive_wait: Duration::from_secs(config.receive_wait_secs),
        visibility: config.visibility_timeout(),
        max_attempts: config.max_attempts,
        prefetch_concurrency: config.prefetch_concurrency,
        decode_concurrency: config.decode_concurrency,
        max_pixels: config.engine.max_pixels,
        bucket: config.upload_bucket.clone(),
        shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        retry_backoff: Duration::from_millis(config.retry_backoff_ms),
    };
    let started = std::time::Instant::now();
    Pipeline::new(deps, settings).run(recognizer, stop_rx.clone()).await;
    // The pipeline dropped its sender: the webhook task ends once queued calls are made,
    // bounded by what is left of the grace period.
    let left = Duration::from_secs(config.shutdown_grace_secs)
        .saturating_sub(started.elapsed().min(Duration::from_secs(config.shutdown_grace_secs)));
    if tokio::time::timeout(left.max(Duration::from_secs(1)), webhook_task).await.is_err() {
        tracing::warn!("webhooks still pending at exit");
    }
    let _ = stop_tx.send(true);
    let _ = metrics_server.await;

    if let Some(task) = departure
        && let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), task).await.unwrap_or(Ok(None))
    {
        let client = aws_sdk_autoscaling::Client::new(&aws);
        match lifecycle::complete_lifecycle_action(
            &client,
            &Imds::new(),
            &config.lifecycle_hook_name,
            &config.autoscaling_group_name,
        )
        .await
        {
            Ok(()) => tracing::info!("lifecycle action completed"),
            Err(e) => tracing::error!(error = %e, "completing the lifecycle action failed"),
        }
    }
    store.as_ref().clone().disconnect().await;
    tracing::info!("stopped");
    Ok(())
}
