//! hOCR and ALTO: XML with a page, line and word hierarchy, boxes and confidences.

use std::fmt::Write;

use super::bounds;
use crate::result::{OcrLine, OcrPage, OcrResult, OcrWord};

/// Escapes text for XML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot hold at all; recognisers do not produce them, but a
            // result must never make a document that fails to parse.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            '\u{FFFE}' | '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A line's words; a line stored before words were read is one word.
fn words_of(line: &OcrLine) -> Vec<OcrWord> {
    if line.words.is_empty() {
        vec![OcrWord { text: line.text.clone(), confidence: line.confidence, bbox: line.bbox }]
    } else {
        line.words.clone()
    }
}

const SOFTWARE: &str = concat!("ocr-fleet ", env!("CARGO_PKG_VERSION"));

/// hOCR 1.2: an XHTML document with an `ocr_page` per page, `ocr_line` per line and
/// `ocrx_word` per word, each with its `bbox` and (lines, words) `x_wconf` confidence in
/// percent. `image` names the source in each page's `image` property.
pub fn hocr(r: &OcrResult, image: &str) -> String {
    let mut o = String::new();
    o.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" \
         \"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n\
         <html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n<head>\n<title></title>\n\
         <meta http-equiv=\"Content-Type\" content=\"text/html;charset=utf-8\"/>\n",
    );
    let _ = writeln!(o, "<meta name=\"ocr-system\" content=\"{SOFTWARE}\"/>");
    o.push_str(
        "<meta name=\"ocr-capabilities\" content=\"ocr_page ocr_carea ocr_par ocr_line ocrx_word ocrp_wconf\"/>\n\
         </head>\n<body>\n",
    );
    let image = esc(&image.replace('"', "'"));
    for p in &r.pages {
        let n = p.page;
        let _ = writeln!(
            o,
            "<div class=\"ocr_page\" id=\"page_{n}\" title=\"image &quot;{image}&quot;; bbox 0 0 {} {}; ppageno {}\">",
            p.width,
            p.height,
            n.saturating_sub(1)
        );
        if let Some((x0, y0, x1, y1)) = union(p) {
            let _ = writeln!(o, "<div class=\"ocr_carea\" id=\"block_{n}_1\" title=\"bbox {x0} {y0} {x1} {y1}\">");
            let _ = writeln!(o, "<p class=\"ocr_par\" id=\"par_{n}_1\" title=\"bbox {x0} {y0} {x1} {y1}\">");
            for (li, line) in p.lines.iter().enumerate() {
                let (x0, y0, x1, y1) = line_bounds(line, p);
                let _ = write!(
                    o,
                    "<span class=\"ocr_line\" id=\"line_{n}_{}\" title=\"bbox {x0} {y0} {x1} {y1}; x_wconf {}\">",
                    li + 1,
                    pct(line.confidence)
                );
                for (wi, w) in words_of(line).iter().enumerate() {
                    if wi > 0 {
                        o.push(' ');
                    }
                    let (a, b, c, d) = bounds(&w.bbox, p.width, p.height);
                    let _ = write!(
                        o,
                        "<span class=\"ocrx_word\" id=\"word_{n}_{}_{}\" title=\"bbox {a} {b} {c} {d}; x_wconf {}\">{}</span>",
                        li + 1,
                        wi + 1,
                        pct(w.confidence),
                        esc(&w.text)
                    );
                }
                o.push_str("</span>\n");
            }
            o.push_str("</p>\n</div>\n");
        }
        o.push_str("</div>\n");
    }
    o.push_str("</body>\n</html>\n");
    o
}

fn pct(c: f32) -> u32 {
    (c.clamp(0.0, 1.0) * 100.0).round() as u32
}

type Bounds = (u32, u32, u32, u32);

fn join(a: Bounds, b: Bounds) -> Bounds {
    (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3))
}

/// A line's box as these formats give it: around its words, which hug the text (the detector's
/// line box is grown around it, so neighbouring lines' boxes overlap on dense pages).
fn line_bounds(l: &OcrLine, p: &OcrPage) -> Bounds {
    let line = bounds(&l.bbox, p.width, p.height);
    l.words.iter().map(|w| bounds(&w.bbox, p.width, p.height)).reduce(join).unwrap_or(line)
}

/// The box around a page's lines, or `None` when it has none.
fn union(p: &OcrPage) -> Option<Bounds> {
    p.lines.iter().map(|l| line_bounds(l, p)).reduce(join)
}

