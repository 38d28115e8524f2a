//! The GPU worker.
//!
//! ```text
//! receive ──(1)──▶ prefetch ──(1)──▶ infer (own thread) ──(1)──▶ persist ──▶ webhooks
//!  SQS ≤BATCH_MAX    S3 get + decode     engine batch call      MySQL, then
//!  express first,    (bounded)                                  DeleteMessageBatch
//!  bulk's share
//! ```
//!
//! Stages are joined by channels of capacity 1 and each stage reserves its slot
//! before starting on the next batch, so batch N+1 is received and decoded while
//! batch N is in the engine, and a slow stage holds back the ones before it
//! instead of piling up images in memory. A heartbeat extends the visibility of
//! every message in flight. Nothing is deleted from SQS before its result is
//! committed. Beside the pipeline, two sweeps: owed webhooks (`webhook::sweep`) and
//! jobs whose message was dead-lettered without a final result (`dead_letters`).

pub mod cloudwatch;
pub mod config;
pub mod dead_letters;
pub mod dlq;
pub mod heartbeat;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod recognizer;
pub mod retention;
pub mod ssrf;
pub mod webhook;

pub use config::WorkerConfig;

pub use ocr_core::ports::now_ms;

/// Sleeps for `d` unless `stop` turns true first; returns whether it did. The periodic tasks
/// (heartbeat, sweeps, metrics, lifecycle) wait with it so that a drain ends them at once.
pub async fn sleep_or_stop(d: std::time::Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    }
}
pub use pipeline::{Pipeline, PipelineDeps, Settings};
pub use recognizer::{EngineRecognizer, ImageFailure, Recognizer};
