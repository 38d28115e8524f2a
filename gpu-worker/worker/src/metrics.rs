//! Prometheus metrics (`/metrics`) and the numbers CloudWatch gets every minute.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use ocr_core::Priority;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabel {
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// All of the worker's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub jobs_succeeded: Family<PriorityLabel, Counter>,
    pub jobs_failed: Family<PriorityLabel, Counter>,
    pub attempt_errors: Family<PriorityLabel, Counter>,
    pub batch_size: Histogram,
    pub stage_duration: Family<StageLabel, Histogram>,
    pub queue_to_result: Histogram,
    pub engine_busy_seconds: Counter<f64, AtomicU64>,
    pub engine_busy_ratio: Gauge<f64, AtomicU64>,
    pub webhooks: Family<OutcomeLabel, Counter>,
    pub in_flight: Gauge,
    started: Instant,
    window: Arc<Window>,
}

/// What happened since CloudWatch last got numbers.
#[derive(Default)]
struct Window {
    jobs: AtomicU64,
    failed: AtomicU64,
    latency_ms_sum: AtomicU64,
}

/// One CloudWatch sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSample {
    pub jobs: u64,
    pub failed: u64,
    pub mean_latency_secs: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ocr");
        let jobs_succeeded = Family::<PriorityLabel, Counter>::default();
        registry.register("jobs_succeeded", "Jobs whose result was written", jobs_succeeded.clone());
        let jobs_failed = Family::<PriorityLabel, Counter>::default();
        registry.register("jobs_failed", "Jobs marked failed after their last attempt", jobs_failed.clone());
        let attempt_errors = Family::<PriorityLabel, Counter>::default();
        registry.register(
            "job_attempt_errors",
            "Attempts that failed and were left for a retry",
            attempt_errors.clone(),
        );
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0]);
        registry.register("batch_size", "Jobs per engine batch", batch_size.clone());
        let stage_duration = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 16))
        });
        registry.register("stage_duration_seconds", "Time per batch in each pipeline stage", stage_duration.clone());
        let queue_to_result = Histogram::new(exponential_buckets(0.05, 2.0, 16));
        registry.register(
            "queue_to_result_duration_seconds",
            "From the job being queued to its result being committed",
            queue_to_result.clone(),
        );
        let engine_busy_seconds = Counter::<f64, AtomicU64>::default();
        registry.register("engine_busy_seconds", "Time spent inside the engine", engine_busy_seconds.clone());
        let engine_busy_ratio = Gauge::<f64, AtomicU64>::default();
        registry.register("engine_busy_ratio", "Engine time / wall time since start", engine_busy_ratio.clone());
        let webhooks = Family::<OutcomeLabel, Counter>::default();
        registry.register("webhooks", "Webhook calls by outcome", webhooks.clone());
        let in_flight = Gauge::default();
        registry.register("in_flight_messages", "Messages held by this worker", in_flight.clone());
        Metrics {
            registry: Arc::new(registry),
            jobs_succeeded,
            jobs_failed,
            attempt_errors,
            batch_size,
            stage_duration,
            queue_to_result,
            engine_busy_seconds,
            engine_busy_ratio,
            webhooks,
            in_flight,
            started: Instant::now(),
            window: Arc::default(),
        }
    }

    pub fn stage(&self, stage: &'static str, took: Duration) {
        self.stage_duration.get_or_create(&StageLabel { stage }).observe(took.as_secs_f64());
    }

    pub fn engine_busy(&self, took: Duration) {
        self.engine_busy_seconds.inc_by(took.as_secs_f64());
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        self.engine_busy_ratio.set(self.engine_busy_seconds.get() / wall);
    }

    pub fn succeeded(&self, priority: Priority, latency: Option<Duration>) {
        self.jobs_succeeded.get_or_create(&PriorityLabel { priority: priority.as_str() }).inc();
        self.window.jobs.fetch_add(1, Ordering::Relaxed);
        if let Some(l) = latency {
            self.queue_to_result.observe(l.as_secs_f64());
            self.window.latency_ms_sum.fetch_add(l.as_millis() as u64, Ordering::Relaxed);
        }
    }

    pub fn failed(&self, priority: Priority) {
        self.jobs_failed.get_or_create(&PriorityLabel { priority: priority.as_str() }).inc();
        self.window.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt failed and its job will be tried again.
    pub fn attempt_error(&self, priority: Priority) {
        self.attempt_errors.get_or_create(&PriorityLabel { priority: priority.as_str() }).inc();
    }

    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Numbers since the previous call, then starts a new window.
    pub fn take_window(&self) -> WindowSample {
        let jobs = self.window.jobs.swap(0, Ordering::Relaxed);
        let failed = self.window.failed.swap(0, Ordering::Relaxed);
        let latency = self.window.latency_ms_sum.swap(0, Ordering::Relaxed);
        WindowSample {
            jobs,
            failed,
            mean_latency_secs: if jobs > 0 { latency as f64 / 1000.0 / jobs as f64 } else { 0.0 },
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Serves `/metrics` and `/healthz` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    let app =
        Router::new().route("/healthz", get(|| async { "ok" })).route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.encode()).into_response()
                }
            }),
        );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_windows() {
        let m = Metrics::new();
        m.succeeded(Priority::Express, Some(Duration::from_millis(1500)));
        m.succeeded(Priority::Express, Some(Duration::from_millis(500)));
        m.failed(Priority::Bulk);
        m.stage("infer", Duration::from_millis(20));
        let text = m.encode();
        assert!(text.contains("ocr_jobs_succeeded_total{priority=\"express\"} 2"), "{text}");
        assert!(text.contains("ocr_jobs_failed_total{priority=\"bulk\"} 1"));
        assert!(text.contains("ocr_stage_duration_seconds_count{stage=\"infer\"} 1"));
        assert_eq!(m.take_window(), WindowSample { jobs: 2, failed: 1, mean_latency_secs: 1.0 });
        assert_eq!(m.take_window().jobs, 0);
    }
}
