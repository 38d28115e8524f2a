//! Settings, from the environment (or flags). One name per setting everywhere:
//! these env names are the ones template.yaml, localstack/ and the README use.

use std::time::Duration;

use ocr_core::net::AllowHosts;
use ocr_core::quota::CallerQuota;
use secrecy::SecretString;

use crate::wait::{
    DEFAULT_WAIT_MAX_PER_CALLER, DEFAULT_WAIT_MAX_TOTAL, DEFAULT_WAIT_MAX_WAITERS, DEFAULT_WAIT_TICK_MS, WaitCaps,
    WaitSettings,
};

pub use ocr_aws::config::{DbArgs, ResourceArgs};

/// What the API needs, on Lambda (`api`) and on a TCP port (`api-local`).
#[derive(clap::Args, Debug, Clone)]
pub struct ProducerArgs {
    #[command(flatten)]
    pub resources: ResourceArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// How upload events that could not be handled come back (the on-upload function and the local
/// poller alike).
#[derive(clap::Args, Debug, Clone)]
pub struct UploadRetryArgs {
    /// Delay before a failed upload event is delivered again, in seconds; doubles with each
    /// receive (the queue's maxReceiveCount, 6, then spans half an hour at the defaults).
    #[arg(long, env = "UPLOAD_RETRY_BASE_SECS", default_value_t = 30)]
    pub upload_retry_base_secs: u64,
    /// Longest such delay, in seconds.
    #[arg(long, env = "UPLOAD_RETRY_MAX_SECS", default_value_t = 900)]
    pub upload_retry_max_secs: u64,
    /// The upload-events dead-letter queue, swept back through the handler once the outage that
    /// filled it is over (see `ocr_api::dead_letters`). Unset: no sweep.
    #[arg(long, env = "UPLOAD_EVENTS_DLQ_URL")]
    pub upload_events_dlq_url: Option<String>,
    /// Seconds between two sweeps of that queue by the local poller (on AWS a schedule invokes
    /// the on-upload function instead, every 5 minutes).
    #[arg(long, env = "UPLOAD_DLQ_SWEEP_SECS", default_value_t = 300)]
    pub upload_dlq_sweep_secs: u64,
}

impl UploadRetryArgs {
    pub fn backoff(&self) -> crate::upload::Backoff {
        let base = Duration::from_secs(self.upload_retry_base_secs.max(1));
        crate::upload::Backoff { base, max: Duration::from_secs(self.upload_retry_max_secs).max(base) }
    }
}

/// The upload-events queues, one per priority: the bucket sends `uploads/express/` and
/// `uploads/bulk/` events each to its own, so an express event never waits behind a bulk backlog.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct UploadEventQueueArgs {
    /// Queue of S3 events for express uploads (`uploads/express/`).
    #[arg(long, env = "UPLOAD_EVENTS_EXPRESS_QUEUE_URL")]
    pub upload_events_express_queue_url: Option<String>,
    /// Queue of S3 events for bulk uploads (`uploads/bulk/`).
    #[arg(long, env = "UPLOAD_EVENTS_BULK_QUEUE_URL")]
    pub upload_events_bulk_queue_url: Option<String>,
}

impl UploadEventQueueArgs {
    /// The queues that are set, express first.
    pub fn urls(&self) -> Vec<&str> {
        [&self.upload_events_express_queue_url, &self.upload_events_bulk_queue_url]
            .into_iter()
            .filter_map(|url| url.as_deref())
            .collect()
    }
}

/// How callers are identified.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// API Gateway's JWT authorizer has checked the token; the caller is its `sub` claim.
    Jwt,
    /// Static bearer tokens from `API_TOKENS` (local runs and tests).
    Static,
}

