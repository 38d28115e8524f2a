//! Handlers on the in-memory fakes: no AWS, no database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use ocr_api::AppState;
use ocr_api::auth::Authenticator;
use ocr_api::config::Limits;
use ocr_api::state::Ports;
use ocr_api::upload::{Backoff, EventMessage, UploadHandler, UploadOutcome};
use ocr_api::wait::{WaitCaps, WaitSettings};
use ocr_core::fakes::{InMemoryJobQueue, InMemoryJobStore, InMemoryObjectStore, InMemoryWaitSlots, ManualClock};
use ocr_core::ports::{Clock, JobStore, ObjectInfo, ObjectStore, PresignedPut, StatusChange};
use ocr_core::quota::CallerQuota;
use ocr_core::signing::MasterKey;
use ocr_core::{ContentType, JobId, JobStatus, OcrLine, OcrResult, PortError, Priority};
use serde_json::{Value, json};
use tower::ServiceExt;

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";

struct Harness {
    clock: Arc<ManualClock>,
    store: Arc<InMemoryJobStore>,
    objects: Arc<InMemoryObjectStore>,
    queue: Arc<InMemoryJobQueue>,
    slots: Arc<InMemoryWaitSlots>,
    state: AppState,
}

fn harness() -> Harness {
    harness_with(Limits { queue_depth_limit: 100, queue_depth_refresh: std::time::Duration::ZERO, ..Limits::default() })
}

fn harness_with(limits: Limits) -> Harness {
    let store = Arc::new(InMemoryJobStore::default());
    let objects = Arc::new(InMemoryObjectStore::default());
    let queue = Arc::new(InMemoryJobQueue::default());
    let slots = Arc::new(InMemoryWaitSlots::default());
    let auth = Authenticator::from_static_tokens(&format!("{ALICE}:alice,{BOB}:bob")).unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let ports = Ports {
        store: store.clone(),
        objects: objects.clone(),
        queue: queue.clone(),
        clock: clock.clone(),
        keys: store.clone(),
        statuses: store.clone(),
        wait_slots: slots.clone(),
    };
    let state = AppState::new(ports, auth, limits).with_signing(MasterKey::new("test-master-key"));
    Harness { clock, store, objects, queue, slots, state }
}

impl Harness {
    async fn call(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = ocr_api::routes::router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, headers, body)
    }

    fn uploads(&self) -> UploadHandler {
        let ports = Ports {
            store: self.store.clone(),
            objects: self.objects.clone(),
            queue: self.queue.clone(),
            clock: Arc::new(ManualClock::new(1_700_000_001_000)),
            keys: self.store.clone(),
            statuses: self.store.clone(),
            wait_slots: self.slots.clone(),
        };
        UploadHandler { ports, max_upload_bytes: 20_000_000, max_pages: 50 }
    }
}

fn post_json(token: Option<&str>, body: &str) -> Request<Body> {
    let mut b = Request::post("/v1/jobs").header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(body.to_owned())).unwrap()
}

fn get(token: &str, path: &str) -> Request<Body> {
    Request::get(path).header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty()).unwrap()
}

fn delete(token: &str, path: &str) -> Request<Body> {
    Request::delete(path).header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty()).unwrap()
}

fn png_bytes() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.extend_from_slice(&[7; 64]);
    v.extend_from_slice(b"\0\0\0\0IEND\xAE\x42\x60\x82");
    v
}

