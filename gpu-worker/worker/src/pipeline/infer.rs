//! Stage 3, infer: the batch's decoded images through the engine in one call. Runs on its own
//! thread, since an engine call blocks for the length of a batch.

use std::time::Instant;

use tokio::sync::mpsc;

use super::batch::{Batch, Lane, State};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::recognizer::{ImageFailure, Recognizer};
use ocr_core::{OcrPage, OcrResult};

pub(super) fn stage<R: Recognizer>(
    mut recognizer: R,
    metrics: Metrics,
    mut lanes: Lanes,
    tx: mpsc::Sender<Batch>,
    chunk: usize,
) {
    while let Some(mut batch) = lanes.next() {
        let main = batch.lane == Lane::Main;
        let (express, next_main, held, tx_urgent) = (&mut lanes.express, &mut lanes.main, &mut lanes.held, &tx);
        // Between the engine calls of a long main-lane batch (a document's pages), express jobs
        // that have come meanwhile are read first: the express lane's batches, and the next
        // main-lane batch when it carries any (the main lane takes express jobs while it
        // gathers); one without is held for its turn.
        let mut between = |recognizer: &mut R| {
            if !main {
                return;
            }
            let mut urgent: Vec<Batch> = std::iter::from_fn(|| express.try_recv().ok()).collect();
            if held.is_none()
                && let Ok(b) = next_main.try_recv()
            {
                if b.express() > 0 { urgent.push(b) } else { *held = Some(b) }
            }
            for mut b in urgent {
                infer_chunked(recognizer, &metrics, &mut b, chunk, &mut |_: &mut R| {});
                if tx_urgent.blocking_send(b).is_err() {
                    return;
                }
            }
        };
        infer_chunked(&mut recognizer, &metrics, &mut batch, chunk, &mut between);
        if tx.blocking_send(batch).is_err() {
            break;
        }
    }
    tracing::debug!("infer stage stopped");
}

/// The two lanes' prepared batches, as the engine takes them: an express lane batch first,
/// but never twice in a row while a main lane batch waits, so bulk (which only the main lane
/// carries) keeps moving when express jobs arrive as fast as the engine reads them.
pub(super) struct Lanes {
    pub main: mpsc::Receiver<Batch>,
    pub express: mpsc::Receiver<Batch>,
    /// To wait on both channels from this (non-runtime) thread.
    pub runtime: tokio::runtime::Handle,
    pub last_express: bool,
    /// A main-lane batch taken early (to look for express jobs) and not read yet: next in turn.
    pub held: Option<Batch>,
}

impl Lanes {
    /// The next batch for the engine; `None` once both lanes are closed and empty.
    fn next(&mut self) -> Option<Batch> {
        if let Some(batch) = self.held.take() {
            self.last_express = false;
            return Some(batch);
        }
        let picked = if self.last_express {
            self.main.try_recv().or_else(|_| self.express.try_recv())
        } else {
            self.express.try_recv().or_else(|_| self.main.try_recv())
        };
        let batch = match picked {
            Ok(batch) => batch,
            Err(_) => {
                let (main, express) = (&mut self.main, &mut self.express);
                self.runtime.block_on(async {
                    tokio::select! {
                        biased;
                        Some(b) = express.recv() => Some(b),
                        Some(b) = main.recv() => Some(b),
                        else => None,
                    }
                })?
            }
        };
        self.last_express = batch.lane == Lane::Express;
        Some(batch)
    }
}

/// Moves every `Ready` item to `Done` or `Failed`: every page of the batch's jobs in one engine
/// call, each job's pages then made its result. A panic inside the engine, or a result count
/// that does not match, fails this attempt of the batch's images (retryably), not the worker.
pub(super) fn infer<R: Recognizer>(recognizer: &mut R, metrics: &Metrics, batch: &mut Batch) {
    infer_chunked(recognizer, metrics, batch, usize::MAX, &mut |_: &mut R| {});
}

