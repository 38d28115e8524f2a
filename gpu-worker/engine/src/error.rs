//! Typed errors of the engine.

use std::path::PathBuf;

/// Everything that can go wrong while loading models or reading one image.
///
/// Per-image errors (decode, size) fail only that image in a batch call; [`EngineError::is_retryable`]
/// says whether trying the same input again can help (a corrupt JPEG never decodes, a runtime
/// hiccup such as GPU memory pressure may pass).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bytes are not a format we decode (JPEG, PNG, WebP, TIFF).
    #[error("unsupported or unrecognised image format")]
    UnsupportedFormat,
    /// The bytes claim a supported format but do not decode.
    #[error("image does not decode: {0}")]
    Decode(String),
    /// The image has more pixels than the configured limit (decompression-bomb guard).
    #[error("image is {width}x{height} pixels, over the limit of {limit} pixels")]
    TooLarge {
        /// Width in pixels as declared by the file header.
        width: u32,
        /// Height in pixels as declared by the file header.
        height: u32,
        /// The configured limit (width × height).
        limit: u64,
    },
    /// A document has more pages than the configured limit.
    #[error("the document has more than {limit} pages, the limit")]
    TooManyPages {
        /// The configured limit (`MAX_PAGES`).
        limit: usize,
    },
    /// A document's pages together have more pixels than [`crate::document::document_pixels`]
    /// allows (a PDF's pages are rendered smaller instead; a TIFF's are what they are).
    #[error("the document's pages are {pixels} pixels together, over the limit of {limit} pixels")]
    DocumentTooLarge {
        /// All pages' pixels.
        pixels: u64,
        /// The limit.
        limit: u64,
    },
    /// One page of a document failed.
    #[error("page {page}: {source}")]
    Page {
        /// 1-based page number.
        page: usize,
        /// What failed.
        #[source]
        source: Box<EngineError>,
    },
    /// Zero width or height.
    #[error("image is empty ({width}x{height})")]
    Empty {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Models, manifest or settings are wrong; fix the configuration, retrying will not help.
    #[error("configuration: {0}")]
    Config(String),
    /// ONNX Runtime failed while running a model.
    #[error("inference failed: {0}")]
    Inference(String),
    /// A model returned a tensor of a shape we do not understand.
    #[error("model output has unexpected shape: {0}")]
    BadOutput(String),
}

impl EngineError {
    /// Whether retrying the same input later can succeed (transient runtime failures and I/O),
    /// as opposed to bad input or configuration, which fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Page { source, .. } => source.is_retryable(),
            e => matches!(e, EngineError::Inference(_) | EngineError::Io { .. }),
        }
    }
}

/// Result alias of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
