//! The engine behind a small trait, so the pipeline is tested with a fake one.

use image::RgbImage;
use ocr_core::OcrResult;
use ocr_engine::{Engine, EngineError, EngineSettings, Provider};

/// Why one image produced no result.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFailure {
    pub reason: String,
    /// Whether the same image may succeed on another try (a runtime hiccup),
    /// as opposed to bad input.
    pub retryable: bool,
}

impl From<&EngineError> for ImageFailure {
    fn from(e: &EngineError) -> Self {
        ImageFailure { reason: e.to_string(), retryable: e.is_retryable() }
    }
}

/// Reads text from a batch of decoded images. Blocking: runs on the infer thread.
pub trait Recognizer: Send + 'static {
    /// One result per image, in order; one bad image fails only itself.
    fn recognize(&mut self, images: &[RgbImage]) -> Vec<Result<OcrResult, ImageFailure>>;
}

/// The real engine (ONNX Runtime), loaded once.
pub struct EngineRecognizer {
    engine: Engine,
}

impl EngineRecognizer {
    /// Loads the model set and warms it up so the first batch does not pay for ONNX
    /// Runtime's lazy initialisation: on GPU every recogniser width once (cuDNN searches
    /// algorithms per input shape), on CPU one small page.
    pub fn load(args: &EngineSettings) -> Result<Self, EngineError> {
        let engine = Engine::load(&args.model_dir, &args.model_set, &args.session()?, args.options())?;
        if args.provider == Provider::Cpu {
            let _ = engine.recognize(&[RgbImage::from_pixel(320, 96, image::Rgb([255, 255, 255]))]);
        } else {
            engine.warm_up(u32::MAX)?;
        }
        Ok(EngineRecognizer { engine })
    }
}

impl Recognizer for EngineRecognizer {
    fn recognize(&mut self, images: &[RgbImage]) -> Vec<Result<OcrResult, ImageFailure>> {
        let started = std::time::Instant::now();
        let pages = self.engine.recognize(images);
        // Each image's share of the batch call, for the result's `seconds`.
        let share = started.elapsed().as_secs_f64() / images.len().max(1) as f64;
        pages
            .into_iter()
            .map(|page| match page {
                Ok(page) => Ok(OcrResult::from_pages(vec![page.into_result_page(1)], share)),
                Err(e) => Err(ImageFailure::from(&e)),
            })
            .collect()
    }
}
