//! The hand-written OpenAPI document (`functions/api/openapi.json`) against the code, where that
//! is cheap: error codes and bodies, routes and methods, which routes need a token, the job's
//! fields and enums. scripts/api-fuzz.sh checks live answers against the document, and
//! scripts/openapi-clients.sh that client generators can use it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use ocr_api::auth::Authenticator;
use ocr_api::config::Limits;
use ocr_api::state::Ports;
use ocr_api::view::{JobView, UploadView};
use ocr_api::{ApiError, AppState};
use ocr_core::fakes::{InMemoryJobQueue, InMemoryJobStore, InMemoryObjectStore, InMemoryWaitSlots, ManualClock};
use ocr_core::ports::PresignedPut;
use ocr_core::quota::QuotaRefusal;
use ocr_core::{ContentType, JobStatus, OcrLine, OcrResult, Priority};
use serde_json::{Value, json};
use tower::ServiceExt;

fn document() -> Value {
    serde_json::from_str(ocr_api::routes::OPENAPI_JSON).expect("openapi.json is JSON")
}

/// `value`, or what its `$ref` (`#/...`, within the document) points at.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r}: only local refs"));
            resolve(doc, doc.pointer(pointer).unwrap_or_else(|| panic!("{r} points nowhere")))
        }
        None => value,
    }
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Every `ApiError`, once each; the text of the ones that carry one is "DETAIL".
fn every_error() -> Vec<ApiError> {
    let all = vec![
        ApiError::Unauthenticated,
        ApiError::MalformedJson("DETAIL".into()),
        ApiError::InvalidRequest("DETAIL".into()),
        ApiError::InvalidParameter("DETAIL".into()),
        ApiError::UnsupportedMediaType("DETAIL".into()),
        ApiError::TooLarge("DETAIL".into()),
        ApiError::NotFound,
        ApiError::NoResult("DETAIL".into()),
        ApiError::MethodNotAllowed,
        ApiError::IdempotencyConflict,
        ApiError::QueueFull { queue: "bulk", retry_after_secs: 30 },
        ApiError::Quota(QuotaRefusal::TooManyWaiting { limit: 8000, retry_after_secs: 30 }),
        ApiError::Quota(QuotaRefusal::RateLimited { rate_per_sec: 100.0, retry_after_secs: 1 }),
        ApiError::Internal("DETAIL".into()),
        ApiError::Unavailable("DETAIL".into()),
    ];
    for e in &all {
        // Stops compiling when a variant is added: add it to the list above too.
        match e {
            ApiError::Unauthenticated
            | ApiError::MalformedJson(_)
            | ApiError::InvalidRequest(_)
            | ApiError::InvalidParameter(_)
            | ApiError::UnsupportedMediaType(_)
            | ApiError::TooLarge(_)
            | ApiError::NotFound
            | ApiError::NoResult(_)
            | ApiError::MethodNotAllowed
            | ApiError::IdempotencyConflict
            | ApiError::QueueFull { .. }
            | ApiError::Quota(QuotaRefusal::TooManyWaiting { .. } | QuotaRefusal::RateLimited { .. })
            | ApiError::Internal(_)
            | ApiError::Unavailable(_) => {}
        }
    }
    all
}

/// What the API answers for each error code: its status and body.
async fn answers() -> BTreeMap<&'static str, (StatusCode, Value)> {
    let mut out = BTreeMap::new();
    for e in every_error() {
        let code = e.code();
        let response = e.into_response();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(out.insert(code, (status, serde_json::from_slice(&body).unwrap())).is_none(), "{code} twice");
    }
    out
}

#[test]
fn the_error_code_enum_is_every_code_the_api_answers() {
    let doc = document();
    let documented = strings(&doc["components"]["schemas"]["ErrorCode"]["enum"]);
    let emitted: BTreeSet<String> = every_error().iter().map(|e| e.code().to_owned()).collect();
    assert_eq!(documented, emitted);
}

/// `(where, status if used by an operation, response)` for every error response in the document.
fn error_responses(doc: &Value) -> Vec<(String, Option<StatusCode>, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(responses) = op.get("responses").and_then(Value::as_object) else { continue };
            for (status, response) in responses {
                let status: StatusCode = status.parse::<u16>().unwrap().try_into().unwrap();
                if status.is_client_error() || status.is_server_error() {
                    out.push((format!("{method} {path} {status}"), Some(status), resolve(doc, response)));
                }
            }
        }
    }
    for (name, response) in doc["components"]["responses"].as_object().unwrap() {
        out.push((format!("components/responses/{name}"), None, response));
    }
    out
}

