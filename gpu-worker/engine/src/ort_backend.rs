//! ONNX Runtime backend for [`Model`], loaded dynamically from `libonnxruntime.so`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ndarray::{ArrayD, ArrayView4, ArrayViewD};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::error::{EngineError, Result};
use crate::model::Model;

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Provider {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// CUDA (needs the `cuda` feature and an onnxruntime-gpu library).
    Cuda,
    /// TensorRT, with CUDA for unsupported nodes (needs the `tensorrt` feature).
    Tensorrt,
}

/// cuDNN convolution algorithm search (CUDA only). Exhaustive is fastest once warm but can spend
/// ~1 s per new input shape; heuristic starts quickly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConvAlgoSearch {
    /// Benchmark every algorithm per shape.
    Exhaustive,
    /// cuDNN's heuristics.
    #[default]
    Heuristic,
    /// cuDNN's default algorithm.
    Default,
}

/// Session settings shared by all models of an engine.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Path of `libonnxruntime.so.1.3x.y`.
    pub dylib_path: PathBuf,
    /// Execution provider.
    pub provider: Provider,
    /// GPU ordinal for CUDA/TensorRT.
    pub device_id: i32,
    /// cuDNN search mode (CUDA/TensorRT).
    pub conv_algo_search: ConvAlgoSearch,
    /// Intra-op threads per session (0 = ONNX Runtime's choice: one per core).
    pub intra_threads: usize,
    /// Busy-wait in the intra-op pool between ops; off by default since it burns shared cores.
    pub spinning: bool,
    /// ONNX Runtime's CPU memory arena. On keeps buffers between runs (the detector's large
    /// tensors would otherwise be page-faulted in on every run: ~15 % of the time on scene
    /// photos); off returns memory between differently shaped inputs, for a lower RSS.
    pub cpu_arena: bool,
}

static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process (ONNX Runtime allows one environment per process).
fn environment(dylib: &Path) -> Result<&'static Environment> {
    let env = ENVIRONMENT.get_or_init(|| {
        if !dylib.is_file() {
            return Err(format!(
                "ONNX Runtime library not found at {} (set ORT_DYLIB_PATH to onnxruntime/capi/libonnxruntime.so.1.3x.y from the PyPI onnxruntime wheel; scripts/fetch-models.sh installs it)",
                dylib.display()
            ));
        }
        ort::init_from(dylib)
            .map_err(|e| format!("loading {}: {e}", dylib.display()))?
            .with_name("ocr-engine")
            .build()
            .map_err(|e| format!("creating ONNX Runtime environment: {e}"))
    });
    env.as_ref().map_err(|e| EngineError::Config(e.clone()))
}

/// Checks that `path` is set and names an existing file; the clear start-up error `ort`
/// would otherwise turn into a panic.
pub fn check_dylib(path: Option<&Path>) -> Result<PathBuf> {
    match path {
        None => Err(EngineError::Config(
            "ORT_DYLIB_PATH is not set: point it at libonnxruntime.so.1.3x.y from the PyPI onnxruntime wheel (scripts/fetch-models.sh --print-env)".into(),
        )),
        Some(p) if !p.is_file() => Err(EngineError::Config(format!(
            "ORT_DYLIB_PATH={} does not exist",
            p.display()
        ))),
        Some(p) => Ok(p.to_path_buf()),
    }
}

/// One ONNX model in one or more sessions. Each session serialises its runs with a mutex (ONNX
/// Runtime sessions need `&mut` in `ort`); several sessions let independent inputs run at once.
pub struct OrtModel {
    /// Independent sessions of the same model; each run takes a free one.
    sessions: Vec<Mutex<Session>>,
    /// Optional extra session with many intra-op threads, for runs made while nothing else runs.
    wide: Option<Mutex<Session>>,
    input: String,
    name: String,
}

impl std::fmt::Debug for OrtModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtModel").field("name", &self.name).finish()
    }
}

fn rt<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> EngineError + '_ {
    move |e| EngineError::Config(format!("{what}: {e}"))
}