/// Limits and behaviour of the API.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    #[arg(long, env = "AUTH_MODE", value_enum, default_value = "jwt")]
    pub auth_mode: AuthMode,
    /// `token:caller,token2:caller2` for `AUTH_MODE=static`.
    #[arg(long, env = "API_TOKENS", hide_env_values = true, default_value = "")]
    pub api_tokens: SecretString,
    /// Largest image accepted, in bytes.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 20_000_000)]
    pub max_upload_bytes: u64,
    /// Most pages a PDF may declare; a longer one is refused on upload (api-local's handler).
    #[arg(long, env = "MAX_PAGES", default_value_t = ocr_core::pdf::DEFAULT_MAX_PAGES as u64)]
    pub max_pages: u64,
    /// Lifetime of a presigned upload URL in seconds (at most 900).
    #[arg(long, env = "PRESIGN_EXPIRY_SECS", default_value_t = 900)]
    pub presign_expiry_secs: u64,
    /// Above this many waiting messages on the job's queue, new jobs get 503.
    #[arg(long, env = "QUEUE_DEPTH_LIMIT", default_value_t = 10_000)]
    pub queue_depth_limit: u64,
    /// How long a queue depth reading is reused, in seconds.
    #[arg(long, env = "QUEUE_DEPTH_REFRESH_SECS", default_value_t = 5)]
    pub queue_depth_refresh_secs: u64,
    /// Jobs one caller may have waiting at once (queued, or awaiting an upload whose URL is
    /// still valid); more get 429. Below QUEUE_DEPTH_LIMIT, so one caller alone never makes
    /// the API refuse everyone. 0: no limit.
    #[arg(long, env = "CALLER_MAX_QUEUED", default_value_t = DEFAULT_CALLER.max_waiting)]
    pub caller_max_queued: u64,
    /// Job creations per second one caller may sustain (a token bucket, kept in MySQL so every
    /// API instance draws from the same one); faster gets 429. 0: no limit.
    #[arg(long, env = "CALLER_MAX_RATE", default_value_t = DEFAULT_CALLER.rate_per_sec)]
    pub caller_max_rate: f64,
    /// Creations one caller may make at once after a quiet spell (the bucket's size).
    #[arg(long, env = "CALLER_BURST", default_value_t = DEFAULT_CALLER.burst)]
    pub caller_burst: u32,
    /// `Retry-After` sent with 503 (and with 429 for a caller at CALLER_MAX_QUEUED), in seconds.
    #[arg(long, env = "RETRY_AFTER_SECS", default_value_t = 30)]
    pub retry_after_secs: u64,
    /// `host:port` entries (comma-separated) a job's `callback_url` may name although they are
    /// plain http or internal (a receiver on loopback); tests and local runs only. The worker
    /// reads the same variable for where it may send.
    #[arg(long, env = "WEBHOOK_ALLOW_HOSTS", default_value = "")]
    pub webhook_allow_hosts: AllowHosts,
    /// Days a job, its image and its result are kept: after that the job reads `expired` (the
    /// workers purge it, the bucket's lifecycle deletes the image).
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 7)]
    pub retention_days: u32,
    /// Master key of webhook signatures (the worker's `WEBHOOK_SECRET`): the API derives each
    /// caller's key from it to show the caller (`GET /v1/webhook-secret`).
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, default_value = "")]
    pub webhook_secret: SecretString,
    /// Most requests one process holds waiting at once (`GET /v1/jobs/{id}?wait=`); past it a
    /// waiting request answers at once with the job as it is. 0: no request ever waits.
    #[arg(long, env = "WAIT_MAX_WAITERS", default_value_t = DEFAULT_WAIT_MAX_WAITERS)]
    pub wait_max_waiters: usize,
    /// Milliseconds between two checks of every waited-on job (one read per 500 jobs); a waiter
    /// answers within about this long of its job's end. 10 to 5000.
    #[arg(long, env = "WAIT_TICK_MS", default_value_t = DEFAULT_WAIT_TICK_MS)]
    pub wait_tick_ms: u64,
    /// Most `?wait=` requests waiting at once across every API process (counted in MySQL): on
    /// Lambda each holds an environment of the API function, so keep it well under its reserved
    /// concurrency (the stack: half). Past it a waiting request answers at once with the job as
    /// it is. 0: no request ever waits.
    #[arg(long, env = "WAIT_MAX_TOTAL", default_value_t = DEFAULT_WAIT_MAX_TOTAL)]
    pub wait_max_total: u32,
    /// Most `?wait=` requests of one caller waiting at once across every API process; past it
    /// that caller's waiting request answers at once. 0: no request ever waits.
    #[arg(long, env = "WAIT_MAX_PER_CALLER", default_value_t = DEFAULT_WAIT_MAX_PER_CALLER)]
    pub wait_max_per_caller: u32,
}

