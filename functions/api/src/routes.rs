//! The HTTP API: one axum Router for Lambda and for a local TCP port.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ocr_core::job::Idempotency;
use ocr_core::ports::StatusChange;
use ocr_core::quota::Admission;
use ocr_core::render::{self, Format};
use ocr_core::request::{CreateLimits, JobSpec, RawCreateRequest, check_callback_target, parse_create};
use ocr_core::{Job, JobId, JobStatus, NewJob, PortError};

use tracing::Instrument;

use crate::auth::Caller;
use crate::config::MAX_DIRECT_UPLOAD_BYTES;
use crate::error::ApiError;
use crate::state::AppState;
use crate::view::JobView;
use crate::wait::{MAX_WAIT_SECS, SLOT_MARGIN, WaitSlot};

/// The OpenAPI 3.1 document of these routes (kept in the repo as `functions/api/openapi.json`).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/jobs", axum::routing::post(create_job))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{id}/result", get(get_result))
        .route("/v1/webhook-secret", get(crate::signing::get_secret))
        .route("/v1/webhook-secret/rotate", axum::routing::post(crate::signing::rotate_secret))
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

/// `POST /v1/jobs`: JSON asks for an upload URL (201); an image body is stored directly (202).
/// The checks themselves are [`ocr_core::request::parse_create`] and, for a callback URL,
/// [`ocr_core::request::check_callback_target`].
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
    let raw = RawCreateRequest {
        content_type: headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes),
        idempotency_key: headers.get("idempotency-key").map(HeaderValue::as_bytes),
        query: &query,
        body: &body,
    };
    let limits =
        CreateLimits { max_upload_bytes: state.limits.max_upload_bytes, max_direct_bytes: MAX_DIRECT_UPLOAD_BYTES };
    let request = parse_create(&raw, &limits)?;
    if let Some(url) = &request.spec.callback_url {
        check_callback_target(url, &state.limits.webhook_allow_hosts)?;
    }
    let direct_body = request.direct.then_some(body);
    create(&state, caller, request.spec, request.idempotency, direct_body).await
}

async fn create(
    state: &AppState,
    caller: Caller,
    spec: JobSpec,
    idempotency: Option<Idempotency>,
    direct_body: Option<Bytes>,
) -> Result<Response, ApiError> {
    if let Some(idem) = &idempotency
        && let Some(existing) = state.ports.store.find_by_idempotency_key(&caller.0, &idem.key).await?
    {
        return replay(state, &caller, existing, idem, direct_body).await;
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
        created_at_ms: state.ports.clock.now_ms(),
    };
    let job = match state.ports.store.insert_within(new, &state.limits.caller).await {
        Ok(Admission::Admitted(job)) => *job,
        Ok(Admission::Refused(refusal)) => {
            tracing::warn!(reason = %refusal, "caller over its quota: refusing new job");
            return Err(ApiError::Quota(refusal));
        }
        // A concurrent request with the same key won the insert: answer as its replay.
        Err(PortError::Conflict(_)) if idempotency.is_some() => {
            let idem = idempotency.as_ref().expect("checked");
            let existing = state
                .ports
                .store
                .find_by_idempotency_key(&caller.0, &idem.key)
                .await?
                .ok_or_else(|| ApiError::Unavailable("idempotency key conflict without a job".into()))?;
            return replay(state, &caller, existing, idem, direct_body).await;
        }
        Err(e) => return Err(e.into()),
    };
    let span =
        tracing::info_span!("create_job", job_id = %job.id, priority = %job.priority, direct = direct_body.is_some());
    // Instrumented, not entered: a guard held across an await would lend this job's id to
    // whatever else runs on the thread meanwhile.
    async {
        match direct_body {
            Some(body) => store_direct_upload(state, &job, body).await,
            None => match upload_view(state, &job).await {
                Ok(view) => {
                    tracing::info!("job created; upload URL issued");
                    Ok(job_response(StatusCode::CREATED, view))
                }
                Err(e) => {
                    let _ = state.ports.store.remove(&job.id).await;
                    Err(e)
                }
            },
        }
    }
    .instrument(span)
    .await
}

/// A direct upload's image goes to the job's key; the S3 event then queues it like any upload.
/// When storing fails the caller gets 500 (retryable). Without an idempotency key no retry can
/// reach this job, so it goes; with one it stays, and the retry stores the image into it.
async fn store_direct_upload(state: &AppState, job: &Job, body: Bytes) -> Result<Response, ApiError> {
    if let Err(e) = state.ports.objects.put(&job.object_key(), job.content_type.as_str(), body).await {
        tracing::error!(error = %e, "storing the image failed");
        if job.idempotency.is_none() {
            let _ = state.ports.store.remove(&job.id).await;
        }
        return Err(ApiError::Unavailable(format!("storing the image failed: {e}")));
    }
    tracing::info!("job created with its image");
    Ok(job_response(StatusCode::ACCEPTED, JobView::new(job)))
}

