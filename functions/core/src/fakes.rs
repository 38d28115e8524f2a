//! In-memory implementations of every port, for unit tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::content::ContentType;
use crate::error::PortError;
use crate::id::JobId;
use crate::job::{Job, JobStatus, NewJob, Priority};
use crate::message::JobMessage;
use crate::ports::{
    Clock, JobQueue, JobStatuses, JobStore, ObjectInfo, ObjectStore, PresignedPut, SlotToken, StatusChange, WaitSlots,
};
use crate::quota::{Admission, CallerQuota, TokenBucket};
use crate::result::OcrResult;
use crate::signing::{KeyState, WebhookKeys};
use crate::worker::{DeadLetters, Delivery, JobSource, OwedNotification, Purged, ResultStore, TakenJob, WebhookRecord};

/// A clock that moves only when told.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self(AtomicI64::new(now_ms))
    }
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Jobs and results in a map.
#[derive(Debug, Default)]
pub struct InMemoryJobStore {
    jobs: Mutex<HashMap<JobId, Job>>,
    results: Mutex<HashMap<JobId, OcrResult>>,
    webhooks: Mutex<Vec<WebhookRecord>>,
    /// Jobs that owe a webhook, and since when (the outbox).
    /// Per job: owed since (the sweep's clock) and first owed (the retry window's).
    owed: Mutex<HashMap<JobId, (i64, i64)>>,
    /// The image version each queued job's check passed.
    checked: Mutex<HashMap<JobId, String>>,
    /// Webhook key generations per caller.
    keys: Mutex<HashMap<String, KeyState>>,
    /// Jobs past retention whose payload the purge removed.
    stripped: Mutex<std::collections::HashSet<JobId>>,
    /// Each caller's creation budget (`caller_quotas` in MySQL).
    buckets: Mutex<HashMap<String, TokenBucket>>,
    /// When an operator last redrove each job (`redriven_at_ms`).
    redriven: Mutex<HashMap<JobId, i64>>,
    /// While set, reads fail as they do while the database is away ([`Self::set_down`]).
    down: std::sync::atomic::AtomicBool,
    /// Reads made (also those that failed).
    reads: AtomicI64,
    /// Batched status reads made ([`JobStatuses::statuses`]), also those that failed.
    status_reads: AtomicI64,
}

#[async_trait]
impl WebhookKeys for InMemoryJobStore {
    async fn key_state(&self, owner: &str) -> Result<KeyState, PortError> {
        Ok(self.keys.lock().unwrap().get(owner).copied().unwrap_or_default())
    }

    async fn rotate_key(&self, owner: &str, overlap: Duration, now_ms: i64) -> Result<KeyState, PortError> {
        let mut keys = self.keys.lock().unwrap();
        let state = keys.entry(owner.to_owned()).or_default();
        *state =
            KeyState { generation: state.generation + 1, previous_until_ms: Some(now_ms + overlap.as_millis() as i64) };
        Ok(*state)
    }
}

impl InMemoryJobStore {
    pub fn len(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn all(&self) -> Vec<Job> {
        self.jobs.lock().unwrap().values().cloned().collect()
    }
    pub fn put_result(&self, id: JobId, result: OcrResult) {
        self.results.lock().unwrap().insert(id, result);
    }

    fn insert_now(&self, new: NewJob) -> Result<Job, PortError> {
        let mut jobs = self.jobs.lock().unwrap();
        if let Some(idem) = &new.idempotency {
            let taken = jobs
                .values()
                .any(|j| j.owner == new.owner && j.idempotency.as_ref().is_some_and(|i| i.key == idem.key));
            if taken {
                return Err(PortError::Conflict("idempotency key already used".into()));
            }
        }
        if jobs.contains_key(&new.id) {
            return Err(PortError::Conflict("job id already used".into()));
        }
        let job = Job::from_new(new);
        jobs.insert(job.id, job.clone());
        Ok(job)
    }
}

#[async_trait]
impl JobStore for InMemoryJobStore {
    async fn insert(&self, new: NewJob) -> Result<Job, PortError> {
        self.insert_now(new)
    }

