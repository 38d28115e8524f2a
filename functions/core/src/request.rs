//! Parsing and validation of `POST /v1/jobs`: pure functions of the raw header values, query
//! pairs and body, so the API and the fuzz targets run the same code without a server.

use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use sha2::{Digest, Sha256};

use crate::content::ContentType;
use crate::job::{Idempotency, Priority};

/// Longest accepted `Idempotency-Key` (bytes): the database column's width (`VARCHAR(191)`,
/// the longest utf8mb4 column a unique index with `owner` takes).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 191;
/// Longest accepted callback URL (bytes).
pub const MAX_CALLBACK_URL_LEN: usize = 2048;
/// Largest `metadata` object, serialised (bytes).
pub const MAX_METADATA_BYTES: usize = 4096;

/// Why a create request is refused. Each variant is one HTTP answer class; the text is the
/// message the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The JSON body is not JSON at all (syntax, empty, truncated): 400.
    #[error("{0}")]
    MalformedJson(String),
    /// Well-formed but invalid: unknown or mistyped fields, bad values, bad query or header: 422.
    #[error("{0}")]
    Invalid(String),
    /// The media type is not one we take, or the image body is not of the declared type: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over a size limit: 413.
    #[error("{0}")]
    TooLarge(String),
}

/// Size limits a create request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct CreateLimits {
    /// Largest image a job may carry (bytes), declared or sent.
    pub max_upload_bytes: u64,
    /// Largest image sent in the request body itself (bytes).
    pub max_direct_bytes: usize,
}

/// A create request as it arrived, before any check.
#[derive(Debug, Clone, Copy)]
pub struct RawCreateRequest<'a> {
    /// The `Content-Type` header's value, if any.
    pub content_type: Option<&'a [u8]>,
    /// The `Idempotency-Key` header's value, if any.
    pub idempotency_key: Option<&'a [u8]>,
    /// The decoded query pairs, in order.
    pub query: &'a [(String, String)],
    /// The body: JSON, or the image itself.
    pub body: &'a [u8],
}

/// What a create request asks for, however it came.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Declared (JSON) or sniffed-and-matching (direct) image type.
    pub content_type: ContentType,
    /// Image size in bytes, at least 1.
    pub content_length: u64,
    /// Queue to use.
    pub priority: Priority,
    /// Webhook URL (http or https, with a host, no credentials; see [`check_callback_target`]).
    pub callback_url: Option<String>,
    /// Caller's JSON object, at most [`MAX_METADATA_BYTES`] serialised.
    pub metadata: Option<serde_json::Value>,
}

/// A checked create request.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    /// The job to create.
    pub spec: JobSpec,
    /// The key and the hash of the request it came with, when a key was sent.
    pub idempotency: Option<Idempotency>,
    /// Whether the body is the image (a direct upload) rather than JSON asking for an upload URL.
    pub direct: bool,
}

/// Body of `POST /v1/jobs` with `Content-Type: application/json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJobRequest {
    content_type: String,
    #[serde(deserialize_with = "whole_number")]
    content_length: u64,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// A non-negative whole number as JSON Schema's `integer` means it: `69` and `69.0` alike
/// (openapi.json documents `content_length` as an integer); a fraction, a negative number or
/// one beyond `u64` is refused.
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct WholeNumber;
    impl Visitor<'_> for WholeNumber {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a non-negative whole number")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is exact in f64; every whole f64 below it converts exactly.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }
    deserializer.deserialize_any(WholeNumber)
}

/// Query of `POST /v1/jobs` with an image body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirectUploadQuery {
    /// `priority`, not yet parsed.
    pub priority: Option<String>,
    /// `callback_url`, not yet checked.
    pub callback_url: Option<String>,
}

