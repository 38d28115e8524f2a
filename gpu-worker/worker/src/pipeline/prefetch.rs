//! Stage 2, prefetch: parse the messages, mark their jobs processing, download and decode
//! their images, while the engine works on the batch before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use ocr_core::ports::ObjectStore;
use ocr_core::{JobId, JobMessage, JobStatus, PortError};
use tokio::sync::{Semaphore, mpsc, watch};

use super::batch::{Batch, Item, Lane, State};
use super::receive::Intake;
use super::{PipelineDeps, Settings, with_retry};
use crate::now_ms;
use crate::recognizer::ImageFailure;

/// A lane: reserves a place before the engine, gathers a batch for it, prepares the batch and
/// puts it there. Two run side by side:
///
/// - `Main` takes whatever the queues have, express first with bulk's share.
/// - `Express` takes express jobs only, and only while `armed`: while the main lane's next
///   batch (being prepared or waiting for the engine) left express room unused, i.e. it was
///   gathered while the express queue was short. The engine takes an express batch before
///   the main lane's (see [`super::infer::Lanes`]), so an express job that arrives during a
///   bulk flood waits behind the batch in the engine only, not also behind the bulk batch
///   already prefetched.
///
/// A lane gathers only once its place is free, so nothing is received long before the engine
/// can take it.
pub(super) async fn lane(
    lane: Lane,
    shared: LaneShared,
    tx: mpsc::Sender<Batch>,
    armed: Armed,
    mut stop: watch::Receiver<bool>,
) {
    let LaneShared { deps, settings, intake, limits } = shared;
    let express_room = settings.batch_max.max(1)
        - ((settings.batch_max.max(1) as f64) * settings.bulk_share.clamp(0.0, 1.0)).ceil() as usize;
    while !*stop.borrow() {
        let Ok(permit) = tx.reserve().await else { break };
        let keep = match &armed {
            Armed::Sets(flag) => {
                // Gathering: express jobs come here now.
                flag.send_replace(false);
                None
            }
            Armed::Reads(flag) => {
                let mut flag = flag.clone();
                tokio::select! {
                    r = flag.wait_for(|a| *a) => if r.is_err() { break },
                    _ = stop.wait_for(|s| *s) => break,
                }
                Some(flag)
            }
        };
        let received = intake.gather(lane, &settings, &stop, keep.as_ref()).await;
        if received.is_empty() {
            continue;
        }
        let batch = Batch::new(lane, received);
        if let Armed::Sets(flag) = &armed {
            flag.send_replace(batch.express() < express_room);
        }
        permit.send(prepare(&deps, &settings, &limits, batch).await);
    }
    tracing::debug!(lane = lane.as_str(), "lane stopped");
}

/// What both lanes work with.
#[derive(Clone)]
pub(super) struct LaneShared {
    pub deps: PipelineDeps,
    pub settings: Arc<Settings>,
    pub intake: Intake,
    pub limits: Arc<Limits>,
}

/// The main lane sets whether the express lane may gather; the express lane reads it.
pub(super) enum Armed {
    Sets(watch::Sender<bool>),
    Reads(watch::Receiver<bool>),
}

/// What bounds decoding: how many at once, and the decoded-pixel budget.
pub(super) struct Limits {
    decodes: Arc<Semaphore>,
    /// Permits are pixels; `None`: no budget.
    pixels: Option<Arc<Semaphore>>,
    /// The budget and a batch's share of it, in pixels.
    budget: u64,
    per_batch: u64,
}

impl Limits {
    pub(super) fn new(settings: &Settings) -> Self {
        // Semaphore permits are counted in usize and taken 2^32 - 1 at a time at most.
        let budget = settings.pixel_budget.min(Semaphore::MAX_PERMITS as u64).min(u64::from(u32::MAX));
        Limits {
            decodes: Arc::new(Semaphore::new(settings.decode_concurrency.max(1))),
            pixels: (budget > 0).then(|| Arc::new(Semaphore::new(budget as usize))),
            budget,
            per_batch: (budget / 2).max(1),
        }
    }
}

/// How long an image left out of a batch by the pixel budget waits before it is offered again.
const OVER_BUDGET_DELAY: Duration = Duration::from_secs(1);

/// Times a message may be put back (left for a later batch, or held through an outage) before
/// its image is planned first in its batch. A document longer than a batch goes through only
/// when it comes first, and a put-back message goes to the back of its queue: without this, a
/// steady stream of small jobs would leave it for later forever.
pub const AGED_AFTER: u32 = 3;

