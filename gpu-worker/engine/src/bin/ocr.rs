//! `ocr`: run the OCR engine on image files.
//!
//! Prints text (default) or JSON Lines, one object per file: the API's result object
//! (`text`, `pages` with lines and words, and the first page's `lines`, `width`, `height`)
//! plus `file`, `rotation`, `seconds`, `cpu_seconds`; or `{"file","error"}`. hOCR, ALTO and
//! searchable PDF go to stdout for one file, or one file each into `--output-dir`.
//! Exits with status 1 when any input could not be read or recognised.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use image::RgbImage;
use ocr_core::OcrResult;
use ocr_core::render::{self, PageImage};
use ocr_engine::{Engine, EngineSettings, StageTimes};

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    Text,
    Json,
    Hocr,
    Alto,
    Pdf,
}

impl From<Format> for render::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::Text => render::Format::Text,
            Format::Json => render::Format::Json,
            Format::Hocr => render::Format::Hocr,
            Format::Alto => render::Format::Alto,
            Format::Pdf => render::Format::Pdf,
        }
    }
}

/// Recognise text in images (JPEG, PNG, WebP, TIFF).
#[derive(Debug, Parser)]
#[command(name = "ocr", version)]
struct Args {
    /// Output format: plain text, JSON Lines (one object per file), hOCR, ALTO v4 XML, or a
    /// searchable PDF (the image with an invisible text layer on the words; a PDF input keeps
    /// its own pages, the words added as invisible text to those without text).
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Write each file's result to DIR/<file name>.<txt|json|hocr|xml|pdf> instead of stdout
    /// (needed for hOCR, ALTO and PDF of more than one file).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Resolution a searchable PDF places the images at (pixels per inch).
    #[arg(long, default_value_t = 300.0)]
    pdf_dpi: f32,
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
    let whole_documents = matches!(args.format, Format::Hocr | Format::Alto | Format::Pdf);
    if whole_documents && args.output_dir.is_none() && args.files.len() > 1 {
        anyhow::bail!("--format {:?} writes one document per file: give one file or --output-dir", args.format);
    }
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
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
        failures += read_chunk(&engine, chunk, &args, &mut times, &mut out)?;
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
    args: &Args,
    times: &mut StageTimes,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let t = Instant::now();
    let cpu0 = process_cpu_seconds();
    let read: Vec<Result<Vec<u8>, String>> =
        chunk.iter().map(|f| std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))).collect();
    // Multi-page inputs (a TIFF's pages) are decoded here and read as pages of one result;
    // single images go to the engine as bytes, decoded in its detection threads.
    let docs: Vec<Option<Result<Vec<RgbImage>, String>>> = read
        .iter()
        .map(|r| match r {
            Ok(b) if ocr_engine::is_document(b, args.engine.max_pages) => Some(
                ocr_engine::decode_pages(b, args.engine.max_pixels, args.engine.max_pages).map_err(|e| e.to_string()),
            ),
            _ => None,
        })
        .collect();
    let bytes: Vec<&[u8]> =
        read.iter().zip(&docs).filter_map(|(r, d)| if d.is_none() { r.as_deref().ok() } else { None }).collect();
    let (pages, t_call) = engine.recognize_bytes_timed(&bytes);
    times.add(&t_call);
    let mut pages = pages.into_iter();
    let mut results: Vec<Result<Read, String>> = Vec::new();
    for (r, doc) in read.iter().zip(docs) {
        results.push(match (r, doc) {
            (Err(e), _) => Err(e.clone()),
            (Ok(_), None) => pages.next().expect("one page per input").map_err(|e| e.to_string()).map(|p| {
                let rotation = p.rotation;
                (OcrResult::from_pages(vec![p.into_result_page(1)], 0.0), rotation, None)
            }),
            (Ok(_), Some(Err(e))) => Err(e),
            (Ok(_), Some(Ok(images))) => {
                let (read, t_doc) = engine.recognize_timed(&images);
                times.add(&t_doc);
                read.into_iter()
                    .enumerate()
                    .map(|(k, p)| {
                        p.map(|p| p.into_result_page(k as u32 + 1)).map_err(|e| format!("page {}: {e}", k + 1))
                    })
                    .collect::<Result<Vec<_>, String>>()
                    .map(|p| (OcrResult::from_pages(p, 0.0), 0, Some(images)))
            }
        });
    }
    // Wall time of the call, shared equally by its images (their work overlaps).
    let per_image = t.elapsed().as_secs_f64() / chunk.len() as f64;
    let cpu_per_image = (process_cpu_seconds() - cpu0) / chunk.len() as f64;
    let mut failures = 0;
    for ((f, r), res) in chunk.iter().zip(read).zip(results) {
        let file = f.display().to_string();
        let written = match res {
            Ok((mut result, rotation, images)) => {
                result.seconds = per_image;
                let bytes = r.unwrap_or_default();
                render_one(&result, &bytes, images.as_deref(), f, args, rotation, cpu_per_image)
                    .and_then(|doc| emit(f, args, &doc, out).map_err(|e| format!("{e:#}")))
            }
            Err(e) => {
                if args.format == Format::Json && args.output_dir.is_none() {
                    writeln!(out, "{}", serde_json::json!({"file": file, "error": e}))?;
                }
                Err(e)
            }
        };
        if let Err(e) = written {
            failures += 1;
            eprintln!("ocr: {file}: {e}");
        }
    }
    out.flush()?;
    Ok(failures)
}