/// Checks a whole create request in the order the API answers: the `Idempotency-Key`, then the
/// media type, then the query, then the body.
pub fn parse_create(raw: &RawCreateRequest<'_>, limits: &CreateLimits) -> Result<CreateRequest, RequestError> {
    let media_type = media_type(raw.content_type);
    let key = idempotency_key(raw.idempotency_key)?;
    if media_type == "application/json" {
        if !raw.query.is_empty() {
            return Err(RequestError::Invalid("query parameters are only for direct uploads".into()));
        }
        let spec = parse_create_request(raw.body, limits.max_upload_bytes)?;
        let idempotency = key.map(|key| Idempotency { key, request_hash: request_hash("json", &[], raw.body) });
        Ok(CreateRequest { spec, idempotency, direct: false })
    } else if media_type.starts_with("image/") || media_type == "application/pdf" {
        let content_type: ContentType = media_type.parse().map_err(RequestError::UnsupportedMediaType)?;
        let query = parse_direct_query(raw.query)?;
        let spec = direct_upload_spec(content_type, query, raw.body, limits)?;
        let idempotency = key.map(|key| Idempotency {
            key,
            request_hash: request_hash(
                &media_type,
                &[spec.priority.as_str(), spec.callback_url.as_deref().unwrap_or("")],
                raw.body,
            ),
        });
        Ok(CreateRequest { spec, idempotency, direct: true })
    } else {
        Err(RequestError::UnsupportedMediaType(
            "send application/json to get an upload URL, or the image itself as image/jpeg, image/png, image/webp or image/tiff (or a PDF as application/pdf)".into(),
        ))
    }
}

/// The media type of a `Content-Type` value: before any `;`, trimmed, lower case; empty when
/// absent or not visible ASCII (what `http::HeaderValue::to_str` accepts).
pub fn media_type(value: Option<&[u8]>) -> String {
    value
        .and_then(header_str)
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// A header value as text when it is visible ASCII or tab, as `http::HeaderValue::to_str`.
fn header_str(value: &[u8]) -> Option<&str> {
    if value.iter().all(|&b| (32..127).contains(&b) || b == b'\t') { std::str::from_utf8(value).ok() } else { None }
}

/// Checks an `Idempotency-Key` value: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] visible ASCII characters.
pub fn idempotency_key(value: Option<&[u8]>) -> Result<Option<String>, RequestError> {
    let Some(value) = value else { return Ok(None) };
    let key = header_str(value)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            RequestError::Invalid(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// SHA-256 over the request's kind, its options and its body: what "the same request" means.
pub fn request_hash(kind: &str, options: &[&str], body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    for option in options {
        hasher.update([0]);
        hasher.update(option.as_bytes());
    }
    hasher.update([0]);
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// Parses and checks the JSON body of a create request.
pub fn parse_create_request(body: &[u8], max_upload_bytes: u64) -> Result<JobSpec, RequestError> {
    let request: CreateJobRequest = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => RequestError::Invalid(format!("invalid request: {e}")),
        _ => RequestError::MalformedJson(format!("malformed JSON: {e}")),
    })?;
    let content_type: ContentType = request.content_type.parse().map_err(RequestError::Invalid)?;
    if request.content_length == 0 {
        return Err(RequestError::Invalid("content_length must be at least 1".into()));
    }
    if request.content_length > max_upload_bytes {
        return Err(RequestError::TooLarge(format!("content_length is over the limit of {max_upload_bytes} bytes")));
    }
    let metadata = match request.metadata {
        None | Some(serde_json::Value::Null) => None,
        Some(m @ serde_json::Value::Object(_)) => {
            if m.to_string().len() > MAX_METADATA_BYTES {
                return Err(RequestError::Invalid(format!("metadata is over {MAX_METADATA_BYTES} bytes")));
            }
            Some(m)
        }
        Some(_) => return Err(RequestError::Invalid("metadata must be a JSON object".into())),
    };
    Ok(JobSpec {
        content_type,
        content_length: request.content_length,
        priority: request.priority.unwrap_or_default(),
        callback_url: validate_callback_url(request.callback_url)?,
        metadata,
    })
}

/// Reads the query of a direct upload: `priority` and `callback_url`, each at most once.
pub fn parse_direct_query(pairs: &[(String, String)]) -> Result<DirectUploadQuery, RequestError> {
    let mut query = DirectUploadQuery::default();
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "priority" => &mut query.priority,
            "callback_url" => &mut query.callback_url,
            other => return Err(RequestError::Invalid(format!("unknown query parameter {other:?}"))),
        };
        if slot.replace(v.clone()).is_some() {
            return Err(RequestError::Invalid(format!("query parameter {k:?} given twice")));
        }
    }
    Ok(query)
}

