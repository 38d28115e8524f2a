//! PDF pages as images, through PDFium (`libpdfium.so` from the pypdfium2 wheel, which
//! `scripts/fetch-models.sh` fetches and checks; `PDFIUM_DYLIB_PATH` names it, default
//! `$OCR_MODEL_DIR/pdfium/libpdfium.so`). Bound once per process, at the first PDF.
//!
//! PDFium never runs a document's JavaScript here (no V8 in this build, and no form actions
//! are triggered), rebuilds a broken cross-reference table itself, and reports encryption as a
//! password error. Page sizes are read before rendering, so a huge media box is rendered at a
//! lower resolution within the pixel limit rather than allocated whole.

use std::path::PathBuf;
use std::sync::OnceLock;

use image::RgbImage;
use pdfium_render::prelude::*;

use crate::error::{EngineError, Result};

/// Resolution pages are rendered at, pixels per inch (lowered for a page that would exceed the
/// pixel limit).
pub const PDF_DPI: f32 = 200.0;

/// Whether the bytes are a PDF (the header may follow up to 1 KB of junk, as readers allow).
pub fn is_pdf(bytes: &[u8]) -> bool {
    bytes.windows(5).take(1024).any(|w| w == b"%PDF-")
}

fn pdfium() -> Result<&'static Pdfium> {
    static PDFIUM: OnceLock<std::result::Result<Pdfium, String>> = OnceLock::new();
    PDFIUM
        .get_or_init(|| {
            let path = std::env::var_os("PDFIUM_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| {
                let models = std::env::var_os("OCR_MODEL_DIR").map_or_else(|| PathBuf::from("models"), PathBuf::from);
                models.join("pdfium/libpdfium.so")
            });
            Pdfium::bind_to_library(&path).map(Pdfium::new).map_err(|e| {
                format!("PDF support needs PDFium: cannot load {} ({e:?}); run scripts/fetch-models.sh", path.display())
            })
        })
        .as_ref()
        .map_err(|e| EngineError::Config(e.clone()))
}

fn load<'a>(pdfium: &'a Pdfium, bytes: &'a [u8]) -> Result<PdfDocument<'a>> {
    pdfium.load_pdf_from_byte_slice(bytes, None).map_err(|e| match e {
        PdfiumError::PdfiumLibraryInternalError(PdfiumInternalError::PasswordError) => {
            EngineError::Decode("the PDF is encrypted (it needs a password)".into())
        }
        PdfiumError::PdfiumLibraryInternalError(PdfiumInternalError::FormatError) => {
            EngineError::Decode("the PDF is damaged or not a PDF".into())
        }
        PdfiumError::PdfiumLibraryInternalError(PdfiumInternalError::SecurityError) => {
            EngineError::Decode("the PDF uses an unsupported security handler".into())
        }
        other => EngineError::Decode(format!("the PDF does not load: {other:?}")),
    })
}

/// The scale (pixels per point) a page of `w × h` points is rendered at: [`PDF_DPI`], lowered
/// so the page stays within `max_pixels`.
fn scale(w: f32, h: f32, max_pixels: u64) -> f32 {
    let s = PDF_DPI / 72.0;
    let px = f64::from(w * s) * f64::from(h * s);
    if px > max_pixels as f64 { s * (max_pixels as f64 / px).sqrt() as f32 } else { s }
}

/// Each page's scale ([`scale`]), all lowered alike when the pages together would pass
/// [`crate::document::document_pixels`].
fn scales(sizes: &[(f32, f32)], max_pixels: u64) -> Vec<f32> {
    let mut scales: Vec<f32> = sizes.iter().map(|&(w, h)| scale(w, h, max_pixels)).collect();
    let total: f64 = sizes.iter().zip(&scales).map(|(&(w, h), &s)| f64::from(w * s) * f64::from(h * s)).sum();
    // A little under the limit, so rounding each page's size up cannot pass it.
    let limit = crate::document::document_pixels(max_pixels) as f64 * 0.999;
    if total > limit {
        let f = (limit / total).sqrt() as f32;
        scales.iter_mut().for_each(|s| *s *= f);
    }
    scales
}

fn page_count(doc: &PdfDocument<'_>, max_pages: usize) -> Result<usize> {
    let n = doc.pages().len() as usize;
    if n == 0 {
        return Err(EngineError::Decode("the PDF has no pages".into()));
    }
    if n > max_pages {
        return Err(EngineError::TooManyPages { limit: max_pages });
    }
    Ok(n)
}

