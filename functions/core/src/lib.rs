//! Domain core of ocr-fleet.
//!
//! Jobs, their statuses and allowed transitions, priorities, the versioned
//! queue message, OCR results, and the ports (small traits) through which the
//! producer and the worker reach storage, queues and clocks. Nothing here knows
//! AWS, MySQL or ONNX Runtime: adapters live in `ocr-aws`, the engine in
//! `ocr-engine`. With the `test-util` feature, [`fakes`] provides an in-memory
//! implementation of every port.

pub mod content;
pub mod error;
pub mod id;
pub mod job;
pub mod message;
pub mod net;
pub mod pdf;
pub mod ports;
pub mod quota;
pub mod render;
pub mod request;
pub mod result;
pub mod retry;
pub mod signing;
pub mod tiff;
pub mod worker;

#[cfg(any(test, feature = "test-util"))]
pub mod fakes;

pub use content::{ContentType, ShapeError, check_shape};
pub use error::{PortError, TransitionError};
pub use id::{JobId, ParseJobIdError};
pub use job::{Job, JobStatus, NewJob, Priority};
pub use message::{JobMessage, MessageError};
pub use request::RequestError;
pub use result::{OcrLine, OcrPage, OcrResult, OcrWord, PAGE_BREAK};
