//! The dead-letter sweep: a job whose message reached a dead-letter queue is over, whatever
//! its row says.
//!
//! Normally the worker marks a job failed on its last attempt and then lets the message move
//! to the DLQ. But when the worker holding the last attempt dies (or cannot reach the
//! database), the queue moves the message on its next receive and nobody ends the job: it
//! would stay `processing` forever and its caller would never hear. Every `DLQ_SWEEP_SECS`
//! each worker pages through both DLQs and fails such jobs (their webhook is owed from then
//! on, see `webhook::sweep`). Messages stay in the DLQ for operators (`scripts/dlq`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocr_core::message::job_id_of;
use ocr_core::worker::{DeadLetters, ResultStore};
use ocr_core::{JobId, JobMessage, Priority};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// How long a dead letter the sweep has read stays hidden, in sweep intervals (`DLQ_SWEEP_SECS`;
/// 5 minutes by default): the next sweeps page past it to the ones not seen yet, so that every
/// message of a deep queue is reached within a few sweeps (each one reads until the queue shows
/// nothing more or its time is up), and a reread costs one cheap conditional UPDATE after that.
/// `scripts/dlq` counts the hidden messages, which it cannot list or move meanwhile.
pub const HIDE_SWEEPS: u32 = 5;

/// Most messages one sweep reads per queue, whatever its time budget.
const MAX_PER_SWEEP: usize = 100_000;

/// Why the sweep failed a job (stored as its `error`).
pub const REASON: &str =
    "its message reached the dead-letter queue without a final result (the worker holding its last attempt stopped)";

/// One pass over both dead-letter queues; returns the jobs it failed. Each message read is
/// hidden for `hide`, so the pages of one pass are distinct messages and the next pass starts
/// with the ones this pass did not reach. The pass over a queue ends when a read brings nothing
/// new, when `budget` has passed, or when the database fails (what was read then comes back
/// after `hide`).
pub async fn sweep_once(
    dead: &dyn DeadLetters,
    store: &dyn ResultStore,
    metrics: &Metrics,
    hide: Duration,
    budget: Duration,
    now_ms: i64,
) -> Vec<JobId> {
    let started = Instant::now();
    let mut failed = Vec::new();
    for priority in Priority::ALL {
        let mut seen = HashSet::new();
        'pages: while seen.len() < MAX_PER_SWEEP && started.elapsed() < budget {
            let page = match dead.peek(priority, 10, hide).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, priority = priority.as_str(), "reading the dead-letter queue failed");
                    break;
                }
            };
            let fresh: Vec<_> = page.into_iter().filter(|d| seen.insert(d.message_id.clone())).collect();
            if fresh.is_empty() {
                break;
            }
            for d in fresh {
                // A body this build cannot parse (a newer version, a broken one) still names
                // its job, as a rule: that job is over too, or it would stay queued forever.
                let (job_id, reason) = match JobMessage::parse(&d.body) {
                    Ok(message) => (message.job_id, REASON.to_owned()),
                    Err(e) => match job_id_of(&d.body) {
                        Some(id) => {
                            (id, format!("its message reached the dead-letter queue unread by this fleet ({e})"))
                        }
                        None => continue, // names no job: only operators can tell what it is
                    },
                };
                match store.give_up(&job_id, &reason, now_ms).await {
                    Ok(true) => {
                        tracing::warn!(job_id = %job_id, priority = priority.as_str(), %reason, "job failed (dead-lettered)");
                        metrics.failed(priority);
                        failed.push(job_id);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(job_id = %job_id, error = %e, "could not fail a dead-lettered job; next sweep");
                        break 'pages;
                    }
                }
            }
        }
    }
    failed
}

/// Sweeps every `every` until `stop`, each sweep for at most half of that, hiding what it read
/// for [`HIDE_SWEEPS`] intervals.
pub async fn run(
    dead: Arc<dyn DeadLetters>,
    store: Arc<dyn ResultStore>,
    metrics: Metrics,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let budget = (every / 2).max(Duration::from_secs(1));
    let hide = (every * HIDE_SWEEPS).max(Duration::from_secs(1));
    loop {
        if crate::sleep_or_stop(every, &mut stop).await {
            return;
        }
        sweep_once(dead.as_ref(), store.as_ref(), &metrics, hide, budget, crate::now_ms()).await;
    }
}

#[cfg(test)]
mod tests {
    use ocr_core::fakes::{InMemoryJobSource, InMemoryJobStore};
    use ocr_core::worker::JobSource;
    use ocr_core::{ContentType, Job, JobStatus, NewJob, OcrResult};

    use super::*;

    const BUDGET: Duration = Duration::from_secs(60);
    const HIDE: Duration = Duration::from_secs(300);

