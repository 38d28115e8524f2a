//! Documents: every page of an input as an image. A PDF gives each page rendered (see
//! [`crate::pdf`]), a multi-page TIFF each of its pages, any other image its one page.
//!
//! A TIFF's pages are a chain of image directories (IFDs), and the file header points at the
//! first. Each page is decoded by [`decode_image`] from the same bytes with the header pointing
//! at that page's directory (every other offset in a TIFF is absolute), so every page gets the
//! same decoders, pixel limits, orientation and panic containment as a single image.

use image::RgbImage;

use crate::decode::{decode_image, probe_dimensions};
use crate::error::{EngineError, Result};

/// Default most pages of one input (`MAX_PAGES`), the upload check's too.
pub const DEFAULT_MAX_PAGES: usize = ocr_core::pdf::DEFAULT_MAX_PAGES;

/// Where each page's directory starts, for a TIFF; `None` for anything else. A chain longer than
/// `max_pages` is refused without walking it further, and so is a chain that loops (a page
/// bomb: 4 bytes can point back at the first page for ever).
fn tiff_pages(bytes: &[u8], max_pages: usize) -> Result<Option<(TiffKind, Vec<u64>)>> {
    let kind = match bytes.get(..4) {
        Some(b"II*\0") => TiffKind { little: true, big: false },
        Some(b"MM\0*") => TiffKind { little: false, big: false },
        Some(b"II+\0") => TiffKind { little: true, big: true },
        Some(b"MM\0+") => TiffKind { little: false, big: true },
        _ => return Ok(None),
    };
    let bad = |what: &str| EngineError::Decode(format!("TIFF: {what}"));
    let mut offsets = Vec::new();
    let mut next = kind.read(bytes, if kind.big { 8 } else { 4 }).ok_or_else(|| bad("header cut short"))?;
    while next != 0 {
        if offsets.contains(&next) {
            return Err(bad("its pages loop back on themselves"));
        }
        if offsets.len() == max_pages {
            return Err(EngineError::TooManyPages { limit: max_pages });
        }
        offsets.push(next);
        let at = usize::try_from(next).map_err(|_| bad("page offset out of range"))?;
        let (count, entry, count_len) = if kind.big {
            (kind.read(bytes, at).ok_or_else(|| bad("page directory out of the file"))?, 20, 8)
        } else {
            (kind.read16(bytes, at).ok_or_else(|| bad("page directory out of the file"))?, 12, 2)
        };
        let link = (count as usize).checked_mul(entry).and_then(|n| n.checked_add(at + count_len));
        next = link.and_then(|l| kind.read(bytes, l)).ok_or_else(|| bad("page directory cut short"))?;
    }
    if offsets.is_empty() {
        return Err(bad("no pages"));
    }
    Ok(Some((kind, offsets)))
}

#[derive(Clone, Copy)]
struct TiffKind {
    little: bool,
    big: bool,
}

impl TiffKind {
    fn read16(self, b: &[u8], at: usize) -> Option<u64> {
        let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(u64::from(if self.little { u16::from_le_bytes(s) } else { u16::from_be_bytes(s) }))
    }

    /// An offset: 4 bytes in a classic TIFF, 8 in a BigTIFF.
    fn read(self, b: &[u8], at: usize) -> Option<u64> {
        if self.big {
            let s: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
            Some(if self.little { u64::from_le_bytes(s) } else { u64::from_be_bytes(s) })
        } else {
            let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
            Some(u64::from(if self.little { u32::from_le_bytes(s) } else { u32::from_be_bytes(s) }))
        }
    }

    /// An unsigned integer of `n` (2, 4 or 8) bytes.
    fn uint(self, b: &[u8], at: usize, n: usize) -> Option<u64> {
        let s = b.get(at..at.checked_add(n)?)?;
        let fold = |acc: u64, &x: &u8| (acc << 8) | u64::from(x);
        Some(if self.little { s.iter().rev().fold(0, fold) } else { s.iter().fold(0, fold) })
    }

