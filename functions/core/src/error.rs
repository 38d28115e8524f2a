//! Errors shared by the ports.

use crate::job::JobStatus;

/// A failure of a port (store, queue, object store). Says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The service could not be reached or answered with a transient error;
    /// the same call may succeed later.
    #[error("{service} unavailable: {message}")]
    Unavailable { service: &'static str, message: String },
    /// The thing asked for does not exist.
    #[error("not found")]
    NotFound,
    /// The request conflicts with the stored state (e.g. a unique key).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The object is no longer the version asked for (`If-Match` failed): it was written again.
    #[error("the object changed")]
    Changed,
    /// A permanent failure: retrying the same call will fail the same way.
    #[error("{service} failed: {message}")]
    Permanent { service: &'static str, message: String },
}

impl PortError {
    pub fn unavailable(service: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Unavailable { service, message: message.to_string() }
    }

    pub fn permanent(service: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Permanent { service, message: message.to_string() }
    }

    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// A status change the job's life cycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a job cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: JobStatus,
    pub to: JobStatus,
}

impl From<TransitionError> for PortError {
    /// A store refuses a change the life cycle does not allow: a bug in the caller, which no
    /// retry fixes.
    fn from(e: TransitionError) -> Self {
        PortError::permanent("job life cycle", e)
    }
}
