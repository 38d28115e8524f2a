//! Documents: every page of an input as an image. A PDF gives each page rendered (see
//! [`crate::pdf`]), a multi-page TIFF each of its pages, any other image its one page.
//!
//! A TIFF's pages are a chain of image directories (IFDs), and the file header points at the
//! first. Each page is decoded by [`decode_image`] from the same bytes with the header pointing
//! at that page's directory (every other offset in a TIFF is absolute), so every page gets the
//! same decoders, pixel limits, orientation and panic containment as a single image.

use image::RgbImage;

use crate::decode::{decode_image, probe_dimensions};
use ocr_core::tiff::{TiffError, TiffPages};

use crate::error::{EngineError, Result};

/// Default most pages of one input (`MAX_PAGES`), the upload check's too.
pub const DEFAULT_MAX_PAGES: usize = ocr_core::pdf::DEFAULT_MAX_PAGES;

/// Most pixels of all a document's pages together, for a one-page limit of `max_pixels`: five
/// pages at the limit (250 MP, 750 MB decoded, at the default 50 MP). Fifty A4 pages at 200 dpi
/// are 193 MP; without it, fifty pages each at the one-page limit (a small file of huge media
/// boxes, or of blank 50 MP TIFF pages) would decode to 7.5 GB. A PDF's pages are rendered at a
/// lower resolution to fit; a TIFF over it fails.
pub fn document_pixels(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(5)
}

/// A TIFF's pages (`None` for anything else), as engine errors.
fn tiff_pages(bytes: &[u8], max_pages: usize) -> Result<Option<TiffPages>> {
    TiffPages::read(bytes, max_pages).map_err(|e| match e {
        TiffError::TooManyPages { limit } => EngineError::TooManyPages { limit },
        TiffError::Damaged(_) => EngineError::Decode(e.to_string()),
    })
}

/// Whether the input is a document the engine reads page by page (a PDF, or a TIFF of more
/// than one page) rather than an image it decodes itself.
pub fn is_document(bytes: &[u8], max_pages: usize) -> bool {
    crate::pdf::is_pdf(bytes) || page_count(bytes, max_pages).map_or(true, |n| n > 1)
}

/// How many pages the input has (1 for a single image), walking no further than `max_pages`.
pub fn page_count(bytes: &[u8], max_pages: usize) -> Result<usize> {
    if crate::pdf::is_pdf(bytes) {
        return crate::pdf::pdf_page_count(bytes, max_pages);
    }
    Ok(tiff_pages(bytes, max_pages)?.map_or(1, |t| t.len()))
}

/// Each page's size in pixels as its header declares it (as it will be rendered, for a PDF
/// within `max_pixels`), none decoded: what decoding the input would cost.
pub fn probe_pages(bytes: &[u8], max_pixels: u64, max_pages: usize) -> Result<Vec<(u32, u32)>> {
    if crate::pdf::is_pdf(bytes) {
        return crate::pdf::probe_pdf(bytes, max_pixels, max_pages);
    }
    match tiff_pages(bytes, max_pages)? {
        Some(t) if t.len() > 1 => tiff_sizes(&t, bytes, max_pixels),
        _ => Ok(vec![probe_dimensions(bytes)?]),
    }
}

/// A multi-page TIFF's page sizes from their headers, refused when together over
/// [`document_pixels`].
fn tiff_sizes(t: &TiffPages, bytes: &[u8], max_pixels: u64) -> Result<Vec<(u32, u32)>> {
    let sizes = (0..t.len())
        .map(|i| t.page_size(bytes, i).map_or_else(|| probe_dimensions(&t.page(bytes, i)), Ok))
        .collect::<Result<Vec<_>>>()?;
    let (pixels, limit) = (sizes.iter().map(|&(w, h)| u64::from(w) * u64::from(h)).sum(), document_pixels(max_pixels));
    if pixels > limit {
        return Err(EngineError::DocumentTooLarge { pixels, limit });
    }
    Ok(sizes)
}

