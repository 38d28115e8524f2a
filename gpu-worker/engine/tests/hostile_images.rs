//! Hostile and unusual files through `decode_image`: each gives an image or a typed per-image
//! error, never a panic, an abort or a long stall. Inputs are made in code (`common/hostile.rs`).
//! `cargo test --test hostile_images -- --nocapture` prints the matrix.

#[path = "common/hostile.rs"]
mod hostile;

use std::time::{Duration, Instant};

use hostile::*;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, RgbaImage};
use ocr_engine::{DEFAULT_MAX_PIXELS, EngineError, decode_image};

/// Generous bound for one decode in an unoptimised test build.
const DECODE_LIMIT: Duration = Duration::from_secs(5);

/// What a case must give.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// An image of this size (width, height).
    Image(u32, u32),
    /// `EngineError::UnsupportedFormat`.
    Unsupported,
    /// `EngineError::TooLarge`, refused from the header.
    TooLarge,
    /// Refused before the pixels are read: `TooLarge`, or the decoder's own allocation limit
    /// (which `decode_image` sets from the pixel limit) tripping while it reads the header.
    Refused,
    /// `EngineError::Decode`.
    Decode,
    /// Either an image or a per-image input error (truncations some decoders pad out).
    ImageOrError,
}

/// Decodes with a time bound; a panic fails the test with the case's name.
fn decode(name: &str, bytes: &[u8]) -> (Result<RgbImage, EngineError>, Duration) {
    let t = Instant::now();
    let r = std::panic::catch_unwind(|| decode_image(bytes, DEFAULT_MAX_PIXELS))
        .unwrap_or_else(|_| panic!("{name}: decode_image panicked"));
    let took = t.elapsed();
    assert!(took < DECODE_LIMIT, "{name}: decode took {took:?}");
    (r, took)
}

fn outcome(r: &Result<RgbImage, EngineError>) -> String {
    match r {
        Ok(img) => format!("image {}x{}", img.width(), img.height()),
        Err(e) => format!("{} ({e})", kind(e)),
    }
}

fn kind(e: &EngineError) -> &'static str {
    match e {
        EngineError::UnsupportedFormat => "UnsupportedFormat",
        EngineError::Decode(_) => "Decode",
        EngineError::TooLarge { .. } => "TooLarge",
        EngineError::Empty { .. } => "Empty",
        _ => "other",
    }
}

fn check(name: &str, bytes: &[u8], want: Want) -> Option<RgbImage> {
    let (r, took) = decode(name, bytes);
    eprintln!("{name:<44} {:>9} B {:>7.1} ms  {}", bytes.len(), took.as_secs_f64() * 1e3, outcome(&r));
    if let Err(e) = &r {
        assert!(!e.is_retryable(), "{name}: bad input must not be retryable: {e:?}");
        assert!(!e.to_string().is_empty());
    }
    match (want, &r) {
        (Want::Image(w, h), Ok(img)) => assert_eq!(img.dimensions(), (w, h), "{name}"),
        (Want::Unsupported, Err(EngineError::UnsupportedFormat))
        | (Want::TooLarge, Err(EngineError::TooLarge { .. }))
        | (Want::Refused, Err(EngineError::TooLarge { .. }))
        | (Want::Decode, Err(EngineError::Decode(_)))
        | (Want::ImageOrError, Ok(_))
        | (
            Want::ImageOrError,
            Err(EngineError::Decode(_) | EngineError::UnsupportedFormat | EngineError::Empty { .. }),
        ) => {}
        (Want::Refused, Err(EngineError::Decode(m))) if m.contains("over decoder limits") => {}
        _ => panic!("{name}: wanted {want:?}, got {}", outcome(&r)),
    }
    r.ok()
}

fn page() -> RgbImage {
    let mut img = marked(64, 48);
    for x in 8..56 {
        img.put_pixel(x, 30, Rgb([20, 40, 200]));
    }
    img
}