    async fn insert_within(&self, new: NewJob, quota: &CallerQuota) -> Result<Admission, PortError> {
        // One lock over the count, the bucket and the insert, as the MySQL store's row lock.
        let mut buckets = self.buckets.lock().unwrap();
        let now = new.created_at_ms;
        let waiting = self.all().iter().filter(|j| j.owner == new.owner && quota.holds_a_place(j, now)).count();
        if let Err(refusal) = quota.check_waiting(waiting as u64) {
            return Ok(Admission::Refused(refusal));
        }
        let bucket = match quota.take(buckets.get(&new.owner).copied(), now) {
            Ok(bucket) => bucket,
            Err(refusal) => return Ok(Admission::Refused(refusal)),
        };
        let owner = new.owner.clone();
        let job = self.insert_now(new)?;
        buckets.insert(owner, bucket);
        Ok(Admission::Admitted(Box::new(job)))
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, PortError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("mysql", "injected: the database is away"));
        }
        Ok(self.jobs.lock().unwrap().get(id).cloned())
    }

    async fn find_by_idempotency_key(&self, owner: &str, key: &str) -> Result<Option<Job>, PortError> {
        let jobs = self.jobs.lock().unwrap();
        Ok(jobs.values().find(|j| j.owner == owner && j.idempotency.as_ref().is_some_and(|i| i.key == key)).cloned())
    }

    async fn remove(&self, id: &JobId) -> Result<(), PortError> {
        self.jobs.lock().unwrap().remove(id);
        Ok(())
    }

    async fn set_status(
        &self,
        id: &JobId,
        from: JobStatus,
        to: JobStatus,
        change: StatusChange,
    ) -> Result<bool, PortError> {
        from.transition(to)?;
        let mut jobs = self.jobs.lock().unwrap();
        let Some(job) = jobs.get_mut(id) else { return Ok(false) };
        if job.status != from {
            return Ok(false);
        }
        job.status = to;
        job.updated_at_ms = change.at_ms;
        if let Some(etag) = change.checked_etag {
            self.checked.lock().unwrap().insert(*id, etag);
        }
        match to {
            JobStatus::Queued => job.queued_at_ms = Some(change.at_ms),
            JobStatus::Processing => {
                job.started_at_ms = Some(change.at_ms);
                job.attempts += 1;
            }
            JobStatus::Failed => {
                job.finished_at_ms = Some(change.at_ms);
                // As in MySQL: a job failed outside a worker still owes its webhook.
                if job.callback_url.is_some() {
                    self.owed.lock().unwrap().insert(*id, (change.at_ms, change.at_ms));
                }
            }
            JobStatus::Succeeded | JobStatus::Expired => job.finished_at_ms = Some(change.at_ms),
            _ => {}
        }
        if change.error.is_some() {
            job.error = change.error;
        }
        Ok(true)
    }

    async fn mark_enqueued(&self, id: &JobId, at_ms: i64) -> Result<(), PortError> {
        if let Some(job) = self.jobs.lock().unwrap().get_mut(id) {
            job.enqueued_at_ms = Some(at_ms);
        }
        Ok(())
    }

    async fn get_result(&self, id: &JobId) -> Result<Option<OcrResult>, PortError> {
        Ok(self.results.lock().unwrap().get(id).cloned())
    }

    async fn mark_deleted(&self, id: &JobId, at_ms: i64) -> Result<(), PortError> {
        if let Some(job) = self.jobs.lock().unwrap().get_mut(id).filter(|j| j.status.can_become(JobStatus::Deleted)) {
            job.status = JobStatus::Deleted;
            job.updated_at_ms = at_ms;
        }
        self.results.lock().unwrap().remove(id);
        Ok(())
    }
}

#[async_trait]
impl JobStatuses for InMemoryJobStore {
    /// Counted apart from `get` ([`InMemoryJobStore::status_reads`]); fails while the store is down.
    async fn statuses(&self, ids: &[JobId]) -> Result<Vec<(JobId, JobStatus)>, PortError> {
        self.status_reads.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("mysql", "injected: the database is away"));
        }
        let jobs = self.jobs.lock().unwrap();
        Ok(ids.iter().filter_map(|id| jobs.get(id).map(|j| (*id, j.status))).collect())
    }
}

/// Waiting places in a map, with both caps and expiry as in MySQL (`job_waits`); can be told
/// to fail like a database that is away.
#[derive(Debug, Default)]
pub struct InMemoryWaitSlots {
    /// Token -> (caller, job, expires at).
    held: Mutex<HashMap<SlotToken, (String, JobId, i64)>>,
    down: AtomicBool,
    /// Calls of [`WaitSlots::acquire`] (also those refused or failed).
    acquires: AtomicI64,
    /// Calls of [`WaitSlots::release`].
    releases: AtomicI64,
}

impl InMemoryWaitSlots {
    /// Places held at `now_ms` (not expired), by anyone.
    pub fn held(&self, now_ms: i64) -> usize {
        self.held.lock().unwrap().values().filter(|(_, _, until)| *until > now_ms).count()
    }