    fn queued(store: &InMemoryJobStore, callback: bool) -> (JobId, String) {
        let mut job = Job::from_new(NewJob {
            id: JobId::new(),
            owner: "alice".into(),
            priority: Priority::Bulk,
            content_type: ContentType::Png,
            content_length: 10,
            callback_url: callback.then(|| "https://public.example/hook".into()),
            metadata: None,
            idempotency: None,
            created_at_ms: 0,
        });
        job.queued_at_ms = Some(0);
        let body = JobMessage::for_job(&job, "bucket", 10, 0).to_json();
        let id = job.id;
        store.insert_queued(job);
        (id, body)
    }

    #[tokio::test]
    async fn a_job_whose_worker_died_on_its_last_attempt_is_failed_once_dead_lettered() {
        let store = InMemoryJobStore::default();
        let queues = InMemoryJobSource::new(Duration::ZERO, 3);
        let (lost, lost_body) = queued(&store, true);
        let (done, done_body) = queued(&store, false);
        // Three deliveries of `lost`, each to a worker that took the job and died.
        queues.push(Priority::Bulk, lost_body);
        for _ in 0..3 {
            let got = queues.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap();
            assert_eq!(got.len(), 1);
            store.take(&[lost], 1_000).await.unwrap();
        }
        // Its first attempt had recorded why it failed.
        store.note_attempt_error(&lost, "image does not decode", 1_500).await.unwrap();
        // `done` succeeded, but its message still reached the DLQ (its delete was lost).
        queues.push(Priority::Bulk, done_body);
        for _ in 0..3 {
            queues.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap();
        }
        let result = OcrResult::image(1, 1, vec![], 0.0);
        store.take(&[done], 1_000).await.unwrap();
        store.complete(&[(done, result)], 2_000).await.unwrap();
        // The next receive moves both to the dead-letter queue; nobody ended `lost`.
        assert!(queues.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(queues.dead_letters().len(), 2);
        let status = |id: JobId| store.all().into_iter().find(|j| j.id == id).unwrap().status;
        assert_eq!(status(lost), JobStatus::Processing);

        let metrics = Metrics::new();
        let failed = sweep_once(&queues, &store, &metrics, Duration::from_secs(1), BUDGET, 5_000).await;
        assert_eq!(failed, vec![lost]);
        let job = store.all().into_iter().find(|j| j.id == lost).unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.error, Some(format!("image does not decode; {REASON}")));
        // Its caller is owed a webhook; the finished job is left alone.
        assert_eq!(store.owed_notifications(), vec![lost]);
        assert_eq!(status(done), JobStatus::Succeeded);
        // Sweeping again changes nothing, and the messages stay for operators.
        assert!(sweep_once(&queues, &store, &metrics, Duration::from_secs(1), BUDGET, 6_000).await.is_empty());
        assert_eq!(queues.dead_letters().len(), 2);
    }

