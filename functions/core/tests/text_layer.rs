//! The text layer added to a PDF upload (`ocr_core::pdf::add_text_layer`), read back by
//! poppler: on scanned pages laid out every way the page tree allows (offset and cropped
//! boxes, every `/Rotate`, inherited attributes, contents as a stream, an array or none), in
//! files qpdf rewrote with object and cross-reference streams or linearized. For each:
//! - `qpdf --check` finds the update sound and `pdfinfo` the same pages;
//! - `pdftotext -bbox` finds every recognised word inside the box where it was read, mapped
//!   through the page's crop box and turn;
//! - `pdftoppm` renders every page exactly as the original (the text is invisible, and the
//!   page's own drawing is untouched);
//! - a page that had text keeps only its own.
//!
//! Needs `qpdf`, `pdfinfo`, `pdftotext` and `pdftoppm` (scripts/lib/checkers.sh installs them and
//! sets `OCR_REQUIRE_CHECKERS=1`; without that the test reports itself skipped).

use std::path::Path;
use std::process::Command;

use ocr_core::fakes::PdfWriter as Writer;
use ocr_core::pdf::{LayerError, add_text_layer};
use ocr_core::{OcrLine, OcrPage, OcrResult, OcrWord};

fn tools() -> bool {
    let found = ["qpdf", "pdfinfo", "pdftotext", "pdftoppm"].iter().all(|t| Command::new(t).arg("-v").output().is_ok());
    if !found {
        let msg = "qpdf or poppler-utils missing; source scripts/lib/checkers.sh and run checkers_ensure";
        assert!(!std::env::var("OCR_REQUIRE_CHECKERS").is_ok_and(|v| v == "1"), "OCR_REQUIRE_CHECKERS=1 but {msg}");
        eprintln!("SKIPPED text layer checks: {msg}");
    }
    found
}

/// A picture with something to see in every corner: a gradient and a dark square at the top
/// left of the stored image.
fn picture() -> Vec<u8> {
    let mut px = Vec::with_capacity(64 * 48);
    for y in 0..48u32 {
        for x in 0..64u32 {
            px.push(if x < 16 && y < 12 { 0 } else { (40 + x * 3 + y) as u8 });
        }
    }
    px
}

/// How a test page is laid out.
struct Layout {
    media: [f32; 4],
    crop: Option<[f32; 4]>,
    rotate: i32,
}

impl Layout {
    /// The shown page's size in points (crop box, turned).
    fn shown(&self) -> (f32, f32) {
        let b = self.crop.unwrap_or(self.media);
        let (w, h) = (b[2] - b[0], b[3] - b[1]);
        if self.rotate.rem_euclid(180) == 90 { (h, w) } else { (w, h) }
    }
}

fn rect(r: [f32; 4]) -> String {
    format!("[{} {} {} {}]", r[0], r[1], r[2], r[3])
}