/// Moves every item of a fresh batch to `Ready` (decoded image), `Failed`, `Ended`,
/// `Unreadable` or `Deferred` (the database away, or over the batch's share of the pixel budget).
pub(super) async fn prepare(deps: &PipelineDeps, settings: &Settings, limits: &Limits, mut batch: Batch) -> Batch {
    let started = Instant::now();
    let messages: Vec<Option<JobMessage>> = batch.items.iter_mut().map(|item| parse(item, &settings.bucket)).collect();
    let ids: Vec<JobId> = messages.iter().flatten().map(|m| m.job_id).collect();
    match with_retry("marking jobs processing", settings.db_retry_limit, || deps.store.take(&ids, now_ms())).await {
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
                    item.state = if e.is_retryable() {
                        State::Deferred {
                            reason: format!("database: {e}"),
                            after: settings.db_retry_limit.min(Duration::from_secs(900)),
                        }
                    } else {
                        State::Failed(ImageFailure { reason: format!("database: {e}"), retryable: true })
                    };
                }
            }
            deps.metrics.stage("prefetch", started.elapsed());
            return batch;
        }
    }
    // Download everything first (compressed bytes, bounded by the upload limit), then plan the
    // decoded pixels from the headers, then decode what fits.
    let mut downloads = Vec::new();
    for (index, (item, message)) in batch.items.iter_mut().zip(messages).enumerate() {
        let Some(message) = message.filter(|_| still_open(item)) else { continue };
        let objects = deps.objects.clone();
        let version = item.job.as_ref().and_then(|j| j.checked_etag.clone());
        downloads.push(async move { (index, download(objects.as_ref(), &message.key, version.as_deref()).await) });
    }
    let mut fetched = Vec::new();
    let mut results = futures::stream::iter(downloads).buffer_unordered(settings.prefetch_concurrency.max(1));
    while let Some((index, outcome)) = results.next().await {
        match outcome {
            Ok(bytes) => fetched.push((index, bytes)),
            Err(state) => batch.items[index].state = state,
        }
    }
    fetched.sort_by_key(|(index, _)| *index);
    let fetched =
        plan_pixels(&mut batch, fetched, limits, settings.max_pixels, settings.max_pages, settings.batch_max).await;
    let mut decodes = Vec::new();
    for (index, bytes) in fetched {
        let (permits, max_pixels, max_pages) = (limits.decodes.clone(), settings.max_pixels, settings.max_pages);
        decodes.push(async move { (index, decode(bytes, &permits, max_pixels, max_pages).await) });
    }
    let mut results = futures::stream::iter(decodes).buffer_unordered(settings.decode_concurrency.max(1));
    while let Some((index, state)) = results.next().await {
        batch.items[index].state = state;
    }
    deps.metrics.stage("prefetch", started.elapsed());
    let at = now_ms();
    for item in &mut batch.items {
        item.hops.prepared_ms = at;
    }
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

/// Keeps the images of `fetched` (in batch order, those put back [`AGED_AFTER`] times or more
/// first) that fit the batch: at most `max_batch` pages in all (a document's pages count like
/// images, so a long one does not hold the engine for the length of many batches) and, with a
/// budget, the batch's share of decoded pixels, taken from the budget here (waiting while
/// earlier batches hold it). The rest are deferred. An image or document larger than the batch
/// goes through alone. Inputs whose header cannot be read cost nothing here: decoding fails
/// them.
async fn plan_pixels(
    batch: &mut Batch,
    mut fetched: Vec<(usize, Bytes)>,
    limits: &Limits,
    max_pixels: u64,
    max_pages: usize,
    max_batch: usize,
) -> Vec<(usize, Bytes)> {
    // Stable: batch order within the aged and within the rest.
    fetched.sort_by_key(|(index, _)| batch.items[*index].delivery.requeues < AGED_AFTER);
    let mut kept = Vec::with_capacity(fetched.len());
    let (mut total, mut total_pages) = (0u64, 0usize);
    for (index, bytes) in fetched {
        let pages = ocr_engine::probe_pages(&bytes, max_pixels, max_pages).unwrap_or_default();
        let n = pages.len().max(1);
        // Every page of a document counts.
        let cost: u64 = pages.iter().map(|&(w, h)| u64::from(w) * u64::from(h)).filter(|&p| p <= max_pixels).sum();
        let over_pages = total_pages > 0 && total_pages + n > max_batch.max(1);
        let over_pixels = limits.pixels.is_some() && total > 0 && total + cost > limits.per_batch;
        if over_pages || over_pixels {
            let item = &mut batch.items[index];
            tracing::info!(
                job_id = ?item.job_id().map(|id| id.to_string()), pages = n, batch_pages = total_pages,
                put_back = item.delivery.requeues,
                pixels = cost, batch_pixels = total, "image left for a later batch (batch pages or decoded-pixel budget)"
            );
            let reason = if over_pages {
                format!("its {n} pages did not fit this batch of at most {max_batch} pages")
            } else {
                format!(
                    "its {cost} pixels did not fit this batch's share of the decoded-pixel budget ({} of {} pixels)",
                    limits.per_batch, limits.budget
                )
            };
            item.state = State::Deferred { reason, after: OVER_BUDGET_DELAY };
            continue;
        }
        total += cost;
        total_pages += n;
        kept.push((index, bytes));
    }
    let take = total.min(limits.budget) as u32;
    if let Some(pixels) = &limits.pixels
        && take > 0
    {
        batch.pixels = Some(pixels.clone().acquire_many_owned(take).await.expect("semaphore never closed"));
    }
    kept.sort_by_key(|(index, _)| *index);
    kept
}

