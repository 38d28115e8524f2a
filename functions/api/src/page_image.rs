//! The picture under a searchable PDF's text: the job's upload as JPEG, upright, at the size
//! the result's boxes are measured in.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use ocr_core::render::PageImage;

use crate::error::ApiError;

/// Pixels per inch a PDF page is laid out at (a 2480 px wide scan makes an A4 page).
pub const PDF_DPI: f32 = 300.0;

/// Largest image (pixels) decoded to make a PDF here: the API function has 256 MB. A JPEG that
/// needs no turning is embedded as it is, whatever its size.
pub const MAX_DECODE_PIXELS: u64 = 16_000_000;

/// The upload as a PDF page image of `width × height` (the result's page, EXIF-upright).
pub fn page_image(bytes: &[u8], width: u32, height: u32) -> Result<PageImage, ApiError> {
    let unreadable = |e: image::ImageError| ApiError::NoResult(format!("the uploaded image cannot be read again: {e}"));
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| unreadable(e.into()))?;
    let format = reader.format();
    let mut decoder = reader.into_decoder().map_err(unreadable)?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let color = decoder.color_type();
    let upright = orientation == image::metadata::Orientation::NoTransforms;
    if format == Some(ImageFormat::Jpeg)
        && upright
        && (w, h) == (width, height)
        && matches!(color, image::ColorType::L8 | image::ColorType::Rgb8)
    {
        return Ok(PageImage { jpeg: bytes.to_vec(), width, height, gray: color == image::ColorType::L8 });
    }
    if u64::from(w) * u64::from(h) > MAX_DECODE_PIXELS {
        return Err(ApiError::TooLarge(format!(
            "the image is {w}x{h} pixels; a PDF is made here from images up to {MAX_DECODE_PIXELS} pixels \
             (or an upright RGB or grey JPEG of any size): ask for hocr or alto instead"
        )));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_PIXELS * 8 + (64 << 20));
    decoder.set_limits(limits).map_err(unreadable)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(unreadable)?;
    img.apply_orientation(orientation);
    // Transparent pixels over white paper, as the worker read them.
    let rgb = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let p = rgba.get_pixel(x, y).0;
            let a = u32::from(p[3]);
            image::Rgb(std::array::from_fn(|c| ((u32::from(p[c]) * a + 255 * (255 - a) + 127) / 255) as u8))
        })
    } else {
        img.to_rgb8()
    };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(&rgb)
        .map_err(|e| ApiError::Internal(format!("encoding the page image: {e}")))?;
    Ok(PageImage { jpeg, width: rgb.width(), height: rgb.height(), gray: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format).unwrap();
        out
    }

    #[test]
    fn an_upright_jpeg_is_embedded_as_it_is() {
        let jpeg = encode(&DynamicImage::ImageRgb8(image::RgbImage::new(40, 20)), ImageFormat::Jpeg);
        let page = page_image(&jpeg, 40, 20).unwrap();
        assert_eq!(page.jpeg, jpeg);
        assert!(!page.gray);
    }

    #[test]
    fn a_png_with_alpha_becomes_a_jpeg_over_white() {
        let png = encode(&DynamicImage::ImageRgba8(image::RgbaImage::new(30, 10)), ImageFormat::Png);
        let page = page_image(&png, 30, 10).unwrap();
        let back = image::load_from_memory(&page.jpeg).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (30, 10));
        assert!(back.get_pixel(5, 5).0.iter().all(|&c| c > 240), "{:?}", back.get_pixel(5, 5));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(matches!(page_image(b"not an image", 1, 1), Err(ApiError::NoResult(_))));
    }
}
