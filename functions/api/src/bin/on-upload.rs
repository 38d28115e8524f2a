//! The on-upload function: SQS (S3 ObjectCreated events) → check the upload → job queue; and,
//! invoked by its schedule with `{"sweep": "upload-events-dlq"}`, the upload-events DLQ sweep.

use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use clap::Parser;
use lambda_runtime::{LambdaEvent, service_fn};
use ocr_api::config::{DbArgs, ResourceArgs, UploadEventQueueArgs, UploadRetryArgs};
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
    /// The queues this function's two SQS triggers read, to back failed events off on the queue
    /// each came from (unset: they come back after that queue's own visibility timeout).
    #[command(flatten)]
    upload_events: UploadEventQueueArgs,
    /// Largest image accepted, in bytes.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 20_000_000)]
    max_upload_bytes: u64,
    /// Most pages a PDF may declare; a longer one is refused on upload.
    #[arg(long, env = "MAX_PAGES", default_value_t = ocr_core::pdf::DEFAULT_MAX_PAGES as u64)]
    max_pages: u64,
}

/// Time kept back at the end of an invocation: for the visibility changes, the response, and a
/// message's own steps (each bounded by DB_TIMEOUT_MS).
const RESERVE: Duration = Duration::from_secs(3);

struct Function {
    handler: UploadHandler,
    backoff: Backoff,
    /// The upload-events queues (express, bulk); a record is settled on the one it came from.
    events: Vec<SqsConsumer>,
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
        // Each record names the queue it came from (a batch comes from one mapping, so from one
        // queue, but nothing here needs to assume so): a failed one is backed off there.
        let mut sources = std::collections::HashMap::new();
        let messages: Vec<EventMessage> = event
            .records
            .into_iter()
            .map(|r| {
                let message_id = r.message_id.unwrap_or_default();
                sources.insert(message_id.clone(), r.event_source_arn);
                EventMessage {
                    message_id,
                    receive_count: r
                        .attributes
                        .get("ApproximateReceiveCount")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(1),
                    sent_ms: r.attributes.get("SentTimestamp").and_then(|t| t.parse().ok()),
                    receipt_handle: r.receipt_handle.unwrap_or_default(),
                    body: r.body.unwrap_or_default(),
                }
            })
            .collect();
        let again = self.handler.handle_batch(messages, self.backoff, Some(deadline), RESERVE).await;
        let mut response = SqsBatchResponse::default();
        for t in again {
            let arn = sources.get(&t.message_id).and_then(Option::as_deref);
            match queue_of(&self.events, arn) {
                Some(events) => {
                    if let Err(e) = events.change_visibility(&t.receipt_handle, t.visibility_secs()).await {
                        // The queue's own visibility timeout (60 s) applies instead.
                        tracing::warn!(message_id = %t.message_id, error = %e, "could not back the event off");
                    }
                }
                None if !self.events.is_empty() => {
                    tracing::warn!(message_id = %t.message_id, ?arn, "an event from a queue not configured here: not backed off");
                }
                None => {}
            }
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = t.message_id;
            response.batch_item_failures.push(failure);
        }
        response
    }
}

/// The consumer of the queue `arn` names (a record's `eventSourceARN`,
/// `arn:aws:sqs:<region>:<account>:<name>`): the one whose URL ends with `/<name>`.
fn queue_of<'a>(queues: &'a [SqsConsumer], arn: Option<&str>) -> Option<&'a SqsConsumer> {
    let name = arn?.rsplit(':').next().filter(|n| !n.is_empty())?;
    queues.iter().find(|q| q.queue_url().rsplit('/').next() == Some(name))
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
        handler: services.upload_handler(config.max_upload_bytes, config.max_pages),
        backoff: config.retry.backoff(),
        events: config.upload_events.urls().into_iter().map(|url| SqsConsumer::new(&services.aws, url)).collect(),
        dead_letters: config.retry.upload_events_dlq_url.as_ref().map(|url| SqsConsumer::new(&services.aws, url)),
    };
    lambda_runtime::run(service_fn(|event| function.handle(event))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_settled_on_the_queue_it_came_from() {
        let aws = ocr_aws::SdkConfig::builder().build();
        let queues = [
            SqsConsumer::new(&aws, "https://sqs.eu-west-1.amazonaws.com/123456789012/ocr-prod-upload-events-express"),
            SqsConsumer::new(&aws, "http://127.0.0.1:4566/queue/us-east-1/000000000000/ocr-prod-upload-events-bulk"),
        ];
        let url = |arn| queue_of(&queues, arn).map(SqsConsumer::queue_url);
        assert_eq!(
            url(Some("arn:aws:sqs:eu-west-1:123456789012:ocr-prod-upload-events-express")),
            Some(queues[0].queue_url())
        );
        assert_eq!(
            url(Some("arn:aws:sqs:eu-west-1:123456789012:ocr-prod-upload-events-bulk")),
            Some(queues[1].queue_url())
        );
        // The whole name, not a suffix of it; and no guess when the record names none.
        assert_eq!(url(Some("arn:aws:sqs:eu-west-1:123456789012:upload-events-bulk")), None);
        assert_eq!(url(Some("arn:aws:sqs:eu-west-1:123456789012:ocr-prod-upload-events")), None);
        assert_eq!(url(Some("")), None);
        assert_eq!(url(None), None);
    }
}
