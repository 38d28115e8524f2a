//! Recognition: width-bucketed batches of line crops, CTC greedy decoding.

use image::RgbImage;
use ndarray::{Array4, ArrayView3, s};

use crate::error::{EngineError, Result};
use crate::model::Model;

/// Recognised text of one crop.
#[derive(Debug, Clone, PartialEq)]
pub struct RecText {
    /// Decoded text.
    pub text: String,
    /// Mean probability of the kept characters, 0..1 (0 when empty).
    pub confidence: f32,
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

    /// Decodes one `[T, C]` probability sequence.
    pub fn decode(&self, probs: ArrayView3<'_, f32>, item: usize) -> RecText {
        let seq = probs.slice(s![item, .., ..]);
        let mut text = String::new();
        let (mut sum, mut n) = (0.0f32, 0usize);
        let mut prev = usize::MAX;
        for row in seq.rows() {
            let (mut best, mut best_p) = (0usize, f32::MIN);
            // Rows are contiguous in a standard-layout output; iterate plainly for speed.
            for (i, &p) in row.iter().enumerate() {
                if p > best_p {
                    best_p = p;
                    best = i;
                }
            }
            if best != 0
                && best != prev
                && let Some(sym) = self.symbols.get(best)
            {
                text.push_str(sym);
                sum += best_p;
                n += 1;
            }
            prev = best;
        }
        RecText { text, confidence: if n == 0 { 0.0 } else { sum / n as f32 } }
    }
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

/// How recogniser batches are formed (see [`plan_batches`]).
#[derive(Debug, Clone, Copy)]
pub struct RecBatching {
    /// Input height in pixels.
    pub height: u32,
    /// Most crops per batch.
    pub max_batch: usize,
    /// Most padded width per batch, summed over its crops (pixels).
    pub max_total_width: u32,
    /// Batch widths are rounded up to a multiple of this (pixels).
    pub width_step: u32,
    /// Narrowest batch width (pixels).
    pub min_width: u32,
}

/// Recognises all crops with `model`, batching by width; output in input order.
pub fn recognize_crops(
    model: &dyn Model,
    decoder: &CtcDecoder,
    crops: &[&RgbImage],
    b: &RecBatching,
) -> Result<Vec<RecText>> {
    let widths: Vec<u32> = crops.iter().map(|c| c.width()).collect();
    let mut out = vec![RecText { text: String::new(), confidence: 0.0 }; crops.len()];
    // Widest batches first so the parallel workers finish close together.
    let mut plan = plan_batches(&widths, b.max_batch, b.max_total_width, b.width_step, b.min_width);
    plan.reverse();
    let run_batch = |(width, idx): &(u32, Vec<usize>)| -> Result<Vec<(usize, RecText)>> {
        let batch: Vec<&RgbImage> = idx.iter().map(|&i| crops[i]).collect();
        let input = pack_batch(&batch, b.height, *width);
        let t = std::time::Instant::now();
        let output = model.run(input.view())?;
        tracing::debug!(n = batch.len(), width, secs = t.elapsed().as_secs_f64(), "rec batch");
        let probs = output
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| EngineError::BadOutput(format!("recogniser: {e}")))?;
        if probs.shape()[0] != batch.len() || probs.shape()[2] != decoder.num_classes() {
            return Err(EngineError::BadOutput(format!(
                "recogniser returned {:?} for {} crops; dictionary needs {} classes",
                probs.shape(),
                batch.len(),
                decoder.num_classes()
            )));
        }
        let probs = probs.as_standard_layout();
        Ok(idx.iter().enumerate().map(|(k, &i)| (i, decoder.decode(probs.view(), k))).collect())
    };
    let workers = model.parallelism().min(plan.len()).max(1);
    let results: Vec<Result<Vec<(usize, RecText)>>> = if workers == 1 {
        plan.iter().map(run_batch).collect()
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(b) = plan.get(k) else { break };
                            mine.push(run_batch(b));
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("recognition worker panicked")).collect()
        })
    };
    for r in results {
        for (i, t) in r? {
            out[i] = t;
        }
    }
    Ok(out)
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
        let r = dec.decode(p.view(), 0);
        assert_eq!(r.text, "aab b");
        assert!((r.confidence - 0.8).abs() < 1e-6);
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