#[test]
fn empty_and_foreign_files_are_unsupported() {
    for (name, bytes) in [
        ("zero bytes", &b""[..]),
        ("one byte", b"\xFF"),
        ("JPEG SOI only", b"\xFF\xD8"),
        ("GIF", b"GIF89a\x01\0\x01\0\0\0\0;"),
        ("BMP header", b"BM\0\0\0\0\0\0\0\0\x36\0\0\0"),
        ("text", b"hello, I am not an image"),
    ] {
        check(name, bytes, Want::Unsupported);
    }
    // Magic bytes alone: recognised as the format, nothing to decode.
    for (name, bytes) in [
        ("JPEG magic only", &b"\xFF\xD8\xFF"[..]),
        ("PNG signature only", b"\x89PNG\r\n\x1a\n"),
        ("WebP RIFF header only", b"RIFF\x04\0\0\0WEBP"),
        ("TIFF header only", b"II*\0\x08\0\0\0"),
    ] {
        check(name, bytes, Want::ImageOrError);
        assert!(decode_image(bytes, DEFAULT_MAX_PIXELS).is_err(), "{name}");
    }
}

#[test]
fn truncated_files_fail_alone() {
    let img = DynamicImage::ImageRgb8(page());
    for fmt in [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::WebP, ImageFormat::Tiff] {
        let whole = encode(&img, fmt);
        check(&format!("{fmt:?} whole"), &whole, Want::Image(64, 48));
        let n = whole.len();
        for cut in [8, 16, 30, n / 4, n / 2, n * 3 / 4, n - 2] {
            check(&format!("{fmt:?} cut at {cut} of {n}"), &whole[..cut], Want::ImageOrError);
        }
    }
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    let jpeg = encode(&DynamicImage::ImageRgb8(page()), ImageFormat::Jpeg);
    check("PNG claiming 100000x100000", &png_claiming(100_000, 100_000), Want::TooLarge);
    check("PNG claiming 2^31-1 x 1", &png_claiming(i32::MAX as u32, 1), Want::Refused);
    check("JPEG claiming 65535x65535", &jpeg_claiming(&jpeg, 65535, 65535), Want::TooLarge);
    check("JPEG claiming 65535x1000", &jpeg_claiming(&jpeg, 65535, 1000), Want::TooLarge);
    check("WebP canvas claiming 16384x16384", &webp_claiming(16384, 16384), Want::TooLarge);
    check("TIFF claiming 100000x100000", &tiff_claiming(100_000, 100_000), Want::TooLarge);
    check("TIFF claiming 4294967295x1", &tiff_claiming(u32::MAX, 1), Want::TooLarge);
    // Zero-sized claims.
    check("PNG claiming 0x10", &png_claiming(0, 10), Want::ImageOrError);
    check("JPEG claiming 0x0", &jpeg_claiming(&jpeg, 0, 0), Want::ImageOrError);
    // Under the pixel limit, but the data is missing: the decoder stops at the end of input.
    check("PNG claiming 7000x7000, 1-byte IDAT", &png_claiming(7000, 7000), Want::Decode);
    check("JPEG claiming 7000x7000, 64x48 of data", &jpeg_claiming(&jpeg, 7000, 7000), Want::Decode);
    check("TIFF claiming 7000x7000, 16-byte strip", &tiff_claiming(7000, 7000), Want::ImageOrError);
    check("WebP VP8 claiming 16383x2990, 30 bytes", &webp_vp8_claiming(16383, 2990, 30), Want::ImageOrError);
    check("WebP VP8 claiming 4000x4000, 30 bytes", &webp_vp8_claiming(4000, 4000, 30), Want::ImageOrError);
}

