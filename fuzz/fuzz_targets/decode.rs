#![no_main]
//! Untrusted bytes through the engine's decoder at the production pixel limit, then the
//! detector and page-orientation pre-processing of whatever decodes.

use libfuzzer_sys::fuzz_target;
use ocr_engine::classify::orientation_input;
use ocr_engine::detection::{det_input_size, det_preprocess};
use ocr_engine::{DEFAULT_MAX_PIXELS, decode_image};
use ocr_fleet_fuzz::{is_input_error, manifest};

fuzz_target!(|data: &[u8]| {
    let img = match decode_image(data, DEFAULT_MAX_PIXELS) {
        Ok(img) => img,
        Err(e) => {
            assert!(is_input_error(&e), "{e:?}");
            assert!(!e.is_retryable());
            return;
        }
    };
    let (w, h) = img.dimensions();
    assert!(w > 0 && h > 0 && u64::from(w) * u64::from(h) <= DEFAULT_MAX_PIXELS, "{w}x{h}");
    let m = manifest();
    let t = det_preprocess(&img, &m.det);
    let (dw, dh) = det_input_size(w, h, &m.det);
    assert_eq!(t.shape(), [1, 3, dh as usize, dw as usize]);
    assert!(dw % 32 == 0 && dh % 32 == 0 && dw >= 32 && dh >= 32, "{dw}x{dh}");
    assert!(t.iter().all(|v| v.is_finite()));
    let side = m.orientation.as_ref().map_or(224, |o| o.width);
    let o = orientation_input(&img, side);
    assert_eq!(o.shape(), [1, 3, side as usize, side as usize]);
    assert!(o.iter().all(|v| v.is_finite()));
});
