//! Recognition: width-bucketed batches of line crops, CTC greedy decoding.

use image::RgbImage;
use ndarray::{Array4, ArrayView3, s};

use crate::error::{EngineError, Result};
use crate::model::Model;

/// Recognised text of one crop.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecText {
    /// Decoded text.
    pub text: String,
    /// Mean probability of the kept characters, 0..1 (0 when empty).
    pub confidence: f32,
    /// Each kept character and where along the crop the recogniser saw it.
    pub glyphs: Vec<Glyph>,
    /// Width of the crop in pixels (before padding), the scale of the glyphs' positions.
    pub width: f32,
}

/// One decoded character and the recogniser columns where it was the best class.
#[derive(Debug, Clone, PartialEq)]
pub struct Glyph {
    /// Byte range of the character in [`RecText::text`].
    pub range: std::ops::Range<usize>,
    /// Left edge of its first column, crop pixels.
    pub x0: f32,
    /// Right edge of its last column (the run of columns before the next change), crop pixels.
    pub x1: f32,
    /// Probability of the character at its first column.
    pub prob: f32,
}

/// CTC greedy decoder over a dictionary.
///
/// Class 0 is the blank; classes `1..=dict.len()` are the dictionary; a class after that is
/// the space PaddleOCR appends (`use_space_char`).
#[derive(Debug, Clone)]
pub struct CtcDecoder {
    symbols: Vec<String>,
}

impl CtcDecoder {
    /// Builds the decoder from dictionary lines.
    pub fn new(dict: Vec<String>) -> Self {
        let mut symbols = Vec::with_capacity(dict.len() + 2);
        symbols.push(String::new());
        symbols.extend(dict);
        symbols.push(" ".to_string());
        Self { symbols }
    }

    /// Number of classes the model must output (blank + dictionary + space).
    pub fn num_classes(&self) -> usize {
        self.symbols.len()
    }

    /// Decodes one `[T, C]` probability sequence; `column_px` is the width of one time step
    /// in crop pixels (padded width / T), which places each character along the crop.
    pub fn decode(&self, probs: ArrayView3<'_, f32>, item: usize, column_px: f32) -> RecText {
        let seq = probs.slice(s![item, .., ..]);
        let mut text = String::new();
        let mut glyphs: Vec<Glyph> = Vec::new();
        let mut sum = 0.0f32;
        let mut prev = usize::MAX;
        // Whether the previous column's class is the last glyph pushed (its run goes on).
        let mut in_run = false;
        for (t, row) in seq.rows().into_iter().enumerate() {
            let (best, best_p) = match row.as_slice() {
                Some(r) => argmax(r),
                None => argmax(&row.to_vec()),
            };
            let right = (t + 1) as f32 * column_px;
            if best != 0 && best == prev && in_run {
                if let Some(g) = glyphs.last_mut() {
                    g.x1 = right;
                }
            } else if best != 0
                && best != prev
                && let Some(sym) = self.symbols.get(best)
            {
                let start = text.len();
                text.push_str(sym);
                glyphs.push(Glyph { range: start..text.len(), x0: t as f32 * column_px, x1: right, prob: best_p });
                sum += best_p;
                in_run = true;
            } else {
                in_run = false;
            }
            prev = best;
        }
        let confidence = if glyphs.is_empty() { 0.0 } else { sum / glyphs.len() as f32 };
        RecText { text, confidence, glyphs, width: 0.0 }
    }
}

