//! Jobs and their life cycle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::content::ContentType;
use crate::error::TransitionError;
use crate::id::JobId;

/// Which queue a job waits on. Express is served first; bulk is never starved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Express,
    #[default]
    Bulk,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Express, Priority::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Express => "express",
            Priority::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "express" => Ok(Priority::Express),
            "bulk" => Ok(Priority::Bulk),
            other => Err(format!("unknown priority {other:?}: expected express or bulk")),
        }
    }
}

/// Where a job is in its life.
///
/// ```text
/// awaiting_upload ─▶ queued ─▶ processing ─▶ succeeded
///        │             │           │  ▲
///        │             │           └──┘ (redelivered after a crash)
///        ├─▶ expired ─┐└───────────┴──▶ failed
///        └─▶ failed (bad upload)   expired ─▶ queued | failed: an upload made in time whose
///                                  event arrived after the job was shown as expired
/// any ─▶ deleted (by its owner)
/// failed ─▶ queued: only by an operator redriving its dead-lettered message ([`JobStatus::REDRIVE`])
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    AwaitingUpload,
    Queued,
    Processing,
    Succeeded,
    Failed,
    /// No upload arrived within the upload URL's lifetime.
    Expired,
    /// The owner deleted the job; its image and result are gone.
    Deleted,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::AwaitingUpload => "awaiting_upload",
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Expired => "expired",
            JobStatus::Deleted => "deleted",
        }
    }

    /// Succeeded, failed, expired and deleted jobs never change again
    /// (except that an ended job may still be deleted).
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Expired | JobStatus::Deleted)
    }

    /// The one change only an operator makes: a failed job whose dead-lettered message is
    /// redriven goes back to `queued` with its attempts reset (`gpu-worker dlq redrive
    /// --reset-jobs`). Not part of [`JobStatus::can_become`], so no handler ever does it.
    pub const REDRIVE: (JobStatus, JobStatus) = (JobStatus::Failed, JobStatus::Queued);

    pub const ALL: [JobStatus; 7] = [
        JobStatus::AwaitingUpload,
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Expired,
        JobStatus::Deleted,
    ];

    /// Whether the life cycle allows going from `self` to `to`. This is the one definition of
    /// the life cycle: the stores' compare-and-set statements take their `WHERE status IN (…)`
    /// from [`JobStatus::sources`], and the in-memory fakes check it the same way.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        match (self, to) {
            (Deleted, _) => false,
            (_, Deleted) => true,
            (AwaitingUpload, Queued | Failed | Expired) => true,
            // S3 refuses a PUT after the URL expired, so an object that exists was uploaded
            // in time: its late event still queues it.
            (Expired, Queued | Failed) => true,
            (Queued, Processing | Failed) => true,
            // A worker that died leaves the job processing; the next one takes it again.
            (Processing, Processing | Succeeded | Failed) => true,
            _ => false,
        }
    }

    /// Every status that may become `to`, in declaration order.
    pub fn sources(to: JobStatus) -> impl Iterator<Item = JobStatus> {
        JobStatus::ALL.into_iter().filter(move |s| s.can_become(to))
    }

    /// `Ok(to)` when allowed, else a [`TransitionError`].
    pub fn transition(self, to: JobStatus) -> Result<JobStatus, TransitionError> {
        if self.can_become(to) { Ok(to) } else { Err(TransitionError { from: self, to }) }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use JobStatus::*;
        Ok(match s {
            "awaiting_upload" => AwaitingUpload,
            "queued" => Queued,
            "processing" => Processing,
            "succeeded" => Succeeded,
            "failed" => Failed,
            "expired" => Expired,
            "deleted" => Deleted,
            other => return Err(format!("unknown job status {other:?}")),
        })
    }
}

/// What the API knows when it creates a job.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    /// The caller's identity (JWT `sub`, or the local token's caller name).
    pub owner: String,
    pub priority: Priority,
    pub content_type: ContentType,
    /// Bytes the caller declared; the upload must match it exactly.
    pub content_length: u64,
    pub callback_url: Option<String>,
    /// Free-form JSON object the caller attached, returned as is.
    pub metadata: Option<serde_json::Value>,
    /// `Idempotency-Key` header and the SHA-256 of the request it came with.
    pub idempotency: Option<Idempotency>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

impl NewJob {
    /// A job with a fresh id and nothing optional (no callback, metadata or idempotency key).
    pub fn plain(
        owner: &str,
        priority: Priority,
        content_type: ContentType,
        content_length: u64,
        created_at_ms: i64,
    ) -> Self {
        NewJob {
            id: JobId::new(),
            owner: owner.to_owned(),
            priority,
            content_type,
            content_length,
            callback_url: None,
            metadata: None,
            idempotency: None,
            created_at_ms,
        }
    }
}

