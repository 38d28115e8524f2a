//! Ports the GPU worker uses: where job messages come from and where results go.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::PortError;
use crate::id::JobId;
use crate::job::{JobStatus, Priority};
use crate::result::OcrResult;

/// How long after an operator's redrive (`dlq redrive --reset-jobs`) the dead-letter sweep
/// leaves a reset job that no worker has taken again ([`ResultStore::give_up`]). SQS moves
/// messages back asynchronously (at up to 500 a second by default, slower when the operator
/// caps the rate), so the old copy can sit in the DLQ a while after its job went back to
/// `queued`; an hour covers a move of well over a million messages. A redriven job that a
/// worker took and whose message dead-letters again is failed at once as usual.
pub const REDRIVE_GRACE_MS: i64 = 3_600_000;

/// One delivery of a job message by the queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub priority: Priority,
    pub message_id: String,
    /// Needed to delete the message or change its visibility; dies when visibility expires.
    pub receipt_handle: String,
    pub body: String,
    /// Deliveries of this message so far, this one included (SQS `ApproximateReceiveCount`).
    pub receive_count: u32,
    /// Times a worker put this message back as a new one ([`JobSource::requeue`]; the SQS
    /// message attribute `ocr-requeues`), 0 for a message as the producer sent it.
    pub requeues: u32,
}

/// The job queues, seen from a consumer.
#[async_trait]
pub trait JobSource: Send + Sync {
    /// Up to `max` (≤ 10) messages of one priority, waiting at most `wait` for the first.
    async fn receive(&self, priority: Priority, max: usize, wait: Duration) -> Result<Vec<Delivery>, PortError>;

    /// Deletes delivered messages (up to 10 per call). Returns the receipt handles that
    /// could not be deleted.
    async fn delete(&self, priority: Priority, receipt_handles: &[String]) -> Result<Vec<String>, PortError>;

    /// Sends the delivery's body again as a new message of the same queue, visible after
    /// `delay` (at most 15 minutes), with [`Delivery::requeues`] one more, then deletes the
    /// delivery. The new message's receive count starts over: for a message this worker must
    /// not count as an attempt (one of a newer version, during a rolling deploy).
    async fn requeue(&self, delivery: &Delivery, delay: Duration) -> Result<(), PortError>;

    /// Sets the visibility of delivered messages (up to 10 per call): extend to keep
    /// them while working, or 0 to hand them back at once.
    async fn set_visibility(
        &self,
        priority: Priority,
        receipt_handles: &[String],
        visibility: Duration,
    ) -> Result<(), PortError>;
}

/// The dead-letter queues, seen by the worker's dead-letter sweep. A message lands there when
/// it was received more often than the redrive policy allows; usually the worker marked the
/// job failed on its last attempt, but not when the worker died during that attempt (or
/// could not reach the database), and then only the dead-letter queue knows the job is over.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to `max` (≤ 10) dead-lettered messages of one priority, hidden from other readers
    /// for `hide` so that repeated calls page through the queue. They stay in the dead-letter
    /// queue for operators (`scripts/dlq`).
    async fn peek(&self, priority: Priority, max: usize, hide: Duration) -> Result<Vec<Delivery>, PortError>;
}

/// What the worker needs to know of a job it took.
#[derive(Debug, Clone, PartialEq)]
pub struct TakenJob {
    pub id: JobId,
    pub owner: String,
    /// The status before this delivery took it.
    pub status: JobStatus,
    pub callback_url: Option<String>,
    /// Time the job was queued (for queue-to-result latency), epoch milliseconds.
    pub queued_at_ms: Option<i64>,
    /// The version of the image the on-upload check passed ([`crate::ports::StatusChange`]):
    /// the worker reads exactly it.
    pub checked_etag: Option<String>,
}

/// What one [`ResultStore::purge`] call removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Jobs whose results, webhook records, metadata and callback went.
    pub stripped: usize,
    /// Jobs deleted outright.
    pub deleted: usize,
}

