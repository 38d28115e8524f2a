#![no_main]
//! Untrusted bytes through the text layer added to a PDF upload (`GET …/result?format=pdf`):
//! it never panics, and a file it updates is the upload, every byte, followed by an update that
//! the upload check's reader follows to the same number of pages as the upload's.

use libfuzzer_sys::fuzz_target;
use ocr_core::pdf;
use ocr_core::{OcrLine, OcrPage, OcrResult, OcrWord};

fuzz_target!(|data: &[u8]| {
    // The pages the check declares (few when it cannot tell), each with a word to place.
    let facts = pdf::facts(data);
    let pages = facts.as_ref().map_or(1, |f| f.pages.min(60) as u32);
    let bbox = [[10.0, 10.0], [90.0, 10.0], [90.0, 30.0], [10.0, 30.0]];
    let word = OcrWord { text: "word".into(), confidence: 0.9, bbox };
    let line = OcrLine { text: "word".into(), confidence: 0.9, bbox, words: vec![word] };
    let result =
        OcrResult::from_pages((1..=pages).map(|n| OcrPage::new(n, 1000, 1400, vec![line.clone()])).collect(), 0.0);
    if let Ok(layered) = pdf::add_text_layer(data, &result) {
        assert!(layered.starts_with(data), "the upload's bytes are kept");
        // A file the check reads reads the same after the update (one it cannot read, say
        // without a page count, may still take a text layer).
        if layered.len() > data.len() && facts.is_ok() {
            let after = pdf::facts(&layered);
            assert_eq!(after, facts, "the update does not read back as the upload did");
        }
    }
});