/// A scanned document: one picture per page filling its crop box. Pages 1–2 sit under an
/// intermediate node that gives them resources, media box, crop box and rotation; the rest
/// carry their own. The last page has text of its own (a font and a `Tj`) when `with_text`.
fn scanned(layouts: &[Layout], with_text: bool) -> Vec<u8> {
    let mut w = Writer::new();
    w.obj(1, "<< /Type /Catalog /Pages 2 0 R >>");
    w.stream(
        3,
        "/Type /XObject /Subtype /Image /Width 64 /Height 48 /ColorSpace /DeviceGray /BitsPerComponent 8",
        &picture(),
    );
    w.obj(4, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>");
    let mut kids = vec!["10 0 R".to_string()];
    let mut inner = Vec::new();
    for (k, l) in layouts.iter().enumerate() {
        let num = 20 + 3 * k as u32;
        let b = l.crop.unwrap_or(l.media);
        let draw = format!("q {} 0 0 {} {} {} cm /Im0 Do Q", b[2] - b[0], b[3] - b[1], b[0], b[1]);
        let last = k + 1 == layouts.len();
        let text = last && with_text;
        let draw = if text {
            format!("{draw}\nBT /F0 12 Tf {} {} Td (Printed) Tj ET", b[0] + 20.0, b[1] + 20.0)
        } else {
            draw
        };
        let mut boxes = String::new();
        if k != 1 {
            // Page 1 overrides what its node gives, but its resources; page 2 inherits all;
            // pages 3+ carry everything.
            let crop = l.crop.unwrap_or(l.media);
            boxes = format!(" /MediaBox {} /CropBox {} /Rotate {}", rect(l.media), rect(crop), l.rotate);
        }
        let (resources, parent) = if k < 2 { (String::new(), 10) } else { (" /Resources 5 0 R".to_string(), 2) };
        let resources =
            if text { " /Resources << /XObject << /Im0 3 0 R >> /Font << /F0 4 0 R >> >>".into() } else { resources };
        // Contents: a stream, an array of two, or (on a page of its own) none.
        let contents = match k % 3 {
            1 => {
                let (a, b2) = draw.split_at(draw.find(" /Im0").unwrap());
                w.stream(num + 1, "", a.as_bytes());
                w.stream(num + 2, "", b2.as_bytes());
                format!(" /Contents [{} 0 R {} 0 R]", num + 1, num + 2)
            }
            _ => {
                w.stream(num + 1, "", draw.as_bytes());
                format!(" /Contents {} 0 R", num + 1)
            }
        };
        w.obj(num, &format!("<< /Type /Page /Parent {parent} 0 R{boxes}{resources}{contents} >>"));
        if k < 2 {
            inner.push(format!("{num} 0 R"));
        } else {
            kids.push(format!("{num} 0 R"));
        }
    }
    w.obj(5, "<< /XObject << /Im0 3 0 R >> >>");
    // The intermediate node's attributes are the second page's layout (the first overrides its
    // media box and crop box).
    let l = &layouts[1.min(layouts.len() - 1)];
    let mut attrs = format!(" /MediaBox {} /Rotate {}", rect(l.media), l.rotate);
    if let Some(c) = l.crop {
        attrs += &format!(" /CropBox {}", rect(c));
    }
    w.obj(
        10,
        &format!(
            "<< /Type /Pages /Parent 2 0 R /Kids [{}] /Count {} /Resources 5 0 R{attrs} >>",
            inner.join(" "),
            inner.len()
        ),
    );
    w.obj(2, &format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), layouts.len()));
    w.finish(1, "")
}

/// A result for the document as the worker reads it: a page of `px_w × px_h` pixels per page,
/// each with two words at known places.
fn result(layouts: &[Layout]) -> OcrResult {
    let pages = layouts
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let (w, h) = l.shown();
            let (px_w, px_h) = ((w * 200.0 / 72.0).round() as u32, (h * 200.0 / 72.0).round() as u32);
            let word = |text: String, x0: f32, y0: f32, x1: f32, y1: f32| OcrWord {
                text,
                confidence: 0.9,
                bbox: [[x0, y0], [x1, y0], [x1, y1], [x0, y1]],
            };
            // Near the top left and the bottom right, so a wrong turn or offset shows.
            let (fw, fh) = (px_w as f32, px_h as f32);
            let a = word(format!("alpha{}", k + 1), 0.05 * fw, 0.05 * fh, 0.35 * fw, 0.10 * fh);
            let b = word(format!("omega{}", k + 1), 0.60 * fw, 0.85 * fh, 0.90 * fw, 0.90 * fh);
            let lines = vec![
                OcrLine { text: a.text.clone(), confidence: 0.9, bbox: a.bbox, words: vec![a] },
                OcrLine { text: b.text.clone(), confidence: 0.9, bbox: b.bbox, words: vec![b] },
            ];
            OcrPage::new(k as u32 + 1, px_w, px_h, lines)
        })
        .collect();
    OcrResult::from_pages(pages, 0.1)
}

fn layouts() -> Vec<Layout> {
    vec![
        Layout { media: [0.0, 0.0, 612.0, 792.0], crop: None, rotate: 0 },
        Layout { media: [100.0, 200.0, 712.0, 992.0], crop: Some([150.0, 250.0, 662.5, 942.0]), rotate: 90 },
        Layout { media: [0.0, 0.0, 595.0, 842.0], crop: None, rotate: 180 },
        Layout { media: [-50.0, -60.0, 400.0, 300.0], crop: Some([-40.0, -50.0, 390.0, 290.0]), rotate: 270 },
        Layout { media: [0.0, 0.0, 300.0, 500.0], crop: None, rotate: -90 },
    ]
}

