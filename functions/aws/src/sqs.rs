//! Job queues on SQS.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use ocr_core::ports::JobQueue;
use ocr_core::worker::{DeadLetters, Delivery, JobSource};
use ocr_core::{JobMessage, PortError, Priority};

use crate::errors::sdk_error;

/// The express and bulk queues.
#[derive(Debug, Clone)]
pub struct SqsJobQueue {
    client: aws_sdk_sqs::Client,
    express_url: String,
    bulk_url: String,
}

impl SqsJobQueue {
    pub fn new(config: &aws_config::SdkConfig, express_url: impl Into<String>, bulk_url: impl Into<String>) -> Self {
        Self { client: aws_sdk_sqs::Client::new(config), express_url: express_url.into(), bulk_url: bulk_url.into() }
    }

    pub fn url(&self, priority: Priority) -> &str {
        match priority {
            Priority::Express => &self.express_url,
            Priority::Bulk => &self.bulk_url,
        }
    }
}

#[async_trait]
impl JobQueue for SqsJobQueue {
    async fn send(&self, message: &JobMessage) -> Result<(), PortError> {
        self.client
            .send_message()
            .queue_url(self.url(message.priority))
            .message_body(message.to_json())
            .set_message_group_id(message.fairness_key.clone())
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        Ok(())
    }

    /// `SendMessageBatch` per priority, 10 at a time; entries SQS refuses are an error.
    async fn send_batch(&self, messages: &[JobMessage]) -> Result<(), PortError> {
        for priority in Priority::ALL {
            let of_priority: Vec<&JobMessage> = messages.iter().filter(|m| m.priority == priority).collect();
            for chunk in of_priority.chunks(10) {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(m.to_json())
                            .set_message_group_id(m.fairness_key.clone())
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| PortError::permanent("sqs", e))?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(self.url(priority))
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| sdk_error("sqs", e))?;
                if let Some(failed) = out.failed().first() {
                    let message =
                        format!("{} of {} messages refused: {}", out.failed().len(), chunk.len(), failed.code());
                    return Err(if failed.sender_fault() {
                        PortError::permanent("sqs", message)
                    } else {
                        PortError::unavailable("sqs", message)
                    });
                }
            }
        }
        Ok(())
    }

    /// Visible, in flight (received, not yet deleted: a worker's batch, or one being retried)
    /// and delayed (a requeued message of a newer version) together: everything still to do.
    async fn depth(&self, priority: Priority) -> Result<u64, PortError> {
        queue_count(
            &self.client,
            self.url(priority),
            &[
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ],
        )
        .await
    }
}

/// The sum of the queue at `url`'s message counts named in `counts`.
async fn queue_count(client: &aws_sdk_sqs::Client, url: &str, counts: &[QueueAttributeName]) -> Result<u64, PortError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .set_attribute_names(Some(counts.to_vec()))
        .send()
        .await
        .map_err(|e| sdk_error("sqs", e))?;
    let attributes = out.attributes();
    let count = |name: &QueueAttributeName| -> u64 {
        attributes.and_then(|a| a.get(name)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    Ok(counts.iter().map(count).sum())
}

/// A message taken from a queue, with what is needed to delete it or extend its visibility.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// How many times SQS has delivered this message, this delivery included.
    pub receive_count: u32,
    /// The `ocr-requeues` message attribute: times a worker sent it again (0 when absent).
    pub requeues: u32,
    /// When SQS took the message (`SentTimestamp`, epoch ms).
    pub sent_ms: Option<i64>,
}

/// The message attribute counting a message's requeues ([`JobSource::requeue`]).
const REQUEUES: &str = "ocr-requeues";

impl ReceivedMessage {
    /// The message as a delivery of a job queue of `priority`.
    fn into_delivery(self, priority: Priority) -> Delivery {
        Delivery {
            priority,
            message_id: self.message_id,
            receipt_handle: self.receipt_handle,
            body: self.body,
            receive_count: self.receive_count,
            requeues: self.requeues,
        }
    }
}

