//! Plays Lambda's SQS trigger locally: long-polls the upload-events queue and
//! hands each message to the same [`UploadHandler`] the `on-upload` function runs.

use std::time::Duration;

use ocr_aws::SqsConsumer;
use ocr_core::retry::BackoffBuilder;
use tokio::sync::watch;

use crate::upload::UploadHandler;

/// Runs until `shutdown` turns true. A message is deleted once handled, or when no
/// retry can help; after a retryable failure it returns when its visibility expires.
pub async fn run(handler: UploadHandler, consumer: SqsConsumer, mut shutdown: watch::Receiver<bool>) {
    tracing::info!(queue = consumer.queue_url(), "upload-event poller started");
    // Receive errors (LocalStack or SQS away) back off up to 10 s; a success starts over.
    let schedule = ocr_core::retry::forever(Duration::from_millis(200), Duration::from_secs(10));
    let mut delays = schedule.build();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let received = tokio::select! {
            r = consumer.receive(10, 10) => r,
            _ = shutdown.changed() => break,
        };
        let messages = match received {
            Ok(m) => {
                delays = schedule.build();
                m
            }
            Err(e) => {
                tracing::warn!(error = %e, "receiving upload events failed");
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(10))).await;
                continue;
            }
        };
        for message in messages {
            match handler.handle_message(&message.body).await {
                Ok(outcomes) => {
                    tracing::debug!(?outcomes, "upload event handled");
                    if let Err(e) = consumer.delete(&message.receipt_handle).await {
                        tracing::warn!(error = %e, "deleting an upload event failed; it will be seen again");
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "upload event failed; it will be retried");
                }
                Err(e) => {
                    // Left in place: after maxReceiveCount deliveries SQS moves it to the
                    // DLQ, where a person can look at it.
                    tracing::error!(error = %e, "upload event failed permanently; leaving it for the DLQ");
                }
            }
        }
    }
    tracing::info!("upload-event poller stopped");
}
