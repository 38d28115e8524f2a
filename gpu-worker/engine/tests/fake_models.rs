//! Engine logic with fake models: no ONNX Runtime, no model files.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use image::{ImageFormat, Rgb, RgbImage};
use ndarray::{Array2, Array3, Array4, ArrayD, ArrayView4};
use ocr_engine::manifest::{ClsSpec, DetSpec, RecSpec};
use ocr_engine::{Engine, EngineError, EngineOptions, Model, Models};

/// Detector: text wherever the (normalised) input is dark, i.e. probability 1 where blue < 0.2.
struct FakeDet;
impl Model for FakeDet {
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        let (n, _, h, w) = input.dim();
        // Detector input is ImageNet-normalised blue: (v - 0.485) / 0.229; dark means v < 0.2.
        let dark = (0.2 - 0.485) / 0.229;
        let out =
            Array4::from_shape_fn((n, 1, h, w), |(b, _, y, x)| if input[[b, 0, y, x]] < dark { 1.0 } else { 0.0 });
        Ok(out.into_dyn())
    }
}

/// Recogniser: per crop, "a" if it contains black pixels, "b" if only grey ones; records the
/// batch shapes it saw.
#[derive(Default)]
struct FakeRec {
    calls: Mutex<Vec<Vec<usize>>>,
    classes: usize,
}
impl Model for FakeRec {
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        self.calls.lock().unwrap().push(input.shape().to_vec());
        let (n, _, _, w) = input.dim();
        let t = (w / 8).max(4);
        let mut out = Array3::<f32>::zeros((n, t, self.classes));
        for b in 0..n {
            let min = input.slice(ndarray::s![b, .., .., ..]).iter().copied().fold(f32::MAX, f32::min);
            let class = if min < -0.9 { 1 } else { 2 };
            for step in 0..t {
                // class, blank, class, blank ... decodes to a repeated letter
                let c = if step % 2 == 0 && step < 4 { class } else { 0 };
                out[[b, step, c]] = 0.9;
            }
        }
        Ok(out.into_dyn())
    }
}

/// A classifier that always answers `class` with probability `p`.
struct FakeCls {
    classes: usize,
    class: usize,
    p: f32,
}
impl Model for FakeCls {
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        let n = input.shape()[0];
        let rest = (1.0 - self.p) / (self.classes - 1) as f32;
        let out = Array2::from_shape_fn((n, self.classes), |(_, c)| if c == self.class { self.p } else { rest });
        Ok(out.into_dyn())
    }
}

fn det_spec() -> DetSpec {
    DetSpec::ppocr(PathBuf::new())
}

fn rec_spec() -> RecSpec {
    RecSpec { model: PathBuf::new(), dict: PathBuf::new(), height: 48, min_width: 32, max_width: 3200 }
}

fn engine_with(rec: Arc<FakeRec>, orientation: Option<usize>) -> Engine {
    engine_with_models(rec, orientation.map(|class| (class, 0.99)))
}

/// An engine with this recogniser and, when given, an orientation model that always answers
/// `(class, probability)`.
fn engine_with_models(rec: Arc<dyn Model>, orientation: Option<(usize, f32)>) -> Engine {
    let models = Models {
        det: Arc::new(FakeDet),
        det_spec: det_spec(),
        rec,
        rec_spec: rec_spec(),
        dict: vec!["a".into(), "b".into()],
        cls: None,
        orientation: orientation.map(|(class, p)| {
            let m: Arc<dyn Model> = Arc::new(FakeCls { classes: 4, class, p });
            (m, ClsSpec { model: PathBuf::new(), height: 224, width: 224, thresh: 0.9 })
        }),
    };
    let opts = EngineOptions {
        orientation: orientation.is_some(),
        rec_batch: 16,
        rec_batch_width: 1 << 20,
        ..Default::default()
    };
    Engine::new(models, opts).unwrap()
}

fn fake_rec() -> Arc<FakeRec> {
    Arc::new(FakeRec { calls: Mutex::new(Vec::new()), classes: 4 })
}

/// White page with a black bar (top left), a grey bar (top right) and a black bar below.
fn page() -> RgbImage {
    let mut img = RgbImage::from_pixel(400, 200, Rgb([255, 255, 255]));
    let mut fill = |x0: u32, y0: u32, x1: u32, y1: u32, v: u8| {
        for y in y0..y1 {
            for x in x0..x1 {
                img.put_pixel(x, y, Rgb([v, v, v]));
            }
        }
    };
    fill(20, 20, 150, 40, 0);
    fill(250, 20, 380, 40, 30);
    fill(20, 120, 300, 140, 0);
    img
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
    out
}

