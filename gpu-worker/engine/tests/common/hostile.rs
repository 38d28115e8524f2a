//! Hostile and unusual image files, made in code (no binary fixtures): truncations,
//! decompression bombs, CMYK JPEG, 16-bit and palette PNG, animated WebP, multi-page TIFF,
//! EXIF orientations.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, RgbaImage};

/// Encodes with the `image` crate's own encoder for `fmt`.
pub fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), fmt).expect("encodes");
    out
}

/// A `w × h` white image with a black block in its top-left quarter: its position after
/// decoding shows how the image was turned.
pub fn marked(w: u32, h: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for y in 0..h / 4 {
        for x in 0..w / 4 {
            img.put_pixel(x, y, Rgb([0, 0, 0]));
        }
    }
    img
}

/// CRC-32 (IEEE) as PNG chunks use it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG that declares `w × h` 8-bit RGB pixels with valid CRCs, and a one-byte IDAT.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A real decompression bomb: a whole, valid `side × side` grey PNG that compresses to a few
/// hundred KB.
pub fn png_zero_bomb(side: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, side, side);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc.write_header().expect("header");
    let mut stream = w.stream_writer().expect("stream");
    let row = vec![0u8; side as usize];
    for _ in 0..side {
        std::io::Write::write_all(&mut stream, &row).expect("row");
    }
    stream.finish().expect("finish");
    drop(w);
    out
}

/// 16-bit PNG of `img`: grey (luma) or RGB.
pub fn png16(img: &RgbImage, gray: bool) -> Vec<u8> {
    let wide = image::ImageBuffer::<Rgb<u16>, Vec<u16>>::from_fn(img.width(), img.height(), |x, y| {
        Rgb(img.get_pixel(x, y).0.map(|v| u16::from(v) * 257))
    });
    let d = DynamicImage::ImageRgb16(wide);
    let d = if gray { DynamicImage::ImageLuma16(d.to_luma16()) } else { d };
    encode(&d, ImageFormat::Png)
}

/// Palette PNG with a tRNS chunk: light pixels become index 0, fully transparent *black*
/// (as many editors store a transparent background); dark pixels become opaque greys.
pub fn png_palette_alpha(img: &RgbImage) -> Vec<u8> {
    let mut palette = vec![0u8, 0, 0];
    let mut trns = vec![0u8];
    for k in 1..16u8 {
        let v = (k - 1) * 10; // 0..140: ink shades
        palette.extend_from_slice(&[v, v, v]);
        trns.push(255);
    }
    let data: Vec<u8> = img
        .pixels()
        .map(|p| {
            let l = (u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) / 3;
            if l > 150 { 0 } else { 1 + (l / 10).min(14) as u8 }
        })
        .collect();
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette(palette);
    enc.set_trns(trns);
    let mut w = enc.write_header().expect("header");
    w.write_image_data(&data).expect("data");
    w.finish().expect("finish");
    out
}

/// Grey + alpha PNG (8-bit): the background transparent black, ink opaque.
pub fn png_gray_alpha(img: &RgbImage) -> Vec<u8> {
    let la = image::ImageBuffer::<image::LumaA<u8>, Vec<u8>>::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y);
        let l = ((u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) / 3) as u8;
        // Coverage of ink as alpha, colour black: how anti-aliased text on a transparent
        // layer is stored.
        image::LumaA([0, 255 - l])
    });
    encode(&DynamicImage::ImageLumaA8(la), ImageFormat::Png)
}

/// A JPEG of `img` with an APP1 EXIF block whose Orientation tag is `orientation`.
pub fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let jpeg = encode(&DynamicImage::ImageRgb8(img.clone()), ImageFormat::Jpeg);
    // "Exif\0\0" + big-endian TIFF header + one IFD entry: 0x0112 SHORT count 1 = orientation.
    let mut app1 = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    app1.extend_from_slice(&[0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1]);
    app1.extend_from_slice(&orientation.to_be_bytes());
    app1.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    with_app1(&jpeg, &app1)
}