#[tokio::test]
async fn error_responses_show_what_the_api_answers() {
    let doc = document();
    let answers = answers().await;
    let mut shown = BTreeSet::new();
    for (place, status, response) in error_responses(&doc) {
        let json = &response["content"]["application/json"];
        assert_eq!(
            resolve(&doc, &json["schema"]),
            &doc["components"]["schemas"]["ErrorResponse"],
            "{place}: an error answers ErrorResponse"
        );
        let examples = json["examples"].as_object().unwrap_or_else(|| panic!("{place}: no examples"));
        assert!(!examples.is_empty(), "{place}: no examples");
        for (name, example) in examples {
            let value = &example["value"];
            let code = value["error"]["code"].as_str().unwrap_or_else(|| panic!("{place} {name}: no code"));
            let (real_status, real) =
                answers.get(code).unwrap_or_else(|| panic!("{place} {name}: no such code {code}"));
            if let Some(status) = status {
                assert_eq!(status, *real_status, "{place} {name}: {code} is answered with {real_status}");
            }
            let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(value), keys(real), "{place} {name}");
            assert_eq!(keys(&value["error"]), keys(&real["error"]), "{place} {name}");
            assert_eq!(value["error"]["retryable"], real["error"]["retryable"], "{place} {name}: retryable");
            let message = real["error"]["message"].as_str().unwrap();
            if !message.contains("DETAIL") {
                assert_eq!(value["error"]["message"], message, "{place} {name}: the API's own words");
            }
            assert!(response["description"].as_str().unwrap().contains(&format!("`{code}`")), "{place}: name {code}");
            shown.insert(code.to_owned());
        }
    }
    let all: BTreeSet<String> = answers.keys().map(|c| (*c).to_owned()).collect();
    assert_eq!(shown, all, "every code has an example");
}

fn harness() -> AppState {
    let auth = Authenticator::from_static_tokens("alice-token-0123456789:alice").unwrap();
    let ports = Ports {
        store: Arc::new(InMemoryJobStore::default()),
        objects: Arc::new(InMemoryObjectStore::default()),
        queue: Arc::new(InMemoryJobQueue::default()),
        clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        keys: Arc::new(InMemoryJobStore::default()),
        statuses: Arc::new(InMemoryJobStore::default()),
        wait_slots: Arc::new(InMemoryWaitSlots::default()),
    };
    AppState::new(ports, auth, Limits::default())
}

#[test]
fn every_route_is_a_documented_path() {
    // axum cannot list a Router's routes; routes.rs names each one once, in `.route("...", ...)`.
    let source = include_str!("../src/routes.rs");
    let routes: BTreeSet<String> =
        source.split(".route(\"").skip(1).map(|rest| rest.split('"').next().unwrap().to_owned()).collect();
    let doc = document();
    let paths: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(routes, paths);
}

#[tokio::test]
async fn documented_methods_and_tokens_are_what_the_router_does() {
    let doc = document();
    let state = harness();
    let needs_token_by_default = !doc["security"].as_array().unwrap().is_empty();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path.replace("{id}", &"0".repeat(32));
        let documented: BTreeSet<String> =
            item.as_object().unwrap().keys().filter(|k| *k != "parameters").map(|k| k.to_ascii_uppercase()).collect();
        for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let request = Request::builder().method(method.clone()).uri(&uri).body(Body::empty()).unwrap();
            let response = ocr_api::routes::router(state.clone()).oneshot(request).await.unwrap();
            let status = response.status();
            let op = &item[method.as_str().to_ascii_lowercase()];
            if op.is_null() {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is not documented");
                let allow: BTreeSet<String> = response.headers()[header::ALLOW]
                    .to_str()
                    .unwrap()
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .filter(|m| m != "HEAD")
                    .collect();
                assert_eq!(allow, documented, "{path}: Allow");
                continue;
            }
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is documented");
            let needs_token = op.get("security").map_or(needs_token_by_default, |s| !s.as_array().unwrap().is_empty());
            assert_eq!(status == StatusCode::UNAUTHORIZED, needs_token, "{method} {path} without a token: {status}");
            let documented_statuses = op["responses"].as_object().unwrap();
            assert!(documented_statuses.contains_key(status.as_str()), "{method} {path}: {status} is not documented");
        }
    }
}