    /// Places `caller` holds at `now_ms`.
    pub fn held_by(&self, caller: &str, now_ms: i64) -> usize {
        self.held.lock().unwrap().values().filter(|(c, _, until)| c == caller && *until > now_ms).count()
    }

    /// While set, both calls fail as they do while the database is away.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn acquires(&self) -> i64 {
        self.acquires.load(Ordering::SeqCst)
    }

    pub fn releases(&self) -> i64 {
        self.releases.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), PortError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(PortError::unavailable("mysql", "injected: the database is away"));
        }
        Ok(())
    }
}

#[async_trait]
impl WaitSlots for InMemoryWaitSlots {
    async fn acquire(
        &self,
        caller: &str,
        job: JobId,
        until_ms: i64,
        now_ms: i64,
        max_total: u32,
        max_per_caller: u32,
    ) -> Result<Option<SlotToken>, PortError> {
        self.acquires.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        // One lock over the counts and the insert, as the MySQL gate row.
        let mut held = self.held.lock().unwrap();
        held.retain(|_, (_, _, until)| *until > now_ms);
        let total = held.len();
        let mine = held.values().filter(|(c, _, _)| c == caller).count();
        if total >= max_total as usize || mine >= max_per_caller as usize {
            return Ok(None);
        }
        let token = SlotToken::new();
        held.insert(token.clone(), (caller.to_owned(), job, until_ms));
        Ok(Some(token))
    }

    async fn release(&self, token: &SlotToken) -> Result<(), PortError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.held.lock().unwrap().remove(token);
        Ok(())
    }
}

/// Objects in a map; can be told to fail like an unreachable S3.
#[derive(Debug)]
pub struct InMemoryObjectStore {
    bucket: String,
    objects: Mutex<HashMap<String, (String, Bytes)>>,
    failing: AtomicBool,
}

impl Default for InMemoryObjectStore {
    fn default() -> Self {
        Self { bucket: "test-bucket".into(), objects: Mutex::default(), failing: AtomicBool::new(false) }
    }
}