/// Checks a direct upload: a non-empty body within the limits whose first bytes show the
/// declared type, and the query's options.
pub fn direct_upload_spec(
    content_type: ContentType,
    query: DirectUploadQuery,
    body: &[u8],
    limits: &CreateLimits,
) -> Result<JobSpec, RequestError> {
    if body.is_empty() {
        return Err(RequestError::Invalid("the image body is empty".into()));
    }
    if body.len() > limits.max_direct_bytes || body.len() as u64 > limits.max_upload_bytes {
        return Err(RequestError::TooLarge(format!(
            "direct uploads are limited to {} bytes; ask for an upload URL instead",
            (limits.max_direct_bytes as u64).min(limits.max_upload_bytes)
        )));
    }
    match ContentType::sniff(body) {
        Some(found) if found == content_type => {}
        Some(found) => {
            return Err(RequestError::UnsupportedMediaType(format!(
                "the body is {found}, not the declared {content_type}"
            )));
        }
        None => return Err(RequestError::UnsupportedMediaType(format!("the body is not a {content_type} image"))),
    }
    let priority = match query.priority {
        Some(p) => p.parse().map_err(RequestError::Invalid)?,
        None => Priority::default(),
    };
    Ok(JobSpec {
        content_type,
        content_length: body.len() as u64,
        priority,
        callback_url: validate_callback_url(query.callback_url)?,
        metadata: None,
    })
}

