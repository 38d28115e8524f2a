//! End-to-end tests with the real ONNX models.
//!
//! Needs `scripts/fetch-models.sh` (models in `OCR_MODEL_DIR`, default `<repo>/models`, and
//! `ORT_DYLIB_PATH`, default the library it installs there) and the DejaVu fonts. Without them
//! the tests print why and pass, unless `OCR_REQUIRE_MODELS=1` (scripts/test.sh sets it), in
//! which case they fail.
//!
//! The `eval_*` tests read the shared evaluation images in place from `OCR_EVAL_DIR` (default
//! `<repo>/../shared/eval`, never copied here), which a user's clone does not have: they are
//! `#[ignore]`d, so a plain run reports them as skipped, and scripts/test.sh runs them (with
//! `--run-ignored only`) when that folder exists. Run that way without the data, they fail.

#[path = "common/hostile.rs"]
mod hostile;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::{Rgb, RgbImage};
use ocr_engine::{ConvAlgoSearch, Engine, EngineError, EngineOptions, Provider, SessionSettings};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

fn require() -> bool {
    std::env::var("OCR_REQUIRE_MODELS").is_ok_and(|v| v == "1" || v == "true")
}

fn engine() -> Option<&'static Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let model_dir = std::env::var_os("OCR_MODEL_DIR").map_or_else(|| repo_root().join("models"), PathBuf::from);
            let dylib = std::env::var_os("ORT_DYLIB_PATH")
                .map_or_else(|| model_dir.join("onnxruntime/libonnxruntime.so.1.32.0"), PathBuf::from);
            let set = std::env::var("OCR_MODEL_SET").unwrap_or_else(|_| "ppocrv6-small".into());
            let present = dylib.is_file() && model_dir.join(&set).join("manifest.json").is_file();
            if !present {
                let msg = format!(
                    "models or ONNX Runtime missing (OCR_MODEL_DIR={}, ORT_DYLIB_PATH={}); run scripts/fetch-models.sh",
                    model_dir.display(),
                    dylib.display()
                );
                assert!(!require(), "OCR_REQUIRE_MODELS=1 but {msg}");
                eprintln!("SKIPPED real-model test: {msg}");
                return None;
            }
            let session = SessionSettings {
                dylib_path: dylib,
                provider: Provider::Cpu,
                device_id: 0,
                conv_algo_search: ConvAlgoSearch::Heuristic,
                intra_threads: 2,
                spinning: false,
                cpu_arena: false,
            };
            Some(Engine::load(&model_dir, &set, &session, EngineOptions::default()).expect("engine loads"))
        })
        .as_ref()
}

