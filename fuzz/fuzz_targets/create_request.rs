#![no_main]
//! A whole `POST /v1/jobs` request through `ocr_core::request::parse_create`, as the API calls it.
//!
//! Input: four lines and the rest, `content-type \n idempotency-key \n query \n body`; a line
//! that is exactly `~` means the header is absent. Seeds in `fuzz/seeds/create_request` read as
//! text.

use libfuzzer_sys::fuzz_target;
use ocr_core::ContentType;
use ocr_core::request::{CreateLimits, MAX_IDEMPOTENCY_KEY_LEN, RawCreateRequest, media_type, parse_create};
use ocr_fleet_fuzz::check_spec;

/// Small limits so the size checks are reachable with small inputs.
const LIMITS: CreateLimits = CreateLimits { max_upload_bytes: 1000, max_direct_bytes: 600 };

fn header(line: &[u8]) -> Option<&[u8]> {
    (line != b"~").then_some(line)
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let (Some(ct), Some(key), Some(query)) = (parts.next(), parts.next(), parts.next()) else { return };
    let body = parts.next().unwrap_or_default();
    let (content_type, idempotency_key) = (header(ct), header(key));
    // The media type is read as http's HeaderValue::to_str reads it (for values http accepts).
    if let Some(ct) = content_type
        && let Ok(hv) = http::HeaderValue::from_bytes(ct)
    {
        let want =
            hv.to_str().map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase()).unwrap_or_default();
        assert_eq!(media_type(Some(ct)), want);
    }
    // axum's Query<Vec<(String, String)>> decodes with form_urlencoded.
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(query).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let raw = RawCreateRequest { content_type, idempotency_key, query: &query, body };
    match parse_create(&raw, &LIMITS) {
        Ok(req) => {
            check_spec(&req.spec, LIMITS.max_upload_bytes);
            if req.direct {
                assert_eq!(req.spec.content_length, body.len() as u64);
                assert!(body.len() <= LIMITS.max_direct_bytes);
                assert_eq!(ContentType::sniff(body), Some(req.spec.content_type));
                assert!(req.spec.metadata.is_none());
            } else {
                assert!(query.is_empty());
            }
            assert_eq!(req.idempotency.is_some(), idempotency_key.is_some());
            if let Some(idem) = &req.idempotency {
                let k = idem.key.as_bytes();
                assert!(!k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.iter().all(u8::is_ascii_graphic));
                assert_eq!(idem.request_hash.len(), 64);
                assert!(idem.request_hash.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
