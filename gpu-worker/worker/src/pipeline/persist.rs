//! Stage 4, persist: write the batch's results in one transaction, then settle every message.
//!
//! What to do with each message is decided by [`decide`], a pure function of the item's outcome,
//! whether the results were written, and the retry settings; [`carry_out`] does the I/O.
//! Nothing is deleted from the queue before its result is committed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ocr_core::worker::TakenJob;
use ocr_core::{JobId, JobStatus, OcrResult, Priority};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::batch::{Batch, Item, Lane, State};
use super::{PipelineDeps, Settings, with_retry};
use crate::heartbeat::InFlight;
use crate::now_ms;
use crate::webhook::Notification;

/// What to do with one delivered message once its batch went through the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Delete the message. `succeeded`: this batch wrote the job's result (count it, notify).
    Acknowledge { succeeded: bool },
    /// Hand the message back, visible again `after`; `note`: record `reason` on the job as
    /// the attempt's error.
    Retry { reason: String, after: Duration, note: bool },
    /// The last attempt failed: mark the job failed with `reason`, and hand the message back at
    /// once so that the next receive moves it to the dead-letter queue.
    GiveUp { reason: String },
    /// Not a message this worker can read: leave it untouched for the dead-letter queue.
    DeadLetter { reason: String, after: Duration },
    /// Send it again as a new message, visible `after`, so that this delivery counts against
    /// neither the job's attempts nor the queue's redrive policy: a newer worker's message, or
    /// one whose batch could not reach the database (`reason`).
    Requeue { reason: String, after: Duration },
}

/// How long a message of a newer version waits before it is offered again: a rolling deploy
/// replaces the fleet within minutes.
pub const NEWER_VERSION_DELAY: Duration = Duration::from_secs(60);

/// How often one message is requeued before it is left for the dead-letter queue (a day at
/// [`NEWER_VERSION_DELAY`]): no newer worker came, say the deploy was rolled back.
pub const MAX_REQUEUES: u32 = 1440;

/// Whether the batch's results were written: the ids written by this call, or why not.
pub type Written = Result<HashSet<JobId>, NotWritten>;

/// Why a batch's results were not written.
#[derive(Debug, Clone, PartialEq)]
pub struct NotWritten {
    pub reason: String,
    /// The database stayed away for the whole retry limit (not a refusal of these rows).
    pub outage: bool,
}

/// Decides one item's fate. `max_attempts` is the queue's maxReceiveCount; failed attempts come
/// back after `retry_backoff`, doubled per attempt (at most a minute).
///
/// A batch that could not reach the database within `settings.db_retry_limit` is requeued
/// (its messages sent again, visible after that limit) while the message has requeues left:
/// an outage of any length uses none of the jobs' attempts.
pub fn decide(item: &Item, written: &Written, settings: &Settings) -> Decision {
    let (max_attempts, retry_backoff) = (settings.max_attempts, settings.retry_backoff);
    let attempt = item.delivery.receive_count;
    let last = attempt >= max_attempts;
    let after = backoff(retry_backoff, attempt);
    let may_requeue = item.delivery.requeues < MAX_REQUEUES;
    let outage_delay = settings.db_retry_limit.min(Duration::from_secs(900));
    match (&item.state, written) {
        (State::Done(_), Ok(ids)) => {
            Decision::Acknowledge { succeeded: item.job_id().is_some_and(|id| ids.contains(&id)) }
        }
        (State::Done(_), Err(e)) if e.outage && may_requeue => {
            Decision::Requeue { reason: format!("result not stored: {}", e.reason), after: outage_delay }
        }
        (State::Done(_), Err(e)) => {
            Decision::Retry { reason: format!("result not stored: {}", e.reason), after, note: false }
        }
        (State::Deferred { reason, after: later }, _) if may_requeue => {
            Decision::Requeue { reason: reason.clone(), after: *later }
        }
        (State::Deferred { reason, .. }, _) => Decision::Retry { reason: reason.clone(), after, note: false },
        (State::Ended(_), _) => Decision::Acknowledge { succeeded: false },
        (State::Failed(f), _) if last => Decision::GiveUp { reason: f.reason.clone() },
        (State::Failed(f), _) => Decision::Retry { reason: f.reason.clone(), after, note: true },
        (State::Newer(v), _) if may_requeue => Decision::Requeue {
            reason: format!("job message version {v} is newer than this worker reads"),
            after: NEWER_VERSION_DELAY,
        },
        (State::Newer(v), _) => Decision::DeadLetter {
            reason: format!("job message version {v} is newer than this worker reads, and no newer worker took it"),
            after: if last { Duration::ZERO } else { after },
        },
        (State::Unreadable(reason), _) => {
            Decision::DeadLetter { reason: reason.clone(), after: if last { Duration::ZERO } else { after } }
        }
        // Every stage moves every item on; one that did not is retried rather than lost.
        (State::Received | State::Ready(_) | State::InEngine, _) => {
            Decision::Retry { reason: "the batch did not go through every stage".into(), after, note: false }
        }
    }
}