/// Same normalisation as eval/score.py: NFKC is skipped (ASCII test text), case-folded,
/// surrounding punctuation stripped.
fn tokens(s: &str) -> Vec<String> {
    s.split_whitespace()
        .map(|t| t.to_lowercase().trim_matches(|c: char| ".,;:!?\"'()[]{}<>«»“”‘’*#-_/\\|`~".contains(c)).to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Order-insensitive word F1 (bag of words), as eval/score.py computes it.
fn word_f1(pred: &str, gt: &str) -> f64 {
    let count = |v: Vec<String>| {
        let mut m = HashMap::new();
        for t in v {
            *m.entry(t).or_insert(0usize) += 1;
        }
        m
    };
    let (p, g) = (count(tokens(pred)), count(tokens(gt)));
    let tp: usize = p.iter().map(|(k, &n)| n.min(*g.get(k).unwrap_or(&0))).sum();
    let (np, ng): (usize, usize) = (p.values().sum(), g.values().sum());
    if tp == 0 {
        return 0.0;
    }
    let (pr, rc) = (tp as f64 / np as f64, tp as f64 / ng as f64);
    2.0 * pr * rc / (pr + rc)
}

fn font() -> Option<ab_glyph::FontVec> {
    for p in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ] {
        if let Ok(bytes) = std::fs::read(p) {
            return ab_glyph::FontVec::try_from_vec(bytes).ok();
        }
    }
    None
}

const LINES: [&str; 4] = ["INVOICE 2026-0417", "Coffee beans 1kg 18.90", "Delivery 4.50", "TOTAL EUR 23.40"];

/// The rendered test page; `None` (the test then skips) only when fonts are missing and models
/// are not required.
fn rendered_page() -> Option<RgbImage> {
    let Some(font) = font() else {
        assert!(!require(), "OCR_REQUIRE_MODELS=1 but no DejaVu/Liberation font is installed (fonts-dejavu-core)");
        eprintln!("SKIPPED: no DejaVu/Liberation font installed (Debian fonts-dejavu-core)");
        return None;
    };
    let mut img = RgbImage::from_pixel(640, 300, Rgb([250, 250, 245]));
    for (i, line) in LINES.iter().enumerate() {
        imageproc::drawing::draw_text_mut(&mut img, Rgb([20, 20, 20]), 40, 30 + 62 * i as i32, 34.0, &font, line);
    }
    Some(img)
}

#[test]
fn reads_rendered_text_in_all_formats_and_rotations() {
    let Some(engine) = engine() else { return };
    let Some(img) = rendered_page() else { return };
    let gt = LINES.join("\n");
    let mut encoded = Vec::new();
    for fmt in [image::ImageFormat::Png, image::ImageFormat::Jpeg, image::ImageFormat::Tiff, image::ImageFormat::WebP] {
        let mut buf = Vec::new();
        image::DynamicImage::ImageRgb8(img.clone()).write_to(&mut std::io::Cursor::new(&mut buf), fmt).unwrap();
        encoded.push((fmt, buf));
    }
    let inputs: Vec<&[u8]> = encoded.iter().map(|(_, b)| b.as_slice()).collect();
    for ((fmt, _), page) in encoded.iter().zip(engine.recognize_bytes(&inputs)) {
        let page = page.unwrap();
        let f1 = word_f1(&page.text(), &gt);
        assert!(f1 >= 0.9, "{fmt:?}: F1 {f1:.3}\n{}", page.text());
        assert_eq!(page.lines.len(), 4, "{fmt:?}: {:?}", page.lines);
        assert!(page.lines[3].text.contains("23.40"), "{:?}", page.lines[3]);
    }
    // Sideways and upside-down photos of the same page read the same, boxes in input pixels.
    let turned = [image::imageops::rotate90(&img), image::imageops::rotate180(&img), image::imageops::rotate270(&img)];
    for (k, page) in engine.recognize(&turned).into_iter().enumerate() {
        let page = page.unwrap();
        let f1 = word_f1(&page.text(), &gt);
        assert!(
            f1 >= 0.9,
            "rotation {}: F1 {f1:.3} (engine turned it {}°)\n{}",
            90 * (k + 1),
            page.rotation,
            page.text()
        );
        let (w, h) = turned[k].dimensions();
        for l in &page.lines {
            assert!(l.quad.iter().all(|p| p[0] >= 0.0 && p[0] <= w as f32 && p[1] >= 0.0 && p[1] <= h as f32));
        }
    }
}

/// One batch mixing hostile files with the rendered page in unusual encodings: every bad file
/// fails alone with a typed, non-retryable error, and every encoding of the page reads its text.
#[test]
fn hostile_files_in_a_batch_fail_alone_and_good_ones_read() {
    use hostile::*;
    use image::{DynamicImage, ImageFormat};
    let Some(engine) = engine() else { return };
    let Some(img) = rendered_page() else { return };
    let gt = LINES.join("\n");
    let jpeg = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg);
    let png = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Png);
    let blank = RgbImage::from_pixel(64, 64, Rgb([255, 255, 255]));
    let rgba = DynamicImage::ImageRgb8(img.clone()).to_rgba8();
    let blank_rgba = DynamicImage::ImageRgb8(blank.clone()).to_rgba8();
    // (name, bytes, true = has the page's text, false = must fail)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("zero bytes", Vec::new(), false),
        ("JPEG", jpeg.clone(), true),
        ("PNG cut in half", png[..png.len() / 2].to_vec(), false),
        ("PNG 16-bit RGB", png16(&img, false), true),
        ("JPEG cut after 200 bytes", jpeg[..200].to_vec(), false),
        ("PNG 16-bit grey", png16(&img, true), true),
        ("PNG claiming 100000x100000", png_claiming(100_000, 100_000), false),
        ("PNG palette + tRNS, transparent black background", png_palette_alpha(&img), true),
        ("JPEG claiming 65535x65535", jpeg_claiming(&jpeg, 65535, 65535), false),
        ("PNG grey+alpha, transparent black background", png_gray_alpha(&img), true),
        ("JPEG claiming 7000x7000", jpeg_claiming(&jpeg, 7000, 7000), false),
        ("JPEG stored sideways, EXIF orientation 6", jpeg_with_orientation(&image::imageops::rotate270(&img), 6), true),
        ("WebP canvas claiming 16384x16384", webp_claiming(16384, 16384), false),
        ("WebP animated, the page first", animated_webp(&[rgba, blank_rgba]), true),
        ("TIFF claiming 100000x100000", tiff_claiming(100_000, 100_000), false),
        ("TIFF two pages, the page first", multi_page_tiff(&[img.clone(), blank]), true),
        ("GIF", b"GIF89a\x01\0\x01\0\0\0\0;".to_vec(), false),
    ];
    let inputs: Vec<&[u8]> = cases.iter().map(|(_, b, _)| b.as_slice()).collect();
    let t = std::time::Instant::now();
    let results = engine.recognize_bytes(&inputs);
    let took = t.elapsed();
    eprintln!("{} inputs in {took:?}", inputs.len());
    assert!(took.as_secs() < 120, "batch took {took:?}");
    assert_eq!(results.len(), cases.len());
    for ((name, _, good), r) in cases.iter().zip(&results) {
        match (good, r) {
            (true, Ok(page)) => {
                let f1 = word_f1(&page.text(), &gt);
                eprintln!("{name:<52} text, word F1 {f1:.3}");
                assert!(f1 >= 0.9, "{name}: F1 {f1:.3}\n{}", page.text());
            }
            (false, Err(e)) => {
                eprintln!("{name:<52} error: {e}");
                assert!(
                    matches!(e, EngineError::UnsupportedFormat | EngineError::Decode(_) | EngineError::TooLarge { .. }),
                    "{name}: {e:?}"
                );
                assert!(!e.is_retryable(), "{name}");
            }
            (true, Err(e)) => panic!("{name}: wanted text, got {e:?}"),
            (false, Ok(page)) => panic!("{name}: wanted an error, got a page: {:?}", page.text()),
        }
    }
}

