//! `gpu-worker dlq list|redrive`: the dead-letter queues, for operators.
//!
//! It ships in the worker's binary so that it runs where the database is reachable (on a
//! worker, through SSM: `sudo -u ocr gpu-worker dlq list`, with the worker's environment) as
//! well as on a laptop against LocalStack (`scripts/dlq`). Queues are found by name:
//! `<prefix>-<queue>-dlq`, the prefix `ocr` locally and `ocr-<stage>` on AWS.
//!
//! `list` reads each queue (hiding each message for a moment so the pages are distinct, then
//! showing it again) and changes nothing. `redrive` moves messages back to their source queue
//! (upload-events': to the express or bulk upload-events queue each came from) with SQS's own
//! message-move task; with `--reset-jobs` the failed jobs among them go back to
//! `queued` first (the life cycle's operator-only [`ocr_core::JobStatus::REDRIVE`]), since a
//! worker acknowledges a message whose job already ended.

use std::time::Duration;

use anyhow::Context;
use ocr_aws::config::DbArgs;
use ocr_aws::{DeadLetterAdmin, MySqlJobStore, ReceivedMessage};
use ocr_core::{JobId, JobMessage};
use secrecy::SecretString;

/// Which dead-letter queue.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Express,
    Bulk,
    UploadEvents,
}

impl Queue {
    const ALL: [Queue; 3] = [Queue::Express, Queue::Bulk, Queue::UploadEvents];

