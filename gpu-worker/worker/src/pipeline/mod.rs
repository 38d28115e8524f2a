//! The worker's pipeline: receive → prefetch → infer → persist.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use image::RgbImage;
use ocr_core::ports::ObjectStore;
use ocr_core::worker::{Delivery, JobSource, ResultStore, TakenJob};
use ocr_core::{JobId, JobMessage, JobStatus, OcrResult, PortError, Priority};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::heartbeat::{self, InFlight};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::recognizer::{ImageFailure, Recognizer};
use crate::webhook::Notification;

/// The ports and sinks the pipeline works with.
#[derive(Clone)]
pub struct PipelineDeps {
    pub source: Arc<dyn JobSource>,
    pub store: Arc<dyn ResultStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub metrics: Metrics,
    /// Ended jobs with a callback URL go here; the webhook task sends them.
    pub notify: mpsc::Sender<Notification>,
}

/// Limits and timings (from [`crate::WorkerConfig`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub batch_max: usize,
    pub batch_wait: Duration,
    pub bulk_share: f64,
    pub receive_wait: Duration,
    pub visibility: Duration,
    pub max_attempts: u32,
    pub prefetch_concurrency: usize,
    pub decode_concurrency: usize,
    pub max_pixels: u64,
    pub bucket: String,
    pub shutdown_grace: Duration,
    /// Delay before a failed delivery returns; doubles with each attempt (at most a minute).
    pub retry_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_max: 32,
            batch_wait: Duration::from_millis(250),
            bulk_share: 0.25,
            receive_wait: Duration::from_secs(2),
            visibility: Duration::from_secs(30),
            max_attempts: 3,
            prefetch_concurrency: 16,
            decode_concurrency: 2,
            max_pixels: ocr_engine::DEFAULT_MAX_PIXELS,
            bucket: String::new(),
            shutdown_grace: Duration::from_secs(60),
            retry_backoff: Duration::from_secs(2),
        }
    }
}

/// What became of one delivery so far.
#[derive(Debug)]
enum State {
    /// Decoded and waiting for the engine.
    Ready(RgbImage),
    /// The engine read it.
    Done(OcrResult),
    /// This attempt failed.
    Failed(ImageFailure),
    /// Nothing to do (the job already ended, was deleted, or is unknown): delete the message.
    Ack(String),
    /// Not a job message we understand: leave it for the dead-letter queue.
    Unreadable(String),
}

#[derive(Debug)]
struct Item {
    delivery: Delivery,
    job: Option<TakenJob>,
    state: State,
}

impl Item {
    fn job_id(&self) -> Option<JobId> {
        self.job.as_ref().map(|j| j.id)
    }
}

/// A batch on its way through the stages.
#[derive(Debug, Default)]
struct Batch {
    items: Vec<Item>,
}

/// The pipeline; [`Pipeline::run`] drives it until stopped.
pub struct Pipeline {
    deps: PipelineDeps,
    settings: Settings,
    in_flight: InFlight,
}

/// Retries `op` while it fails retryably, waiting longer each time (up to 5 s), until it
/// succeeds or fails for good. Messages stay invisible meanwhile (heartbeat), so an outage
/// of the database holds the pipeline rather than losing or re-queuing work.
async fn with_retry<T, F, Fut>(what: &str, mut op: F) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PortError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "{what} failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

impl Pipeline {
    pub fn new(deps: PipelineDeps, settings: Settings) -> Self {
        Pipeline { deps, settings, in_flight: InFlight::default() }
    }