/// Delay before a failed delivery is tried again: base, 2×base, 4×base … (at most a minute).
fn backoff(base: Duration, receive_count: u32) -> Duration {
    (base * 2u32.saturating_pow(receive_count.clamp(1, 6) - 1)).min(Duration::from_secs(60))
}

pub(super) async fn stage(
    deps: PipelineDeps,
    settings: Arc<Settings>,
    in_flight: InFlight,
    mut rx: mpsc::Receiver<Batch>,
) {
    while let Some(batch) = rx.recv().await {
        persist(&deps, &settings, &in_flight, batch).await;
    }
    tracing::debug!("persist stage stopped");
}

/// Writes the batch's results, decides each message's fate and carries it out.
pub(super) async fn persist(deps: &PipelineDeps, settings: &Settings, in_flight: &InFlight, batch: Batch) {
    let started = Instant::now();
    let now = now_ms();
    let results: Vec<(JobId, OcrResult)> = batch
        .items
        .iter()
        .filter_map(|i| match (&i.state, i.job_id()) {
            (State::Done(r), Some(id)) => Some((id, r.clone())),
            _ => None,
        })
        .collect();
    let written: Written =
        match with_retry("writing results", settings.db_retry_limit, || deps.store.complete(&results, now)).await {
            Ok(ids) => Ok(ids.into_iter().collect()),
            Err(e) => {
                tracing::error!(error = %e, "writing results failed; the batch goes back to the queue");
                Err(NotWritten { reason: e.to_string(), outage: e.is_retryable() })
            }
        };
    let decisions: Vec<Decision> = batch.items.iter().map(|i| decide(i, &written, settings)).collect();
    carry_out(deps, settings, &batch, &decisions, now).await;
    for item in &batch.items {
        in_flight.remove(&item.delivery.receipt_handle);
    }
    deps.metrics.stage("persist", started.elapsed());
    deps.metrics.in_flight.set(in_flight.len() as i64);
}

/// Does what `decisions` say: job updates, metrics and webhooks per item, then the queue calls.
async fn carry_out(deps: &PipelineDeps, settings: &Settings, batch: &Batch, decisions: &[Decision], now: i64) {
    for (item, decision) in batch.items.iter().zip(decisions) {
        // The job a message names is known from its body even when the database never said
        // (a deferred batch), so that every line about it carries its id.
        let job_id = item.job_id().or_else(|| ocr_core::message::job_id_of(&item.delivery.body));
        let span = tracing::info_span!("job", job_id = job_id.map(|i| i.to_string()).unwrap_or_default());
        // Instrumented, not entered: a guard held across an await would lend this job's id to
        // whatever else runs on the thread meanwhile.
        settle_job(deps, settings, item, decision, now, batch.lane).instrument(span).await;
    }
    for priority in Priority::ALL {
        let of = |want: fn(&Decision) -> bool| -> Vec<(&Item, &Decision)> {
            batch.items.iter().zip(decisions).filter(|(i, d)| i.delivery.priority == priority && want(d)).collect()
        };
        let acknowledged = of(|d| matches!(d, Decision::Acknowledge { .. }));
        delete(deps, priority, &acknowledged).await;
        let handed_back = of(|d| !matches!(d, Decision::Acknowledge { .. } | Decision::Requeue { .. }));
        hand_back(deps, priority, &handed_back).await;
    }
    for (item, decision) in batch.items.iter().zip(decisions) {
        if let Decision::Requeue { after, .. } = decision
            && let Err(e) = deps.source.requeue(&item.delivery, *after).await
        {
            // Handed back instead: this delivery then counts toward the redrive policy.
            tracing::warn!(message_id = %item.delivery.message_id, error = %e, "requeueing failed; handing the message back");
            hand_back(deps, item.delivery.priority, &[(item, decision)]).await;
        }
    }
}

