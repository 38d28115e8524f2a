//! Shared pieces of the fuzz targets: fake models for the engine and invariants of a checked
//! create request.

use std::sync::Arc;

use ndarray::{Array2, Array3, Array4, ArrayD, ArrayView4};
use ocr_core::ContentType;
use ocr_core::request::{JobSpec, MAX_CALLBACK_URL_LEN, MAX_METADATA_BYTES};
use ocr_engine::manifest::Manifest;
use ocr_engine::{Engine, EngineError, EngineOptions, Model, Models};

/// PP-OCRv5's manifest (it has every model role: orientation, detector, line angle, recogniser).
pub fn manifest() -> Manifest {
    serde_json::from_str(include_str!("../../gpu-worker/engine/model-sets/ppocrv5.json")).expect("manifest parses")
}

/// Detector: probability 1 where the normalised blue channel is dark (under 0.2 before
/// normalisation), so drawn strokes and noise become boxes.
pub struct FakeDet;

impl Model for FakeDet {
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        let (n, _, h, w) = input.dim();
        let dark = (0.2 - 0.485) / 0.229;
        Ok(Array4::from_shape_fn((n, 1, h, w), |(b, _, y, x)| if input[[b, 0, y, x]] < dark { 1.0 } else { 0.0 })
            .into_dyn())
    }
}

/// Recogniser: `[N, W/8, classes]`, one class per 8-pixel column block chosen from the block's
/// pixel sum, so text varies with the crop.
pub struct FakeRec {
    /// Output classes (blank + dictionary + space).
    pub classes: usize,
}

impl Model for FakeRec {
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        let (n, _, h, w) = input.dim();
        let t = (w / 8).max(1);
        let mut out = Array3::<f32>::zeros((n, t, self.classes));
        for b in 0..n {
            for step in 0..t {
                let mut sum = 0.0f32;
                for y in (0..h).step_by(8) {
                    sum += input[[b, 0, y, (step * 8).min(w - 1)]];
                }
                let class = ((sum.abs() * 13.0) as usize) % self.classes;
                out[[b, step, class]] = 0.9;
            }
        }
        Ok(out.into_dyn())
    }
}

/// A classifier that always answers `class` with probability `p`.
pub struct FakeCls {
    /// Number of classes.
    pub classes: usize,
    /// The answer.
    pub class: usize,
    /// Its probability.
    pub p: f32,
}

impl Model for FakeCls {
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>, EngineError> {
        let n = input.shape()[0];
        let rest = (1.0 - self.p) / (self.classes - 1) as f32;
        Ok(Array2::from_shape_fn((n, self.classes), |(_, c)| if c == self.class { self.p } else { rest }).into_dyn())
    }
}

/// An engine with PP-OCRv5's settings and fake models; the page-orientation and line-angle
/// classifiers answer `page_class` (0..4) and `line_class` (0..2).
pub fn fake_engine(page_class: usize, line_class: usize, max_pixels: u64) -> Engine {
    let m = manifest();
    let dict: Vec<String> = (b'!'..=b'~').map(|c| (c as char).to_string()).collect();
    let classes = dict.len() + 2;
    let orientation: Arc<dyn Model> = Arc::new(FakeCls { classes: 4, class: page_class % 4, p: 0.95 });
    let cls: Arc<dyn Model> = Arc::new(FakeCls { classes: 2, class: line_class % 2, p: 0.95 });
    let models = Models {
        det: Arc::new(FakeDet),
        det_spec: m.det,
        rec: Arc::new(FakeRec { classes }),
        rec_spec: m.rec,
        dict,
        cls: Some((cls, m.cls.expect("ppocrv5 has cls"))),
        orientation: Some((orientation, m.orientation.expect("ppocrv5 has orientation"))),
    };
    let opts = EngineOptions { line_angle: true, max_pixels, ..Default::default() };
    Engine::new(models, opts).expect("engine builds")
}

/// Per-image errors an input may cause; anything else (configuration, inference, output shape)
/// would be a bug in how the engine treats input.
pub fn is_input_error(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::UnsupportedFormat
            | EngineError::Decode(_)
            | EngineError::TooLarge { .. }
            | EngineError::Empty { .. }
    )
}

/// What every accepted create request satisfies.
pub fn check_spec(spec: &JobSpec, max_upload_bytes: u64) {
    assert!(spec.content_length >= 1 && spec.content_length <= max_upload_bytes, "{spec:?}");
    assert!(ContentType::ALL.contains(&spec.content_type));
    if let Some(url) = &spec.callback_url {
        assert!(url.len() <= MAX_CALLBACK_URL_LEN);
        let parsed = url::Url::parse(url).expect("accepted callback URL parses");
        assert!(matches!(parsed.scheme(), "http" | "https"), "{url}");
        assert!(parsed.host_str().is_some_and(|h| !h.is_empty()), "{url}");
        assert!(parsed.username().is_empty() && parsed.password().is_none(), "{url}");
    }
    if let Some(m) = &spec.metadata {
        assert!(m.is_object(), "{m}");
        assert!(m.to_string().len() <= MAX_METADATA_BYTES);
    }
}
