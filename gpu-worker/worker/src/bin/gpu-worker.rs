//! The GPU worker process: settings, adapters and the engine, then a small supervisor: the
//! pipeline in front, the periodic tasks in a `JoinSet` beside it, one stop signal for all.
//! `gpu-worker dlq …` is the operators' dead-letter tool, run where the worker runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use gpu_worker::lifecycle::{self, Imds};
use gpu_worker::metrics::Metrics;
use gpu_worker::pipeline::{Pipeline, PipelineDeps};
use gpu_worker::ssrf::{Policy, SystemResolver};
use gpu_worker::webhook::{self, HttpConnector, Notification, Webhooks};
use gpu_worker::{EngineRecognizer, WorkerConfig};
use ocr_aws::{MySqlJobStore, S3ObjectStore, SqsDeadLetters, SqsJobSource};
use ocr_core::signing::MasterKey;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The worker (the default) …
#[derive(Parser, Debug)]
#[command(
    version,
    about = "ocr-fleet GPU worker: SQS batches in, OCR, results in MySQL, webhooks out",
    after_help = "`gpu-worker dlq --help`: the operators' dead-letter tool."
)]
struct Cli {
    #[command(flatten)]
    worker: WorkerConfig,
}

/// … or `gpu-worker dlq …`. Two parsers rather than one with an optional subcommand: the
/// worker's required settings come from the environment, which clap's optional argument
/// groups do not count as given.
#[derive(Parser, Debug)]
#[command(name = "gpu-worker dlq", about = "List or redrive the dead-letter queues")]
struct DlqCli {
    #[command(flatten)]
    dlq: gpu_worker::dlq::DlqArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // JSON unless asked otherwise: CloudWatch Logs (via the agent) reads it. ONNX Runtime logs
    // every session option at info: keep it to warnings.
    ocr_aws::process::init_logs("info,ort=warn", true);
    ocr_aws::process::install_crypto_provider();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "dlq") {
        args.remove(1);
        return gpu_worker::dlq::run(DlqCli::parse_from(args).dlq).await;
    }
    serve(Cli::parse_from(args).worker).await
}

/// Where the process's parts meet.
struct Worker {
    config: WorkerConfig,
    aws: ocr_aws::SdkConfig,
    store: Arc<MySqlJobStore>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    /// Tasks that run until `stop` (metrics server, sweeps, signals, CloudWatch).
    tasks: JoinSet<&'static str>,
}

async fn serve(config: WorkerConfig) -> anyhow::Result<()> {
    tracing::info!(?config, "starting");
    // Models load once, before any message is taken; a GPU provider that cannot register is
    // an error here, never a silent fall back to CPU.
    let engine_args = config.engine.clone();
    let loading = Instant::now();
    let recognizer = tokio::task::spawn_blocking(move || EngineRecognizer::load(&engine_args))
        .await?
        .context("loading the OCR engine")?;
    tracing::info!(seconds = loading.elapsed().as_secs_f64(), model_set = %config.engine.model_set, "engine ready");

    let aws = ocr_aws::aws_config_from_env().await;
    // Connections open on first use: the worker's own users may not exist before `migrate`.
    let store = Arc::new(config.db.connect(&aws).await?);
    if config.db_migrate {
        migrate(&config, &aws, &store).await?;
    }
    let master = ocr_aws::secrets::resolve(&config.webhook_secret, &aws).await.context("reading WEBHOOK_SECRET")?;
    let (stop, _) = watch::channel(false);
    let mut worker = Worker { config, aws, store, metrics: Metrics::new(), stop, tasks: JoinSet::new() };
    worker.start_metrics_server().await?;
    let (notify, webhooks) = worker.start_webhooks(MasterKey::new(master.expose_secret()));
    worker.start_periodic_tasks(&notify);
    let departure = worker.config.ec2_lifecycle.then(|| {
        let drain = worker.stop.clone();
        tokio::spawn(async move { lifecycle::watch(&Imds::new(), Duration::from_secs(5), drain).await })
    });

    let stopped_at = worker.run_pipeline(recognizer, notify).await;
    // The pipeline dropped its sender: the webhook task ends once queued calls are made,
    // bounded by what is left of the grace period since the stop.
    let left = worker.config.shutdown_grace().saturating_sub(stopped_at.elapsed()).max(Duration::from_secs(1));
    if tokio::time::timeout(left, webhooks).await.is_err() {
        tracing::warn!("webhooks still pending at exit");
    }
    worker.stop_tasks().await;
    if let Some(departure) = departure {
        worker.complete_lifecycle(departure).await;
    }
    worker.store.as_ref().clone().disconnect().await;
    tracing::info!("stopped");
    Ok(())
}

