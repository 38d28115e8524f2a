//! The worker's pipeline, one file per stage:
//!
//! ```text
//!            ┌─ main lane:    gather ─▶ prefetch ──(1)─┐
//! intake ────┤                                         ├─▶ infer (own thread) ──(1)──▶ persist ──▶ webhooks
//! (receive)  └─ express lane: gather ─▶ prefetch ──(1)─┘
//! ```
//!
//! [`Pipeline::run`] joins the stages with channels of capacity 1 and runs them side by side
//! until stopped; [`Pipeline::process_once`] takes one main-lane batch through all four in
//! turn, which is what tests and tools want.

mod batch;
mod infer;
mod persist;
mod prefetch;
mod receive;

use std::sync::Arc;
use std::time::Duration;

use ocr_core::PortError;
use ocr_core::ports::ObjectStore;
use ocr_core::worker::{JobSource, ResultStore};
use tokio::sync::{mpsc, watch};

pub use batch::{Batch, Hops, Item, Lane, Received, State};
pub use persist::{Decision, NotWritten, Written, decide};

use crate::heartbeat::{self, InFlight};
use crate::metrics::Metrics;
use crate::recognizer::Recognizer;
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
    /// Most pages of one document (`MAX_PAGES`); each page is read as an image.
    pub max_pages: usize,
    pub bucket: String,
    pub shutdown_grace: Duration,
    /// Delay before a failed delivery returns; doubles with each attempt (at most a minute).
    pub retry_backoff: Duration,
    /// How long a batch waits for the database before it gives up and hands its messages back
    /// as new ones (requeued, visible after as long again), which uses none of their attempts.
    pub db_retry_limit: Duration,
    /// Most decoded pixels (3 bytes each) the pipeline holds at once, from decoding until the
    /// engine has read them; a batch takes at most half, so the next one can be decoded while
    /// it is in the engine. Images past a batch's share go back (requeued, no attempt used);
    /// one image larger than the share goes through alone. 0: no budget.
    pub pixel_budget: u64,
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
            max_pages: ocr_engine::DEFAULT_MAX_PAGES,
            bucket: String::new(),
            shutdown_grace: Duration::from_secs(60),
            retry_backoff: Duration::from_secs(2),
            db_retry_limit: Duration::from_secs(60),
            pixel_budget: 0,
        }
    }
}

/// The pipeline; [`Pipeline::run`] drives it until stopped.
pub struct Pipeline {
    deps: PipelineDeps,
    settings: Settings,
    in_flight: InFlight,
    intake: receive::Intake,
}

/// Retries `op` while it fails retryably, waiting longer each time (up to 5 s), until it
/// succeeds, fails for good, or `limit` has passed (then the last error, retryable, is
/// returned). Messages stay invisible meanwhile (heartbeat), so a short outage of the database
/// holds the batch rather than re-queuing work; a long one does not hold it forever: the batch
/// goes back to the queue for whichever worker reaches the database again.
async fn with_retry<T, F, Fut>(what: &str, limit: Duration, op: F) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PortError>>,
{
    use ocr_core::retry::Retryable;
    let started = std::time::Instant::now();
    op.retry(ocr_core::retry::forever(Duration::from_millis(100), Duration::from_secs(5)))
        .when(|e: &PortError| e.is_retryable() && started.elapsed() < limit)
        .notify(|e, delay| tracing::warn!(error = %e, "{what} failed; retrying in {delay:?}"))
        .await
}

impl Pipeline {
    pub fn new(deps: PipelineDeps, settings: Settings) -> Self {
        let in_flight = InFlight::default();
        let intake =
            receive::Intake::new(deps.source.clone(), in_flight.clone(), deps.metrics.clone(), settings.receive_wait);
        Pipeline { deps, settings, in_flight, intake }
    }

    /// Messages currently held (received, not yet deleted or handed back).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// Runs until `stop` turns true, then finishes the work in hand. If that takes longer
    /// than the shutdown grace, what is left is handed back to the queue (visibility 0)
    /// for another worker. Returns when everything held is either done or handed back.
    pub async fn run<R: Recognizer>(self, recognizer: R, stop: watch::Receiver<bool>) {
        let Pipeline { deps, settings, in_flight, intake } = self;
        let settings = Arc::new(settings);
        // Capacity 1 everywhere, and each lane reserves its place before gathering the next
        // batch: at most one batch per lane waits for the engine (batch N+1 prefetched while N
        // is in the engine), so a slow stage holds back the earlier ones instead of piling up.
        let (main_tx, main_rx) = mpsc::channel::<Batch>(1);
        let (express_tx, express_rx) = mpsc::channel::<Batch>(1);
        let (inferred_tx, inferred_rx) = mpsc::channel::<Batch>(1);
        let (heartbeat_stop_tx, heartbeat_stop_rx) = watch::channel(false);
        let (armed_tx, armed_rx) = watch::channel(false);

        let heartbeat = tokio::spawn(heartbeat::run(
            deps.source.clone(),
            in_flight.clone(),
            settings.visibility,
            heartbeat_stop_rx,
        ));
        let shared = prefetch::LaneShared {
            deps: deps.clone(),
            settings: settings.clone(),
            intake: intake.clone(),
            limits: Arc::new(prefetch::Limits::new(&settings)),
        };
        let lane = |which, tx, armed| tokio::spawn(prefetch::lane(which, shared.clone(), tx, armed, stop.clone()));
        let main = lane(Lane::Main, main_tx, prefetch::Armed::Sets(armed_tx));
        let express = lane(Lane::Express, express_tx, prefetch::Armed::Reads(armed_rx));
        let metrics = deps.metrics.clone();
        let batch_max = settings.batch_max;
        let lanes = infer::Lanes {
            main: main_rx,
            express: express_rx,
            runtime: tokio::runtime::Handle::current(),
            last_express: false,
            held: None,
        };
        let infer = std::thread::Builder::new()
            .name("ocr-infer".into())
            .spawn(move || infer::stage(recognizer, metrics, lanes, inferred_tx, batch_max))
            .expect("spawning the inference thread");
        let persist = tokio::spawn(persist::stage(deps.clone(), settings.clone(), in_flight.clone(), inferred_rx));

        // Normal operation: the stages end one after the other once receiving stops.
        let mut stop_wait = stop.clone();
        let _ = stop_wait.wait_for(|s| *s).await;
        tracing::info!(in_flight = in_flight.len(), "stopping: finishing the work in hand");
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            let _ = main.await;
            let _ = express.await;
            // Receives still open end within the receive wait; what they bring is held and
            // in flight, and handed back below.
            intake.close().await;
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

impl Pipeline {
    /// Takes one batch through the four stages in turn, without the heartbeat: receive (long-
    /// polling for at most `receive_wait`), prefetch, infer (the engine call blocks this task),
    /// persist. Returns the number of messages it settled (0 when both queues stayed empty).
    pub async fn process_once<R: Recognizer>(&self, recognizer: &mut R) -> usize {
        let (deps, settings) = (&self.deps, &self.settings);
        let (_running_tx, running) = watch::channel(false);
        let received = self.intake.gather(Lane::Main, settings, &running, None).await;
        if received.is_empty() {
            return 0;
        }
        let batch = Batch::new(Lane::Main, received);
        let n = batch.len();
        let limits = prefetch::Limits::new(settings);
        let mut batch = prefetch::prepare(deps, settings, &limits, batch).await;
        infer::infer(recognizer, &deps.metrics, &mut batch);
        persist::persist(deps, settings, &self.in_flight, batch).await;
        n
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