/// A file's result, the turn the engine gave it, and its decoded pages when it has several.
type Read = (OcrResult, u32, Option<Vec<RgbImage>>);

/// One file's result in the chosen format.
fn render_one(
    result: &OcrResult,
    bytes: &[u8],
    pages: Option<&[RgbImage]>,
    file: &std::path::Path,
    args: &Args,
    rotation: u32,
    cpu_seconds: f64,
) -> Result<Vec<u8>, String> {
    let name = file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(match args.format {
        Format::Text => render::text(result).into_bytes(),
        Format::Json => {
            let mut v = serde_json::to_value(result).map_err(|e| e.to_string())?;
            v["file"] = file.display().to_string().into();
            v["rotation"] = rotation.into();
            v["cpu_seconds"] = cpu_seconds.into();
            let mut line = v.to_string().into_bytes();
            line.push(b'\n');
            line
        }
        Format::Hocr => render::hocr(result, &name).into_bytes(),
        Format::Alto => render::alto(result, &name).into_bytes(),
        Format::Pdf => {
            // A PDF keeps its own pages, with the words added as invisible text (as the API
            // answers); only one that cannot take a text layer is written from its renderings.
            if ocr_engine::pdf::is_pdf(bytes) {
                match ocr_core::pdf::add_text_layer(bytes, result) {
                    Ok(pdf) => return Ok(pdf),
                    Err(e) => eprintln!("ocr: {name}: {e}; writing its rendered pages with the text instead"),
                }
            }
            let images = match pages {
                Some(pages) => pages.iter().map(|p| page_image(p).map(Some)).collect::<Result<Vec<_>, _>>()?,
                None => {
                    let img = ocr_engine::decode_image(bytes, args.engine.max_pixels).map_err(|e| e.to_string())?;
                    vec![Some(page_image(&img)?)]
                }
            };
            render::searchable_pdf(result, &images, args.pdf_dpi)
        }
    })
}

/// The image under a PDF page: the upright picture the boxes are measured on, as JPEG.
fn page_image(img: &RgbImage) -> Result<PageImage, String> {
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(img)
        .map_err(|e| format!("encoding the page image: {e}"))?;
    Ok(PageImage { jpeg, width: img.width(), height: img.height(), gray: false, orientation: 1 })
}

/// Writes a document to stdout or to its file in `--output-dir`.
fn emit(file: &std::path::Path, args: &Args, doc: &[u8], out: &mut impl Write) -> anyhow::Result<()> {
    match &args.output_dir {
        None => out.write_all(doc)?,
        Some(dir) => {
            let ext = render::Format::from(args.format).extension();
            let stem = file.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
            let path = dir.join(format!("{stem}.{ext}"));
            std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
        }
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
