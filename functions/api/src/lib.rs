//! The producer side of ocr-fleet.
//!
//! - [`routes::router`]: the HTTP API (create a job and get an upload URL, or post
//!   the image itself; read and delete jobs; OpenAPI document). The same axum
//!   Router runs on Lambda (`api` binary) and on a TCP port (`api-local`).
//! - [`wait::WaitHub`]: holds `GET /v1/jobs/{id}?wait=` requests until their jobs end, one
//!   batched status read a tick for all of them.
//! - [`upload::UploadHandler`]: reacts to S3 ObjectCreated events: checks the
//!   upload, queues the job. Runs on Lambda (`on-upload`) or in the local poller.

pub mod auth;
pub mod backpressure;
pub mod config;
pub mod dead_letters;
pub mod error;
pub mod page_image;
pub mod poller;
pub mod routes;
pub mod signing;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod upload;
pub mod view;
pub mod wait;

pub use error::ApiError;
pub use state::AppState;