    fn name(self) -> &'static str {
        match self {
            Queue::Express => "express",
            Queue::Bulk => "bulk",
            Queue::UploadEvents => "upload-events",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: Action,
    /// Queues to act on (repeatable); all three when absent.
    #[arg(long, value_enum, global = true)]
    queue: Vec<Queue>,
    /// The stage whose queues these are: `local` (names `ocr-…`) or a deployed stage
    /// (`ocr-<stage>-…`).
    #[arg(long, env = "STAGE", default_value = "local", global = true)]
    stage: String,
    /// Queue name prefix, instead of the stage's.
    #[arg(long, global = true)]
    prefix: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Show what the dead-letter queues hold; changes nothing.
    List {
        /// Most messages shown per queue.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Move every message back to its source queue (SQS's message-move task).
    Redrive {
        /// Put the failed jobs among them back to `queued` first, so they are really tried
        /// again (needs DATABASE_URL).
        #[arg(long)]
        reset_jobs: bool,
        /// Most messages moved per second (default: as fast as SQS moves them).
        #[arg(long)]
        rate: Option<i32>,
        /// The database, for `--reset-jobs` (`mysql://user:password@host:port/database`).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<SecretString>,
        /// The password, when DATABASE_URL has none (or a Secrets Manager reference to it).
        #[arg(long, env = "DATABASE_PASSWORD", hide_env_values = true)]
        database_password: Option<SecretString>,
        /// A private CA for the database's TLS certificate (tests; see the worker's settings).
        #[arg(long, env = "DATABASE_CA_FILE")]
        database_ca_file: Option<std::path::PathBuf>,
    },
}

/// How long a listed message stays hidden while the queue is paged through.
const PEEK_HIDE: Duration = Duration::from_secs(30);
/// Most messages whose jobs one `--reset-jobs` resets per queue.
const RESET_MAX: usize = 100_000;

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let aws = ocr_aws::aws_config_from_env().await;
    let admin = DeadLetterAdmin::new(&aws);
    let prefix = args.prefix.clone().unwrap_or_else(|| match args.stage.as_str() {
        "local" => "ocr".to_owned(),
        stage => format!("ocr-{stage}"),
    });
    let queues = if args.queue.is_empty() { Queue::ALL.to_vec() } else { args.queue.clone() };
    let store = reset_store(&args.action, &queues, &aws).await?;
    for queue in queues {
        let dlq_name = format!("{prefix}-{}-dlq", queue.name());
        let dlq = admin.url(&dlq_name).await.with_context(|| format!("finding queue {dlq_name}"))?;
        match &args.action {
            Action::List { max } => list(&admin, &dlq_name, &dlq, *max).await?,
            Action::Redrive { rate, .. } => {
                // The upload-events DLQ serves both upload-events queues (express, bulk): each
                // message goes back to the one it came from, which SQS remembers.
                let source_name = (queue != Queue::UploadEvents).then(|| format!("{prefix}-{}", queue.name()));
                let source = match &source_name {
                    Some(name) => Some(admin.url(name).await.with_context(|| format!("finding queue {name}"))?),
                    None => None,
                };
                if let Some(store) = &store
                    && queue != Queue::UploadEvents
                {
                    reset_jobs_of(&admin, &dlq, store).await?;
                }
                let moved = admin.move_back(&dlq, source.as_deref(), *rate).await?;
                let to = source_name.unwrap_or_else(|| "the queue each came from".to_owned());
                println!("{dlq_name}: redrove {moved} message(s) to {to}");
                report_hidden(&admin, &dlq).await?;
            }
        }
    }
    if let Some(store) = store {
        store.disconnect().await;
    }
    Ok(())
}

/// The database `--reset-jobs` resets jobs in, once for every queue; `None` when no job is
/// reset (no `--reset-jobs`, or only the upload-events queue, whose jobs never failed in a worker).
async fn reset_store(
    action: &Action,
    queues: &[Queue],
    aws: &ocr_aws::SdkConfig,
) -> anyhow::Result<Option<MySqlJobStore>> {
    let Action::Redrive { reset_jobs: true, database_url, database_password, database_ca_file, .. } = action else {
        return Ok(None);
    };
    if queues.iter().all(|q| *q == Queue::UploadEvents) {
        return Ok(None);
    }
    let database_url = database_url.clone().context("--reset-jobs needs DATABASE_URL")?;
    let db = DbArgs {
        database_url,
        database_password: database_password.clone(),
        db_pool_max: 1,
        database_ca_file: database_ca_file.clone(),
        db_timeout_ms: ocr_aws::sql::DEFAULT_TIMEOUT_MS,
    };
    Ok(Some(db.connect(aws).await?))
}

async fn list(admin: &DeadLetterAdmin, name: &str, url: &str, max: usize) -> anyhow::Result<()> {
    let messages = admin.peek(url, max, PEEK_HIDE).await?;
    println!("{name}: {} message(s)", messages.len());
    report_hidden(admin, url).await?;
    for m in messages {
        let job = job_of(&m).map_or_else(|| "-".to_owned(), |id| id.to_string());
        let body: String = m.body.chars().take(120).collect();
        println!("  {}  receives={}  job={job}  {body}", m.message_id, m.receive_count);
    }
    Ok(())
}

/// Says how many messages are hidden: the workers' dead-letter sweep hides each one it has
/// dealt with for a few minutes (so that it reaches the rest of a deep queue), and a hidden
/// message is neither listed nor moved.
async fn report_hidden(admin: &DeadLetterAdmin, url: &str) -> anyhow::Result<()> {
    let hidden = admin.hidden(url).await?;
    if hidden > 0 {
        let sweeps = crate::dead_letters::HIDE_SWEEPS;
        println!(
            "  {hidden} more hidden for now (read by the workers' sweep; visible again within {sweeps} sweep intervals, \
             DLQ_SWEEP_SECS: run this again then)"
        );
    }
    Ok(())
}

async fn reset_jobs_of(admin: &DeadLetterAdmin, dlq: &str, store: &MySqlJobStore) -> anyhow::Result<()> {
    let ids: Vec<JobId> = admin.peek(dlq, RESET_MAX, PEEK_HIDE).await?.iter().filter_map(job_of).collect();
    let reset = store.requeue_failed(&ids, crate::now_ms()).await.context("resetting the failed jobs")?;
    println!("  {reset} of {} job(s) were failed and go back to queued", ids.len());
    Ok(())
}

/// The job a dead-lettered message is about: a job message's id, or the job named by an upload
/// event's object key.
fn job_of(m: &ReceivedMessage) -> Option<JobId> {
    if let Ok(message) = JobMessage::parse(&m.body) {
        return Some(message.job_id);
    }
    let event: serde_json::Value = serde_json::from_str(&m.body).ok()?;
    let key = event.pointer("/Records/0/s3/object/key")?.as_str()?;
    ocr_core::job::parse_object_key(key).map(|(_, id)| id)
}
