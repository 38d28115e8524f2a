//! Quadrilaterals, perspective crops and page rotations.

use image::{Rgb, RgbImage};
use imageproc::geometric_transformations::{Border, Interpolation, Projection, warp_into};

/// Four corners `[x, y]` in pixels, clockwise from top-left as the text reads
/// (top-left, top-right, bottom-right, bottom-left).
pub type Quad = [[f32; 2]; 4];

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// `(width, height)` of a quad: the longer of each pair of opposite sides.
pub fn quad_side_lengths(q: &Quad) -> (f32, f32) {
    (dist(q[0], q[1]).max(dist(q[3], q[2])), dist(q[0], q[3]).max(dist(q[1], q[2])))
}

/// Axis-aligned bounds `(xmin, ymin, xmax, ymax)`.
pub fn quad_bounds(q: &Quad) -> (f32, f32, f32, f32) {
    let xs = q.iter().map(|p| p[0]);
    let ys = q.iter().map(|p| p[1]);
    (
        xs.clone().fold(f32::MAX, f32::min),
        ys.clone().fold(f32::MAX, f32::min),
        xs.fold(f32::MIN, f32::max),
        ys.fold(f32::MIN, f32::max),
    )
}

/// A text-line crop ready for recognition: `height` rows, width by aspect ratio.
#[derive(Debug, Clone)]
pub struct LineCrop {
    /// RGB pixels, `height` × (aspect-scaled width).
    pub image: RgbImage,
}

/// Warps the quad out of `img` straight to `height` pixels high (width by aspect ratio,
/// within `min_w..=max_w`). Crops at least 1.5× taller than wide are turned 90° counter-clockwise,
/// as PaddleOCR does, since they are usually vertical lines read top to bottom.
pub fn crop_line(img: &RgbImage, quad: &Quad, height: u32, min_w: u32, max_w: u32) -> LineCrop {
    let src = crop_source(quad);
    let (w, h) = quad_side_lengths(&src);
    let out_w = ((height as f32 * w / h.max(1.0)).ceil() as u32).clamp(min_w.max(1), max_w.max(1));
    let mut out = RgbImage::new(out_w, height);
    let (ow, oh) = (out_w as f32, height as f32);
    let dst = [(0.0, 0.0), (ow, 0.0), (ow, oh), (0.0, oh)];
    let from = src.map(|p| (p[0], p[1]));
    match Projection::from_control_points(from, dst) {
        Some(proj) => warp_into(img, proj, Interpolation::Bilinear, Border::Replicate, &mut out),
        None => {
            // Degenerate quad: hand the recogniser a blank line rather than failing the page.
            for p in out.pixels_mut() {
                *p = Rgb([255, 255, 255]);
            }
        }
    }
    LineCrop { image: out }
}

/// The quad as [`crop_line`] reads it: its corners at the crop's top left, top right, bottom
/// right and bottom left. A quad at least 1.5× taller than wide starts at its top right, so the
/// crop lies turned 90° counter-clockwise.
pub fn crop_source(quad: &Quad) -> Quad {
    let (w, h) = quad_side_lengths(quad);
    if h >= 1.5 * w { [quad[1], quad[2], quad[3], quad[0]] } else { *quad }
}

/// The part of a crop's quad between fractions `u0..u1` of its width (0 = its left edge), as a
/// quad in the same image: points along the top and bottom edges. Exact for the rectangles the
/// detector gives (the crop is then an affine map of the quad).
pub fn quad_span(src: &Quad, u0: f32, u1: f32) -> Quad {
    let lerp = |a: [f32; 2], b: [f32; 2], u: f32| [a[0] + (b[0] - a[0]) * u, a[1] + (b[1] - a[1]) * u];
    [lerp(src[0], src[1], u0), lerp(src[0], src[1], u1), lerp(src[3], src[2], u1), lerp(src[3], src[2], u0)]
}

/// A quarter turn applied to a page, clockwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rotation {
    /// Upright.
    #[default]
    R0,
    /// Turned 90° clockwise.
    R90,
    /// Turned 180°.
    R180,
    /// Turned 270° clockwise (90° counter-clockwise).
    R270,
}

impl Rotation {
    /// Degrees clockwise.
    pub fn degrees(self) -> u32 {
        match self {
            Rotation::R0 => 0,
            Rotation::R90 => 90,
            Rotation::R180 => 180,
            Rotation::R270 => 270,
        }
    }

    /// This rotation followed by a turn of 180°.
    pub fn then_180(self) -> Rotation {
        match self {
            Rotation::R0 => Rotation::R180,
            Rotation::R90 => Rotation::R270,
            Rotation::R180 => Rotation::R0,
            Rotation::R270 => Rotation::R90,
        }
    }

    /// Turns `img` by this rotation.
    pub fn apply(self, img: &RgbImage) -> Option<RgbImage> {
        match self {
            Rotation::R0 => None,
            Rotation::R90 => Some(image::imageops::rotate90(img)),
            Rotation::R180 => Some(image::imageops::rotate180(img)),
            Rotation::R270 => Some(image::imageops::rotate270(img)),
        }
    }

    /// Maps a point of the rotated image back to the original `w × h` image.
    pub fn unmap(self, p: [f32; 2], w: u32, h: u32) -> [f32; 2] {
        let (w, h) = (w as f32, h as f32);
        match self {
            Rotation::R0 => p,
            // rotate90: new(x, y) = (h - y, x)  =>  old = (new_y, h - new_x)
            Rotation::R90 => [p[1], h - p[0]],
            Rotation::R180 => [w - p[0], h - p[1]],
            // rotate270: new(x, y) = (y, w - x)  =>  old = (w - new_y, new_x)
            Rotation::R270 => [w - p[1], p[0]],
        }
    }

    /// Maps a quad of the rotated image back to the original; corner order (reading order) kept.
    pub fn unmap_quad(self, q: &Quad, w: u32, h: u32) -> Quad {
        q.map(|p| self.unmap(p, w, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmap_inverts_rotation() {
        let mut img = RgbImage::new(40, 20);
        img.put_pixel(30, 5, Rgb([255, 0, 0]));
        for r in [Rotation::R90, Rotation::R180, Rotation::R270] {
            let rot = r.apply(&img).unwrap();
            let (x, y) = rot.enumerate_pixels().find(|(_, _, p)| p.0 == [255, 0, 0]).map(|(x, y, _)| (x, y)).unwrap();
            // Pixel centres map to pixel centres.
            let back = r.unmap([x as f32 + 0.5, y as f32 + 0.5], 40, 20);
            assert_eq!(back, [30.5, 5.5], "{r:?}");
        }
    }

    #[test]
    fn crop_is_scaled_to_height() {
        let mut img = RgbImage::from_pixel(200, 100, Rgb([255, 255, 255]));
        for x in 20..180 {
            for y in 40..60 {
                img.put_pixel(x, y, Rgb([0, 0, 0]));
            }
        }
        let q: Quad = [[20.0, 40.0], [180.0, 40.0], [180.0, 60.0], [20.0, 60.0]];
        let c = crop_line(&img, &q, 48, 16, 2000);
        assert_eq!(c.image.height(), 48);
        assert_eq!(c.image.width(), 384);
        assert!(c.image.get_pixel(192, 24).0[0] < 30);
        // A tall box is turned to lie flat.
        let tall: Quad = [[20.0, 10.0], [40.0, 10.0], [40.0, 90.0], [20.0, 90.0]];
        let c = crop_line(&img, &tall, 48, 16, 2000);
        assert_eq!(c.image.width(), 192);
    }
}
