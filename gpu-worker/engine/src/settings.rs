//! The engine's settings as command-line flags with environment fallbacks, shared by the `ocr`
//! tool and the GPU worker (`#[command(flatten)]`), so each setting has one name everywhere.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::engine::EngineOptions;
use crate::error::Result;
use crate::manifest::LimitType;
use crate::ort_backend::{ConvAlgoSearch, Provider, SessionSettings, check_dylib};

/// Detector size limit type, as a flag value.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DetLimit {
    /// The longer side is at most the limit.
    Max,
    /// The shorter side is at least the limit.
    Min,
}

/// Model set, runtime and tuning settings of an [`crate::Engine`].
#[derive(clap::Args, Debug, Clone)]
pub struct EngineSettings {
    /// Model set: ppocrv6-small (default), ppocrv6-tiny (alias fast), ppocrv5, rapidocr-v6-small.
    #[arg(long, env = "OCR_MODEL_SET", default_value = "ppocrv6-small")]
    pub model_set: String,
    /// Folder holding model sets (scripts/fetch-models.sh fills it).
    #[arg(long, env = "OCR_MODEL_DIR", default_value = "models")]
    pub model_dir: PathBuf,
    /// Cores one engine call may keep busy: single-threaded detector and recogniser sessions
    /// run side by side up to this many (0 = one per core).
    #[arg(long, env = "OCR_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Crops per recogniser batch.
    #[arg(long, env = "OCR_REC_BATCH", default_value_t = EngineOptions::default().rec_batch)]
    pub rec_batch: usize,
    /// Most padded width per recogniser batch (pixels summed over crops; bounds memory).
    #[arg(long, env = "OCR_REC_BATCH_WIDTH", default_value_t = EngineOptions::default().rec_batch_width)]
    pub rec_batch_width: u32,
    /// Recogniser width rounding step in pixels (default: 8 on CPU; 160 on GPU, so that
    /// warm-up meets few shapes).
    #[arg(long, env = "OCR_REC_WIDTH_STEP")]
    pub rec_width_step: Option<u32>,
    /// Path of libonnxruntime.so (from the PyPI onnxruntime wheel).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// Execution provider; a GPU provider that fails to register is an error, never a silent
    /// fall-back to CPU.
    #[arg(long, env = "OCR_PROVIDER", value_enum, default_value = "cpu")]
    pub provider: Provider,
    /// GPU ordinal.
    #[arg(long, env = "OCR_DEVICE_ID", default_value_t = 0)]
    pub device_id: i32,
    /// cuDNN convolution algorithm search (CUDA).
    #[arg(long, env = "OCR_CUDNN_CONV_ALGO", value_enum, default_value = "heuristic")]
    pub cudnn_conv_algo: ConvAlgoSearch,
    /// Let ONNX Runtime threads spin while waiting (faster on an idle machine, worse when shared).
    #[arg(long, env = "OCR_SPIN", default_value_t = false)]
    pub spin: bool,
    /// ONNX Runtime CPU memory arena: without it every detector run page-faults its buffers
    /// afresh (15 % of the time on scene photos, measured), for ~25-80 MB more RSS.
    #[arg(long, env = "OCR_CPU_ARENA", default_value_t = true, action = clap::ArgAction::Set)]
    pub cpu_arena: bool,
    /// Override the detector's unclip ratio (box growth).
    #[arg(long, env = "OCR_DET_UNCLIP_RATIO")]
    pub det_unclip_ratio: Option<f32>,
    /// Override the detector's box score threshold.
    #[arg(long, env = "OCR_DET_BOX_THRESH")]
    pub det_box_thresh: Option<f32>,
    /// Override the detector's pixel threshold.
    #[arg(long, env = "OCR_DET_THRESH")]
    pub det_thresh: Option<f32>,
    /// Single-threaded detector sessions detecting images in parallel on CPU (0 = automatic:
    /// two, or one per four threads when that is more).
    #[arg(long, env = "OCR_DET_SESSIONS", default_value_t = 0)]
    pub det_sessions: usize,
    /// Override the narrowest recogniser input width (pixels).
    #[arg(long, env = "OCR_REC_MIN_WIDTH")]
    pub rec_min_width: Option<u32>,
    /// Recogniser sessions run in parallel (0 = one per thread on CPU).
    #[arg(long, env = "OCR_REC_SESSIONS", default_value_t = 0)]
    pub rec_sessions: usize,
    /// Detect whole-page rotation (0/90/180/270).
    #[arg(long, env = "OCR_ORIENTATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub orientation: bool,
    /// Per-line 0/180 angle classifier (needs a set with a cls model, e.g. ppocrv5).
    #[arg(long, env = "OCR_LINE_ANGLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub line_angle: bool,
    /// Override the detector side limit (pixels).
    #[arg(long, env = "OCR_DET_LIMIT")]
    pub det_limit: Option<u32>,
    /// Override the detector limit type.
    #[arg(long, env = "OCR_DET_LIMIT_TYPE", value_enum)]
    pub det_limit_type: Option<DetLimit>,
    /// Override the detector side limit for tall pages (height at least 1.5 × width); 0: none.
    #[arg(long, env = "OCR_DET_TALL_LIMIT")]
    pub det_tall_limit: Option<u32>,
    /// Lines below this confidence are dropped.
    #[arg(long, env = "OCR_MIN_CONFIDENCE", default_value_t = EngineOptions::default().min_confidence)]
    pub min_confidence: f32,
    /// Refuse images with more pixels than this.
    #[arg(long, env = "OCR_MAX_PIXELS", default_value_t = crate::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Refuse documents (multi-page TIFF) with more pages than this.
    #[arg(long, env = "MAX_PAGES", default_value_t = crate::DEFAULT_MAX_PAGES)]
    pub max_pages: usize,
}