/// Receives and deletes messages of one queue (the upload-event poller, the worker).
#[derive(Debug, Clone)]
pub struct SqsConsumer {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsConsumer {
    pub fn new(config: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self { client: aws_sdk_sqs::Client::new(config), queue_url: queue_url.into() }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Long-polls for up to `max` (≤ 10) messages, waiting at most `wait_secs` (≤ 20).
    pub async fn receive(&self, max: i32, wait_secs: i32) -> Result<Vec<ReceivedMessage>, PortError> {
        self.receive_with(max, wait_secs, None).await
    }

    /// Like [`SqsConsumer::receive`], hiding what it gets for `visibility_secs` instead of the
    /// queue's default visibility timeout.
    pub async fn receive_with(
        &self,
        max: i32,
        wait_secs: i32,
        visibility_secs: Option<i32>,
    ) -> Result<Vec<ReceivedMessage>, PortError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait_secs.clamp(0, 20))
            .set_visibility_timeout(visibility_secs.map(|v| v.clamp(0, 43_200)))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names(REQUEUES)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let requeues = m
                    .message_attributes()
                    .and_then(|a| a.get(REQUEUES))
                    .and_then(|v| v.string_value())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let sent_ms = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|v| v.parse().ok());
                Some(ReceivedMessage {
                    sent_ms,
                    message_id: m.message_id?,
                    receipt_handle: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    receive_count,
                    requeues,
                })
            })
            .collect())
    }

    pub async fn delete(&self, receipt_handle: &str) -> Result<(), PortError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        Ok(())
    }

    /// Makes the message visible again after `secs` (0: at once, for another consumer).
    pub async fn change_visibility(&self, receipt_handle: &str, secs: i32) -> Result<(), PortError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        Ok(())
    }
}

/// The express and bulk queues as a [`JobSource`] for workers.
#[derive(Debug, Clone)]
pub struct SqsJobSource {
    queues: SqsJobQueue,
}

impl SqsJobSource {
    pub fn new(config: &aws_config::SdkConfig, express_url: impl Into<String>, bulk_url: impl Into<String>) -> Self {
        Self { queues: SqsJobQueue::new(config, express_url, bulk_url) }
    }
}

#[async_trait]
impl JobSource for SqsJobSource {
    async fn receive(&self, priority: Priority, max: usize, wait: Duration) -> Result<Vec<Delivery>, PortError> {
        let consumer =
            SqsConsumer { client: self.queues.client.clone(), queue_url: self.queues.url(priority).to_owned() };
        let received = consumer.receive(max.clamp(1, 10) as i32, wait.as_secs().min(20) as i32).await?;
        Ok(received.into_iter().map(|m| m.into_delivery(priority)).collect())
    }

    async fn delete(&self, priority: Priority, receipt_handles: &[String]) -> Result<Vec<String>, PortError> {
        if receipt_handles.is_empty() {
            return Ok(Vec::new());
        }
        let entries = receipt_handles
            .iter()
            .enumerate()
            .map(|(i, h)| DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(h).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PortError::permanent("sqs", e))?;
        let out = self
            .queues
            .client
            .delete_message_batch()
            .queue_url(self.queues.url(priority))
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        Ok(out
            .failed()
            .iter()
            .filter_map(|f| f.id().parse::<usize>().ok())
            .filter_map(|i| receipt_handles.get(i).cloned())
            .collect())
    }

    async fn requeue(&self, delivery: &Delivery, delay: Duration) -> Result<(), PortError> {
        let count = MessageAttributeValue::builder()
            .data_type("Number")
            .string_value((delivery.requeues + 1).to_string())
            .build()
            .map_err(|e| PortError::permanent("sqs", e))?;
        let url = self.queues.url(delivery.priority);
        // Sent first, deleted second: a crash in between leaves two copies, and the consumers
        // are idempotent; the other order could lose the job's only message.
        self.queues
            .client
            .send_message()
            .queue_url(url)
            .message_body(&delivery.body)
            .delay_seconds(delay.as_secs().min(900) as i32)
            .message_attributes(REQUEUES, count)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        let consumer = SqsConsumer { client: self.queues.client.clone(), queue_url: url.to_owned() };
        consumer.delete(&delivery.receipt_handle).await
    }

    async fn set_visibility(
        &self,
        priority: Priority,
        receipt_handles: &[String],
        visibility: Duration,
    ) -> Result<(), PortError> {
        if receipt_handles.is_empty() {
            return Ok(());
        }
        let entries = receipt_handles
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .visibility_timeout(visibility.as_secs().min(43_200) as i32)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PortError::permanent("sqs", e))?;
        let out = self
            .queues
            .client
            .change_message_visibility_batch()
            .queue_url(self.queues.url(priority))
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        if let Some(f) = out.failed().iter().find(|f| !f.sender_fault()) {
            // SQS's own trouble: the caller tries again (the heartbeat does, before the
            // messages could reappear).
            return Err(PortError::unavailable("sqs", format!("visibility change refused: {}", f.code())));
        }
        if let Some(f) = out.failed().first() {
            // Usually a receipt handle whose visibility already ran out: the message is back
            // on the queue and another delivery will handle it.
            tracing::debug!(failed = out.failed().len(), code = f.code(), "some visibility changes failed");
        }
        Ok(())
    }
}

/// The express and bulk dead-letter queues, read (never emptied) by the worker's dead-letter
/// sweep.
#[derive(Debug, Clone)]
pub struct SqsDeadLetters {
    express: SqsConsumer,
    bulk: SqsConsumer,
}

