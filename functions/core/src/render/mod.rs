//! The result in the formats other tools read: plain text, hOCR, ALTO and searchable PDF, all
//! from one [`OcrResult`].

mod markup;
pub(crate) mod pdf;

use std::str::FromStr;

pub use markup::{alto, hocr};
pub use pdf::{PageImage, searchable_pdf};

use crate::result::{OcrResult, Quad};

/// An output format of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The result model as JSON.
    Json,
    /// The text, pages separated by a form feed.
    Text,
    /// hOCR 1.2 (XHTML): pages, lines and words with boxes and confidences.
    Hocr,
    /// ALTO v4 XML.
    Alto,
    /// The page images with an invisible text layer on the word boxes.
    Pdf,
}

impl Format {
    /// Every format, in the order documents list them.
    pub const ALL: [Format; 5] = [Format::Json, Format::Text, Format::Hocr, Format::Alto, Format::Pdf];

    /// Its name in `?format=` and `--format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Text => "text",
            Format::Hocr => "hocr",
            Format::Alto => "alto",
            Format::Pdf => "pdf",
        }
    }

    /// The media type it is served as.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Text => "text/plain; charset=utf-8",
            Format::Hocr => "application/xhtml+xml; charset=utf-8",
            Format::Alto => "application/alto+xml; charset=utf-8",
            Format::Pdf => "application/pdf",
        }
    }

    /// The file name extension for it.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Text => "txt",
            Format::Hocr => "hocr",
            Format::Alto => "xml",
            Format::Pdf => "pdf",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
            format!("unknown format {s:?}; one of {}", names.join(", "))
        })
    }
}

/// The text of a result: its pages' lines, a form feed between pages, a newline at the end.
pub fn text(r: &OcrResult) -> String {
    format!("{}\n", r.text)
}

/// Axis-aligned integer box `(x0, y0, x1, y1)` of a quad, inside a `width × height` page.
pub(crate) fn bounds(q: &Quad, width: u32, height: u32) -> (u32, u32, u32, u32) {
    let clamp = |v: f32, max: u32| (v.max(0.0).round() as u32).min(max);
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for p in q {
        x0 = x0.min(p[0]);
        y0 = y0.min(p[1]);
        x1 = x1.max(p[0]);
        y1 = y1.max(p[1]);
    }
    let (x0, y0) = (clamp(x0, width), clamp(y0, height));
    (x0, y0, clamp(x1, width).max(x0), clamp(y1, height).max(y0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::result::{OcrLine, OcrPage, OcrWord};

    /// Two pages: "Hello <world>" and "A&B 价格".
    pub fn sample() -> OcrResult {
        let word = |text: &str, x0: f32, x1: f32, y: f32| OcrWord {
            text: text.into(),
            confidence: 0.9,
            bbox: [[x0, y], [x1, y], [x1, y + 20.0], [x0, y + 20.0]],
        };
        let line = |words: Vec<OcrWord>| {
            let (x0, x1, y) = (words[0].bbox[0][0], words[words.len() - 1].bbox[1][0], words[0].bbox[0][1]);
            let text = words.iter().map(|w| w.text.as_str()).collect::<Vec<_>>().join(" ");
            OcrLine { text, confidence: 0.9, bbox: [[x0, y], [x1, y], [x1, y + 20.0], [x0, y + 20.0]], words }
        };
        let p1 = OcrPage::new(
            1,
            400,
            300,
            vec![line(vec![word("Hello", 10.0, 80.0, 10.0), word("<world>", 90.0, 190.0, 10.0)])],
        );
        let p2 =
            OcrPage::new(2, 400, 300, vec![line(vec![word("A&B", 10.0, 60.0, 50.0), word("价格", 70.0, 110.0, 50.0)])]);
        OcrResult::from_pages(vec![p1, p2], 0.1)
    }

    #[test]
    fn formats_parse_by_name() {
        for f in Format::ALL {
            assert_eq!(f.as_str().parse::<Format>(), Ok(f));
        }
        assert!("HOCR".parse::<Format>().is_err());
    }

    #[test]
    fn text_separates_pages_with_a_form_feed() {
        assert_eq!(text(&sample()), "Hello <world>\u{c}A&B 价格\n");
    }

    #[test]
    fn bounds_stay_on_the_page() {
        assert_eq!(bounds(&[[-5.0, 2.0], [500.0, 2.0], [500.0, 9.6], [-5.0, 9.6]], 400, 300), (0, 2, 400, 10));
    }
}