#[test]
fn engine_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Engine>();
}

#[test]
fn lines_come_in_reading_order_with_boxes_in_image_pixels() {
    let engine = engine_with(fake_rec(), None);
    let pages = engine.recognize(&[page()]);
    let page = pages[0].as_ref().unwrap();
    assert_eq!(page.lines.len(), 3, "{page:?}");
    // Top row left then right, then the lower bar.
    let xs: Vec<f32> = page.lines.iter().map(|l| l.quad[0][0]).collect();
    let ys: Vec<f32> = page.lines.iter().map(|l| l.quad[0][1]).collect();
    assert!(xs[0] < 100.0 && xs[1] > 200.0 && ys[2] > 100.0, "{page:?}");
    // Each box covers its bar, grown by the unclip margin but not wildly.
    let b = page.lines[2].quad;
    assert!(b[0][0] <= 21.0 && b[0][0] > 0.0 && b[2][0] >= 299.0 && b[2][0] < 330.0, "{b:?}");
    assert!(b[0][1] <= 121.0 && b[2][1] >= 139.0, "{b:?}");
    assert_eq!(page.text(), "aa\nbb\naa");
    assert!(page.lines.iter().all(|l| (l.confidence - 0.9).abs() < 1e-5));
}

#[test]
fn recognition_batches_span_images() {
    let rec = fake_rec();
    let engine = engine_with(rec.clone(), None);
    let pages = engine.recognize(&[page(), page(), page()]);
    assert!(pages.iter().all(|p| p.as_ref().unwrap().lines.len() == 3));
    let calls = rec.calls.lock().unwrap();
    // 9 crops, batch limit 16: one recogniser call for all three images.
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0][0], 9);
}

#[test]
fn a_bad_image_fails_alone() {
    let engine = engine_with(fake_rec(), None);
    let good = png(&page());
    let res = engine.recognize_bytes(&[&good, b"garbage", &good]);
    assert_eq!(res.len(), 3);
    assert!(res[0].is_ok() && res[2].is_ok());
    let err = res[1].as_ref().unwrap_err();
    assert!(matches!(err, EngineError::UnsupportedFormat), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(res[0].as_ref().unwrap().text(), res[2].as_ref().unwrap().text());
}

#[test]
fn a_turned_page_is_read_and_boxes_map_back() {
    // The page as photographed upside down; the fake orientation model says "180".
    let turned = image::imageops::rotate180(&page());
    let engine = engine_with(fake_rec(), Some(2));
    let p = engine.recognize(&[turned]).pop().unwrap().unwrap();
    assert_eq!(p.rotation, 180);
    assert_eq!(p.lines.len(), 3);
    // First line read is the upright page's top-left bar, which sits bottom-right in the input.
    let q = p.lines[0].quad;
    assert!(q[0][0] > 250.0 && q[0][1] > 150.0, "{q:?}");
    // Corner order follows the text: the first corner is the text's top-left.
    assert!(q[0][0] > q[1][0], "{q:?}");
}

/// Recogniser sure only of upright text: "a" with confidence 0.9 when the crop's top half is
/// darker than its bottom half (the bars of [`marked_page`] as they stand), 0.3 otherwise.
struct UprightRec;
impl Model for UprightRec {
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        let (n, _, h, w) = input.dim();
        let t = (w / 8).max(4);
        let mut out = Array3::<f32>::zeros((n, t, 4));
        for b in 0..n {
            let half = |rows: std::ops::Range<usize>| input.slice(ndarray::s![b, .., rows, ..]).sum();
            let p = if half(0..h / 2) < half(h / 2..h) { 0.9 } else { 0.3 };
            out[[b, 0, 1]] = p;
            for step in 1..t {
                out[[b, step, 0]] = 0.9;
            }
        }
        Ok(out.into_dyn())
    }
}

/// [`page`]'s layout with every bar black in its top half and dark grey in its bottom half,
/// so that the page's way up shows in each line.
fn marked_page() -> RgbImage {
    let mut img = RgbImage::from_pixel(400, 200, Rgb([255, 255, 255]));
    for (x0, y0, x1) in [(20, 20, 150), (250, 20, 380), (20, 120, 300)] {
        for y in y0..y0 + 20 {
            let v = if y < y0 + 10 { 0 } else { 40 };
            for x in x0..x1 {
                img.put_pixel(x, y, Rgb([v, v, v]));
            }
        }
    }
    img
}

