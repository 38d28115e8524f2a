#![no_main]
//! The JSON body of `POST /v1/jobs` through the API's parser and checks.

use libfuzzer_sys::fuzz_target;
use ocr_core::RequestError;
use ocr_core::request::parse_create_request;
use ocr_fleet_fuzz::check_spec;

/// The API's default `MAX_UPLOAD_BYTES`.
const MAX_UPLOAD_BYTES: u64 = 20_000_000;

fuzz_target!(|data: &[u8]| {
    match parse_create_request(data, MAX_UPLOAD_BYTES) {
        Ok(spec) => {
            check_spec(&spec, MAX_UPLOAD_BYTES);
            // What was accepted is JSON.
            assert!(serde_json::from_slice::<serde_json::Value>(data).is_ok());
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(!matches!(e, RequestError::UnsupportedMediaType(_)), "{e:?}");
        }
    }
});