/// Each key of `value` is a property of `schema`, and each required property is there.
fn check_object(doc: &Value, schema: &Value, value: &Value, place: &str, all_fields: bool) {
    let schema = resolve(doc, schema);
    let properties = schema["properties"].as_object().unwrap_or_else(|| panic!("{place}: no properties"));
    let keys: BTreeSet<String> = value.as_object().unwrap().keys().cloned().collect();
    let known: BTreeSet<String> = properties.keys().cloned().collect();
    assert!(keys.is_subset(&known), "{place}: undocumented {:?}", keys.difference(&known).collect::<Vec<_>>());
    let required = strings(&schema["required"]);
    assert!(required.is_subset(&keys), "{place}: missing {:?}", required.difference(&keys).collect::<Vec<_>>());
    if all_fields {
        assert_eq!(keys, known, "{place}: every documented field can be answered");
    }
}

/// A job as the API shows it: with every optional field, or with none.
fn job_view(everything: bool) -> JobView {
    let time = "2026-01-02T03:04:05Z".to_owned();
    let upload = UploadView::from(PresignedPut {
        url: "https://bucket.example/uploads/bulk/x".into(),
        headers: vec![("content-type".into(), "image/png".into())],
        expires_at_ms: 1_700_000_000_000,
    });
    let bbox = [[0.0, 0.0], [9.0, 0.0], [9.0, 3.0], [0.0, 3.0]];
    let word = ocr_core::OcrWord { text: "HELLO".into(), confidence: 0.9, bbox };
    let line = OcrLine { text: "HELLO".into(), confidence: 0.9, bbox, words: vec![word] };
    let result = OcrResult::image(10, 4, vec![line], 0.1);
    JobView {
        job_id: "0".repeat(32),
        status: JobStatus::Succeeded.as_str(),
        priority: Priority::Bulk.as_str(),
        content_type: ContentType::Png.as_str(),
        content_length: 10,
        attempts: 1,
        created_at: time.clone(),
        updated_at: time.clone(),
        queued_at: everything.then(|| time.clone()),
        started_at: everything.then(|| time.clone()),
        finished_at: everything.then(|| time.clone()),
        error: everything.then(|| "no upload arrived before the upload URL expired".into()),
        callback_url: everything.then(|| "https://hooks.example.com/ocr".into()),
        metadata: everything.then(|| json!({"order": 42})),
        upload: everything.then_some(upload),
        result: everything.then_some(result),
    }
}

#[test]
fn a_job_answer_has_the_documented_fields() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let full = serde_json::to_value(job_view(true)).unwrap();
    check_object(&doc, &schemas["Job"], &full, "Job", true);
    check_object(&doc, &schemas["Upload"], &full["upload"], "Upload", true);
    check_object(&doc, &schemas["Result"], &full["result"], "Result", true);
    check_object(&doc, &schemas["Line"], &full["result"]["lines"][0], "Line", true);
    assert_eq!(full["upload"]["method"], schemas["Upload"]["properties"]["method"]["const"]);
    let least = serde_json::to_value(job_view(false)).unwrap();
    check_object(&doc, &schemas["Job"], &least, "Job (no optional field)", false);
}

#[test]
fn enums_are_the_code_s_values() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for s in JobStatus::ALL {
        // Stops compiling when a status is added: add it to the list above too.
        match s {
            JobStatus::AwaitingUpload
            | JobStatus::Queued
            | JobStatus::Processing
            | JobStatus::Succeeded
            | JobStatus::Failed
            | JobStatus::Expired
            | JobStatus::Deleted => {}
        }
    }
    let set = |names: &mut dyn Iterator<Item = &'static str>| names.map(str::to_owned).collect::<BTreeSet<_>>();
    assert_eq!(
        strings(&schemas["Job"]["properties"]["status"]["enum"]),
        set(&mut JobStatus::ALL.iter().map(|s| s.as_str()))
    );
    assert_eq!(strings(&schemas["Priority"]["enum"]), set(&mut Priority::ALL.iter().map(|p| p.as_str())));
    assert_eq!(strings(&schemas["ContentType"]["enum"]), set(&mut ContentType::ALL.iter().map(|c| c.as_str())));
    assert_eq!(schemas["Priority"]["default"], Priority::default().as_str());
}
