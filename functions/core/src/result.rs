//! What OCR gives back for one image.

use serde::{Deserialize, Serialize};

/// One line of text found on the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcrLine {
    pub text: String,
    /// Mean per-character probability of the recognised text, 0..=1.
    pub confidence: f32,
    /// Corners in original image pixels, clockwise from top-left of the text.
    #[serde(rename = "box")]
    pub bbox: [[f32; 2]; 4],
}

/// The result of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OcrResult {
    /// All lines in reading order, joined by newlines.
    pub text: String,
    pub lines: Vec<OcrLine>,
    /// Image size in pixels after EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// Engine time for this image's share of its batch, in seconds.
    #[serde(default)]
    pub seconds: f64,
}