impl SqsDeadLetters {
    pub fn new(
        config: &aws_config::SdkConfig,
        express_dlq_url: impl Into<String>,
        bulk_dlq_url: impl Into<String>,
    ) -> Self {
        Self { express: SqsConsumer::new(config, express_dlq_url), bulk: SqsConsumer::new(config, bulk_dlq_url) }
    }
}

#[async_trait]
impl DeadLetters for SqsDeadLetters {
    async fn peek(&self, priority: Priority, max: usize, hide: Duration) -> Result<Vec<Delivery>, PortError> {
        let queue = match priority {
            Priority::Express => &self.express,
            Priority::Bulk => &self.bulk,
        };
        let received = queue.receive_with(max.clamp(1, 10) as i32, 0, Some(hide.as_secs().max(1) as i32)).await?;
        Ok(received.into_iter().map(|m| m.into_delivery(priority)).collect())
    }
}

/// What operators do with a dead-letter queue: look into it and move its messages back.
#[derive(Debug, Clone)]
pub struct DeadLetterAdmin {
    client: aws_sdk_sqs::Client,
}

impl DeadLetterAdmin {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self { client: aws_sdk_sqs::Client::new(config) }
    }

    /// The URL of the queue named `name` (in this account and region).
    pub async fn url(&self, name: &str) -> Result<String, PortError> {
        let out = self.client.get_queue_url().queue_name(name).send().await.map_err(|e| sdk_error("sqs", e))?;
        out.queue_url.ok_or_else(|| PortError::permanent("sqs", format!("no URL for queue {name}")))
    }

    async fn arn(&self, url: &str) -> Result<String, PortError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| PortError::permanent("sqs", format!("no ARN for {url}")))
    }

    /// Up to `max` distinct messages of the queue at `url`, each hidden for `hide` once read so
    /// the pages are distinct, then made visible again: the queue is as it was.
    pub async fn peek(&self, url: &str, max: usize, hide: Duration) -> Result<Vec<ReceivedMessage>, PortError> {
        let consumer = SqsConsumer { client: self.client.clone(), queue_url: url.to_owned() };
        let mut seen: Vec<ReceivedMessage> = Vec::new();
        let mut ids = std::collections::HashSet::new();
        while seen.len() < max {
            let want = (max - seen.len()).min(10) as i32;
            let page = consumer.receive_with(want, 0, Some(hide.as_secs().max(1) as i32)).await?;
            let fresh: Vec<_> = page.into_iter().filter(|m| ids.insert(m.message_id.clone())).collect();
            if fresh.is_empty() {
                break;
            }
            seen.extend(fresh);
        }
        for m in &seen {
            // A failure only leaves the message hidden until `hide` passes.
            let _ = consumer.change_visibility(&m.receipt_handle, 0).await;
        }
        Ok(seen)
    }

    /// Messages of the queue at `url` that are hidden now (in flight): in a dead-letter queue,
    /// those the workers' sweep read in the last few minutes, which neither `peek` nor a
    /// message-move task can reach until they show again.
    pub async fn hidden(&self, url: &str) -> Result<u64, PortError> {
        queue_count(&self.client, url, &[QueueAttributeName::ApproximateNumberOfMessagesNotVisible]).await
    }

    /// Moves every message of the dead-letter queue at `dlq_url` back to `source_url` with SQS's
    /// own message-move task (at most `rate` per second, or as fast as SQS goes), waiting until
    /// it finishes. Returns the number moved. With no `source_url`, each message goes back to
    /// the queue it was dead-lettered from (a DLQ shared by several queues: upload-events').
    pub async fn move_back(
        &self,
        dlq_url: &str,
        source_url: Option<&str>,
        rate: Option<i32>,
    ) -> Result<i64, PortError> {
        let source_arn = self.arn(dlq_url).await?;
        let destination_arn = match source_url {
            Some(url) => Some(self.arn(url).await?),
            None => None,
        };
        self.client
            .start_message_move_task()
            .source_arn(&source_arn)
            .set_destination_arn(destination_arn)
            .set_max_number_of_messages_per_second(rate)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        loop {
            let out = self
                .client
                .list_message_move_tasks()
                .source_arn(&source_arn)
                .max_results(1)
                .send()
                .await
                .map_err(|e| sdk_error("sqs", e))?;
            let Some(task) = out.results().first() else {
                return Err(PortError::permanent("sqs", "the message-move task vanished"));
            };
            match task.status() {
                Some("COMPLETED") => return Ok(task.approximate_number_of_messages_moved()),
                Some("FAILED" | "CANCELLED") => {
                    return Err(PortError::permanent(
                        "sqs",
                        format!(
                            "message-move task {}: {}",
                            task.status().unwrap_or_default(),
                            task.failure_reason().unwrap_or("no reason given")
                        ),
                    ));
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}