/// The database, metrics and webhook side of one decision.
async fn settle_job(deps: &PipelineDeps, settings: &Settings, item: &Item, decision: &Decision, now: i64, lane: Lane) {
    let priority = item.delivery.priority;
    let attempt = item.delivery.receive_count;
    match (decision, &item.job) {
        (Decision::Acknowledge { succeeded: true }, Some(job)) => {
            let latency = job.queued_at_ms.map(|q| Duration::from_millis((now - q).max(0) as u64));
            deps.metrics.succeeded(priority, latency);
            let h = item.hops;
            // The per-hop times scripts/bench.sh latency reads (epoch ms; committed is `now`).
            tracing::info!(
                attempt, %priority, lane = lane.as_str(), queued_ms = job.queued_at_ms.unwrap_or(0),
                received_ms = h.received_ms, prepared_ms = h.prepared_ms, engine_start_ms = h.engine_start_ms,
                engine_end_ms = h.engine_end_ms, committed_ms = now, "job succeeded"
            );
            notify(deps, job, JobStatus::Succeeded, now);
        }
        (Decision::Acknowledge { .. }, _) => tracing::debug!(state = ?item.state, "acknowledging without a new result"),
        (Decision::Retry { reason, note, .. }, job) => {
            tracing::warn!(%reason, attempt, "attempt failed; will retry");
            if *note {
                deps.metrics.attempt_error(priority);
                if let Some(job) = job {
                    let _ = deps.store.note_attempt_error(&job.id, reason, now).await;
                }
            }
        }
        (Decision::GiveUp { reason }, Some(job)) => {
            match with_retry("marking a job failed", settings.db_retry_limit, || deps.store.fail(&job.id, reason, now))
                .await
            {
                Ok(true) => {
                    deps.metrics.failed(priority);
                    tracing::warn!(%reason, attempts = attempt, "job failed");
                    notify(deps, job, JobStatus::Failed, now);
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "could not mark the job failed"),
            }
        }
        (Decision::GiveUp { .. }, None) => {}
        (Decision::Requeue { reason, after }, _) => tracing::info!(
            message_id = %item.delivery.message_id, requeues = item.delivery.requeues + 1, %reason, ?after,
            "message requeued (no attempt used)"
        ),
        (Decision::DeadLetter { reason, .. }, _) => tracing::error!(
            message_id = %item.delivery.message_id, %reason, "unreadable message; leaving it for the dead-letter queue"
        ),
    }
}

/// Deletes acknowledged messages, ten per call. A failed delete only means the message is seen
/// again and acknowledged again.
async fn delete(deps: &PipelineDeps, priority: Priority, items: &[(&Item, &Decision)]) {
    let handles: Vec<String> = items.iter().map(|(i, _)| i.delivery.receipt_handle.clone()).collect();
    for chunk in handles.chunks(10) {
        match deps.source.delete(priority, chunk).await {
            Ok(failed) if !failed.is_empty() => tracing::warn!(
                failed = failed.len(),
                "some deletes failed; those messages will be seen again and acknowledged"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "deleting messages failed; they will be seen again and acknowledged"),
        }
    }
}

/// Hands messages back to the queue, grouped by the visibility each one gets.
async fn hand_back(deps: &PipelineDeps, priority: Priority, items: &[(&Item, &Decision)]) {
    let mut groups: Vec<(Duration, Vec<String>)> = Vec::new();
    for (item, decision) in items {
        let visibility = match decision {
            Decision::Retry { after, .. } | Decision::DeadLetter { after, .. } | Decision::Requeue { after, .. } => {
                *after
            }
            Decision::GiveUp { .. } | Decision::Acknowledge { .. } => Duration::ZERO,
        };
        let handle = item.delivery.receipt_handle.clone();
        match groups.iter_mut().find(|(v, g)| *v == visibility && g.len() < 10) {
            Some((_, g)) => g.push(handle),
            None => groups.push((visibility, vec![handle])),
        }
    }
    for (visibility, group) in groups {
        if let Err(e) = deps.source.set_visibility(priority, &group, visibility).await {
            tracing::warn!(error = %e, "handing messages back failed; they return after their visibility timeout");
        }
    }
}

/// `now` is when the store recorded the webhook as owed: the retry window counts from there.
fn notify(deps: &PipelineDeps, job: &TakenJob, status: JobStatus, now: i64) {
    let Some(url) = &job.callback_url else { return };
    let n = Notification {
        job_id: job.id,
        owner: job.owner.clone(),
        status,
        callback_url: url.clone(),
        owed_since_ms: now,
    };
    // Never wait on webhooks here: a full queue drops the call (and says so); the outbox sweep
    // sends it later.
    if deps.notify.try_send(n).is_err() {
        deps.metrics.webhook("dropped");
        tracing::warn!(job_id = %job.id, "webhook queue full; notification dropped");
    }
}

#[cfg(test)]
mod tests {
    use ocr_core::worker::Delivery;

    use super::*;
    use crate::recognizer::ImageFailure;

    fn item(state: State, receive_count: u32) -> Item {
        let delivery = Delivery {
            priority: Priority::Bulk,
            message_id: "m".into(),
            receipt_handle: "r".into(),
            body: String::new(),
            receive_count,
            requeues: 0,
        };
        let job = TakenJob {
            id: JobId::new(),
            owner: "alice".into(),
            status: JobStatus::Processing,
            callback_url: None,
            queued_at_ms: None,
            checked_etag: None,
        };
        Item { delivery, job: Some(job), state, hops: Default::default() }
    }

