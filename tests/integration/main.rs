//! Integration tests against LocalStack (S3, SQS) and MariaDB: one test binary.
//! Start the services with `scripts/test.sh` (which runs these) or `scripts/dev.sh up`.

mod dlq;
mod lambda_api;
mod pinning;
mod producer;
mod roles;
mod store;
mod tls;
mod wait;
mod worker;
