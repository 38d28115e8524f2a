//! What OCR gives back for one job: one page per image, or per page of a document.

use serde::{Deserialize, Serialize};

/// Four corners `[x, y]` in page pixels, clockwise from the text's top left.
pub type Quad = [[f32; 2]; 4];

/// One word of a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcrWord {
    pub text: String,
    /// Mean probability of its characters, 0..=1.
    pub confidence: f32,
    /// Corners in page pixels, in the line's corner order. Estimated from where the recogniser
    /// saw each character along the line, so as tall as the line.
    #[serde(rename = "box")]
    pub bbox: Quad,
}

/// One line of text found on the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcrLine {
    pub text: String,
    /// Mean per-character probability of the recognised text, 0..=1.
    pub confidence: f32,
    /// Corners in original image pixels, clockwise from top-left of the text.
    #[serde(rename = "box")]
    pub bbox: Quad,
    /// Its words in reading order (absent in results made before words were read).
    #[serde(default)]
    pub words: Vec<OcrWord>,
}

/// One page: an image, or one page of a multi-page TIFF.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcrPage {
    /// 1-based page number.
    pub page: u32,
    /// Page size in pixels after EXIF orientation (of the rendered page for documents).
    pub width: u32,
    pub height: u32,
    /// The page's lines in reading order, joined by newlines.
    pub text: String,
    pub lines: Vec<OcrLine>,
}

impl OcrPage {
    /// A page from its lines; its text is theirs joined by newlines.
    pub fn new(page: u32, width: u32, height: u32, lines: Vec<OcrLine>) -> Self {
        let text = lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("\n");
        Self { page, width, height, text, lines }
    }
}

/// Separates pages in [`OcrResult::text`] (form feed, as `pdftotext` and Tesseract write).
pub const PAGE_BREAK: char = '\u{c}';

/// The result of one job.
///
/// On the wire it keeps the fields of single-image results from before pages existed, so their
/// clients go on working: `text` (every page's text), and `lines`, `width`, `height` of the
/// first page. `pages` holds every page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Wire", into = "Wire")]
pub struct OcrResult {
    /// The pages' texts in order, a form feed between pages.
    pub text: String,
    pub pages: Vec<OcrPage>,
    /// Engine time for this job's share of its batches, in seconds.
    pub seconds: f64,
}

impl OcrResult {
    /// The result of pages read in order.
    pub fn from_pages(pages: Vec<OcrPage>, seconds: f64) -> Self {
        let text = pages.iter().map(|p| p.text.as_str()).collect::<Vec<_>>().join(&PAGE_BREAK.to_string());
        Self { text, pages, seconds }
    }

    /// The result of a single image.
    pub fn image(width: u32, height: u32, lines: Vec<OcrLine>, seconds: f64) -> Self {
        Self::from_pages(vec![OcrPage::new(1, width, height, lines)], seconds)
    }

    /// The first page's lines (none for a result without pages).
    pub fn lines(&self) -> &[OcrLine] {
        self.pages.first().map_or(&[], |p| p.lines.as_slice())
    }
}

/// [`OcrResult`] as JSON: today's fields plus the first page's fields where clients of single
/// images read them.
#[derive(Serialize, Deserialize)]
struct Wire {
    text: String,
    lines: Vec<OcrLine>,
    width: u32,
    height: u32,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    pages: Vec<OcrPage>,
}

impl From<Wire> for OcrResult {
    fn from(w: Wire) -> Self {
        // Results stored before pages existed are one image: their page is the top level.
        let pages = if w.pages.is_empty() {
            vec![OcrPage { page: 1, width: w.width, height: w.height, text: w.text.clone(), lines: w.lines }]
        } else {
            w.pages
        };
        Self { text: w.text, pages, seconds: w.seconds }
    }
}

impl From<OcrResult> for Wire {
    fn from(r: OcrResult) -> Self {
        let (lines, width, height) = match r.pages.first() {
            Some(p) => (p.lines.clone(), p.width, p.height),
            None => (Vec::new(), 0, 0),
        };
        Wire { text: r.text, lines, width, height, seconds: r.seconds, pages: r.pages }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> OcrLine {
        OcrLine {
            text: text.into(),
            confidence: 0.9,
            bbox: [[0.0, 0.0], [9.0, 0.0], [9.0, 3.0], [0.0, 3.0]],
            words: vec![],
        }
    }

    #[test]
    fn a_single_image_keeps_todays_fields_and_reads_as_one_page() {
        let r = OcrResult::image(10, 4, vec![line("HELLO"), line("WORLD")], 0.5);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["text"], "HELLO\nWORLD");
        assert_eq!(v["lines"][1]["text"], "WORLD");
        assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(10), Some(4)));
        assert_eq!(v["pages"][0]["page"], 1);
        assert_eq!(v["pages"][0]["text"], "HELLO\nWORLD");
        assert_eq!(serde_json::from_value::<OcrResult>(v).unwrap(), r);
    }

    #[test]
    fn a_result_stored_before_pages_existed_reads_as_one_page() {
        let old = r#"{"text":"HI","lines":[{"text":"HI","confidence":0.8,"box":[[0,0],[1,0],[1,1],[0,1]]}],"width":3,"height":2,"seconds":0.1}"#;
        let r: OcrResult = serde_json::from_str(old).unwrap();
        assert_eq!(r.pages.len(), 1);
        assert_eq!((r.pages[0].width, r.pages[0].height, r.pages[0].text.as_str()), (3, 2, "HI"));
        assert!(r.pages[0].lines[0].words.is_empty());
    }

    #[test]
    fn pages_are_separated_by_a_form_feed() {
        let r = OcrResult::from_pages(
            vec![OcrPage::new(1, 5, 5, vec![line("A")]), OcrPage::new(2, 6, 6, vec![line("B")])],
            0.0,
        );
        assert_eq!(r.text, "A\u{c}B");
        assert_eq!(r.lines()[0].text, "A");
    }
}