impl InMemoryObjectStore {
    /// While set, every call fails as [`PortError::Unavailable`].
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
    pub fn contains(&self, key: &str) -> bool {
        self.objects.lock().unwrap().contains_key(key)
    }
    /// Stores an object as if a client had uploaded it.
    pub fn insert(&self, key: &str, content_type: ContentType, body: impl Into<Bytes>) {
        self.objects.lock().unwrap().insert(key.to_owned(), (content_type.as_str().to_owned(), body.into()));
    }
    fn check(&self) -> Result<(), PortError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(PortError::unavailable("object store", "injected failure"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ObjectStore for InMemoryObjectStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn presign_put(
        &self,
        key: &str,
        content_type: ContentType,
        content_length: u64,
        expires_in: Duration,
    ) -> Result<PresignedPut, PortError> {
        self.check()?;
        Ok(PresignedPut {
            url: format!("memory://{}/{key}?expires={}", self.bucket, expires_in.as_secs()),
            headers: vec![
                ("content-type".into(), content_type.as_str().into()),
                ("content-length".into(), content_length.to_string()),
            ],
            expires_at_ms: expires_in.as_millis() as i64,
        })
    }

    async fn put(&self, key: &str, content_type: &str, body: Bytes) -> Result<(), PortError> {
        self.check()?;
        self.objects.lock().unwrap().insert(key.to_owned(), (content_type.to_owned(), body));
        Ok(())
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, PortError> {
        self.check()?;
        Ok(self.objects.lock().unwrap().get(key).map(|(ct, body)| ObjectInfo {
            size: body.len() as u64,
            content_type: Some(ct.clone()),
            etag: Some(etag(body)),
        }))
    }

    async fn read_range(&self, key: &str, offset: u64, len: usize, if_match: Option<&str>) -> Result<Bytes, PortError> {
        let body = self.get(key, if_match).await?;
        let start = (offset as usize).min(body.len());
        Ok(body.slice(start..(start + len).min(body.len())))
    }

    async fn get(&self, key: &str, if_match: Option<&str>) -> Result<Bytes, PortError> {
        self.check()?;
        let body = self.objects.lock().unwrap().get(key).map(|(_, b)| b.clone()).ok_or(PortError::NotFound)?;
        match if_match {
            Some(want) if want != etag(&body) => Err(PortError::Changed),
            _ => Ok(body),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), PortError> {
        self.check()?;
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    async fn presign_get(&self, key: &str, expires_in: Duration, _disposition: &str) -> Result<String, PortError> {
        self.check()?;
        Ok(format!("memory://{}/{key}?expires={}", self.bucket, expires_in.as_secs()))
    }
}

/// A version tag of an object's bytes (S3 uses their MD5 for a single PUT; a digest will do).
fn etag(body: &[u8]) -> String {
    use sha2::Digest;
    format!("\"{}\"", hex::encode(&sha2::Sha256::digest(body)[..16]))
}

/// Two queues as vectors; the reported depth can be forced for backpressure tests.
#[derive(Debug, Default)]
pub struct InMemoryJobQueue {
    messages: Mutex<HashMap<Priority, Vec<JobMessage>>>,
    forced_depth: Mutex<HashMap<Priority, u64>>,
}

impl InMemoryJobQueue {
    pub fn messages(&self, priority: Priority) -> Vec<JobMessage> {
        self.messages.lock().unwrap().get(&priority).cloned().unwrap_or_default()
    }
    /// Makes [`JobQueue::depth`] report `depth` for this priority.
    pub fn force_depth(&self, priority: Priority, depth: u64) {
        self.forced_depth.lock().unwrap().insert(priority, depth);
    }
}

#[async_trait]
impl JobQueue for InMemoryJobQueue {
    async fn send(&self, message: &JobMessage) -> Result<(), PortError> {
        self.messages.lock().unwrap().entry(message.priority).or_default().push(message.clone());
        Ok(())
    }

    async fn depth(&self, priority: Priority) -> Result<u64, PortError> {
        if let Some(d) = self.forced_depth.lock().unwrap().get(&priority) {
            return Ok(*d);
        }
        Ok(self.messages(priority).len() as u64)
    }
}

#[async_trait]
impl ResultStore for InMemoryJobStore {
    async fn take(&self, ids: &[JobId], at_ms: i64) -> Result<Vec<TakenJob>, PortError> {
        let mut jobs = self.jobs.lock().unwrap();
        let mut taken = Vec::new();
        for id in ids {
            let Some(job) = jobs.get_mut(id) else { continue };
            taken.push(TakenJob {
                id: job.id,
                owner: job.owner.clone(),
                status: job.status,
                callback_url: job.callback_url.clone(),
                queued_at_ms: job.queued_at_ms,
                checked_etag: self.checked.lock().unwrap().get(id).cloned(),
            });
            if job.status.can_become(JobStatus::Processing) {
                job.status = JobStatus::Processing;
                job.attempts += 1;
                job.started_at_ms = Some(at_ms);
                job.updated_at_ms = at_ms;
            }
        }
        Ok(taken)
    }

    async fn complete(&self, results: &[(JobId, OcrResult)], at_ms: i64) -> Result<Vec<JobId>, PortError> {
        let mut jobs = self.jobs.lock().unwrap();
        let mut stored = self.results.lock().unwrap();
        let mut written = Vec::new();
        for (id, result) in results {
            let Some(job) = jobs.get_mut(id) else { continue };
            if !job.status.can_become(JobStatus::Succeeded) {
                continue;
            }
            stored.entry(*id).or_insert_with(|| result.clone());
            job.status = JobStatus::Succeeded;
            job.finished_at_ms = Some(at_ms);
            job.error = None;
            if job.callback_url.is_some() {
                self.owed.lock().unwrap().insert(*id, (at_ms, at_ms));
            }
            written.push(*id);
        }
        Ok(written)
    }

    async fn fail(&self, id: &JobId, reason: &str, at_ms: i64) -> Result<bool, PortError> {
        let mut jobs = self.jobs.lock().unwrap();
        let Some(job) = jobs.get_mut(id) else { return Ok(false) };
        if !job.status.can_become(JobStatus::Failed) {
            return Ok(false);
        }
        job.status = JobStatus::Failed;
        job.error = Some(reason.to_owned());
        job.finished_at_ms = Some(at_ms);
        if job.callback_url.is_some() {
            self.owed.lock().unwrap().insert(*id, (at_ms, at_ms));
        }
        Ok(true)
    }

    async fn give_up(&self, id: &JobId, reason: &str, at_ms: i64) -> Result<bool, PortError> {
        let redriven = self.redriven.lock().unwrap().get(id).copied();
        let just_redriven = self.jobs.lock().unwrap().get(id).is_some_and(|j| {
            j.status == JobStatus::Queued
                && j.attempts == 0
                && redriven.is_some_and(|t| t >= at_ms - crate::worker::REDRIVE_GRACE_MS)
        });
        if just_redriven {
            return Ok(false);
        }
        let last = self.jobs.lock().unwrap().get(id).and_then(|j| j.error.clone()).filter(|e| !e.is_empty());
        let reason = match last {
            Some(last) => format!("{last}; {reason}"),
            None => reason.to_owned(),
        };
        self.fail(id, &reason, at_ms).await
    }

    async fn note_attempt_error(&self, id: &JobId, reason: &str, _at_ms: i64) -> Result<(), PortError> {
        // Only while the job is still being worked on (it may be taken again).
        if let Some(job) = self.jobs.lock().unwrap().get_mut(id).filter(|j| j.status.can_become(JobStatus::Processing))
        {
            job.error = Some(reason.to_owned());
        }
        Ok(())
    }

    async fn record_webhook(&self, record: &WebhookRecord) -> Result<(), PortError> {
        self.webhooks.lock().unwrap().push(record.clone());
        self.owed.lock().unwrap().remove(&record.job_id);
        Ok(())
    }

    async fn purge(
        &self,
        strip_before_ms: i64,
        delete_before_ms: i64,
        max: usize,
        at_ms: i64,
    ) -> Result<Purged, PortError> {
        let mut jobs = self.jobs.lock().unwrap();
        let mut purged = Purged::default();
        // Oldest first, as MySQL's batches go.
        let mut strip: Vec<(i64, JobId)> = jobs
            .values()
            .filter(|j| j.created_at_ms < strip_before_ms && !self.stripped.lock().unwrap().contains(&j.id))
            .map(|j| (j.created_at_ms, j.id))
            .collect();
        strip.sort();
        for (_, id) in strip.into_iter().take(max) {
            let job = jobs.get_mut(&id).expect("listed");
            (job.metadata, job.callback_url, job.updated_at_ms) = (None, None, at_ms);
            self.results.lock().unwrap().remove(&id);
            self.owed.lock().unwrap().remove(&id);
            self.webhooks.lock().unwrap().retain(|w| w.job_id != id);
            self.stripped.lock().unwrap().insert(id);
            purged.stripped += 1;
        }
        let mut delete: Vec<(i64, JobId)> = jobs
            .values()
            .filter(|j| j.created_at_ms < delete_before_ms && self.stripped.lock().unwrap().contains(&j.id))
            .map(|j| (j.created_at_ms, j.id))
            .collect();
        delete.sort();
        for (_, id) in delete.into_iter().take(max) {
            jobs.remove(&id);
            purged.deleted += 1;
        }
        Ok(purged)
    }

    async fn defer_webhook(&self, record: &WebhookRecord, owed_since_ms: i64) -> Result<(), PortError> {
        self.webhooks.lock().unwrap().push(record.clone());
        if let Some((since, _)) = self.owed.lock().unwrap().get_mut(&record.job_id) {
            *since = owed_since_ms;
        }
        Ok(())
    }

    async fn claim_notifications(
        &self,
        owed_before_ms: i64,
        now_ms: i64,
        max: usize,
    ) -> Result<Vec<OwedNotification>, PortError> {
        let jobs = self.jobs.lock().unwrap();
        let mut owed = self.owed.lock().unwrap();
        let mut due: Vec<(i64, JobId)> = owed
            .iter()
            .filter(|(_, (since, _))| *since <= owed_before_ms)
            .map(|(id, (since, _))| (*since, *id))
            .collect();
        due.sort();
        let mut claimed = Vec::new();
        for (_, id) in due.into_iter().take(max) {
            let Some(job) = jobs.get(&id) else { continue };
            let Some(url) = &job.callback_url else { continue };
            let first = owed.get(&id).map_or(now_ms, |(_, first)| *first);
            owed.insert(id, (now_ms, first));
            claimed.push(OwedNotification {
                job_id: id,
                owner: job.owner.clone(),
                status: job.status,
                callback_url: url.clone(),
                first_owed_ms: first,
            });
        }
        Ok(claimed)
    }
}

impl InMemoryJobStore {
    pub fn webhooks(&self) -> Vec<WebhookRecord> {
        self.webhooks.lock().unwrap().clone()
    }
    /// Jobs that still owe a webhook.
    pub fn owed_notifications(&self) -> Vec<JobId> {
        self.owed.lock().unwrap().keys().copied().collect()
    }
    pub fn result(&self, id: &JobId) -> Option<OcrResult> {
        self.results.lock().unwrap().get(id).cloned()
    }
    /// While `down`, [`JobStore::get`] (the first call the upload check makes) and
    /// [`JobStatuses::statuses`] fail as they do while the database is away.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Calls of [`JobStore::get`] so far.
    pub fn reads(&self) -> i64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Calls of [`JobStatuses::statuses`] so far.
    pub fn status_reads(&self) -> i64 {
        self.status_reads.load(Ordering::SeqCst)
    }

    /// An operator's redrive with `--reset-jobs` (`MySqlJobStore::requeue_failed`): the failed
    /// jobs among `ids` go back to `queued` with no attempts and no error.
    pub fn requeue_failed(&self, ids: &[JobId], at_ms: i64) -> u64 {
        let (from, to) = JobStatus::REDRIVE;
        let mut reset = 0;
        let mut jobs = self.jobs.lock().unwrap();
        for id in ids {
            if let Some(job) = jobs.get_mut(id).filter(|j| j.status == from) {
                job.status = to;
                job.attempts = 0;
                job.error = None;
                job.finished_at_ms = None;
                job.queued_at_ms = Some(at_ms);
                self.owed.lock().unwrap().remove(id);
                self.redriven.lock().unwrap().insert(*id, at_ms);
                reset += 1;
            }
        }
        reset
    }

    /// Inserts a job already in `queued`, as the on-upload handler leaves it.
    pub fn insert_queued(&self, job: Job) {
        let mut job = job;
        job.status = JobStatus::Queued;
        self.jobs.lock().unwrap().insert(job.id, job);
    }
}

/// A message in [`InMemoryJobSource`]'s dead-letter queue; `hidden_until` is set by a peek.
#[derive(Debug, Clone)]
struct DeadLetter {
    priority: Priority,
    id: String,
    body: String,
    hidden_until: Option<std::time::Instant>,
}

impl DeadLetter {
    fn visible(&self, now: std::time::Instant) -> bool {
        self.hidden_until.is_none_or(|t| t <= now)
    }
}

/// A message in [`InMemoryJobSource`].
#[derive(Debug, Clone)]
struct FakeMessage {
    id: String,
    body: String,
    receive_count: u32,
    receipt: Option<String>,
    invisible_until: Option<std::time::Instant>,
    requeues: u32,
}

/// Two SQS-like queues with visibility timeouts, receive counts and a dead-letter list
/// (a message received more than `max_receive` times moves there, as with a redrive policy).
#[derive(Debug)]
pub struct InMemoryJobSource {
    queues: Mutex<HashMap<Priority, Vec<FakeMessage>>>,
    /// Dead letters: priority, body, and until when a peek hides each.
    dlq: Mutex<Vec<DeadLetter>>,
    visibility: Duration,
    max_receive: u32,
    next: AtomicI64,
    /// Visibility changes still to refuse (an injected SQS error), and how many were.
    fail_visibility: AtomicI64,
    failed_visibility: AtomicI64,
}

impl InMemoryJobSource {
    pub fn new(visibility: Duration, max_receive: u32) -> Self {
        Self {
            queues: Mutex::default(),
            dlq: Mutex::default(),
            visibility,
            max_receive,
            next: AtomicI64::new(0),
            fail_visibility: AtomicI64::new(0),
            failed_visibility: AtomicI64::new(0),
        }
    }

    /// The next `n` calls of [`JobSource::set_visibility`] fail as SQS errors would.
    pub fn fail_next_visibility_changes(&self, n: i64) {
        self.fail_visibility.store(n, Ordering::SeqCst);
    }

    /// How many visibility changes failed that way.
    pub fn failed_visibility_changes(&self) -> i64 {
        self.failed_visibility.load(Ordering::SeqCst)
    }

    pub fn push(&self, priority: Priority, body: impl Into<String>) {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.queues.lock().unwrap().entry(priority).or_default().push(FakeMessage {
            id: format!("m{id}"),
            body: body.into(),
            receive_count: 0,
            receipt: None,
            invisible_until: None,
            requeues: 0,
        });
    }

    /// `(receive count, requeues)` of each message still on the queue.
    pub fn counts(&self, priority: Priority) -> Vec<(u32, u32)> {
        self.queues
            .lock()
            .unwrap()
            .get(&priority)
            .map_or(Vec::new(), |q| q.iter().map(|m| (m.receive_count, m.requeues)).collect())
    }

    /// Messages still on the queue (visible or not).
    pub fn len(&self, priority: Priority) -> usize {
        self.queues.lock().unwrap().get(&priority).map_or(0, Vec::len)
    }

    pub fn dead_letters(&self) -> Vec<(Priority, String)> {
        self.dlq.lock().unwrap().iter().map(|d| (d.priority, d.body.clone())).collect()
    }

    /// Dead letters a peek hid and that are still hidden.
    pub fn hidden_dead_letters(&self) -> usize {
        let now = std::time::Instant::now();
        self.dlq.lock().unwrap().iter().filter(|d| !d.visible(now)).count()
    }

    /// Lets every hidden dead letter be seen again, as when its hiding time has passed.
    pub fn reveal_dead_letters(&self) {
        for letter in self.dlq.lock().unwrap().iter_mut() {
            letter.hidden_until = None;
        }
    }

    /// An operator's redrive (SQS's message-move task): every visible dead letter of
    /// `priority` goes back to its queue as a new message; hidden ones stay.
    pub fn redrive(&self, priority: Priority) -> usize {
        let now = std::time::Instant::now();
        let mut moved = Vec::new();
        self.dlq.lock().unwrap().retain(|d| {
            let moves = d.priority == priority && d.visible(now);
            if moves {
                moved.push(d.body.clone());
            }
            !moves
        });
        let n = moved.len();
        for body in moved {
            self.push(priority, body);
        }
        n
    }
}

/// Dead letters are returned in order, the visible ones only, `max` at a time; each one read is
/// hidden for `hide`, as SQS does.
#[async_trait]
impl DeadLetters for InMemoryJobSource {
    async fn peek(&self, priority: Priority, max: usize, hide: Duration) -> Result<Vec<Delivery>, PortError> {
        let now = std::time::Instant::now();
        let mut dlq = self.dlq.lock().unwrap();
        let mut out = Vec::new();
        for d in dlq.iter_mut() {
            if out.len() >= max.min(10) {
                break;
            }
            if d.priority != priority || !d.visible(now) {
                continue;
            }
            d.hidden_until = Some(now + hide);
            out.push(Delivery {
                priority,
                message_id: d.id.clone(),
                receipt_handle: format!("{}-dead", d.id),
                body: d.body.clone(),
                receive_count: 1,
                requeues: 0,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl JobSource for InMemoryJobSource {
    async fn receive(&self, priority: Priority, max: usize, wait: Duration) -> Result<Vec<Delivery>, PortError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let now = std::time::Instant::now();
            let mut out = Vec::new();
            {
                let mut queues = self.queues.lock().unwrap();
                let queue = queues.entry(priority).or_default();
                let mut dead = Vec::new();
                for m in queue.iter_mut() {
                    if out.len() >= max.min(10) {
                        break;
                    }
                    if m.invisible_until.is_some_and(|t| t > now) {
                        continue;
                    }
                    if m.receive_count >= self.max_receive {
                        dead.push(m.id.clone());
                        continue;
                    }
                    m.receive_count += 1;
                    let receipt = format!("{}-r{}", m.id, m.receive_count);
                    m.receipt = Some(receipt.clone());
                    m.invisible_until = Some(now + self.visibility);
                    out.push(Delivery {
                        priority,
                        message_id: m.id.clone(),
                        receipt_handle: receipt,
                        body: m.body.clone(),
                        receive_count: m.receive_count,
                        requeues: m.requeues,
                    });
                }
                for id in dead {
                    if let Some(pos) = queue.iter().position(|m| m.id == id) {
                        let m = queue.remove(pos);
                        self.dlq.lock().unwrap().push(DeadLetter {
                            priority,
                            id: m.id,
                            body: m.body,
                            hidden_until: None,
                        });
                    }
                }
            }
            if !out.is_empty() || std::time::Instant::now() >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn delete(&self, priority: Priority, receipt_handles: &[String]) -> Result<Vec<String>, PortError> {
        let mut queues = self.queues.lock().unwrap();
        let queue = queues.entry(priority).or_default();
        let mut failed = Vec::new();
        for h in receipt_handles {
            match queue.iter().position(|m| m.receipt.as_deref() == Some(h.as_str())) {
                Some(pos) => {
                    queue.remove(pos);
                }
                None => failed.push(h.clone()),
            }
        }
        Ok(failed)
    }

    async fn requeue(&self, delivery: &Delivery, delay: Duration) -> Result<(), PortError> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let mut queues = self.queues.lock().unwrap();
        let queue = queues.entry(delivery.priority).or_default();
        queue.push(FakeMessage {
            id: format!("m{id}"),
            body: delivery.body.clone(),
            receive_count: 0,
            receipt: None,
            invisible_until: Some(std::time::Instant::now() + delay.min(Duration::from_secs(900))),
            requeues: delivery.requeues + 1,
        });
        queue.retain(|m| m.receipt.as_deref() != Some(delivery.receipt_handle.as_str()));
        Ok(())
    }

    async fn set_visibility(
        &self,
        priority: Priority,
        receipt_handles: &[String],
        visibility: Duration,
    ) -> Result<(), PortError> {
        if self.fail_visibility.fetch_sub(1, Ordering::SeqCst) > 0 {
            self.failed_visibility.fetch_add(1, Ordering::SeqCst);
            return Err(PortError::unavailable("sqs", "injected: ChangeMessageVisibility failed"));
        }
        let mut queues = self.queues.lock().unwrap();
        let now = std::time::Instant::now();
        for m in queues.entry(priority).or_default().iter_mut() {
            if m.receipt.as_ref().is_some_and(|r| receipt_handles.contains(r)) {
                m.invisible_until = Some(now + visibility);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_slots_honour_both_caps_expiry_and_release() {
        let slots = &InMemoryWaitSlots::default();
        let job = JobId::new();
        let take = move |caller: &'static str, until: i64, now: i64, total: u32, per: u32| async move {
            slots.acquire(caller, job, until, now, total, per).await.unwrap()
        };
        // Per caller: two for alice, and `Alice` is someone else.
        let a1 = take("alice", 100, 0, 10, 2).await.expect("first");
        assert!(take("alice", 100, 0, 10, 2).await.is_some());
        assert!(take("alice", 100, 0, 10, 2).await.is_none(), "alice's cap");
        assert!(take("Alice", 100, 0, 10, 2).await.is_some(), "another caller");
        // In all: three held now, so a cap of 3 refuses bob.
        assert!(take("bob", 100, 0, 3, 2).await.is_none(), "the total cap");
        assert_eq!((slots.held(0), slots.held_by("alice", 0)), (3, 2));
        // Released: alice may wait again.
        slots.release(&a1).await.unwrap();
        slots.release(&a1).await.unwrap();
        assert!(take("alice", 100, 0, 10, 2).await.is_some());
        // Expired at 100: everything is free again.
        assert_eq!(slots.held(100), 0);
        assert!(take("alice", 200, 100, 1, 1).await.is_some());
        // A cap of 0: no one.
        assert!(take("carol", 300, 100, 0, 5).await.is_none() && take("carol", 300, 100, 5, 0).await.is_none());
        slots.set_down(true);
        assert!(slots.acquire("dave", job, 300, 100, 10, 10).await.unwrap_err().is_retryable());
    }
}

/// PDFs written by hand, object by object, for tests that need every structure under control
/// (the upload check's reader, the text layer, documents for the engine and the pipeline).
#[derive(Debug)]
pub struct PdfWriter {
    /// The file so far.
    pub out: Vec<u8>,
    /// Each object written: its number and offset, in the order written.
    pub offsets: Vec<(u32, usize)>,
}

impl Default for PdfWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl PdfWriter {
    /// A PDF 1.7 header and nothing else.
    pub fn new() -> Self {
        PdfWriter { out: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec(), offsets: Vec::new() }
    }

    /// Object `num` (generation 0) with `body` as its value.
    pub fn obj(&mut self, num: u32, body: &str) {
        self.offsets.push((num, self.out.len()));
        self.out.extend_from_slice(format!("{num} 0 obj\n{body}\nendobj\n").as_bytes());
    }

    /// Stream object `num`: `dict`'s entries and its `/Length`, then `data`.
    pub fn stream(&mut self, num: u32, dict: &str, data: &[u8]) {
        self.offsets.push((num, self.out.len()));
        self.out.extend_from_slice(format!("{num} 0 obj\n<< {dict} /Length {} >>\nstream\n", data.len()).as_bytes());
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(b"\nendstream\nendobj\n");
    }

    /// A page tree of `n` pages, objects 1 (catalog), 2 (tree) and 3.. (pages).
    pub fn pages(&mut self, n: u32) {
        self.obj(1, "<< /Type /Catalog /Pages 2 0 R >>");
        let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + i)).collect();
        self.obj(2, &format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")));
        for i in 0..n {
            self.obj(3 + i, "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>");
        }
    }

    /// A classic table of the objects written since the `since`-th, `trailer` and the end;
    /// returns where the table starts.
    pub fn table(&mut self, since: usize, trailer: &str) -> usize {
        let at = self.out.len();
        let mut entries = self.offsets[since..].to_vec();
        entries.sort();
        let mut t = String::from("xref\n");
        if since == 0 {
            t += "0 1\n0000000000 65535 f \n";
        }
        for (num, off) in entries {
            t += &format!("{num} 1\n{off:010} 00000 n \n");
        }
        t += &format!("trailer\n{trailer}\nstartxref\n{at}\n%%EOF\n");
        self.out.extend_from_slice(t.as_bytes());
        at
    }

    /// The whole file: a table of every object, and a trailer naming object `root` the catalog
    /// with `extra` entries added.
    pub fn finish(mut self, root: u32, extra: &str) -> Vec<u8> {
        let size = self.offsets.iter().map(|o| o.0 + 1).max().unwrap_or(1);
        self.table(0, &format!("<< /Size {size} /Root {root} 0 R {extra} >>"));
        self.out
    }
}