/// When a job's upload window closes: one URL lifetime after its creation. A replayed
/// request gets a URL for what is left of that window, never a new one.
fn upload_deadline_ms(state: &AppState, job: &Job) -> i64 {
    job.created_at_ms + state.limits.presign_expiry.as_millis() as i64
}

/// The job with a presigned URL for its upload, valid until the upload window closes.
async fn upload_view(state: &AppState, job: &Job) -> Result<JobView, ApiError> {
    let left_ms = upload_deadline_ms(state, job) - state.ports.clock.now_ms();
    if left_ms <= 0 {
        return Ok(JobView::new(&expire_if_due(state, job.clone()).await?));
    }
    let presigned = state
        .ports
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
async fn replay(
    state: &AppState,
    caller: &Caller,
    job: Job,
    idem: &Idempotency,
    direct_body: Option<Bytes>,
) -> Result<Response, ApiError> {
    // The store looked the key up for this caller; a job of anyone else is never answered
    // (whatever the database's collation thought equal).
    if job.owner != caller.0 {
        return Err(ApiError::IdempotencyConflict);
    }
    if job.idempotency.as_ref().is_none_or(|i| i.key != idem.key || i.request_hash != idem.request_hash) {
        return Err(ApiError::IdempotencyConflict);
    }
    tracing::info!(job_id = %job.id, "idempotent replay");
    match direct_body {
        // The first request may have failed to store the image, or may still be storing it:
        // 202 promises the image is stored, so store it (the same bytes, the same key) first.
        Some(body) if matches!(job.status, JobStatus::AwaitingUpload | JobStatus::Expired) => {
            store_direct_upload(state, &job, body).await
        }
        Some(_) => Ok(job_response(StatusCode::ACCEPTED, JobView::new(&job))),
        None if job.status == JobStatus::AwaitingUpload => {
            Ok(job_response(StatusCode::CREATED, upload_view(state, &job).await?))
        }
        None => Ok(job_response(StatusCode::CREATED, JobView::new(&job))),
    }
}

fn job_response(status: StatusCode, view: JobView) -> Response {
    let location = format!("/v1/jobs/{}", view.job_id);
    let mut response = (status, axum::Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// The caller's own job, or 404 — for another caller's job too, so ids reveal nothing. A path
/// segment axum cannot even decode (not UTF-8) is the same 404, not axum's plain-text 400.
async fn owned_job(
    state: &AppState,
    caller: &Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Job, ApiError> {
    let Ok(Path(id)) = id else { return Err(ApiError::NotFound) };
    let id: JobId = id.parse().map_err(|_| ApiError::NotFound)?;
    match state.ports.store.get(&id).await? {
        Some(job) if job.owner == caller.0 => Ok(job),
        _ => Err(ApiError::NotFound),
    }
}

/// A job still awaiting its upload after the window (plus a margin for the S3 event to
/// arrive) is marked expired. The upload's own event may still queue it (see `upload`).
async fn expire_if_due(state: &AppState, job: Job) -> Result<Job, ApiError> {
    const EVENT_MARGIN_MS: i64 = 60_000;
    let now = state.ports.clock.now_ms();
    if job.status != JobStatus::AwaitingUpload || now < upload_deadline_ms(state, &job) + EVENT_MARGIN_MS {
        return Ok(job);
    }
    let change = StatusChange {
        at_ms: now,
        error: Some("no upload arrived before the upload URL expired".into()),
        ..Default::default()
    };
    state.ports.store.set_status(&job.id, JobStatus::AwaitingUpload, JobStatus::Expired, change).await?;
    Ok(state.ports.store.get(&job.id).await?.unwrap_or(job))
}

/// Whether the job is older than `RETENTION_DAYS` (and not deleted): it reads `expired`, with no
/// result, whatever its row still says (the purge has not reached it yet).
fn past_retention(state: &AppState, job: &Job) -> bool {
    let retention_ms = i64::from(state.limits.retention_days) * 86_400_000;
    job.status != JobStatus::Deleted && state.ports.clock.now_ms() - job.created_at_ms >= retention_ms
}

/// `GET /v1/jobs/{id}`: status, times, attempts, error, and the result when there is one.
/// With `?wait=SECONDS` it answers once the job has ended or the wait is over, whichever comes
/// first (see [`wait_for_end`]); another caller's job is the same immediate 404 as without.
async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let wait = wait_param(query)?;
    let mut job = expire_if_due(&state, owned_job(&state, &caller, id).await?).await?;
    // A job past retention already reads `expired`: nothing to wait for.
    if !wait.is_zero() && !job.status.is_terminal() && !past_retention(&state, &job) {
        job = wait_for_end(&state, job, wait).await?;
    }
    if past_retention(&state, &job) {
        return Ok(axum::Json(JobView::past_retention(&job, state.limits.retention_days)).into_response());
    }
    let mut view = JobView::new(&job);
    if job.status == JobStatus::Succeeded {
        view.result = state.ports.store.get_result(&job.id).await?;
    }
    Ok(axum::Json(view).into_response())
}

/// `GET /v1/jobs/{id}/result?format=json|text|hocr|alto|pdf`: a succeeded job's result in one
/// of the output formats (JSON by default: the same object as the job's `result`). Another
/// caller's job is 404 like an unknown one; a job without a result is 409 `no_result`.
async fn get_result(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let format = format_param(query)?;
    let job = expire_if_due(&state, owned_job(&state, &caller, id).await?).await?;
    if past_retention(&state, &job) {
        return Err(ApiError::NoResult(format!(
            "the job's result is past its {} days of retention",
            state.limits.retention_days
        )));
    }
    if job.status != JobStatus::Succeeded {
        return Err(ApiError::NoResult(format!(
            "the job is {}; only a succeeded job has a result",
            job.status.as_str()
        )));
    }
    let Some(result) = state.ports.store.get_result(&job.id).await? else {
        return Err(ApiError::NoResult("the job's result is gone".into()));
    };
    let name = format!("{}.{}", job.id, format.extension());
    let body: Vec<u8> = match format {
        Format::Json => serde_json::to_vec(&result).map_err(|e| ApiError::Internal(format!("result JSON: {e}")))?,
        Format::Text => render::text(&result).into_bytes(),
        Format::Hocr => render::hocr(&result, &job.id.to_string()).into_bytes(),
        Format::Alto => render::alto(&result, &job.id.to_string()).into_bytes(),
        Format::Pdf => {
            let upload = state.ports.objects.get(&job.object_key(), None).await?;
            let content_type = job.content_type;
            tokio::task::spawn_blocking(move || searchable_pdf(&upload, &result, content_type))
                .await
                .map_err(|e| ApiError::Internal(format!("searchable PDF task: {e}")))??
        }
    };
    let disposition = format!("inline; filename=\"{name}\"");
    if body.len() > state.limits.max_inline_output {
        return stored_output(&state, &job, format, body, &disposition).await;
    }
    Ok(([(header::CONTENT_TYPE, format.media_type().to_owned()), (header::CONTENT_DISPOSITION, disposition)], body)
        .into_response())
}

/// The searchable PDF of an upload. A PDF is itself with the words added as invisible text:
/// its pages stay as they are (vector text and all), no renderer needed. An image is drawn
/// under its text.
fn searchable_pdf(
    upload: &[u8],
    result: &ocr_core::OcrResult,
    content_type: ocr_core::ContentType,
) -> Result<Vec<u8>, ApiError> {
    if content_type == ocr_core::ContentType::Pdf {
        return ocr_core::pdf::add_text_layer(upload, result).map_err(|e| {
            ApiError::NoResult(format!("no searchable PDF can be made of this upload: {e}; ask for hocr or alto"))
        });
    }
    let sizes: Vec<(u32, u32)> = result.pages.iter().map(|p| (p.width, p.height)).collect();
    let images = crate::page_image::page_images(upload, &sizes)?;
    Ok(render::searchable_pdf(result, &images, crate::page_image::PDF_DPI))
}

/// How long the URL an output too large to answer inline is redirected to stays valid.
const OUTPUT_URL_EXPIRY: Duration = Duration::from_secs(300);

/// An output too large for a response (a Lambda response carries 6 MB, a binary body base64-
/// encoded): stored under `outputs/` and answered `303 See Other` with a short-lived URL of it.
/// The bucket's lifecycle removes it after a day, deleting the job at once.
async fn stored_output(
    state: &AppState,
    job: &Job,
    format: Format,
    body: Vec<u8>,
    disposition: &str,
) -> Result<Response, ApiError> {
    let key = ocr_core::job::output_key(&job.id, format.extension());
    let bytes = body.len();
    state.ports.objects.put(&key, format.media_type(), body.into()).await?;
    // A DELETE that came meanwhile may have removed the job's outputs before this one was
    // stored: look again, and take it back if so.
    let current = state.ports.store.get(&job.id).await?;
    if current.is_none_or(|j| j.status == JobStatus::Deleted) {
        state.ports.objects.delete(&key).await?;
        return Err(ApiError::NotFound);
    }
    let url = state.ports.objects.presign_get(&key, OUTPUT_URL_EXPIRY, disposition).await?;
    // Never the URL: its signature is a credential.
    tracing::info!(job_id = %job.id, format = format.as_str(), bytes, "output too large to answer inline: redirected");
    Ok((StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response())
}

/// `?format=` of `GET /v1/jobs/{id}/result`; absent: JSON. Other query parameters are ignored.
fn format_param(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Format, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidParameter(format!("invalid query: {e}")))?;
    let mut formats = query.iter().filter(|(name, _)| name == "format").map(|(_, value)| value);
    let Some(value) = formats.next() else { return Ok(Format::Json) };
    if formats.next().is_some() {
        return Err(ApiError::InvalidParameter("format given more than once".into()));
    }
    value.parse().map_err(ApiError::InvalidParameter)
}

/// `?wait=` of `GET /v1/jobs/{id}`: whole seconds from 0 to [`MAX_WAIT_SECS`]; absent: 0.
/// Other query parameters are ignored, as they were before `wait` existed.
fn wait_param(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Duration, ApiError> {
    let invalid = || ApiError::InvalidParameter(format!("wait must be whole seconds from 0 to {MAX_WAIT_SECS}"));
    let Query(query) = query.map_err(|e| ApiError::InvalidParameter(format!("invalid query: {e}")))?;
    let mut waits = query.iter().filter(|(name, _)| name == "wait").map(|(_, value)| value);
    let Some(value) = waits.next() else { return Ok(Duration::ZERO) };
    if waits.next().is_some() {
        return Err(ApiError::InvalidParameter("wait given more than once".into()));
    }
    // Digits only: no sign, no fraction, no spaces.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match value.parse::<u64>() {
        Ok(secs) if secs <= MAX_WAIT_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(invalid()),
    }
}

/// Holds the request until the job ends or `wait` is over, then reads the job again (as it is
/// then, ended or not). The process's hub checks every waited-on job in one read a tick, so a
/// waiter costs no query of its own. A waiter also takes a place counted across every process
/// (`WAIT_MAX_TOTAL` in all, `WAIT_MAX_PER_CALLER` of one caller: on Lambda each waiting
/// request holds an environment of the API function), given back when the wait is over. When
/// the hub is full (`WAIT_MAX_WAITERS`), no place is left, or taking one fails, the job is
/// answered at once as it is, like a plain GET.
async fn wait_for_end(state: &AppState, job: Job, wait: Duration) -> Result<Job, ApiError> {
    if !state.limits.wait_caps.allow_waiting() {
        return Ok(job);
    }
    let Some(waiter) = state.waits.register(job.id) else {
        tracing::warn!(job_id = %job.id, max = state.waits.settings().max_waiters, "too many waiting requests: answering at once");
        return Ok(job);
    };
    let Some(slot) = take_place(state, &job, wait).await else { return Ok(job) };
    let ended = waiter.ended_within(wait).await;
    slot.release().await;
    tracing::debug!(job_id = %job.id, ended, "wait over");
    // The owner never changes, so the job stays the caller's; gone since: 404 as any unknown id.
    let job = state.ports.store.get(&job.id).await?.ok_or(ApiError::NotFound)?;
    expire_if_due(state, job).await
}

/// A place among the requests waiting across every process for the caller's wait on `job`, or
/// `None` (logged) when a cap is reached or the places cannot be counted.
async fn take_place(state: &AppState, job: &Job, wait: Duration) -> Option<WaitSlot> {
    let caps = state.limits.wait_caps;
    let now = state.ports.clock.now_ms();
    let until = now + (wait + SLOT_MARGIN).as_millis() as i64;
    // The caller is the job's owner (checked before), as stored.
    let slots = &state.ports.wait_slots;
    match slots.acquire(&job.owner, job.id, until, now, caps.max_total, caps.max_per_caller).await {
        Ok(Some(token)) => Some(WaitSlot::new(slots.clone(), token)),
        Ok(None) => {
            tracing::warn!(
                job_id = %job.id, max_total = caps.max_total, max_per_caller = caps.max_per_caller,
                "too many waiting requests in all or of this caller: answering at once"
            );
            None
        }
        Err(e) => {
            tracing::warn!(job_id = %job.id, error = %e, "taking a waiting place failed: answering at once");
            None
        }
    }
}

/// `DELETE /v1/jobs/{id}`: removes the image and the result; the job then reads as deleted.
async fn delete_job(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let job = owned_job(&state, &caller, id).await?;
    if job.status != JobStatus::Deleted {
        state.ports.objects.delete(&job.object_key()).await?;
        state.ports.store.mark_deleted(&job.id, state.ports.clock.now_ms()).await?;
        tracing::info!(job_id = %job.id, "job deleted");
    }
    // Stored outputs after the mark: a result request storing one meanwhile then finds the job
    // deleted and takes it back. Again on a repeated DELETE, in case this one failed here.
    for format in Format::ALL {
        state.ports.objects.delete(&ocr_core::job::output_key(&job.id, format.extension())).await?;
    }
    let job = state.ports.store.get(&job.id).await?.ok_or(ApiError::NotFound)?;
    Ok(axum::Json(JobView::new(&job)).into_response())
}
