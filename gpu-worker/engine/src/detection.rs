//! Text detection: PaddleOCR-style resize and normalisation, and DB post-processing.

use fast_image_resize as fr;
use i_overlay::mesh::float::outline::offset::OutlineOffset;
use i_overlay::mesh::float::style::{LineJoin, OutlineStyle};
use image::{GrayImage, RgbImage};
use imageproc::contours::{BorderType, find_contours};
use imageproc::geometry::min_area_rect;
use imageproc::point::Point;
use ndarray::{Array4, ArrayView2};

use crate::geometry::{Quad, quad_side_lengths};
use crate::manifest::{DetSpec, LimitType, TALL_RATIO};

/// Detector input size `(width, height)` for an image of `w × h` pixels: scaled by the limit,
/// capped by `max_side_len`, each side rounded to a multiple of 32 (at least 32).
pub fn det_input_size(w: u32, h: u32, spec: &DetSpec) -> (u32, u32) {
    let (wf, hf) = (w as f32, h as f32);
    let limit = match spec.tall_limit_side_len {
        Some(tall) if spec.limit_type == LimitType::Max && hf >= TALL_RATIO * wf => tall as f32,
        _ => spec.limit_side_len as f32,
    };
    let mut ratio = match spec.limit_type {
        LimitType::Max if wf.max(hf) > limit => limit / wf.max(hf),
        LimitType::Min if wf.min(hf) < limit => limit / wf.min(hf),
        _ => 1.0,
    };
    let cap = spec.max_side_len as f32;
    if wf.max(hf) * ratio > cap {
        ratio = cap / wf.max(hf);
    }
    let round32 = |v: f32| (((v * ratio) / 32.0).round() as u32 * 32).max(32);
    (round32(wf), round32(hf))
}

/// Resizes and normalises an RGB image into a `[1, 3, H, W]` BGR tensor for the detector.
/// Returns the tensor; its H and W come from [`det_input_size`].
pub fn det_preprocess(img: &RgbImage, spec: &DetSpec) -> Array4<f32> {
    let (dw, dh) = det_input_size(img.width(), img.height(), spec);
    let resized = resize_rgb(img, dw, dh);
    let mut t = Array4::<f32>::zeros((1, 3, dh as usize, dw as usize));
    // Paddle models were trained on OpenCV's BGR order: channel 0 is blue.
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * spec.std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
    let plane = (dw * dh) as usize;
    let data = t.as_slice_mut().expect("fresh array is contiguous");
    let (b, rest) = data.split_at_mut(plane);
    let (g, r) = rest.split_at_mut(plane);
    for (i, px) in resized.as_raw().chunks_exact(3).enumerate() {
        b[i] = px[2] as f32 * scale[0] + shift[0];
        g[i] = px[1] as f32 * scale[1] + shift[1];
        r[i] = px[0] as f32 * scale[2] + shift[2];
    }
    t
}

/// Resizes with a bilinear convolution (anti-aliased when shrinking).
pub fn resize_rgb(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        return img.clone();
    }
    let mut dst = RgbImage::new(w, h);
    let mut resizer = fr::Resizer::new();
    let opts = fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    resizer.resize(img, &mut dst, &opts).expect("RGB8 to RGB8 resize cannot fail");
    dst
}

/// A detected text box in image pixels with its mean text probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetBox {
    /// Corners clockwise from top-left, in pixels of the image given to detection.
    pub quad: Quad,
    /// Mean probability inside the box before growing it, 0..1.
    pub score: f32,
}