/// [`infer`] in engine calls of at most `chunk` pages, calling `between` after each call but the
/// last: a document longer than a batch never holds the engine for longer than one batch's
/// worth of pages at a time.
pub(super) fn infer_chunked<R: Recognizer>(
    recognizer: &mut R,
    metrics: &Metrics,
    batch: &mut Batch,
    chunk: usize,
    between: &mut dyn FnMut(&mut R),
) {
    let mut slots = Vec::new();
    let mut counts = Vec::new();
    let mut images = Vec::new();
    for (i, item) in batch.items.iter_mut().enumerate() {
        if let Some(pages) = item.take_pages() {
            slots.push(i);
            counts.push(pages.len());
            images.extend(pages);
        }
    }
    if images.is_empty() {
        batch.pixels = None;
        return;
    }
    let started_ms = now_ms();
    let n_images = images.len();
    let chunk = chunk.max(1);
    let mut results = Vec::with_capacity(n_images);
    let mut rest = images;
    // Which item each page belongs to, for the log line of each engine call.
    let owners: Vec<usize> = slots.iter().zip(&counts).flat_map(|(&slot, &n)| std::iter::repeat_n(slot, n)).collect();
    while !rest.is_empty() {
        let tail = rest.split_off(chunk.min(rest.len()));
        let part = std::mem::replace(&mut rest, tail);
        let from = results.len();
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recognizer.recognize(&part)));
        let took = started.elapsed();
        metrics.engine_busy(took);
        metrics.stage("infer", took);
        let n = part.len();
        drop(part);
        results.extend(match outcome {
            Ok(r) if r.len() == n => r,
            Ok(r) => {
                let reason = format!("engine returned {} results for {} images", r.len(), n);
                vec![Err(ImageFailure { reason, retryable: true }); n]
            }
            Err(_) => vec![Err(ImageFailure { reason: "the engine panicked".into(), retryable: true }); n],
        });
        // One line per engine call with the jobs it read: how often each job's image was read
        // is what the chaos run checks (above once only for batches a stopped or killed worker
        // held).
        let mut jobs: Vec<String> =
            owners[from..from + n].iter().filter_map(|&i| batch.items[i].job_id()).map(|id| id.to_string()).collect();
        jobs.dedup();
        tracing::info!(images = n, lane = batch.lane.as_str(), seconds = took.as_secs_f64(), jobs = %jobs.join(","), "engine batch");
        if !rest.is_empty() {
            between(recognizer);
        }
    }
    // The decoded pixels go, and with them the batch's share of the budget: the next batch may
    // decode while this one is written.
    batch.pixels = None;
    let ended_ms = now_ms();
    let mut results = results.into_iter();
    for (slot, n) in slots.into_iter().zip(counts) {
        batch.items[slot].hops.engine_start_ms = started_ms;
        batch.items[slot].hops.engine_end_ms = ended_ms;
        batch.items[slot].state = match document(results.by_ref().take(n).collect()) {
            Ok(r) => State::Done(r),
            Err(f) => State::Failed(f),
        };
    }
}

/// A job's result from its pages' (each read as a one-page result): the pages in order, or the
/// first failing page's failure, named by its number when the job has several.
fn document(pages: Vec<Result<OcrResult, ImageFailure>>) -> Result<OcrResult, ImageFailure> {
    let several = pages.len() > 1;
    let mut out = Vec::with_capacity(pages.len());
    let mut seconds = 0.0;
    for (k, page) in pages.into_iter().enumerate() {
        match page {
            Ok(r) => {
                seconds += r.seconds;
                out.extend(r.pages.into_iter().map(|p| OcrPage { page: k as u32 + 1, ..p }));
            }
            Err(f) if several => return Err(ImageFailure { reason: format!("page {}: {}", k + 1, f.reason), ..f }),
            Err(f) => return Err(f),
        }
    }
    Ok(OcrResult::from_pages(out, seconds))
}
