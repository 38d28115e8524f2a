//! Images with known text, rendered here (DejaVu fonts from Debian's fonts-dejavu-core, which
//! `scripts/setup.sh` installs) so that the tests need no image files and no evaluation data.

use std::io::Cursor;
use std::path::Path;

use ab_glyph::{FontVec, PxScale};
use anyhow::Context;
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
];

/// Common words of receipts and letters: what the tiny model set reads reliably at this size.
const WORDS: [&str; 24] = [
    "invoice", "total", "coffee", "delivery", "station", "market", "paper", "window", "garden", "number", "address",
    "street", "payment", "order", "receipt", "amount", "office", "letter", "summer", "yellow", "river", "doctor",
    "credit", "ticket",
];

/// The fonts, or an error naming the package that provides them: a test that renders text
/// fails without them rather than passing without having read anything.
fn fonts() -> anyhow::Result<Vec<FontVec>> {
    FONTS
        .iter()
        .map(|p| {
            let bytes = std::fs::read(Path::new(p))
                .with_context(|| format!("font {p} missing: install Debian's fonts-dejavu-core (scripts/setup.sh)"))?;
            FontVec::try_from_vec(bytes).with_context(|| format!("font {p} unreadable"))
        })
        .collect()
}

/// `n` single-line PNG images and their text: one to three words (some capitalised, some
/// with a number), three fonts, slightly tinted backgrounds. The same `n` gives the same
/// images on every run.
pub fn line_images(n: usize) -> anyhow::Result<Vec<(Vec<u8>, String)>> {
    let fonts = fonts()?;
    let mut rng = StdRng::seed_from_u64(20261129);
    (0..n)
        .map(|i| {
            let words = 1 + i % 3;
            let mut text: Vec<String> =
                (0..words).map(|_| WORDS[rng.random_range(0..WORDS.len())].to_owned()).collect();
            if i % 4 == 1 {
                text[0] = capitalise(&text[0]);
            }
            if i % 5 == 2 {
                text.push(format!("{}", rng.random_range(10..1000)));
            }
            let text = text.join(" ");
            let png = render_line(&text, &fonts[i % fonts.len()], rng.random_range(232..=255))?;
            Ok((png, text))
        })
        .collect()
}

fn capitalise(w: &str) -> String {
    let mut c = w.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// One line of dark text, 36 px, with a margin around it, as PNG.
fn render_line(text: &str, font: &FontVec, background: u8) -> anyhow::Result<Vec<u8>> {
    let scale = PxScale::from(36.0);
    let (w, h) = imageproc::drawing::text_size(scale, font, text);
    let mut img =
        RgbImage::from_pixel(w + 48, h.max(36) + 40, Rgb([background, background, background.saturating_sub(6)]));
    imageproc::drawing::draw_text_mut(&mut img, Rgb([25, 25, 30]), 24, 16, scale, font, text);
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).context("encoding PNG")?;
    Ok(out.into_inner())
}

/// A scanned document: one page per PNG, each its picture (uncompressed RGB) filling a page
/// at 200 dpi, no text of its own, as a scanner writes a PDF.
pub fn scanned_pdf(pngs: &[&[u8]]) -> anyhow::Result<Vec<u8>> {
    let mut w = ocr_core::fakes::PdfWriter::new();
    w.obj(1, "<< /Type /Catalog /Pages 2 0 R >>");
    let kids: Vec<String> = (0..pngs.len()).map(|k| format!("{} 0 R", 3 + 3 * k)).collect();
    w.obj(2, &format!("<< /Type /Pages /Kids [{}] /Count {} >>", kids.join(" "), pngs.len()));
    for (k, png) in pngs.iter().enumerate() {
        let img = image::load_from_memory(png)?.to_rgb8();
        let (w_pt, h_pt) = (img.width() as f32 * 72.0 / 200.0, img.height() as f32 * 72.0 / 200.0);
        let (page, picture, draw) = (3 + 3 * k as u32, 4 + 3 * k as u32, 5 + 3 * k as u32);
        w.obj(
            page,
            &format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w_pt} {h_pt}] /Resources << /XObject << /Scan {picture} 0 R >> >> /Contents {draw} 0 R >>"
            ),
        );
        let dict = format!(
            "/Type /XObject /Subtype /Image /Width {} /Height {} /ColorSpace /DeviceRGB /BitsPerComponent 8",
            img.width(),
            img.height()
        );
        w.stream(picture, &dict, img.as_raw());
        w.stream(draw, "", format!("q {w_pt} 0 0 {h_pt} 0 0 cm /Scan Do Q").as_bytes());
    }
    Ok(w.finish(1, ""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_the_same_lines_every_time() {
        let a = super::line_images(5).unwrap();
        let b = super::line_images(5).unwrap();
        assert_eq!(a.len(), 5);
        assert!(a.iter().zip(&b).all(|(x, y)| x == y), "deterministic");
        assert!(a.iter().all(|(png, text)| png.starts_with(b"\x89PNG") && !text.is_empty()));
    }
}