/// DB post-processing of a `[H, W]` probability map into boxes in image pixels.
///
/// Threshold → contours → minimum-area rectangle → box score → unclip (polygon offset) →
/// minimum-area rectangle → scale to `img_w × img_h` and clip.
pub fn db_postprocess(prob: ArrayView2<'_, f32>, spec: &DetSpec, img_w: u32, img_h: u32) -> Vec<DetBox> {
    let (h, w) = prob.dim();
    if h == 0 || w == 0 {
        return Vec::new();
    }
    let prob = prob.as_standard_layout();
    let probs = prob.as_slice().expect("standard layout");
    let mut bitmap = GrayImage::new(w as u32, h as u32);
    {
        let buf: &mut [u8] = &mut bitmap;
        for (o, &p) in buf.iter_mut().zip(probs) {
            *o = if p > spec.thresh { 255 } else { 0 };
        }
        if spec.use_dilation {
            dilate_2x2(buf, w, h);
        }
    }
    let sx = img_w as f32 / w as f32;
    let sy = img_h as f32 / h as f32;
    let mut out = Vec::new();
    let contours = find_contours::<i32>(&bitmap);
    for c in contours.iter().filter(|c| c.border_type == BorderType::Outer).take(spec.max_candidates) {
        if c.points.len() < 2 {
            continue;
        }
        let rect = to_quad(&min_area_rect(&c.points), 1.0);
        let (rw, rh) = quad_side_lengths(&rect);
        if rw.min(rh) < spec.min_size {
            continue;
        }
        let score = box_score(probs, w, h, &rect);
        if score < spec.box_thresh {
            continue;
        }
        let Some(grown) = unclip(&rect, spec.unclip_ratio) else {
            continue;
        };
        let (gw, gh) = quad_side_lengths(&grown);
        if gw.min(gh) < spec.min_size + 2.0 {
            continue;
        }
        let mut quad = grown;
        for p in &mut quad {
            p[0] = (p[0] * sx).round().clamp(0.0, img_w as f32);
            p[1] = (p[1] * sy).round().clamp(0.0, img_h as f32);
        }
        let (qw, qh) = quad_side_lengths(&quad);
        if qw <= 3.0 || qh <= 3.0 {
            continue;
        }
        out.push(DetBox { quad, score });
    }
    out
}

/// Grows `out(x, y) = max(in(x-1..=x, y-1..=y))`, like OpenCV's dilate with a 2×2 kernel.
fn dilate_2x2(buf: &mut [u8], w: usize, h: usize) {
    let src = buf.to_vec();
    for y in 0..h {
        for x in 0..w {
            let mut v = src[y * w + x];
            if x > 0 {
                v = v.max(src[y * w + x - 1]);
            }
            if y > 0 {
                v = v.max(src[(y - 1) * w + x]);
                if x > 0 {
                    v = v.max(src[(y - 1) * w + x - 1]);
                }
            }
            buf[y * w + x] = v;
        }
    }
}

fn to_quad<T: Copy + Into<f64>>(r: &[Point<T>; 4], div: f64) -> Quad {
    std::array::from_fn(|i| [(r[i].x.into() / div) as f32, (r[i].y.into() / div) as f32])
}

/// Mean probability over the pixels inside `quad` (PaddleOCR's "fast" box score).
fn box_score(probs: &[f32], w: usize, h: usize, quad: &Quad) -> f32 {
    let xmin = quad.iter().map(|p| p[0]).fold(f32::MAX, f32::min).floor().max(0.0) as usize;
    let xmax = (quad.iter().map(|p| p[0]).fold(f32::MIN, f32::max).ceil() as usize).min(w - 1);
    let ymin = quad.iter().map(|p| p[1]).fold(f32::MAX, f32::min).floor().max(0.0) as usize;
    let ymax = (quad.iter().map(|p| p[1]).fold(f32::MIN, f32::max).ceil() as usize).min(h - 1);
    let (mut sum, mut n) = (0.0f64, 0usize);
    for y in ymin..=ymax {
        let row = &probs[y * w..(y + 1) * w];
        for (x, &p) in row.iter().enumerate().take(xmax + 1).skip(xmin) {
            if inside_convex(quad, x as f32, y as f32, 0.5) {
                sum += p as f64;
                n += 1;
            }
        }
    }
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}

/// Point-in-convex-quad test with a tolerance in pixels, for either winding.
fn inside_convex(q: &Quad, x: f32, y: f32, tol: f32) -> bool {
    let mut sign = 0.0f32;
    for i in 0..4 {
        let a = q[i];
        let b = q[(i + 1) % 4];
        let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
        let len = (ex * ex + ey * ey).sqrt().max(1e-6);
        // Signed distance of the point from the edge line.
        let d = (ex * (y - a[1]) - ey * (x - a[0])) / len;
        if sign == 0.0 && d.abs() > tol {
            sign = d.signum();
        }
        if d * sign < -tol {
            return false;
        }
    }
    true
}

