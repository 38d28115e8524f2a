//! Retention: nothing is kept forever. A job older than `RETENTION_DAYS` reads `expired` (the
//! API), loses its result, webhook records, metadata and callback here, and its row goes after
//! twice that; the bucket's lifecycle deletes its image after `RETENTION_DAYS` too. Every
//! `PURGE_INTERVAL_SECS` each worker purges in small batches, one short transaction each, so
//! no lock is held long and workers purging at once share the rows.

use std::sync::Arc;
use std::time::Duration;

use ocr_core::worker::{Purged, ResultStore};
use tokio::sync::watch;

/// Rows per batch.
const BATCH: usize = 500;
/// Batches per pass and phase: bounds one pass's work (a backlog clears over several passes).
const MAX_BATCHES: usize = 20;

/// One pass: strip, then delete, batch after batch until a batch comes back short.
pub async fn purge_once(store: &dyn ResultStore, retention: Duration, now_ms: i64) -> Purged {
    let retention_ms = retention.as_millis() as i64;
    let (strip_before, delete_before) = (now_ms - retention_ms, now_ms - 2 * retention_ms);
    let mut total = Purged::default();
    for _ in 0..MAX_BATCHES {
        match store.purge(strip_before, delete_before, BATCH, now_ms).await {
            Ok(p) => {
                total.stripped += p.stripped;
                total.deleted += p.deleted;
                if p.stripped < BATCH && p.deleted < BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging old jobs failed; the next pass tries again");
                break;
            }
        }
    }
    if total != Purged::default() {
        tracing::info!(stripped = total.stripped, deleted = total.deleted, "purged jobs past retention");
    }
    total
}

/// Purges every `every` until `stop`.
pub async fn run(store: Arc<dyn ResultStore>, retention: Duration, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        if crate::sleep_or_stop(every, &mut stop).await {
            return;
        }
        purge_once(store.as_ref(), retention, crate::now_ms()).await;
    }
}

#[cfg(test)]
mod tests {
    use ocr_core::fakes::InMemoryJobStore;
    use ocr_core::ports::JobStore;
    use ocr_core::{ContentType, NewJob, Priority};

    use super::*;

    const DAY: i64 = 86_400_000;

    #[tokio::test]
    async fn old_jobs_are_stripped_then_deleted_in_bounded_batches() {
        let store = InMemoryJobStore::default();
        let mut ids = Vec::new();
        for age_days in [1, 8, 9, 15, 30] {
            let new = NewJob {
                callback_url: Some("https://hooks.example.com/x".into()),
                metadata: Some(serde_json::json!({"order": age_days})),
                ..NewJob::plain("alice", Priority::Bulk, ContentType::Png, 1, 100 * DAY - age_days * DAY)
            };
            let id = new.id;
            store.insert(new).await.unwrap();
            ids.push((id, age_days));
        }
        let week = Duration::from_secs(7 * 86_400);
        let first = purge_once(&store, week, 100 * DAY).await;
        assert_eq!(first, Purged { stripped: 4, deleted: 2 }, "older than 7 days stripped, than 14 deleted");
        for (id, age) in ids {
            let job = store.get(&id).await.unwrap();
            match age {
                1 => assert!(job.unwrap().metadata.is_some(), "young jobs untouched"),
                8 | 9 => assert!(job.is_some_and(|j| j.metadata.is_none() && j.callback_url.is_none())),
                _ => assert!(job.is_none(), "{age} days: deleted"),
            }
        }
        assert_eq!(purge_once(&store, week, 100 * DAY).await, Purged::default(), "nothing twice");
    }
}
