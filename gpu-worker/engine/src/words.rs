//! Words of a recognised line and their boxes, from where the recogniser saw each character.
//!
//! The recogniser reads a line crop in columns (8 crop pixels each for PP-OCR); CTC decoding
//! keeps the column where each character starts and the run of columns it stays the best
//! class. A word spans its first character's first column to its last character's last one,
//! mapped back through the crop onto the line's quad. This is the method PaddleOCR and
//! RapidOCR use for their word boxes. Latin-like scripts split at spaces; CJK characters (which
//! are not separated by spaces) are one word each.

use serde::Serialize;

use crate::geometry::{Quad, quad_span};
use crate::recognition::RecText;

/// One word of a line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Word {
    /// The word's text.
    pub text: String,
    /// Mean probability of its characters, 0..1.
    pub confidence: f32,
    /// Corners `[x, y]` in the same pixels and order as the line's box.
    #[serde(rename = "box")]
    pub quad: Quad,
}

/// Whether a character is written without spaces between words: CJK ideographs, kana, Hangul
/// syllables, and the CJK and full-width punctuation around them.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x2E80..=0x2FDF      // radicals
        | 0x3000..=0x303F    // CJK symbols and punctuation
        | 0x3040..=0x30FF    // hiragana, katakana
        | 0x3100..=0x312F    // bopomofo
        | 0x3130..=0x318F    // Hangul compatibility jamo
        | 0x31F0..=0x31FF    // katakana extensions
        | 0x3400..=0x4DBF    // ideographs extension A
        | 0x4E00..=0x9FFF    // unified ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // compatibility ideographs
        | 0xFF00..=0xFFEF    // half- and full-width forms
        | 0x20000..=0x3134F // ideographs extensions B-G
    )
}

/// Where a word's box starts, in character widths before its first character's first column:
/// CTC marks a character a little after its left edge (measured on set B: left edges 0.24 line
/// heights late without this).
const LEFT_PAD: f32 = 0.5;
/// Where it ends, in character widths after its last character's last column.
const RIGHT_PAD: f32 = 0.1;
/// The share of the line box's height a word box keeps, centred: the detector's boxes (grown by
/// the unclip ratio, then dilated) are about 1.37 times the height of the words on set B.
const WORD_HEIGHT: f32 = 0.75;

/// Splits a recognised crop into words with boxes on `src`, the quad as the crop reads it
/// ([`crate::geometry::crop_source`]), in that quad's pixels.
pub fn words_of(r: &RecText, src: &Quad) -> Vec<Word> {
    let mut words = Vec::new();
    if r.width <= 0.0 || r.glyphs.is_empty() {
        return words;
    }
    // Mean character width along the line, spaces included.
    let pitch = (r.glyphs[r.glyphs.len() - 1].x1 - r.glyphs[0].x0) / r.glyphs.len() as f32;
    let mut start: Option<usize> = None;
    for (i, g) in r.glyphs.iter().enumerate() {
        let Some(c) = r.text[g.range.clone()].chars().next() else { continue };
        if c.is_whitespace() || is_cjk(c) {
            if let Some(s) = start.take() {
                words.push(word(r, s..i, pitch, src));
            }
            if !c.is_whitespace() {
                words.push(word(r, i..i + 1, pitch, src));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        words.push(word(r, s..r.glyphs.len(), pitch, src));
    }
    words
}

/// The word of glyphs `span` (non-empty) of `r`.
fn word(r: &RecText, span: std::ops::Range<usize>, pitch: f32, src: &Quad) -> Word {
    let glyphs = &r.glyphs[span.clone()];
    let text: String = glyphs.iter().map(|g| &r.text[g.range.clone()]).collect();
    let confidence = glyphs.iter().map(|g| g.prob).sum::<f32>() / glyphs.len() as f32;
    // Padded, but never over the neighbouring characters' columns.
    let before = span.start.checked_sub(1).map_or(0.0, |i| r.glyphs[i].x1);
    let after = r.glyphs.get(span.end).map_or(r.width, |g| g.x0);
    let x0 = (glyphs[0].x0 - LEFT_PAD * pitch).max(before);
    let x1 = (glyphs[glyphs.len() - 1].x1 + RIGHT_PAD * pitch).min(after);
    let u = |x: f32| (x / r.width).clamp(0.0, 1.0);
    let mut q = quad_span(src, u(x0), u(x1));
    let k = (1.0 - WORD_HEIGHT) / 2.0;
    for (t, b) in [(0, 3), (1, 2)] {
        let (top, bottom) = (q[t], q[b]);
        let d = [bottom[0] - top[0], bottom[1] - top[1]];
        q[t] = [top[0] + d[0] * k, top[1] + d[1] * k];
        q[b] = [bottom[0] - d[0] * k, bottom[1] - d[1] * k];
    }
    Word { text, confidence, quad: q }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recognition::Glyph;

    fn rec(spans: &[(&str, f32, f32)], width: f32) -> RecText {
        let mut r = RecText { width, ..Default::default() };
        for &(s, x0, x1) in spans {
            let start = r.text.len();
            r.text.push_str(s);
            r.glyphs.push(Glyph { range: start..r.text.len(), x0, x1, prob: 0.9 });
        }
        r
    }

    #[test]
    fn latin_words_split_at_spaces_and_span_their_columns() {
        // Four glyphs over 48 crop pixels: 12 px per character.
        let r = rec(&[("a", 4.0, 8.0), ("b", 8.0, 16.0), (" ", 24.0, 32.0), ("c", 40.0, 52.0)], 80.0);
        // A 160 x 40 line at (10, 10): crop pixels x 2.
        let src: Quad = [[10.0, 10.0], [170.0, 10.0], [170.0, 50.0], [10.0, 50.0]];
        let w = words_of(&r, &src);
        assert_eq!(w.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["ab", "c"]);
        // "ab": from half a character before its first column (but not before the crop) to a
        // tenth after its last (16 + 1.2 crop px), 75 % of the line's height.
        assert_eq!(w[0].quad, [[10.0, 15.0], [44.4, 15.0], [44.4, 45.0], [10.0, 45.0]]);
        // "c": its left pad stops at the space's last column (32 crop px).
        assert_eq!(w[1].quad, [[78.0, 15.0], [116.4, 15.0], [116.4, 45.0], [78.0, 45.0]]);
    }

    #[test]
    fn cjk_characters_are_words_of_their_own() {
        let r =
            rec(&[("价", 0.0, 8.0), ("格", 8.0, 16.0), ("1", 16.0, 24.0), ("2", 24.0, 32.0), ("元", 32.0, 40.0)], 40.0);
        let src: Quad = [[0.0, 0.0], [40.0, 0.0], [40.0, 8.0], [0.0, 8.0]];
        let w = words_of(&r, &src);
        assert_eq!(w.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["价", "格", "12", "元"]);
        // Neighbours' columns bound the padding on both sides.
        assert_eq!(w[2].quad[0], [16.0, 1.0]);
        assert_eq!(w[2].quad[1], [32.0, 1.0]);
    }

    #[test]
    fn a_turned_crop_maps_along_its_own_edges() {
        // A vertical line read top to bottom: the crop's left edge is the quad's top.
        let r = rec(&[("x", 0.0, 10.0)], 100.0);
        let src: Quad = [[40.0, 0.0], [40.0, 200.0], [0.0, 200.0], [0.0, 0.0]];
        let w = words_of(&r, &src);
        assert_eq!(w[0].quad, [[35.0, 0.0], [35.0, 22.0], [5.0, 22.0], [5.0, 0.0]]);
    }
}
