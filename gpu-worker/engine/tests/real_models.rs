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

/// `qpdf OPTIONS in out` over `bytes`, if qpdf is installed (scripts/lib/checkers.sh installs it;
/// with `OCR_REQUIRE_CHECKERS=1` it must be).
#[allow(clippy::type_complexity)]
fn qpdf() -> Option<Box<dyn Fn(&[&str], &[u8]) -> Vec<u8>>> {
    if std::process::Command::new("qpdf").arg("--version").output().is_err() {
        let required = std::env::var("OCR_REQUIRE_CHECKERS").is_ok_and(|v| v == "1");
        assert!(!required, "OCR_REQUIRE_CHECKERS=1 but qpdf is missing; run scripts/lib/checkers.sh's checkers_ensure");
        eprintln!("SKIPPED encrypted-PDF checks: qpdf missing");
        return None;
    }
    Some(Box::new(|opts: &[&str], bytes: &[u8]| {
        let dir = std::env::temp_dir().join(format!("ocr-qpdf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, output) = (dir.join("in.pdf"), dir.join("out.pdf"));
        std::fs::write(&input, bytes).unwrap();
        let out = std::process::Command::new("qpdf").args(opts).arg(&input).arg(&output).output().unwrap();
        assert!(out.status.success(), "qpdf {opts:?}: {}", String::from_utf8_lossy(&out.stderr));
        let written = std::fs::read(&output).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        written
    }))
}

/// Whether the output-format tests must run their external checkers (scripts/test.sh installs
/// them with scripts/lib/checkers.sh and sets `OCR_REQUIRE_CHECKERS=1`).
fn checkers() -> Option<(PathBuf, PathBuf)> {
    let hocr = std::env::var_os("OCR_HOCR_CHECK").map(PathBuf::from).filter(|p| p.is_file());
    let xsd = std::env::var_os("OCR_ALTO_XSD").map(PathBuf::from).filter(|p| p.is_file());
    let tools = ["xmllint", "pdftotext"].iter().all(|t| std::process::Command::new(t).arg("-v").output().is_ok());
    match (hocr, xsd, tools) {
        (Some(h), Some(x), true) => Some((h, x)),
        _ => {
            let msg = "hocr-check (OCR_HOCR_CHECK), the ALTO schema (OCR_ALTO_XSD), xmllint or pdftotext missing; \
                       source scripts/lib/checkers.sh and run checkers_ensure";
            let required = std::env::var("OCR_REQUIRE_CHECKERS").is_ok_and(|v| v == "1");
            assert!(!required, "OCR_REQUIRE_CHECKERS=1 but {msg}");
            eprintln!("SKIPPED output-format checks: {msg}");
            None
        }
    }
}

/// Where [`rendered_page`] drew each word: `(word, [x0, y0, x1, y1])`, from the font's advances.
fn drawn_words() -> Vec<(String, [f32; 4])> {
    let font = font().expect("font");
    let mut out = Vec::new();
    for (i, line) in LINES.iter().enumerate() {
        let y = 30.0 + 62.0 * i as f32;
        let mut start = 0;
        for word in line.split(' ') {
            let before = imageproc::drawing::text_size(34.0, &font, &line[..start]).0 as f32;
            let width = imageproc::drawing::text_size(34.0, &font, word).0 as f32;
            out.push((word.to_string(), [40.0 + before, y, 40.0 + before + width, y + 34.0]));
            start += word.len() + 1;
        }
    }
    out
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let i = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) * (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    i / (area(a) + area(b) - i)
}

fn rect(q: &[[f32; 2]; 4]) -> [f32; 4] {
    let xs = q.iter().map(|p| p[0]);
    let ys = q.iter().map(|p| p[1]);
    [
        xs.clone().fold(f32::MAX, f32::min),
        ys.clone().fold(f32::MAX, f32::min),
        xs.fold(0.0, f32::max),
        ys.fold(0.0, f32::max),
    ]
}

/// Words come with boxes on the words as drawn, and a two-page result of the page passes each
/// format's external checker: hOCR `hocr-check`, ALTO the v4 schema, the searchable PDF
/// `pdftotext` (its text in reading order, a form feed between pages, and each extracted word's
/// box on the word's box).
#[test]
fn words_have_boxes_and_every_output_format_passes_its_checker() {
    use ocr_core::render::{self, PageImage};
    let Some(engine) = engine() else { return };
    let Some(img) = rendered_page() else { return };
    let Some((hocr_check, alto_xsd)) = checkers() else { return };
    // Page 2 is the page lower on a taller sheet: hocr-check 1.1.1 compares the boxes of every
    // page's lines with every page's (its XPath starts at the root), so two pages with text in
    // the same places fail its overlap check.
    let mut low = RgbImage::from_pixel(img.width(), img.height() * 2, Rgb([250, 250, 245]));
    image::imageops::replace(&mut low, &img, 0, i64::from(img.height()));
    let mut pages = engine.recognize(&[img.clone(), low.clone()]).into_iter();
    let (page, p2) = (pages.next().unwrap().unwrap(), pages.next().unwrap().unwrap());

    // Every drawn word is read as a word whose box overlaps where it was drawn (IoU >= 0.5).
    let words: Vec<&ocr_engine::Word> = page.lines.iter().flat_map(|l| &l.words).collect();
    for (text, drawn) in drawn_words() {
        let best = words.iter().filter(|w| w.text == text).map(|w| iou(rect(&w.quad), drawn)).fold(0.0, f32::max);
        assert!(best >= 0.5, "{text}: best IoU {best:.2} at {drawn:?}; words {words:?}");
    }

    let result = ocr_core::OcrResult::from_pages(vec![page.into_result_page(1), p2.into_result_page(2)], 0.0);
    let dir = std::env::temp_dir().join(format!("ocr-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("checker runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };

    let hocr = dir.join("page.hocr");
    std::fs::write(&hocr, render::hocr(&result, "page.png")).unwrap();
    let (ok, out) = run(std::process::Command::new(&hocr_check).arg(&hocr));
    assert!(ok && !out.contains("not ok") && out.contains("ok 1"), "hocr-check:\n{out}");

    let alto = dir.join("page.xml");
    std::fs::write(&alto, render::alto(&result, "page.png")).unwrap();
    let (ok, out) =
        run(std::process::Command::new("xmllint").args(["--noout", "--nonet", "--schema"]).arg(&alto_xsd).arg(&alto));
    assert!(ok, "ALTO does not validate against {}:\n{out}", alto_xsd.display());

    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let image = PageImage { jpeg, width: img.width(), height: img.height(), gray: false, orientation: 1 };
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(low.clone())
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let image2 = PageImage { jpeg, width: low.width(), height: low.height(), gray: false, orientation: 1 };
    let pdf = dir.join("page.pdf");
    std::fs::write(&pdf, render::searchable_pdf(&result, &[Some(image), Some(image2)], 72.0)).unwrap();
    let (ok, text) = run(std::process::Command::new("pdftotext").arg(&pdf).arg("-"));
    assert!(ok, "pdftotext: {text}");
    let pages: Vec<&str> = text.split('\u{c}').filter(|p| !p.trim().is_empty()).collect();
    assert_eq!(pages.len(), 2, "{text}");
    for p in pages {
        let f1 = word_f1(p, &LINES.join("\n"));
        assert!(f1 >= 0.9, "pdftotext page F1 {f1:.3}:\n{p}");
    }
    // At 72 dpi a PDF point is an image pixel: each extracted word's centre lies in its box.
    let (ok, bbox) = run(std::process::Command::new("pdftotext").arg("-bbox").arg(&pdf).arg("-"));
    assert!(ok, "{bbox}");
    let first_page = bbox.split("</page>").next().unwrap();
    let ours: Vec<(String, [f32; 4])> =
        result.pages[0].lines.iter().flat_map(|l| &l.words).map(|w| (w.text.clone(), rect(&w.bbox))).collect();
    let mut found = 0;
    for tag in first_page.split("<word ").skip(1) {
        let attr = |name: &str| -> f32 {
            let v = tag.split(&format!("{name}=\"")).nth(1).unwrap().split('"').next().unwrap();
            v.parse().unwrap()
        };
        let word = tag.split('>').nth(1).unwrap().split('<').next().unwrap().replace("&amp;", "&");
        let (cx, cy) = ((attr("xMin") + attr("xMax")) / 2.0, (attr("yMin") + attr("yMax")) / 2.0);
        let inside = ours.iter().any(|(t, r)| *t == word && cx >= r[0] && cx <= r[2] && cy >= r[1] && cy <= r[3]);
        assert!(inside, "pdftotext word {word:?} centred at ({cx:.1}, {cy:.1}) is in none of our boxes {ours:?}");
        found += 1;
    }
    assert_eq!(found, ours.len(), "{first_page}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Character error rate: edit distance over the reference's length, whitespace runs as one space.
fn cer(pred: &str, truth: &str) -> f64 {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").chars().collect::<Vec<char>>();
    let (p, t) = (norm(pred), norm(truth));
    let mut row: Vec<usize> = (0..=p.len()).collect();
    for (i, tc) in t.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, pc) in p.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(tc != pc)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[p.len()] as f64 / t.len().max(1) as f64
}

/// Every page of a multi-page TIFF reads as its own page (CER <= 0.01 each), in order.
#[test]
fn every_page_of_a_tiff_reads() {
    let Some(engine) = engine() else { return };
    let Some(font) = font() else { return };
    let texts = [
        ["Page one of three", "Invoice 2026-0417", "Total EUR 23.40"],
        ["Page two of three", "Delivery note 88", "Weight 12.5 kg"],
        ["Page three of three", "Signed by the driver", "Thank you"],
    ];
    let pages: Vec<RgbImage> = texts
        .iter()
        .map(|lines| {
            let mut img = RgbImage::from_pixel(560, 240, Rgb([255, 255, 255]));
            for (i, line) in lines.iter().enumerate() {
                imageproc::drawing::draw_text_mut(
                    &mut img,
                    Rgb([10, 10, 10]),
                    30,
                    30 + 64 * i as i32,
                    34.0,
                    &font,
                    line,
                );
            }
            img
        })
        .collect();
    let mut out = std::io::Cursor::new(Vec::new());
    let mut enc = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
    for p in &pages {
        enc.write_image::<tiff::encoder::colortype::RGB8>(p.width(), p.height(), p.as_raw()).unwrap();
    }
    let bytes = out.into_inner();
    let decoded =
        ocr_engine::decode_pages(&bytes, ocr_engine::DEFAULT_MAX_PIXELS, ocr_engine::DEFAULT_MAX_PAGES).unwrap();
    assert_eq!(decoded.len(), 3);
    for (k, (page, lines)) in engine.recognize(&decoded).into_iter().zip(&texts).enumerate() {
        let text = page.unwrap().text();
        let c = cer(&text, &lines.join("\n"));
        assert!(c <= 0.01, "page {}: CER {c:.3}\n{text}", k + 1);
    }
}

/// A PDF from its objects (numbered from 1; object 1 is the catalog), with a correct
/// cross-reference table and `trailer` added to the trailer dictionary.
fn raw_pdf(objects: &[String], trailer: &str) -> Vec<u8> {
    let mut w = ocr_core::fakes::PdfWriter::new();
    for (i, o) in objects.iter().enumerate() {
        w.obj(i as u32 + 1, o);
    }
    w.finish(1, trailer)
}

/// Pages of text in Helvetica: objects 1 catalog, 2 page tree, 3 font, then a page and its
/// content stream per page. `media` is each page's media box, `kids` overrides the page list.
fn text_pdf(pages: &[&[&str]], media: &str, kids: Option<(String, usize)>, catalog_extra: &str) -> Vec<u8> {
    let n = pages.len();
    let page_ids: Vec<String> = (0..n).map(|k| format!("{} 0 R", 4 + 2 * k)).collect();
    let (kids, count) = kids.unwrap_or((page_ids.join(" "), n));
    let mut objects = vec![
        format!("<< /Type /Catalog /Pages 2 0 R {catalog_extra} >>"),
        format!("<< /Type /Pages /Kids [{kids}] /Count {count} >>"),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    for (k, lines) in pages.iter().enumerate() {
        let mut stream = String::from("BT /F1 20 Tf 72 720 Td 28 TL\n");
        for l in lines.iter() {
            stream.push_str(&format!("({l}) Tj T*\n"));
        }
        stream.push_str("ET");
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox {media} /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
            5 + 2 * k
        ));
        objects.push(format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()));
    }
    raw_pdf(&objects, "")
}

fn pdfium_present() -> bool {
    let path = std::env::var_os("PDFIUM_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("OCR_MODEL_DIR")
            .map_or_else(|| repo_root().join("models"), PathBuf::from)
            .join("pdfium/libpdfium.so")
    });
    if !path.is_file() {
        assert!(
            !require(),
            "OCR_REQUIRE_MODELS=1 but PDFium is missing at {} (scripts/fetch-models.sh)",
            path.display()
        );
        eprintln!("SKIPPED PDF test: no PDFium at {}", path.display());
        return false;
    }
    true
}

/// Each page of a PDF is rendered and read (CER <= 0.01 per page); hostile PDFs fail alone,
/// each with a reason, within the pixel limit.
#[test]
fn pdf_pages_read_and_hostile_pdfs_fail_alone() {
    let Some(engine) = engine() else { return };
    if !pdfium_present() {
        return;
    }
    let texts: [&[&str]; 3] = [
        &["Page one of three", "Invoice 2026-0417", "Total EUR 23.40"],
        &["Page two of three", "Delivery note 88", "Weight 12.5 kg"],
        &["Page three of three", "Signed by the driver", "Thank you"],
    ];
    let a4 = "[0 0 595 842]";
    let good = text_pdf(&texts, a4, None, "");
    let (max_pixels, max_pages) = (ocr_engine::DEFAULT_MAX_PIXELS, ocr_engine::DEFAULT_MAX_PAGES);
    assert_eq!(ocr_engine::page_count(&good, max_pages).unwrap(), 3);
    let pages = ocr_engine::decode_pages(&good, max_pixels, max_pages).unwrap();
    // A4 at 200 dpi.
    assert_eq!(pages[0].dimensions(), (1653, 2339));
    for (k, (page, lines)) in engine.recognize(&pages).into_iter().zip(texts).enumerate() {
        let text = page.unwrap().text();
        let c = cer(&text, &lines.join("\n"));
        assert!(c <= 0.01, "page {}: CER {c:.3}\n{text}", k + 1);
    }

    let decode = |bytes: &[u8]| ocr_engine::decode_pages(bytes, max_pixels, max_pages);
    let err = |bytes: &[u8]| decode(bytes).map(|p| p.len()).unwrap_err().to_string();
    // Damaged or not a PDF at all.
    assert!(err(&good[..good.len() / 2]).contains("damaged"), "{}", err(&good[..good.len() / 2]));
    assert!(err(b"%PDF-1.7\nnot really").contains("damaged"));
    // Encrypted (a user password is needed).
    let encrypt = "<< /Filter /Standard /V 1 /R 2 /O <0102030405060708090a0b0c0d0e0f100102030405060708090a0b0c0d0e0f10> \
                   /U <1112131415161718191a1b1c1d1e1f201112131415161718191a1b1c1d1e1f20> /P -4 >>";
    let objects: Vec<String> = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into(),
        format!("<< /Type /Page /Parent 2 0 R /MediaBox {a4} >>"),
        encrypt.into(),
    ];
    let encrypted =
        raw_pdf(&objects, "/Encrypt 4 0 R /ID [<00112233445566778899aabbccddeeff> <00112233445566778899aabbccddeeff>]");
    assert!(err(&encrypted).contains("encrypted"), "{}", err(&encrypted));
    assert_eq!(ocr_core::pdf::facts(&encrypted), Err(ocr_core::pdf::PdfError::Encrypted));
    // Encrypted with a password only to change it: the upload check lets it through, and the
    // worker reads it; with a password to open it, both refuse it.
    if let Some(qpdf) = qpdf() {
        for (opts, opens) in [
            (&["--object-streams=generate", "--encrypt", "", "owner", "256", "--"][..], true),
            (&["--object-streams=generate", "--encrypt", "", "owner", "128", "--use-aes=y", "--"][..], true),
            (&["--encrypt", "user", "owner", "256", "--"][..], false),
        ] {
            let bytes = qpdf(opts, &good);
            let checked = ocr_core::pdf::facts(&bytes);
            if opens {
                assert_eq!(checked, Ok(ocr_core::pdf::PdfFacts { pages: 3 }), "{opts:?}");
                let pages = decode(&bytes).unwrap();
                let text = engine.recognize(&pages[..1]).pop().unwrap().unwrap().text();
                assert!(cer(&text, &texts[0].join("\n")) <= 0.01, "{opts:?}: {text}");
            } else {
                assert_eq!(checked, Err(ocr_core::pdf::PdfError::Encrypted));
                assert!(err(&bytes).contains("encrypted"), "{}", err(&bytes));
            }
        }
    }
    // A page bomb: one page listed 10,000 times. The upload check refuses it by its declared
    // count; the worker by the pages PDFium finds.
    let bomb = text_pdf(&texts[..1], a4, Some((vec!["4 0 R"; 10_000].join(" "), 10_000)), "");
    assert_eq!(ocr_core::pdf::facts(&bomb), Ok(ocr_core::pdf::PdfFacts { pages: 10_000 }));
    assert!(err(&bomb).contains("more than 50 pages"), "{}", err(&bomb));
    // A 200-inch page renders within the pixel limit, at a lower resolution.
    let huge = text_pdf(&texts[..1], "[0 0 14400 14400]", None, "");
    let page = &decode(&huge).unwrap()[0];
    assert!(u64::from(page.width()) * u64::from(page.height()) <= max_pixels, "{:?}", page.dimensions());
    // Fifty such pages are planned within five pages' worth of pixels together (rendered at a
    // lower resolution still), not 50 × 50 MP: 7.5 GB decoded.
    let many = text_pdf(&[texts[0]; 50], "[0 0 14400 14400]", None, "");
    let sizes = ocr_engine::probe_pages(&many, max_pixels, max_pages).unwrap();
    let total: u64 = sizes.iter().map(|&(w, h)| u64::from(w) * u64::from(h)).sum();
    assert!(sizes.len() == 50 && total <= 5 * max_pixels && total > 4 * max_pixels, "{total}");
    // JavaScript is never run: the page reads as any other.
    let js =
        text_pdf(&texts[..1], a4, None, "/OpenAction << /S /JavaScript /JS (app.alert\\(1\\); while\\(true\\){}) >>");
    let page = decode(&js).unwrap();
    let text = engine.recognize(&page).pop().unwrap().unwrap().text();
    assert!(cer(&text, &texts[0].join("\n")) <= 0.01, "{text}");
}

