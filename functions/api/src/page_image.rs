//! The picture under a searchable PDF's text: the job's upload as JPEG, upright, at the size
//! the result's boxes are measured in.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use ocr_core::render::PageImage;

use crate::error::ApiError;

/// Pixels per inch a PDF page is laid out at (a 2480 px wide scan makes an A4 page).
pub const PDF_DPI: f32 = 300.0;

/// Largest image (pixels) decoded to make a PDF here: the API function has 256 MB. An RGB or
/// grey JPEG is embedded as it is (turned by the PDF when its EXIF says so), whatever its size.
pub const MAX_DECODE_PIXELS: u64 = 16_000_000;

/// Most pixels, all pages together, decoded to make one PDF of a multi-page TIFF: the budget of
/// one image (two A4 pages at 300 dpi, four at 200 dpi), as the function's CPU share is small.
pub const MAX_DOCUMENT_PIXELS: u64 = MAX_DECODE_PIXELS;

/// The upload as PDF page images, one per result page of `sizes` (`width × height` each): every
/// page of a multi-page TIFF, else the one image.
pub fn page_images(bytes: &[u8], sizes: &[(u32, u32)]) -> Result<Vec<Option<PageImage>>, ApiError> {
    let limit = ocr_core::pdf::DEFAULT_MAX_PAGES.max(sizes.len());
    match ocr_core::tiff::TiffPages::read(bytes, limit) {
        Ok(Some(pages)) if pages.len() > 1 && sizes.len() > 1 => {
            let total: u64 = sizes.iter().map(|&(w, h)| u64::from(w) * u64::from(h)).sum();
            if total > MAX_DOCUMENT_PIXELS {
                return Err(ApiError::TooLarge(format!(
                    "the document's pages are {total} pixels together; a PDF is made here from documents up to \
                     {MAX_DOCUMENT_PIXELS} pixels: ask for hocr or alto instead"
                )));
            }
            // One page decoded at a time; each re-pointed copy of the file is dropped after it.
            (0..pages.len().min(sizes.len()))
                .map(|i| page_image(&pages.page(bytes, i), sizes[i].0, sizes[i].1).map(Some))
                .collect()
        }
        _ => {
            let (w, h) = sizes.first().copied().unwrap_or_default();
            Ok(vec![Some(page_image(bytes, w, h)?)])
        }
    }
}