    /// Width and height (tags 256 and 257) of the directory at `offset`, read in place: the cost
    /// of a page without copying the file for it. `None` when either is missing or odd.
    fn page_size(self, b: &[u8], offset: u64) -> Option<(u32, u32)> {
        let at = usize::try_from(offset).ok()?;
        let (count, first, entry, value) =
            if self.big { (self.uint(b, at, 8)?, 8, 20, 12) } else { (self.uint(b, at, 2)?, 2, 12, 8) };
        let (mut width, mut height) = (None, None);
        for i in 0..usize::try_from(count).ok()?.min(4096) {
            let e = at + first + i * entry;
            let v = match self.uint(b, e + 2, 2)? {
                3 => self.uint(b, e + value, 2)?,  // SHORT
                4 => self.uint(b, e + value, 4)?,  // LONG
                16 => self.uint(b, e + value, 8)?, // LONG8 (BigTIFF)
                _ => continue,
            };
            match self.uint(b, e, 2)? {
                256 => width = u32::try_from(v).ok(),
                257 => height = u32::try_from(v).ok(),
                _ => {}
            }
        }
        Some((width?, height?))
    }

    /// The file with its header pointing at the directory at `offset`.
    fn pointing_at(self, bytes: &[u8], offset: u64) -> Vec<u8> {
        let mut b = bytes.to_vec();
        if self.big {
            let v = if self.little { offset.to_le_bytes() } else { offset.to_be_bytes() };
            b[8..16].copy_from_slice(&v);
        } else {
            // The chain was read from 4-byte offsets, so it fits.
            let o = offset as u32;
            let v = if self.little { o.to_le_bytes() } else { o.to_be_bytes() };
            b[4..8].copy_from_slice(&v);
        }
        b
    }
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
    Ok(tiff_pages(bytes, max_pages)?.map_or(1, |(_, offsets)| offsets.len()))
}

/// Each page's size in pixels as its header declares it (as it will be rendered, for a PDF
/// within `max_pixels`), none decoded: what decoding the input would cost.
pub fn probe_pages(bytes: &[u8], max_pixels: u64, max_pages: usize) -> Result<Vec<(u32, u32)>> {
    if crate::pdf::is_pdf(bytes) {
        return crate::pdf::probe_pdf(bytes, max_pixels, max_pages);
    }
    match tiff_pages(bytes, max_pages)? {
        Some((kind, offsets)) if offsets.len() > 1 => offsets
            .iter()
            .map(|&o| kind.page_size(bytes, o).map_or_else(|| probe_dimensions(&kind.pointing_at(bytes, o)), Ok))
            .collect(),
        _ => Ok(vec![probe_dimensions(bytes)?]),
    }
}

/// Decodes every page, each within `max_pixels`. A page that fails fails the input, named by
/// its number.
pub fn decode_pages(bytes: &[u8], max_pixels: u64, max_pages: usize) -> Result<Vec<RgbImage>> {
    if crate::pdf::is_pdf(bytes) {
        return crate::pdf::render_pdf(bytes, max_pixels, max_pages);
    }
    match tiff_pages(bytes, max_pages)? {
        Some((kind, offsets)) if offsets.len() > 1 => offsets
            .iter()
            .enumerate()
            .map(|(k, &o)| decode_image(&kind.pointing_at(bytes, o), max_pixels).map_err(|e| on_page(k + 1, e)))
            .collect(),
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
        let (kind, offsets) = tiff_pages(&bytes, 50).unwrap().unwrap();
        assert_eq!(kind.page_size(&bytes, offsets[1]), Some((20, 5)));
        let decoded = decode_pages(&bytes, 1_000_000, 50).unwrap();
        assert_eq!(decoded, pages);
        assert!(matches!(decode_pages(&bytes, 1_000_000, 2), Err(EngineError::TooManyPages { limit: 2 })));
        // A page over the pixel limit fails the input, by page number.
        let e = decode_pages(&bytes, 120, 50).unwrap_err();
        assert!(e.to_string().contains("page 3"), "{e}");
    }

    #[test]
    fn bigtiff_pages_are_sized_in_place() {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut enc = tiff::encoder::TiffEncoder::new_big(&mut out).unwrap();
        for w in [7u32, 9] {
            enc.write_image::<tiff::encoder::colortype::RGB8>(w, 3, &vec![0u8; w as usize * 9]).unwrap();
        }
        let bytes = out.into_inner();
        let (kind, offsets) = tiff_pages(&bytes, 50).unwrap().unwrap();
        assert!(kind.big);
        assert_eq!(
            offsets.iter().map(|&o| kind.page_size(&bytes, o)).collect::<Vec<_>>(),
            [Some((7, 3)), Some((9, 3))]
        );
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
