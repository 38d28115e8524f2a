//! Model-set manifests: which files and which pre/post-processing numbers make one model set.
//!
//! A set lives in `<model_dir>/<name>/manifest.json`; file paths in it are relative to that folder.
//! Switching PP-OCRv5 for v6 is a different manifest, not different code.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{EngineError, Result};

/// Height over width from which a page is tall (receipts run 1.5–3; A4 and Letter pages are
/// 1.29–1.41).
pub const TALL_RATIO: f32 = 1.5;

/// How the detector input size is chosen (PaddleOCR's `DetResizeForTest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitType {
    /// Shrink so the longer side is at most `limit_side_len` (never enlarge).
    Max,
    /// Enlarge so the shorter side is at least `limit_side_len` (RapidOCR's default, 736).
    Min,
}

/// Detection (DB) settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetSpec {
    /// Model file, relative to the manifest.
    pub model: PathBuf,
    /// Side length limit in pixels (see [`LimitType`]).
    pub limit_side_len: u32,
    /// Which side the limit applies to.
    pub limit_type: LimitType,
    /// With [`LimitType::Max`], the limit for a tall page (height at least
    /// [`TALL_RATIO`] × width: receipts, slips), whose narrow side the usual limit would shrink
    /// below what the detector separates well. `None`: the usual limit.
    #[serde(default)]
    pub tall_limit_side_len: Option<u32>,
    /// Hard cap on the longer side after the limit, in pixels (bounds cost on huge pages).
    #[serde(default = "default_max_side")]
    pub max_side_len: u32,
    /// Per-channel mean in B, G, R order, on 0..1 values.
    pub mean: [f32; 3],
    /// Per-channel standard deviation in B, G, R order.
    pub std: [f32; 3],
    /// Probability above which a pixel is text.
    pub thresh: f32,
    /// Mean probability inside a box below which the box is dropped.
    pub box_thresh: f32,
    /// Polygon growth: offset distance = area × ratio / perimeter.
    pub unclip_ratio: f32,
    /// Dilate the binary map with a 2×2 kernel before finding contours.
    #[serde(default)]
    pub use_dilation: bool,
    /// Boxes whose short side is under this (detector pixels) are dropped.
    #[serde(default = "default_min_size")]
    pub min_size: f32,
    /// At most this many contours are considered per image.
    #[serde(default = "default_max_candidates")]
    pub max_candidates: usize,
}

impl DetSpec {
    /// PP-OCR's published detector settings (DB, 960 px max side, ImageNet normalisation) for
    /// the model file `model`: what the registry model sets' manifests say, and what tests use.
    pub fn ppocr(model: PathBuf) -> Self {
        DetSpec {
            model,
            limit_side_len: 960,
            limit_type: LimitType::Max,
            tall_limit_side_len: None,
            max_side_len: 4000,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            thresh: 0.3,
            box_thresh: 0.5,
            unclip_ratio: 1.5,
            use_dilation: false,
            min_size: 3.0,
            max_candidates: 1000,
        }
    }
}

/// Recognition (CTC) settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecSpec {
    /// Model file, relative to the manifest.
    pub model: PathBuf,
    /// Dictionary, one symbol per line; class 0 is the CTC blank, the last class may be a space.
    pub dict: PathBuf,
    /// Input height in pixels (48 for PP-OCRv5/v6).
    #[serde(default = "default_rec_height")]
    pub height: u32,
    /// Narrowest padded input width in pixels.
    #[serde(default = "default_rec_min_width")]
    pub min_width: u32,
    /// Widest input in pixels; longer lines are squeezed to this.
    #[serde(default = "default_rec_max_width")]
    pub max_width: u32,
}

/// A classifier with a fixed input size (line angle 0/180, or page orientation).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClsSpec {
    /// Model file, relative to the manifest.
    pub model: PathBuf,
    /// Input height in pixels.
    pub height: u32,
    /// Input width in pixels.
    pub width: u32,
    /// Probability a non-zero angle needs before the image is turned.
    pub thresh: f32,
}