#[test]
fn an_upright_page_the_orientation_model_calls_upside_down_is_read_upright() {
    // The model is sure (0.99) and wrong, as it was on a scene photo and on single text lines of
    // the shared sets: the lines, read both ways, overrule it.
    let engine = engine_with_models(Arc::new(UprightRec), Some((2, 0.99)));
    let p = engine.recognize(&[marked_page()]).pop().unwrap().unwrap();
    assert_eq!(p.rotation, 0);
    assert_eq!(p.lines.len(), 3, "{p:?}");
    assert!(p.lines.iter().all(|l| (l.confidence - 0.9).abs() < 1e-5), "{p:?}");
    // Reading order and corners as on an upright page: top left first, corners from its top left.
    let q = p.lines[0].quad;
    assert!(q[0][0] < 30.0 && q[0][1] < 30.0 && q[1][0] > q[0][0], "{q:?}");
    assert!(p.lines[2].quad[0][1] > 100.0, "{p:?}");
}

#[test]
fn an_upside_down_page_the_orientation_model_is_unsure_of_is_turned() {
    // Below the model's threshold the page used to be read as it lay, upside down.
    let turned = image::imageops::rotate180(&marked_page());
    let engine = engine_with_models(Arc::new(UprightRec), Some((2, 0.6)));
    let p = engine.recognize(&[turned]).pop().unwrap().unwrap();
    assert_eq!(p.rotation, 180);
    assert_eq!(p.lines.len(), 3, "{p:?}");
    // The upright page's top-left bar is read first; it lies bottom right in the input.
    let q = p.lines[0].quad;
    assert!(q[0][0] > 350.0 && q[0][1] > 150.0 && q[0][0] > q[1][0], "{q:?}");
}

#[test]
fn wrong_recogniser_shape_is_a_typed_error() {
    let rec = Arc::new(FakeRec { calls: Mutex::new(Vec::new()), classes: 7 });
    let engine = engine_with(rec, None);
    let res = engine.recognize(&[page()]);
    assert!(matches!(res[0], Err(EngineError::BadOutput(_))), "{res:?}");
}

#[test]
fn blank_page_has_no_lines_and_oversized_is_refused() {
    let engine = engine_with(fake_rec(), None);
    let blank = RgbImage::from_pixel(64, 64, Rgb([255, 255, 255]));
    let p = engine.recognize(&[blank]).pop().unwrap().unwrap();
    assert!(p.lines.is_empty());
    let models = Models {
        det: Arc::new(FakeDet),
        det_spec: det_spec(),
        rec: fake_rec(),
        rec_spec: rec_spec(),
        dict: vec!["a".into()],
        cls: None,
        orientation: None,
    };
    let small = Engine::new(models, EngineOptions { max_pixels: 1000, ..Default::default() }).unwrap();
    let res = small.recognize(&[page()]);
    assert!(matches!(res[0], Err(EngineError::TooLarge { .. })));
}

/// Wraps a model: sleeps `delay` per run, reports `parallelism`, fails batches wider than
/// `fail_wider_than`, and logs every run's start and end on a shared clock.
struct Instrumented {
    inner: Arc<dyn Model>,
    name: &'static str,
    delay: std::time::Duration,
    parallelism: usize,
    fail_wider_than: usize,
    log: Arc<RunLog>,
}

#[derive(Default)]
struct RunLog {
    running: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    /// (model, start, end) in microseconds since the log was made.
    runs: Mutex<Vec<(&'static str, u128, u128)>>,
    t0: std::sync::OnceLock<std::time::Instant>,
}

impl Model for Instrumented {
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        use std::sync::atomic::Ordering::SeqCst;
        let t0 = *self.log.t0.get_or_init(std::time::Instant::now);
        let now = self.log.running.fetch_add(1, SeqCst) + 1;
        self.log.most.fetch_max(now, SeqCst);
        let start = t0.elapsed().as_micros();
        std::thread::sleep(self.delay);
        let out = if input.shape()[3] > self.fail_wider_than {
            Err(EngineError::Inference("out of memory (fake)".into()))
        } else {
            self.inner.run(input)
        };
        self.log.runs.lock().unwrap().push((self.name, start, t0.elapsed().as_micros()));
        self.log.running.fetch_sub(1, SeqCst);
        out
    }

