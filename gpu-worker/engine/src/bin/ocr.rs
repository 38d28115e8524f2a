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
use ocr_engine::{Engine, EngineSettings, Page, StageTimes};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Recognise text in images (JPEG, PNG, WebP, TIFF).
#[derive(Debug, Parser)]
#[command(name = "ocr", version)]
struct Args {
    /// Output format: plain text, or JSON Lines (one object per file).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Images per engine call; detection and recognition overlap within a call.
    #[arg(long, env = "OCR_BATCH", default_value_t = 8)]
    batch: usize,
    /// Print per-stage times and totals to stderr at the end.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    engine: EngineSettings,
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
    let session = args.engine.session()?;
    let opts = args.engine.options();
    let t_load = Instant::now();
    let (dir, set) = (&args.engine.model_dir, &args.engine.model_set);
    let engine = Engine::load(dir, set, &session, opts)
        .with_context(|| format!("loading model set {set:?} from {}", dir.display()))?;
    let load_s = t_load.elapsed().as_secs_f64();

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failures = 0usize;
    let mut times = StageTimes::default();
    let total = args.files.len();
    let t_all = Instant::now();
    for (chunk_no, chunk) in args.files.chunks(args.batch.max(1)).enumerate() {
        failures += read_chunk(&engine, chunk, args.format, &mut times, &mut out)?;
        if total > 5 {
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

/// Reads one engine call's worth of files and writes their results; returns how many failed.
fn read_chunk(
    engine: &Engine,
    chunk: &[PathBuf],
    format: Format,
    times: &mut StageTimes,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let t = Instant::now();
    let cpu0 = process_cpu_seconds();
    let read: Vec<Result<Vec<u8>, String>> =
        chunk.iter().map(|f| std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))).collect();
    let bytes: Vec<&[u8]> = read.iter().filter_map(|r| r.as_deref().ok()).collect();
    let (pages, t_call) = engine.recognize_bytes_timed(&bytes);
    times.add(&t_call);
    // Wall time of the call, shared equally by its images (their work overlaps).
    let per_image = t.elapsed().as_secs_f64() / chunk.len() as f64;
    let cpu_per_image = (process_cpu_seconds() - cpu0) / chunk.len() as f64;
    let mut pages = pages.into_iter();
    let mut failures = 0;
    for (f, r) in chunk.iter().zip(read) {
        let res: Result<Page, String> = match r {
            Err(e) => Err(e),
            Ok(_) => pages.next().expect("one page per input").map_err(|e| e.to_string()),
        };
        let file = f.display().to_string();
        match (&res, format) {
            (Ok(page), Format::Text) => writeln!(out, "{}", page.text())?,
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
            (Err(e), Format::Json) => writeln!(out, "{}", serde_json::json!({"file": file, "error": e}))?,
            (Err(_), Format::Text) => {}
        }
        if let Err(e) = res {
            failures += 1;
            eprintln!("ocr: {file}: {e}");
        }
    }
    out.flush()?;
    Ok(failures)
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