/// An idempotency key and the hash of the request body it was first used with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

/// A job as stored. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub owner: String,
    pub status: JobStatus,
    pub priority: Priority,
    pub content_type: ContentType,
    pub content_length: u64,
    pub callback_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub idempotency: Option<Idempotency>,
    /// Deliveries of the job to a worker so far.
    pub attempts: u32,
    /// Why the job failed, when it did.
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub queued_at_ms: Option<i64>,
    /// When the job message was sent to its queue (set once the send succeeded).
    pub enqueued_at_ms: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

impl Job {
    /// The job as it is right after creation.
    pub fn from_new(new: NewJob) -> Self {
        Job {
            id: new.id,
            owner: new.owner,
            status: JobStatus::AwaitingUpload,
            priority: new.priority,
            content_type: new.content_type,
            content_length: new.content_length,
            callback_url: new.callback_url,
            metadata: new.metadata,
            idempotency: new.idempotency,
            attempts: 0,
            error: None,
            created_at_ms: new.created_at_ms,
            updated_at_ms: new.created_at_ms,
            queued_at_ms: None,
            enqueued_at_ms: None,
            started_at_ms: None,
            finished_at_ms: None,
        }
    }

    /// The S3 key the image lives under: `uploads/{priority}/{job_id}`.
    pub fn object_key(&self) -> String {
        object_key(self.priority, &self.id)
    }
}

/// Prefix under which uploads land; the bucket's event notification filters on it.
pub const UPLOAD_PREFIX: &str = "uploads/";

/// Prefix under which outputs too large to answer inline wait for their caller (the bucket's
/// lifecycle removes them after a day; deleting the job removes them at once).
pub const OUTPUT_PREFIX: &str = "outputs/";

/// `outputs/{job_id}.{extension}`: the job's output in one format.
pub fn output_key(id: &JobId, extension: &str) -> String {
    format!("{OUTPUT_PREFIX}{id}.{extension}")
}

/// `uploads/{priority}/{job_id}`.
pub fn object_key(priority: Priority, id: &JobId) -> String {
    format!("{UPLOAD_PREFIX}{priority}/{id}")
}

/// The job id and priority named by an upload key, or `None` for any other key.
pub fn parse_object_key(key: &str) -> Option<(Priority, JobId)> {
    let rest = key.strip_prefix(UPLOAD_PREFIX)?;
    let (priority, id) = rest.split_once('/')?;
    Some((priority.parse().ok()?, id.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    #[test]
    fn allowed_transitions() {
        let allowed = [
            (AwaitingUpload, Queued),
            (AwaitingUpload, Failed),
            (AwaitingUpload, Expired),
            (Queued, Processing),
            (Queued, Failed),
            (Processing, Succeeded),
            (Processing, Failed),
            (Processing, Processing),
            (Succeeded, Deleted),
            (Failed, Deleted),
            (AwaitingUpload, Deleted),
        ];
        for (from, to) in allowed {
            assert!(from.can_become(to), "{from} -> {to}");
        }
        let refused = [
            (Succeeded, Processing),
            (Queued, Succeeded),
            (Succeeded, Failed),
            (Failed, Queued),
            (Queued, AwaitingUpload),
            (Expired, Processing),
            (Deleted, Deleted),
            (Deleted, Queued),
            (AwaitingUpload, Succeeded),
        ];
        for (from, to) in refused {
            assert_eq!(from.transition(to), Err(TransitionError { from, to }));
        }
    }

    #[test]
    fn sources_are_what_the_stores_compare_against() {
        let names = |to| JobStatus::sources(to).map(JobStatus::as_str).collect::<Vec<_>>();
        assert_eq!(names(Processing), ["queued", "processing"]);
        assert_eq!(names(Succeeded), ["processing"]);
        assert_eq!(names(Queued), ["awaiting_upload", "expired"]);
        assert_eq!(names(Failed), ["awaiting_upload", "queued", "processing", "expired"]);
        assert_eq!(names(Deleted).len(), 6);
    }

    #[test]
    fn status_and_priority_spellings_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
        }
        assert!("urgent".parse::<Priority>().is_err());
    }

    #[test]
    fn object_keys() {
        let id = JobId::new();
        let key = object_key(Priority::Express, &id);
        assert_eq!(key, format!("uploads/express/{id}"));
        assert_eq!(parse_object_key(&key), Some((Priority::Express, id)));
        assert_eq!(parse_object_key("uploads/express/nope"), None);
        assert_eq!(parse_object_key(&format!("other/express/{id}")), None);
        assert_eq!(parse_object_key(&format!("uploads/urgent/{id}")), None);
    }
}
