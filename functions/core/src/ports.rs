//! Ports: the small traits through which domain logic reaches the outside world.
//!
//! Adapters in `ocr-aws` implement them on S3, SQS and MySQL; [`crate::fakes`]
//! implements them in memory for unit tests.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::content::ContentType;
use crate::error::PortError;
use crate::id::JobId;
use crate::job::{Job, JobStatus, NewJob, Priority};
use crate::message::JobMessage;
use crate::quota::{Admission, CallerQuota};
use crate::result::OcrResult;

/// Milliseconds since the Unix epoch, from a clock the tests can hold still.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// Extra fields written with a status change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusChange {
    pub at_ms: i64,
    /// Why the job failed (only with `Failed`).
    pub error: Option<String>,
    /// The version of the image the on-upload check read (with `Queued`): the worker reads
    /// that version or fails the job.
    pub checked_etag: Option<String>,
}

/// Where jobs are kept.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Inserts a new job in `awaiting_upload`. A second job with the same owner and
    /// idempotency key is refused with [`PortError::Conflict`].
    async fn insert(&self, job: NewJob) -> Result<Job, PortError>;

    /// Inserts like [`JobStore::insert`] if the owner is within `quota` at the job's creation
    /// time: fewer than `max_waiting` jobs waiting and a token in its bucket, which this takes.
    /// Check and insert are one step per owner, so concurrent creations of one caller (on any
    /// number of API instances) never get past the limit together.
    async fn insert_within(&self, job: NewJob, quota: &CallerQuota) -> Result<Admission, PortError>;

    /// The job with this id, whoever owns it (callers check ownership).
    async fn get(&self, id: &JobId) -> Result<Option<Job>, PortError>;

    /// The owner's job created with this idempotency key, if any.
    async fn find_by_idempotency_key(&self, owner: &str, key: &str) -> Result<Option<Job>, PortError>;

    /// Removes a job row that never became visible to its caller (e.g. the image
    /// could not be stored). Not a user-visible delete.
    async fn remove(&self, id: &JobId) -> Result<(), PortError>;

    /// Moves the job from `from` to `to` only if it is still in `from`
    /// (compare-and-set, so concurrent handlers cannot both win).
    /// Returns whether this call made the change. The caller checks that the
    /// transition is allowed. Moving a job with a callback URL to `failed` records its
    /// webhook as owed (the workers' outbox sweep sends it).
    async fn set_status(
        &self,
        id: &JobId,
        from: JobStatus,
        to: JobStatus,
        change: StatusChange,
    ) -> Result<bool, PortError>;

    /// Records that the job's message reached its queue.
    async fn mark_enqueued(&self, id: &JobId, at_ms: i64) -> Result<(), PortError>;

    /// The OCR result of a succeeded job.
    async fn get_result(&self, id: &JobId) -> Result<Option<OcrResult>, PortError>;

    /// Marks the job deleted and drops its result.
    async fn mark_deleted(&self, id: &JobId, at_ms: i64) -> Result<(), PortError>;
}

/// Most ids one [`JobStatuses::statuses`] read asks for at once: one MySQL statement of about
/// 20 KB, one primary-key lookup per id.
pub const STATUS_BATCH: usize = 500;

/// Many jobs' statuses in one read: what a waiting hub checks each tick for everyone waiting
/// (`GET /v1/jobs/{id}?wait=`), instead of one read per waiter.
#[async_trait]
pub trait JobStatuses: Send + Sync {
    /// The status of each job in `ids` that exists, in any order; an unknown id is left out.
    /// Up to [`STATUS_BATCH`] ids are one statement on MySQL.
    async fn statuses(&self, ids: &[JobId]) -> Result<Vec<(JobId, JobStatus)>, PortError>;
}

/// One request's place among those waiting for a job (`GET /v1/jobs/{id}?wait=`), from
/// [`WaitSlots::acquire`]: 128 random bits as 32 lowercase hex digits, unguessable like a job id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SlotToken(String);

impl SlotToken {
    /// A fresh random token.
    pub fn new() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for SlotToken {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SlotToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotToken({})", self.0)
    }
}