/// Why an eval test is ignored by default; scripts/test.sh runs them when the data is there.
const NEEDS_EVAL: &str = "needs the shared evaluation sets (OCR_EVAL_DIR, default ../shared/eval)";

/// The evaluation sets. The eval tests only run when asked for (they are ignored by default), so
/// missing data is a failure, never a silent pass.
fn eval_dir() -> PathBuf {
    let dir = std::env::var_os("OCR_EVAL_DIR").map_or_else(|| repo_root().join("../shared/eval"), PathBuf::from);
    assert!(dir.join("A/manifest.jsonl").is_file(), "no evaluation sets at {}: {NEEDS_EVAL}", dir.display());
    dir
}

/// The engine, which an eval test needs: asked for explicitly, it may not skip.
fn eval_engine() -> &'static Engine {
    engine().expect("the eval tests need the models (scripts/fetch-models.sh)")
}

fn eval_f1(dir: &Path, images: &[&str]) -> f64 {
    let engine = eval_engine();
    let manifest: HashMap<String, String> = images
        .iter()
        .map(|_| ())
        .next()
        .map(|_| {
            let set = images[0].split('/').next().unwrap();
            std::fs::read_to_string(dir.join(set).join("manifest.jsonl"))
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (v["image"].as_str().unwrap().to_string(), v["text"].as_str().unwrap().to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let bytes: Vec<Vec<u8>> = images.iter().map(|i| std::fs::read(dir.join(i)).unwrap()).collect();
    let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
    let (mut pred, mut gt) = (String::new(), String::new());
    for (img, page) in images.iter().zip(engine.recognize_bytes(&refs)) {
        pred.push_str(&page.unwrap().text());
        pred.push('\n');
        gt.push_str(&manifest[*img]);
        gt.push('\n');
    }
    word_f1(&pred, &gt)
}

/// Word F1 on a few receipts and printed pages (set A); measured 0.935 when written.
#[test]
#[ignore = "needs the shared evaluation sets (OCR_EVAL_DIR, default ../shared/eval)"]
fn eval_set_a_does_not_regress() {
    let dir = eval_dir();
    let f1 = eval_f1(
        &dir,
        &["A/images/sroie_000.jpg", "A/images/sroie_100.jpg", "A/images/sroie_300.jpg", "A/images/tess_phototest.png"],
    );
    eprintln!("set A sample word F1 {f1:.3}");
    assert!(f1 >= 0.91, "set A word F1 regressed: {f1:.3}");
}

/// Word F1 on a few scene-text photos (set B); measured 0.82 when written.
#[test]
#[ignore = "needs the shared evaluation sets (OCR_EVAL_DIR, default ../shared/eval)"]
fn eval_set_b_does_not_regress() {
    let dir = eval_dir();
    let f1 = eval_f1(
        &dir,
        &[
            "B/images/ic15_img_2.jpg",
            "B/images/ic15_img_10.jpg",
            "B/images/ic15_img_108.jpg",
            "B/images/ic15_img_112.jpg",
        ],
    );
    eprintln!("set B sample word F1 {f1:.3}");
    assert!(f1 >= 0.75, "set B word F1 regressed: {f1:.3}");
}

/// A receipt photographed sideways or upside down reads about as well as upright.
#[test]
#[ignore = "needs the shared evaluation sets (OCR_EVAL_DIR, default ../shared/eval)"]
fn eval_receipt_reads_in_every_orientation() {
    let engine = eval_engine();
    let dir = eval_dir();
    let bytes = std::fs::read(dir.join("A/images/sroie_000.jpg")).unwrap();
    let img = ocr_engine::decode_image(&bytes, ocr_engine::DEFAULT_MAX_PIXELS).unwrap();
    let imgs = [
        img.clone(),
        image::imageops::rotate90(&img),
        image::imageops::rotate180(&img),
        image::imageops::rotate270(&img),
    ];
    let texts: Vec<String> = engine.recognize(&imgs).into_iter().map(|p| p.unwrap().text()).collect();
    for (k, t) in texts.iter().enumerate().skip(1) {
        let f1 = word_f1(t, &texts[0]);
        assert!(f1 >= 0.9, "rotation {}: F1 vs upright {f1:.3}\n{t}", 90 * k);
    }
}
