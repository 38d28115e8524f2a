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
/// EXIF orientation (JPEG, WebP, TIFF) is applied so the result is as a person sees it, and
/// images with alpha are laid over white (see [`over_white`]). Animated WebP and multi-page
/// TIFF give their first frame or page. A decoder that panics on malformed data fails this image
/// with [`EngineError::Decode`] instead of unwinding into the caller.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| EngineError::Decode(e.to_string()))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Tiff)) => f,
        _ => return Err(EngineError::UnsupportedFormat),
    };
    if format == ImageFormat::Png {
        check_png_palette(bytes)?;
    }
    contain_panics(format, || decode_with(reader, format, bytes.len(), max_pixels))
}

/// Width and height as the header declares them, no pixel decoded: what decoding the image
/// would cost, to plan memory before spending it. Orientation does not change the product.
pub fn probe_dimensions(bytes: &[u8]) -> Result<(u32, u32)> {
    std::panic::catch_unwind(|| {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| EngineError::Decode(e.to_string()))?
            .into_dimensions()
            .map_err(map_image_error)
    })
    .unwrap_or_else(|_| Err(EngineError::Decode("the image header could not be read".into())))
}

fn decode_with(
    mut reader: ImageReader<Cursor<&[u8]>>,
    format: ImageFormat,
    len: usize,
    max_pixels: u64,
) -> Result<RgbImage> {
    let mut limits = Limits::default();
    // RGBA16 is the widest buffer a decoder may need: 8 bytes per pixel, plus slack.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(map_image_error)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, max_pixels)?;
    if format == ImageFormat::Jpeg {
        check_jpeg_size(width, height, len)?;
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other if other.color().has_alpha() => over_white(&other),
        other => other.to_rgb8(),
    })
}

/// Composites an image with alpha over white paper. Transparent pixels often hold black (a
/// transparent background around dark text is stored as RGBA 0,0,0,0); dropping alpha would
/// turn such a page black and its text invisible.
pub fn over_white(img: &DynamicImage) -> RgbImage {
    let rgba = img.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(p[3]);
        o.0 = std::array::from_fn(|c| ((u32::from(p[c]) * a + 255 * (255 - a) + 127) / 255) as u8);
    }
    out
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

/// Pixels a JPEG byte can describe at most: every 8×8 block of the full-resolution component
/// costs at least one bit (its DC code; progressive end-of-band runs cover AC only), so an image
/// of `P` pixels needs at least `P / 512` bytes of scan data.
pub const JPEG_MAX_PIXELS_PER_BYTE: u64 = 512;

/// Refuses a JPEG whose header declares more pixels than its bytes can encode. The JPEG decoder
/// fills missing scan data with grey instead of failing, so without this a 1 KB file claiming
/// 7000×7000 (under the pixel limit) costs a full 49 MP decode (12.8 s in a debug build).
fn check_jpeg_size(width: u32, height: u32, len: usize) -> Result<()> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels > (len as u64).saturating_mul(JPEG_MAX_PIXELS_PER_BYTE) {
        return Err(EngineError::Decode(format!(
            "JPEG declares {width}x{height} pixels but has only {len} bytes; that many pixels need at least {} \
             (truncated or forged header)",
            pixels.div_ceil(JPEG_MAX_PIXELS_PER_BYTE)
        )));
    }
    Ok(())
}

/// Runs a decoder, turning a panic (a decoder bug reached by malformed data) into a per-image
/// [`EngineError::Decode`]. The panic hook still reports it.
fn contain_panics<T>(format: ImageFormat, decode: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(EngineError::Decode(format!("the {format:?} decoder failed on malformed data (it panicked: {msg})")))
    })
}

/// Refuses a PNG palette that `png` 0.18.1 panics on: a `PLTE` whose length is not a multiple
/// of 3 (libpng refuses it too). Reads chunk headers up to the first `IDAT`; anything else
/// malformed is left to `png`.
fn check_png_palette(bytes: &[u8]) -> Result<()> {
    let mut at: usize = 8; // signature
    while let Some(header) = bytes.get(at..at.saturating_add(8)) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        match &header[4..8] {
            b"PLTE" if !len.is_multiple_of(3) => {
                return Err(EngineError::Decode(format!("PNG palette is {len} bytes, not a multiple of 3")));
            }
            b"IDAT" => break,
            _ => {}
        }
        at = at.saturating_add(12).saturating_add(len);
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
    fn alpha_is_laid_over_white() {
        // Transparent black background, opaque black ink, half-transparent red.
        let mut img = image::RgbaImage::from_pixel(4, 1, image::Rgba([0, 0, 0, 0]));
        img.put_pixel(1, 0, image::Rgba([0, 0, 0, 255]));
        img.put_pixel(2, 0, image::Rgba([255, 0, 0, 128]));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
        let rgb = decode_image(&png, DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 0).0, [0, 0, 0]);
        assert_eq!(rgb.get_pixel(2, 0).0, [255, 127, 127]);
    }

    /// Regression: a 917-byte JPEG whose SOF claims 7000x7000 decoded, grey-filled, for 12.8 s.
    #[test]
    fn jpeg_claiming_more_pixels_than_its_bytes_hold_is_refused_quickly() {
        let img = RgbImage::from_pixel(64, 48, image::Rgb([255, 255, 255]));
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg).unwrap();
        let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0x1B, 0x58, 0x1B, 0x58]); // 7000 x 7000
        let t = std::time::Instant::now();
        let err = decode_image(&jpeg, DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(t.elapsed().as_secs_f64() < 1.0);
        assert!(matches!(&err, EngineError::Decode(m) if m.contains("7000x7000")), "{err:?}");
        assert!(!err.is_retryable());
        // The real 64x48 file is far above the floor.
        assert!(check_jpeg_size(64, 48, 300).is_ok());
        assert!(check_jpeg_size(7000, 7000, 95_704).is_ok());
        assert!(check_jpeg_size(7000, 7000, 95_703).is_err());
    }

    /// Regression (fuzz target `decode`): a palette PNG whose 53-byte PLTE panicked in `png`
    /// ("range end index 3 out of range for slice of length 2").
    #[test]
    fn png_palette_not_a_multiple_of_3_is_an_error() {
        let crash = hex(concat!(
            "89504e470d0a1a0a0000000d4948445200000008000000080803000000f3d1abb900000035504c54",
            "450000000000000a0a0a1414141e1e1e2828283232323c3c3c4646465050505a5a5a6464646e6e6e",
            "7878c3c3c3c3c37882827e737378eb224db70000001074524e005333ffffffffffffffffffffffff",
            "ffffc05249464c00002049444154789c95c6c10900000803b16b71ff95154107682000005c004949",
            "2a00ae422f600000000000000000000082",
        ));
        let err = decode_image(&crash, DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(&err, EngineError::Decode(m) if m.contains("not a multiple of 3")), "{err:?}");
    }

    #[test]
    fn a_panicking_decoder_fails_the_image() {
        let err = contain_panics::<()>(ImageFormat::Png, || panic!("boom")).unwrap_err();
        assert!(matches!(&err, EngineError::Decode(m) if m.contains("panicked: boom")), "{err:?}");
        assert!(!err.is_retryable());
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
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
