//! The engine: decode → orientation → detection → reading order → crops → recognition,
//! with recognition batched across all images of a call.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use ndarray::Ix4;
use serde::Serialize;

use crate::classify::{classify, line_cls_input, orientation_input};
use crate::decode::{DEFAULT_MAX_PIXELS, decode_image};
use crate::detection::{db_postprocess, det_preprocess};
use crate::error::{EngineError, Result};
use crate::geometry::{Quad, Rotation, crop_line, crop_source};
use crate::layout::reading_order;
use crate::manifest::{ClsSpec, DetSpec, LimitType, Manifest, RecSpec, load_dict};
use crate::model::Model;
use crate::ort_backend::{OrtModel, SessionSettings};
use crate::recognition::{CtcDecoder, RecText, plan_batches, recognize_batch};
use crate::scheduler::Scheduler;
use crate::words::{Word, words_of};

/// One recognised line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// Text of the line.
    pub text: String,
    /// Mean character probability, 0..1.
    pub confidence: f32,
    /// Corners `[x, y]` in pixels of the original (EXIF-upright) image: top-left, top-right,
    /// bottom-right, bottom-left as the text reads.
    #[serde(rename = "box")]
    pub quad: Quad,
    /// Its words in reading order, boxes in the same pixels and corner order.
    pub words: Vec<Word>,
}

/// The result for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Page {
    /// Lines in reading order.
    pub lines: Vec<Line>,
    /// Width of the (EXIF-upright) image in pixels.
    pub width: u32,
    /// Height of the (EXIF-upright) image in pixels.
    pub height: u32,
    /// Clockwise turn in degrees the engine applied to read the page (0, 90, 180, 270).
    pub rotation: u32,
}

impl Page {
    /// Lines joined by `\n` in reading order.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self.lines.iter().map(|l| l.text.as_str()).collect();
        texts.join("\n")
    }

    /// This page as page `number` (1-based) of a job's result.
    pub fn into_result_page(self, number: u32) -> ocr_core::OcrPage {
        let lines = self
            .lines
            .into_iter()
            .map(|l| {
                let words = l
                    .words
                    .into_iter()
                    .map(|w| ocr_core::OcrWord { text: w.text, confidence: w.confidence, bbox: w.quad })
                    .collect();
                ocr_core::OcrLine { text: l.text, confidence: l.confidence, bbox: l.quad, words }
            })
            .collect();
        ocr_core::OcrPage::new(number, self.width, self.height, lines)
    }
}

/// Time spent per stage, summed over the images of a call (seconds).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTimes {
    /// Decoding bytes to pixels.
    pub decode: f64,
    /// Page orientation classifier.
    pub orient: f64,
    /// Detector pre-processing and model.
    pub det: f64,
    /// DB post-processing and reading order.
    pub post: f64,
    /// Perspective crops (and the line-angle classifier when on).
    pub crop: f64,
    /// Recogniser model and CTC decoding.
    pub rec: f64,
}

impl StageTimes {
    /// Adds another call's times.
    pub fn add(&mut self, o: &StageTimes) {
        self.decode += o.decode;
        self.orient += o.orient;
        self.det += o.det;
        self.post += o.post;
        self.crop += o.crop;
        self.rec += o.rec;
    }
}