/// The shipped per-caller limits: one caller may fill 80 % of QUEUE_DEPTH_LIMIT's default
/// (10,000) and create 100 jobs a second (8.6 M a day, several times the fleet's design load),
/// 500 at once: most of an idle system, never all of it.
pub const DEFAULT_CALLER: CallerQuota = CallerQuota {
    max_waiting: 8_000,
    rate_per_sec: 100.0,
    burst: 500,
    upload_window_ms: 900_000,
    waiting_retry_after_secs: 30,
};

/// Largest body accepted for a direct (server-to-server) upload: Lambda's payload limit.
pub const MAX_DIRECT_UPLOAD_BYTES: usize = 6 * 1024 * 1024;

/// Largest output of `GET /v1/jobs/{id}/result` answered in the response itself: a Lambda
/// response carries 6 MB, and a binary body travels base64-encoded (a third larger). A larger
/// one is stored and answered with a redirect.
pub const MAX_INLINE_OUTPUT: usize = 4 << 20;

/// Limits the handlers enforce, separated from how they were read.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_upload_bytes: u64,
    pub presign_expiry: Duration,
    pub queue_depth_limit: u64,
    pub queue_depth_refresh: Duration,
    pub retry_after_secs: u64,
    /// `host:port` exempt from the callback target check (`WEBHOOK_ALLOW_HOSTS`).
    pub webhook_allow_hosts: AllowHosts,
    /// Days a job is kept (`RETENTION_DAYS`).
    pub retention_days: u32,
    /// Per-caller admission (`CALLER_MAX_QUEUED`, `CALLER_MAX_RATE`, `CALLER_BURST`).
    pub caller: CallerQuota,
    /// Waiting requests in this process (`WAIT_MAX_WAITERS`, `WAIT_TICK_MS`).
    pub wait: WaitSettings,
    /// Waiting requests across every process (`WAIT_MAX_TOTAL`, `WAIT_MAX_PER_CALLER`).
    pub wait_caps: WaitCaps,
    /// Largest result output answered inline ([`MAX_INLINE_OUTPUT`]; tests lower it).
    pub max_inline_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload_bytes: 20_000_000,
            presign_expiry: Duration::from_secs(900),
            queue_depth_limit: 10_000,
            queue_depth_refresh: Duration::from_secs(5),
            retry_after_secs: 30,
            webhook_allow_hosts: AllowHosts::default(),
            retention_days: 7,
            caller: DEFAULT_CALLER,
            wait: WaitSettings::default(),
            wait_caps: WaitCaps::default(),
            max_inline_output: MAX_INLINE_OUTPUT,
        }
    }
}

impl From<&ApiArgs> for Limits {
    fn from(a: &ApiArgs) -> Self {
        let presign_expiry = Duration::from_secs(a.presign_expiry_secs.clamp(1, 900));
        Limits {
            max_upload_bytes: a.max_upload_bytes,
            presign_expiry,
            queue_depth_limit: a.queue_depth_limit,
            queue_depth_refresh: Duration::from_secs(a.queue_depth_refresh_secs),
            retry_after_secs: a.retry_after_secs,
            webhook_allow_hosts: a.webhook_allow_hosts.clone(),
            retention_days: a.retention_days.max(1),
            caller: CallerQuota {
                max_waiting: a.caller_max_queued,
                rate_per_sec: if a.caller_max_rate.is_finite() { a.caller_max_rate.max(0.0) } else { 0.0 },
                burst: a.caller_burst.max(1),
                upload_window_ms: presign_expiry.as_millis() as i64,
                waiting_retry_after_secs: a.retry_after_secs,
            },
            wait: WaitSettings {
                tick: Duration::from_millis(a.wait_tick_ms.clamp(10, 5_000)),
                max_waiters: a.wait_max_waiters,
            },
            wait_caps: WaitCaps { max_total: a.wait_max_total, max_per_caller: a.wait_max_per_caller },
            max_inline_output: MAX_INLINE_OUTPUT,
        }
    }
}