impl OrtModel {
    /// Loads `path` with `settings` into one session. A requested GPU provider that cannot be
    /// registered is an error, never a silent fall-back to CPU.
    pub fn load(path: &Path, settings: &SessionSettings) -> Result<Self> {
        Self::load_pool(path, settings, 1, settings.intra_threads)
    }

    /// Loads `copies` sessions of one model, each with `intra_threads` intra-op threads, so that
    /// `copies` batches can run at once (better CPU scaling than intra-op threads on small inputs).
    pub fn load_pool(path: &Path, settings: &SessionSettings, copies: usize, intra_threads: usize) -> Result<Self> {
        Self::pool(path, settings, copies, intra_threads, true)
    }

    fn pool(
        path: &Path,
        settings: &SessionSettings,
        copies: usize,
        intra_threads: usize,
        memory_pattern: bool,
    ) -> Result<Self> {
        let copies = copies.max(1);
        let mut sessions = Vec::with_capacity(copies);
        let mut input = String::new();
        for _ in 0..copies {
            let (s, i) = Self::session(path, settings, intra_threads, memory_pattern)?;
            sessions.push(Mutex::new(s));
            input = i;
        }
        Ok(Self { sessions, wide: None, input, name: path.display().to_string() })
    }

    /// A detector for CPU: `copies` single-threaded sessions that detect independent images at
    /// once, plus (with `wide_threads` > 1) one session with that many intra-op threads that
    /// [`Model::run_alone`] uses, so a lone image still gets every thread. ONNX Runtime's memory
    /// pattern is off: page sizes vary, and the patterns it keeps per shape cost ~70 MB per
    /// session over a set of pages, for no measurable speed.
    pub fn load_detector(path: &Path, settings: &SessionSettings, copies: usize, wide_threads: usize) -> Result<Self> {
        let mut m = Self::pool(path, settings, copies, 1, false)?;
        if wide_threads > 1 {
            m.wide = Some(Mutex::new(Self::session(path, settings, wide_threads, false)?.0));
        }
        Ok(m)
    }

    fn run_on(
        &self,
        session: &mut Session,
        input: ArrayView4<'_, f32>,
        f: &mut dyn FnMut(ArrayViewD<'_, f32>) -> Result<()>,
    ) -> Result<()> {
        let tensor = TensorRef::from_array_view(input)
            .map_err(|e| EngineError::Inference(format!("{}: input: {e}", self.name)))?;
        let outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| EngineError::Inference(format!("{}: {e}", self.name)))?;
        let arr =
            outputs[0].try_extract_array::<f32>().map_err(|e| EngineError::BadOutput(format!("{}: {e}", self.name)))?;
        f(arr)
    }

    /// [`OrtModel::run_on`] keeping a copy of the output.
    fn run_owned(&self, session: &mut Session, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>> {
        let mut out = None;
        self.run_on(session, input, &mut |a| {
            out = Some(a.to_owned());
            Ok(())
        })?;
        out.ok_or_else(|| EngineError::BadOutput(format!("{}: no output", self.name)))
    }

    /// Locks the first idle session, or waits for the first one when all are busy.
    fn any_session(&self) -> Result<std::sync::MutexGuard<'_, Session>> {
        match self.sessions.iter().find_map(|m| m.try_lock().ok()) {
            Some(s) => Ok(s),
            None => {
                self.sessions[0].lock().map_err(|_| EngineError::Inference(format!("{}: session poisoned", self.name)))
            }
        }
    }