/// The places of requests waiting for a job, counted across every API process (on Lambda each
/// waiting request holds an execution environment, and the API function's concurrency is
/// reserved and capped): at most `max_total` at once in all, at most `max_per_caller` of one
/// caller, so waits never take more than their share of the API and no caller takes more than
/// a few of it.
#[async_trait]
pub trait WaitSlots: Send + Sync {
    /// A place for `caller`'s wait on `job` until `until_ms` (or until released), if fewer than
    /// `max_total` places are held now (`now_ms`) and fewer than `max_per_caller` by this
    /// caller; `None` when either cap is reached (or is 0). `caller` is compared byte for byte
    /// (`alice` and `Alice` are two callers). A place past its `until_ms` counts no more, so a
    /// process that dies mid-wait holds its place no longer than the wait it asked for. Check
    /// and take are one step: concurrent acquires from any number of processes never get past
    /// a cap together.
    async fn acquire(
        &self,
        caller: &str,
        job: JobId,
        until_ms: i64,
        now_ms: i64,
        max_total: u32,
        max_per_caller: u32,
    ) -> Result<Option<SlotToken>, PortError>;

    /// Gives the place back; releasing one already released or expired succeeds.
    async fn release(&self, token: &SlotToken) -> Result<(), PortError>;
}

/// A presigned upload request the client performs itself.
#[derive(Debug, Clone, PartialEq)]
pub struct PresignedPut {
    pub url: String,
    /// Headers the client must send exactly as given (they are signed).
    pub headers: Vec<(String, String)>,
    pub expires_at_ms: i64,
}

/// What the object store knows of an object without reading it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub size: u64,
    pub content_type: Option<String>,
    /// The version of the object's bytes (S3's ETag): reads with `if_match` get exactly these
    /// bytes or [`PortError::Changed`].
    pub etag: Option<String>,
}

/// Where images are kept.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The bucket's name (goes into job messages).
    fn bucket(&self) -> &str;

    /// A PUT URL bound to this key, content type and exact length, valid for `expires_in`.
    async fn presign_put(
        &self,
        key: &str,
        content_type: ContentType,
        content_length: u64,
        expires_in: Duration,
    ) -> Result<PresignedPut, PortError>;

    /// Stores `body` as the object, served with media type `content_type`.
    async fn put(&self, key: &str, content_type: &str, body: Bytes) -> Result<(), PortError>;

    /// Size and type of the object, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, PortError>;

    /// Up to `len` bytes of the object starting at byte `offset` (fewer at its end); with
    /// `if_match`, only from that version ([`PortError::Changed`] otherwise).
    async fn read_range(&self, key: &str, offset: u64, len: usize, if_match: Option<&str>) -> Result<Bytes, PortError>;

    /// The whole object; [`PortError::NotFound`] when missing; with `if_match`, only that
    /// version ([`PortError::Changed`] when the object was written again).
    async fn get(&self, key: &str, if_match: Option<&str>) -> Result<Bytes, PortError>;

    /// Deletes the object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<(), PortError>;

    /// A GET URL for the object, valid for `expires_in`, whose answer carries
    /// `Content-Disposition: disposition` (for an output too large to answer inline).
    async fn presign_get(&self, key: &str, expires_in: Duration, disposition: &str) -> Result<String, PortError>;
}

/// Where job messages wait for a worker.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Sends the message to the queue of its priority, grouped by its
    /// [`JobMessage::fairness_key`] where the queue supports it.
    async fn send(&self, message: &JobMessage) -> Result<(), PortError>;

    /// Sends several messages, each to the queue of its priority (batched where the queue
    /// allows). All or nothing from the caller's view: an error means some may be sent,
    /// and sending again is safe because consumers are idempotent.
    async fn send_batch(&self, messages: &[JobMessage]) -> Result<(), PortError> {
        for m in messages {
            self.send(m).await?;
        }
        Ok(())
    }

    /// Approximate number of messages still to do on the queue of this priority: visible, in
    /// flight (received, not yet deleted) and delayed.
    async fn depth(&self, priority: Priority) -> Result<u64, PortError>;
}