/// Inserts an APP1 segment right after the SOI marker.
pub fn with_app1(jpeg: &[u8], app1: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Overwrites the frame size in a JPEG's SOF0 header (a small file claiming a huge image).
pub fn jpeg_claiming(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let sof = out.windows(2).position(|m| m == [0xFF, 0xC0]).expect("baseline JPEG has SOF0");
    out[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    out
}

/// Writes bits MSB first with JPEG byte stuffing.
struct Bits {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    fn put(&mut self, code: u32, len: u32) {
        for i in (0..len).rev() {
            self.acc = (self.acc << 1) | ((code >> i) & 1);
            self.n += 1;
            if self.n == 8 {
                let b = self.acc as u8;
                self.out.push(b);
                if b == 0xFF {
                    self.out.push(0);
                }
                self.acc = 0;
                self.n = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        while self.n != 0 {
            self.put(1, 1);
        }
        self.out
    }
}

/// A baseline 4-component (CMYK, Adobe APP14 transform 0) JPEG, hand-made because no encoder at
/// hand writes one. Every 8×8 block is flat: `block(bx, by)` gives its C, M, Y, K bytes
/// (Adobe's inverted convention: 255 = no ink).
pub fn cmyk_jpeg(w: u16, h: u16, block: impl Fn(u32, u32) -> [u8; 4]) -> Vec<u8> {
    let mut out = cmyk_jpeg_headers(w, h);
    out.extend_from_slice(&cmyk_jpeg_scan(w, h, block));
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// SOI, APP14, DQT, SOF0, the two Huffman tables and SOS of [`cmyk_jpeg`].
fn cmyk_jpeg_headers(w: u16, h: u16) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    let mut segment = |marker: u8, data: &[u8]| {
        out.extend_from_slice(&[0xFF, marker]);
        out.extend_from_slice(&((data.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(data);
    };
    segment(0xEE, b"Adobe\0\x64\0\0\0\0\0"); // version 100, flags 0, transform 0 (CMYK)
    let mut dqt = vec![0u8];
    dqt.extend_from_slice(&[1; 64]);
    segment(0xDB, &dqt);
    let mut sof = vec![8];
    sof.extend_from_slice(&h.to_be_bytes());
    sof.extend_from_slice(&w.to_be_bytes());
    sof.push(4);
    for id in 1..=4 {
        sof.extend_from_slice(&[id, 0x11, 0]);
    }
    segment(0xC0, &sof);
    // DC: the standard luminance table (categories 0..=11); AC: EOB = 00, ZRL = 01.
    let dc_bits = [0u8, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    let mut dht = vec![0x00];
    dht.extend_from_slice(&dc_bits);
    dht.extend(0..=11u8);
    segment(0xC4, &dht);
    let mut dht = vec![0x10, 0, 2];
    dht.extend_from_slice(&[0; 14]);
    dht.extend_from_slice(&[0x00, 0xF0]);
    segment(0xC4, &dht);
    let mut sos = vec![4];
    for id in 1..=4 {
        sos.extend_from_slice(&[id, 0x00]);
    }
    sos.extend_from_slice(&[0, 63, 0]);
    segment(0xDA, &sos);
    out
}

/// The entropy-coded scan of [`cmyk_jpeg`]: each flat block is its DC difference and an EOB.
fn cmyk_jpeg_scan(w: u16, h: u16, block: impl Fn(u32, u32) -> [u8; 4]) -> Vec<u8> {
    // Canonical codes of the DC table in the headers.
    let dc_code = |cat: u32| -> (u32, u32) {
        match cat {
            0 => (0b00, 2),
            1..=5 => (0b010 + cat - 1, 3),
            _ => ((1 << (cat - 2)) - 2, cat - 2), // 1110, 11110, ... 111111110
        }
    };
    let mut bits = Bits { out: Vec::new(), acc: 0, n: 0 };
    let mut prev = [0i32; 4];
    for by in 0..u32::from(h).div_ceil(8) {
        for bx in 0..u32::from(w).div_ceil(8) {
            let v = block(bx, by);
            for c in 0..4 {
                let dc = 8 * (i32::from(v[c]) - 128);
                let diff = dc - prev[c];
                prev[c] = dc;
                let cat = 32 - diff.unsigned_abs().leading_zeros();
                let (code, len) = dc_code(cat);
                bits.put(code, len);
                if cat > 0 {
                    let raw = if diff < 0 { (diff - 1) as u32 } else { diff as u32 };
                    bits.put(raw & ((1 << cat) - 1), cat);
                }
                bits.put(0b00, 2); // EOB
            }
        }
    }
    bits.finish()
}

/// RIFF chunk: tag, little-endian size, data, pad byte to even length.
fn riff_chunk(out: &mut Vec<u8>, tag: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(tag);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

fn u24(v: u32) -> [u8; 3] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// The VP8L chunk (tag, size and data) of a lossless WebP of `img`.
fn vp8l_chunk(img: &RgbaImage) -> Vec<u8> {
    let webp = encode(&DynamicImage::ImageRgba8(img.clone()), ImageFormat::WebP);
    assert_eq!(&webp[12..16], b"VP8L", "image's WebP encoder writes simple lossless files");
    webp[12..].to_vec()
}

/// An animated WebP (VP8X + ANIM + one ANMF per frame, lossless frames at the origin).
pub fn animated_webp(frames: &[RgbaImage]) -> Vec<u8> {
    let (w, h) = frames[0].dimensions();
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0x02 | 0x10, 0, 0, 0]; // animation + alpha
    vp8x.extend_from_slice(&u24(w - 1));
    vp8x.extend_from_slice(&u24(h - 1));
    riff_chunk(&mut body, b"VP8X", &vp8x);
    riff_chunk(&mut body, b"ANIM", &[255, 255, 255, 255, 0, 0]);
    for f in frames {
        let mut anmf = Vec::new();
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(0));
        anmf.extend_from_slice(&u24(f.width() - 1));
        anmf.extend_from_slice(&u24(f.height() - 1));
        anmf.extend_from_slice(&u24(100)); // 100 ms
        anmf.push(0x02); // no blending, no disposal
        anmf.extend_from_slice(&vp8l_chunk(f));
        riff_chunk(&mut body, b"ANMF", &anmf);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// An extended WebP whose VP8X canvas claims `w × h` (up to 2^24 each) around a 1×1 frame.
pub fn webp_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0, 0, 0, 0];
    vp8x.extend_from_slice(&u24(w - 1));
    vp8x.extend_from_slice(&u24(h - 1));
    riff_chunk(&mut body, b"VP8X", &vp8x);
    let frame = vp8l_chunk(&RgbaImage::from_pixel(1, 1, image::Rgba([0, 0, 0, 255])));
    body.extend_from_slice(&frame);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A lossy WebP (simple format, one VP8 key frame) whose frame header claims `w × h` (each under
/// 2^14) followed by `data` zero bytes of partition data.
pub fn webp_vp8_claiming(w: u16, h: u16, data: usize) -> Vec<u8> {
    let first_part = data as u32;
    let tag = (1u32 << 4) | (first_part << 5); // key frame, version 0, shown
    let mut vp8 = tag.to_le_bytes()[..3].to_vec();
    vp8.extend_from_slice(&[0x9d, 0x01, 0x2a]);
    vp8.extend_from_slice(&(w & 0x3fff).to_le_bytes());
    vp8.extend_from_slice(&(h & 0x3fff).to_le_bytes());
    vp8.extend(std::iter::repeat_n(0u8, data));
    let mut body = b"WEBP".to_vec();
    riff_chunk(&mut body, b"VP8 ", &vp8);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A lossless WebP of `w × h` black pixels in about 30 bytes: every prefix code has a single
/// symbol, which VP8L codes with zero bits per pixel (the format's own bomb).
pub fn webp_lossless_flat(w: u32, h: u32) -> Vec<u8> {
    // LSB-first bit writer.
    let mut bits: Vec<bool> = Vec::new();
    let mut put = |v: u32, n: u32| (0..n).for_each(|i| bits.push((v >> i) & 1 == 1));
    put(w - 1, 14);
    put(h - 1, 14);
    put(0, 1); // alpha unused
    put(0, 3); // version
    put(0, 1); // no transform
    put(0, 1); // no colour cache
    put(0, 1); // no meta prefix codes
    for symbol in [0u32, 0, 0, 255, 0] {
        // green, red, blue, alpha, distance: "simple" code with one symbol
        put(1, 1);
        put(0, 1);
        if symbol < 2 {
            put(0, 1);
            put(symbol, 1);
        } else {
            put(1, 1);
            put(symbol, 8);
        }
    }
    let mut vp8l = vec![0x2f];
    vp8l.extend(bits.chunks(8).map(|c| c.iter().enumerate().fold(0u8, |b, (i, &bit)| b | (u8::from(bit) << i))));
    let mut body = b"WEBP".to_vec();
    riff_chunk(&mut body, b"VP8L", &vp8l);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A TIFF with one page per image (RGB, uncompressed).
pub fn multi_page_tiff(pages: &[RgbImage]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut enc = tiff::encoder::TiffEncoder::new(&mut out).expect("tiff encoder");
    for p in pages {
        enc.write_image::<tiff::encoder::colortype::RGB8>(p.width(), p.height(), p.as_raw()).expect("page");
    }
    out.into_inner()
}

/// A little-endian TIFF whose only IFD claims `w × h` 8-bit grey pixels in one 16-byte strip.
pub fn tiff_claiming(w: u32, h: u32) -> Vec<u8> {
    let entries: [(u16, u16, u32); 8] = [
        (256, 4, w),  // ImageWidth, LONG
        (257, 4, h),  // ImageLength
        (258, 3, 8),  // BitsPerSample
        (259, 3, 1),  // Compression: none
        (262, 3, 1),  // Photometric: black is zero
        (273, 4, 8),  // StripOffsets: right after the header
        (278, 4, h),  // RowsPerStrip
        (279, 4, 16), // StripByteCounts
    ];
    let mut out = b"II*\0".to_vec();
    out.extend_from_slice(&(8u32 + 16).to_le_bytes());
    out.extend_from_slice(&[0x80; 16]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        if kind == 3 {
            out.extend_from_slice(&(value as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    // StripOffsets points at byte 8: the 16 bytes before the IFD.
    out
}
