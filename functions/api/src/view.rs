//! What the API shows of a job.

use ocr_core::ports::PresignedPut;
use ocr_core::{Job, JobStatus, OcrResult};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// RFC 3339 UTC time from epoch milliseconds.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

#[derive(Debug, Serialize)]
pub struct UploadView {
    pub url: String,
    pub method: &'static str,
    pub headers: serde_json::Map<String, serde_json::Value>,
    pub expires_at: String,
}

impl From<PresignedPut> for UploadView {
    fn from(p: PresignedPut) -> Self {
        UploadView {
            url: p.url,
            method: "PUT",
            headers: p.headers.into_iter().map(|(k, v)| (k, v.into())).collect(),
            expires_at: rfc3339(p.expires_at_ms),
        }
    }
}

/// A job as the API returns it.
#[derive(Debug, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub status: &'static str,
    pub priority: &'static str,
    pub content_type: &'static str,
    pub content_length: u64,
    pub attempts: u32,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<OcrResult>,
}

impl JobView {
    /// A job past the retention period: `expired`, with nothing the caller sent or got (the
    /// purge removes its result and then the job itself).
    pub fn past_retention(job: &Job, retention_days: u32) -> Self {
        JobView {
            status: JobStatus::Expired.as_str(),
            error: Some(format!("past the retention period of {retention_days} days: its image and result are gone")),
            callback_url: None,
            metadata: None,
            ..JobView::new(job)
        }
    }

    pub fn new(job: &Job) -> Self {
        JobView {
            job_id: job.id.to_string(),
            status: job.status.as_str(),
            priority: job.priority.as_str(),
            content_type: job.content_type.as_str(),
            content_length: job.content_length,
            attempts: job.attempts,
            created_at: rfc3339(job.created_at_ms),
            updated_at: rfc3339(job.updated_at_ms),
            queued_at: job.queued_at_ms.map(rfc3339),
            started_at: job.started_at_ms.map(rfc3339),
            finished_at: job.finished_at_ms.map(rfc3339),
            error: job.error.clone(),
            callback_url: job.callback_url.clone(),
            metadata: job.metadata.clone(),
            upload: None,
            result: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