/// ALTO v4: one `Page` per page holding a `PrintSpace` with one `TextBlock` of `TextLine`s,
/// whose `String`s are the words (`WC` their confidence, 0..1) separated by `SP`. Positions in
/// pixels. `image` is the source's file name.
pub fn alto(r: &OcrResult, image: &str) -> String {
    let mut o = String::new();
    o.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <alto xmlns=\"http://www.loc.gov/standards/alto/ns-v4#\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:schemaLocation=\"http://www.loc.gov/standards/alto/ns-v4# http://www.loc.gov/alto/v4/alto-4-4.xsd\">\n\
         <Description>\n<MeasurementUnit>pixel</MeasurementUnit>\n",
    );
    let _ = writeln!(o, "<sourceImageInformation>\n<fileName>{}</fileName>\n</sourceImageInformation>", esc(image));
    let _ = writeln!(
        o,
        "<OCRProcessing ID=\"ocr_1\">\n<ocrProcessingStep>\n<processingSoftware>\n\
         <softwareName>ocr-fleet</softwareName>\n<softwareVersion>{}</softwareVersion>\n\
         </processingSoftware>\n</ocrProcessingStep>\n</OCRProcessing>",
        env!("CARGO_PKG_VERSION")
    );
    o.push_str("</Description>\n<Layout>\n");
    for p in &r.pages {
        let n = p.page;
        let (w, h) = (p.width, p.height);
        let _ = writeln!(o, "<Page ID=\"page_{n}\" PHYSICAL_IMG_NR=\"{n}\" WIDTH=\"{w}\" HEIGHT=\"{h}\">");
        let _ = writeln!(o, "<PrintSpace ID=\"space_{n}\" HPOS=\"0\" VPOS=\"0\" WIDTH=\"{w}\" HEIGHT=\"{h}\">");
        if let Some((x0, y0, x1, y1)) = union(p) {
            let _ = writeln!(o, "<TextBlock ID=\"block_{n}_1\" {}>", pos(x0, y0, x1, y1));
            for (li, line) in p.lines.iter().enumerate() {
                let (x0, y0, x1, y1) = line_bounds(line, p);
                let _ = write!(o, "<TextLine ID=\"line_{n}_{}\" {}>", li + 1, pos(x0, y0, x1, y1));
                for (wi, word) in words_of(line).iter().enumerate() {
                    if wi > 0 {
                        o.push_str("<SP/>");
                    }
                    let (a, b, c, d) = bounds(&word.bbox, w, h);
                    let _ = write!(
                        o,
                        "<String ID=\"word_{n}_{}_{}\" CONTENT=\"{}\" {} WC=\"{:.2}\"/>",
                        li + 1,
                        wi + 1,
                        esc(&word.text),
                        pos(a, b, c, d),
                        word.confidence.clamp(0.0, 1.0)
                    );
                }
                o.push_str("</TextLine>\n");
            }
            o.push_str("</TextBlock>\n");
        }
        o.push_str("</PrintSpace>\n</Page>\n");
    }
    o.push_str("</Layout>\n</alto>\n");
    o
}

fn pos(x0: u32, y0: u32, x1: u32, y1: u32) -> String {
    format!("HPOS=\"{x0}\" VPOS=\"{y0}\" WIDTH=\"{}\" HEIGHT=\"{}\"", x1 - x0, y1 - y0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::tests::sample;

    #[test]
    fn hocr_holds_pages_lines_and_escaped_words() {
        let h = hocr(&sample(), "scan \"1\".png");
        assert!(h.contains("class=\"ocr_page\" id=\"page_2\" title=\"image &quot;scan &apos;1&apos;.png&quot;; bbox 0 0 400 300; ppageno 1\""));
        assert!(h.contains("title=\"bbox 90 10 190 30; x_wconf 90\">&lt;world&gt;</span>"));
        assert!(h.contains(">A&amp;B</span> <span"));
        assert!(h.contains(">价格</span>"));
    }

    #[test]
    fn alto_has_strings_with_positions_and_spaces() {
        let a = alto(&sample(), "a&b.png");
        assert!(a.contains("<fileName>a&amp;b.png</fileName>"));
        assert!(a.contains("<String ID=\"word_1_1_2\" CONTENT=\"&lt;world&gt;\" HPOS=\"90\" VPOS=\"10\" WIDTH=\"100\" HEIGHT=\"20\" WC=\"0.90\"/>"));
        assert_eq!(a.matches("<Page ").count(), 2);
        assert_eq!(a.matches("<SP/>").count(), 2);
    }

    #[test]
    fn control_characters_never_break_the_xml() {
        assert_eq!(esc("a\u{1}b\u{FFFF}"), "a\u{FFFD}b\u{FFFD}");
    }
}
