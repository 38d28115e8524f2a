//! Per-caller admission: how many jobs one caller may have waiting and how fast it may create
//! them, so that one caller's flood is refused (429) before it fills the shared queues.
//!
//! The arithmetic lives here; the stores keep the state (MySQL: one `caller_quotas` row per
//! caller, locked while a creation is admitted, so every API instance sees the same bucket).

use crate::job::{Job, JobStatus};

/// The limits one caller's job creations are held to (`CALLER_MAX_QUEUED`, `CALLER_MAX_RATE`,
/// `CALLER_BURST`). A limit of 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallerQuota {
    /// Jobs of one caller that may wait at once: queued, or awaiting an upload whose window is
    /// still open.
    pub max_waiting: u64,
    /// Sustained job creations per second (the token bucket's refill rate).
    pub rate_per_sec: f64,
    /// Creations allowed at once after a quiet spell (the bucket's size), at least 1.
    pub burst: u32,
    /// How long a job awaiting its upload still counts as waiting: its upload URL's lifetime.
    /// After that no upload can arrive, so it holds no place even before it reads `expired`.
    pub upload_window_ms: i64,
    /// `Retry-After` for a caller at `max_waiting`: when a place frees depends on the workers.
    pub waiting_retry_after_secs: u64,
}

impl CallerQuota {
    /// No limit at all (tests, and a deployment that sets both limits to 0).
    pub const UNLIMITED: CallerQuota =
        CallerQuota { max_waiting: 0, rate_per_sec: 0.0, burst: 1, upload_window_ms: 0, waiting_retry_after_secs: 1 };

    pub fn is_unlimited(&self) -> bool {
        self.max_waiting == 0 && self.rate_per_sec <= 0.0
    }

    /// Whether `job` takes one of its owner's waiting places at `now_ms`. The MySQL store's
    /// count (`WAITING_SQL`) says the same in SQL.
    pub fn holds_a_place(&self, job: &Job, now_ms: i64) -> bool {
        match job.status {
            JobStatus::Queued => true,
            JobStatus::AwaitingUpload => job.created_at_ms >= self.upload_window_start(now_ms),
            _ => false,
        }
    }

    /// Jobs awaiting an upload created at or after this still hold a place.
    pub fn upload_window_start(&self, now_ms: i64) -> i64 {
        now_ms - self.upload_window_ms
    }

    /// The refusal for a caller with `waiting` jobs already waiting, if it is at the limit.
    pub fn check_waiting(&self, waiting: u64) -> Result<(), QuotaRefusal> {
        if self.max_waiting > 0 && waiting >= self.max_waiting {
            return Err(QuotaRefusal::TooManyWaiting {
                limit: self.max_waiting,
                retry_after_secs: self.waiting_retry_after_secs.max(1),
            });
        }
        Ok(())
    }

    /// Takes one creation from the caller's bucket (`None`: the caller has none yet, a full
    /// bucket). Returns the bucket to store, or the refusal saying when the next token comes.
    pub fn take(&self, bucket: Option<TokenBucket>, now_ms: i64) -> Result<TokenBucket, QuotaRefusal> {
        let burst_milli = i64::from(self.burst.max(1)) * 1000;
        if self.rate_per_sec <= 0.0 {
            return Ok(TokenBucket { milli_tokens: burst_milli, at_ms: now_ms });
        }
        let bucket = bucket.unwrap_or(TokenBucket { milli_tokens: burst_milli, at_ms: now_ms });
        // Clocks of different API instances differ a little: time never runs backwards here.
        let elapsed_ms = (now_ms - bucket.at_ms).max(0);
        let refill = (elapsed_ms as f64 * self.rate_per_sec) as i64; // milli-tokens: ms × tokens/s
        let milli_tokens = bucket.milli_tokens.saturating_add(refill).min(burst_milli);
        let at_ms = bucket.at_ms.max(now_ms);
        if milli_tokens >= 1000 {
            return Ok(TokenBucket { milli_tokens: milli_tokens - 1000, at_ms });
        }
        let wait_ms = ((1000 - milli_tokens) as f64 / self.rate_per_sec).ceil() as u64;
        Err(QuotaRefusal::RateLimited {
            rate_per_sec: self.rate_per_sec,
            retry_after_secs: wait_ms.div_ceil(1000).max(1),
        })
    }
}

/// One caller's creation budget: thousandths of a creation, as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    pub milli_tokens: i64,
    pub at_ms: i64,
}