/// Engine settings that are not part of the model set.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Detect and undo whole-page rotation (0/90/180/270).
    pub orientation: bool,
    /// Run the per-line 0/180 classifier (needs a set with `cls`).
    pub line_angle: bool,
    /// Crops per recogniser batch (batches span all images of a call).
    pub rec_batch: usize,
    /// Most padded width (pixels, summed over the crops) per recogniser batch; bounds memory.
    pub rec_batch_width: u32,
    /// Recogniser input widths are rounded up to a multiple of this (pixels). Small steps waste
    /// less compute on CPU; on GPU a coarse step keeps the number of distinct shapes low.
    pub rec_width_step: u32,
    /// Lines below this confidence are dropped.
    pub min_confidence: f32,
    /// Decompression-bomb guard, pixels (width × height).
    pub max_pixels: u64,
    /// Override the set's detector side limit (pixels).
    pub det_limit_side_len: Option<u32>,
    /// Override the set's detector limit type.
    pub det_limit_type: Option<LimitType>,
    /// Override the set's detector limit for tall pages (0: none).
    pub det_tall_limit: Option<u32>,
    /// Override the set's DB unclip ratio.
    pub det_unclip_ratio: Option<f32>,
    /// Override the set's DB box threshold.
    pub det_box_thresh: Option<f32>,
    /// Override the set's DB pixel threshold.
    pub det_thresh: Option<f32>,
    /// Override the set's narrowest recogniser input width (pixels).
    pub rec_min_width: Option<u32>,
    /// Single-threaded detector sessions for multi-image calls on CPU (0 = automatic: two, or
    /// one per four threads when that is more; one with one thread). A lone image gets a
    /// separate session with every thread.
    pub det_sessions: usize,
    /// Recogniser sessions run in parallel (0 = one single-threaded session per thread on CPU,
    /// one session on GPU).
    pub rec_sessions: usize,
    /// Most model runs at once in a call, detection and recognition together (0 = no limit).
    /// [`Engine::load`] sets it to the thread count on CPU, so a call never keeps more cores
    /// busy than it was given.
    pub cpu_slots: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            orientation: true,
            line_angle: false,
            rec_batch: 8,
            rec_batch_width: 1024,
            // Finer steps pad less: 8 px measured 3-4 % faster recognition than 32 on receipts
            // (set A), with word F1 -0.002 there and +0.004 on scene text (set B).
            rec_width_step: 8,
            min_confidence: 0.5,
            max_pixels: DEFAULT_MAX_PIXELS,
            det_limit_side_len: None,
            det_limit_type: None,
            det_tall_limit: None,
            rec_sessions: 0,
            det_sessions: 0,
            cpu_slots: 0,
            rec_min_width: None,
            det_unclip_ratio: None,
            det_box_thresh: None,
            det_thresh: None,
        }
    }
}

/// Models of one set plus their settings; built from a manifest or from fakes in tests.
pub struct Models {
    /// Text detector.
    pub det: Arc<dyn Model>,
    /// Detector settings.
    pub det_spec: DetSpec,
    /// Recogniser.
    pub rec: Arc<dyn Model>,
    /// Recogniser settings.
    pub rec_spec: RecSpec,
    /// Dictionary lines of the recogniser.
    pub dict: Vec<String>,
    /// Optional line-angle classifier.
    pub cls: Option<(Arc<dyn Model>, ClsSpec)>,
    /// Optional page-orientation classifier.
    pub orientation: Option<(Arc<dyn Model>, ClsSpec)>,
}

/// The OCR engine. `Send + Sync`: share it behind an `Arc`; model runs are serialised per model.
pub struct Engine {
    det: Arc<dyn Model>,
    det_spec: DetSpec,
    rec: Arc<dyn Model>,
    rec_spec: RecSpec,
    decoder: CtcDecoder,
    cls: Option<(Arc<dyn Model>, ClsSpec)>,
    orientation: Option<(Arc<dyn Model>, ClsSpec)>,
    opts: EngineOptions,
}