/// Checks a callback URL's form: http(s), a host, no credentials. Where it may point is
/// [`check_callback_target`]'s question.
pub fn validate_callback_url(url: Option<String>) -> Result<Option<String>, RequestError> {
    let Some(url) = url else { return Ok(None) };
    if url.len() > MAX_CALLBACK_URL_LEN {
        return Err(RequestError::Invalid(format!("callback_url is over {MAX_CALLBACK_URL_LEN} characters")));
    }
    let parsed = url::Url::parse(&url).map_err(|e| RequestError::Invalid(format!("callback_url: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(RequestError::Invalid("callback_url must be an http(s) URL with a host".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(RequestError::Invalid("callback_url must not carry credentials".into()));
    }
    Ok(Some(url))
}

/// Where a callback URL (already through [`validate_callback_url`]) may point, checked when the
/// job is created: https, to a host that is not obviously internal (a loopback, private,
/// link-local or reserved literal address, in any form the URL parser reads, or a name like
/// `localhost` or `*.internal`). `allow` lists `host:port` entries exempt from both rules
/// (`CALLBACK_ALLOW_HOSTS`: tests and local runs with a receiver on loopback).
///
/// Where a name resolves is only known when the webhook is sent: the worker checks every
/// resolved address then and connects to the one it checked (`gpu_worker::ssrf`), which is the
/// real defence; this refuses early what is internal on its face.
pub fn check_callback_target(url: &str, allow: &crate::net::AllowHosts) -> Result<(), RequestError> {
    let parsed = url::Url::parse(url).map_err(|e| RequestError::Invalid(format!("callback_url: {e}")))?;
    if allow.contains(parsed.host_str().unwrap_or_default(), parsed.port_or_known_default().unwrap_or(0)) {
        return Ok(());
    }
    if parsed.scheme() != "https" {
        return Err(RequestError::Invalid("callback_url must be an https URL".into()));
    }
    let internal = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => crate::net::is_forbidden(ip.into()),
        Some(url::Host::Ipv6(ip)) => crate::net::is_forbidden(ip.into()),
        Some(url::Host::Domain(name)) => crate::net::is_internal_name(name),
        None => true,
    };
    if internal {
        return Err(RequestError::Invalid(
            "callback_url must not point to a loopback, private, link-local, reserved or internal host".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CreateLimits = CreateLimits { max_upload_bytes: 1000, max_direct_bytes: 100 };

    fn raw<'a>(
        ct: &'a str,
        key: Option<&'a str>,
        query: &'a [(String, String)],
        body: &'a [u8],
    ) -> RawCreateRequest<'a> {
        RawCreateRequest { content_type: Some(ct.as_bytes()), idempotency_key: key.map(str::as_bytes), query, body }
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn json_request_with_key() {
        let body = br#"{"content_type":"image/PNG","content_length":10,"priority":"express","metadata":{"a":1}}"#;
        let r = parse_create(&raw("Application/JSON; charset=utf-8", Some("k-1"), &[], body), &LIMITS).unwrap();
        assert!(!r.direct);
        assert_eq!(r.spec.content_type, ContentType::Png);
        assert_eq!(r.spec.priority, Priority::Express);
        let idem = r.idempotency.unwrap();
        assert_eq!(idem.key, "k-1");
        assert_eq!(idem.request_hash, request_hash("json", &[], body));
        assert_eq!(idem.request_hash.len(), 64);
    }

    #[test]
    fn direct_request_hash_covers_options() {
        let body = b"\x89PNG\r\n\x1a\nrest";
        let a = parse_create(&raw("image/png", Some("k"), &q(&[("priority", "express")]), body), &LIMITS).unwrap();
        let b = parse_create(&raw("image/png", Some("k"), &[], body), &LIMITS).unwrap();
        assert!(a.direct && b.direct);
        assert_eq!(a.spec.content_length, body.len() as u64);
        assert_ne!(a.idempotency.unwrap().request_hash, b.idempotency.unwrap().request_hash);
    }

    #[test]
    fn answers_in_order_with_the_right_class() {
        use RequestError::*;
        let png = b"\x89PNG\r\n\x1a\nrest";
        type Case<'a> = (RawCreateRequest<'a>, fn(&RequestError) -> bool);
        let cases: Vec<Case<'_>> = vec![
            // The key is checked before the media type.
            (raw("text/plain", Some(""), &[], b""), |e| matches!(e, Invalid(_))),
            (raw("text/plain", Some("a b"), &[], b""), |e| matches!(e, Invalid(_))),
            (raw("application/json", Some("é"), &[], b"{}"), |e| matches!(e, Invalid(_))),
            (raw("text/plain", None, &[], b""), |e| matches!(e, UnsupportedMediaType(_))),
            (raw("image/gif", None, &[], png), |e| matches!(e, UnsupportedMediaType(_))),
            (raw("image/jpeg", None, &[], png), |e| matches!(e, UnsupportedMediaType(_))),
            (raw("image/png", None, &[], b""), |e| matches!(e, Invalid(_))),
            (raw("image/png", None, &[], &[0x89; 101]), |e| matches!(e, TooLarge(_))),
            (raw("application/json", None, &[], b"{"), |e| matches!(e, MalformedJson(_))),
            (raw("application/json", None, &[], b""), |e| matches!(e, MalformedJson(_))),
            (raw("application/json", None, &[], b"[]"), |e| matches!(e, Invalid(_))),
            (raw("application/json", None, &[], br#"{"content_type":"image/png","content_length":1001}"#), |e| {
                matches!(e, TooLarge(_))
            }),
            (
                raw(
                    "application/json",
                    None,
                    &[],
                    br#"{"content_type":"image/png","content_length":1,"metadata":[1]}"#,
                ),
                |e| matches!(e, Invalid(_)),
            ),
        ];
        for (i, (r, ok)) in cases.iter().enumerate() {
            let err = parse_create(r, &LIMITS).unwrap_err();
            assert!(ok(&err), "case {i}: {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn query_rules() {
        let png = b"\x89PNG\r\n\x1a\nrest";
        for pairs in [
            q(&[("priority", "express"), ("priority", "bulk")]),
            q(&[("colour", "red")]),
            q(&[("priority", "urgent")]),
            q(&[("callback_url", "ftp://example.com/")]),
            q(&[("callback_url", "https://user:pw@example.com/")]),
        ] {
            let err = parse_create(&raw("image/png", None, &pairs, png), &LIMITS).unwrap_err();
            assert!(matches!(err, RequestError::Invalid(_)), "{pairs:?}: {err:?}");
        }
        let err = parse_create(&raw("application/json", None, &q(&[("priority", "bulk")]), b"{}"), &LIMITS);
        assert!(matches!(err, Err(RequestError::Invalid(_))));
    }

    #[test]
    fn header_values_like_http() {
        assert_eq!(media_type(Some(b" Image/PNG ; q=1")), "image/png");
        assert_eq!(media_type(Some(b"image/png\x7f")), "");
        assert_eq!(media_type(Some("image/pngé".as_bytes())), "");
        assert_eq!(media_type(None), "");
        assert_eq!(idempotency_key(Some(&[b'k'; 191])).unwrap().unwrap().len(), 191);
        assert!(idempotency_key(Some(&[b'k'; 192])).is_err());
        assert!(idempotency_key(Some(b"tab\there")).is_err());
    }

    #[test]
    fn content_length_is_a_whole_number_however_written() {
        let len = |v: &str| {
            let body = format!(r#"{{"content_type":"image/png","content_length":{v}}}"#);
            parse_create_request(body.as_bytes(), 20_000_000).map(|s| s.content_length)
        };
        assert_eq!(len("69"), Ok(69));
        assert_eq!(len("69.0"), Ok(69));
        assert_eq!(len("6.9e1"), Ok(69));
        assert_eq!(len("2e7"), Ok(20_000_000));
        assert!(matches!(len("2.0000001e7"), Err(RequestError::TooLarge(_))));
        assert!(matches!(len("1e19"), Err(RequestError::TooLarge(_))));
        for bad in ["69.5", "-1", "-0.5", "1e30", "99999999999999999999999", "true", "\"69\"", "null"] {
            assert!(matches!(len(bad), Err(RequestError::Invalid(_))), "{bad}: {:?}", len(bad));
        }
        assert!(matches!(len("0.0"), Err(RequestError::Invalid(_))), "at least 1");
    }

    #[test]
    fn callback_targets_must_be_public_https() {
        for ok in ["https://hooks.example.com/ocr?x=1", "https://93.184.216.34:8443/h", "https://[2606:4700::1111]/h"] {
            assert_eq!(check_callback_target(ok, &Default::default()), Ok(()), "{ok}");
        }
        for bad in [
            "http://hooks.example.com/",
            "https://localhost/",
            "https://localhost./",
            "https://a.LOCALHOST/",
            "https://ip-10-0-0-1.ec2.internal/",
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://printer.local/",
            "https://127.0.0.1/",
            "https://127.1/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://0177.0.0.1/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[fe80::1]/",
            "https://[fd00:ec2::254]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[64:ff9b::a9fe:a9fe]/",
        ] {
            assert!(matches!(check_callback_target(bad, &Default::default()), Err(RequestError::Invalid(_))), "{bad}");
        }
        // An allowed host:port (a test's receiver on loopback) is exempt; its other ports are not.
        let allow: crate::net::AllowHosts = "127.0.0.1:18080".parse().unwrap();
        assert_eq!(check_callback_target("http://127.0.0.1:18080/hook", &allow), Ok(()));
        assert!(check_callback_target("http://127.0.0.1:18081/hook", &allow).is_err());
        assert!(check_callback_target("https://127.0.0.1/hook", &allow).is_err());
    }
}
