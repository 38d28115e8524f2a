//! The seam between the engine and an inference runtime.

use ndarray::{ArrayD, ArrayView4, ArrayViewD};

use crate::error::Result;

/// One neural network: a float32 NCHW batch in, one float32 tensor out.
///
/// Shapes by role (N = batch):
/// - detection: in `[N, 3, H, W]` (H, W multiples of 32), out `[N, 1, H, W]` text probability 0..1;
/// - recognition: in `[N, 3, 48, W]`, out `[N, T, C]` softmax over C classes per time step;
/// - angle / orientation classifiers: in `[N, 3, h, w]`, out `[N, K]` probabilities.
///
/// Implemented by the ONNX Runtime backend and by fakes in tests. `Send + Sync` so one engine
/// can be shared by threads; implementations serialise internally if their runtime needs it.
pub trait Model: Send + Sync {
    /// Runs the model on one batch.
    fn run(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>>;

    /// Runs the model on one batch and hands `f` a view of the output. The ONNX Runtime backend
    /// lends its own output buffer, which saves copying the recogniser's `[N, T, C]` output
    /// (tens of MB per batch with ~18,700 classes).
    fn run_with(&self, input: ArrayView4<'_, f32>, f: &mut dyn FnMut(ArrayViewD<'_, f32>) -> Result<()>) -> Result<()> {
        let out = self.run(input)?;
        f(out.view())
    }

    /// Runs one input when the caller has nothing else to run in parallel; implementations may
    /// use every thread for it.
    fn run_alone(&self, input: ArrayView4<'_, f32>) -> Result<ArrayD<f32>> {
        self.run(input)
    }

    /// How many runs can usefully proceed at once (independent sessions); callers use up to
    /// this many threads.
    fn parallelism(&self) -> usize {
        1
    }
}
