//! The on-upload handler: an object landed under `uploads/`; check it and queue its job.
//!
//! S3 events can arrive more than once and in any order, so every step is
//! idempotent: the job's status in the store decides what is left to do.

use std::time::{Duration, Instant};

use aws_lambda_events::s3::S3Event;
use ocr_core::content::{TAIL_LEN, check_shape};
use ocr_core::job::parse_object_key;
use ocr_core::pdf;
use ocr_core::ports::{ObjectInfo, StatusChange};
use ocr_core::{ContentType, JobId, JobMessage, JobStatus, PortError, Priority};
use tracing::Instrument;

use crate::state::Ports;

/// What handling one object-created event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The job's message was sent to its priority queue.
    Enqueued(JobId),
    /// The upload was refused: job failed with this reason, object deleted.
    Rejected { job_id: JobId, reason: String },
    /// Nothing to do: a repeated event, an unknown job, or a key that is not an upload.
    Ignored(String),
}

/// Everything the handler needs; cheap to clone.
#[derive(Clone)]
pub struct UploadHandler {
    pub ports: Ports,
    pub max_upload_bytes: u64,
    /// Most pages a PDF may declare (`MAX_PAGES`).
    pub max_pages: u64,
}

/// One upload-events message as delivered (by Lambda's SQS trigger or the local poller).
#[derive(Debug, Clone)]
pub struct EventMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// SQS's ApproximateReceiveCount: this delivery is the n-th.
    pub receive_count: u32,
    /// SQS's SentTimestamp (epoch ms): when S3's event reached the queue.
    pub sent_ms: Option<i64>,
}

/// A message left for another delivery, to show again after `after` (its visibility is set to
/// that, so a failing event backs off instead of using its receives up at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryAgain {
    pub message_id: String,
    pub receipt_handle: String,
    pub after: Duration,
}

impl TryAgain {
    /// `after` as the visibility timeout to set, in seconds (SQS allows at most 12 hours).
    pub fn visibility_secs(&self) -> i32 {
        self.after.as_secs().min(43_200) as i32
    }
}

/// How long a failed upload event waits before its next delivery: `base` after the first
/// receive, doubling with each, at most `max` (`UPLOAD_RETRY_BASE_SECS`, `UPLOAD_RETRY_MAX_SECS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn after(&self, receive_count: u32) -> Duration {
        let doublings = receive_count.clamp(1, 20) - 1;
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }
}

/// Whether `e` means a service every event needs is away (the database, the job queues), so
/// that the events after it in the batch would fail the same way.
pub fn is_outage(e: &PortError) -> bool {
    matches!(e, PortError::Unavailable { service: "mysql" | "sqs", .. })
}

/// A message body that is not an S3 event notification.
#[derive(Debug, thiserror::Error)]
#[error("not an S3 event notification: {0}")]
pub struct NotAnEvent(String);

impl UploadHandler {
    /// Handles one upload-events message body (an S3 event notification, possibly
    /// with several records, or S3's test event). Returns one outcome per record;
    /// a retryable error means the whole message should be delivered again.
    pub async fn handle_message(&self, body: &str) -> Result<Vec<UploadOutcome>, PortError> {
        self.handle_event(body, None).await
    }

    /// [`UploadHandler::handle_message`] for a message SQS took at `sent_ms`.
    async fn handle_event(&self, body: &str, sent_ms: Option<i64>) -> Result<Vec<UploadOutcome>, PortError> {
        let keys = match object_created_keys(body) {
            Ok(keys) => keys,
            Err(e) => {
                // Retrying cannot make it parse; acknowledging is right.
                tracing::warn!(error = %e, "ignoring an upload-events message");
                return Ok(vec![UploadOutcome::Ignored(e.to_string())]);
            }
        };
        let mut outcomes = Vec::with_capacity(keys.len());
        for key in keys {
            outcomes.push(self.handle_object_sent(&key, sent_ms).await?);
        }
        Ok(outcomes)
    }