    fn session(
        path: &Path,
        settings: &SessionSettings,
        intra_threads: usize,
        memory_pattern: bool,
    ) -> Result<(Session, String)> {
        let env = environment(&settings.dylib_path)?;
        let name = path.display().to_string();
        if !path.is_file() {
            return Err(EngineError::Config(format!("model file {name} is missing (run scripts/fetch-models.sh)")));
        }
        let mut b = Session::builder(env)
            .map_err(rt("session builder"))?
            // ort's environment logs at VERBOSE; formatting those messages costs time in every run.
            .with_log_level(ort::logging::LogLevel::Warning)
            .map_err(rt("log level"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(rt("optimisation level"))?
            .with_intra_threads(intra_threads)
            .map_err(rt("intra-op threads"))?
            .with_inter_threads(1)
            .map_err(rt("inter-op threads"))?
            .with_intra_op_spinning(settings.spinning)
            .map_err(rt("spinning"))?
            .with_inter_op_spinning(false)
            .map_err(rt("spinning"))?
            .with_memory_pattern(memory_pattern)
            .map_err(rt("memory pattern"))?;
        b = register_provider(b, settings)?;
        let session =
            b.commit_from_file(path).map_err(|e| EngineError::Config(format!("loading model {name}: {e}")))?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or_else(|| EngineError::Config(format!("model {name} has no input")))?;
        tracing::debug!(model = %name, input = %input, "model loaded");
        Ok((session, input))
    }
}

#[cfg(any(feature = "cuda", feature = "tensorrt"))]
fn cuda_ep(settings: &SessionSettings) -> ort::ep::CUDA {
    use ort::ep::cuda::ConvAlgorithmSearch as C;
    let search = match settings.conv_algo_search {
        ConvAlgoSearch::Exhaustive => C::Exhaustive,
        ConvAlgoSearch::Heuristic => C::Heuristic,
        ConvAlgoSearch::Default => C::Default,
    };
    ort::ep::CUDA::default().with_device_id(settings.device_id).with_conv_algorithm_search(search)
}

fn register_provider(
    b: ort::session::builder::SessionBuilder,
    settings: &SessionSettings,
) -> Result<ort::session::builder::SessionBuilder> {
    match settings.provider {
        Provider::Cpu => b
            .with_execution_providers([ort::ep::CPU::default()
                .with_arena_allocator(settings.cpu_arena)
                .build()
                .error_on_failure()])
            .map_err(|e| EngineError::Config(format!("CPU execution provider: {e}"))),
        #[cfg(feature = "cuda")]
        Provider::Cuda => {
            use ort::ep::ExecutionProvider;
            // A CPU-only libonnxruntime would otherwise log and silently run on CPU.
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                return Err(EngineError::Config(format!(
                    "OCR_PROVIDER=cuda but {} has no CUDA execution provider (use onnxruntime-gpu's library)",
                    settings.dylib_path.display()
                )));
            }
            b.with_execution_providers([cuda_ep(settings).build().error_on_failure()])
                .map_err(|e| EngineError::Config(format!("CUDA execution provider unavailable: {e}")))
        }
        #[cfg(feature = "tensorrt")]
        Provider::Tensorrt => {
            use ort::ep::ExecutionProvider;
            if !ort::ep::TensorRT::is_available().unwrap_or(false) || !ort::ep::CUDA::is_available().unwrap_or(false) {
                return Err(EngineError::Config(format!(
                    "OCR_PROVIDER=tensorrt but {} lacks the TensorRT/CUDA execution providers",
                    settings.dylib_path.display()
                )));
            }
            b.with_execution_providers([
                ort::ep::TensorRT::default().with_device_id(settings.device_id).build().error_on_failure(),
                cuda_ep(settings).build().error_on_failure(),
            ])
            .map_err(|e| EngineError::Config(format!("TensorRT execution provider unavailable: {e}")))
        }
        #[allow(unreachable_patterns)]
        other => Err(EngineError::Config(format!(
            "provider {other:?} requested but this build lacks its cargo feature (build with --features {})",
            match other {
                Provider::Cuda => "cuda",
                _ => "tensorrt",
            }
        ))),
    }
}

impl Model for OrtModel {
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>> {
        self.run_owned(&mut *self.any_session()?, input)
    }

    fn run_with(&self, input: ArrayView4<'_, f32>, f: &mut dyn FnMut(ArrayViewD<'_, f32>) -> Result<()>) -> Result<()> {
        self.run_on(&mut *self.any_session()?, input, f)
    }

    fn run_alone(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>> {
        match &self.wide {
            Some(w) => {
                let mut s = w.lock().map_err(|_| EngineError::Inference(format!("{}: session poisoned", self.name)))?;
                self.run_owned(&mut s, input)
            }
            None => self.run(input),
        }
    }

    fn parallelism(&self) -> usize {
        self.sessions.len()
    }
}