/// Width step on GPU: each distinct recogniser width costs a cuDNN search at warm-up.
const GPU_REC_WIDTH_STEP: u32 = 160;

impl EngineSettings {
    /// ONNX Runtime settings; fails when the library cannot be found.
    pub fn session(&self) -> Result<SessionSettings> {
        Ok(SessionSettings {
            dylib_path: check_dylib(self.ort_dylib_path.as_deref())?,
            provider: self.provider,
            device_id: self.device_id,
            conv_algo_search: self.cudnn_conv_algo,
            intra_threads: self.threads,
            spinning: self.spin,
            cpu_arena: self.cpu_arena,
        })
    }

    /// Engine options (the CPU slots are set by [`crate::Engine::load`]).
    pub fn options(&self) -> EngineOptions {
        let default_step =
            if self.provider == Provider::Cpu { EngineOptions::default().rec_width_step } else { GPU_REC_WIDTH_STEP };
        EngineOptions {
            orientation: self.orientation,
            line_angle: self.line_angle,
            rec_batch: self.rec_batch,
            rec_batch_width: self.rec_batch_width,
            rec_width_step: self.rec_width_step.unwrap_or(default_step),
            min_confidence: self.min_confidence,
            max_pixels: self.max_pixels,
            det_limit_side_len: self.det_limit,
            det_limit_type: self.det_limit_type.map(|l| match l {
                DetLimit::Max => LimitType::Max,
                DetLimit::Min => LimitType::Min,
            }),
            det_tall_limit: self.det_tall_limit,
            det_unclip_ratio: self.det_unclip_ratio,
            det_box_thresh: self.det_box_thresh,
            det_thresh: self.det_thresh,
            rec_min_width: self.rec_min_width,
            det_sessions: self.det_sessions,
            rec_sessions: self.rec_sessions,
            cpu_slots: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineSettings,
    }

    #[test]
    fn defaults_match_engine_options_and_gpu_gets_a_coarse_step() {
        let cpu = Cli::parse_from(["x"]).engine.options();
        let d = EngineOptions::default();
        assert_eq!(
            (cpu.rec_batch, cpu.rec_batch_width, cpu.rec_width_step, cpu.min_confidence, cpu.max_pixels),
            (d.rec_batch, d.rec_batch_width, d.rec_width_step, d.min_confidence, d.max_pixels)
        );
        assert!(cpu.orientation && !cpu.line_angle);
        let gpu = Cli::parse_from(["x", "--provider", "cuda"]).engine.options();
        assert_eq!(gpu.rec_width_step, GPU_REC_WIDTH_STEP);
        let set = Cli::parse_from(["x", "--provider", "cuda", "--rec-width-step", "32"]).engine.options();
        assert_eq!(set.rec_width_step, 32);
    }
}