    fn done() -> State {
        State::Done(OcrResult::image(1, 1, vec![], 0.0))
    }

    fn failed() -> State {
        State::Failed(ImageFailure { reason: "bad pixels".into(), retryable: false })
    }

    const BASE: Duration = Duration::from_secs(2);

    /// `decide` with `max_attempts` 3 and `retry_backoff` BASE.
    fn decide(item: &Item, written: &Written) -> Decision {
        let settings = Settings { max_attempts: 3, retry_backoff: BASE, ..Settings::default() };
        super::decide(item, written, &settings)
    }

    #[test]
    fn a_written_result_is_acknowledged_and_counted_once() {
        let i = item(done(), 1);
        let ids: HashSet<JobId> = [i.job_id().unwrap()].into();
        assert_eq!(decide(&i, &Ok(ids)), Decision::Acknowledge { succeeded: true });
        // Written earlier (a redelivery): acknowledged, not counted again.
        assert_eq!(decide(&i, &Ok(HashSet::new())), Decision::Acknowledge { succeeded: false });
    }

    #[test]
    fn an_unwritten_result_keeps_its_message() {
        let refused = Err(NotWritten { reason: "db refused".into(), outage: false });
        let d = decide(&item(done(), 2), &refused);
        assert_eq!(d, Decision::Retry { reason: "result not stored: db refused".into(), after: BASE * 2, note: false });
    }

    /// The database away past the retry limit: the message goes back as a new one (no attempt
    /// used), after the limit (60 s by default), also on its last attempt; only a message
    /// requeued for a day counts an attempt again.
    #[test]
    fn an_outage_requeues_without_using_an_attempt() {
        let outage = Err(NotWritten { reason: "mysql unavailable".into(), outage: true });
        let after = Duration::from_secs(60);
        let reason = "result not stored: mysql unavailable".to_owned();
        assert_eq!(decide(&item(done(), 3), &outage), Decision::Requeue { reason, after });
        let deferred = State::Deferred { reason: "database: mysql unavailable".into(), after };
        let ok = Ok(HashSet::new());
        assert_eq!(
            decide(&item(deferred, 3), &ok),
            Decision::Requeue { reason: "database: mysql unavailable".into(), after }
        );
        let mut old = item(State::Deferred { reason: "database: down".into(), after }, 2);
        old.delivery.requeues = MAX_REQUEUES;
        assert!(matches!(decide(&old, &ok), Decision::Retry { .. }));
    }

    #[test]
    fn failures_back_off_then_give_up_on_the_last_attempt() {
        let ok = Ok(HashSet::new());
        assert_eq!(
            decide(&item(failed(), 1), &ok),
            Decision::Retry { reason: "bad pixels".into(), after: BASE, note: true }
        );
        assert_eq!(
            decide(&item(failed(), 2), &ok),
            Decision::Retry { reason: "bad pixels".into(), after: BASE * 2, note: true }
        );
        assert_eq!(decide(&item(failed(), 3), &ok), Decision::GiveUp { reason: "bad pixels".into() });
    }

    #[test]
    fn ended_jobs_are_acknowledged_and_unreadable_messages_dead_lettered() {
        let ok = Ok(HashSet::new());
        assert_eq!(
            decide(&item(State::Ended("job is deleted".into()), 1), &ok),
            Decision::Acknowledge { succeeded: false }
        );
        // A newer worker's message is requeued, also on what would be its last attempt, until
        // no newer worker has come for a day.
        assert_eq!(
            decide(&item(State::Newer(2), 3), &ok),
            Decision::Requeue {
                reason: "job message version 2 is newer than this worker reads".into(),
                after: NEWER_VERSION_DELAY
            }
        );
        let mut old = item(State::Newer(2), 3);
        old.delivery.requeues = MAX_REQUEUES;
        assert!(matches!(decide(&old, &ok), Decision::DeadLetter { after: Duration::ZERO, .. }));
        let unreadable = |n| decide(&item(State::Unreadable("v99".into()), n), &ok);
        assert_eq!(unreadable(1), Decision::DeadLetter { reason: "v99".into(), after: BASE });
        assert_eq!(unreadable(3), Decision::DeadLetter { reason: "v99".into(), after: Duration::ZERO });
    }

    #[test]
    fn an_item_that_skipped_a_stage_is_retried_not_acknowledged() {
        for state in [State::Received, State::InEngine] {
            assert!(matches!(decide(&item(state, 1), &Ok(HashSet::new())), Decision::Retry { .. }));
        }
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(backoff(BASE, 1), BASE);
        assert_eq!(backoff(BASE, 3), BASE * 4);
        assert_eq!(backoff(BASE, 40), Duration::from_secs(60));
    }
}