/// A scanned PDF (each page a JPEG, no text) read by the engine becomes searchable: the text
/// layer added to the upload (`ocr_core::pdf::add_text_layer`, what `GET …/result?format=pdf`
/// answers for a PDF upload) gives `pdftotext` each page's text (CER <= 0.01), and PDFium renders
/// the searchable file exactly as the scan: the words are invisible and the pages untouched.
#[test]
fn a_scanned_pdf_becomes_searchable_and_looks_the_same() {
    let Some(engine) = engine() else { return };
    if !pdfium_present() || checkers().is_none() {
        return;
    }
    let texts: [&[&str]; 2] = [
        &["Scanned page one", "Invoice 2026-0417", "Total EUR 23.40"],
        &["Scanned page two", "Delivery note 88", "Weight 12.5 kg"],
    ];
    let (max_pixels, max_pages) = (ocr_engine::DEFAULT_MAX_PIXELS, ocr_engine::DEFAULT_MAX_PAGES);
    let printed =
        ocr_engine::decode_pages(&text_pdf(&texts, "[0 0 595 842]", None, ""), max_pixels, max_pages).unwrap();
    // The scan: each rendered page as a JPEG filling an A4 page (hex-encoded, so the file is text).
    let mut objects = vec!["<< /Type /Catalog /Pages 2 0 R >>".to_string(), String::new()];
    let mut kids = Vec::new();
    for page in &printed {
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(page.clone())
            .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        let hex: String = jpeg.iter().map(|b| format!("{b:02x}")).collect();
        let n = objects.len() + 1;
        kids.push(format!("{n} 0 R"));
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /XObject << /Scan {} 0 R >> >> /Contents {} 0 R >>",
            n + 1,
            n + 2
        ));
        objects.push(format!(
            "<< /Type /XObject /Subtype /Image /Width {} /Height {} /ColorSpace /DeviceRGB /BitsPerComponent 8 \
             /Filter [/ASCIIHexDecode /DCTDecode] /Length {} >>\nstream\n{hex}>\nendstream",
            page.width(),
            page.height(),
            hex.len() + 1
        ));
        let draw = "q 595 0 0 842 0 0 cm /Scan Do Q";
        objects.push(format!("<< /Length {} >>\nstream\n{draw}\nendstream", draw.len()));
    }
    objects[1] = format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), kids.len());
    let scan = raw_pdf(&objects, "");

    let scanned = ocr_engine::decode_pages(&scan, max_pixels, max_pages).unwrap();
    let pages: Vec<ocr_core::OcrPage> = engine
        .recognize(&scanned)
        .into_iter()
        .enumerate()
        .map(|(k, p)| p.unwrap().into_result_page(k as u32 + 1))
        .collect();
    let result = ocr_core::OcrResult::from_pages(pages, 0.0);
    let layered = ocr_core::pdf::add_text_layer(&scan, &result).unwrap();
    assert!(layered.starts_with(&scan));

    let path = std::env::temp_dir().join(format!("ocr-scan-layer-{}.pdf", std::process::id()));
    std::fs::write(&path, &layered).unwrap();
    let out = std::process::Command::new("pdftotext").arg(&path).arg("-").output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let extracted: Vec<&str> = text.split('\u{c}').collect();
    for (k, lines) in texts.iter().enumerate() {
        let c = cer(extracted[k].trim(), &lines.join("\n"));
        assert!(c <= 0.01, "page {}: pdftotext CER {c:.3}\n{}", k + 1, extracted[k]);
    }
    // PDFium follows the update and draws nothing more.
    let again = ocr_engine::decode_pages(&layered, max_pixels, max_pages).unwrap();
    assert_eq!(again.len(), scanned.len());
    for (k, (a, b)) in again.iter().zip(&scanned).enumerate() {
        assert!(a.as_raw() == b.as_raw(), "page {} renders differently with its text layer", k + 1);
    }
}

