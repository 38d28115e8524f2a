//! `ocr`: run the OCR engine on image files.
//!
//! Prints text (default) or JSON Lines, one object per file:
//! `{"file","text","lines":[{"text","confidence","box":[[x,y]x4]}],"seconds"}` or `{"file","error"}`.
//! Exits with status 1 when any input could not be read or recognised.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use ocr_engine::{ConvAlgoSearch, Engine, EngineOptions, LimitType, Page, Provider, SessionSettings, StageTimes};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Limit {
    Max,
    Min,
}

/// Recognise text in images (JPEG, PNG, WebP, TIFF).
#[derive(Debug, Parser)]
#[command(name = "ocr", version)]
struct Args {
    /// Output format: plain text, or JSON Lines (one object per file).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Model set: ppocrv6-small (default), ppocrv6-tiny (alias fast), ppocrv5, rapidocr-v6-small.
    #[arg(long, env = "OCR_MODEL_SET", default_value = "ppocrv6-small")]
    model_set: String,
    /// Folder holding model sets (scripts/fetch-models.sh fills it).
    #[arg(long, env = "OCR_MODEL_DIR", default_value = "models")]
    model_dir: PathBuf,
    /// ONNX Runtime intra-op threads per model (0 = one per core).
    #[arg(long, env = "OCR_THREADS", default_value_t = 0)]
    threads: usize,
    /// Images per engine call; recognition batches span all images of a call.
    #[arg(long, env = "OCR_BATCH", default_value_t = 8)]
    batch: usize,
    /// Crops per recogniser batch.
    #[arg(long, env = "OCR_REC_BATCH", default_value_t = EngineOptions::default().rec_batch)]
    rec_batch: usize,
    /// Most padded width per recogniser batch (pixels summed over crops; bounds memory).
    #[arg(long, env = "OCR_REC_BATCH_WIDTH", default_value_t = EngineOptions::default().rec_batch_width)]
    rec_batch_width: u32,
    /// Recogniser width rounding step in pixels.
    #[arg(long, env = "OCR_REC_WIDTH_STEP", default_value_t = EngineOptions::default().rec_width_step)]
    rec_width_step: u32,
    /// Path of libonnxruntime.so (from the PyPI onnxruntime wheel).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_dylib_path: Option<PathBuf>,
    /// Execution provider.
    #[arg(long, env = "OCR_PROVIDER", value_enum, default_value = "cpu")]
    provider: Provider,
    /// GPU ordinal.
    #[arg(long, env = "OCR_DEVICE_ID", default_value_t = 0)]
    device_id: i32,
    /// cuDNN convolution algorithm search (CUDA).
    #[arg(long, env = "OCR_CUDNN_CONV_ALGO", value_enum, default_value = "heuristic")]
    cudnn_conv_algo: ConvAlgoSearch,
    /// Let ONNX Runtime threads spin while waiting (faster on an idle machine, worse when shared).
    #[arg(long, env = "OCR_SPIN", default_value_t = false)]
    spin: bool,
    /// ONNX Runtime CPU memory arena: without it every detector run page-faults its buffers
    /// afresh (15 % of the time on scene photos, measured), for ~25-80 MB more RSS.
    #[arg(long, env = "OCR_CPU_ARENA", default_value_t = true, action = clap::ArgAction::Set)]
    cpu_arena: bool,
    /// Override the detector's unclip ratio (box growth).
    #[arg(long, env = "OCR_DET_UNCLIP_RATIO")]
    det_unclip_ratio: Option<f32>,
    /// Override the detector's box score threshold.
    #[arg(long, env = "OCR_DET_BOX_THRESH")]
    det_box_thresh: Option<f32>,
    /// Override the detector's pixel threshold.
    #[arg(long, env = "OCR_DET_THRESH")]
    det_thresh: Option<f32>,
    /// Single-threaded detector sessions detecting images in parallel on CPU (0 = automatic:
    /// two, or one per four threads when that is more).
    #[arg(long, env = "OCR_DET_SESSIONS", default_value_t = 0)]
    det_sessions: usize,
    /// Override the narrowest recogniser input width (pixels).
    #[arg(long, env = "OCR_REC_MIN_WIDTH")]
    rec_min_width: Option<u32>,
    /// Recogniser sessions run in parallel (0 = one per thread on CPU).
    #[arg(long, env = "OCR_REC_SESSIONS", default_value_t = 0)]
    rec_sessions: usize,
    /// Detect whole-page rotation (0/90/180/270).
    #[arg(long, env = "OCR_ORIENTATION", default_value_t = true, action = clap::ArgAction::Set)]
    orientation: bool,
    /// Per-line 0/180 angle classifier (needs a set with a cls model, e.g. ppocrv5).
    #[arg(long, env = "OCR_LINE_ANGLE", default_value_t = false, action = clap::ArgAction::Set)]
    line_angle: bool,
    /// Override the detector side limit (pixels).
    #[arg(long, env = "OCR_DET_LIMIT")]
    det_limit: Option<u32>,
    /// Override the detector limit type.
    #[arg(long, env = "OCR_DET_LIMIT_TYPE", value_enum)]
    det_limit_type: Option<Limit>,
    /// Lines below this confidence are dropped.
    #[arg(long, env = "OCR_MIN_CONFIDENCE", default_value_t = 0.5)]
    min_confidence: f32,
    /// Refuse images with more pixels than this.
    #[arg(long, env = "OCR_MAX_PIXELS", default_value_t = ocr_engine::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Print per-stage times and totals to stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Image files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn main() {
    // Print the error chain plainly (no backtrace) and exit 1: this is a user-facing tool.
    if let Err(e) = run() {
        eprintln!("ocr: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let dylib = ocr_engine::check_dylib(args.ort_dylib_path.as_deref())?;
    let session = SessionSettings {
        dylib_path: dylib,
        provider: args.provider,
        device_id: args.device_id,
        conv_algo_search: args.cudnn_conv_algo,
        intra_threads: args.threads,
        spinning: args.spin,
        cpu_arena: args.cpu_arena,
    };
    let opts = EngineOptions {
        orientation: args.orientation,
        line_angle: args.line_angle,
        rec_batch: args.rec_batch,
        rec_width_step: args.rec_width_step,
        rec_batch_width: args.rec_batch_width,
        min_confidence: args.min_confidence,
        max_pixels: args.max_pixels,
        rec_sessions: args.rec_sessions,
        det_sessions: args.det_sessions,
        cpu_slots: 0,
        rec_min_width: args.rec_min_width,
        det_unclip_ratio: args.det_unclip_ratio,
        det_box_thresh: args.det_box_thresh,
        det_thresh: args.det_thresh,
        det_limit_side_len: args.det_limit,
        det_limit_type: args.det_limit_type.map(|l| match l {
            Limit::Max => LimitType::Max,
            Limit::Min => LimitType::Min,
        }),
    };
    let t_load = Instant::now();
    let engine = Engine::load(&args.model_dir, &args.model_set, &session, opts)
        .with_context(|| format!("loading model set {:?} from {}", args.model_set, args.model_dir.display()))?;
    let load_s = t_load.elapsed().as_secs_f64();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failures = 0usize;
    let mut times = StageTimes::default();
    let total = args.files.len();
    let t_all = Instant::now();
    let show_progress = total > 5;
    for (chunk_no, chunk) in args.files.chunks(args.batch.max(1)).enumerate() {
        let t = Instant::now();
        let cpu0 = process_cpu_seconds();
        let mut read: Vec<Result<Vec<u8>, String>> = Vec::with_capacity(chunk.len());
        for f in chunk {
            read.push(std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display())));
        }
        let bytes: Vec<&[u8]> = read.iter().filter_map(|r| r.as_deref().ok()).collect();
        let (pages, t_call) = engine.recognize_bytes_timed(&bytes);
        times.add(&t_call);
        // Wall time of the call, shared equally by its images (recognition is batched across them).
        let per_image = t.elapsed().as_secs_f64() / chunk.len() as f64;
        let cpu_per_image = (process_cpu_seconds() - cpu0) / chunk.len() as f64;
        let mut pages = pages.into_iter();
        for (f, r) in chunk.iter().zip(read) {
            let res: Result<Page, String> = match r {
                Err(e) => Err(e),
                Ok(_) => pages.next().expect("one page per input").map_err(|e| e.to_string()),
            };
            let file = f.display().to_string();
            match (&res, args.format) {
                (Ok(page), Format::Text) => {
                    writeln!(out, "{}", page.text())?;
                }
                (Ok(page), Format::Json) => {
                    let v = serde_json::json!({
                        "file": file,
                        "text": page.text(),
                        "lines": page.lines,
                        "rotation": page.rotation,
                        "seconds": per_image,
                        "cpu_seconds": cpu_per_image,
                    });
                    writeln!(out, "{v}")?;
                }
                (Err(e), Format::Json) => {
                    writeln!(out, "{}", serde_json::json!({"file": file, "error": e}))?;
                }
                (Err(_), Format::Text) => {}
            }
            if let Err(e) = res {
                failures += 1;
                eprintln!("ocr: {file}: {e}");
            }
        }
        out.flush()?;
        if show_progress {
            let done = ((chunk_no + 1) * args.batch.max(1)).min(total);
            eprintln!("ocr: {done}/{total} files, {:.1}s", t_all.elapsed().as_secs_f64());
        }
    }
    if args.stats {
        let wall = t_all.elapsed().as_secs_f64();
        eprintln!(
            "{}",
            serde_json::json!({
                "images": total,
                "load_seconds": load_s,
                "wall_seconds": wall,
                "images_per_second": total as f64 / wall,
                "stages": times,
            })
        );
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {total} inputs could not be recognised");
    }
    Ok(())
}

/// User + system CPU time of this process, all threads (Linux `/proc/self/stat`, 10 ms ticks);
/// 0 where unavailable. Lets benchmarks report throughput per CPU-second on a shared machine.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}