    fn parallelism(&self) -> usize {
        self.parallelism
    }
}

fn instrumented_engine(
    det_parallel: usize,
    rec_parallel: usize,
    slots: usize,
    fail_wider_than: usize,
) -> (Engine, Arc<RunLog>) {
    let log = Arc::new(RunLog::default());
    let wrap = |inner: Arc<dyn Model>, name, parallelism, fail_wider_than| -> Arc<dyn Model> {
        Arc::new(Instrumented {
            inner,
            name,
            delay: std::time::Duration::from_millis(15),
            parallelism,
            fail_wider_than,
            log: log.clone(),
        })
    };
    let models = Models {
        det: wrap(Arc::new(FakeDet), "det", det_parallel, usize::MAX),
        det_spec: det_spec(),
        rec: wrap(fake_rec(), "rec", rec_parallel, fail_wider_than),
        rec_spec: rec_spec(),
        dict: vec!["a".into(), "b".into()],
        cls: None,
        orientation: None,
    };
    // One crop per recogniser batch, and batches planned over groups of at least 8 crops.
    let opts = EngineOptions { orientation: false, rec_batch: 1, cpu_slots: slots, ..Default::default() };
    (Engine::new(models, opts).unwrap(), log)
}

#[test]
fn recognition_starts_while_later_images_are_detected_within_the_slots() {
    let (engine, log) = instrumented_engine(1, 2, 2, usize::MAX);
    let pages = engine.recognize(&vec![page(); 6]);
    assert!(pages.iter().all(|p| p.as_ref().unwrap().text() == "aa\nbb\naa"), "{pages:?}");
    let runs = log.runs.lock().unwrap().clone();
    assert_eq!(runs.iter().filter(|r| r.0 == "rec").count(), 18);
    // Never more than two models at once, and the second slot was used.
    assert_eq!(log.most.load(std::sync::atomic::Ordering::SeqCst), 2, "{runs:?}");
    // The first images' lines (a group of 3 pages = 9 crops) were read before the last page was
    // detected.
    let last_det_start = runs.iter().filter(|r| r.0 == "det").map(|r| r.1).max().unwrap();
    let first_rec_end = runs.iter().filter(|r| r.0 == "rec").map(|r| r.2).min().unwrap();
    assert!(first_rec_end < last_det_start, "{runs:?}");
}

#[test]
fn one_slot_runs_one_model_at_a_time() {
    let (engine, log) = instrumented_engine(2, 2, 1, usize::MAX);
    let pages = engine.recognize(&vec![page(); 4]);
    assert!(pages.iter().all(|p| p.is_ok()));
    assert_eq!(log.most.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_recogniser_failure_fails_only_the_images_in_its_batch() {
    // The second image has a line far wider than the others; its batch fails.
    let mut wide = page();
    for y in 160..180 {
        for x in 20..390 {
            wide.put_pixel(x, y, Rgb([0, 0, 0]));
        }
    }
    let (engine, _) = instrumented_engine(1, 1, 0, 400);
    let pages = engine.recognize(&[page(), wide, page()]);
    assert_eq!(pages[0].as_ref().unwrap().text(), "aa\nbb\naa");
    assert_eq!(pages[2].as_ref().unwrap().text(), "aa\nbb\naa");
    let err = pages[1].as_ref().unwrap_err();
    assert!(matches!(err, EngineError::Inference(_)) && err.is_retryable(), "{err:?}");
}

/// A detector with a bug: it panics.
struct PanickingDet;
impl Model for PanickingDet {
    fn run(&self, _: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        panic!("detector bug (fake)");
    }
}

#[test]
fn a_panicking_model_reaches_the_caller_instead_of_hanging_the_call() {
    // The recognisers wait for pages from the detector, which dies.
    let models = Models {
        det: Arc::new(PanickingDet),
        det_spec: det_spec(),
        rec: fake_rec(),
        rec_spec: rec_spec(),
        dict: vec!["a".into(), "b".into()],
        cls: None,
        orientation: None,
    };
    let opts = EngineOptions { orientation: false, cpu_slots: 2, ..Default::default() };
    let engine = Engine::new(models, opts).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.recognize(&vec![page(); 4])));
        tx.send(r.is_err()).unwrap();
    });
    let panicked = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the call hung");
    assert!(panicked);
}