/// Grows a rectangle by `area × ratio / perimeter` with round joins (pyclipper's JT_ROUND) and
/// returns the minimum-area rectangle around the result.
pub fn unclip(rect: &Quad, ratio: f32) -> Option<Quad> {
    let area = polygon_area(rect).abs();
    let perimeter: f32 = (0..4)
        .map(|i| {
            let (a, b) = (rect[i], rect[(i + 1) % 4]);
            ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt()
        })
        .sum();
    if perimeter <= 0.0 || area <= 0.0 {
        return None;
    }
    let distance = (area * ratio / perimeter) as f64;
    // i_overlay treats counter-clockwise (in y-up maths) paths as outer boundaries.
    let mut path: Vec<[f64; 2]> = rect.iter().map(|p| [p[0] as f64, p[1] as f64]).collect();
    if polygon_area(rect) < 0.0 {
        path.reverse();
    }
    let style = OutlineStyle::new(distance).line_join(LineJoin::Round(0.25));
    let shapes = path.outline(&style);
    let outer = shapes.first()?.first()?;
    // Scale by 8 before the integer rectangle so rounding costs only 1/8 pixel.
    let pts: Vec<Point<i32>> =
        outer.iter().map(|p| Point::new((p[0] * 8.0).round() as i32, (p[1] * 8.0).round() as i32)).collect();
    if pts.len() < 3 {
        return None;
    }
    Some(to_quad(&min_area_rect(&pts), 8.0))
}

/// Signed shoelace area (positive for counter-clockwise in y-up coordinates).
fn polygon_area(q: &Quad) -> f32 {
    let mut s = 0.0;
    for i in 0..4 {
        let (a, b) = (q[i], q[(i + 1) % 4]);
        s += a[0] * b[1] - b[0] * a[1];
    }
    s / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use std::path::PathBuf;

    pub(crate) fn spec() -> DetSpec {
        DetSpec::ppocr(PathBuf::new())
    }

    #[test]
    fn input_size_limits_and_rounds() {
        let s = spec();
        assert_eq!(det_input_size(1920, 1080, &s), (960, 544));
        assert_eq!(det_input_size(100, 50, &s), (96, 64));
        let mut min = spec();
        min.limit_type = LimitType::Min;
        min.limit_side_len = 736;
        assert_eq!(det_input_size(500, 1000, &min), (736, 1472));
        min.max_side_len = 1000;
        assert_eq!(det_input_size(500, 2000, &min), (256, 992));
        // A tall page's own limit; an A4 page (1.41) is not tall.
        let mut tall = spec();
        tall.tall_limit_side_len = Some(1280);
        assert_eq!(det_input_size(932, 1869, &tall), (640, 1280));
        assert_eq!(det_input_size(932, 1869, &s), (480, 960));
        assert_eq!(det_input_size(2480, 3508, &tall), det_input_size(2480, 3508, &s));
    }

    #[test]
    fn unclip_grows_a_box() {
        let r: Quad = [[10.0, 10.0], [110.0, 10.0], [110.0, 30.0], [10.0, 30.0]];
        let g = unclip(&r, 1.5).unwrap();
        let (w, h) = quad_side_lengths(&g);
        // distance = 2000 * 1.5 / 240 = 12.5 on every side
        assert!((w - 125.0).abs() < 1.5, "{g:?}");
        assert!((h - 45.0).abs() < 1.5, "{g:?}");
    }

    #[test]
    fn finds_a_rectangle_in_a_probability_map() {
        let mut p = Array2::<f32>::zeros((64, 128));
        for y in 20..30 {
            for x in 10..100 {
                p[[y, x]] = 0.9;
            }
        }
        // Map drawn at half the image resolution.
        let boxes = db_postprocess(p.view(), &spec(), 256, 128);
        assert_eq!(boxes.len(), 1, "{boxes:?}");
        let b = boxes[0];
        assert!(b.score > 0.85);
        let [tl, _, br, _] = b.quad;
        assert!(tl[0] < 20.0 && tl[1] < 40.0, "{b:?}");
        assert!(br[0] > 198.0 && br[1] > 58.0, "{b:?}");
    }

    #[test]
    fn weak_blobs_are_dropped() {
        let mut p = Array2::<f32>::zeros((32, 32));
        for y in 5..15 {
            for x in 5..25 {
                p[[y, x]] = 0.35;
            }
        }
        assert!(db_postprocess(p.view(), &spec(), 32, 32).is_empty());
    }
}