/// Applies the migrations as the migration account (`MIGRATION_DATABASE_URL`, else the
/// worker's own `store`), then creates or updates the role users (`DB_ROLE_USERS`) with their
/// grants.
async fn migrate(config: &WorkerConfig, aws: &ocr_aws::SdkConfig, store: &MySqlJobStore) -> anyhow::Result<()> {
    let separate = match &config.migration_database_url {
        Some(url) => Some(
            ocr_aws::config::DbArgs {
                database_url: url.clone(),
                database_password: config.migration_database_password.clone(),
                db_pool_max: 1,
                database_ca_file: config.db.database_ca_file.clone(),
                db_timeout_ms: config.db.db_timeout_ms,
            }
            .connect(aws)
            .await?,
        ),
        None => None,
    };
    let admin = separate.as_ref().unwrap_or(store);
    admin.migrate().await.context("database migrations")?;
    let mut users =
        ocr_aws::roles::parse_role_users(config.db_role_users.expose_secret()).map_err(anyhow::Error::msg)?;
    for user in &mut users {
        user.password = ocr_aws::secrets::resolve(&user.password, aws).await?;
    }
    admin.provision_roles(&users).await.context("provisioning the database users")?;
    if let Some(separate) = separate {
        separate.disconnect().await;
    }
    Ok(())
}