    /// Handles a batch of upload-events messages in order and returns those to deliver again.
    ///
    /// Each failure is reported alone (the rest of the batch is done), with a delay that grows
    /// with its receive count. Once one fails because the database or the job queue is away,
    /// the rest are not tried: they would each wait out the same timeouts, and on Lambda the
    /// invocation's timeout would then fail the whole batch. Nor is a message started when less
    /// than `reserve` is left before `deadline` (the invocation's end).
    pub async fn handle_batch(
        &self,
        messages: Vec<EventMessage>,
        backoff: Backoff,
        deadline: Option<Instant>,
        reserve: Duration,
    ) -> Vec<TryAgain> {
        let mut again = Vec::new();
        let mut away: Option<String> = None;
        for m in messages {
            let retry = TryAgain {
                message_id: m.message_id.clone(),
                receipt_handle: m.receipt_handle.clone(),
                after: backoff.after(m.receive_count),
            };
            let late = deadline.is_some_and(|d| d.saturating_duration_since(Instant::now()) < reserve);
            if away.is_some() || late {
                tracing::info!(
                    message_id = %m.message_id, job_ids = %job_ids_of(&m.body), after = ?retry.after, late,
                    "upload event left for later"
                );
                again.push(retry);
                continue;
            }
            if let Err(e) = self.handle_event(&m.body, m.sent_ms).await {
                tracing::warn!(
                    message_id = %m.message_id, job_ids = %job_ids_of(&m.body), error = %e, retryable = e.is_retryable(),
                    receive_count = m.receive_count, after = ?retry.after, "upload event failed"
                );
                if is_outage(&e) {
                    away = Some(e.to_string());
                }
                again.push(retry);
            }
        }
        again
    }

    /// Handles the object `key` having been created.
    pub async fn handle_object(&self, key: &str) -> Result<UploadOutcome, PortError> {
        self.handle_object_sent(key, None).await
    }

    /// [`UploadHandler::handle_object`], for an event SQS took at `sent_ms` (its line then says
    /// how long the event waited in the queue).
    async fn handle_object_sent(&self, key: &str, sent_ms: Option<i64>) -> Result<UploadOutcome, PortError> {
        let started_ms = self.ports.clock.now_ms();
        let Some((priority, id)) = parse_object_key(key) else {
            return Ok(UploadOutcome::Ignored(format!("not an upload key: {key}")));
        };
        let span = tracing::info_span!("upload", job_id = %id, %priority);
        // Instrumented, not entered: see routes::create.
        self.handle_upload(key, priority, id, (sent_ms, started_ms)).instrument(span).await
    }

    async fn handle_upload(
        &self,
        key: &str,
        priority: Priority,
        id: JobId,
        times: (Option<i64>, i64),
    ) -> Result<UploadOutcome, PortError> {
        let Some(job) = self.ports.store.get(&id).await? else {
            tracing::warn!("upload for an unknown job");
            return Ok(UploadOutcome::Ignored("unknown job".into()));
        };
        if job.priority != priority {
            return Ok(UploadOutcome::Ignored("key does not match the job's priority".into()));
        }
        match job.status {
            status if status.can_become(JobStatus::Queued) => {}
            // The message may not have reached the queue (a crash or a failed send
            // after the status changed): send it again; workers are idempotent.
            JobStatus::Queued if job.enqueued_at_ms.is_none() => {
                tracing::info!("job queued but its message not sent: sending it");
                let info = self.ports.objects.head(key).await?;
                let size = info.map_or(job.content_length, |i| i.size);
                return self.enqueue(&job, size, times).await;
            }
            JobStatus::Failed | JobStatus::Deleted => {
                // A failed or deleted job's image must not linger (deleting twice is harmless).
                self.ports.objects.delete(key).await?;
                return Ok(UploadOutcome::Ignored(format!("job is {}", job.status)));
            }
            status => return Ok(UploadOutcome::Ignored(format!("job is already {status}"))),
        }

        let Some(info) = self.ports.objects.head(key).await? else {
            return Ok(UploadOutcome::Ignored("object is gone".into()));
        };
        let refusal = match self.refusal(&job.content_type, job.content_length, key, &info).await {
            Ok(refusal) => refusal,
            // Deleted between the HEAD and the reads (the job's DELETE came in between, or the
            // expiry rule): nothing is left to check and no retry can bring it back, so the event
            // is acknowledged rather than left to land in the DLQ.
            Err(PortError::NotFound) => return Ok(UploadOutcome::Ignored("object is gone".into())),
            // Written again while it was checked (a second PUT): check the new bytes next time.
            Err(PortError::Changed) => {
                return Err(PortError::unavailable("s3", "the upload was replaced while it was checked"));
            }
            Err(e) => return Err(e),
        };
        if let Some(reason) = refusal {
            return self.reject(&job.id, job.status, key, reason).await;
        }
        // The worker reads exactly the version checked here: a later PUT fails the job.
        let change = StatusChange { at_ms: self.ports.clock.now_ms(), error: None, checked_etag: info.etag.clone() };
        let won = self.ports.store.set_status(&id, job.status, JobStatus::Queued, change).await?;
        if !won {
            return self.after_lost_race(&id).await;
        }
        self.enqueue(&job, info.size, times).await
    }