/// One input of a call: pixels, or encoded bytes that the detection stage decodes.
#[derive(Clone, Copy)]
enum Input<'a> {
    Pixels(&'a RgbImage),
    Encoded(&'a [u8]),
}

/// Lines the upside-down check reads both ways ([`Engine::reads_better_turned`]).
const TURN_SAMPLE: usize = 2;
/// Width of the middle part of each line the check reads, in recogniser pixels (48 high).
const TURN_SAMPLE_WIDTH: u32 = 160;
/// An image this many times longer than wide (or wider than long) is a single line.
const LINE_SHAPE: u32 = 4;

/// A page's lines after the page turns 180°: each quad moves to the turned `w × h` page (its
/// first corner still the text's top left), each crop turns over, and the reading order is
/// found again there.
fn turn_over(quads: Vec<Quad>, crops: Vec<RgbImage>, w: u32, h: u32) -> (Vec<Quad>, Vec<RgbImage>) {
    let (w, h) = (w as f32, h as f32);
    let m = |p: [f32; 2]| [w - p[0], h - p[1]];
    let turned: Vec<Quad> = quads.iter().map(|q| [m(q[2]), m(q[3]), m(q[0]), m(q[1])]).collect();
    let order = reading_order(&turned);
    let mut crops: Vec<Option<RgbImage>> = crops.into_iter().map(Some).collect();
    let crops = order
        .iter()
        .map(|&i| {
            let mut c = crops[i].take().expect("reading order lists each line once");
            image::imageops::rotate180_in_place(&mut c);
            c
        })
        .collect();
    (order.iter().map(|&i| turned[i]).collect(), crops)
}

/// An image that went through detection, waiting for its lines' texts.
pub(crate) struct Prepared {
    width: u32,
    height: u32,
    rotation: Rotation,
    /// Quads in the rotated (upright) image, reading order.
    quads: Vec<Quad>,
}

impl Engine {
    /// Builds an engine from prepared models (fakes in tests, or [`Engine::load`]).
    pub fn new(models: Models, mut opts: EngineOptions) -> Result<Self> {
        let mut det_spec = models.det_spec;
        if let Some(l) = opts.det_limit_side_len {
            det_spec.limit_side_len = l;
        }
        if let Some(t) = opts.det_limit_type {
            det_spec.limit_type = t;
        }
        if let Some(t) = opts.det_tall_limit {
            det_spec.tall_limit_side_len = (t > 0).then_some(t);
        }
        if let Some(v) = opts.det_unclip_ratio {
            det_spec.unclip_ratio = v;
        }
        if let Some(v) = opts.det_box_thresh {
            det_spec.box_thresh = v;
        }
        if let Some(v) = opts.det_thresh {
            det_spec.thresh = v;
        }
        if opts.line_angle && models.cls.is_none() {
            return Err(EngineError::Config(
                "line angle classifier requested but the model set has no cls model".into(),
            ));
        }
        if models.dict.is_empty() {
            return Err(EngineError::Config("empty dictionary".into()));
        }
        opts.rec_batch = opts.rec_batch.max(1);
        let mut rec_spec = models.rec_spec;
        if let Some(w) = opts.rec_min_width {
            rec_spec.min_width = w;
        }
        Ok(Self {
            det: models.det,
            det_spec,
            rec: models.rec,
            rec_spec,
            decoder: CtcDecoder::new(models.dict),
            cls: models.cls,
            orientation: if opts.orientation { models.orientation } else { None },
            opts,
        })
    }

    /// Loads a model set from `model_dir` through ONNX Runtime. Sessions are created once here
    /// and reused by every call.
    pub fn load(model_dir: &Path, set: &str, session: &SessionSettings, mut opts: EngineOptions) -> Result<Self> {
        let m = Manifest::load(model_dir, set)?;
        let cpu = session.provider == crate::ort_backend::Provider::Cpu;
        m.check_cpu(cpu, crate::manifest::cpu_has_vnni())?;
        let load = |p: &PathBuf| -> Result<Arc<dyn Model>> { Ok(Arc::new(OrtModel::load(&m.path(p), session)?)) };
        // Recognition runs many independent batches: on CPU, one single-threaded session per
        // thread scales better than one session with several intra-op threads.
        let threads = if session.intra_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            session.intra_threads
        };
        let rec_model: Arc<dyn Model> = match (session.provider, opts.rec_sessions) {
            (crate::ort_backend::Provider::Cpu, 0) => {
                Arc::new(OrtModel::load_pool(&m.path(&m.rec.model), session, threads, 1)?)
            }
            (_, 0) => load(&m.rec.model)?,
            (_, n) => Arc::new(OrtModel::load_pool(&m.path(&m.rec.model), session, n, (threads / n).max(1))?),
        };
        let dict = load_dict(&m.path(&m.rec.dict))?;
        // The classifiers run inside the detection stage, which holds one compute slot.
        let load_small = |p: &PathBuf| -> Result<Arc<dyn Model>> {
            if cpu { Ok(Arc::new(OrtModel::load_pool(&m.path(p), session, 1, 1)?)) } else { load(p) }
        };
        let cls = match (&m.cls, opts.line_angle) {
            (Some(c), true) => Some((load_small(&c.model)?, c.clone())),
            _ => None,
        };
        let orientation = match (&m.orientation, opts.orientation) {
            (Some(c), true) => Some((load_small(&c.model)?, c.clone())),
            _ => None,
        };
        if opts.line_angle && m.cls.is_none() {
            return Err(EngineError::Config(format!("model set {} has no line-angle classifier", m.name)));
        }
        // Detection on CPU: single-threaded sessions detect several images at once while the
        // recogniser works on earlier ones (one session's intra-op threads scaled only x1.5 on
        // two cores); a lone image gets one session with every thread.
        let det_model: Arc<dyn Model> = if cpu {
            let pool = match opts.det_sessions {
                0 => threads.min(2).max(threads.div_ceil(4)),
                n => n,
            };
            Arc::new(OrtModel::load_detector(&m.path(&m.det.model), session, pool, threads)?)
        } else {
            load(&m.det.model)?
        };
        if cpu && opts.cpu_slots == 0 {
            opts.cpu_slots = threads;
        }
        let models = Models {
            det: det_model,
            det_spec: m.det.clone(),
            rec: rec_model,
            rec_spec: m.rec.clone(),
            dict,
            cls,
            orientation,
        };
        tracing::info!(set = %m.name, provider = ?session.provider, threads = session.intra_threads, "engine loaded");
        Self::new(models, opts)
    }

    /// Recognises decoded images. One result per image, in order; a failing image fails alone.
    pub fn recognize(&self, images: &[RgbImage]) -> Vec<Result<Page>> {
        self.recognize_timed(images).0
    }

    /// Decodes and recognises encoded images (JPEG, PNG, WebP, TIFF); one result per input.
    pub fn recognize_bytes(&self, inputs: &[&[u8]]) -> Vec<Result<Page>> {
        self.recognize_bytes_timed(inputs).0
    }

    /// [`Engine::recognize_bytes`] plus per-stage times for the whole call.
    pub fn recognize_bytes_timed(&self, inputs: &[&[u8]]) -> (Vec<Result<Page>>, StageTimes) {
        let inputs: Vec<Input<'_>> = inputs.iter().map(|b| Input::Encoded(b)).collect();
        self.run_call(&inputs)
    }

    /// [`Engine::recognize`] plus per-stage times for the whole call.
    pub fn recognize_timed(&self, images: &[RgbImage]) -> (Vec<Result<Page>>, StageTimes) {
        let inputs: Vec<Input<'_>> = images.iter().map(Input::Pixels).collect();
        self.run_call(&inputs)
    }

    /// One call as a pipeline: detection threads (decode, orientation, detector, reading
    /// order, crops) feed recogniser batches to recognition threads, which start on the first
    /// images' lines while later images are still being detected. At most `cpu_slots` of them
    /// compute at once; detection goes first when both wait (see [`Scheduler`]).
    fn run_call(&self, inputs: &[Input<'_>]) -> (Vec<Result<Page>>, StageTimes) {
        let n = inputs.len();
        if n == 0 {
            return (Vec::new(), StageTimes::default());
        }
        let detectors = self.det.parallelism().min(n).max(1);
        let recognizers = self.rec.parallelism().max(1);
        let o = &self.opts;
        let plan = Box::new(|widths: &[u32]| {
            plan_batches(widths, o.rec_batch, o.rec_batch_width, o.rec_width_step, self.rec_spec.min_width)
        });
        // A recogniser batch is planned over at least this many crops, so widths still sort
        // into well-filled batches.
        let scheduler = Scheduler::new(n, detectors, o.cpu_slots, o.rec_batch * 8, plan);
        std::thread::scope(|scope| {
            for _ in 0..detectors {
                scope.spawn(|| self.detect_images(inputs, &scheduler));
            }
            for _ in 0..recognizers {
                scope.spawn(|| self.recognize_batches(&scheduler));
            }
        });
        let (results, times) = scheduler.finish();
        let pages = results.into_iter().map(|r| r.map(|(p, texts)| self.page(p, texts))).collect();
        (pages, times)
    }

    /// A detection thread of a call: prepares the images it takes, one compute slot each.
    fn detect_images(&self, inputs: &[Input<'_>], scheduler: &Scheduler<'_>) {
        let _guard = scheduler.abort_on_panic();
        let alone = inputs.len() == 1;
        let mut times = StageTimes::default();
        while let Some(k) = scheduler.next_image() {
            if !scheduler.acquire_for_detection() {
                return;
            }
            let result = self.prepare_input(inputs[k], alone, &mut times);
            scheduler.release_detected(k, result);
        }
        scheduler.detector_done(&times);
    }

    /// A recognition thread of a call: runs the recogniser batches it takes, one compute slot
    /// each.
    fn recognize_batches(&self, scheduler: &Scheduler<'_>) {
        let _guard = scheduler.abort_on_panic();
        let mut secs = 0.0;
        while let Some(job) = scheduler.acquire_for_recognition() {
            let t = Instant::now();
            let refs: Vec<&RgbImage> = job.crops.iter().collect();
            let result = recognize_batch(self.rec.as_ref(), &self.decoder, &refs, self.rec_spec.height, job.width);
            secs += t.elapsed().as_secs_f64();
            scheduler.release_recognized(&job.items, result);
        }
        scheduler.recognizer_done(secs);
    }

    /// The page of a prepared image from its lines' texts: confident, non-empty lines with
    /// their boxes mapped back to the original image.
    fn page(&self, p: Prepared, texts: Vec<RecText>) -> Page {
        let mut lines = Vec::with_capacity(p.quads.len());
        for (q, r) in p.quads.iter().zip(texts) {
            let text = r.text.trim();
            if text.is_empty() || r.confidence < self.opts.min_confidence {
                continue;
            }
            let unmap = |q: &Quad| p.rotation.unmap_quad(q, p.width, p.height);
            let words = words_of(&r, &crop_source(q)).into_iter().map(|w| Word { quad: unmap(&w.quad), ..w }).collect();
            lines.push(Line { text: text.to_string(), confidence: r.confidence, quad: unmap(q), words });
        }
        Page { lines, width: p.width, height: p.height, rotation: p.rotation.degrees() }
    }

    /// Decodes (when needed) and prepares one input; decoding counts as its own stage.
    fn prepare_input(
        &self,
        input: Input<'_>,
        alone: bool,
        times: &mut StageTimes,
    ) -> Result<(Prepared, Vec<RgbImage>)> {
        match input {
            Input::Pixels(img) => self.prepare(img, alone, times),
            Input::Encoded(bytes) => {
                let t = Instant::now();
                let img = decode_image(bytes, self.opts.max_pixels);
                times.decode += t.elapsed().as_secs_f64();
                self.prepare(&img?, alone, times)
            }
        }
    }

    fn prepare(&self, img: &RgbImage, alone: bool, times: &mut StageTimes) -> Result<(Prepared, Vec<RgbImage>)> {
        let (width, height) = img.dimensions();
        crate::decode::check_dimensions(width, height, self.opts.max_pixels)?;
        let t = Instant::now();
        let (mut rotation, unsure) = self.page_rotation(img)?;
        let rotated = rotation.apply(img);
        let upright = rotated.as_ref().unwrap_or(img);
        times.orient += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let input = det_preprocess(upright, &self.det_spec);
        let prob = if alone { self.det.run_alone(input.view())? } else { self.det.run(input.view())? };
        times.det += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let prob = prob.into_dimensionality::<Ix4>().map_err(|e| EngineError::BadOutput(format!("detector: {e}")))?;
        if prob.shape()[0] != 1 || prob.shape()[1] != 1 || prob.shape()[2..] != input.shape()[2..] {
            return Err(EngineError::BadOutput(format!(
                "detector returned {:?} for input {:?}",
                prob.shape(),
                input.shape()
            )));
        }
        let boxes = db_postprocess(
            prob.index_axis(ndarray::Axis(0), 0).index_axis(ndarray::Axis(0), 0),
            &self.det_spec,
            upright.width(),
            upright.height(),
        );
        let quads: Vec<Quad> = boxes.iter().map(|b| b.quad).collect();
        let order = reading_order(&quads);
        let mut quads: Vec<Quad> = order.iter().map(|&i| quads[i]).collect();
        times.post += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let r = &self.rec_spec;
        let mut crops: Vec<RgbImage> =
            quads.iter().map(|q| crop_line(upright, q, r.height, 8, r.max_width).image).collect();
        if let Some((cls, spec)) = &self.cls {
            self.fix_upside_down(cls.as_ref(), spec, &mut crops, &mut quads)?;
        }
        times.crop += t.elapsed().as_secs_f64();

        if unsure && !crops.is_empty() {
            let t = Instant::now();
            if self.reads_better_turned(&crops)? {
                rotation = rotation.then_180();
                (quads, crops) = turn_over(quads, crops, upright.width(), upright.height());
            }
            times.orient += t.elapsed().as_secs_f64();
        }
        Ok((Prepared { width, height, rotation, quads }, crops))
    }

    /// Runs every model once per input shape it will commonly see: the detector on a page and
    /// the recogniser on each padded width up to `max_width`, in batches as large as the
    /// settings allow. On GPU this moves cuDNN's per-shape algorithm search (up to ~1 s per
    /// shape with `exhaustive`) to start-up; pair it with a coarse `rec_width_step`.
    pub fn warm_up(&self, max_width: u32) -> Result<()> {
        let page = RgbImage::from_pixel(640, 480, image::Rgb([255, 255, 255]));
        let mut times = StageTimes::default();
        self.prepare(&page, true, &mut times)?;
        let step = self.opts.rec_width_step.max(1);
        let h = self.rec_spec.height;
        let mut w = self.rec_spec.min_width.div_ceil(step) * step;
        while w <= max_width.min(self.rec_spec.max_width) {
            let n = (self.opts.rec_batch_width / w).clamp(1, self.opts.rec_batch as u32) as usize;
            let crop = RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
            let crops: Vec<&RgbImage> = vec![&crop; n];
            let input = crate::recognition::pack_batch(&crops, h, w);
            self.rec.run(input.view())?;
            w += step;
        }
        Ok(())
    }

    /// The turn that makes the page upright, and whether the classifier was unsure of it: it
    /// saw anything but an upright page, confidently or not. It sees only the page's centre
    /// square, and its probabilities say little (0.90–0.93 on right and wrong calls alike):
    /// on the shared sets it called an upright scene photo and single text lines upside down,
    /// and left upside-down receipts alone below its threshold. An unsure page's lines then
    /// decide between it and its turn by 180° ([`Engine::reads_better_turned`]).
    fn page_rotation(&self, img: &RgbImage) -> Result<(Rotation, bool)> {
        let Some((model, spec)) = &self.orientation else {
            return Ok((Rotation::R0, false));
        };
        // A line-shaped image (a single text line, cut out by the caller) shows the classifier
        // a few letters of its centre, which tell it nothing (it called 3 of set C's 300 upright
        // lines upside down): such an image is read as it comes, which is how callers send them.
        let (w, h) = img.dimensions();
        if w.max(h) >= LINE_SHAPE * w.min(h) {
            return Ok((Rotation::R0, false));
        }
        let input = orientation_input(img, spec.width);
        let (class, p) = classify(model.as_ref(), input.view())?[0];
        // Classes are the page's current rotation (0, 90, 180, 270 clockwise); turning the page
        // back upright is the opposite turn.
        let rot = match class {
            1 => Rotation::R270,
            2 => Rotation::R180,
            3 => Rotation::R90,
            _ => Rotation::R0,
        };
        tracing::debug!(class, p, "page orientation");
        Ok((if p >= spec.thresh { rot } else { Rotation::R0 }, class != 0))
    }

    /// Whether a sample of the page's lines reads better turned over: the recogniser's mean
    /// confidence on the middle of its [`TURN_SAMPLE`] widest lines as they are and turned by
    /// 180°. Upside-down text decodes with far lower confidence than upright text.
    fn reads_better_turned(&self, crops: &[RgbImage]) -> Result<bool> {
        let mut idx: Vec<usize> = (0..crops.len()).collect();
        // The widest lines, each cut to its middle TURN_SAMPLE_WIDTH px: one small batch of one
        // shape whatever the page, a few milliseconds.
        idx.sort_by_key(|&i| std::cmp::Reverse(crops[i].width()));
        idx.truncate(TURN_SAMPLE);
        let cut = |c: &RgbImage| {
            let w = c.width().min(TURN_SAMPLE_WIDTH);
            image::imageops::crop_imm(c, (c.width() - w) / 2, 0, w, c.height()).to_image()
        };
        let as_is: Vec<RgbImage> = idx.iter().map(|&i| cut(&crops[i])).collect();
        let turned: Vec<RgbImage> = as_is.iter().map(image::imageops::rotate180).collect();
        let refs: Vec<&RgbImage> = as_is.iter().chain(turned.iter()).collect();
        let width = TURN_SAMPLE_WIDTH.max(self.rec_spec.min_width);
        let texts = recognize_batch(self.rec.as_ref(), &self.decoder, &refs, self.rec_spec.height, width)?;
        let (as_is, over) = texts.split_at(idx.len());
        let mean = |t: &[RecText]| t.iter().map(|r| r.confidence).sum::<f32>() / t.len() as f32;
        tracing::debug!(as_is = mean(as_is), turned = mean(over), "page orientation check");
        Ok(mean(over) > mean(as_is))
    }

    /// Turns over the crops the line-angle classifier calls upside down, and their quads with
    /// them (the text's top left is then the opposite corner), so words map back the right way.
    fn fix_upside_down(
        &self,
        model: &dyn Model,
        spec: &ClsSpec,
        crops: &mut [RgbImage],
        quads: &mut [Quad],
    ) -> Result<()> {
        let n = self.opts.rec_batch;
        for (chunk, quads) in crops.chunks_mut(n).zip(quads.chunks_mut(n)) {
            let refs: Vec<&RgbImage> = chunk.iter().collect();
            let input = line_cls_input(&refs, spec.height, spec.width);
            let res = classify(model, input.view())?;
            for ((c, q), (class, p)) in chunk.iter_mut().zip(quads.iter_mut()).zip(res) {
                if class == 1 && p >= spec.thresh {
                    image::imageops::rotate180_in_place(c);
                    *q = [q[2], q[3], q[0], q[1]];
                }
            }
        }
        Ok(())
    }
}