impl Worker {
    async fn start_metrics_server(&mut self) -> anyhow::Result<()> {
        let addr = self.config.metrics_addr;
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the metrics port {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        let (metrics, stop) = (self.metrics.clone(), self.stop.subscribe());
        self.tasks.spawn(async move {
            gpu_worker::metrics::serve(listener, metrics, stop).await;
            "metrics server"
        });
        Ok(())
    }

    /// The delivery task (ends when every sender is gone) and the sender for the pipeline.
    fn start_webhooks(&self, master: MasterKey) -> (mpsc::Sender<Notification>, tokio::task::JoinHandle<()>) {
        let c = &self.config;
        let webhooks = Arc::new(Webhooks {
            policy: Policy::new(c.webhook_allow_hosts.clone()),
            resolver: Arc::new(SystemResolver { timeout: Duration::from_secs(5) }),
            connector: Arc::new(HttpConnector { timeout: Duration::from_secs(10) }),
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            master,
            keys: self.store.clone(),
            max_attempts: c.webhook_max_attempts,
            backoff: Duration::from_secs(1),
            result_url_base: c.result_url_base.clone(),
            retry_window: Duration::from_secs(c.webhook_retry_window_secs),
            lease: Duration::from_secs(c.webhook_lease_secs),
        });
        let (tx, rx) = mpsc::channel(10_000);
        (tx, tokio::spawn(webhook::run(webhooks, rx, 16, c.webhook_per_host)))
    }

    /// The outbox and dead-letter sweeps, CloudWatch, and the stop signals, each until `stop`.
    fn start_periodic_tasks(&mut self, notify: &mpsc::Sender<Notification>) {
        let c = &self.config;
        let secs = Duration::from_secs;
        if c.webhook_sweep_secs > 0 {
            let (store, tx) = (self.store.clone(), notify.clone());
            let (every, lease) = (secs(c.webhook_sweep_secs), secs(c.webhook_lease_secs));
            let stop = self.stop.subscribe();
            self.tasks.spawn(async move {
                webhook::sweep(store, tx, every, lease, stop).await;
                "webhook sweep"
            });
        }
        match (&c.express_dlq_url, &c.bulk_dlq_url) {
            (Some(express), Some(bulk)) if c.dlq_sweep_secs > 0 => {
                let dead = Arc::new(SqsDeadLetters::new(&self.aws, express, bulk));
                let (store, metrics, stop) = (self.store.clone(), self.metrics.clone(), self.stop.subscribe());
                let every = secs(c.dlq_sweep_secs);
                self.tasks.spawn(async move {
                    gpu_worker::dead_letters::run(dead, store, metrics, every, stop).await;
                    "dead-letter sweep"
                });
            }
            _ if c.dlq_sweep_secs > 0 => tracing::warn!(
                "dead-letter sweep off: EXPRESS_DLQ_URL and BULK_DLQ_URL are not both set, so a job whose worker dies on its last attempt stays processing"
            ),
            _ => {}
        }
        if c.purge_interval_secs > 0 {
            let (store, stop) = (self.store.clone(), self.stop.subscribe());
            let retention = secs(u64::from(c.retention_days.max(1)) * 86_400);
            let every = secs(c.purge_interval_secs);
            self.tasks.spawn(async move {
                gpu_worker::retention::run(store, retention, every, stop).await;
                "retention purge"
            });
        }
        if c.cloudwatch_interval_secs > 0 {
            let client = aws_sdk_cloudwatch::Client::new(&self.aws);
            let (metrics, stop) = (self.metrics.clone(), self.stop.subscribe());
            let (namespace, fleet, every) =
                (c.cloudwatch_namespace.clone(), c.fleet_name.clone(), secs(c.cloudwatch_interval_secs));
            self.tasks.spawn(async move {
                gpu_worker::cloudwatch::run(client, metrics, namespace, fleet, every, stop).await;
                "cloudwatch"
            });
        }
        let (drain, mut stopped) = (self.stop.clone(), self.stop.subscribe());
        self.tasks.spawn(async move {
            tokio::select! {
                _ = ocr_aws::process::shutdown_signal() => { let _ = drain.send(true); }
                _ = stopped.wait_for(|s| *s) => {}
            }
            "signals"
        });
    }

    /// Runs the pipeline until a stop signal, or until a periodic task ends before it was asked
    /// to (then the worker drains and exits, and its unit or Auto Scaling restarts it). Returns
    /// when the stop came: the grace period counts from there.
    async fn run_pipeline(&mut self, recognizer: EngineRecognizer, notify: mpsc::Sender<Notification>) -> Instant {
        let c = &self.config;
        let deps = PipelineDeps {
            source: Arc::new(SqsJobSource::new(&self.aws, &c.resources.express_queue_url, &c.resources.bulk_queue_url)),
            store: self.store.clone(),
            objects: Arc::new(S3ObjectStore::new(&self.aws, &c.resources.upload_bucket)),
            metrics: self.metrics.clone(),
            notify,
        };
        let pipeline = Pipeline::new(deps, c.pipeline_settings()).run(recognizer, self.stop.subscribe());
        tokio::pin!(pipeline);
        let mut stop = self.stop.subscribe();
        let mut stopped_at = None;
        loop {
            tokio::select! {
                _ = &mut pipeline => return stopped_at.unwrap_or_else(Instant::now),
                _ = stop.wait_for(|s| *s), if stopped_at.is_none() => stopped_at = Some(Instant::now()),
                Some(ended) = self.tasks.join_next(), if !*self.stop.borrow() => {
                    // The signals task ends by sending the stop: only a task ending before any
                    // stop is an error (the guard above was read before this task ended).
                    if !*self.stop.borrow() {
                        tracing::error!(task = ?ended, "a background task ended early: draining");
                        let _ = self.stop.send(true);
                    }
                }
            }
        }
    }

    /// Tells the periodic tasks to stop and waits for them.
    async fn stop_tasks(&mut self) {
        let _ = self.stop.send(true);
        while let Some(ended) = self.tasks.join_next().await {
            if let Err(e) = ended {
                tracing::error!(error = %e, "a background task panicked");
            }
        }
    }

    /// On a scale-in or spot interruption: lets Auto Scaling terminate the drained instance.
    async fn complete_lifecycle(&self, departure: tokio::task::JoinHandle<Option<lifecycle::Departure>>) {
        let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_secs(1), departure).await else { return };
        let client = aws_sdk_autoscaling::Client::new(&self.aws);
        let c = &self.config;
        match lifecycle::complete_lifecycle_action(
            &client,
            &Imds::new(),
            &c.lifecycle_hook_name,
            &c.autoscaling_group_name,
        )
        .await
        {
            Ok(()) => tracing::info!("lifecycle action completed"),
            Err(e) => tracing::error!(error = %e, "completing the lifecycle action failed"),
        }
    }
}
