//! The on-upload function: SQS (S3 ObjectCreated events) → check the upload → job queue; and,
//! invoked by its schedule with `{"sweep": "upload-events-dlq"}`, the upload-events DLQ sweep.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use clap::Parser;
use lambda_runtime::{LambdaEvent, service_fn};
use ocr_api::config::{DbArgs, ResourceArgs, UploadRetryArgs};
use ocr_api::startup::Services;
use ocr_api::upload::{Backoff, EventMessage, UploadHandler};
use ocr_aws::SqsConsumer;
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(version, about = "ocr-fleet on-upload handler (AWS Lambda, SQS trigger)")]
struct Config {
    #[command(flatten)]
    resources: ResourceArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    retry: UploadRetryArgs,
    /// The queue this function's SQS trigger reads, to back failed events off (unset: they come
    /// back after the queue's own visibility timeout).
    #[arg(long, env = "UPLOAD_EVENTS_QUEUE_URL")]
    upload_events_queue_url: Option<String>,
    /// Largest image accepted, in bytes.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 20_000_000)]
    max_upload_bytes: u64,
}

/// Time kept back at the end of an invocation: for the visibility changes, the response, and a
/// message's own steps (each bounded by DB_TIMEOUT_MS).
const RESERVE: Duration = Duration::from_secs(3);

struct Function {
    handler: UploadHandler,
    backoff: Backoff,
    events: Option<SqsConsumer>,
    dead_letters: Option<SqsConsumer>,
}

impl Function {
    async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, lambda_runtime::Error> {
        let deadline = deadline_of(&event.context);
        if event.payload.get("Records").is_some() {
            let sqs: SqsEvent = serde_json::from_value(event.payload)?;
            return Ok(serde_json::to_value(self.handle_records(sqs, deadline).await)?);
        }
        if event.payload.get("sweep").and_then(Value::as_str) == Some("upload-events-dlq") {
            let Some(dlq) = &self.dead_letters else {
                return Err("UPLOAD_EVENTS_DLQ_URL is not set".into());
            };
            let budget = deadline.saturating_duration_since(Instant::now()).saturating_sub(RESERVE);
            let report = ocr_api::dead_letters::sweep(&self.handler, dlq, budget, self.backoff).await;
            tracing::info!(?report, "upload-events DLQ swept");
            return Ok(serde_json::json!({
                "handled": report.handled, "left": report.left, "outage": report.outage
            }));
        }
        Err("neither an SQS event nor a sweep request".into())
    }

    /// Reports every message to deliver again (ReportBatchItemFailures), so SQS redelivers just
    /// those, each hidden first for its backoff: a failing event comes back later and later
    /// instead of spending its receives in minutes; after maxReceiveCount it goes to the DLQ,
    /// which the scheduled sweep brings back.
    async fn handle_records(&self, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
        let messages: Vec<EventMessage> = event
            .records
            .into_iter()
            .map(|r| EventMessage {
                message_id: r.message_id.unwrap_or_default(),
                receive_count: r.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1),
                receipt_handle: r.receipt_handle.unwrap_or_default(),
                body: r.body.unwrap_or_default(),
            })
            .collect();
        let again = self.handler.handle_batch(messages, self.backoff, Some(deadline), RESERVE).await;
        let mut response = SqsBatchResponse::default();
        for t in again {
            if let Some(events) = &self.events
                && let Err(e) = events.change_visibility(&t.receipt_handle, t.visibility_secs()).await
            {
                // The queue's own visibility timeout (60 s) applies instead.
                tracing::warn!(message_id = %t.message_id, error = %e, "could not back the event off");
            }
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = t.message_id;
            response.batch_item_failures.push(failure);
        }
        response
    }
}

/// The invocation's deadline as an `Instant` (Lambda gives epoch milliseconds).
fn deadline_of(context: &lambda_runtime::Context) -> Instant {
    let now_ms = ocr_core::ports::now_ms();
    let left = u64::try_from(context.deadline as i64 - now_ms).unwrap_or(0);
    Instant::now() + Duration::from_millis(left)
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ocr_aws::process::install_crypto_provider();
    ocr_api::telemetry::init();
    let config = Config::parse();
    let services = Services::new(&config.resources, &config.db).await?;
    let function = Function {
        handler: services.upload_handler(config.max_upload_bytes),
        backoff: config.retry.backoff(),
        events: config.upload_events_queue_url.as_ref().map(|url| SqsConsumer::new(&services.aws, url)),
        dead_letters: config.retry.upload_events_dlq_url.as_ref().map(|url| SqsConsumer::new(&services.aws, url)),
    };
    lambda_runtime::run(service_fn(|event| function.handle(event))).await
}