/// Why a caller may not create a job now. Only this caller is refused; others go on.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum QuotaRefusal {
    #[error(
        "{limit} of your jobs are already waiting (queued or awaiting upload), the most one caller may have (CALLER_MAX_QUEUED)"
    )]
    TooManyWaiting { limit: u64, retry_after_secs: u64 },
    #[error("you are creating jobs faster than {rate_per_sec} per second, the most one caller may (CALLER_MAX_RATE)")]
    RateLimited { rate_per_sec: f64, retry_after_secs: u64 },
}

impl QuotaRefusal {
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            QuotaRefusal::TooManyWaiting { retry_after_secs, .. }
            | QuotaRefusal::RateLimited { retry_after_secs, .. } => *retry_after_secs,
        }
    }
}

/// What a store answers to a creation under a quota.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Admitted(Box<Job>),
    Refused(QuotaRefusal),
}

/// The fairness key of a caller: what the job queues group its messages by (SQS
/// `MessageGroupId`, so fair queues serve quiet callers first). A hash, not the caller itself:
/// a JWT subject may be an e-mail address (kept out of SQS), or hold characters a group id may
/// not; the same caller always gets the same key.
pub fn fairness_key(owner: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(owner.as_bytes());
    format!("c-{}", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(rate: f64, burst: u32) -> CallerQuota {
        CallerQuota {
            max_waiting: 3,
            rate_per_sec: rate,
            burst,
            upload_window_ms: 900_000,
            waiting_retry_after_secs: 30,
        }
    }

    #[test]
    fn a_new_caller_has_a_full_bucket_then_waits_for_the_refill() {
        let q = quota(2.0, 3);
        let mut bucket = None;
        for _ in 0..3 {
            bucket = Some(q.take(bucket, 1_000).expect("the burst"));
        }
        let refused = q.take(bucket, 1_000).unwrap_err();
        assert_eq!(refused, QuotaRefusal::RateLimited { rate_per_sec: 2.0, retry_after_secs: 1 });
        // Two per second: one more after 500 ms, not before.
        assert!(q.take(bucket, 1_499).is_err());
        let after = q.take(bucket, 1_500).expect("refilled");
        assert_eq!(after, TokenBucket { milli_tokens: 0, at_ms: 1_500 });
        // A long quiet spell refills to the burst, no further.
        let full = q.take(Some(after), 1_000_000).unwrap();
        assert_eq!(full.milli_tokens, 2_000);
    }

    #[test]
    fn a_slow_rate_says_how_long_to_wait_and_clocks_never_run_backwards() {
        let q = quota(0.1, 1);
        let empty = q.take(None, 10_000).unwrap();
        assert_eq!(q.take(Some(empty), 10_000).unwrap_err().retry_after_secs(), 10);
        // Another instance whose clock is 2 s behind neither refills nor rewinds the bucket.
        assert_eq!(q.take(Some(empty), 8_000).unwrap_err().retry_after_secs(), 10);
        assert!(q.take(Some(empty), 20_000).is_ok());
    }

    #[test]
    fn waiting_places_count_queued_jobs_and_open_upload_windows_only() {
        let q = quota(0.0, 1);
        assert!(q.check_waiting(2).is_ok());
        assert_eq!(q.check_waiting(3), Err(QuotaRefusal::TooManyWaiting { limit: 3, retry_after_secs: 30 }));
        assert!(CallerQuota::UNLIMITED.check_waiting(u64::MAX).is_ok());
        assert!(CallerQuota::UNLIMITED.take(None, 0).is_ok());
        assert!(CallerQuota::UNLIMITED.is_unlimited());

        let mut job = Job::from_new(crate::job::NewJob {
            id: crate::JobId::new(),
            owner: "alice".into(),
            priority: crate::Priority::Bulk,
            content_type: crate::ContentType::Png,
            content_length: 1,
            callback_url: None,
            metadata: None,
            idempotency: None,
            created_at_ms: 0,
        });
        assert!(!q.holds_a_place(&job, 900_001), "its upload window closed");
        assert!(q.holds_a_place(&job, 900_000));
        job.status = JobStatus::Queued;
        assert!(q.holds_a_place(&job, 10_000_000));
        for status in [JobStatus::Processing, JobStatus::Succeeded, JobStatus::Failed, JobStatus::Expired] {
            job.status = status;
            assert!(!q.holds_a_place(&job, 1));
        }
    }

    #[test]
    fn fairness_keys_are_stable_distinct_and_valid_group_ids() {
        let a = fairness_key("alice@example.com");
        assert_eq!(a, fairness_key("alice@example.com"));
        assert_ne!(a, fairness_key("Alice@example.com"), "callers are compared byte for byte");
        assert_eq!(a.len(), 34);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert!(!a.contains("alice"));
    }
}
