//! The worker's settings, from the environment (or flags). Names match template.yaml,
//! infra/worker/ and the README; engine settings share the `ocr` tool's names.

use std::net::SocketAddr;
use std::time::Duration;

use ocr_core::net::AllowHosts;
use secrecy::SecretString;

/// Everything the worker reads at start.
#[derive(clap::Args, Debug, Clone)]
pub struct WorkerConfig {
    /// Queues and bucket: the same settings as the API's.
    #[command(flatten)]
    pub resources: ocr_aws::config::ResourceArgs,
    /// The database: the same settings as the API's.
    #[command(flatten)]
    pub db: ocr_aws::config::DbArgs,
    /// The account the migrations run as (`DB_MIGRATE`), when it is not `DATABASE_URL`'s: on AWS
    /// the master user, while the worker itself connects as its own role.
    #[arg(long, env = "MIGRATION_DATABASE_URL", hide_env_values = true)]
    pub migration_database_url: Option<SecretString>,
    /// Its password (the password itself, or a Secrets Manager reference read at start).
    #[arg(long, env = "MIGRATION_DATABASE_PASSWORD", hide_env_values = true)]
    pub migration_database_password: Option<SecretString>,
    /// After migrating, create or update these users with their role's grants:
    /// `api=<user>:<password>,upload=…,worker=…` (passwords may be Secrets Manager references).
    #[arg(long, env = "DB_ROLE_USERS", hide_env_values = true, default_value = "")]
    pub db_role_users: SecretString,
    /// Days a job, its result and its image are kept; the purge deletes its row after twice that.
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 7)]
    pub retention_days: u32,
    /// How often each worker purges jobs past retention, in seconds; 0 turns it off.
    #[arg(long, env = "PURGE_INTERVAL_SECS", default_value_t = 300)]
    pub purge_interval_secs: u64,
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
    /// How long a batch waits for the database (retrying) before its messages go back to the
    /// queue as new ones, visible again after as long: a long outage then holds no messages
    /// and uses none of the jobs' attempts.
    #[arg(long, env = "DB_RETRY_SECS", default_value_t = 60)]
    pub db_retry_secs: u64,
    /// Most memory the decoded images in the pipeline may take together, in MiB (3 bytes a
    /// pixel, from decoding until the engine has read them); a batch takes at most half. Unset:
    /// a quarter of the machine's memory (or of the cgroup's limit); 0: no budget.
    #[arg(long, env = "DECODED_BUDGET_MB")]
    pub decoded_budget_mb: Option<u64>,
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

    /// Master key of the webhooks' signatures: each caller's signing key derives from it
    /// (`ocr_core::signing`).
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, default_value = "")]
    pub webhook_secret: SecretString,
    /// Attempts per webhook before giving up.
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", default_value_t = 5)]
    pub webhook_max_attempts: u32,
    /// Seconds a notification may stay owed before another sweep delivers it (its worker
    /// died or dropped it). Must exceed one delivery with all its retries (about 65 s).
    #[arg(long, env = "WEBHOOK_LEASE_SECS", default_value_t = 300)]
    pub webhook_lease_secs: u64,
    /// How long a failing webhook keeps being retried through the outbox (farther apart each
    /// time, at most an hour) before it is recorded as failed, in seconds.
    #[arg(long, env = "WEBHOOK_RETRY_WINDOW_SECS", default_value_t = 86_400)]
    pub webhook_retry_window_secs: u64,
    /// Most deliveries to one host at once: a receiver that never answers holds no more.
    #[arg(long, env = "WEBHOOK_PER_HOST", default_value_t = 2)]
    pub webhook_per_host: usize,
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
    pub webhook_allow_hosts: AllowHosts,
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

    /// The pipeline's limits and timings.
    pub fn pipeline_settings(&self) -> crate::pipeline::Settings {
        crate::pipeline::Settings {
            batch_max: self.batch_max,
            batch_wait: Duration::from_millis(self.batch_wait_ms),
            bulk_share: self.bulk_share,
            receive_wait: Duration::from_secs(self.receive_wait_secs),
            visibility: self.visibility_timeout(),
            max_attempts: self.max_attempts,
            prefetch_concurrency: self.prefetch_concurrency,
            decode_concurrency: self.decode_concurrency,
            max_pixels: self.engine.max_pixels,
            max_pages: self.engine.max_pages,
            bucket: self.resources.upload_bucket.clone(),
            shutdown_grace: self.shutdown_grace(),
            retry_backoff: Duration::from_millis(self.retry_backoff_ms),
            db_retry_limit: Duration::from_secs(self.db_retry_secs.max(1)),
            pixel_budget: self.decoded_budget_bytes() / 3,
        }
    }

    /// `DECODED_BUDGET_MB` in bytes, or a quarter of the memory this process may use.
    pub fn decoded_budget_bytes(&self) -> u64 {
        match self.decoded_budget_mb {
            Some(mb) => mb.saturating_mul(1 << 20),
            None => memory_limit().map_or(0, |bytes| bytes / 4),
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// The memory this process may use: the machine's (`MemTotal`), or its cgroup's limit when
/// lower (a container). `None` where neither can be read.
pub fn memory_limit() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|v| v.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}