/// Decodes every page, each within `max_pixels`. A page that fails fails the input, named by
/// its number.
pub fn decode_pages(bytes: &[u8], max_pixels: u64, max_pages: usize) -> Result<Vec<RgbImage>> {
    if crate::pdf::is_pdf(bytes) {
        return crate::pdf::render_pdf(bytes, max_pixels, max_pages);
    }
    match tiff_pages(bytes, max_pages)? {
        Some(t) if t.len() > 1 => {
            // Sizes first: nothing is decoded of a document too large in all.
            tiff_sizes(&t, bytes, max_pixels)?;
            (0..t.len()).map(|i| decode_image(&t.page(bytes, i), max_pixels).map_err(|e| on_page(i + 1, e))).collect()
        }
        _ => Ok(vec![decode_image(bytes, max_pixels)?]),
    }
}

fn on_page(page: usize, e: EngineError) -> EngineError {
    match e {
        EngineError::Decode(m) => EngineError::Decode(format!("page {page}: {m}")),
        other => EngineError::Page { page, source: Box::new(other) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiff(pages: &[RgbImage]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
        for p in pages {
            enc.write_image::<tiff::encoder::colortype::RGB8>(p.width(), p.height(), p.as_raw()).unwrap();
        }
        out.into_inner()
    }

    #[test]
    fn every_page_of_a_tiff_decodes() {
        let pages: Vec<RgbImage> =
            (1..=3u8).map(|k| RgbImage::from_pixel(10 * u32::from(k), 5, image::Rgb([k * 50, 0, 0]))).collect();
        let bytes = tiff(&pages);
        assert_eq!(page_count(&bytes, 50).unwrap(), 3);
        assert_eq!(probe_pages(&bytes, 1_000_000, 50).unwrap(), vec![(10, 5), (20, 5), (30, 5)]);
        // Read from the directories in place, not from a copy of the file per page.
        let t = tiff_pages(&bytes, 50).unwrap().unwrap();
        assert_eq!(t.page_size(&bytes, 1), Some((20, 5)));
        let decoded = decode_pages(&bytes, 1_000_000, 50).unwrap();
        assert_eq!(decoded, pages);
        assert!(matches!(decode_pages(&bytes, 1_000_000, 2), Err(EngineError::TooManyPages { limit: 2 })));
        // A page over the pixel limit fails the input, by page number.
        let e = decode_pages(&bytes, 120, 50).unwrap_err();
        assert!(e.to_string().contains("page 3"), "{e}");
        // Six pages each at the limit are more than five pages' worth together: refused
        // before anything is decoded.
        let full = tiff(&vec![RgbImage::new(10, 10); 6]);
        for e in [probe_pages(&full, 100, 50).unwrap_err(), decode_pages(&full, 100, 50).unwrap_err()] {
            assert!(matches!(e, EngineError::DocumentTooLarge { pixels: 600, limit: 500 }), "{e}");
        }
        assert_eq!(decode_pages(&tiff(&vec![RgbImage::new(10, 10); 5]), 100, 50).unwrap().len(), 5);
    }

    #[test]
    fn bigtiff_pages_are_sized_in_place() {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new_big(&mut out).unwrap();
        for w in [7u32, 9] {
            enc.write_image::<tiff::encoder::colortype::RGB8>(w, 3, &vec![0u8; w as usize * 9]).unwrap();
        }
        let bytes = out.into_inner();
        let t = tiff_pages(&bytes, 50).unwrap().unwrap();
        assert_eq!((0..2).map(|i| t.page_size(&bytes, i)).collect::<Vec<_>>(), [Some((7, 3)), Some((9, 3))]);
        assert_eq!(probe_pages(&bytes, 1_000_000, 50).unwrap(), vec![(7, 3), (9, 3)]);
    }

    #[test]
    fn a_looping_page_chain_is_refused() {
        let mut bytes = tiff(&[RgbImage::new(4, 4)]);
        // The first directory's "next" link points back at itself.
        let first = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        let count = u16::from_le_bytes(bytes[first..first + 2].try_into().unwrap()) as usize;
        let link = first + 2 + 12 * count;
        bytes[link..link + 4].copy_from_slice(&(first as u32).to_le_bytes());
        let e = decode_pages(&bytes, 1_000_000, 50).unwrap_err();
        assert!(e.to_string().contains("loop"), "{e}");
    }

    #[test]
    fn a_single_image_is_one_page() {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(RgbImage::new(3, 2))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(page_count(&png, 50).unwrap(), 1);
        assert_eq!(decode_pages(&png, 100, 50).unwrap().len(), 1);
    }
}
