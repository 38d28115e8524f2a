#![no_main]
//! Untrusted bytes through the whole engine with fake models: decode, page orientation,
//! detector pre-processing, DB post-processing, reading order, perspective crops, line-angle
//! input, recogniser batching and CTC decoding. Everything but ONNX Runtime.

use libfuzzer_sys::fuzz_target;
use ocr_fleet_fuzz::{fake_engine, is_input_error};

/// Smaller than production's 50 MP so each run stays fast; the `decode` target covers the limit.
const MAX_PIXELS: u64 = 4_000_000;

fuzz_target!(|data: &[u8]| {
    // The classifiers' answers vary with the input so every rotation path is taken.
    let engine = fake_engine(data.len() % 4, data.len() / 4 % 2, MAX_PIXELS);
    let mut pages = engine.recognize_bytes(&[data]);
    assert_eq!(pages.len(), 1);
    match pages.pop().expect("one result") {
        Ok(page) => {
            let (w, h) = (page.width as f32, page.height as f32);
            assert!(page.width > 0 && page.height > 0);
            assert!(matches!(page.rotation, 0 | 90 | 180 | 270));
            for l in &page.lines {
                assert!(!l.text.is_empty() && (0.0..=1.0).contains(&l.confidence), "{l:?}");
                for p in l.quad {
                    assert!(p[0] >= -1.0 && p[0] <= w + 1.0 && p[1] >= -1.0 && p[1] <= h + 1.0, "{l:?} in {w}x{h}");
                }
            }
        }
        Err(e) => assert!(is_input_error(&e), "{e:?}"),
    }
});