/// One model set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Set name, e.g. `ppocrv6-small`.
    pub name: String,
    /// Human note: where the files come from.
    #[serde(default)]
    pub source: String,
    /// Text detector.
    pub det: DetSpec,
    /// Text recogniser.
    pub rec: RecSpec,
    /// Optional per-line 0/180 classifier.
    #[serde(default)]
    pub cls: Option<ClsSpec>,
    /// Optional whole-page 0/90/180/270 classifier.
    #[serde(default)]
    pub orientation: Option<ClsSpec>,
    /// INT8 files with signed 8-bit weights, which ONNX Runtime reads correctly on x86 CPUs only
    /// with VNNI: without it (AVX2, AVX-512F) its u8 x s8 kernels sum pairs of products into
    /// 16 bits, which saturate (set A's word F1 0.940 -> 0.893 on an AMD EPYC with AVX2 only).
    #[serde(default)]
    pub needs_vnni: bool,
    /// Folder the manifest was read from (filled in by [`Manifest::load`]).
    #[serde(skip)]
    pub dir: PathBuf,
}

fn default_max_side() -> u32 {
    4000
}
fn default_min_size() -> f32 {
    3.0
}
fn default_max_candidates() -> usize {
    1000
}
fn default_rec_height() -> u32 {
    48
}
fn default_rec_min_width() -> u32 {
    64
}
fn default_rec_max_width() -> u32 {
    3200
}

/// Resolves a set name or alias to its folder name.
pub fn canonical_set_name(name: &str) -> &str {
    match name {
        "small" | "v6" | "v6-small" | "default" => "ppocrv6-small",
        "tiny" | "fast" | "v6-tiny" => "ppocrv6-tiny",
        "v5" => "ppocrv5",
        other => other,
    }
}

impl Manifest {
    /// Reads `<model_dir>/<set>/manifest.json` (aliases such as `fast` accepted).
    pub fn load(model_dir: &Path, set: &str) -> Result<Self> {
        let dir = model_dir.join(canonical_set_name(set));
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            EngineError::Config(format!(
                "model set {set:?}: cannot read {}: {e} (run scripts/fetch-models.sh)",
                path.display()
            ))
        })?;
        let mut m: Manifest =
            serde_json::from_str(&text).map_err(|e| EngineError::Config(format!("{}: {e}", path.display())))?;
        m.dir = dir;
        Ok(m)
    }

    /// A path from the manifest, resolved against its folder.
    pub fn path(&self, rel: &Path) -> PathBuf {
        self.dir.join(rel)
    }

    /// Refuses a [`needs_vnni`](Self::needs_vnni) set on the CPU provider of a CPU without VNNI:
    /// it would run, only reading worse, so the choice is the operator's to make knowingly.
    pub fn check_cpu(&self, cpu_provider: bool, has_vnni: bool) -> Result<()> {
        if self.needs_vnni && cpu_provider && !has_vnni {
            return Err(EngineError::Config(format!(
                "model set {}: its INT8 files need a CPU with VNNI (avx512_vnni or avx_vnni, e.g. AWS c7i, \
                 c7a, m7i); on this one ONNX Runtime's 8-bit sums saturate and it reads worse than the \
                 float set (set A word F1 0.893 against 0.940): use ppocrv6-small",
                self.name
            )));
        }
        Ok(())
    }
}

/// Whether ONNX Runtime's 8-bit kernels can use VNNI dot products here (no 16-bit
/// intermediate sums). Other architectures' kernels have no such saturation.
pub fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni") || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        true
    }
}

/// Reads a dictionary file: one symbol per line (a line may be a single space).
pub fn load_dict(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::Config(format!("dictionary {}: {e}", path.display())))?;
    Ok(text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).filter(|l| !l.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: &str) -> Manifest {
        serde_json::from_str(json).unwrap()
    }

    const FLOAT: &str = r#"{"name": "f", "det": {"model": "det.onnx", "limit_side_len": 960, "limit_type": "max",
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.6},
        "rec": {"model": "rec.onnx", "dict": "dict.txt"}}"#;

    #[test]
    fn an_int8_set_needing_vnni_is_refused_on_a_cpu_without_it_only() {
        let int8 = set(&FLOAT.replacen(r#""name": "f""#, r#""name": "q", "needs_vnni": true"#, 1));
        assert!(int8.needs_vnni);
        let err = int8.check_cpu(true, false).unwrap_err();
        assert!(matches!(err, EngineError::Config(_)) && !err.is_retryable());
        assert!(err.to_string().contains("VNNI") && err.to_string().contains("ppocrv6-small"), "{err}");
        int8.check_cpu(true, true).unwrap();
        int8.check_cpu(false, false).unwrap(); // CUDA / TensorRT run QDQ their own way
        let float = set(FLOAT);
        assert!(!float.needs_vnni);
        float.check_cpu(true, false).unwrap();
    }

    #[test]
    fn the_shipped_int8_manifest_asks_for_vnni() {
        let text = include_str!("../model-sets/ppocrv6-small-int8.json");
        assert!(set(text).needs_vnni);
    }
}
