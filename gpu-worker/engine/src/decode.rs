//! Image decoding with a pixel limit and EXIF orientation.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{EngineError, Result};

/// Default pixel limit: 50 MP (a 12 MP phone photo is far below; a 100k×100k bomb is refused).
pub const DEFAULT_MAX_PIXELS: u64 = 50_000_000;

/// Decodes JPEG, PNG, WebP or TIFF bytes into an upright RGB image.
///
/// The header is read first and images over `max_pixels` (width × height) are refused before
/// any pixel buffer is allocated; `image`'s own [`Limits`] cap allocations as a second guard.
/// EXIF orientation (JPEG, WebP, TIFF) is applied so the result is as a person sees it.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| EngineError::Decode(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Tiff) => {}
        _ => return Err(EngineError::UnsupportedFormat),
    }
    let mut reader = reader;
    let mut limits = Limits::default();
    // RGBA16 is the widest buffer a decoder may need: 8 bytes per pixel, plus slack.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, max_pixels)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Refuses empty images and images over `max_pixels`.
pub fn check_dimensions(width: u32, height: u32, max_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(EngineError::Empty { width, height });
    }
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(EngineError::TooLarge { width, height, limit: max_pixels });
    }
    Ok(())
}

fn map_image_error(e: image::ImageError) -> EngineError {
    match e {
        image::ImageError::Unsupported(_) => EngineError::UnsupportedFormat,
        image::ImageError::Limits(l) => EngineError::Decode(format!("over decoder limits: {l}")),
        other => EngineError::Decode(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn decodes_png() {
        let img = decode_image(&png_bytes(7, 3), DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(img.dimensions(), (7, 3));
        assert_eq!(img.get_pixel(0, 0).0, [200, 10, 10]);
    }

    #[test]
    fn refuses_too_many_pixels_before_decoding() {
        let err = decode_image(&png_bytes(100, 100), 5_000).unwrap_err();
        assert!(matches!(err, EngineError::TooLarge { width: 100, height: 100, .. }));
        assert!(!err.is_retryable());
    }

    #[test]
    fn refuses_garbage() {
        let err = decode_image(b"definitely not an image", DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(err, EngineError::UnsupportedFormat));
        let mut truncated = png_bytes(50, 50);
        truncated.truncate(60);
        assert!(decode_image(&truncated, DEFAULT_MAX_PIXELS).is_err());
    }

    /// A JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6) decodes upright.
    #[test]
    fn exif_orientation_is_applied() {
        let mut img = RgbImage::from_pixel(40, 20, image::Rgb([255, 255, 255]));
        for y in 0..8 {
            for x in 0..8 {
                img.put_pixel(x, y, image::Rgb([0, 0, 0])); // dark block top-left
            }
        }
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg).unwrap();
        // APP1 "Exif\0\0" + big-endian TIFF header + one IFD entry: 0x0112 SHORT 1 = 6.
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let len = (app1.len() + 2) as u16;
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        let up = decode_image(&out, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(up.dimensions(), (20, 40));
        // Turned clockwise, the top-left block lands top-right.
        assert!(up.get_pixel(16, 3).0[0] < 60, "{:?}", up.get_pixel(16, 3));
        assert!(up.get_pixel(3, 3).0[0] > 200);
    }

    #[test]
    fn png_bomb_header_is_refused() {
        // A PNG header that declares 100000 x 100000 pixels; only the IHDR is present.
        let mut bytes = png_bytes(1, 1);
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let err = decode_image(&bytes, DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(err, EngineError::TooLarge { .. } | EngineError::Decode(_)), "{err:?}");
    }
}
