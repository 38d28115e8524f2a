//! Plays Lambda's SQS trigger locally: long-polls the upload-events queue and hands each batch
//! to the same [`UploadHandler::handle_batch`] the `on-upload` function runs, then sweeps the
//! upload-events dead-letter queue as the function's schedule does on AWS.

use std::time::Duration;

use ocr_aws::SqsConsumer;
use ocr_core::retry::BackoffBuilder;
use tokio::sync::watch;

use crate::upload::{Backoff, EventMessage, UploadHandler};

/// What the poller needs besides the handler.
pub struct PollerSettings {
    pub backoff: Backoff,
    /// The upload-events dead-letter queue and how often to sweep it, when set.
    pub dead_letters: Option<(SqsConsumer, Duration)>,
}

/// Runs until `shutdown` turns true. A handled message is deleted; one to try again is hidden
/// for its backoff (then SQS delivers it again, or after maxReceiveCount moves it to the DLQ,
/// from where the sweep brings it back once the outage is over).
pub async fn run(
    handler: UploadHandler,
    consumer: SqsConsumer,
    settings: PollerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(queue = consumer.queue_url(), "upload-event poller started");
    let sweeper = settings
        .dead_letters
        .map(|(dlq, every)| tokio::spawn(sweep_every(handler.clone(), dlq, every, settings.backoff, shutdown.clone())));
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
        let messages: Vec<EventMessage> = messages
            .into_iter()
            .map(|m| EventMessage {
                message_id: m.message_id,
                receipt_handle: m.receipt_handle,
                body: m.body,
                receive_count: m.receive_count,
            })
            .collect();
        let handles: Vec<String> = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        let again = handler.handle_batch(messages, settings.backoff, None, Duration::ZERO).await;
        for handle in handles {
            let result = match again.iter().find(|t| t.receipt_handle == handle) {
                Some(t) => consumer.change_visibility(&handle, t.visibility_secs()).await,
                None => consumer.delete(&handle).await,
            };
            if let Err(e) = result {
                // Deleting again later is harmless (handling is idempotent); a missed backoff
                // only means the queue's own visibility timeout applies.
                tracing::warn!(error = %e, "settling an upload event failed; it will be seen again");
            }
        }
    }
    if let Some(sweeper) = sweeper {
        let _ = sweeper.await;
    }
    tracing::info!("upload-event poller stopped");
}

async fn sweep_every(
    handler: UploadHandler,
    dlq: SqsConsumer,
    every: Duration,
    backoff: Backoff,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let report = crate::dead_letters::sweep(&handler, &dlq, every.max(Duration::from_secs(1)), backoff).await;
        if report.handled + report.left > 0 {
            tracing::info!(?report, "upload-events DLQ swept");
        }
    }
}
