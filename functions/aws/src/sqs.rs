//! Job queues on SQS.

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use ocr_core::ports::JobQueue;
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
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        Ok(())
    }

    async fn depth(&self, priority: Priority) -> Result<u64, PortError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(self.url(priority))
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| sdk_error("sqs", e))?;
        let depth = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Ok(depth)
    }
}

/// A message taken from a queue, with what is needed to delete it or extend its visibility.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// How many times SQS has delivered this message, this delivery included.
    pub receive_count: u32,
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
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait_secs.clamp(0, 20))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
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
                Some(ReceivedMessage {
                    message_id: m.message_id?,
                    receipt_handle: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                    receive_count,
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