/// Index and value of the first maximum of `row` (NaN never wins; `(0, f32::MIN)` when nothing
/// exceeds `f32::MIN`). Runs once per time step over ~18,700 classes, so it is written as
/// branch-free lanes the compiler vectorises: a plain `if p > best` loop took 6 % of the
/// whole engine's CPU time.
pub fn argmax(row: &[f32]) -> (usize, f32) {
    const L: usize = 16;
    let mut best = [f32::MIN; L];
    let mut at = [0u32; L];
    let chunks = row.chunks_exact(L);
    let rest = chunks.remainder();
    for (k, c) in chunks.enumerate() {
        let k = k as u32;
        for i in 0..L {
            let gt = c[i] > best[i];
            best[i] = if gt { c[i] } else { best[i] };
            at[i] = if gt { k } else { at[i] };
        }
    }
    // Lane i of chunk k is index k * L + i; keep the lowest index among equal maxima.
    let (mut idx, mut max) = (0usize, f32::MIN);
    for i in 0..L {
        let j = at[i] as usize * L + i;
        if best[i] > max || (best[i] == max && best[i] > f32::MIN && j < idx) {
            max = best[i];
            idx = j;
        }
    }
    let base = row.len() - rest.len();
    for (i, &p) in rest.iter().enumerate() {
        if p > max {
            max = p;
            idx = base + i;
        }
    }
    (idx, max)
}

/// Splits crop indices into batches: sorted by width, at most `max_batch` crops and at most
/// `max_total_width` padded pixels of width per batch (bounds the `[N, W/8, classes]` output,
/// ~75 MB per 8192 px with 18,710 classes), each padded to its widest crop rounded up to
/// `width_step` and at least `min_width`. Returns `(padded width, indices)` pairs.
pub fn plan_batches(
    widths: &[u32],
    max_batch: usize,
    max_total_width: u32,
    width_step: u32,
    min_width: u32,
) -> Vec<(u32, Vec<usize>)> {
    let mut order: Vec<usize> = (0..widths.len()).collect();
    order.sort_by_key(|&i| widths[i]);
    let step = width_step.max(1);
    let padded = |w: u32| w.max(min_width).div_ceil(step) * step;
    let mut plan: Vec<(u32, Vec<usize>)> = Vec::new();
    for i in order {
        let w = padded(widths[i]);
        match plan.last_mut() {
            // Sorted ascending, so a new crop is the widest of its batch.
            Some((bw, idx)) if idx.len() < max_batch.max(1) && (idx.len() as u32 + 1) * w <= max_total_width => {
                *bw = w;
                idx.push(i);
            }
            _ => plan.push((w, vec![i])),
        }
    }
    plan
}

/// Packs crops (all `height` high) into a `[N, 3, height, width]` tensor, BGR, scaled to
/// -1..1; the right side is padded with 0 (mid-grey after normalisation), as PaddleOCR does.
pub fn pack_batch(crops: &[&RgbImage], height: u32, width: u32) -> Array4<f32> {
    let (h, w) = (height as usize, width as usize);
    let mut t = Array4::<f32>::zeros((crops.len(), 3, h, w));
    for (n, img) in crops.iter().enumerate() {
        let cw = (img.width() as usize).min(w);
        let iw = img.width() as usize;
        let raw = img.as_raw();
        for y in 0..h.min(img.height() as usize) {
            let row = &raw[y * iw * 3..(y * iw + cw) * 3];
            for c in 0..3 {
                // Channel 0 is blue (BGR): source channel 2 - c.
                let mut dst = t.slice_mut(s![n, c, y, ..cw]);
                for (d, px) in dst.iter_mut().zip(row.chunks_exact(3)) {
                    *d = px[2 - c] as f32 * (2.0 / 255.0) - 1.0;
                }
            }
        }
    }
    t
}