    /// Messages currently held (received, not yet deleted or handed back).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// Runs until `stop` turns true, then finishes the work in hand. If that takes longer
    /// than the shutdown grace, what is left is handed back to the queue (visibility 0)
    /// for another worker. Returns when everything held is either done or handed back.
    pub async fn run<R: Recognizer>(self, recognizer: R, stop: watch::Receiver<bool>) {
        let Pipeline { deps, settings, in_flight } = self;
        let settings = Arc::new(settings);
        // Capacity 1 everywhere, and each stage reserves its slot before starting the next
        // batch: at most one batch waits between two stages (batch N+1 prefetched while N is
        // in the engine), so a slow stage holds back the earlier ones instead of piling up.
        let (received_tx, received_rx) = mpsc::channel::<Batch>(1);
        let (prepared_tx, prepared_rx) = mpsc::channel::<Batch>(1);
        let (inferred_tx, inferred_rx) = mpsc::channel::<Batch>(1);
        let (heartbeat_stop_tx, heartbeat_stop_rx) = watch::channel(false);

        let heartbeat = tokio::spawn(heartbeat::run(
            deps.source.clone(),
            in_flight.clone(),
            settings.visibility,
            heartbeat_stop_rx,
        ));
        let receive =
            tokio::spawn(receive_stage(deps.clone(), settings.clone(), in_flight.clone(), received_tx, stop.clone()));
        let prefetch = tokio::spawn(prefetch_stage(deps.clone(), settings.clone(), received_rx, prepared_tx));
        let metrics = deps.metrics.clone();
        let infer = std::thread::Builder::new()
            .name("ocr-infer".into())
            .spawn(move || infer_stage(recognizer, metrics, prepared_rx, inferred_tx))
            .expect("spawning the inference thread");
        let persist = tokio::spawn(persist_stage(deps.clone(), settings.clone(), in_flight.clone(), inferred_rx));

        // Normal operation: the stages end one after the other once receiving stops.
        let mut stop_wait = stop.clone();
        let _ = stop_wait.wait_for(|s| *s).await;
        tracing::info!(in_flight = in_flight.len(), "stopping: finishing the work in hand");
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            let _ = receive.await;
            let _ = prefetch.await;
            let _ = persist.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(in_flight = in_flight.len(), "shutdown grace ran out: handing back unfinished messages");
        }
        let _ = heartbeat_stop_tx.send(true);
        let _ = heartbeat.await;
        release_all(&deps, &in_flight).await;
        if drained.is_ok() {
            let _ = infer.join();
        }
    }
}

/// Hands every held message back to its queue at once.
async fn release_all(deps: &PipelineDeps, in_flight: &InFlight) {
    for (priority, handles) in in_flight.take_all() {
        for chunk in handles.chunks(10) {
            if let Err(e) = deps.source.set_visibility(priority, chunk, Duration::ZERO).await {
                tracing::warn!(error = %e, "handing messages back failed; they return after their visibility timeout");
            }
        }
    }
    deps.metrics.in_flight.set(0);
}

/// How many of the next `remaining` jobs to ask of each queue.
fn split(remaining: usize, bulk_reserved: usize, express_done: bool, bulk_done: bool) -> (usize, usize) {
    match (express_done, bulk_done) {
        (true, true) => (0, 0),
        (true, false) => (0, remaining),
        (false, true) => (remaining, 0),
        (false, false) => {
            let bulk = bulk_reserved.min(remaining);
            (remaining - bulk, bulk)
        }
    }
}

