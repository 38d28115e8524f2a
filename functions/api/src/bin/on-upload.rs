//! The on-upload function: SQS (S3 ObjectCreated events) → check the upload → job queue.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use clap::Parser;
use lambda_runtime::{LambdaEvent, service_fn};
use ocr_api::config::{DbArgs, ResourceArgs};
use ocr_api::startup::Services;
use ocr_api::upload::UploadHandler;

#[derive(Parser, Debug)]
#[command(version, about = "ocr-fleet on-upload handler (AWS Lambda, SQS trigger)")]
struct Config {
    #[command(flatten)]
    resources: ResourceArgs,
    #[command(flatten)]
    db: DbArgs,
    /// Largest image accepted, in bytes.
    #[arg(long, env = "MAX_UPLOAD_BYTES", default_value_t = 20_000_000)]
    max_upload_bytes: u64,
}

/// Reports every message whose handling failed (ReportBatchItemFailures), so SQS redelivers
/// just those: one that failed retryably gets another try; one that failed for good comes
/// back until maxReceiveCount moves it to the dead-letter queue, where an operator sees it.
async fn handle(
    handler: &UploadHandler,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let mut response = SqsBatchResponse::default();
    for record in event.payload.records {
        let id = record.message_id.clone().unwrap_or_default();
        let body = record.body.as_deref().unwrap_or("");
        if let Err(e) = handler.handle_message(body).await {
            tracing::warn!(message_id = %id, error = %e, retryable = e.is_retryable(), "upload event failed");
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ocr_aws::process::install_crypto_provider();
    ocr_api::telemetry::init();
    let config = Config::parse();
    let services = Services::new(&config.resources, &config.db).await?;
    let handler = services.upload_handler(config.max_upload_bytes);
    lambda_runtime::run(service_fn(|event| handle(&handler, event))).await
}
