//! The one error type of the crate. Each variant says what failed and, where there is one, what
//! to do next. Library code returns these; it never panics or exits on anything a caller can cause.

use std::path::PathBuf;

/// Everything that can go wrong in soma.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter matched the request (or none exists at all).
    #[error("no GPU adapter{detail}: install mesa-vulkan-drivers for a software Vulkan driver, or set WGPU_BACKEND=gl (llvmpipe), or use the CPU path (--device cpu)")]
    NoAdapter {
        /// Extra context, such as the `SOMA_ADAPTER` filter that matched nothing.
        detail: String,
    },

    /// The adapter refused the device request.
    #[error("could not open a device on adapter '{adapter}': {message}")]
    RequestDevice { adapter: String, message: String },

    /// An operation got tensors whose shapes do not fit together.
    #[error("shape mismatch in {op}: expected {expected}, got {got}")]
    Shape {
        op: String,
        expected: String,
        got: String,
    },

    /// A buffer or binding would exceed what the adapter allows.
    #[error("{what} needs {bytes} bytes, over the adapter's limit of {limit} bytes ({limit_name}); use a smaller batch or network, or an adapter with larger limits")]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
        limit_name: &'static str,
    },

    /// The device was lost (driver reset, out of memory, host dropped it).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),

    /// A shader or pipeline failed validation, or a dispatch was rejected by wgpu.
    #[error("shader/pipeline error in '{label}': {message}")]
    Shader { label: String, message: String },

    /// Mapping a buffer for readback failed.
    #[error("reading back '{label}' failed: {message}")]
    Readback { label: String, message: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file was read but its contents are not what its format requires.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Format {
        path: PathBuf,
        /// 1-based line (CSV) when known.
        line: Option<usize>,
        message: String,
    },

    /// Data that cannot be trained on (NaN, a label out of range, an empty set, ...).
    #[error("invalid data: {0}")]
    Data(String),

    /// A setting or argument that makes no sense (batch size 0, unknown activation, ...).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Training produced a non-finite or exploding loss (or optimizer state).
    #[error("training diverged at epoch {epoch}, step {step}: {cause}; {kept}")]
    Diverged {
        epoch: usize,
        step: usize,
        /// The loss that was found bad (NaN when the bad value was not a loss).
        loss: f32,
        /// What was bad: the loss, with its bound, or a tensor.
        cause: String,
        /// Where the last good weights are.
        kept: String,
    },

    /// `soma check` found the GPU and the CPU path further apart than its tolerance.
    #[error("GPU and CPU disagree: {0}")]
    Mismatch(String),

    /// A shadow-checked step whose device result is further from the CPU replay than the
    /// tolerance (see `trainer::shadow`).
    #[error("shadow check failed at step {step}: '{tensor}' differs from the CPU replay by {rel_l2:.3e} (relative L2), over the tolerance {tolerance:.3e}; {kept}")]
    ShadowMismatch {
        step: u64,
        tensor: String,
        rel_l2: f64,
        tolerance: f64,
        /// Where the last good weights are.
        kept: String,
    },

    /// An adapter that failed strict mode's self-test (`exec::strict::self_test`): strict
    /// mode cannot promise the CPU reference's bits there.
    #[error("strict mode refuses {adapter}: its self-test found {findings}. Run without --deterministic strict (the default mode still gives the same bits from run to run on this adapter), or on an adapter that passes (a Vulkan driver loads strict kernels as SPIR-V marked NoContraction)")]
    StrictRefused { adapter: String, findings: String },

    /// A data-parallel peer (an MPI rank, say) that failed or stopped answering: the run
    /// cannot go on without its shard of the gradients.
    #[error("replica {rank} is lost: {message}")]
    Peer { rank: usize, message: String },

    /// A checkpoint that does not match the network it is loaded into.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for an I/O error on a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a shape mismatch.
    pub fn shape(op: impl Into<String>, expected: impl ToString, got: impl ToString) -> Self {
        Error::Shape {
            op: op.into(),
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}