fn page_size(doc: &PdfDocument<'_>, k: usize) -> Result<(f32, f32)> {
    let rect = doc.pages().page_size(k as PdfPageIndex).map_err(|e| EngineError::Page {
        page: k + 1,
        source: Box::new(EngineError::Decode(format!("no page size: {e:?}"))),
    })?;
    let (w, h) = (rect.width().value.abs(), rect.height().value.abs());
    if !(w.is_finite() && h.is_finite()) || w < 1.0 || h < 1.0 {
        return Err(EngineError::Page { page: k + 1, source: Box::new(EngineError::Empty { width: 0, height: 0 }) });
    }
    Ok((w, h))
}

/// How many pages the PDF has (refusing more than `max_pages`).
pub fn pdf_page_count(bytes: &[u8], max_pages: usize) -> Result<usize> {
    let pdfium = pdfium()?;
    page_count(&load(pdfium, bytes)?, max_pages)
}

/// Each page's size in pixels as it will be rendered, none rendered.
pub fn probe_pdf(bytes: &[u8], max_pixels: u64, max_pages: usize) -> Result<Vec<(u32, u32)>> {
    let pdfium = pdfium()?;
    let doc = load(pdfium, bytes)?;
    let sizes = (0..page_count(&doc, max_pages)?).map(|k| page_size(&doc, k)).collect::<Result<Vec<_>>>()?;
    let scales = scales(&sizes, max_pixels);
    Ok(sizes.iter().zip(scales).map(|(&(w, h), s)| ((w * s).round() as u32, (h * s).round() as u32)).collect())
}

/// Renders every page at [`PDF_DPI`] (each within `max_pixels`), on white.
pub fn render_pdf(bytes: &[u8], max_pixels: u64, max_pages: usize) -> Result<Vec<RgbImage>> {
    let pdfium = pdfium()?;
    let doc = load(pdfium, bytes)?;
    let n = page_count(&doc, max_pages)?;
    // Sizes first: the scales keep the pages together within the document limit.
    let sizes = (0..n).map(|k| page_size(&doc, k)).collect::<Result<Vec<_>>>()?;
    let scales = scales(&sizes, max_pixels);
    let mut pages = Vec::with_capacity(n);
    for (k, scale) in scales.into_iter().enumerate() {
        let on_page = |what: String| EngineError::Page { page: k + 1, source: Box::new(EngineError::Decode(what)) };
        let page = doc.pages().get(k as PdfPageIndex).map_err(|e| on_page(format!("{e:?}")))?;
        let config = PdfRenderConfig::new().scale_page_by_factor(scale);
        let bitmap = page.render_with_config(&config).map_err(|e| on_page(format!("does not render: {e:?}")))?;
        let (bw, bh) = (bitmap.width().max(0) as u32, bitmap.height().max(0) as u32);
        crate::decode::check_dimensions(bw, bh, max_pixels)
            .map_err(|e| EngineError::Page { page: k + 1, source: Box::new(e) })?;
        let bgra = bitmap.as_raw_bytes();
        if bgra.len() < bw as usize * bh as usize * 4 {
            return Err(on_page(format!("PDFium gave {} bytes for {bw}x{bh} pixels", bgra.len())));
        }
        let mut rgb = RgbImage::new(bw, bh);
        for (o, p) in rgb.pixels_mut().zip(bgra.chunks_exact(4)) {
            o.0 = [p[2], p[1], p[0]];
        }
        pages.push(rgb);
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_keeps_a_page_within_the_pixel_limit() {
        // A4 at 200 dpi is 1654 x 2339 (3.9 MP); a 200-inch square page is scaled to fit.
        let s = scale(595.0, 842.0, 50_000_000);
        assert!((s - 200.0 / 72.0).abs() < 1e-6);
        let s = scale(14_400.0, 14_400.0, 50_000_000);
        let px = f64::from(14_400.0 * s).powi(2);
        assert!(px <= 50_000_000.0 * 1.0001 && px > 49_000_000.0, "{px}");
    }

    #[test]
    fn a_document_too_large_in_all_is_rendered_smaller() {
        // Fifty A4 pages at 200 dpi (193 MP) are within 5 × 50 MP; fifty 200-inch pages, each
        // at the one-page limit, are lowered alike to fit it.
        let a4 = scales(&[(595.0, 842.0); 50], 50_000_000);
        assert!(a4.iter().all(|s| (s - 200.0 / 72.0).abs() < 1e-6));
        let huge = [(14_400.0, 14_400.0); 50];
        let s = scales(&huge, 50_000_000);
        let total: f64 = huge.iter().zip(&s).map(|(&(w, h), &s)| f64::from(w * s) * f64::from(h * s)).sum();
        assert!(total <= 250_000_000.0 && total > 240_000_000.0, "{total}");
    }

    #[test]
    fn pdf_magic_is_found_near_the_start() {
        assert!(is_pdf(b"%PDF-1.7\n"));
        assert!(is_pdf(b"\xef\xbb\xbf%PDF-1.4"));
        assert!(!is_pdf(b"II*\0"));
    }
}
