//! The HTTP API: one axum Router for Lambda and for a local TCP port.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ocr_core::job::Idempotency;
use ocr_core::ports::StatusChange;
use ocr_core::{ContentType, Job, JobId, JobStatus, NewJob, PortError, Priority};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::config::MAX_DIRECT_UPLOAD_BYTES;
use crate::error::ApiError;
use crate::state::AppState;
use crate::view::JobView;

/// The OpenAPI 3.1 document of these routes (kept in the repo as `functions/api/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Longest accepted callback URL.
const MAX_CALLBACK_URL_LEN: usize = 2048;
/// Largest `metadata` object, serialised.
const MAX_METADATA_BYTES: usize = 4096;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/jobs", axum::routing::post(create_job))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Direct uploads carry the image; a little headroom for the framing.
        .layer(DefaultBodyLimit::max(MAX_DIRECT_UPLOAD_BYTES + 1024))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Body of `POST /v1/jobs` with `Content-Type: application/json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJobRequest {
    content_type: String,
    content_length: u64,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    callback_url: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// Query of `POST /v1/jobs` with an image body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectUploadQuery {
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    callback_url: Option<String>,
}

/// What a create request asks for, however it came.
struct JobSpec {
    content_type: ContentType,
    content_length: u64,
    priority: Priority,
    callback_url: Option<String>,
    metadata: Option<serde_json::Value>,
}

/// `POST /v1/jobs`: JSON asks for an upload URL (201); an image body is stored directly (202).
async fn create_job(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(format!("invalid query: {e}")))?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(format!(
            "the body is over {MAX_DIRECT_UPLOAD_BYTES} bytes; ask for an upload URL instead"
        )),
        _ => ApiError::MalformedJson(format!("unreadable body: {e}")),
    })?;
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let idempotency_key = idempotency_key(&headers)?;
    if media_type == "application/json" {
        if !query.is_empty() {
            return Err(ApiError::InvalidRequest("query parameters are only for direct uploads".into()));
        }
        let spec = parse_create_request(&body, state.limits.max_upload_bytes)?;
        let hash = request_hash("json", &[], &body);
        create(&state, caller, spec, idempotency_key.map(|key| Idempotency { key, request_hash: hash }), None).await
    } else if media_type.starts_with("image/") {
        let content_type: ContentType = media_type.parse().map_err(ApiError::UnsupportedMediaType)?;
        let query = parse_direct_query(query)?;
        let spec = direct_upload_spec(content_type, query, &body, state.limits.max_upload_bytes)?;
        let hash =
            request_hash(&media_type, &[spec.priority.as_str(), spec.callback_url.as_deref().unwrap_or("")], &body);
        create(&state, caller, spec, idempotency_key.map(|key| Idempotency { key, request_hash: hash }), Some(body))
            .await
    } else {
        Err(ApiError::UnsupportedMediaType(
            "send application/json to get an upload URL, or the image itself as image/jpeg, image/png, image/webp or image/tiff".into(),
        ))
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::InvalidRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into()))?;
    Ok(Some(key.to_owned()))
}

/// SHA-256 over the request's kind, its options and its body: what "the same request" means.
fn request_hash(kind: &str, options: &[&str], body: &[u8]) -> String {
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

fn parse_create_request(body: &[u8], max_upload_bytes: u64) -> Result<JobSpec, ApiError> {
    let request: CreateJobRequest = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::InvalidRequest(format!("invalid request: {e}")),
        _ => ApiError::MalformedJson(format!("malformed JSON: {e}")),
    })?;
    let content_type: ContentType = request.content_type.parse().map_err(ApiError::InvalidRequest)?;
    if request.content_length == 0 {
        return Err(ApiError::InvalidRequest("content_length must be at least 1".into()));
    }
    if request.content_length > max_upload_bytes {
        return Err(ApiError::TooLarge(format!("content_length is over the limit of {max_upload_bytes} bytes")));
    }
    let metadata = match request.metadata {
        None | Some(serde_json::Value::Null) => None,
        Some(m @ serde_json::Value::Object(_)) => {
            if m.to_string().len() > MAX_METADATA_BYTES {
                return Err(ApiError::InvalidRequest(format!("metadata is over {MAX_METADATA_BYTES} bytes")));
            }
            Some(m)
        }
        Some(_) => return Err(ApiError::InvalidRequest("metadata must be a JSON object".into())),
    };
    Ok(JobSpec {
        content_type,
        content_length: request.content_length,
        priority: request.priority.unwrap_or_default(),
        callback_url: validate_callback_url(request.callback_url)?,
        metadata,
    })
}

fn parse_direct_query(pairs: Vec<(String, String)>) -> Result<DirectUploadQuery, ApiError> {
    let mut query = DirectUploadQuery { priority: None, callback_url: None };
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "priority" => &mut query.priority,
            "callback_url" => &mut query.callback_url,
            other => return Err(ApiError::InvalidRequest(format!("unknown query parameter {other:?}"))),
        };
        if slot.replace(v).is_some() {
            return Err(ApiError::InvalidRequest(format!("query parameter {k:?} given twice")));
        }
    }
    Ok(query)
}

fn direct_upload_spec(
    content_type: ContentType,
    query: DirectUploadQuery,
    body: &[u8],
    max_upload_bytes: u64,
) -> Result<JobSpec, ApiError> {
    if body.is_empty() {
        return Err(ApiError::InvalidRequest("the image body is empty".into()));
    }
    if body.len() > MAX_DIRECT_UPLOAD_BYTES || body.len() as u64 > max_upload_bytes {
        return Err(ApiError::TooLarge(format!(
            "direct uploads are limited to {} bytes; ask for an upload URL instead",
            (MAX_DIRECT_UPLOAD_BYTES as u64).min(max_upload_bytes)
        )));
    }
    match ContentType::sniff(body) {
        Some(found) if found == content_type => {}
        Some(found) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body is {found}, not the declared {content_type}"
            )));
        }
        None => return Err(ApiError::UnsupportedMediaType(format!("the body is not a {content_type} image"))),
    }
    let priority = match query.priority {
        Some(p) => p.parse().map_err(ApiError::InvalidRequest)?,
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

/// Only the URL's form is checked here; where it may point (no private or metadata
/// addresses) is enforced by the worker after DNS resolution, when it calls it.
fn validate_callback_url(url: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(url) = url else { return Ok(None) };
    if url.len() > MAX_CALLBACK_URL_LEN {
        return Err(ApiError::InvalidRequest(format!("callback_url is over {MAX_CALLBACK_URL_LEN} characters")));
    }
    let parsed = url::Url::parse(&url).map_err(|e| ApiError::InvalidRequest(format!("callback_url: {e}")))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::InvalidRequest("callback_url must be an http(s) URL with a host".into()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::InvalidRequest("callback_url must not carry credentials".into()));
    }
    Ok(Some(url))
}

async fn create(
    state: &AppState,
    caller: Caller,
    spec: JobSpec,
    idempotency: Option<Idempotency>,
    direct_body: Option<Bytes>,
) -> Result<Response, ApiError> {
    let direct = direct_body.is_some();
    if let Some(idem) = &idempotency
        && let Some(existing) = state.store.find_by_idempotency_key(&caller.0, &idem.key).await?
    {
        return replay(state, existing, idem, direct).await;
    }
    let depth = state.depth.depth(spec.priority).await;
    if depth > state.limits.queue_depth_limit {
        tracing::warn!(priority = %spec.priority, depth, "queue too deep: refusing new job");
        return Err(ApiError::QueueFull {
            queue: spec.priority.as_str(),
            retry_after_secs: state.limits.retry_after_secs,
        });
    }
    let new = NewJob {
        id: JobId::new(),
        owner: caller.0.clone(),
        priority: spec.priority,
        content_type: spec.content_type,
        content_length: spec.content_length,
        callback_url: spec.callback_url,
        metadata: spec.metadata,
        idempotency: idempotency.clone(),
        created_at_ms: state.clock.now_ms(),
    };
    let job = match state.store.insert(new).await {
        Ok(job) => job,
        // A concurrent request with the same key won the insert: answer as its replay.
        Err(PortError::Conflict(_)) if idempotency.is_some() => {
            let idem = idempotency.as_ref().expect("checked");
            let existing = state
                .store
                .find_by_idempotency_key(&caller.0, &idem.key)
                .await?
                .ok_or_else(|| ApiError::Unavailable("idempotency key conflict without a job".into()))?;
            return replay(state, existing, idem, direct).await;
        }
        Err(e) => return Err(e.into()),
    };
    let span = tracing::info_span!("create_job", job_id = %job.id, priority = %job.priority, direct);
    let _enter = span.enter();
    match direct_body {
        Some(body) => {
            if let Err(e) = state.objects.put(&job.object_key(), job.content_type, body).await {
                // The caller will retry; leave no job behind that can never be uploaded.
                tracing::error!(error = %e, "storing the image failed");
                let _ = state.store.remove(&job.id).await;
                return Err(ApiError::Unavailable(format!("storing the image failed: {e}")));
            }
            tracing::info!("job created with its image");
            Ok(job_response(StatusCode::ACCEPTED, JobView::new(&job)))
        }
        None => match upload_view(state, &job).await {
            Ok(view) => {
                tracing::info!("job created; upload URL issued");
                Ok(job_response(StatusCode::CREATED, view))
            }
            Err(e) => {
                let _ = state.store.remove(&job.id).await;
                Err(e)
            }
        },
    }
}

/// When a job's upload window closes: one URL lifetime after its creation. A replayed
/// request gets a URL for what is left of that window, never a new one.
fn upload_deadline_ms(state: &AppState, job: &Job) -> i64 {
    job.created_at_ms + state.limits.presign_expiry.as_millis() as i64
}

/// The job with a presigned URL for its upload, valid until the upload window closes.
async fn upload_view(state: &AppState, job: &Job) -> Result<JobView, ApiError> {
    let left_ms = upload_deadline_ms(state, job) - state.clock.now_ms();
    if left_ms <= 0 {
        return Ok(JobView::new(&expire_if_due(state, job.clone()).await?));
    }
    let presigned = state
        .objects
        .presign_put(&job.object_key(), job.content_type, job.content_length, Duration::from_millis(left_ms as u64))
        .await
        .map_err(|e| ApiError::Unavailable(format!("presigning failed: {e}")))?;
    let mut view = JobView::new(job);
    view.upload = Some(presigned.into());
    Ok(view)
}

/// Answers a repeated request as the first one was answered: same job, same status code.
/// A URL is presigned again (the first one's signature is never stored).
async fn replay(state: &AppState, job: Job, idem: &Idempotency, direct: bool) -> Result<Response, ApiError> {
    if job.idempotency.as_ref().is_none_or(|i| i.request_hash != idem.request_hash) {
        return Err(ApiError::IdempotencyConflict);
    }
    tracing::info!(job_id = %job.id, "idempotent replay");
    if direct {
        return Ok(job_response(StatusCode::ACCEPTED, JobView::new(&job)));
    }
    let view =
        if job.status == JobStatus::AwaitingUpload { upload_view(state, &job).await? } else { JobView::new(&job) };
    Ok(job_response(StatusCode::CREATED, view))
}

fn job_response(status: StatusCode, view: JobView) -> Response {
    let location = format!("/v1/jobs/{}", view.job_id);
    let mut response = (status, axum::Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// The caller's own job, or 404 — for another caller's job too, so ids reveal nothing.
async fn owned_job(state: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    let id: JobId = id.parse().map_err(|_| ApiError::NotFound)?;
    match state.store.get(&id).await? {
        Some(job) if job.owner == caller.0 => Ok(job),
        _ => Err(ApiError::NotFound),
    }
}

/// A job still awaiting its upload after the window (plus a margin for the S3 event to
/// arrive) is marked expired. The upload's own event may still queue it (see `upload`).
async fn expire_if_due(state: &AppState, job: Job) -> Result<Job, ApiError> {
    const EVENT_MARGIN_MS: i64 = 60_000;
    let now = state.clock.now_ms();
    if job.status != JobStatus::AwaitingUpload || now < upload_deadline_ms(state, &job) + EVENT_MARGIN_MS {
        return Ok(job);
    }
    let change = StatusChange { at_ms: now, error: Some("no upload arrived before the upload URL expired".into()) };
    state.store.set_status(&job.id, JobStatus::AwaitingUpload, JobStatus::Expired, change).await?;
    Ok(state.store.get(&job.id).await?.unwrap_or(job))
}

/// `GET /v1/jobs/{id}`: status, times, attempts, error, and the result when there is one.
async fn get_job(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = expire_if_due(&state, owned_job(&state, &caller, &id).await?).await?;
    let mut view = JobView::new(&job);
    if job.status == JobStatus::Succeeded {
        view.result = state.store.get_result(&job.id).await?;
    }
    Ok(axum::Json(view).into_response())
}

/// `DELETE /v1/jobs/{id}`: removes the image and the result; the job then reads as deleted.
async fn delete_job(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = owned_job(&state, &caller, &id).await?;
    if job.status != JobStatus::Deleted {
        state.objects.delete(&job.object_key()).await?;
        state.store.mark_deleted(&job.id, state.clock.now_ms()).await?;
        tracing::info!(job_id = %job.id, "job deleted");
    }
    let job = state.store.get(&job.id).await?.ok_or(ApiError::NotFound)?;
    Ok(axum::Json(JobView::new(&job)).into_response())
}