/// A whole, valid file that inflates ~700x: it decodes (it is under the limit) in bounded time.
#[test]
fn a_real_png_bomb_under_the_limit_decodes_in_bounded_time() {
    let bomb = png_zero_bomb(4000);
    assert!(bomb.len() < 200_000, "{} bytes", bomb.len());
    check("PNG 4000x4000 zeros (real bomb, 16 MP)", &bomb, Want::Image(4000, 4000));
    let flat = webp_lossless_flat(16, 16);
    let small = check("WebP lossless 16x16, zero bits per pixel", &flat, Want::Image(16, 16)).unwrap();
    assert_eq!(small.get_pixel(5, 5).0, [0, 0, 0]);
    check("WebP lossless 7000x7000, zero bits per pixel", &webp_lossless_flat(7000, 7000), Want::Image(7000, 7000));
}

#[test]
fn unusual_encodings_decode() {
    let p = page();
    // 16-bit PNG, grey and RGB: 0xFFFF is white, the blue stroke stays blue.
    let grey = check("PNG 16-bit grey", &png16(&p, true), Want::Image(64, 48)).unwrap();
    assert_eq!(grey.get_pixel(63, 47).0, [255, 255, 255]);
    assert!(grey.get_pixel(0, 0).0[0] < 5);
    let rgb = check("PNG 16-bit RGB", &png16(&p, false), Want::Image(64, 48)).unwrap();
    assert_eq!(rgb.get_pixel(20, 30).0, [20, 40, 200]);
    // Palette with tRNS whose transparent entry is black: the background reads white.
    let pal = check("PNG palette + tRNS (transparent black bg)", &png_palette_alpha(&p), Want::Image(64, 48)).unwrap();
    assert_eq!(pal.get_pixel(63, 47).0, [255, 255, 255], "transparent background is paper");
    assert!(pal.get_pixel(0, 0).0[0] < 5, "opaque ink stays dark");
    // Grey + alpha (ink coverage as alpha, colour black).
    let ga = check("PNG grey+alpha (transparent black bg)", &png_gray_alpha(&p), Want::Image(64, 48)).unwrap();
    assert_eq!(ga.get_pixel(63, 47).0, [255, 255, 255]);
    assert!(ga.get_pixel(0, 0).0[0] < 5);
    // CMYK JPEG (Adobe, inverted): left half full black ink, right half no ink.
    let cmyk = cmyk_jpeg(64, 48, |bx, _| if bx < 4 { [255, 255, 255, 0] } else { [255, 255, 255, 255] });
    let c = check("JPEG CMYK (Adobe APP14)", &cmyk, Want::Image(64, 48)).unwrap();
    let (dark, light) = (c.get_pixel(10, 20).0, c.get_pixel(50, 20).0);
    assert!(dark.iter().all(|&v| v < 60) && light.iter().all(|&v| v > 200), "{dark:?} {light:?}");
    // Animated WebP: the first frame.
    let f1 = RgbaImage::from_pixel(40, 30, image::Rgba([0, 0, 255, 255]));
    let f2 = RgbaImage::from_pixel(40, 30, image::Rgba([255, 0, 0, 255]));
    let a = check("WebP animated, 2 frames", &animated_webp(&[f1, f2]), Want::Image(40, 30)).unwrap();
    assert_eq!(a.get_pixel(5, 5).0, [0, 0, 255], "first frame");
    // Multi-page TIFF: the first page.
    let second = RgbImage::from_pixel(10, 10, Rgb([255, 0, 0]));
    let t = check("TIFF 2 pages (64x48, 10x10)", &multi_page_tiff(&[p.clone(), second]), Want::Image(64, 48)).unwrap();
    assert_eq!(t, p);
}

