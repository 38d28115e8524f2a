//! The pipeline on in-memory fakes and a fake recognizer: batching, priorities,
//! retries, the dead-letter path and idempotent redelivery, without AWS or models.
//! Tests of what happens to one batch drive it with `Pipeline::process_once`; only those about
//! the stages running side by side start `Pipeline::run`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpu_worker::metrics::Metrics;
use gpu_worker::pipeline::{Pipeline, PipelineDeps, Settings};
use gpu_worker::{ImageFailure, Recognizer};
use image::RgbImage;
use ocr_core::fakes::{InMemoryJobSource, InMemoryJobStore, InMemoryObjectStore};
use ocr_core::ports::ObjectStore;
use ocr_core::{ContentType, Job, JobId, JobMessage, JobStatus, NewJob, OcrLine, OcrResult, Priority};
use tokio::sync::{mpsc, watch};

/// "Reads" an image as its width; widths of 13 pixels fail like an engine error.
#[derive(Clone, Default)]
struct FakeRecognizer {
    calls: Arc<Mutex<Vec<Vec<u32>>>>,
    /// How long each call takes (an engine batch's time).
    delay: Duration,
}

impl Recognizer for FakeRecognizer {
    fn recognize(&mut self, images: &[RgbImage]) -> Vec<Result<OcrResult, ImageFailure>> {
        self.calls.lock().unwrap().push(images.iter().map(|i| i.width()).collect());
        std::thread::sleep(self.delay);
        images
            .iter()
            .map(|i| {
                if i.width() == 13 {
                    return Err(ImageFailure { reason: "cannot read width 13".into(), retryable: false });
                }
                let line = OcrLine {
                    text: format!("width {}", i.width()),
                    confidence: 1.0,
                    bbox: [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
                    words: Vec::new(),
                };
                Ok(OcrResult::image(i.width(), i.height(), vec![line], 0.0))
            })
            .collect()
    }
}

fn png(width: u32) -> Vec<u8> {
    let img = image::GrayImage::from_pixel(width, 8, image::Luma([255]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

struct World {
    store: Arc<InMemoryJobStore>,
    objects: Arc<InMemoryObjectStore>,
    source: Arc<InMemoryJobSource>,
    recognizer: FakeRecognizer,
    settings: Settings,
}

impl World {
    fn new() -> Self {
        let settings = Settings {
            batch_max: 8,
            batch_wait: Duration::from_millis(20),
            receive_wait: Duration::from_millis(50),
            visibility: Duration::from_millis(400),
            retry_backoff: Duration::from_millis(30),
            bucket: "test-bucket".into(),
            shutdown_grace: Duration::from_secs(5),
            ..Settings::default()
        };
        World {
            store: Arc::new(InMemoryJobStore::default()),
            objects: Arc::new(InMemoryObjectStore::default()),
            source: Arc::new(InMemoryJobSource::new(settings.visibility, 3)),
            recognizer: FakeRecognizer::default(),
            settings,
        }
    }

    /// A queued job whose image is `bytes`, with its message on the queue.
    async fn job(&self, priority: Priority, bytes: Vec<u8>) -> JobId {
        self.job_as(priority, bytes, |_| {}).await
    }

    /// Like [`World::job`], with its message's JSON changed by `edit` first.
    async fn job_as(&self, priority: Priority, bytes: Vec<u8>, edit: impl FnOnce(&mut serde_json::Value)) -> JobId {
        let id = JobId::new();
        let job = Job::from_new(NewJob {
            id,
            owner: "alice".into(),
            priority,
            content_type: ContentType::Png,
            content_length: bytes.len() as u64,
            callback_url: None,
            metadata: None,
            idempotency: None,
            created_at_ms: 1,
        });
        let key = job.object_key();
        self.objects.put(&key, ContentType::Png.as_str(), bytes.clone().into()).await.unwrap();
        let message = JobMessage::for_job(&job, "test-bucket", bytes.len() as u64, 2);
        self.store.insert_queued(job);
        let mut body: serde_json::Value = serde_json::from_str(&message.to_json()).unwrap();
        edit(&mut body);
        self.source.push(priority, body.to_string());
        id
    }

    /// Runs the pipeline until both queues are empty (or `limit` passes), then stops it.
    /// The ports on this world's fakes; notifications go nowhere.
    fn deps(&self) -> PipelineDeps {
        let (notify, _rx) = mpsc::channel(100);
        PipelineDeps {
            source: self.source.clone(),
            store: self.store.clone(),
            objects: self.objects.clone(),
            metrics: Metrics::new(),
            notify,
        }
    }

    async fn run_until_empty(&self, limit: Duration) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let pipeline = Pipeline::new(self.deps(), self.settings.clone());
        let running = tokio::spawn(pipeline.run(self.recognizer.clone(), stop_rx));
        let deadline = tokio::time::Instant::now() + limit;
        while self.source.len(Priority::Express) + self.source.len(Priority::Bulk) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), running).await.expect("stops in time").unwrap();
    }

    fn pipeline(&self) -> Pipeline {
        // No waiting anywhere: a failed attempt is visible again at once, receives do not
        // long-poll, so each call of process_once is one deterministic step.
        let settings = Settings {
            retry_backoff: Duration::ZERO,
            receive_wait: Duration::ZERO,
            batch_wait: Duration::ZERO,
            ..self.settings.clone()
        };
        Pipeline::new(self.deps(), settings)
    }

    /// Batches (each one through every stage) until both queues are empty; returns each batch's size.
    async fn process_all(&self) -> Vec<usize> {
        let pipeline = self.pipeline();
        let mut recognizer = self.recognizer.clone();
        let mut sizes = Vec::new();
        loop {
            match pipeline.process_once(&mut recognizer).await {
                0 => return sizes,
                n => sizes.push(n),
            }
            assert!(sizes.len() < 100, "the queues never emptied: {sizes:?}");
        }
    }

    async fn status(&self, id: JobId) -> Job {
        use ocr_core::ports::JobStore;
        self.store.get(&id).await.unwrap().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_gets_one_result_in_bounded_batches() {
    let w = World::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        let priority = if i % 3 == 0 { Priority::Bulk } else { Priority::Express };
        ids.push((w.job(priority, png(20 + i)).await, 20 + i));
    }
    w.run_until_empty(Duration::from_secs(20)).await;
    for (id, width) in ids {
        let job = w.status(id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{id}");
        assert_eq!(job.attempts, 1);
        assert_eq!(w.store.result(&id).unwrap().text, format!("width {width}"));
    }
    let calls = w.recognizer.calls.lock().unwrap();
    assert!(calls.iter().all(|c| c.len() <= 8), "batches hold at most BATCH_MAX: {calls:?}");
    assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 30, "each image read once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_keeps_its_share_while_express_is_busy() {
    let w = World::new();
    for i in 0..24 {
        w.job(Priority::Express, png(100 + i)).await;
    }
    for i in 0..4 {
        w.job(Priority::Bulk, png(300 + i)).await;
    }
    w.run_until_empty(Duration::from_secs(20)).await;
    let calls = w.recognizer.calls.lock().unwrap();
    let first = &calls[0];
    let bulk = first.iter().filter(|w| **w >= 300).count();
    // BATCH_MAX 8 and a 25% share: 2 of the first 8 are bulk although express has 24 waiting.
    assert_eq!(bulk, 2, "first batch {first:?}");
    assert_eq!(first.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_tried_three_times_then_failed_and_dead_lettered() {
    let w = World::new();
    let good: Vec<JobId> = express_jobs(&w, 5).await;
    let corrupt = w.job(Priority::Express, b"\x89PNG\r\n\x1a\n this is not a png".to_vec()).await;
    let unreadable = w.job(Priority::Bulk, png(13)).await;
    let batches = w.process_all().await;
    // All seven, then the two failing ones on their second and third delivery; the fourth
    // receive moves them to the dead-letter queue and finds nothing.
    assert_eq!(batches, [7, 2, 2]);
    for id in good {
        assert_eq!(w.status(id).await.status, JobStatus::Succeeded);
    }
    for id in [corrupt, unreadable] {
        let job = w.status(id).await;
        assert_eq!(job.status, JobStatus::Failed, "{id}");
        assert_eq!(job.attempts, 3, "tried three times");
        assert!(job.error.as_deref().is_some_and(|e| !e.is_empty()));
    }
    let dead = w.source.dead_letters();
    assert_eq!(dead.len(), 2, "{dead:?}");
}

async fn express_jobs(w: &World, n: u32) -> Vec<JobId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(w.job(Priority::Express, png(40 + i)).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_finished_job_keeps_its_result() {
    let w = World::new();
    let id = w.job(Priority::Bulk, png(50)).await;
    assert_eq!(w.process_all().await, [1]);
    let first = w.store.result(&id).unwrap();
    // The same message again (as after a lost delete).
    let job = w.status(id).await;
    w.source.push(Priority::Bulk, JobMessage::for_job(&job, "test-bucket", 10, 3).to_json());
    assert_eq!(w.process_all().await, [1]);
    assert_eq!(w.store.result(&id).unwrap(), first);
    let job = w.status(id).await;
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(job.attempts, 1, "a finished job is not taken again");
    assert_eq!(w.recognizer.calls.lock().unwrap().len(), 1, "and not read again");
    assert!(w.source.dead_letters().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_messages_go_to_the_dead_letter_queue_untouched() {
    let w = World::new();
    // An older version no worker writes any more (a newer one is requeued: see below).
    w.source.push(Priority::Express, "{\"v\":0}");
    w.source.push(Priority::Express, "not json");
    let ok = w.job(Priority::Express, png(33)).await;
    assert_eq!(w.process_all().await, [3, 2, 2]);
    assert_eq!(w.status(ok).await.status, JobStatus::Succeeded);
    assert_eq!(w.source.dead_letters().len(), 2);
}

#[tokio::test]
async fn process_once_on_empty_queues_settles_nothing() {
    let w = World::new();
    let pipeline = w.pipeline();
    assert_eq!(pipeline.process_once(&mut w.recognizer.clone()).await, 0);
    assert!(pipeline.in_flight().is_empty());
}

#[tokio::test]
async fn a_job_deleted_while_queued_is_acknowledged_unread() {
    use ocr_core::ports::JobStore;
    let w = World::new();
    let id = w.job(Priority::Express, png(21)).await;
    w.store.mark_deleted(&id, 2).await.unwrap();
    assert_eq!(w.process_all().await, [1]);
    assert_eq!(w.status(id).await.status, JobStatus::Deleted);
    assert!(w.recognizer.calls.lock().unwrap().is_empty(), "nothing read");
    assert_eq!(w.source.len(Priority::Express), 0, "message deleted");
    assert!(w.source.dead_letters().is_empty());
}

/// A rolling deploy: a message of a newer version than this worker reads is sent again for a
/// newer worker, three times in a row and more, never dead-lettered nor counted as an attempt;
/// its batch-mates are read as usual.
#[tokio::test]
async fn a_newer_workers_message_is_requeued_not_dead_lettered() {
    let world = World::new();
    let current = world.job(Priority::Bulk, png(200)).await;
    let newer = world
        .job_as(Priority::Bulk, png(200), |m| {
            m["v"] = 2.into();
            m["pages"] = 1.into(); // a field this build does not know
        })
        .await;
    let pipeline = world.pipeline();
    let mut recognizer = world.recognizer.clone();
    assert_eq!(pipeline.process_once(&mut recognizer).await, 2);
    assert_eq!(world.status(current).await.status, JobStatus::Succeeded);
    // The newer message is a new one now: receive count 0, requeued once, hidden for its delay.
    assert_eq!(world.source.counts(Priority::Bulk), vec![(0, 1)]);
    use ocr_core::worker::JobSource;
    assert!(world.source.receive(Priority::Bulk, 10, Duration::ZERO).await.unwrap().is_empty(), "delayed");
    let job = world.status(newer).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Queued, 0), "untouched: not an attempt");
    assert!(world.source.dead_letters().is_empty());
}

/// Issue 12 (8): the decoded-pixel budget. A batch decodes no more than half the budget (so the
/// next one can be decoded while it is in the engine); what does not fit goes back as a new
/// message (no attempt used) and is read in a later batch; an image larger than a batch's
/// share goes through alone. Every job ends with its result, none failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoded_pixel_budget_bounds_each_batch_and_loses_nothing() {
    let mut w = World::new();
    // 16,000 pixels: 8,000 a batch. The images are 8 pixels high.
    w.settings.pixel_budget = 16_000;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(w.job(Priority::Bulk, png(400)).await); // 3,200 pixels
    }
    ids.push(w.job(Priority::Bulk, png(3000)).await); // 24,000: over the whole budget
    ids.push(w.job(Priority::Express, png(900)).await); // 7,200
    w.run_until_empty(Duration::from_secs(30)).await;

    let calls = w.recognizer.calls.lock().unwrap().clone();
    for call in &calls {
        let pixels: u32 = call.iter().map(|width| width * 8).sum();
        assert!(pixels <= 8_000 || call.len() == 1, "a batch decoded {pixels} pixels: {calls:?}");
    }
    assert!(calls.iter().any(|c| c == &vec![3000]), "the oversized image went through alone: {calls:?}");
    let jobs = w.store.all();
    for id in &ids {
        let job = jobs.iter().find(|j| j.id == *id).unwrap();
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    }
    let read: usize = calls.iter().map(Vec::len).sum();
    assert_eq!(read, ids.len(), "each image read once: {calls:?}");
    assert!(w.source.dead_letters().is_empty());
}

/// Issue 15: an express job that arrives during a bulk flood waits behind the batch in the
/// engine only, not also behind the bulk batch already prefetched (nor the ones received
/// behind it, as before the express lane: up to three more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_express_job_waits_behind_one_batch_during_a_bulk_flood() {
    let mut w = World::new();
    w.recognizer.delay = Duration::from_millis(1000);
    for i in 0..80 {
        w.job(Priority::Bulk, png(100 + i)).await;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let pipeline = Pipeline::new(w.deps(), w.settings.clone());
    let running = tokio::spawn(pipeline.run(w.recognizer.clone(), stop_rx));
    let calls = w.recognizer.calls.clone();
    for round in 0..3 {
        // Just after an engine call starts (a bulk batch is prefetched behind it by now).
        let seen = calls.lock().unwrap().len();
        while calls.lock().unwrap().len() == seen {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = calls.lock().unwrap().len();
        let width = 900 + round;
        w.job(Priority::Express, png(width)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let at = loop {
            if let Some(at) = calls.lock().unwrap().iter().position(|c| c.contains(&width)) {
                break at;
            }
            assert!(tokio::time::Instant::now() < deadline, "express job never read");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // `started` calls had begun when it was queued: the next one is its own.
        assert_eq!(at, started, "round {round}: express read in call {at}, queued during call {}", started - 1);
        assert_eq!(calls.lock().unwrap()[at], vec![width], "an express batch of its own");
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running).await.expect("stops in time").unwrap();
}

/// The express lane never starves bulk: with express jobs arriving faster than the engine
/// reads them, bulk still gets its share of every main batch and keeps finishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_keeps_flowing_under_a_stream_of_express_jobs() {
    let mut w = World::new();
    w.recognizer.delay = Duration::from_millis(100);
    for i in 0..40 {
        w.job(Priority::Bulk, png(300 + i)).await;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let pipeline = Pipeline::new(w.deps(), w.settings.clone());
    let running = tokio::spawn(pipeline.run(w.recognizer.clone(), stop_rx));
    // 8 images per 100 ms at most are read; 20 express jobs are queued every 100 ms.
    for i in 0..20 {
        for j in 0..20 {
            w.job(Priority::Express, png(1000 + i * 20 + j)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), running).await.expect("stops in time").unwrap();
    let calls = w.recognizer.calls.lock().unwrap().clone();
    let read: Vec<u32> = calls.iter().flatten().copied().collect();
    let bulk = read.iter().filter(|w| (300..1000).contains(*w)).count();
    // Bulk's share is 2 of 8; the express lane may take a turn between two main batches only
    // while express is short, so bulk gets at least an eighth even at worst.
    assert!(bulk * 8 >= read.len(), "bulk read {bulk} of {}: {calls:?}", read.len());
    assert!(bulk >= 10, "bulk kept finishing: {bulk}");
}

fn tiff(widths: &[u32]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut enc = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
    for &w in widths {
        enc.write_image::<tiff::encoder::colortype::Gray8>(w, 8, &vec![255u8; w as usize * 8]).unwrap();
    }
    out.into_inner()
}

/// A multi-page TIFF is read page by page into one result, its pages counting toward the batch
/// like images; one bad page fails the job, saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_a_document_is_read_into_one_result() {
    let w = World::new();
    let doc = w.job(Priority::Bulk, tiff(&[31, 32, 33])).await;
    let long = w.job(Priority::Bulk, tiff(&[40, 41, 42, 43, 44, 45, 46, 47, 48, 49])).await;
    let bad = w.job(Priority::Bulk, tiff(&[50, 13, 52])).await;
    let image = w.job(Priority::Bulk, png(60)).await;
    // The 10-page document is deferred (requeued after a second) when it does not fit a batch.
    w.run_until_empty(Duration::from_secs(20)).await;

    let result = w.store.result(&doc).unwrap();
    let texts: Vec<&str> = result.pages.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, ["width 31", "width 32", "width 33"]);
    assert_eq!(result.pages.iter().map(|p| p.page).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(result.text, "width 31\u{c}width 32\u{c}width 33");
    assert_eq!(w.store.result(&long).unwrap().pages.len(), 10);
    assert_eq!(w.store.result(&image).unwrap().text, "width 60");
    let failed = w.status(bad).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(failed.error.as_deref().unwrap_or_default().contains("page 2: cannot read width 13"), "{failed:?}");
    // At most BATCH_MAX (8) pages per engine call: the 10-page document went through alone, in
    // two calls.
    let calls = w.recognizer.calls.lock().unwrap();
    assert!(calls.iter().all(|c| c.len() <= 8), "{calls:?}");
    assert!(calls.iter().any(|c| c == &[48, 49]), "{calls:?}");
}

/// An express job that arrives while a long document is being read is read between the
/// document's engine calls, not after all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_jobs_go_between_the_pages_of_a_long_document() {
    let mut w = World::new();
    w.recognizer.delay = Duration::from_millis(1000);
    let widths: Vec<u32> = (100..124).collect();
    let doc = w.job(Priority::Bulk, tiff(&widths)).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let pipeline = Pipeline::new(w.deps(), w.settings.clone());
    let running = tokio::spawn(pipeline.run(w.recognizer.clone(), stop_rx));
    let calls = w.recognizer.calls.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while calls.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let urgent = w.job(Priority::Express, png(77)).await;
    while (w.status(doc).await.status != JobStatus::Succeeded || w.status(urgent).await.status != JobStatus::Succeeded)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running).await.expect("stops in time").unwrap();
    assert_eq!(w.store.result(&doc).unwrap().pages.len(), 24);
    assert_eq!(w.store.result(&urgent).unwrap().text, "width 77");
    let calls = calls.lock().unwrap();
    let express_at = calls.iter().position(|c| c == &[77]).expect("the express image was read");
    let last_page_at = calls.iter().rposition(|c| c.contains(&123)).unwrap();
    assert!(express_at < last_page_at, "the express job waited for the whole document: {calls:?}");
    assert!(calls.iter().all(|c| c.len() <= 8), "{calls:?}");
}