/// `pdftotext -bbox` words per page: (crop box width, height, [(text, x0, y0, x1, y1)]). The
/// size is the crop box's before the page's turn; the boxes are on the page as shown.
type Words = Vec<(f32, f32, Vec<(String, [f32; 4])>)>;

fn bbox_words(path: &Path) -> Words {
    // Boxes within the crop box (what is shown), not the media box.
    let out = Command::new("pdftotext").args(["-bbox", "-cropbox"]).arg(path).arg("-").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let html = String::from_utf8(out.stdout).unwrap();
    let attr = |s: &str, name: &str| -> f32 {
        let at = s.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        s[at..at + s[at..].find('"').unwrap()].parse().unwrap()
    };
    let mut pages: Words = Vec::new();
    for line in html.lines().map(str::trim) {
        if line.starts_with("<page ") {
            pages.push((attr(line, "width"), attr(line, "height"), Vec::new()));
        } else if line.starts_with("<word ") {
            let text = &line[line.find('>').unwrap() + 1..line.rfind("</word>").unwrap()];
            let b = [attr(line, "xMin"), attr(line, "yMin"), attr(line, "xMax"), attr(line, "yMax")];
            pages.last_mut().unwrap().2.push((text.to_string(), b));
        }
    }
    pages
}

fn check(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    // qpdf exits 3 for warnings only: none are allowed here either.
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn render(path: &Path, dir: &Path, name: &str) -> Vec<Vec<u8>> {
    let prefix = dir.join(name);
    check("pdftoppm", &["-r", "20", "-gray", path.to_str().unwrap(), prefix.to_str().unwrap()]);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&format!("{name}-")))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// Adds the layer to `original` and checks the result as the module's comment says.
fn layered_and_checked(original: &[u8], layouts: &[Layout], with_text: bool, dir: &Path, name: &str) {
    let result = result(layouts);
    let layered = add_text_layer(original, &result).unwrap();
    if let Ok(dir) = std::env::var("TEXT_LAYER_KEEP") {
        std::fs::write(format!("{dir}/{name}.pdf"), original).unwrap();
        std::fs::write(format!("{dir}/{name}-layer.pdf"), &layered).unwrap();
    }
    assert!(layered.starts_with(original), "{name}: the original's bytes are kept");
    let (before, after) = (dir.join(format!("{name}.pdf")), dir.join(format!("{name}-layer.pdf")));
    std::fs::write(&before, original).unwrap();
    std::fs::write(&after, &layered).unwrap();
    check("qpdf", &["--check", after.to_str().unwrap()]);
    let info = check("pdfinfo", &[after.to_str().unwrap()]);
    assert!(info.contains(&format!("Pages:           {}", layouts.len())), "{name}: {info}");

    let pages = bbox_words(&after);
    assert_eq!(pages.len(), layouts.len(), "{name}");
    for (k, ((pw, ph, words), l)) in pages.iter().zip(layouts).enumerate() {
        let c = l.crop.unwrap_or(l.media);
        let (cw, ch) = (c[2] - c[0], c[3] - c[1]);
        assert!((pw - cw).abs() < 0.5 && (ph - ch).abs() < 0.5, "{name} page {}: {pw}x{ph}, not {cw}x{ch}", k + 1);
        let (w, h) = l.shown();
        if with_text && k + 1 == layouts.len() {
            let texts: Vec<&str> = words.iter().map(|w| w.0.as_str()).collect();
            assert_eq!(texts, ["Printed"], "{name}: a page with text keeps only its own");
            continue;
        }
        let page = &result.pages[k];
        let (sx, sy) = (w / page.width as f32, h / page.height as f32);
        for line in &page.lines {
            let word = &line.words[0];
            let found = words.iter().find(|w| w.0 == word.text);
            let Some((_, b)) = found else { panic!("{name} page {}: {} not in {words:?}", k + 1, word.text) };
            let want = [word.bbox[0][0] * sx, word.bbox[0][1] * sy, word.bbox[2][0] * sx, word.bbox[2][1] * sy];
            // The text box is the font's (0.2 em below the baseline to 0.8 above) on the word's.
            let near = b.iter().zip(want).all(|(got, want)| (got - want).abs() < 2.0);
            assert!(near, "{name} page {}: {} at {b:?}, read at {want:?}", k + 1, word.text);
        }
    }
    let (a, b) = (render(&before, dir, &format!("{name}-o")), render(&after, dir, &format!("{name}-l")));
    assert_eq!(a.len(), layouts.len(), "{name}");
    assert!(a == b, "{name}: the pages look different with the text layer");
}