/// Each EXIF orientation gives the upright image: the top-left mark lands where the tag says.
#[test]
fn every_exif_orientation_is_applied() {
    let img = marked(40, 20);
    // (orientation, upright size, where the mark ends up: (right?, bottom?))
    let cases = [
        (1, (40, 20), (false, false)),
        (2, (40, 20), (true, false)),  // mirrored
        (3, (40, 20), (true, true)),   // 180°
        (4, (40, 20), (false, true)),  // flipped
        (5, (20, 40), (false, false)), // transposed
        (6, (20, 40), (true, false)),  // 90° clockwise
        (7, (20, 40), (true, true)),   // transversed
        (8, (20, 40), (false, true)),  // 90° counter-clockwise
    ];
    for (o, size, (right, bottom)) in cases {
        let up =
            check(&format!("JPEG EXIF orientation {o}"), &jpeg_with_orientation(&img, o), Want::Image(size.0, size.1))
                .unwrap();
        let (w, h) = up.dimensions();
        let x = if right { w - 3 } else { 2 };
        let y = if bottom { h - 3 } else { 2 };
        assert!(up.get_pixel(x, y).0[0] < 60, "orientation {o}: mark not at ({x}, {y})");
        let (ox, oy) = (w - 1 - x, h - 1 - y);
        assert!(up.get_pixel(ox, oy).0[0] > 200, "orientation {o}: opposite corner ({ox}, {oy}) not white");
    }
    // Out-of-range and broken tags are ignored, not fatal.
    check("JPEG EXIF orientation 0", &jpeg_with_orientation(&img, 0), Want::Image(40, 20));
    check("JPEG EXIF orientation 9", &jpeg_with_orientation(&img, 9), Want::Image(40, 20));
    check("JPEG EXIF orientation 65535", &jpeg_with_orientation(&img, 65535), Want::Image(40, 20));
    let jpeg = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg);
    check("JPEG EXIF truncated IFD", &with_app1(&jpeg, b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x09\x01"), Want::Image(40, 20));
    check(
        "JPEG EXIF IFD offset past the end",
        &with_app1(&jpeg, b"Exif\0\0II\x2a\0\xff\xff\xff\x7f"),
        Want::Image(40, 20),
    );
    check("JPEG APP1 that is not EXIF", &with_app1(&jpeg, b"http://ns.adobe.com/xap/1.0/\0<x/>"), Want::Image(40, 20));
}

/// Writes tiny versions of these inputs as the fuzzers' image seeds (`fuzz/seeds/images`):
/// `OCR_FUZZ_SEEDS=fuzz/seeds/images cargo test -p ocr-engine --test hostile_images -- --ignored write_fuzz_seeds`
#[test]
#[ignore = "writes files; run by hand to refresh the fuzz seeds"]
fn write_fuzz_seeds() {
    let dir = std::path::PathBuf::from(std::env::var("OCR_FUZZ_SEEDS").expect("set OCR_FUZZ_SEEDS to a folder"));
    let dir =
        if dir.is_relative() { std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(dir) } else { dir };
    std::fs::create_dir_all(&dir).unwrap();
    let small = marked(8, 8);
    let img = DynamicImage::ImageRgb8(small.clone());
    let jpeg = encode(&img, ImageFormat::Jpeg);
    let frame = RgbaImage::from_pixel(2, 2, image::Rgba([0, 0, 255, 255]));
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("rgb.png", encode(&img, ImageFormat::Png)),
        ("rgb.jpg", jpeg.clone()),
        ("rgb.webp", encode(&img, ImageFormat::WebP)),
        ("rgb.tif", encode(&img, ImageFormat::Tiff)),
        ("gray16.png", png16(&small, true)),
        ("palette_trns.png", png_palette_alpha(&small)),
        ("gray_alpha.png", png_gray_alpha(&small)),
        ("cmyk.jpg", cmyk_jpeg(16, 8, |bx, _| if bx == 0 { [255, 255, 255, 0] } else { [0, 128, 255, 255] })),
        ("exif6.jpg", jpeg_with_orientation(&small, 6)),
        ("animated.webp", animated_webp(&[frame.clone(), frame])),
        ("two_pages.tif", multi_page_tiff(&[marked(4, 4), marked(2, 2)])),
        ("claims_7000.png", png_claiming(7000, 7000)),
        ("claims_100000.tif", tiff_claiming(100_000, 100_000)),
    ];
    let mut total = 0;
    for (name, bytes) in seeds {
        total += bytes.len();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    eprintln!("wrote {total} bytes of seeds to {}", dir.display());
}