/// Downloads exactly the version the upload check passed, when known.
async fn download(objects: &dyn ObjectStore, key: &str, version: Option<&str>) -> Result<Bytes, State> {
    match objects.get(key, version).await {
        Ok(bytes) => Ok(bytes),
        Err(PortError::NotFound) => {
            Err(State::Failed(ImageFailure { reason: "the image is not in storage".into(), retryable: false }))
        }
        Err(PortError::Changed) => Err(State::Failed(ImageFailure { reason: CHANGED_REASON.into(), retryable: false })),
        Err(e) => Err(State::Failed(ImageFailure {
            reason: format!("downloading the image: {e}"),
            retryable: e.is_retryable(),
        })),
    }
}

/// Decodes one image (every page of a document), at most `permits` decodes at once, on
/// blocking threads.
async fn decode(bytes: Bytes, permits: &Arc<Semaphore>, max_pixels: u64, max_pages: usize) -> State {
    let _permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
    match tokio::task::spawn_blocking(move || ocr_engine::decode_pages(&bytes, max_pixels, max_pages)).await {
        Ok(Ok(pages)) => State::Ready(pages),
        Ok(Err(e)) => State::Failed(ImageFailure::from(&e)),
        Err(e) => State::Failed(ImageFailure { reason: format!("decoder crashed: {e}"), retryable: false }),
    }
}

#[cfg(test)]
mod tests {
    use ocr_core::Priority;
    use ocr_core::worker::Delivery;

    use super::*;
    use crate::pipeline::receive::Received;

    fn tiff(pages: usize) -> Bytes {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
        for _ in 0..pages {
            enc.write_image::<tiff::encoder::colortype::Gray8>(8, 8, &[255u8; 64]).unwrap();
        }
        out.into_inner().into()
    }

    fn batch(requeues: &[u32]) -> Batch {
        let received = requeues
            .iter()
            .enumerate()
            .map(|(k, &requeues)| Received {
                delivery: Delivery {
                    priority: Priority::Bulk,
                    message_id: format!("m{k}"),
                    receipt_handle: format!("r{k}"),
                    body: String::new(),
                    receive_count: 1,
                    requeues,
                },
                at_ms: 0,
            })
            .collect();
        Batch::new(Lane::Main, received)
    }

    /// A document longer than a batch, behind smaller jobs, is left for later (and goes to the
    /// back of its queue) until it has been put back `AGED_AFTER` times; then it comes first
    /// and goes through alone.
    #[tokio::test]
    async fn a_document_put_back_often_enough_comes_first() {
        let limits = Limits { decodes: Arc::new(Semaphore::new(1)), pixels: None, budget: 0, per_batch: 1 };
        for (requeues, kept_doc) in [(0, false), (AGED_AFTER - 1, false), (AGED_AFTER, true)] {
            let mut b = batch(&[0, 0, requeues, 0]);
            let fetched = vec![(0, tiff(1)), (1, tiff(2)), (2, tiff(10)), (3, tiff(1))];
            let kept = plan_pixels(&mut b, fetched, &limits, 1 << 20, 50, 8).await;
            let kept: Vec<usize> = kept.iter().map(|(i, _)| *i).collect();
            if kept_doc {
                assert_eq!(kept, [2], "an aged document goes alone, the rest wait");
                assert!(
                    b.items.iter().enumerate().all(|(i, it)| (i == 2) != matches!(it.state, State::Deferred { .. }))
                );
            } else {
                assert_eq!(kept, [0, 1, 3], "requeues {requeues}");
                assert!(matches!(b.items[2].state, State::Deferred { .. }));
            }
        }
    }
}