/// A scratch folder, removed when dropped.
struct Dir(std::path::PathBuf);

impl Dir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn words_land_where_they_were_read_on_every_page_layout() {
    if !tools() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("text-layer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = Dir(dir);
    let layouts = layouts();
    let original = scanned(&layouts, true);
    layered_and_checked(&original, &layouts, true, dir.path(), "plain");

    // The same document as qpdf rewrites it: the update then follows a cross-reference stream
    // (and object streams hold the page tree), or a linearized file's two sections.
    let src = dir.path().join("src.pdf");
    std::fs::write(&src, &original).unwrap();
    for (name, args) in [
        ("objstm", &["--object-streams=generate"][..]),
        ("linear", &["--linearize"][..]),
        ("linear-objstm", &["--linearize", "--object-streams=generate"][..]),
        ("qdf", &["--qdf"][..]),
    ] {
        let out = dir.path().join(format!("{name}-src.pdf"));
        let mut a: Vec<&str> = args.to_vec();
        a.extend([src.to_str().unwrap(), out.to_str().unwrap()]);
        check("qpdf", &a);
        layered_and_checked(&std::fs::read(&out).unwrap(), &layouts, true, dir.path(), name);
    }
}

#[test]
fn a_document_with_text_on_every_page_comes_back_as_it_is() {
    let layouts = vec![Layout { media: [0.0, 0.0, 200.0, 200.0], crop: None, rotate: 0 }];
    let original = scanned(&layouts, true);
    assert_eq!(add_text_layer(&original, &result(&layouts)).unwrap(), original);
}

#[test]
fn a_result_for_other_pages_or_an_encrypted_file_is_refused() {
    let layouts = layouts();
    let original = scanned(&layouts, false);
    let short = result(&layouts[..3]);
    assert_eq!(add_text_layer(&original, &short), Err(LayerError::PageCount { pdf: 5, result: 3 }));
    // The trailer comes after every object: lengthening it moves no offset.
    let at = original.windows(11).rposition(|w| w == b"/Root 1 0 R").unwrap() + 11;
    let encrypted = [&original[..at], b" /Encrypt << /Filter /Standard >>", &original[at..]].concat();
    assert_eq!(add_text_layer(&encrypted, &result(&layouts)), Err(LayerError::Encrypted));
    assert!(matches!(add_text_layer(b"%PDF-1.4\nnothing here", &result(&layouts)), Err(LayerError::Unreadable(_))));
}

/// Found by fuzzing: a catalog that names itself as the page tree. Taken for a page, it would
/// have been rewritten as one, and the file's catalog lost.
#[test]
fn a_page_tree_that_leads_back_to_the_catalog_is_refused() {
    let mut w = Writer::new();
    w.obj(1, "<< /Type /Catalog /Pages 1 0 R >>");
    w.obj(2, "<< /Type /Pages /Kids [3 0 R] /Count 1 >>");
    w.obj(3, "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>");
    let pdf = w.finish(1, "");
    let layout = Layout { media: [0.0, 0.0, 612.0, 792.0], crop: None, rotate: 0 };
    let refused = add_text_layer(&pdf, &result(&[layout]));
    assert!(
        matches!(&refused, Err(LayerError::Unreadable(why)) if why.contains("neither a page nor pages")),
        "{refused:?}"
    );
}