/// The upload as a PDF page image of `width × height` (the result's page, EXIF-upright).
pub fn page_image(bytes: &[u8], width: u32, height: u32) -> Result<PageImage, ApiError> {
    let unreadable = |e: image::ImageError| ApiError::NoResult(format!("the uploaded image cannot be read again: {e}"));
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| unreadable(e.into()))?;
    let format = reader.format();
    let mut decoder = reader.into_decoder().map_err(unreadable)?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let color = decoder.color_type();
    let exif = orientation.to_exif();
    // Orientations 5 to 8 swap the sides.
    let upright_size = if exif >= 5 { (h, w) } else { (w, h) };
    if format == Some(ImageFormat::Jpeg)
        && upright_size == (width, height)
        && matches!(color, image::ColorType::L8 | image::ColorType::Rgb8)
    {
        // Embedded as it is, whatever its size; the PDF turns it upright.
        let gray = color == image::ColorType::L8;
        return Ok(PageImage { jpeg: bytes.to_vec(), width: w, height: h, gray, orientation: exif });
    }
    if u64::from(w) * u64::from(h) > MAX_DECODE_PIXELS {
        return Err(ApiError::TooLarge(format!(
            "the image is {w}x{h} pixels; a PDF is made here from images up to {MAX_DECODE_PIXELS} pixels \
             (or an RGB or grey JPEG of any size): ask for hocr or alto instead"
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
    Ok(PageImage { jpeg, width: rgb.width(), height: rgb.height(), gray: false, orientation: 1 })
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
    fn every_page_of_a_tiff_is_under_its_text() {
        let pages: Vec<image::RgbImage> = [(40, 30, 200u8), (50, 20, 100), (30, 60, 20)]
            .iter()
            .map(|&(w, h, v)| image::RgbImage::from_pixel(w, h, image::Rgb([v; 3])))
            .collect();
        let mut tiff = Vec::new();
        {
            let mut enc = tiff::encoder::TiffEncoder::new(Cursor::new(&mut tiff)).unwrap();
            for p in &pages {
                enc.write_image::<tiff::encoder::colortype::RGB8>(p.width(), p.height(), p.as_raw()).unwrap();
            }
        }
        let sizes: Vec<(u32, u32)> = pages.iter().map(|p| p.dimensions()).collect();
        let images = page_images(&tiff, &sizes).unwrap();
        assert_eq!(images.len(), 3);
        for (image, page) in images.iter().zip(&pages) {
            let image = image.as_ref().unwrap();
            let back = image::load_from_memory(&image.jpeg).unwrap().to_rgb8();
            assert_eq!(back.dimensions(), page.dimensions());
            let (got, want) = (back.get_pixel(3, 3).0[0], page.get_pixel(3, 3).0[0]);
            assert!(got.abs_diff(want) <= 3, "{got} vs {want}");
        }
        // A single image is one page, whatever the sizes say.
        let png = encode(&DynamicImage::ImageRgb8(pages[0].clone()), ImageFormat::Png);
        assert_eq!(page_images(&png, &sizes[..1]).unwrap().len(), 1);
        // Too many pixels together: a clear 413, not a timeout.
        let big = vec![(4000, 2000); 3];
        assert!(matches!(page_images(&tiff, &big), Err(ApiError::TooLarge(_))));
    }

    /// `jpeg` with an EXIF segment saying `orientation`, as a phone writes it.
    fn with_exif(jpeg: &[u8], orientation: u8) -> Vec<u8> {
        // A little-endian TIFF block with one IFD entry: tag 0x0112, SHORT, count 1.
        let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        tiff.extend_from_slice(&[orientation, 0, 0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn a_turned_jpeg_is_embedded_as_it_is_and_turned_by_the_pdf() {
        // 64 × 32 stored, dark in its top-left quarter: every turn puts that block elsewhere.
        let stored =
            image::RgbImage::from_fn(64, 32, |x, y| image::Rgb(if x < 32 && y < 16 { [20; 3] } else { [235; 3] }));
        let jpeg = encode(&DynamicImage::ImageRgb8(stored), ImageFormat::Jpeg);
        let pdftoppm = std::process::Command::new("pdftoppm").arg("-v").output().is_ok();
        if !pdftoppm {
            let required = std::env::var("OCR_REQUIRE_CHECKERS").is_ok_and(|v| v == "1");
            assert!(!required, "OCR_REQUIRE_CHECKERS=1 but pdftoppm (poppler-utils) is missing");
            eprintln!("SKIPPED rendering the turned pages: pdftoppm missing");
        }
        for o in 1..=8u8 {
            let bytes = with_exif(&jpeg, o);
            let upright = {
                let mut d =
                    ImageReader::new(Cursor::new(&bytes)).with_guessed_format().unwrap().into_decoder().unwrap();
                let turn = d.orientation().unwrap();
                let mut img = DynamicImage::from_decoder(d).unwrap();
                img.apply_orientation(turn);
                img.to_luma8()
            };
            let (w, h) = upright.dimensions();
            let page = page_image(&bytes, w, h).unwrap();
            assert_eq!((page.jpeg == bytes, page.orientation), (true, o), "orientation {o}: not passed through");
            if !pdftoppm {
                continue;
            }
            // At 72 dpi one pixel is one point: poppler's rendering must be the upright picture.
            let result = ocr_core::OcrResult::image(w, h, Vec::new(), 0.0);
            let pdf = ocr_core::render::searchable_pdf(&result, &[Some(page)], 72.0);
            let dir = std::env::temp_dir().join(format!("ocr-exif-{}-{o}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("p.pdf"), &pdf).unwrap();
            let ok = std::process::Command::new("pdftoppm")
                .args(["-r", "72", "-gray", "-png", "-singlefile"])
                .arg(dir.join("p.pdf"))
                .arg(dir.join("p"))
                .status()
                .unwrap();
            assert!(ok.success());
            let rendered = image::open(dir.join("p.png")).unwrap().to_luma8();
            std::fs::remove_dir_all(&dir).unwrap();
            assert_eq!(rendered.dimensions(), (w, h), "orientation {o}");
            let diff: u64 =
                rendered.pixels().zip(upright.pixels()).map(|(a, b)| u64::from(a.0[0].abs_diff(b.0[0]))).sum();
            let mean = diff as f64 / f64::from(w * h);
            assert!(
                mean < 12.0,
                "orientation {o}: rendered page differs from the upright picture by {mean:.1} per pixel"
            );
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(matches!(page_image(b"not an image", 1, 1), Err(ApiError::NoResult(_))));
    }
}
