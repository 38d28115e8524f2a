//! Stage 3, infer: the batch's decoded images through the engine in one call. Runs on its own
//! thread, since an engine call blocks for the length of a batch.

use std::time::Instant;

use tokio::sync::mpsc;

use super::batch::{Batch, State};
use crate::metrics::Metrics;
use crate::recognizer::{ImageFailure, Recognizer};

pub(super) fn stage<R: Recognizer>(
    mut recognizer: R,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Batch>,
) {
    while let Some(mut batch) = rx.blocking_recv() {
        infer(&mut recognizer, &metrics, &mut batch);
        if tx.blocking_send(batch).is_err() {
            break;
        }
    }
    tracing::debug!("infer stage stopped");
}

/// Moves every `Ready` item to `Done` or `Failed`. A panic inside the engine, or a result count
/// that does not match, fails this attempt of the batch's images (retryably), not the worker.
pub(super) fn infer<R: Recognizer>(recognizer: &mut R, metrics: &Metrics, batch: &mut Batch) {
    let (slots, images): (Vec<usize>, Vec<_>) =
        batch.items.iter_mut().enumerate().filter_map(|(i, item)| item.take_image().map(|img| (i, img))).unzip();
    if images.is_empty() {
        batch.pixels = None;
        return;
    }
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recognizer.recognize(&images)));
    let took = started.elapsed();
    // The decoded pixels go, and with them the batch's share of the budget: the next batch may
    // decode while this one is written.
    let n_images = images.len();
    drop(images);
    batch.pixels = None;
    metrics.engine_busy(took);
    metrics.stage("infer", took);
    let results = match outcome {
        Ok(r) if r.len() == n_images => r,
        Ok(r) => {
            let reason = format!("engine returned {} results for {} images", r.len(), n_images);
            vec![Err(ImageFailure { reason, retryable: true }); n_images]
        }
        Err(_) => vec![Err(ImageFailure { reason: "the engine panicked".into(), retryable: true }); n_images],
    };
    // One line per engine call with the jobs it read: how often each job's image was read is
    // what the chaos run checks (above once only for batches a stopped or killed worker held).
    let jobs: Vec<String> = slots.iter().filter_map(|&i| batch.items[i].job_id()).map(|id| id.to_string()).collect();
    tracing::info!(images = n_images, seconds = took.as_secs_f64(), jobs = %jobs.join(","), "engine batch");
    for (slot, result) in slots.into_iter().zip(results) {
        batch.items[slot].state = match result {
            Ok(r) => State::Done(r),
            Err(f) => State::Failed(f),
        };
    }
}
