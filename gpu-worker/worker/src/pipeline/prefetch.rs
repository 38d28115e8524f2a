//! Stage 2, prefetch: parse the messages, mark their jobs processing, download and decode
//! their images, while the engine works on the batch before.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use ocr_core::ports::ObjectStore;
use ocr_core::{JobId, JobMessage, JobStatus, PortError};
use tokio::sync::{Semaphore, mpsc};

use super::batch::{Batch, Item, State};
use super::{PipelineDeps, Settings, with_retry};
use crate::now_ms;
use crate::recognizer::ImageFailure;

pub(super) async fn stage(
    deps: PipelineDeps,
    settings: Arc<Settings>,
    mut rx: mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Batch>,
) {
    let decode_permits = Arc::new(Semaphore::new(settings.decode_concurrency.max(1)));
    while let Some(batch) = rx.recv().await {
        let Ok(permit) = tx.reserve().await else { break };
        permit.send(prepare(&deps, &settings, &decode_permits, batch).await);
    }
    tracing::debug!("prefetch stage stopped");
}

/// Moves every item of a fresh batch to `Ready` (decoded image), `Failed`, `Ended` or
/// `Unreadable`.
pub(super) async fn prepare(
    deps: &PipelineDeps,
    settings: &Settings,
    decode_permits: &Arc<Semaphore>,
    mut batch: Batch,
) -> Batch {
    let started = Instant::now();
    let messages: Vec<Option<JobMessage>> = batch.items.iter_mut().map(|item| parse(item, &settings.bucket)).collect();
    let ids: Vec<JobId> = messages.iter().flatten().map(|m| m.job_id).collect();
    match with_retry("marking jobs processing", || deps.store.take(&ids, now_ms())).await {
        Ok(taken) => {
            for (item, message) in batch.items.iter_mut().zip(&messages) {
                if let Some(m) = message {
                    item.job = taken.iter().find(|j| j.id == m.job_id).cloned();
                }
            }
        }
        Err(e) => {
            for (item, m) in batch.items.iter_mut().zip(&messages) {
                if m.is_some() {
                    item.state = State::Failed(ImageFailure { reason: format!("database: {e}"), retryable: true });
                }
            }
            deps.metrics.stage("prefetch", started.elapsed());
            return batch;
        }
    }
    let mut downloads = Vec::new();
    for (index, (item, message)) in batch.items.iter_mut().zip(messages).enumerate() {
        let Some(message) = message.filter(|_| still_open(item)) else { continue };
        let (objects, permits, max_pixels) = (deps.objects.clone(), decode_permits.clone(), settings.max_pixels);
        let version = item.job.as_ref().and_then(|j| j.checked_etag.clone());
        downloads.push(async move {
            (index, fetch(objects.as_ref(), &message.key, version.as_deref(), &permits, max_pixels).await)
        });
    }
    let mut results = futures::stream::iter(downloads).buffer_unordered(settings.prefetch_concurrency.max(1));
    while let Some((index, state)) = results.next().await {
        batch.items[index].state = state;
    }
    deps.metrics.stage("prefetch", started.elapsed());
    batch
}

/// The item's job message, or `None` with the item marked unreadable.
fn parse(item: &mut Item, bucket: &str) -> Option<JobMessage> {
    match JobMessage::parse(&item.delivery.body) {
        Ok(m) if m.bucket != bucket => {
            item.state = State::Unreadable(format!("message names bucket {:?}, not ours", m.bucket));
            None
        }
        Ok(m) => Some(m),
        Err(e) => {
            if let Some(version) = e.is_newer() {
                tracing::info!(message_id = %item.delivery.message_id, version, "job message of a newer version; requeueing it for a newer worker");
                item.state = State::Newer(version);
                return None;
            }
            tracing::error!(message_id = %item.delivery.message_id, error = %e, "unreadable job message");
            item.state = State::Unreadable(e.to_string());
            None
        }
    }
}

/// Whether the item's job (as taken) still wants a result; else the item is marked `Ended`.
fn still_open(item: &mut Item) -> bool {
    let Some(job) = &item.job else {
        tracing::warn!(message_id = %item.delivery.message_id, "message for an unknown job");
        item.state = State::Ended("unknown job".into());
        return false;
    };
    if job.status.can_become(JobStatus::Processing) {
        return true;
    }
    // Delivered again after it ended (or it was deleted): keep what is stored.
    tracing::info!(job_id = %job.id, status = %job.status, "job already ended; acknowledging");
    item.state = State::Ended(format!("job is {}", job.status));
    false
}

/// Why a job fails when its image is not the one its upload check passed.
pub const CHANGED_REASON: &str =
    "the image was replaced after its upload was checked (a second PUT to the upload URL); create a new job for it";

/// Downloads (exactly the version the upload check passed, when known) and decodes one image,
/// at most `permits` decodes at once, on blocking threads.
async fn fetch(
    objects: &dyn ObjectStore,
    key: &str,
    version: Option<&str>,
    permits: &Arc<Semaphore>,
    max_pixels: u64,
) -> State {
    let bytes = match objects.get(key, version).await {
        Ok(bytes) => bytes,
        Err(PortError::NotFound) => {
            return State::Failed(ImageFailure { reason: "the image is not in storage".into(), retryable: false });
        }
        Err(PortError::Changed) => {
            return State::Failed(ImageFailure { reason: CHANGED_REASON.into(), retryable: false });
        }
        Err(e) => {
            return State::Failed(ImageFailure {
                reason: format!("downloading the image: {e}"),
                retryable: e.is_retryable(),
            });
        }
    };
    let _permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
    match tokio::task::spawn_blocking(move || ocr_engine::decode_image(&bytes, max_pixels)).await {
        Ok(Ok(image)) => State::Ready(image),
        Ok(Err(e)) => State::Failed(ImageFailure::from(&e)),
        Err(e) => State::Failed(ImageFailure { reason: format!("decoder crashed: {e}"), retryable: false }),
    }
}
