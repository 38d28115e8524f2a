//! The worker's settings, from the environment (or flags). Names match template.yaml,
//! infra/worker/ and the README; engine settings share the `ocr` tool's names.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything the worker reads at start.
#[derive(clap::Parser, Clone)]
#[command(version, about = "ocr-fleet GPU worker: SQS batches in, OCR, results in MySQL, webhooks out")]
pub struct WorkerConfig {
    /// URL of the express job queue.
    #[arg(long, env = "EXPRESS_QUEUE_URL")]
    pub express_queue_url: String,
    /// URL of the bulk job queue.
    #[arg(long, env = "BULK_QUEUE_URL")]
    pub bulk_queue_url: String,
    /// Bucket the images are in; messages naming another bucket are refused.
    #[arg(long, env = "UPLOAD_BUCKET")]
    pub upload_bucket: String,
    /// `mysql://user:password@host:port/database`.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Most database connections this worker opens.
    #[arg(long, env = "DB_POOL_MAX", default_value_t = 4)]
    pub db_pool_max: usize,
    /// Apply database migrations at start (the AWS bootstrap sets it: workers migrate under a
    /// MySQL named lock before serving `/healthz`).
    #[arg(long, env = "DB_MIGRATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub db_migrate: bool,

    /// Most jobs per engine batch (several 10-message receives).
    #[arg(long, env = "BATCH_MAX", default_value_t = 32)]
    pub batch_max: usize,
    /// Longest wait for a batch to fill once its first job arrived, in milliseconds.
    #[arg(long, env = "BATCH_WAIT_MS", default_value_t = 250)]
    pub batch_wait_ms: u64,
    /// Share of each batch kept for bulk jobs when both queues have work (0..1), so
    /// bulk is never starved by express.
    #[arg(long, env = "BULK_SHARE", default_value_t = 0.25)]
    pub bulk_share: f64,
    /// Long-poll wait while idle, in seconds (also the worst idle wake-up delay).
    #[arg(long, env = "RECEIVE_WAIT_SECS", default_value_t = 2)]
    pub receive_wait_secs: u64,
    /// The job queues' visibility timeout, in seconds; the heartbeat extends messages
    /// held longer than half of it.
    #[arg(long, env = "VISIBILITY_TIMEOUT_SECS", default_value_t = 30)]
    pub visibility_timeout_secs: u64,
    /// Deliveries after which a failing job is marked failed (the queues' maxReceiveCount).
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Delay before a failed job is tried again, in milliseconds; doubles per attempt.
    #[arg(long, env = "RETRY_BACKOFF_MS", default_value_t = 2000)]
    pub retry_backoff_ms: u64,
    /// Concurrent S3 downloads.
    #[arg(long, env = "PREFETCH_CONCURRENCY", default_value_t = 16)]
    pub prefetch_concurrency: usize,
    /// Concurrent image decodes (CPU threads).
    #[arg(long, env = "DECODE_CONCURRENCY", default_value_t = 2)]
    pub decode_concurrency: usize,
    /// Seconds to finish or release in-flight work after SIGTERM/SIGINT.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 60)]
    pub shutdown_grace_secs: u64,

    /// `/metrics` and `/healthz` listen here.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9100")]
    pub metrics_addr: SocketAddr,
    /// CloudWatch namespace for the per-minute metrics.
    #[arg(long, env = "CLOUDWATCH_NAMESPACE", default_value = "OcrFleet")]
    pub cloudwatch_namespace: String,
    /// Seconds between CloudWatch PutMetricData calls (0 turns them off).
    #[arg(long, env = "CLOUDWATCH_INTERVAL_SECS", default_value_t = 60)]
    pub cloudwatch_interval_secs: u64,
    /// Value of the `Fleet` dimension on CloudWatch metrics (the stage name).
    #[arg(long, env = "FLEET_NAME", default_value = "local")]
    pub fleet_name: String,

    /// Secret for the webhooks' HMAC-SHA256 signature.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, default_value = "")]
    pub webhook_secret: String,
    /// Attempts per webhook before giving up.
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", default_value_t = 5)]
    pub webhook_max_attempts: u32,
    /// Seconds a notification may stay owed before another sweep delivers it (its worker
    /// died or dropped it). Must exceed one delivery with all its retries (about 65 s).
    #[arg(long, env = "WEBHOOK_LEASE_SECS", default_value_t = 300)]
    pub webhook_lease_secs: u64,
    /// How often each worker looks for owed notifications; 0 turns the sweep off.
    #[arg(long, env = "WEBHOOK_SWEEP_SECS", default_value_t = 30)]
    pub webhook_sweep_secs: u64,
    /// Express dead-letter queue, read by the dead-letter sweep (with `BULK_DLQ_URL`).
    #[arg(long, env = "EXPRESS_DLQ_URL")]
    pub express_dlq_url: Option<String>,
    /// Bulk dead-letter queue.
    #[arg(long, env = "BULK_DLQ_URL")]
    pub bulk_dlq_url: Option<String>,
    /// How often each worker fails jobs whose message reached a dead-letter queue without a
    /// final result (its worker died on the last attempt); 0 turns the sweep off.
    #[arg(long, env = "DLQ_SWEEP_SECS", default_value_t = 60)]
    pub dlq_sweep_secs: u64,
    /// `host:port` entries allowed even on loopback/private addresses. For tests only.
    #[arg(long, env = "WEBHOOK_ALLOW_HOSTS", default_value = "")]
    pub webhook_allow_hosts: String,
    /// Base of the `result_url` in webhooks (the API's URL).
    #[arg(long, env = "RESULT_URL_BASE", default_value = "http://127.0.0.1:8080")]
    pub result_url_base: String,

    /// Watch EC2 instance metadata for a terminating lifecycle hook or a spot
    /// interruption, drain, then complete the lifecycle action. Only on EC2.
    #[arg(long, env = "EC2_LIFECYCLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub ec2_lifecycle: bool,
    /// Name of the Auto Scaling lifecycle hook to complete.
    #[arg(long, env = "LIFECYCLE_HOOK_NAME", default_value = "")]
    pub lifecycle_hook_name: String,
    /// Name of the Auto Scaling group this instance belongs to.
    #[arg(long, env = "AUTOSCALING_GROUP_NAME", default_value = "")]
    pub autoscaling_group_name: String,

    /// Engine settings: the same flags and variables as the `ocr` tool's.
    #[command(flatten)]
    pub engine: ocr_engine::EngineSettings,
}

impl WorkerConfig {
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_secs.max(2))
    }
}

impl fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets (database password, webhook key) stay out of logs.
        f.debug_struct("WorkerConfig")
            .field("express_queue_url", &self.express_queue_url)
            .field("bulk_queue_url", &self.bulk_queue_url)
            .field("upload_bucket", &self.upload_bucket)
            .field("database_url", &"<redacted>")
            .field("batch_max", &self.batch_max)
            .field("batch_wait_ms", &self.batch_wait_ms)
            .field("bulk_share", &self.bulk_share)
            .field("visibility_timeout_secs", &self.visibility_timeout_secs)
            .field("max_attempts", &self.max_attempts)
            .field("metrics_addr", &self.metrics_addr)
            .field("webhook_secret", &"<redacted>")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}
