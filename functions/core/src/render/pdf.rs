//! Searchable PDF: each page's image with the recognised words as invisible text on their
//! boxes, so viewers select and search them and `pdftotext` extracts them.
//!
//! The text uses a font with no glyph program (nothing is drawn: rendering mode 3) whose
//! character codes are UTF-16 code units and whose `ToUnicode` map is the identity, the way
//! Tesseract's PDF renderer does it. Every character is half an em wide; each word is scaled
//! horizontally to its box's width and turned along its baseline.

use pdf_writer::types::{CidFontType, FontFlags, SystemInfo, TextRenderingMode};
use pdf_writer::{Chunk, Content, Filter, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use crate::result::{OcrPage, OcrResult, Quad};

/// A page's picture as JPEG, drawn under its text.
#[derive(Debug, Clone)]
pub struct PageImage {
    /// Baseline JPEG bytes.
    pub jpeg: Vec<u8>,
    /// Its size in pixels (the page's size: boxes are in these pixels).
    pub width: u32,
    pub height: u32,
    /// One grey channel rather than three.
    pub gray: bool,
    /// How the stored picture is turned to stand upright on the page: the EXIF orientation, 1
    /// (as stored) to 8. A turned JPEG is embedded as it is and turned by the PDF instead of
    /// decoded; `width` and `height` are then the stored picture's.
    pub orientation: u8,
}

/// Where the picture's unit square goes on a `w × h` point page, for EXIF orientation `o`: the
/// matrix of its `cm`.
fn placement(o: u8, w: f32, h: f32) -> [f32; 6] {
    // The upright page's (right, down) fractions of a stored pixel at (right, down) fractions
    // (a, b), per EXIF orientation.
    let upright = |a: f32, b: f32| match o {
        2 => (1.0 - a, b),
        3 => (1.0 - a, 1.0 - b),
        4 => (a, 1.0 - b),
        5 => (b, a),
        6 => (1.0 - b, a),
        7 => (1.0 - b, 1.0 - a),
        8 => (b, 1.0 - a),
        _ => (a, b),
    };
    // Image space runs up from the bottom row; page space up from the bottom edge.
    let place = |u: f32, v: f32| {
        let (x, y) = upright(u, 1.0 - v);
        (x * w, (1.0 - y) * h)
    };
    let (o0, ou, ov) = (place(0.0, 0.0), place(1.0, 0.0), place(0.0, 1.0));
    [ou.0 - o0.0, ou.1 - o0.1, ov.0 - o0.0, ov.1 - o0.1, o0.0, o0.1]
}

/// Character width in the text font, thousandths of an em.
const ADVANCE: f32 = 500.0;
/// The font's ascent and descent: a glyph box runs from 0.2 em below the baseline to 0.8 above.
const ASCENT: f32 = 800.0;
const DESCENT: f32 = -200.0;

/// Writes the result as a PDF, one page per result page at `dpi` pixels per inch, each over its
/// image when `images` has one for it (same order as the pages; a page without an image is
/// blank under its text).
pub fn searchable_pdf(r: &OcrResult, images: &[Option<PageImage>], dpi: f32) -> Vec<u8> {
    let scale = 72.0 / dpi.max(1.0);
    let mut alloc = Ref::new(1);
    let mut next = || alloc.bump();
    let (catalog, tree, info, font, cid, descriptor, cmap) = (next(), next(), next(), next(), next(), next(), next());
    let pages: Vec<(Ref, Ref, Ref)> = r.pages.iter().map(|_| (next(), next(), next())).collect();

    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids(pages.iter().map(|p| p.0)).count(pages.len() as i32);
    pdf.document_info(info).producer(TextStr(concat!("ocr-fleet ", env!("CARGO_PKG_VERSION"))));
    write_font(&mut pdf, font, cid, descriptor, cmap);

    for (k, (page, &(page_id, content_id, image_id))) in r.pages.iter().zip(&pages).enumerate() {
        let (w, h) = (page.width as f32 * scale, page.height as f32 * scale);
        let image = images.get(k).and_then(Option::as_ref);
        let mut p = pdf.page(page_id);
        p.media_box(Rect::new(0.0, 0.0, w, h)).parent(tree).contents(content_id);
        let mut res = p.resources();
        res.fonts().pair(Name(b"F1"), font);
        if image.is_some() {
            res.x_objects().pair(Name(b"Im1"), image_id);
        }
        res.finish();
        p.finish();

        let mut c = Content::new();
        if let Some(img) = image {
            let mut x = pdf.image_xobject(image_id, &img.jpeg);
            x.filter(Filter::DctDecode);
            x.width(img.width as i32).height(img.height as i32).bits_per_component(8);
            if img.gray {
                x.color_space().device_gray();
            } else {
                x.color_space().device_rgb();
            }
            x.finish();
            c.save_state().transform(placement(img.orientation, w, h)).x_object(Name(b"Im1")).restore_state();
        }
        write_words(&mut c, Name(b"F1"), page, [scale, scale], h);
        pdf.stream(content_id, &c.finish());
    }
    pdf.finish()
}

/// Each word (or line, for results without words) as invisible text on its box, in font `font`
/// (see [`write_font`]): a pixel `(x, y)` of the page is at `(x · sx, page_h − y · sy)` points.
pub(crate) fn write_words(c: &mut Content, font: Name<'_>, page: &OcrPage, [sx, sy]: [f32; 2], page_h: f32) {
    let to_pdf = |p: [f32; 2]| [p[0] * sx, page_h - p[1] * sy];
    c.begin_text();
    c.set_text_rendering_mode(TextRenderingMode::Invisible);
    for line in &page.lines {
        let words: Vec<(&str, &Quad)> = if line.words.is_empty() {
            vec![(line.text.as_str(), &line.bbox)]
        } else {
            line.words.iter().map(|w| (w.text.as_str(), &w.bbox)).collect()
        };
        for (text, q) in words {
            let units: Vec<u16> = text.encode_utf16().collect();
            if units.is_empty() {
                continue;
            }
            let (tl, tr, bl) = (to_pdf(q[0]), to_pdf(q[1]), to_pdf(q[3]));
            let br = to_pdf(q[2]);
            // Baseline direction along the bottom edge; "up" along the left edge.
            let (dx, dy) = (br[0] - bl[0], br[1] - bl[1]);
            let width = (dx * dx + dy * dy).sqrt();
            let height = ((tl[0] - bl[0]).powi(2) + (tl[1] - bl[1]).powi(2))
                .sqrt()
                .max(((tr[0] - br[0]).powi(2) + (tr[1] - br[1]).powi(2)).sqrt());
            if width < 0.01 || height < 0.01 {
                continue;
            }
            let (ux, uy) = (dx / width, dy / width);
            let (vx, vy) = (-uy, ux);
            // The baseline sits the font's descent above the box's bottom edge.
            let lift = -DESCENT / 1000.0 * height;
            let (ox, oy) = (bl[0] + vx * lift, bl[1] + vy * lift);
            let natural = units.len() as f32 * ADVANCE / 1000.0 * height;
            let mut bytes = Vec::with_capacity(units.len() * 2);
            for u in &units {
                bytes.extend_from_slice(&u.to_be_bytes());
            }
            c.set_font(font, height);
            c.set_text_matrix([ux, uy, vx, vy, ox, oy]);
            c.set_horizontal_scaling(100.0 * width / natural);
            c.show(Str(&bytes));
        }
    }
    c.end_text();
}

/// The text font: Type 0 over a glyph-less CID font (codes are UTF-16 units, all half an em
/// wide) with an identity `ToUnicode` map over the Basic Multilingual Plane.
pub(crate) fn write_font(pdf: &mut Chunk, font: Ref, cid: Ref, descriptor: Ref, cmap: Ref) {
    let name = Name(b"GlyphLessFont");
    pdf.type0_font(font).base_font(name).encoding_predefined(Name(b"Identity-H")).descendant_font(cid).to_unicode(cmap);
    pdf.cid_font(cid)
        .subtype(CidFontType::Type2)
        .base_font(name)
        .system_info(SystemInfo { registry: Str(b"Adobe"), ordering: Str(b"Identity"), supplement: 0 })
        .font_descriptor(descriptor)
        .default_width(ADVANCE)
        .cid_to_gid_map_predefined(Name(b"Identity"));
    pdf.font_descriptor(descriptor)
        .name(name)
        .flags(FontFlags::SYMBOLIC)
        .bbox(Rect::new(0.0, DESCENT, ADVANCE, ASCENT))
        .italic_angle(0.0)
        .ascent(ASCENT)
        .descent(DESCENT)
        .cap_height(ASCENT)
        .stem_v(80.0);
    let data = miniz_oxide::deflate::compress_to_vec_zlib(identity_cmap().as_bytes(), 6);
    pdf.stream(cmap, &data).filter(Filter::FlateDecode);
}

/// A `ToUnicode` CMap mapping each 2-byte code to the same UTF-16 unit (surrogates excepted),
/// in ranges that keep to one high byte as the CMap format asks.
fn identity_cmap() -> String {
    let mut ranges = Vec::new();
    for hi in 0u32..=0xFF {
        if (0xD8..=0xDF).contains(&hi) {
            continue;
        }
        ranges.push(format!("<{hi:02X}00> <{hi:02X}FF> <{hi:02X}00>"));
    }
    let mut s = String::from(
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n\
         /CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n\
         /CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n\
         1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n",
    );
    for chunk in ranges.chunks(100) {
        s.push_str(&format!("{} beginbfrange\n{}\nendbfrange\n", chunk.len(), chunk.join("\n")));
    }
    s.push_str("endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turned_picture_lands_upright() {
        // Where the stored picture's top-left and top-right corners land on a 30 × 20 page, per
        // EXIF orientation (PDF points, y up): 6 is a phone held upright (turn 90° clockwise).
        let (w, h) = (30.0, 20.0);
        let expected = [
            (1, (0.0, h), (w, h)),
            (2, (w, h), (0.0, h)),
            (3, (w, 0.0), (0.0, 0.0)),
            (4, (0.0, 0.0), (w, 0.0)),
            (5, (0.0, h), (0.0, 0.0)),
            (6, (w, h), (w, 0.0)),
            (7, (w, 0.0), (w, h)),
            (8, (0.0, 0.0), (0.0, h)),
        ];
        for (o, top_left, top_right) in expected {
            let [a, b, c, d, e, f] = placement(o, w, h);
            let at = |u: f32, v: f32| (a * u + c * v + e, b * u + d * v + f);
            // Image space: (0, 1) is the stored top-left corner, (1, 1) the top-right.
            assert_eq!((at(0.0, 1.0), at(1.0, 1.0)), (top_left, top_right), "orientation {o}");
        }
    }
    use crate::render::tests::sample;

    #[test]
    fn a_pdf_has_a_page_per_result_page_and_its_words() {
        let pdf = searchable_pdf(&sample(), &[], 72.0);
        let s = String::from_utf8_lossy(&pdf);
        assert!(s.starts_with("%PDF-"));
        assert_eq!(s.matches("/Type /Page\n").count() + s.matches("/Type /Page ").count(), 2, "{s}");
        // One text-showing operator per word (pdftotext checks what they say: tests/formats).
        assert_eq!(s.matches(" Tj").count(), 4);
    }

    #[test]
    fn the_cmap_skips_surrogates_and_keeps_to_one_high_byte() {
        let c = identity_cmap();
        assert!(c.contains("<4E00> <4EFF> <4E00>"));
        assert!(!c.contains("<D800>"));
        assert_eq!(c.matches("beginbfrange").count(), 3);
    }
}