/// Recognises one batch of crops padded to `width`; one text per crop, in order.
pub fn recognize_batch(
    model: &dyn Model,
    decoder: &CtcDecoder,
    crops: &[&RgbImage],
    height: u32,
    width: u32,
) -> Result<Vec<RecText>> {
    let input = pack_batch(crops, height, width);
    let t = std::time::Instant::now();
    let mut texts = Vec::with_capacity(crops.len());
    // Decode straight from the runtime's output buffer: no copy of [N, T, C].
    model.run_with(input.view(), &mut |output| {
        let probs = output
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| EngineError::BadOutput(format!("recogniser: {e}")))?;
        if probs.shape()[0] != crops.len() || probs.shape()[2] != decoder.num_classes() {
            return Err(EngineError::BadOutput(format!(
                "recogniser returned {:?} for {} crops; dictionary needs {} classes",
                probs.shape(),
                crops.len(),
                decoder.num_classes()
            )));
        }
        let column_px = width as f32 / probs.shape()[1].max(1) as f32;
        texts.extend(crops.iter().enumerate().map(|(k, crop)| RecText {
            width: crop.width().min(width) as f32,
            ..decoder.decode(probs.view(), k, column_px)
        }));
        Ok(())
    })?;
    tracing::debug!(n = crops.len(), width, secs = t.elapsed().as_secs_f64(), "rec batch");
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    #[test]
    fn ctc_collapses_repeats_and_blanks() {
        let dec = CtcDecoder::new(vec!["a".into(), "b".into()]);
        assert_eq!(dec.num_classes(), 4);
        // a a blank a b space b
        let seq = [1, 1, 0, 1, 2, 3, 2];
        let mut p = Array3::<f32>::zeros((1, seq.len(), 4));
        for (t, &c) in seq.iter().enumerate() {
            p[[0, t, c]] = 0.8;
        }
        let r = dec.decode(p.view(), 0, 4.0);
        assert_eq!(r.text, "aab b");
        assert!((r.confidence - 0.8).abs() < 1e-6);
        // Each character spans the columns of its run: "a a" is one run, then blank.
        let spans: Vec<(&str, f32, f32)> = r.glyphs.iter().map(|g| (&r.text[g.range.clone()], g.x0, g.x1)).collect();
        assert_eq!(
            spans,
            vec![("a", 0.0, 8.0), ("a", 12.0, 16.0), ("b", 16.0, 20.0), (" ", 20.0, 24.0), ("b", 24.0, 28.0)]
        );
    }

    #[test]
    fn argmax_matches_a_plain_scan() {
        let plain = |r: &[f32]| {
            let (mut best, mut best_p) = (0usize, f32::MIN);
            for (i, &p) in r.iter().enumerate() {
                if p > best_p {
                    best_p = p;
                    best = i;
                }
            }
            (best, best_p)
        };
        // Lengths around the lane width, ties (first wins), NaN, all-equal and empty rows.
        let mut seed = 7u32;
        for len in [0usize, 1, 5, 15, 16, 17, 33, 100, 18_710] {
            for case in 0..4 {
                let row: Vec<f32> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        match case {
                            0 => (seed >> 8) as f32 / (1u32 << 24) as f32,
                            1 => ((seed >> 28) % 3) as f32, // many ties
                            2 if seed.is_multiple_of(5) => f32::NAN,
                            2 => (seed >> 20) as f32,
                            _ => 0.25,
                        }
                    })
                    .collect();
                assert_eq!(argmax(&row), plain(&row), "len {len} case {case}");
            }
        }
        assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), (0, f32::MIN));
    }

    #[test]
    fn batches_sorted_by_width_and_padded() {
        let plan = plan_batches(&[100, 30, 250, 40, 90], 2, 10_000, 32, 0);
        assert_eq!(plan, vec![(64, vec![1, 3]), (128, vec![4, 0]), (256, vec![2])]);
        let plan = plan_batches(&[100, 30, 250, 40, 90], 2, 10_000, 32, 96);
        assert_eq!(plan[0], (96, vec![1, 3]));
        // Width budget: 3 x 96 fits in 300, 4 x 128 does not.
        let plan = plan_batches(&[100, 30, 120, 40, 90], 8, 300, 32, 0);
        assert_eq!(plan, vec![(96, vec![1, 3, 4]), (128, vec![0, 2])]);
    }

    #[test]
    fn pack_normalises_bgr_and_pads() {
        let img = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 0]));
        let t = pack_batch(&[&img], 1, 4);
        assert_eq!(t.shape(), &[1, 3, 1, 4]);
        assert_eq!(t[[0, 2, 0, 0]], 1.0); // red lands in channel 2
        assert_eq!(t[[0, 0, 0, 1]], -1.0);
        assert_eq!(t[[0, 0, 0, 3]], 0.0); // padding
    }
}