    /// The job left `from` between our read and our compare-and-set. Usually another handler
    /// of the same object won, and sends the message itself. But the winner may be this very
    /// event's earlier try: its UPDATE timed out on our side (a hung database, a cut connection)
    /// yet reached the server later, after the retry's read. Nobody would then send the message
    /// and, were this event acknowledged, nothing would ever come back to the job: it would stay
    /// `queued` forever. So while the job is queued and its message not yet sent, the event is
    /// kept: on its next delivery the message has been sent (by the winner: nothing to do) or
    /// not (the winner is gone: the `Queued` arm of `handle_upload` sends it).
    async fn after_lost_race(&self, id: &JobId) -> Result<UploadOutcome, PortError> {
        match self.ports.store.get(id).await? {
            Some(job) if job.status == JobStatus::Queued && job.enqueued_at_ms.is_none() => {
                tracing::info!("queued by another try whose message is not sent yet; checking again later");
                Err(PortError::unavailable("upload", "queued by another try whose message is not sent yet"))
            }
            Some(job) => {
                Ok(UploadOutcome::Ignored(format!("another handler took this upload (job is {})", job.status)))
            }
            None => Ok(UploadOutcome::Ignored("unknown job".into())),
        }
    }

    /// Why the object cannot be this job's image, if it cannot.
    async fn refusal(
        &self,
        declared: &ContentType,
        declared_len: u64,
        key: &str,
        info: &ObjectInfo,
    ) -> Result<Option<String>, PortError> {
        let (size, version) = (info.size, info.etag.as_deref());
        if size > self.max_upload_bytes {
            return Ok(Some(format!("the upload is {size} bytes, over the limit of {}", self.max_upload_bytes)));
        }
        if size != declared_len {
            return Ok(Some(format!("the upload is {size} bytes, but {declared_len} were declared")));
        }
        let head = self.ports.objects.read_range(key, 0, ContentType::SNIFF_LEN, version).await?;
        let tail_start = size.saturating_sub(TAIL_LEN as u64);
        let tail = self.ports.objects.read_range(key, tail_start, TAIL_LEN, version).await?;
        if let Err(e) = check_shape(*declared, size, &head, &tail) {
            return Ok(Some(e.to_string()));
        }
        if *declared != ContentType::Pdf {
            return Ok(None);
        }
        // The PDF's structure, read in a few ranges: its page count and its encryption (which
        // may be named in a cross-reference stream far from the tail).
        let read = |offset, len| self.ports.objects.read_range(key, offset, len, version);
        Ok(match pdf::read_facts(size, &tail, read).await? {
            Ok(facts) if facts.pages > self.max_pages => {
                Some(format!("the PDF has {} pages, over the limit of {}", facts.pages, self.max_pages))
            }
            Ok(facts) => {
                tracing::info!(pages = facts.pages, "PDF checked");
                None
            }
            Err(e) => Some(e.to_string()),
        })
    }