#[tokio::test]
async fn create_returns_a_presigned_upload() {
    let h = harness();
    let (status, headers, body) = h
        .call(post_json(Some(ALICE), r#"{"content_type":"image/png","content_length":1234,"priority":"express"}"#))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["job_id"].as_str().unwrap();
    assert_eq!(headers[header::LOCATION], format!("/v1/jobs/{id}").as_str());
    assert_eq!(body["status"], "awaiting_upload");
    assert_eq!(body["priority"], "express");
    assert_eq!(body["upload"]["method"], "PUT");
    assert_eq!(body["upload"]["headers"]["content-type"], "image/png");
    assert_eq!(body["upload"]["headers"]["content-length"], "1234");
    assert!(body["upload"]["url"].as_str().unwrap().contains(&format!("uploads/express/{id}")));
    let job = h.store.get(&id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(job.owner, "alice");
    assert_eq!(job.status, JobStatus::AwaitingUpload);
}

#[tokio::test]
async fn unauthenticated_callers_get_401() {
    let h = harness();
    let body = r#"{"content_type":"image/png","content_length":10}"#;
    for token in [None, Some("not-a-known-token-at-all")] {
        let (status, headers, json) = h.call(post_json(token, body)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(json["error"]["code"], "unauthenticated");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    assert!(h.store.is_empty());
}

/// Table-driven (one row per malformed request), hence longer than a function should be.
#[tokio::test]
async fn bad_requests_get_json_errors() {
    let h = harness();
    let cases: &[(&str, StatusCode, &str)] = &[
        ("{not json", StatusCode::BAD_REQUEST, "malformed_json"),
        ("", StatusCode::BAD_REQUEST, "malformed_json"),
        (
            r#"{"content_type":"image/png","content_length":10,"colour":"red"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (r#"{"content_type":"image/png","content_length":"10"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (r#"{"content_type":"image/png","content_length":-1}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (r#"{"content_type":"image/png","content_length":0}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            r#"{"content_type":"image/png","content_length":99999999999999999999999}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (r#"{"content_type":"image/png","content_length":20000001}"#, StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        (r#"{"content_type":"image/gif","content_length":10}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            r#"{"content_type":"image/png","content_length":10,"priority":"urgent"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"content_type":"image/png","content_length":10,"callback_url":"ftp://x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"content_type":"image/png","content_length":10,"callback_url":"https://u:p@x.example"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            r#"{"content_type":"image/png","content_length":10,"metadata":[1]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (r#"{"content_length":10}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
    ];
    for (body, want_status, want_code) in cases {
        let (status, _, json) = h.call(post_json(Some(ALICE), body)).await;
        assert_eq!(status, *want_status, "{body} -> {json}");
        assert_eq!(json["error"]["code"], *want_code, "{body}");
        assert!(json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let wrong_type = Request::post("/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {ALICE}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("hello"))
        .unwrap();
    let (status, _, json) = h.call(wrong_type).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(json["error"]["code"], "unsupported_media_type");
    let (status, _, json) = h.call(Request::put("/v1/jobs").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json["error"]["code"], "method_not_allowed");
    let (status, _, json) = h.call(get(ALICE, "/v2/nothing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"]["code"], "not_found");
    assert!(h.store.is_empty(), "no job may be left by a refused request");
}

#[tokio::test]
async fn idempotency_key_replays_and_conflicts() {
    let h = harness();
    let with_key = |body: &str| {
        let mut r = post_json(Some(ALICE), body);
        r.headers_mut().insert("idempotency-key", "order-42".parse().unwrap());
        r
    };
    let body = r#"{"content_type":"image/jpeg","content_length":500}"#;
    let (s1, _, first) = h.call(with_key(body)).await;
    let (s2, _, second) = h.call(with_key(body)).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first["job_id"], second["job_id"]);
    assert!(second["upload"]["url"].is_string());
    assert_eq!(h.store.len(), 1);
    let (s3, _, conflict) = h.call(with_key(r#"{"content_type":"image/jpeg","content_length":501}"#)).await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_eq!(conflict["error"]["code"], "idempotency_conflict");
    // The same key from another caller is another caller's business.
    let mut bobs = post_json(Some(BOB), body);
    bobs.headers_mut().insert("idempotency-key", "order-42".parse().unwrap());
    let (s4, _, other) = h.call(bobs).await;
    assert_eq!(s4, StatusCode::CREATED);
    assert_ne!(other["job_id"], first["job_id"]);
    assert_eq!(h.store.len(), 2);
}

#[tokio::test]
async fn other_callers_jobs_are_invisible() {
    let h = harness();
    let (_, _, created) = h.call(post_json(Some(ALICE), r#"{"content_type":"image/png","content_length":10}"#)).await;
    let path = format!("/v1/jobs/{}", created["job_id"].as_str().unwrap());
    let (status, _, _) = h.call(get(ALICE, &path)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, json) = h.call(get(BOB, &path)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json["error"]["code"], "not_found");
    let delete =
        Request::delete(&path).header(header::AUTHORIZATION, format!("Bearer {BOB}")).body(Body::empty()).unwrap();
    assert_eq!(h.call(delete).await.0, StatusCode::NOT_FOUND);
    let (status, _, _) = h.call(get(ALICE, &path)).await;
    assert_eq!(status, StatusCode::OK, "still there for its owner");
    let (status, _, _) = h.call(get(ALICE, &format!("/v1/jobs/{}", JobId::new()))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = h.call(get(ALICE, "/v1/jobs/..%2F..%2Fetc")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unreadable_jobs_all_answer_the_same_404() {
    // No existence oracle: another caller's job, a well-formed id nobody has, a malformed id and
    // a path segment that is not even UTF-8 get byte-identical answers, for GET and DELETE.
    let h = harness();
    let (_, _, created) = h.call(post_json(Some(ALICE), r#"{"content_type":"image/png","content_length":10}"#)).await;
    let alices = created["job_id"].as_str().unwrap().to_owned();
    let paths = [
        format!("/v1/jobs/{alices}"),
        format!("/v1/jobs/{}", JobId::new()),
        format!("/v1/jobs/{}", alices.to_uppercase()),
        "/v1/jobs/not-a-job-id".to_owned(),
        "/v1/jobs/%FF".to_owned(),
        "/v1/jobs/..%2F..%2Fetc".to_owned(),
    ];
    let mut answers = Vec::new();
    for path in &paths {
        for method in ["GET", "DELETE"] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(header::AUTHORIZATION, format!("Bearer {BOB}"))
                .body(Body::empty())
                .unwrap();
            let response = ocr_api::routes::router(h.state.clone()).oneshot(request).await.unwrap();
            let status = response.status();
            let content_type = response.headers()[header::CONTENT_TYPE].clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            answers.push((format!("{method} {path}"), status, content_type, body));
        }
    }
    let (_, status, content_type, body) = &answers[0];
    assert_eq!(*status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/json");
    let json: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json, json!({"error": {"code": "not_found", "message": "job not found", "retryable": false}}));
    for (what, s, ct, b) in &answers {
        assert_eq!((s, ct, b), (status, content_type, body), "{what}");
    }
    // Bob's DELETE took nothing away.
    let (status, _, json) = h.call(get(ALICE, &format!("/v1/jobs/{alices}"))).await;
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("awaiting_upload")));
}

#[tokio::test]
async fn internal_callback_urls_are_refused_at_creation() {
    // The worker checks every resolved address when it sends (gpu_worker::ssrf); the API refuses
    // what is internal on its face, so such a job never exists.
    let h = harness();
    for url in [
        "http://hooks.example.com/",
        "https://127.0.0.1/",
        "https://169.254.169.254/",
        "https://[::1]/",
        "https://localhost:8443/",
        "https://10.0.0.7/",
        "https://ip-10-0-0-7.ec2.internal/",
    ] {
        let body = json!({"content_type": "image/png", "content_length": 10, "callback_url": url}).to_string();
        let (status, _, json) = h.call(post_json(Some(ALICE), &body)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {json}");
        assert_eq!(json["error"]["code"], "invalid_request");
        let query =
            format!("?callback_url={}", url::form_urlencoded::byte_serialize(url.as_bytes()).collect::<String>());
        let (status, _, json) = h.call(direct(ALICE, "image/png", &query, png_bytes())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "direct {url}: {json}");
    }
    assert!(h.store.is_empty());
    let body = r#"{"content_type":"image/png","content_length":10,"callback_url":"https://hooks.example.com/ocr"}"#;
    let (status, _, json) = h.call(post_json(Some(ALICE), body)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(json["callback_url"], "https://hooks.example.com/ocr");
}

#[tokio::test]
async fn deep_queue_gets_503_and_leaves_no_job() {
    let h = harness();
    h.queue.force_depth(Priority::Bulk, 101);
    let (status, headers, json) =
        h.call(post_json(Some(ALICE), r#"{"content_type":"image/png","content_length":10}"#)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "30");
    assert_eq!(json["error"]["code"], "queue_full");
    assert_eq!(json["error"]["retryable"], true);
    assert!(h.store.is_empty());
    // Express has its own queue and its own depth.
    let (status, _, _) = h
        .call(post_json(Some(ALICE), r#"{"content_type":"image/png","content_length":10,"priority":"express"}"#))
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_caller_over_its_quota_gets_429_and_only_that_caller() {
    let quota = CallerQuota {
        max_waiting: 3,
        rate_per_sec: 1.0,
        burst: 2,
        upload_window_ms: 900_000,
        waiting_retry_after_secs: 7,
    };
    let h = harness_with(Limits { caller: quota, ..Limits::default() });
    let body = r#"{"content_type":"image/png","content_length":10}"#;
    let create = |token| h.call(post_json(Some(token), body));
    let keyed = || {
        let mut request = post_json(Some(ALICE), body);
        request.headers_mut().insert("idempotency-key", "first".parse().unwrap());
        request
    };
    // The burst, then the rate: one more a second.
    let (status, _, first) = h.call(keyed()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(create(ALICE).await.0, StatusCode::CREATED);
    let (status, headers, json) = create(ALICE).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["error"]["code"], "caller_rate_limited");
    assert!(json["error"]["message"].as_str().unwrap().contains("CALLER_MAX_RATE"), "{json}");
    assert_eq!(json["error"]["retryable"], true);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    // Bob is not held back by Alice's limit.
    assert_eq!(create(BOB).await.0, StatusCode::CREATED);
    h.clock.advance(std::time::Duration::from_secs(1));
    assert_eq!(create(ALICE).await.0, StatusCode::CREATED);
    // Three waiting: the next one is refused until one of them stops waiting.
    h.clock.advance(std::time::Duration::from_secs(10));
    let (status, headers, json) = create(ALICE).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["error"]["code"], "caller_queue_full");
    assert!(json["error"]["message"].as_str().unwrap().contains("CALLER_MAX_QUEUED"), "{json}");
    assert_eq!(headers[header::RETRY_AFTER], "7");
    assert_eq!(h.store.all().iter().filter(|j| j.owner == "alice").count(), 3, "a refusal leaves no job");
    // A replay of an admitted request is answered although the caller is at its limit.
    let (status, _, again) = h.call(keyed()).await;
    assert_eq!((status, &again["job_id"]), (StatusCode::CREATED, &first["job_id"]));
    let mine = h.store.all().into_iter().find(|j| j.owner == "alice").unwrap();
    let change = StatusChange { at_ms: h.clock.now_ms(), ..Default::default() };
    h.store.set_status(&mine.id, JobStatus::AwaitingUpload, JobStatus::Queued, change.clone()).await.unwrap();
    assert_eq!(create(ALICE).await.0, StatusCode::TOO_MANY_REQUESTS, "queued still waits");
    h.store.set_status(&mine.id, JobStatus::Queued, JobStatus::Processing, change).await.unwrap();
    assert_eq!(create(ALICE).await.0, StatusCode::CREATED, "a job taken by a worker frees its place");
    // A job whose upload URL expired unused holds no place, even before it reads `expired`.
    h.clock.advance(std::time::Duration::from_secs(901));
    for _ in 0..2 {
        assert_eq!(create(ALICE).await.0, StatusCode::CREATED);
    }
}

#[tokio::test]
async fn queued_messages_carry_their_callers_fairness_key() {
    let h = harness();
    for token in [ALICE, BOB] {
        let (status, _, _) = h.call(direct(token, "image/png", "", png_bytes())).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    for job in h.store.all() {
        let key = job.object_key();
        h.uploads().handle_object(&key).await.unwrap();
    }
    let keys: Vec<_> = h.queue.messages(Priority::Bulk).into_iter().map(|m| m.fairness_key).collect();
    assert_eq!(keys.len(), 2);
    for owner in ["alice", "bob"] {
        assert!(keys.contains(&Some(ocr_core::quota::fairness_key(owner))), "{owner}: {keys:?}");
    }
}

fn direct(token: &str, content_type: &str, query: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(format!("/v1/jobs{query}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn direct_upload_stores_the_image() {
    let h = harness();
    let (status, _, json) = h.call(direct(ALICE, "image/png", "?priority=express", png_bytes())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let id = json["job_id"].as_str().unwrap();
    assert!(h.objects.contains(&format!("uploads/express/{id}")));

    let (status, _, json) = h.call(direct(ALICE, "image/jpeg", "", png_bytes())).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{json}");
    let (status, _, _) = h.call(direct(ALICE, "image/png", "?colour=red", png_bytes())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, _) = h.call(direct(ALICE, "image/png", "", Vec::new())).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, json) = h.call(direct(ALICE, "image/png", "", vec![0; 7 * 1024 * 1024])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    assert_eq!(json["error"]["code"], "too_large");
    assert_eq!(h.store.len(), 1);
}

#[tokio::test]
async fn storage_failure_is_a_retryable_500_without_a_job() {
    let h = harness();
    h.objects.set_failing(true);
    let (status, _, json) = h.call(direct(ALICE, "image/png", "", png_bytes())).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(json["error"]["retryable"], true);
    let (status, _, json) = h.call(post_json(Some(ALICE), r#"{"content_type":"image/png","content_length":10}"#)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(json["error"]["retryable"], true);
    assert!(h.store.is_empty());
}

/// A direct upload is never answered 202 without its image stored: a replay (same key, same
/// body) of a request whose storing failed, or is still under way, stores the image itself.
#[tokio::test]
async fn a_direct_upload_replay_stores_the_image_before_answering() {
    let h = harness();
    let with_key = || {
        let mut r = direct(ALICE, "image/png", "?priority=bulk", png_bytes());
        r.headers_mut().insert("idempotency-key", "upload-7".parse().unwrap());
        r
    };
    h.objects.set_failing(true);
    let (status, _, json) = h.call(with_key()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{json}");
    assert_eq!(json["error"]["retryable"], true);
    // With a key the job stays for the retry (without one it goes, see above).
    assert_eq!(h.store.len(), 1);
    let id = h.store.all()[0].id;
    let key = format!("uploads/bulk/{id}");
    assert!(!h.objects.contains(&key));

    h.objects.set_failing(false);
    let (status, _, json) = h.call(with_key()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    assert_eq!(json["job_id"], id.to_string());
    assert!(h.objects.contains(&key), "202 only once the image is stored");
    // Still failing at the replay: 500 again, never a 202 for a missing image.
    h.objects.delete(&key).await.unwrap();
    h.objects.set_failing(true);
    let (status, _, _) = h.call(with_key()).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    h.objects.set_failing(false);
    let (status, _, json) = h.call(with_key()).await;
    assert_eq!((status, json["job_id"].as_str()), (StatusCode::ACCEPTED, Some(id.to_string().as_str())));
    assert!(h.objects.contains(&key));
    assert_eq!(h.store.len(), 1, "one job throughout");
}

#[tokio::test]
async fn get_shows_the_result_and_delete_removes_it() {
    let h = harness();
    let (_, _, json) = h.call(direct(ALICE, "image/png", "", png_bytes())).await;
    let id: JobId = json["job_id"].as_str().unwrap().parse().unwrap();
    let change = |at| StatusChange { at_ms: at, error: None, ..Default::default() };
    h.store.set_status(&id, JobStatus::AwaitingUpload, JobStatus::Queued, change(1)).await.unwrap();
    h.store.set_status(&id, JobStatus::Queued, JobStatus::Processing, change(2)).await.unwrap();
    h.store.set_status(&id, JobStatus::Processing, JobStatus::Succeeded, change(3)).await.unwrap();
    h.store.put_result(id, OcrResult::image(10, 4, vec![hello_line()], 0.1));

    let path = format!("/v1/jobs/{id}");
    let (status, _, json) = h.call(get(ALICE, &path)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["status"], "succeeded");
    assert_eq!(json["attempts"], 1);
    assert_eq!(json["result"]["text"], "HELLO");
    assert_eq!(json["result"]["lines"][0]["box"][2], json!([9.0, 3.0]));
    assert!(json["finished_at"].is_string());

    let delete =
        Request::delete(&path).header(header::AUTHORIZATION, format!("Bearer {ALICE}")).body(Body::empty()).unwrap();
    let (status, _, json) = h.call(delete).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["status"], "deleted");
    assert!(!h.objects.contains(&format!("uploads/bulk/{id}")));
    let (_, _, json) = h.call(get(ALICE, &path)).await;
    assert_eq!(json["status"], "deleted");
    assert!(json.get("result").is_none());
}

#[tokio::test]
async fn openapi_and_health_need_no_token() {
    let h = harness();
    let (status, _, json) = h.call(Request::get("/v1/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["openapi"], "3.1.0");
    let (status, _, _) = h.call(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

/// Creates a job through the API and "uploads" `bytes` for it.
async fn uploaded(h: &Harness, content_type: ContentType, declared: usize, bytes: Vec<u8>) -> (JobId, String) {
    let body = json!({"content_type": content_type.as_str(), "content_length": declared}).to_string();
    let (_, _, json) = h.call(post_json(Some(ALICE), &body)).await;
    let id: JobId = json["job_id"].as_str().unwrap().parse().unwrap();
    let key = format!("uploads/bulk/{id}");
    h.objects.insert(&key, content_type, bytes);
    (id, key)
}

#[tokio::test]
async fn a_good_upload_is_queued_once() {
    let h = harness();
    let bytes = png_bytes();
    let (id, key) = uploaded(&h, ContentType::Png, bytes.len(), bytes.clone()).await;
    let handler = h.uploads();
    assert_eq!(handler.handle_object(&key).await.unwrap(), UploadOutcome::Enqueued(id));
    assert!(matches!(handler.handle_object(&key).await.unwrap(), UploadOutcome::Ignored(_)));
    let messages = h.queue.messages(Priority::Bulk);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].job_id, id);
    assert_eq!(messages[0].size, bytes.len() as u64);
    assert!(h.queue.messages(Priority::Express).is_empty());
    let job = h.store.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert!(job.enqueued_at_ms.is_some());
}

fn event(key: &str, n: usize, receive_count: u32) -> EventMessage {
    let body = json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "x"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "c",
               "bucket": {"name": "b", "ownerIdentity": {"principalId": "x"}, "arn": "arn:aws:s3:::b"},
               "object": {"key": key, "size": 3, "eTag": "e", "sequencer": "1"}}
    }]});
    EventMessage {
        message_id: format!("m{n}"),
        receipt_handle: format!("r{n}"),
        body: body.to_string(),
        receive_count,
        sent_ms: None,
    }
}

/// With the database away, the first event of a batch fails and the rest are not tried (on
/// Lambda each would wait out the same timeouts, and the invocation's timeout would fail the
/// whole batch): every one is reported alone, hidden for a backoff that grows with its
/// receives. Once the database is back, the same events queue every job once.
#[tokio::test]
async fn a_batch_during_a_database_outage_backs_off_and_loses_nothing() {
    let h = harness();
    let mut events = Vec::new();
    for n in 0..4 {
        let bytes = png_bytes();
        let (_, key) = uploaded(&h, ContentType::Png, bytes.len(), bytes).await;
        events.push(event(&key, n, 1 + n as u32));
    }
    let backoff = Backoff { base: Duration::from_secs(30), max: Duration::from_secs(900) };
    h.store.set_down(true);
    let reads = h.store.reads();
    let again = h.uploads().handle_batch(events.clone(), backoff, None, Duration::ZERO).await;
    assert_eq!(h.store.reads() - reads, 1, "only the first event may try the database");
    let after: Vec<u64> = again.iter().map(|t| t.after.as_secs()).collect();
    assert_eq!(after, [30, 60, 120, 240]);
    assert_eq!(again.iter().map(|t| t.receipt_handle.as_str()).collect::<Vec<_>>(), ["r0", "r1", "r2", "r3"]);
    assert!(h.queue.messages(Priority::Bulk).is_empty());

    // Out of time: nothing is started when less than the reserve is left.
    h.store.set_down(false);
    let soon = Some(std::time::Instant::now() + Duration::from_millis(100));
    let again = h.uploads().handle_batch(events.clone(), backoff, soon, Duration::from_secs(1)).await;
    assert_eq!(again.len(), 4);
    assert!(h.queue.messages(Priority::Bulk).is_empty());

    let again = h.uploads().handle_batch(events.clone(), backoff, None, Duration::ZERO).await;
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(h.queue.messages(Priority::Bulk).len(), 4);
    // A late duplicate delivery changes nothing.
    assert!(h.uploads().handle_batch(events, backoff, None, Duration::ZERO).await.is_empty());
    assert_eq!(h.queue.messages(Priority::Bulk).len(), 4);
}

#[tokio::test]
async fn a_lost_send_is_repeated_on_the_next_event() {
    let h = harness();
    let bytes = png_bytes();
    let (id, key) = uploaded(&h, ContentType::Png, bytes.len(), bytes).await;
    // As if the handler died after changing the status but before sending.
    h.store.set_status(&id, JobStatus::AwaitingUpload, JobStatus::Queued, StatusChange::default()).await.unwrap();
    assert_eq!(h.uploads().handle_object(&key).await.unwrap(), UploadOutcome::Enqueued(id));
    assert_eq!(h.queue.messages(Priority::Bulk).len(), 1);
}

#[tokio::test]
async fn bad_uploads_fail_and_are_deleted() {
    let h = harness();
    let handler = h.uploads();
    let text = b"this is a text file named photo.jpg".to_vec();
    let mut truncated = png_bytes();
    truncated.truncate(40);
    let cut_pdf = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\nxref\n0 2\n".to_vec();
    let encrypted_pdf = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\ntrailer\n<< /Root 1 0 R /Encrypt 2 0 R >>\n%%EOF\n".to_vec();
    let cases = [
        (ContentType::Jpeg, text.len(), text.clone(), "not an image"),
        (ContentType::Png, truncated.len(), truncated.clone(), "truncated"),
        (ContentType::Png, 10, png_bytes(), "declared"),
        (ContentType::Jpeg, png_bytes().len(), png_bytes(), "but image/jpeg was declared"),
        (ContentType::Pdf, cut_pdf.len(), cut_pdf.clone(), "truncated"),
        (ContentType::Pdf, encrypted_pdf.len(), encrypted_pdf.clone(), "encrypted"),
    ];
    for (content_type, declared, bytes, reason_part) in cases {
        assert_refused(&h, &handler, content_type, declared, bytes, reason_part).await;
    }
    assert!(h.queue.messages(Priority::Bulk).is_empty());
}

/// Uploads `bytes` for a new job and checks that `handler` refuses it with a reason containing
/// `reason_part`: the job failed with that error, its object deleted.
async fn assert_refused(
    h: &Harness,
    handler: &UploadHandler,
    content_type: ContentType,
    declared: usize,
    bytes: Vec<u8>,
    reason_part: &str,
) {
    let (id, key) = uploaded(h, content_type, declared, bytes).await;
    match handler.handle_object(&key).await.unwrap() {
        UploadOutcome::Rejected { job_id, reason } => {
            assert_eq!(job_id, id);
            assert!(reason.contains(reason_part), "{reason}");
        }
        other => panic!("expected a rejection for {reason_part}, got {other:?}"),
    }
    assert!(!h.objects.contains(&key));
    let job = h.store.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Failed);
    assert!(job.error.is_some());
}

/// A PDF of `pages` blank pages, as the API's own searchable-PDF writer makes it.
fn pdf_bytes(pages: u32) -> Vec<u8> {
    let result =
        OcrResult::from_pages((1..=pages).map(|n| ocr_core::OcrPage::new(n, 800, 1000, Vec::new())).collect(), 0.1);
    ocr_core::render::searchable_pdf(&result, &vec![None; pages as usize], 200.0)
}

#[tokio::test]
async fn pdf_uploads_are_checked_for_their_pages_and_encryption() {
    let h = harness();
    let handler = h.uploads();
    let good = pdf_bytes(3);
    let (id, key) = uploaded(&h, ContentType::Pdf, good.len(), good).await;
    assert_eq!(handler.handle_object(&key).await.unwrap(), UploadOutcome::Enqueued(id));

    // An update appended to a good file names an encryption dictionary, with more than the
    // tail the shape check reads after it: only the structure read finds it.
    let mut encrypted = pdf_bytes(2);
    let prev = {
        let tail = String::from_utf8_lossy(&encrypted[encrypted.len() - 40..]).to_string();
        tail.split_whitespace().rev().nth(1).unwrap().to_string()
    };
    let at = encrypted.len();
    let pad = "0".repeat(3000);
    encrypted.extend_from_slice(
        format!("xref\ntrailer\n<< /Size 99 /Root 1 0 R /Prev {prev} /Encrypt 98 0 R /ID [<{pad}> <{pad}>] >>\nstartxref\n{at}\n%%EOF\n")
            .as_bytes(),
    );
    assert!(!encrypted[encrypted.len() - ocr_core::content::TAIL_LEN..].windows(8).any(|w| w == b"/Encrypt"));

    let mut no_catalog = pdf_bytes(1);
    let at = no_catalog.windows(8).position(|w| w == b"/Catalog").unwrap();
    no_catalog[at..at + 8].copy_from_slice(b"/Katalog");
    let at = no_catalog.windows(6).position(|w| w == b"/Pages").unwrap();
    no_catalog[at..at + 6].copy_from_slice(b"/Xages");
    let at = no_catalog.windows(6).rposition(|w| w == b"/Pages").unwrap();
    no_catalog[at..at + 6].copy_from_slice(b"/Xages");

    let cases = [
        (pdf_bytes(51), "the PDF has 51 pages, over the limit of 50"),
        (encrypted, "the PDF is encrypted"),
        (no_catalog, "the PDF is damaged"),
    ];
    for (bytes, reason_part) in cases {
        assert_refused(&h, &handler, ContentType::Pdf, bytes.len(), bytes, reason_part).await;
    }
    // MAX_PAGES is the handler's setting.
    let mut roomy = h.uploads();
    roomy.max_pages = 60;
    let long = pdf_bytes(51);
    let (id, key) = uploaded(&h, ContentType::Pdf, long.len(), long).await;
    assert_eq!(roomy.handle_object(&key).await.unwrap(), UploadOutcome::Enqueued(id));
    assert_eq!(h.queue.messages(Priority::Bulk).len(), 2);
}

/// An object store whose objects vanish right after their HEAD, as when the job's DELETE lands
/// between the upload handler's HEAD and its reads.
struct VanishingObjects(Arc<InMemoryObjectStore>);

#[async_trait::async_trait]
impl ObjectStore for VanishingObjects {
    fn bucket(&self) -> &str {
        self.0.bucket()
    }
    async fn presign_put(
        &self,
        key: &str,
        content_type: ContentType,
        content_length: u64,
        expires_in: std::time::Duration,
    ) -> Result<PresignedPut, PortError> {
        self.0.presign_put(key, content_type, content_length, expires_in).await
    }
    async fn put(&self, key: &str, content_type: &str, body: bytes::Bytes) -> Result<(), PortError> {
        self.0.put(key, content_type, body).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, PortError> {
        let info = self.0.head(key).await;
        self.0.delete(key).await?;
        info
    }
    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: usize,
        if_match: Option<&str>,
    ) -> Result<bytes::Bytes, PortError> {
        self.0.read_range(key, offset, len, if_match).await
    }
    async fn get(&self, key: &str, if_match: Option<&str>) -> Result<bytes::Bytes, PortError> {
        self.0.get(key, if_match).await
    }
    async fn delete(&self, key: &str) -> Result<(), PortError> {
        self.0.delete(key).await
    }
    async fn presign_get(
        &self,
        key: &str,
        expires_in: std::time::Duration,
        disposition: &str,
    ) -> Result<String, PortError> {
        self.0.presign_get(key, expires_in, disposition).await
    }
}

#[tokio::test]
async fn an_upload_deleted_during_its_check_is_acknowledged_not_failed() {
    let h = harness();
    let bytes = png_bytes();
    let (id, key) = uploaded(&h, ContentType::Png, bytes.len(), bytes).await;
    let mut handler = h.uploads();
    handler.ports.objects = Arc::new(VanishingObjects(h.objects.clone()));
    // Not an error: an error that no retry can fix would leave the event for the DLQ.
    assert_eq!(handler.handle_object(&key).await.unwrap(), UploadOutcome::Ignored("object is gone".into()));
    assert_eq!(h.store.get(&id).await.unwrap().unwrap().status, JobStatus::AwaitingUpload);
    assert!(h.queue.messages(Priority::Bulk).is_empty());
}

/// A job store whose first move to `queued` times out on the caller's side but reaches the
/// database late: just before the next status change (as a statement held by a hung database or
/// a stalled connection lands after its client gave up and the event was retried).
struct LateUpdates {
    inner: Arc<InMemoryJobStore>,
    held: std::sync::Mutex<Option<(JobId, JobStatus, JobStatus, StatusChange)>>,
    timed_out: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl JobStore for LateUpdates {
    async fn insert(&self, job: ocr_core::NewJob) -> Result<ocr_core::Job, PortError> {
        self.inner.insert(job).await
    }
    async fn insert_within(
        &self,
        job: ocr_core::NewJob,
        quota: &CallerQuota,
    ) -> Result<ocr_core::quota::Admission, PortError> {
        self.inner.insert_within(job, quota).await
    }
    async fn get(&self, id: &JobId) -> Result<Option<ocr_core::Job>, PortError> {
        self.inner.get(id).await
    }
    async fn find_by_idempotency_key(&self, owner: &str, key: &str) -> Result<Option<ocr_core::Job>, PortError> {
        self.inner.find_by_idempotency_key(owner, key).await
    }
    async fn remove(&self, id: &JobId) -> Result<(), PortError> {
        self.inner.remove(id).await
    }
    async fn set_status(
        &self,
        id: &JobId,
        from: JobStatus,
        to: JobStatus,
        change: StatusChange,
    ) -> Result<bool, PortError> {
        use std::sync::atomic::Ordering;
        if to == JobStatus::Queued && !self.timed_out.swap(true, Ordering::SeqCst) {
            *self.held.lock().unwrap() = Some((*id, from, to, change));
            return Err(PortError::unavailable("mysql", "injected: the statement timed out"));
        }
        let late = self.held.lock().unwrap().take();
        if let Some((id, from, to, change)) = late {
            self.inner.set_status(&id, from, to, change).await?;
        }
        self.inner.set_status(id, from, to, change).await
    }
    async fn mark_enqueued(&self, id: &JobId, at_ms: i64) -> Result<(), PortError> {
        self.inner.mark_enqueued(id, at_ms).await
    }
    async fn get_result(&self, id: &JobId) -> Result<Option<OcrResult>, PortError> {
        self.inner.get_result(id).await
    }
    async fn mark_deleted(&self, id: &JobId, at_ms: i64) -> Result<(), PortError> {
        self.inner.mark_deleted(id, at_ms).await
    }
}

#[tokio::test]
async fn an_upload_whose_timed_out_status_change_lands_late_is_still_queued() {
    let h = harness();
    let bytes = png_bytes();
    let (id, key) = uploaded(&h, ContentType::Png, bytes.len(), bytes).await;
    let mut handler = h.uploads();
    handler.ports.store =
        Arc::new(LateUpdates { inner: h.store.clone(), held: Default::default(), timed_out: Default::default() });
    // The first try fails (its event comes back); the retry reads the job still awaiting its
    // upload, and its compare-and-set loses to the first try's statement landing in between.
    assert!(handler.handle_object(&key).await.is_err());
    assert_eq!(h.store.get(&id).await.unwrap().unwrap().status, JobStatus::AwaitingUpload);
    // Not acknowledged as someone else's: the job is queued and nobody sent its message.
    let lost = handler.handle_object(&key).await.unwrap_err();
    assert!(lost.is_retryable(), "{lost}");
    assert!(h.queue.messages(Priority::Bulk).is_empty());
    // The event's next delivery sends it.
    assert_eq!(handler.handle_object(&key).await.unwrap(), UploadOutcome::Enqueued(id));
    assert_eq!(h.queue.messages(Priority::Bulk).len(), 1, "the job's message was sent");
    let job = h.store.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert!(job.enqueued_at_ms.is_some());
    // And one more changes nothing.
    assert!(matches!(handler.handle_object(&key).await.unwrap(), UploadOutcome::Ignored(_)));
    assert_eq!(h.queue.messages(Priority::Bulk).len(), 1);
}

#[tokio::test]
async fn oversized_uploads_fail() {
    let h = harness();
    let mut handler = h.uploads();
    handler.max_upload_bytes = 50;
    let bytes = png_bytes();
    let (_, key) = uploaded(&h, ContentType::Png, bytes.len(), bytes).await;
    let outcome = handler.handle_object(&key).await.unwrap();
    assert!(
        matches!(&outcome, UploadOutcome::Rejected { reason, .. } if reason.contains("over the limit")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn unknown_keys_and_jobs_are_acknowledged() {
    let h = harness();
    let handler = h.uploads();
    let unknown = format!("uploads/bulk/{}", JobId::new());
    for key in ["elsewhere/x", "uploads/bulk/not-an-id", unknown.as_str()] {
        assert!(matches!(handler.handle_object(key).await.unwrap(), UploadOutcome::Ignored(_)), "{key}");
    }
    assert!(h.queue.messages(Priority::Bulk).is_empty());
}

#[tokio::test]
async fn an_upload_never_made_expires_but_a_late_event_still_counts() {
    let h = harness();
    let bytes = png_bytes();
    let body = json!({"content_type": "image/png", "content_length": bytes.len()}).to_string();
    let mut request = post_json(Some(ALICE), &body);
    request.headers_mut().insert("idempotency-key", "late-1".parse().unwrap());
    let (_, _, created) = h.call(request).await;
    let id = created["job_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/jobs/{id}");

    // Within the window the job waits; a replay's URL ends when the first one does.
    h.clock.advance(std::time::Duration::from_secs(600));
    let (_, _, json) = h.call(get(ALICE, &path)).await;
    assert_eq!(json["status"], "awaiting_upload");
    let mut replay = post_json(Some(ALICE), &body);
    replay.headers_mut().insert("idempotency-key", "late-1".parse().unwrap());
    let (_, _, replayed) = h.call(replay).await;
    assert!(replayed["upload"]["url"].as_str().unwrap().contains("expires=300"), "{replayed}");

    // After the window and the margin for the S3 event: expired, no upload URL any more.
    h.clock.advance(std::time::Duration::from_secs(400));
    let (_, _, json) = h.call(get(ALICE, &path)).await;
    assert_eq!(json["status"], "expired");
    assert!(json["error"].as_str().unwrap().contains("no upload"));
    let mut replay = post_json(Some(ALICE), &body);
    replay.headers_mut().insert("idempotency-key", "late-1".parse().unwrap());
    let (status, _, replayed) = h.call(replay).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(replayed["status"], "expired");
    assert!(replayed.get("upload").is_none());

    // S3 only accepts a PUT while the URL is valid, so an object that exists was uploaded in
    // time: its late event queues the job.
    let key = format!("uploads/bulk/{id}");
    h.objects.insert(&key, ContentType::Png, bytes);
    let job_id: JobId = id.parse().unwrap();
    assert_eq!(h.uploads().handle_object(&key).await.unwrap(), UploadOutcome::Enqueued(job_id));
    assert_eq!(h.store.get(&job_id).await.unwrap().unwrap().status, JobStatus::Queued);
}

fn post(token: &str, path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// Each caller reads its own webhook key, and rotates it with an overlap in which both sign.
#[tokio::test]
async fn each_caller_reads_and_rotates_only_its_own_webhook_key() {
    let h = harness();
    let (status, _, alice) = h.call(get(ALICE, "/v1/webhook-secret")).await;
    assert_eq!(status, StatusCode::OK, "{alice}");
    let (_, _, bob) = h.call(get(BOB, "/v1/webhook-secret")).await;
    assert_ne!(alice["secret"], bob["secret"], "no two callers share a key");
    assert_eq!((alice["generation"].as_u64(), alice["previous"].is_null()), (Some(1), true));
    assert!(alice["secret"].as_str().unwrap().starts_with("whsec_"));
    let (status, _, _) = h.call(Request::get("/v1/webhook-secret").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _, rotated) = h.call(post(ALICE, "/v1/webhook-secret/rotate", r#"{"overlap_seconds": 3600}"#)).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_eq!(rotated["generation"], 2);
    assert_ne!(rotated["secret"], alice["secret"]);
    assert_eq!(rotated["previous"]["secret"], alice["secret"], "the old key signs during the overlap");
    assert_eq!(rotated["previous"]["valid_until"], "2023-11-14T23:13:20Z");
    let (_, _, bob_again) = h.call(get(BOB, "/v1/webhook-secret")).await;
    assert_eq!(bob_again, bob, "alice's rotation leaves bob's key alone");
    // Past the overlap only the new key is shown (and signs).
    h.clock.advance(std::time::Duration::from_secs(3600));
    let (_, _, now) = h.call(get(ALICE, "/v1/webhook-secret")).await;
    assert_eq!((now["secret"].clone(), now["previous"].is_null()), (rotated["secret"].clone(), true));
    // An empty body rotates with the default overlap; bad bodies are refused.
    let (status, _, third) = h.call(post(ALICE, "/v1/webhook-secret/rotate", "")).await;
    assert_eq!((status, third["generation"].as_u64()), (StatusCode::OK, Some(3)));
    // 60.0 is an integer to JSON Schema.
    let (status, _, fourth) = h.call(post(ALICE, "/v1/webhook-secret/rotate", r#"{"overlap_seconds": 60.0}"#)).await;
    assert_eq!((status, fourth["generation"].as_u64()), (StatusCode::OK, Some(4)));
    for (body, want) in [
        ("{", StatusCode::BAD_REQUEST),
        (r#"{"overlap_seconds": -1}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"overlap_seconds": 604801}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"overlap": 5}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"overlap_seconds": null}"#, StatusCode::UNPROCESSABLE_ENTITY),
        (r#"{"overlap_seconds": 1.5}"#, StatusCode::UNPROCESSABLE_ENTITY),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, _, json) = h.call(post(ALICE, "/v1/webhook-secret/rotate", body)).await;
        assert_eq!(status, want, "{body}: {json}");
    }
    let (_, _, last) = h.call(get(ALICE, "/v1/webhook-secret")).await;
    assert_eq!(last["generation"], 4, "refused rotations change nothing");
}

/// A job past the retention period reads `expired`, without its result or what was sent with
/// it, whatever its row still says (the purge has not reached it yet).
#[tokio::test]
async fn a_job_past_retention_reads_expired() {
    let h = harness();
    let body = r#"{"content_type":"image/png","content_length":10,"metadata":{"order":7},"callback_url":"https://hooks.example.com/x"}"#;
    let (_, _, json) = h.call(post_json(Some(ALICE), body)).await;
    let id: JobId = json["job_id"].as_str().unwrap().parse().unwrap();
    let change = |at| StatusChange { at_ms: at, error: None, ..Default::default() };
    h.store.set_status(&id, JobStatus::AwaitingUpload, JobStatus::Queued, change(1)).await.unwrap();
    h.store.set_status(&id, JobStatus::Queued, JobStatus::Processing, change(2)).await.unwrap();
    h.store.set_status(&id, JobStatus::Processing, JobStatus::Succeeded, change(3)).await.unwrap();
    let line = OcrLine { text: "x".into(), ..hello_line() };
    h.store.put_result(id, OcrResult::image(1, 1, vec![line], 0.0));
    h.clock.advance(std::time::Duration::from_secs(7 * 86_400 - 1));
    let (_, _, json) = h.call(get(ALICE, &format!("/v1/jobs/{id}"))).await;
    assert_eq!((json["status"].as_str(), json["result"]["text"].as_str()), (Some("succeeded"), Some("x")));
    let (status, _, _) = h.call(get(ALICE, &format!("/v1/jobs/{id}/result?format=text"))).await;
    assert_eq!(status, StatusCode::OK);
    h.clock.advance(std::time::Duration::from_secs(1));
    let (status, _, json) = h.call(get(ALICE, &format!("/v1/jobs/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["status"], "expired", "{json}");
    assert!(json.get("result").is_none() && json.get("metadata").is_none() && json.get("callback_url").is_none());
    assert!(json["error"].as_str().unwrap().contains("retention"));
    // Its result in any format is gone too.
    let (status, _, json) = h.call(get(ALICE, &format!("/v1/jobs/{id}/result?format=text"))).await;
    assert_eq!((status, json["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("no_result")), "{json}");
}

/// A harness whose waiting hub checks every 20 ms (and holds at most `max_waiters`).
fn waiting_harness(max_waiters: usize) -> Harness {
    waiting_harness_with(max_waiters, WaitCaps::default())
}

/// Also with these caps on waiting requests across processes.
fn waiting_harness_with(max_waiters: usize, wait_caps: WaitCaps) -> Harness {
    let wait = WaitSettings { tick: Duration::from_millis(20), max_waiters };
    harness_with(Limits {
        queue_depth_limit: 100,
        queue_depth_refresh: Duration::ZERO,
        wait,
        wait_caps,
        ..Limits::default()
    })
}

impl Harness {
    /// The request answered in the background: its status, body and how long it took.
    fn spawn_call(&self, request: Request<Body>) -> tokio::task::JoinHandle<(StatusCode, Value, Duration)> {
        let app = ocr_api::routes::router(self.state.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice(&bytes).unwrap(), started.elapsed())
        })
    }

    /// A job of Alice's, uploaded directly and now `processing`.
    async fn processing_job(&self) -> JobId {
        self.processing_job_of(ALICE).await
    }

    /// A job of the caller with this token, uploaded directly and now `processing`.
    async fn processing_job_of(&self, token: &str) -> JobId {
        let (_, _, json) = self.call(direct(token, "image/png", "", png_bytes())).await;
        let id: JobId = json["job_id"].as_str().unwrap().parse().unwrap();
        let change = |at| StatusChange { at_ms: at, ..Default::default() };
        self.store.set_status(&id, JobStatus::AwaitingUpload, JobStatus::Queued, change(1)).await.unwrap();
        self.store.set_status(&id, JobStatus::Queued, JobStatus::Processing, change(2)).await.unwrap();
        id
    }
}

#[tokio::test]
async fn a_wait_answers_as_soon_as_the_job_ends() {
    let h = waiting_harness(100);
    let id = h.processing_job().await;
    let waiting = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.state.waits.stats().waiters, 1);
    h.store.put_result(id, OcrResult::image(10, 4, vec![hello_line()], 0.1));
    let change = StatusChange { at_ms: 3, ..Default::default() };
    assert!(h.store.set_status(&id, JobStatus::Processing, JobStatus::Succeeded, change).await.unwrap());
    let ended = Instant::now();
    let (status, json, took) = waiting.await.unwrap();
    let after_end = ended.elapsed();
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!((json["status"].as_str(), json["result"]["text"].as_str()), (Some("succeeded"), Some("HELLO")));
    // A tick is 20 ms; the wait was 20 s.
    assert!(after_end < Duration::from_secs(2), "answered {after_end:?} after the end");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The same body as a plain GET.
    assert_eq!(h.call(get(ALICE, &format!("/v1/jobs/{id}"))).await.2, json);
    assert_eq!(h.state.waits.stats().waiters, 0);
}

#[tokio::test]
async fn a_wait_that_runs_out_answers_the_job_as_it_is() {
    let h = waiting_harness(100);
    let id = h.processing_job().await;
    let (status, json, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=1"))).await.unwrap();
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("processing")));
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(h.call(get(ALICE, &format!("/v1/jobs/{id}"))).await.2, json);
    // No wait, wait=0 and an already ended job answer at once.
    for query in ["", "?wait=0", "?wait=00"] {
        let (status, _, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}{query}"))).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(took < Duration::from_millis(500), "{query}: {took:?}");
    }
    h.store.set_status(&id, JobStatus::Processing, JobStatus::Failed, StatusChange::default()).await.unwrap();
    let (status, json, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20"))).await.unwrap();
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("failed")));
    assert!(took < Duration::from_millis(500), "{took:?}");
    // Only the request that really waited took a place, and gave it back.
    assert_eq!((h.slots.acquires(), h.slots.releases(), h.slots.held(h.clock.now_ms())), (1, 1, 0));
}

#[tokio::test]
async fn a_job_deleted_while_waited_on_answers_deleted() {
    let h = waiting_harness(100);
    let id = h.processing_job().await;
    let waiting = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let path = format!("/v1/jobs/{id}");
    let delete =
        Request::delete(&path).header(header::AUTHORIZATION, format!("Bearer {ALICE}")).body(Body::empty()).unwrap();
    assert_eq!(h.call(delete).await.0, StatusCode::OK);
    let (status, json, took) = waiting.await.unwrap();
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("deleted")));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn waiting_on_someone_elses_job_is_the_same_immediate_404() {
    let h = waiting_harness(100);
    let id = h.processing_job().await;
    let plain = h.call(get(BOB, &format!("/v1/jobs/{id}"))).await;
    assert_eq!(plain.0, StatusCode::NOT_FOUND);
    for path in [format!("/v1/jobs/{id}?wait=20"), format!("/v1/jobs/{}?wait=20", JobId::new())] {
        let (status, json, took) = h.spawn_call(get(BOB, &path)).await.unwrap();
        assert_eq!((status, &json), (StatusCode::NOT_FOUND, &plain.2), "{path}");
        assert!(took < Duration::from_millis(500), "{path}: {took:?}");
    }
    // Nobody was registered, nothing was read for them, no place was taken.
    assert_eq!(h.state.waits.stats(), Default::default());
    assert_eq!(h.store.status_reads(), 0);
    assert_eq!(h.slots.acquires(), 0);
}

#[tokio::test]
async fn malformed_waits_get_400() {
    let h = waiting_harness(100);
    let id = h.processing_job().await;
    for query in ["wait=21", "wait=-1", "wait=abc", "wait=", "wait=1.5", "wait=+5", "wait=%205", "wait=1&wait=2"] {
        let (status, _, json) = h.call(get(ALICE, &format!("/v1/jobs/{id}?{query}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {json}");
        assert_eq!(json["error"]["code"], "invalid_parameter", "{query}");
        assert_eq!(json["error"]["retryable"], false, "{query}");
        assert!(json["error"]["message"].as_str().unwrap().contains("wait"), "{query}: {json}");
    }
    // Other parameters are ignored, as before `wait` existed.
    assert_eq!(h.call(get(ALICE, &format!("/v1/jobs/{id}?colour=red"))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn past_the_waiter_cap_a_wait_answers_at_once() {
    let h = waiting_harness(1);
    let id = h.processing_job().await;
    let first = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=2")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, json, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20"))).await.unwrap();
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("processing")));
    assert!(took < Duration::from_millis(500), "{took:?}");
    let (status, _, took) = first.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(took >= Duration::from_secs(2), "the first one waited: {took:?}");
}

/// Issue: on Lambda each waiting request holds an environment of the API function (whose
/// concurrency is capped), so one caller's waits past `WAIT_MAX_PER_CALLER` answer at once
/// (the job as it is, as past the process's cap) while another caller's still wait.
#[tokio::test]
async fn past_the_callers_cap_its_extra_wait_answers_at_once_while_another_caller_waits() {
    let h = waiting_harness_with(100, WaitCaps { max_total: 10, max_per_caller: 2 });
    let (a1, a2, b) = (h.processing_job().await, h.processing_job().await, h.processing_job_of(BOB).await);
    let first = h.spawn_call(get(ALICE, &format!("/v1/jobs/{a1}?wait=2")));
    let second = h.spawn_call(get(ALICE, &format!("/v1/jobs/{a2}?wait=2")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let now = h.clock.now_ms();
    assert_eq!((h.slots.held(now), h.slots.held_by("alice", now)), (2, 2));
    for id in [a1, a2] {
        let (status, json, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20"))).await.unwrap();
        assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("processing")), "{json}");
        assert!(took < Duration::from_millis(500), "alice's third wait answered at once: {took:?}");
    }
    let (status, json, took) = h.spawn_call(get(BOB, &format!("/v1/jobs/{b}?wait=1"))).await.unwrap();
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("processing")));
    assert!(took >= Duration::from_secs(1), "bob waited: {took:?}");
    for waiting in [first, second] {
        let (status, _, took) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(took >= Duration::from_secs(2), "alice's first two waited: {took:?}");
    }
    assert_eq!(h.slots.held(now), 0);
}

/// Past `WAIT_MAX_TOTAL` (all callers together) a wait answers at once, whoever asks.
#[tokio::test]
async fn past_the_total_cap_a_wait_answers_at_once() {
    let h = waiting_harness_with(100, WaitCaps { max_total: 2, max_per_caller: 5 });
    let (a, b) = (h.processing_job().await, h.processing_job_of(BOB).await);
    let alice = h.spawn_call(get(ALICE, &format!("/v1/jobs/{a}?wait=2")));
    let bob = h.spawn_call(get(BOB, &format!("/v1/jobs/{b}?wait=2")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.slots.held(h.clock.now_ms()), 2);
    // Each caller is under its own cap; the total is reached.
    for (token, id) in [(ALICE, a), (BOB, b)] {
        let (status, json, took) = h.spawn_call(get(token, &format!("/v1/jobs/{id}?wait=20"))).await.unwrap();
        assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("processing")), "{json}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
    for waiting in [alice, bob] {
        let (status, _, took) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(took >= Duration::from_secs(2), "the first two waited: {took:?}");
    }
}

/// A place is given back when its wait ends (the same caller's next wait waits again) and when
/// its client goes away mid-wait (the request is dropped).
#[tokio::test]
async fn a_place_is_given_back_when_its_wait_ends_or_its_client_goes_away() {
    let h = waiting_harness_with(100, WaitCaps { max_total: 1, max_per_caller: 1 });
    let id = h.processing_job().await;
    let now = h.clock.now_ms();
    for round in 0..2 {
        let (status, json, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=1"))).await.unwrap();
        assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("processing")));
        assert!(took >= Duration::from_secs(1), "round {round} waited: {took:?}");
        assert_eq!(h.slots.held(now), 0, "round {round}");
    }
    // A job that ends mid-wait gives its place back as well.
    let waiting = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.slots.held(now), 1);
    h.store.set_status(&id, JobStatus::Processing, JobStatus::Failed, StatusChange::default()).await.unwrap();
    let (status, json, took) = waiting.await.unwrap();
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("failed")));
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(h.slots.held(now), 0);

    let id = h.processing_job().await;
    let gone = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.slots.held(now), 1);
    gone.abort();
    let deadline = Instant::now() + Duration::from_secs(2);
    while h.slots.held(now) > 0 {
        assert!(Instant::now() < deadline, "the dropped request's place was not given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, _, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=1"))).await.unwrap();
    assert!(took >= Duration::from_secs(1), "waited again: {took:?}");
    assert_eq!((h.slots.acquires(), h.slots.releases()), (5, 5));
}

/// When the places cannot be counted (the database is away) a wait answers at once, as the
/// plain GET; with `WAIT_MAX_TOTAL=0` nothing waits and nothing is counted.
#[tokio::test]
async fn without_a_place_a_wait_answers_at_once() {
    let h = waiting_harness(100);
    let id = h.processing_job().await;
    h.slots.set_down(true);
    let (status, json, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20"))).await.unwrap();
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("processing")), "{json}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(h.slots.acquires(), 1);
    h.slots.set_down(false);
    let (_, _, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=1"))).await.unwrap();
    assert!(took >= Duration::from_secs(1), "{took:?}");

    let h = waiting_harness_with(100, WaitCaps { max_total: 0, max_per_caller: 5 });
    let id = h.processing_job().await;
    let (status, _, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20"))).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!((h.slots.acquires(), h.state.waits.stats()), (0, Default::default()));
}

#[tokio::test]
async fn a_running_job_past_retention_reads_expired_at_once() {
    let h = waiting_harness(100);
    let id = h.processing_job().await;
    h.clock.advance(Duration::from_secs(7 * 86_400));
    let (status, json, took) = h.spawn_call(get(ALICE, &format!("/v1/jobs/{id}?wait=20"))).await.unwrap();
    assert_eq!((status, json["status"].as_str()), (StatusCode::OK, Some("expired")));
    assert!(took < Duration::from_millis(500), "{took:?}");
}

/// One line reading HELLO, with its one word.
fn hello_line() -> OcrLine {
    let bbox = [[0.0, 0.0], [9.0, 0.0], [9.0, 3.0], [0.0, 3.0]];
    let word = ocr_core::OcrWord { text: "HELLO".into(), confidence: 0.9, bbox };
    OcrLine { text: "HELLO".into(), confidence: 0.9, bbox, words: vec![word] }
}

#[tokio::test]
async fn a_result_reads_in_every_format_for_its_caller_only() {
    let h = harness();
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(10, 4, image::Rgb([255, 255, 255])))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (_, _, json) = h.call(direct(ALICE, "image/png", "", png)).await;
    let id: JobId = json["job_id"].as_str().unwrap().parse().unwrap();
    let path = format!("/v1/jobs/{id}/result");

    // Not succeeded yet: 409 no_result, whatever the format.
    let (status, _, json) = h.call(get(ALICE, &format!("{path}?format=hocr"))).await;
    assert_eq!((status, json["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("no_result")), "{json}");

    let change = |at| StatusChange { at_ms: at, error: None, ..Default::default() };
    h.store.set_status(&id, JobStatus::AwaitingUpload, JobStatus::Queued, change(1)).await.unwrap();
    h.store.set_status(&id, JobStatus::Queued, JobStatus::Processing, change(2)).await.unwrap();
    h.store.set_status(&id, JobStatus::Processing, JobStatus::Succeeded, change(3)).await.unwrap();
    h.store.put_result(id, OcrResult::image(10, 4, vec![hello_line()], 0.1));

    // JSON (the default) is the job's result; old clients' fields and pages with words.
    let (_, _, job) = h.call(get(ALICE, &format!("/v1/jobs/{id}"))).await;
    let (status, headers, json) = h.call(get(ALICE, &path)).await;
    assert_eq!((status, headers[header::CONTENT_TYPE].to_str().unwrap()), (StatusCode::OK, "application/json"));
    assert_eq!(json, job["result"]);
    assert_eq!(
        (json["text"].as_str(), json["width"].as_u64(), json["lines"][0]["text"].as_str()),
        (Some("HELLO"), Some(10), Some("HELLO"))
    );
    assert_eq!(json["pages"][0]["lines"][0]["words"][0]["text"], "HELLO");

    let expect = [
        ("text", "text/plain; charset=utf-8", "HELLO\n"),
        ("hocr", "application/xhtml+xml; charset=utf-8", "class=\"ocrx_word\""),
        ("alto", "application/alto+xml; charset=utf-8", "CONTENT=\"HELLO\""),
        ("pdf", "application/pdf", "%PDF-"),
    ];
    for (format, media_type, needle) in expect {
        let response = ocr_api::routes::router(h.state.clone())
            .oneshot(get(ALICE, &format!("{path}?format={format}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{format}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], media_type, "{format}");
        let disposition = response.headers()[header::CONTENT_DISPOSITION].to_str().unwrap().to_owned();
        assert!(disposition.starts_with("inline; filename=") && disposition.contains(&id.to_string()), "{disposition}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(needle), "{format}: {body}");
    }

    // Another caller: the same 404 as an unknown job. A bad or repeated format: 400.
    let (status, _, _) = h.call(get(BOB, &format!("{path}?format=pdf"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for query in ["format=docx", "format=PDF", "format=text&format=pdf"] {
        let (status, _, json) = h.call(get(ALICE, &format!("{path}?{query}"))).await;
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_parameter")),
            "{query}"
        );
    }
}

/// A PDF of `pages` A4 pages that draw a line each and have no text, as a scanner's pages have
/// none: the kind a text layer is added to.
fn scanned_pdf_bytes(pages: usize) -> Vec<u8> {
    let mut w = ocr_core::fakes::PdfWriter::new();
    w.obj(1, "<< /Type /Catalog /Pages 2 0 R >>");
    let kids: Vec<String> = (0..pages).map(|k| format!("{} 0 R", 3 + 2 * k)).collect();
    w.obj(2, &format!("<< /Type /Pages /Kids [{}] /Count {pages} >>", kids.join(" ")));
    for k in 0..pages as u32 {
        w.obj(
            3 + 2 * k,
            &format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents {} 0 R >>", 4 + 2 * k),
        );
        w.stream(4 + 2 * k, "", b"0 0 m 595 842 l S");
    }
    w.finish(1, "")
}

/// A succeeded job of a PDF upload with `result`; returns its id.
async fn succeeded_pdf_job(h: &Harness, pdf: Vec<u8>, result: OcrResult) -> JobId {
    let (_, _, json) = h.call(direct(ALICE, "application/pdf", "", pdf)).await;
    let id: JobId = json["job_id"].as_str().unwrap_or_else(|| panic!("{json}")).parse().unwrap();
    let change = |at| StatusChange { at_ms: at, error: None, ..Default::default() };
    h.store.set_status(&id, JobStatus::AwaitingUpload, JobStatus::Queued, change(1)).await.unwrap();
    h.store.set_status(&id, JobStatus::Queued, JobStatus::Processing, change(2)).await.unwrap();
    h.store.set_status(&id, JobStatus::Processing, JobStatus::Succeeded, change(3)).await.unwrap();
    h.store.put_result(id, result);
    id
}

#[tokio::test]
async fn a_pdf_upload_reads_back_as_itself_with_a_text_layer() {
    let h = harness();
    let scan = scanned_pdf_bytes(2);
    let page = |n| ocr_core::OcrPage::new(n, 1654, 2339, vec![hello_line()]);
    let id = succeeded_pdf_job(&h, scan.clone(), OcrResult::from_pages(vec![page(1), page(2)], 0.1)).await;
    let response = ocr_api::routes::router(h.state.clone())
        .oneshot(get(ALICE, &format!("/v1/jobs/{id}/result?format=pdf")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/pdf");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    // The upload, every byte, then the update with the words (pdftotext reads them: see
    // ocr-core's tests/text_layer.rs).
    assert!(body.starts_with(&scan) && body.len() > scan.len());
    assert_eq!(ocr_core::pdf::facts(&body), Ok(ocr_core::pdf::PdfFacts { pages: 2 }));
    assert_eq!(String::from_utf8_lossy(&body[scan.len()..]).matches("/OcrText").count(), 2);

    // A result that is not the document's pages: a clear 409, not a wrong file.
    let id = succeeded_pdf_job(&h, scan.clone(), OcrResult::from_pages(vec![page(1)], 0.1)).await;
    let (status, _, json) = h.call(get(ALICE, &format!("/v1/jobs/{id}/result?format=pdf"))).await;
    assert_eq!((status, json["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("no_result")), "{json}");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("has 2 pages but its result has 1") && message.contains("hocr"), "{message}");
}

#[tokio::test]
async fn an_output_too_large_to_answer_inline_is_a_redirect_and_goes_with_its_job() {
    let h = harness_with(Limits { max_inline_output: 1000, ..Limits::default() });
    let scan = scanned_pdf_bytes(3);
    let page = |n| ocr_core::OcrPage::new(n, 1654, 2339, vec![hello_line()]);
    let pages = (1..=3).map(page).collect();
    let id = succeeded_pdf_job(&h, scan, OcrResult::from_pages(pages, 0.1)).await;
    let key = format!("outputs/{id}.pdf");

    let response = ocr_api::routes::router(h.state.clone())
        .oneshot(get(ALICE, &format!("/v1/jobs/{id}/result?format=pdf")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let location = response.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("memory://test-bucket/{key}?expires=300")), "{location}");
    let stored = h.objects.get(&key, None).await.unwrap();
    assert!(stored.starts_with(b"%PDF-") && stored.len() > 1000);
    // Small outputs still answer inline; another caller still gets 404 and no redirect.
    let (status, _, _) = h.call(get(ALICE, &format!("/v1/jobs/{id}/result?format=text"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = h.call(get(BOB, &format!("/v1/jobs/{id}/result?format=pdf"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting the job deletes its stored outputs with its upload.
    let (status, _, _) = h.call(delete(ALICE, &format!("/v1/jobs/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!h.objects.contains(&key));
}
