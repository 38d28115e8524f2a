//! The upload-events dead-letter sweep: an upload is never lost to a long outage.
//!
//! An upload event that failed on every receive (the database away for longer than its
//! backoff, half an hour by default) lands in the upload-events DLQ; its job would stay
//! `awaiting_upload`, read `expired` once its upload window closed, and never be queued. The
//! sweep (the on-upload function on a schedule, the local poller on a timer) hands each dead
//! letter to the same [`UploadHandler`] and deletes it once handled. Handling is idempotent, so
//! an event handled twice changes nothing. While the database or the job queues are still away
//! it stops at the first such failure and leaves the rest for the next sweep.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ocr_aws::SqsConsumer;

use crate::upload::{Backoff, UploadHandler, is_outage, job_ids_of};

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Dead letters handled (jobs queued, rejected, or nothing left to do) and deleted.
    pub handled: usize,
    /// Dead letters whose handling failed, left for a later sweep (or an operator).
    pub left: usize,
    /// Whether the sweep stopped early because the database or the job queues are away.
    pub outage: bool,
}

/// One pass over the dead-letter queue `dlq` for at most `budget`. A message read is hidden for
/// `backoff.max` (its next look comes no sooner, so the pass pages through distinct messages).
pub async fn sweep(handler: &UploadHandler, dlq: &SqsConsumer, budget: Duration, backoff: Backoff) -> SweepReport {
    let started = Instant::now();
    let hide = backoff.max.as_secs().clamp(1, 43_200) as i32;
    let mut report = SweepReport::default();
    let mut seen = HashSet::new();
    while started.elapsed() < budget {
        let page = match dlq.receive_with(10, 0, Some(hide)).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "reading the upload-events DLQ failed");
                break;
            }
        };
        let fresh: Vec<_> = page.into_iter().filter(|m| seen.insert(m.message_id.clone())).collect();
        if fresh.is_empty() {
            break;
        }
        let mut pending = fresh.into_iter();
        for m in pending.by_ref() {
            match handler.handle_message(&m.body).await {
                Ok(outcomes) => {
                    tracing::info!(message_id = %m.message_id, ?outcomes, "dead-lettered upload event handled");
                    if let Err(e) = dlq.delete(&m.receipt_handle).await {
                        tracing::warn!(error = %e, "deleting a handled dead letter failed; it is handled again later");
                    }
                    report.handled += 1;
                }
                Err(e) if is_outage(&e) => {
                    tracing::warn!(error = %e, "the database or the job queues are still away; sweeping later");
                    let _ = dlq.change_visibility(&m.receipt_handle, 0).await;
                    report.outage = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(
                        message_id = %m.message_id, job_ids = %job_ids_of(&m.body), error = %e,
                        "a dead-lettered upload event failed again"
                    );
                    report.left += 1;
                }
            }
        }
        // Unread when the sweep stopped: visible again at once for the next one.
        for m in pending {
            let _ = dlq.change_visibility(&m.receipt_handle, 0).await;
        }
        if report.outage {
            break;
        }
    }
    report
}