    #[tokio::test]
    async fn a_dead_letter_this_build_cannot_parse_still_ends_its_job() {
        let store = InMemoryJobStore::default();
        let queues = InMemoryJobSource::new(Duration::ZERO, 1);
        let (newer, body) = queued(&store, true);
        let mut v2: serde_json::Value = serde_json::from_str(&body).unwrap();
        v2["v"] = 2.into();
        v2["pages"] = 3.into();
        queues.push(Priority::Bulk, v2.to_string());
        queues.push(Priority::Bulk, r#"{"hello": "no job here"}"#);
        queues.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap();
        assert!(queues.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap().is_empty());
        assert_eq!(queues.dead_letters().len(), 2);
        let failed = sweep_once(&queues, &store, &Metrics::new(), Duration::from_secs(1), BUDGET, 5_000).await;
        assert_eq!(failed, vec![newer], "not left queued forever");
        let job = store.all().into_iter().find(|j| j.id == newer).unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        assert!(job.error.as_deref().unwrap().contains("unsupported job message version 2"), "{:?}", job.error);
        assert_eq!(store.owed_notifications(), vec![newer]);
        assert_eq!(queues.dead_letters().len(), 2, "both stay for operators");
    }

    #[tokio::test]
    async fn one_sweep_pages_through_a_long_dead_letter_queue() {
        let store = InMemoryJobStore::default();
        let queues = InMemoryJobSource::new(Duration::ZERO, 1);
        let mut ids = Vec::new();
        for _ in 0..25 {
            let (id, body) = queued(&store, false);
            queues.push(Priority::Express, body);
            ids.push(id);
        }
        queues.receive(Priority::Express, 10, Duration::ZERO).await.unwrap();
        queues.receive(Priority::Express, 10, Duration::ZERO).await.unwrap();
        queues.receive(Priority::Express, 10, Duration::ZERO).await.unwrap();
        while !queues.receive(Priority::Express, 10, Duration::ZERO).await.unwrap().is_empty() {}
        assert_eq!(queues.dead_letters().len(), 25);
        let failed = sweep_once(&queues, &store, &Metrics::new(), Duration::from_secs(1), BUDGET, 5_000).await;
        assert_eq!(failed.len(), 25);
        assert!(store.all().iter().all(|j| j.status == JobStatus::Failed && j.error.as_deref() == Some(REASON)));
    }

    /// However deep the queue: one sweep reaches every dead letter (not the first hundred),
    /// and the next one rereads none of them while they are hidden.
    #[tokio::test]
    async fn one_sweep_reaches_every_letter_of_a_deep_queue() {
        let store = InMemoryJobStore::default();
        let queues = InMemoryJobSource::new(Duration::ZERO, 0);
        for _ in 0..2_500 {
            let (_, body) = queued(&store, false);
            queues.push(Priority::Bulk, body);
        }
        assert!(queues.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap().is_empty());
        while queues.len(Priority::Bulk) > 0 {
            queues.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap();
        }
        assert_eq!(queues.dead_letters().len(), 2_500);
        let failed = sweep_once(&queues, &store, &Metrics::new(), HIDE, BUDGET, 5_000).await;
        assert_eq!(failed.len(), 2_500);
        assert_eq!(queues.hidden_dead_letters(), 2_500, "each one read is hidden for HIDE");
        assert!(sweep_once(&queues, &store, &Metrics::new(), HIDE, BUDGET, 6_000).await.is_empty());
    }

    /// An operator's redrive resets the job and moves its message back; a sweep that reads the
    /// old copy in between must not fail the job again, and once a worker took the redriven
    /// job and died on its last attempt again, the sweep fails it at once.
    #[tokio::test]
    async fn a_sweep_during_a_redrive_leaves_the_reset_job_alone() {
        let store = InMemoryJobStore::default();
        let queues = InMemoryJobSource::new(Duration::ZERO, 3);
        let (id, body) = queued(&store, true);
        queues.push(Priority::Bulk, body);
        let die_three_times = || async {
            for _ in 0..3 {
                let got = queues.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap();
                assert_eq!(got.len(), 1);
                store.take(&[id], 1_000).await.unwrap();
            }
            assert!(queues.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap().is_empty());
        };
        die_three_times().await;
        let metrics = Metrics::new();
        assert_eq!(sweep_once(&queues, &store, &metrics, HIDE, BUDGET, 10_000).await, vec![id]);

        // `dlq redrive --reset-jobs` at t = 20 s: the job is reset first...
        let status = || store.all().into_iter().find(|j| j.id == id).unwrap().status;
        assert_eq!(store.requeue_failed(&[id], 20_000), 1);
        assert_eq!(status(), JobStatus::Queued);
        // ...and while the message move is under way, a sweep reads the old copy.
        queues.reveal_dead_letters();
        assert!(sweep_once(&queues, &store, &metrics, Duration::ZERO, BUDGET, 21_000).await.is_empty());
        assert_eq!(status(), JobStatus::Queued, "the reset job was failed again by the sweep");
        // The move task moves the message back.
        assert_eq!(queues.redrive(Priority::Bulk), 1);
        assert_eq!(queues.len(Priority::Bulk), 1);
        // The redriven message is tried again; its worker dies on every attempt again.
        die_three_times().await;
        assert_eq!(sweep_once(&queues, &store, &metrics, HIDE, BUDGET, 30_000).await, vec![id]);
        assert_eq!(status(), JobStatus::Failed);
        assert_eq!(store.owed_notifications(), vec![id]);
    }

    /// The grace is bounded: a reset job whose redriven message dead-letters again without any
    /// worker taking it is failed once the grace has passed.
    #[tokio::test]
    async fn a_redriven_job_never_taken_again_is_failed_after_the_grace() {
        let store = InMemoryJobStore::default();
        let queues = InMemoryJobSource::new(Duration::ZERO, 1);
        let (id, body) = queued(&store, false);
        store.fail(&id, "earlier failure", 1_000).await.unwrap();
        store.requeue_failed(&[id], 2_000);
        queues.push(Priority::Express, body);
        queues.receive(Priority::Express, 10, Duration::ZERO).await.unwrap();
        assert!(queues.receive(Priority::Express, 10, Duration::ZERO).await.unwrap().is_empty());
        let metrics = Metrics::new();
        let within = 2_000 + ocr_core::worker::REDRIVE_GRACE_MS;
        assert!(sweep_once(&queues, &store, &metrics, Duration::ZERO, BUDGET, within).await.is_empty());
        assert_eq!(sweep_once(&queues, &store, &metrics, Duration::ZERO, BUDGET, within + 1).await, vec![id]);
    }
}