    async fn reject(&self, id: &JobId, from: JobStatus, key: &str, reason: String) -> Result<UploadOutcome, PortError> {
        let change =
            StatusChange { at_ms: self.ports.clock.now_ms(), error: Some(reason.clone()), ..Default::default() };
        // Failed first, then the object: a crash in between leaves a failed job whose
        // repeated event deletes the object (see the Failed arm above).
        let won = self.ports.store.set_status(id, from, JobStatus::Failed, change).await?;
        self.ports.objects.delete(key).await?;
        if !won {
            // Queued meanwhile by a check of an earlier version (see after_lost_race): the
            // worker then fails the job, its image being gone.
            return self.after_lost_race(id).await;
        }
        tracing::warn!(%reason, "upload rejected");
        Ok(UploadOutcome::Rejected { job_id: *id, reason })
    }

    /// `times`: when SQS took the event, if known, and when handling it began (the line gives
    /// both to scripts/bench.sh latency).
    async fn enqueue(
        &self,
        job: &ocr_core::Job,
        size: u64,
        (sent_ms, started_ms): (Option<i64>, i64),
    ) -> Result<UploadOutcome, PortError> {
        let now = self.ports.clock.now_ms();
        let message = JobMessage::for_job(job, self.ports.objects.bucket(), size, now);
        self.ports.queue.send(&message).await?;
        self.ports.store.mark_enqueued(&job.id, now).await?;
        tracing::info!(size, event_sent_ms = sent_ms.unwrap_or(0), started_ms, queued_ms = now, "job queued");
        Ok(UploadOutcome::Enqueued(job.id))
    }
}

/// Object keys of the ObjectCreated records in an S3 event notification body.
/// S3's test event (sent when notifications are configured) has no records.
pub fn object_created_keys(body: &str) -> Result<Vec<String>, NotAnEvent> {
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| NotAnEvent(e.to_string()))?;
    if value.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    let event: S3Event = serde_json::from_value(value).map_err(|e| NotAnEvent(e.to_string()))?;
    Ok(event
        .records
        .into_iter()
        .filter(|r| r.event_name.as_deref().is_some_and(|n| n.starts_with("ObjectCreated")))
        .filter_map(|r| r.s3.object.key)
        .map(|k| decode_key(&k))
        .collect())
}

/// The jobs an upload-events message is about, comma-separated, for its log lines (an event
/// that fails is logged outside any job's span).
pub fn job_ids_of(body: &str) -> String {
    let keys = object_created_keys(body).unwrap_or_default();
    let ids: Vec<String> = keys.iter().filter_map(|k| parse_object_key(k)).map(|(_, id)| id.to_string()).collect();
    ids.join(",")
}

/// S3 event keys are URL-encoded with `+` for spaces.
fn decode_key(key: &str) -> String {
    let plus_decoded = key.replace('+', " ");
    url::form_urlencoded::parse(format!("k={}", plus_decoded.replace('&', "%26")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or(plus_decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_receive_up_to_its_cap() {
        let b = Backoff { base: Duration::from_secs(30), max: Duration::from_secs(900) };
        let secs: Vec<u64> = (1..=7).map(|n| b.after(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 900, 900]);
        assert_eq!(b.after(0), Duration::from_secs(30));
        assert_eq!(b.after(u32::MAX), Duration::from_secs(900));
        // Six receives (the queue's maxReceiveCount) span half an hour before the DLQ.
        assert_eq!((1..=6).map(|n| b.after(n).as_secs()).sum::<u64>(), 1830);
    }

    #[test]
    fn reads_keys_from_events() {
        let body = r#"{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","awsRegion":"us-east-1",
            "eventTime":"2026-01-01T00:00:00.000Z","eventName":"ObjectCreated:Put",
            "userIdentity":{"principalId":"x"},"requestParameters":{"sourceIPAddress":"127.0.0.1"},
            "responseElements":{},"s3":{"s3SchemaVersion":"1.0","configurationId":"c",
            "bucket":{"name":"b","ownerIdentity":{"principalId":"x"},"arn":"arn:aws:s3:::b"},
            "object":{"key":"uploads/bulk/a%20b+c","size":3,"eTag":"e","sequencer":"1"}}}]}"#;
        assert_eq!(object_created_keys(body).unwrap(), vec!["uploads/bulk/a b c".to_string()]);
        let test_event =
            r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"t","Bucket":"b","RequestId":"r","HostId":"h"}"#;
        assert!(object_created_keys(test_event).unwrap().is_empty());
        assert!(object_created_keys("nonsense").is_err());
    }
}
