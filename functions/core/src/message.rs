//! The message a job queue carries: versioned, so workers can refuse what they don't know.

use serde::{Deserialize, Serialize};

use crate::content::ContentType;
use crate::id::JobId;
use crate::job::{Job, Priority};

/// Version written by this build.
pub const MESSAGE_VERSION: u32 = 1;

/// A queued job (version 1). Everything a worker needs without reading the database first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    /// Format version; always [`MESSAGE_VERSION`] when written by this build.
    pub v: u32,
    pub job_id: JobId,
    pub priority: Priority,
    pub bucket: String,
    pub key: String,
    pub content_type: ContentType,
    /// Size of the object in bytes, as checked by the on-upload handler.
    pub size: u64,
    /// Milliseconds since the Unix epoch when the message was sent.
    pub enqueued_at_ms: i64,
    /// The owner's [`crate::quota::fairness_key`]: sent beside the body (SQS `MessageGroupId`),
    /// never in it, so workers of every version read the body as before. `None` on a received
    /// message.
    #[serde(skip)]
    pub fairness_key: Option<String>,
}

/// A message body that is not a job message this build understands.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("unsupported job message version {0}")]
    UnsupportedVersion(u32),
    #[error("malformed job message: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl MessageError {
    /// A message of a version newer than this build writes: a newer worker (a rolling deploy
    /// under way) can read it.
    pub fn is_newer(&self) -> Option<u32> {
        match self {
            MessageError::UnsupportedVersion(v) if *v > MESSAGE_VERSION => Some(*v),
            _ => None,
        }
    }
}

/// The job a message body names, read leniently: any version, unknown fields and all, so that
/// a message this build cannot parse may still end its job (the dead-letter sweep).
pub fn job_id_of(body: &str) -> Option<JobId> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value.get("job_id")?.as_str()?.parse().ok()
}

impl JobMessage {
    pub fn for_job(job: &Job, bucket: &str, size: u64, now_ms: i64) -> Self {
        JobMessage {
            v: MESSAGE_VERSION,
            job_id: job.id,
            priority: job.priority,
            bucket: bucket.to_owned(),
            key: job.object_key(),
            content_type: job.content_type,
            size,
            enqueued_at_ms: now_ms,
            fairness_key: Some(crate::quota::fairness_key(&job.owner)),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a job message always serialises")
    }

    /// Parses a message body, checking the version before the fields so that a
    /// future version reads as "unsupported", not as "malformed".
    pub fn parse(body: &str) -> Result<Self, MessageError> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } = serde_json::from_str(body)?;
        if v != MESSAGE_VERSION {
            return Err(MessageError::UnsupportedVersion(v));
        }
        Ok(serde_json::from_str(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JobMessage {
        JobMessage {
            v: 1,
            job_id: JobId::new(),
            priority: Priority::Express,
            bucket: "b".into(),
            key: "uploads/express/x".into(),
            content_type: ContentType::Png,
            size: 42,
            enqueued_at_ms: 1_700_000_000_000,
            fairness_key: None,
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let json = m.to_json();
        assert!(json.contains("\"v\":1"));
        assert!(json.contains("\"content_type\":\"image/png\""));
        assert_eq!(JobMessage::parse(&json).unwrap(), m);
        // The fairness key travels beside the body, never in it.
        let keyed = JobMessage { fairness_key: Some("c-1".into()), ..m.clone() };
        assert_eq!(keyed.to_json(), json);
        let mut v = serde_json::to_value(&m).unwrap();
        v["fairness_key"] = "c-1".into();
        assert!(JobMessage::parse(&v.to_string()).is_err(), "not a body field");
    }

    #[test]
    fn names_the_job_of_any_version_when_it_can() {
        let mut v = serde_json::to_value(sample()).unwrap();
        let id = sample_id(&v);
        v["v"] = 2.into();
        v["pages"] = 3.into();
        let body = v.to_string();
        let err = JobMessage::parse(&body).unwrap_err();
        assert_eq!(err.is_newer(), Some(2));
        assert_eq!(job_id_of(&body), Some(id));
        v["v"] = 0.into();
        assert_eq!(JobMessage::parse(&v.to_string()).unwrap_err().is_newer(), None, "older is not newer");
        assert_eq!(job_id_of("not json"), None);
        assert_eq!(job_id_of(r#"{"job_id": "nope"}"#), None);
    }

    fn sample_id(v: &serde_json::Value) -> JobId {
        v["job_id"].as_str().unwrap().parse().unwrap()
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["v"] = 2.into();
        assert!(matches!(JobMessage::parse(&v.to_string()), Err(MessageError::UnsupportedVersion(2))));
        assert!(matches!(JobMessage::parse("{}"), Err(MessageError::Malformed(_))));
        assert!(matches!(JobMessage::parse("not json"), Err(MessageError::Malformed(_))));
    }
}
