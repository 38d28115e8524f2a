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
mod sql;
pub mod sqs;

pub use aws_config::SdkConfig;
pub use mysql::MySqlJobStore;
pub use s3::S3ObjectStore;
pub use sqs::{DeadLetterAdmin, ReceivedMessage, SqsConsumer, SqsDeadLetters, SqsJobQueue, SqsJobSource};

/// Loads the shared AWS configuration from the environment (region, credentials,
/// `AWS_ENDPOINT_URL`), as on Lambda, EC2 and against LocalStack.
pub async fn aws_config_from_env() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
