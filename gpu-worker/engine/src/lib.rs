//! OCR engine: PP-OCR text detection (DB), optional page-orientation and line-angle
//! classifiers, and CTC text recognition, run through ONNX Runtime.
//!
//! ```no_run
//! # fn main() -> Result<(), ocr_engine::EngineError> {
//! use ocr_engine::{Engine, EngineOptions, SessionSettings, Provider, ConvAlgoSearch};
//! let session = SessionSettings {
//!     dylib_path: "models/onnxruntime/libonnxruntime.so".into(),
//!     provider: Provider::Cpu,
//!     device_id: 0,
//!     conv_algo_search: ConvAlgoSearch::Heuristic,
//!     intra_threads: 2,
//!     spinning: false,
//!     cpu_arena: false,
//! };
//! let engine = Engine::load("models".as_ref(), "ppocrv6-small", &session, EngineOptions::default())?;
//! let bytes = std::fs::read("receipt.jpg").unwrap();
//! for page in engine.recognize_bytes(&[&bytes]) {
//!     println!("{}", page?.text());
//! }
//! # Ok(()) }
//! ```
//!
//! One call is a pipeline: while later images are being detected, the line crops of earlier
//! ones (groups of at least 8 × `rec_batch` crops, across images) are sorted by width, padded
//! to a few widths and recognised in batches, so a call with many small pages fills batches
//! that one page could not.

pub mod classify;
pub mod decode;
pub mod detection;
pub mod document;
pub mod engine;
pub mod error;
pub mod geometry;
pub mod layout;
pub mod manifest;
pub mod model;
pub mod ort_backend;
pub mod pdf;
pub mod recognition;
mod scheduler;
pub mod settings;
pub mod words;

pub use decode::{DEFAULT_MAX_PIXELS, decode_image, probe_dimensions};
pub use document::{DEFAULT_MAX_PAGES, decode_pages, is_document, page_count, probe_pages};
pub use engine::{Engine, EngineOptions, Line, Models, Page, StageTimes};
pub use error::EngineError;
pub use geometry::Quad;
pub use manifest::{LimitType, Manifest};
pub use model::Model;
pub use ort_backend::{ConvAlgoSearch, OrtModel, Provider, SessionSettings, check_dylib};
pub use settings::EngineSettings;
pub use words::Word;
