//! Adapters of the `ocr-core` ports to AWS services and MySQL.
//!
//! - [`S3ObjectStore`]: images in S3, presigned PUTs bound to type and length.
//! - [`SqsJobQueue`]: the express and bulk job queues; [`SqsConsumer`] receives and deletes.
//! - [`MySqlJobStore`]: jobs and results in MySQL/MariaDB, with idempotent migrations.
//!
//! [`aws_config_from_env`] honours `AWS_ENDPOINT_URL` (LocalStack) like every AWS SDK does.

pub mod config;
mod errors;
pub mod mysql;
pub mod process;
mod results;
pub mod roles;
pub mod s3;
pub mod secrets;
pub mod sql;
pub mod sqs;

pub use aws_config::SdkConfig;
pub use mysql::MySqlJobStore;
pub use s3::S3ObjectStore;
pub use sqs::{DeadLetterAdmin, ReceivedMessage, SqsConsumer, SqsDeadLetters, SqsJobQueue, SqsJobSource};

/// Loads the shared AWS configuration from the environment (region, credentials,
/// `AWS_ENDPOINT_URL`), as on Lambda, EC2 and against LocalStack.
///
/// Every call is bounded: a service (or LocalStack, or a proxy) that accepts a connection and
/// then stops answering fails the attempt as a timeout, which the SDK retries and then reports
/// as retryable, instead of hanging a request or a batch. The read timeout sits
/// above SQS's longest long poll (20 s), which answers only when it ends.
pub async fn aws_config_from_env() -> aws_config::SdkConfig {
    use std::time::Duration;
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .read_timeout(Duration::from_secs(30))
        .operation_attempt_timeout(Duration::from_secs(40))
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts).load().await
}
