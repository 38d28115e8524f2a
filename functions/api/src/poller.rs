//! Plays Lambda's SQS triggers locally: long-polls each upload-events queue (express and bulk)
//! in its own loop and hands each batch to the same [`UploadHandler::handle_batch`] the
//! `on-upload` function runs, then sweeps the upload-events dead-letter queue as the function's
//! schedule does on AWS.

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

/// Runs until `shutdown` turns true: `loops` receive loops per queue of `queues`, side by side,
/// as AWS runs one event source mapping per queue with up to its MaximumConcurrency batches at
/// once, so a slow batch on the bulk queue (a backlog of
/// hundreds) never holds back the express one. A handled message is deleted; one to try again is
/// hidden for its backoff on the queue it came from (then SQS delivers it again, or after
/// maxReceiveCount moves it to the DLQ, from where the sweep brings it back once the outage is
/// over). The DLQ, shared by the queues, is swept by one task.
pub async fn run(
    handler: UploadHandler,
    queues: Vec<(SqsConsumer, usize)>,
    settings: PollerSettings,
    shutdown: watch::Receiver<bool>,
) {
    let sweeper = settings
        .dead_letters
        .map(|(dlq, every)| tokio::spawn(sweep_every(handler.clone(), dlq, every, settings.backoff, shutdown.clone())));
    let loops: Vec<_> = queues
        .into_iter()
        .flat_map(|(consumer, loops)| std::iter::repeat_n(consumer, loops))
        .map(|consumer| tokio::spawn(poll(handler.clone(), consumer, settings.backoff, shutdown.clone())))
        .collect();
    for task in loops.into_iter().chain(sweeper) {
        let _ = task.await;
    }
    tracing::info!("upload-event poller stopped");
}

/// One queue's receive loop, until `shutdown` turns true.
async fn poll(handler: UploadHandler, consumer: SqsConsumer, backoff: Backoff, mut shutdown: watch::Receiver<bool>) {
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
                tracing::warn!(queue = consumer.queue_url(), error = %e, "receiving upload events failed");
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
                sent_ms: m.sent_ms,
            })
            .collect();
        let handles: Vec<String> = messages.iter().map(|m| m.receipt_handle.clone()).collect();
        let again = handler.handle_batch(messages, backoff, None, Duration::ZERO).await;
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