/// Receives up to `batch_max` deliveries: express first, with `bulk_share` of the batch kept
/// for bulk while bulk has work (and the other's slack when one queue runs dry).
async fn gather(deps: &PipelineDeps, settings: &Settings, stop: &watch::Receiver<bool>) -> Vec<Delivery> {
    let max = settings.batch_max.max(1);
    let bulk_quota = ((max as f64) * settings.bulk_share.clamp(0.0, 1.0)).ceil() as usize;
    let mut batch: Vec<Delivery> = Vec::with_capacity(max);
    let (mut express_done, mut bulk_done) = (false, false);
    let mut deadline: Option<Instant> = None;
    loop {
        if *stop.borrow() || batch.len() >= max || deadline.is_some_and(|d| Instant::now() >= d) {
            return batch;
        }
        let bulk_have = batch.iter().filter(|d| d.priority == Priority::Bulk).count();
        let (want_express, want_bulk) =
            split(max - batch.len(), bulk_quota.saturating_sub(bulk_have), express_done, bulk_done);
        if want_express + want_bulk == 0 {
            if batch.is_empty() {
                // Both queues looked empty; look again (the next round long-polls).
                (express_done, bulk_done) = (false, false);
                continue;
            }
            return batch;
        }
        // Long-poll only while the batch is empty; once it has jobs, only top it up.
        let wait = if batch.is_empty() { settings.receive_wait } else { Duration::ZERO };
        let mut calls = Vec::new();
        for (priority, want) in [(Priority::Express, want_express), (Priority::Bulk, want_bulk)] {
            let mut left = want;
            while left > 0 {
                let n = left.min(10);
                left -= n;
                let source = deps.source.clone();
                calls.push(async move { (priority, n, source.receive(priority, n, wait).await) });
            }
        }
        let started = Instant::now();
        let results = futures::future::join_all(calls).await;
        deps.metrics.stage("receive", started.elapsed());
        let mut got = [0usize; 2];
        let mut asked = [0usize; 2];
        for (priority, n, result) in results {
            let slot = if priority == Priority::Express { 0 } else { 1 };
            asked[slot] += n;
            match result {
                Ok(deliveries) => {
                    got[slot] += deliveries.len();
                    batch.extend(deliveries);
                }
                Err(e) => {
                    tracing::warn!(error = %e, %priority, "receive failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        express_done |= asked[0] > 0 && got[0] < asked[0];
        bulk_done |= asked[1] > 0 && got[1] < asked[1];
        if !batch.is_empty() && deadline.is_none() {
            deadline = Some(Instant::now() + settings.batch_wait);
        }
    }
}

async fn receive_stage(
    deps: PipelineDeps,
    settings: Arc<Settings>,
    in_flight: InFlight,
    tx: mpsc::Sender<Batch>,
    stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            break;
        }
        // Wait for room downstream before taking messages: a held message's clock is ticking.
        let Ok(permit) = tx.reserve().await else { break };
        let deliveries = gather(&deps, &settings, &stop).await;
        if deliveries.is_empty() {
            continue;
        }
        for d in &deliveries {
            in_flight.add(d.priority, &d.receipt_handle);
        }
        deps.metrics.in_flight.set(in_flight.len() as i64);
        deps.metrics.batch_size.observe(deliveries.len() as f64);
        let items = deliveries
            .into_iter()
            .map(|delivery| Item { delivery, job: None, state: State::Ack(String::new()) })
            .collect();
        permit.send(Batch { items });
    }
    tracing::debug!("receive stage stopped");
}

async fn prefetch_stage(
    deps: PipelineDeps,
    settings: Arc<Settings>,
    mut rx: mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Batch>,
) {
    let decode_permits = Arc::new(Semaphore::new(settings.decode_concurrency.max(1)));
    while let Some(batch) = rx.recv().await {
        let Ok(permit) = tx.reserve().await else { break };
        let started = Instant::now();
        let batch = prepare(&deps, &settings, &decode_permits, batch).await;
        deps.metrics.stage("prefetch", started.elapsed());
        permit.send(batch);
    }
    tracing::debug!("prefetch stage stopped");
}

/// Parses the messages, marks their jobs processing, downloads and decodes their images.
async fn prepare(deps: &PipelineDeps, settings: &Settings, decode_permits: &Arc<Semaphore>, mut batch: Batch) -> Batch {
    let mut messages: Vec<Option<JobMessage>> = Vec::with_capacity(batch.items.len());
    for item in &mut batch.items {
        match JobMessage::parse(&item.delivery.body) {
            Ok(m) if m.bucket != settings.bucket => {
                item.state = State::Unreadable(format!("message names bucket {:?}, not ours", m.bucket));
                messages.push(None);
            }
            Ok(m) => messages.push(Some(m)),
            Err(e) => {
                tracing::error!(message_id = %item.delivery.message_id, error = %e, "unreadable job message");
                item.state = State::Unreadable(e.to_string());
                messages.push(None);
            }
        }
    }
    let ids: Vec<JobId> = messages.iter().flatten().map(|m| m.job_id).collect();
    let taken = match with_retry("marking jobs processing", || deps.store.take(&ids, now_ms())).await {
        Ok(t) => t,
        Err(e) => {
            for (item, m) in batch.items.iter_mut().zip(&messages) {
                if m.is_some() {
                    item.state = State::Failed(ImageFailure { reason: format!("database: {e}"), retryable: true });
                }
            }
            return batch;
        }
    };

    let mut downloads = Vec::new();
    for (index, (item, message)) in batch.items.iter_mut().zip(messages).enumerate() {
        let Some(message) = message else { continue };
        let Some(job) = taken.iter().find(|j| j.id == message.job_id).cloned() else {
            tracing::warn!(job_id = %message.job_id, "message for an unknown job");
            item.state = State::Ack("unknown job".into());
            continue;
        };
        item.job = Some(job.clone());
        if !matches!(job.status, JobStatus::Queued | JobStatus::Processing) {
            // Delivered again after it ended (or it was deleted): keep what is stored.
            tracing::info!(job_id = %job.id, status = %job.status, "job already ended; acknowledging");
            item.state = State::Ack(format!("job is {}", job.status));
            continue;
        }
        let objects = deps.objects.clone();
        let permits = decode_permits.clone();
        let max_pixels = settings.max_pixels;
        downloads.push(async move {
            let state = match objects.get(&message.key).await {
                Ok(bytes) => {
                    let _permit = permits.acquire_owned().await.expect("semaphore never closed");
                    match tokio::task::spawn_blocking(move || ocr_engine::decode_image(&bytes, max_pixels)).await {
                        Ok(Ok(image)) => State::Ready(image),
                        Ok(Err(e)) => State::Failed(ImageFailure::from(&e)),
                        Err(e) => {
                            State::Failed(ImageFailure { reason: format!("decoder crashed: {e}"), retryable: false })
                        }
                    }
                }
                Err(PortError::NotFound) => {
                    State::Failed(ImageFailure { reason: "the image is not in storage".into(), retryable: false })
                }
                Err(e) => State::Failed(ImageFailure {
                    reason: format!("downloading the image: {e}"),
                    retryable: e.is_retryable(),
                }),
            };
            (index, state)
        });
    }
    let mut results = futures::stream::iter(downloads).buffer_unordered(settings.prefetch_concurrency.max(1));
    while let Some((index, state)) = results.next().await {
        batch.items[index].state = state;
    }
    batch
}

/// Runs on its own thread: the engine's calls block for the length of a batch.
fn infer_stage<R: Recognizer>(
    mut recognizer: R,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Batch>,
    tx: mpsc::Sender<Batch>,
) {
    while let Some(mut batch) = rx.blocking_recv() {
        let mut slots = Vec::new();
        let mut images = Vec::new();
        for (i, item) in batch.items.iter_mut().enumerate() {
            if matches!(item.state, State::Ready(_)) {
                let State::Ready(image) = std::mem::replace(&mut item.state, State::Ack(String::new())) else {
                    unreachable!()
                };
                slots.push(i);
                images.push(image);
            }
        }
        if !images.is_empty() {
            let started = Instant::now();
            // A panic inside the engine fails this batch's attempt, not the worker.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| recognizer.recognize(&images)));
            let took = started.elapsed();
            metrics.engine_busy(took);
            metrics.stage("infer", took);
            let results = match outcome {
                Ok(r) if r.len() == images.len() => r,
                Ok(r) => {
                    let reason = format!("engine returned {} results for {} images", r.len(), images.len());
                    vec![Err(ImageFailure { reason, retryable: true }); images.len()]
                }
                Err(_) => {
                    vec![Err(ImageFailure { reason: "the engine panicked".into(), retryable: true }); images.len()]
                }
            };
            for (slot, result) in slots.into_iter().zip(results) {
                batch.items[slot].state = match result {
                    Ok(r) => State::Done(r),
                    Err(f) => State::Failed(f),
                };
            }
        }
        if tx.blocking_send(batch).is_err() {
            break;
        }
    }
    tracing::debug!("infer stage stopped");
}

async fn persist_stage(
    deps: PipelineDeps,
    settings: Arc<Settings>,
    in_flight: InFlight,
    mut rx: mpsc::Receiver<Batch>,
) {
    while let Some(batch) = rx.recv().await {
        let started = Instant::now();
        persist(&deps, &settings, &in_flight, batch).await;
        deps.metrics.stage("persist", started.elapsed());
        deps.metrics.in_flight.set(in_flight.len() as i64);
    }
    tracing::debug!("persist stage stopped");
}

/// Writes the batch's results in one transaction, and only then deletes their messages;
/// records failures; hands failed deliveries back for a retry or, on the last attempt,
/// marks the job failed and leaves the message for the dead-letter queue.
async fn persist(deps: &PipelineDeps, settings: &Settings, in_flight: &InFlight, batch: Batch) {
    let now = now_ms();
    let results: Vec<(JobId, OcrResult)> = batch
        .items
        .iter()
        .filter_map(|i| match (&i.state, i.job_id()) {
            (State::Done(r), Some(id)) => Some((id, r.clone())),
            _ => None,
        })
        .collect();
    let written = match with_retry("writing results", || deps.store.complete(&results, now)).await {
        Ok(w) => Ok(w),
        Err(e) => {
            tracing::error!(error = %e, "writing results failed for good");
            Err(e.to_string())
        }
    };

    let mut delete: Vec<&Item> = Vec::new();
    let mut retry: Vec<(&Item, Duration)> = Vec::new();
    for item in &batch.items {
        let job_id = item.job_id();
        let span = tracing::info_span!("job", job_id = job_id.map(|i| i.to_string()).unwrap_or_default());
        let _enter = span.enter();
        match &item.state {
            State::Done(_) => match &written {
                Ok(w) => {
                    delete.push(item);
                    let job = item.job.as_ref().expect("done items have a job");
                    if w.contains(&job.id) {
                        let latency = job.queued_at_ms.map(|q| Duration::from_millis((now - q).max(0) as u64));
                        deps.metrics.succeeded(item.delivery.priority, latency);
                        tracing::info!(attempt = item.delivery.receive_count, "job succeeded");
                        notify(deps, job, JobStatus::Succeeded);
                    }
                }
                Err(reason) => {
                    tracing::warn!(%reason, "result not stored; the job will be retried");
                    retry.push((item, backoff(settings.retry_backoff, item.delivery.receive_count)));
                }
            },
            State::Ack(reason) => {
                tracing::debug!(%reason, "acknowledging without a result");
                delete.push(item);
            }
            State::Failed(failure) => {
                let job = item.job.as_ref();
                if item.delivery.receive_count >= settings.max_attempts {
                    if let Some(job) = job {
                        match with_retry("marking a job failed", || deps.store.fail(&job.id, &failure.reason, now))
                            .await
                        {
                            Ok(true) => {
                                deps.metrics.failed(item.delivery.priority);
                                tracing::warn!(reason = %failure.reason, attempts = item.delivery.receive_count, "job failed");
                                notify(deps, job, JobStatus::Failed);
                            }
                            Ok(false) => {}
                            Err(e) => tracing::error!(error = %e, "could not mark the job failed"),
                        }
                    }
                    // Visible again at once: the next receive moves it to the dead-letter queue.
                    retry.push((item, Duration::ZERO));
                } else {
                    deps.metrics
                        .attempt_errors
                        .get_or_create(&crate::metrics::PriorityLabel { priority: item.delivery.priority.as_str() })
                        .inc();
                    tracing::warn!(reason = %failure.reason, attempt = item.delivery.receive_count, "attempt failed; will retry");
                    if let Some(job) = job {
                        let _ = deps.store.note_attempt_error(&job.id, &failure.reason, now).await;
                    }
                    retry.push((item, backoff(settings.retry_backoff, item.delivery.receive_count)));
                }
            }
            State::Unreadable(reason) => {
                tracing::error!(message_id = %item.delivery.message_id, %reason, "unreadable message; leaving it for the dead-letter queue");
                retry.push((
                    item,
                    if item.delivery.receive_count >= settings.max_attempts {
                        Duration::ZERO
                    } else {
                        backoff(settings.retry_backoff, item.delivery.receive_count)
                    },
                ));
            }
            State::Ready(_) => unreachable!("every ready image went through the engine"),
        }
    }

    for priority in Priority::ALL {
        let handles: Vec<String> = delete
            .iter()
            .filter(|i| i.delivery.priority == priority)
            .map(|i| i.delivery.receipt_handle.clone())
            .collect();
        for chunk in handles.chunks(10) {
            match deps.source.delete(priority, chunk).await {
                Ok(failed) if !failed.is_empty() => {
                    tracing::warn!(
                        failed = failed.len(),
                        "some deletes failed; those messages will be seen again and acknowledged"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "deleting messages failed; they will be seen again and acknowledged")
                }
            }
        }
        for (visibility, group) in group_by_visibility(&retry, priority) {
            if let Err(e) = deps.source.set_visibility(priority, &group, visibility).await {
                tracing::warn!(error = %e, "handing messages back failed; they return after their visibility timeout");
            }
        }
    }
    for item in &batch.items {
        in_flight.remove(&item.delivery.receipt_handle);
    }
}

fn group_by_visibility(retry: &[(&Item, Duration)], priority: Priority) -> Vec<(Duration, Vec<String>)> {
    let mut groups: Vec<(Duration, Vec<String>)> = Vec::new();
    for (item, visibility) in retry.iter().filter(|(i, _)| i.delivery.priority == priority) {
        match groups.iter_mut().find(|(v, g)| v == visibility && g.len() < 10) {
            Some((_, g)) => g.push(item.delivery.receipt_handle.clone()),
            None => groups.push((*visibility, vec![item.delivery.receipt_handle.clone()])),
        }
    }
    groups
}

/// Delay before a failed delivery is tried again: base, 2×base, 4×base … (at most a minute).
fn backoff(base: Duration, receive_count: u32) -> Duration {
    (base * 2u32.saturating_pow(receive_count.clamp(1, 6) - 1)).min(Duration::from_secs(60))
}

fn notify(deps: &PipelineDeps, job: &TakenJob, status: JobStatus) {
    let Some(url) = &job.callback_url else { return };
    let n = Notification { job_id: job.id, status, callback_url: url.clone() };
    // Never wait on webhooks here: a full queue drops the call (and says so).
    if deps.notify.try_send(n).is_err() {
        deps.metrics.webhook("dropped");
        tracing::warn!(job_id = %job.id, "webhook queue full; notification dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_keeps_bulks_share_and_gives_slack_away() {
        assert_eq!(split(32, 8, false, false), (24, 8));
        assert_eq!(split(5, 8, false, false), (0, 5));
        assert_eq!(split(32, 0, false, false), (32, 0));
        assert_eq!(split(20, 8, true, false), (0, 20));
        assert_eq!(split(20, 8, false, true), (20, 0));
        assert_eq!(split(20, 8, true, true), (0, 0));
    }
}