/// A webhook call's outcome, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    pub job_id: JobId,
    pub url: String,
    /// `delivered`, `failed` (gave up after retries) or `refused` (target not allowed).
    pub outcome: String,
    pub attempts: u32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub at_ms: i64,
}

/// A webhook call still owed for a job that ended (see [`ResultStore::claim_notifications`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OwedNotification {
    pub job_id: JobId,
    /// The job's caller, whose key signs the webhook.
    pub owner: String,
    pub status: JobStatus,
    pub callback_url: String,
    /// When the job first owed it (epoch ms): the retry window counts from here.
    pub first_owed_ms: i64,
}

/// Where the worker records progress and results. Every call is idempotent.
///
/// Webhooks are an outbox: ending a job that has a callback URL (`complete`, `fail`) records,
/// in the same transaction, that a notification is owed since then; recording the call's
/// outcome (`record_webhook`) settles it. A worker that dies between the two leaves the debt
/// in the database, where [`ResultStore::claim_notifications`] finds it.
#[async_trait]
pub trait ResultStore: Send + Sync {
    /// Marks the jobs `processing` (from `queued` or `processing`, counting an attempt)
    /// and returns what is known of every id found, whatever its status: a job that
    /// already ended or was deleted comes back with that status and is left as it is.
    async fn take(&self, ids: &[JobId], at_ms: i64) -> Result<Vec<TakenJob>, PortError>;

    /// Stores results and marks their jobs `succeeded`, all in one transaction. A job that
    /// already has a result keeps its first one; a job no longer `processing` (deleted,
    /// failed) gets none. Returns the ids whose result this call wrote.
    async fn complete(&self, results: &[(JobId, OcrResult)], at_ms: i64) -> Result<Vec<JobId>, PortError>;

    /// Marks the job `failed` with `reason` unless it already ended. Returns whether it changed.
    async fn fail(&self, id: &JobId, reason: &str, at_ms: i64) -> Result<bool, PortError>;

    /// Like [`ResultStore::fail`], for a job the queue gave up on: keeps the error its last
    /// attempt recorded in front (`"<last error>; <reason>"`), since that is usually why.
    /// A job an operator redrove less than [`REDRIVE_GRACE_MS`] ago and no worker has taken
    /// since is left alone: the dead letter read is the copy its redrive is moving.
    async fn give_up(&self, id: &JobId, reason: &str, at_ms: i64) -> Result<bool, PortError>;

    /// Records why an attempt failed, leaving the job to be tried again.
    async fn note_attempt_error(&self, id: &JobId, reason: &str, at_ms: i64) -> Result<(), PortError>;

    /// Records a webhook call's outcome and settles the notification owed for its job.
    async fn record_webhook(&self, record: &WebhookRecord) -> Result<(), PortError>;

    /// Retention, in bounded batches (one short transaction each, rows taken with `SKIP LOCKED`
    /// so that workers purging at once share the work): of at most `max` jobs created before
    /// `strip_before_ms`, drops results, webhook records and what the caller sent (the job then
    /// reads `expired`); then deletes at most `max` jobs created before `delete_before_ms`.
    async fn purge(
        &self,
        strip_before_ms: i64,
        delete_before_ms: i64,
        max: usize,
        at_ms: i64,
    ) -> Result<Purged, PortError>;

    /// Records a failed try and leaves the notification owed, as if since `owed_since_ms` (so
    /// the sweep takes it again one lease after that); when it was first owed is kept.
    async fn defer_webhook(&self, record: &WebhookRecord, owed_since_ms: i64) -> Result<(), PortError>;

    /// Takes up to `max` notifications owed since `owed_before_ms` or earlier (their worker
    /// died or dropped them) and marks them owed since `now_ms`, so that no other caller
    /// takes them again before the same lease has passed.
    async fn claim_notifications(
        &self,
        owed_before_ms: i64,
        now_ms: i64,
        max: usize,
    ) -> Result<Vec<OwedNotification>, PortError>;
}