/// A CJK font (Debian's fonts-droid-fallback, which scripts/setup.sh installs).
fn cjk_font() -> Option<ab_glyph::FontVec> {
    let path = "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf";
    match std::fs::read(path) {
        Ok(bytes) => ab_glyph::FontVec::try_from_vec(bytes).ok(),
        Err(_) => {
            assert!(!require(), "OCR_REQUIRE_MODELS=1 but {path} is missing (Debian fonts-droid-fallback)");
            eprintln!("SKIPPED: no CJK font at {path} (Debian fonts-droid-fallback)");
            None
        }
    }
}

/// Chinese lines, rendered, read as text, and each character is a word of its own (numbers
/// stay whole) whose box sits over the character drawn, left to right.
#[test]
fn chinese_characters_are_words_with_their_own_boxes() {
    let Some(engine) = engine() else { return };
    let Some(cjk) = cjk_font() else { return };
    let lines: [&[&str]; 3] = [
        &["发", "票", "号", "码", " ", "2026"],
        &["合", "计", "金", "额", " ", "23.40", " ", "元"],
        &["谢", "谢", "光", "临"],
    ];
    let Some(latin) = font() else { return };
    let (size, left) = (44.0, 40.0);
    let mut img = RgbImage::from_pixel(760, 300, Rgb([250, 250, 245]));
    // Where each drawn word is: [x0, y0, x1, y1]. The CJK font has no Latin glyphs: numbers and
    // spaces are drawn in DejaVu, as a document mixing scripts does.
    let mut drawn: Vec<(String, [f32; 4])> = Vec::new();
    for (i, parts) in lines.iter().enumerate() {
        let y = 30 + 90 * i as i32;
        let mut x = left;
        for part in parts.iter() {
            let f = if part.chars().any(ocr_engine::words::is_cjk) { &cjk } else { &latin };
            let w = imageproc::drawing::text_size(size, f, part).0 as f32;
            imageproc::drawing::draw_text_mut(&mut img, Rgb([20, 20, 20]), x as i32, y, size, f, part);
            if !part.trim().is_empty() {
                drawn.push((part.to_string(), [x, y as f32, x + w, y as f32 + size]));
            }
            x += if part.trim().is_empty() { size * 0.5 } else { w };
        }
    }
    let page = engine.recognize(&[img.clone()]).pop().unwrap().unwrap();
    let truth: String = lines.iter().map(|l| l.concat()).collect::<Vec<_>>().join("\n");
    let no_spaces = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let c = cer(&no_spaces(&page.text()), &no_spaces(&truth));
    assert!(c <= 0.05, "CER {c:.3}: {:?}", page.text());

    let words: Vec<&ocr_engine::Word> = page.lines.iter().flat_map(|l| &l.words).collect();
    let mut found = 0;
    for (text, [x0, y0, x1, y1]) in &drawn {
        let Some(w) = words.iter().find(|w| {
            &w.text == text && {
                let r = rect(&w.quad);
                let (cx, cy) = ((r[0] + r[2]) / 2.0, (r[1] + r[3]) / 2.0);
                cx >= *x0 && cx <= *x1 && cy >= *y0 - 8.0 && cy <= *y1 + 8.0
            }
        }) else {
            continue;
        };
        // No wider than the character and a little padding on each side.
        let r = rect(&w.quad);
        assert!(r[2] - r[0] <= (x1 - x0) + 0.6 * size, "{text}: box {r:?} for a drawn {:?}", [x0, y0, x1, y1]);
        found += 1;
    }
    eprintln!("{found} of {} drawn words read on their places", drawn.len());
    assert!(found * 10 >= drawn.len() * 9, "{found} of {} drawn words found on them: {words:?}", drawn.len());
    // Every CJK word is one character.
    for w in &words {
        if w.text.chars().any(ocr_engine::words::is_cjk) {
            assert_eq!(w.text.chars().count(), 1, "{w:?}");
        }
    }
    // A searchable PDF of it gives pdftotext the same characters (the text font's codes are
    // UTF-16 units, mapped back by its ToUnicode map).
    if checkers().is_some() {
        let text = no_spaces(&page.text());
        let result = ocr_core::OcrResult::from_pages(vec![page.into_result_page(1)], 0.0);
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        let image = ocr_core::render::PageImage { jpeg, width: 760, height: 300, gray: false, orientation: 1 };
        let path = std::env::temp_dir().join(format!("ocr-cjk-{}.pdf", std::process::id()));
        std::fs::write(&path, ocr_core::render::searchable_pdf(&result, &[Some(image)], 72.0)).unwrap();
        // -raw: in the text's own order (the layout analysis would take "23.40 元", far right,
        // for a column of its own).
        let out = std::process::Command::new("pdftotext").arg("-raw").arg(&path).arg("-").output().unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(no_spaces(&String::from_utf8_lossy(&out.stdout)), text);
    }
}
