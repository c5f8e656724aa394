//! The op families. Each module holds everything about one family of kernels: its uniform
//! structs (the same names and fields as in its `.wgsl` file), its recorders (one small
//! function per op that checks shapes and element types, fills the uniform and the grid, and
//! returns a ready-to-record [`Dispatch`](crate::kernels::Dispatch)), and its CPU twins in a
//! `cpu` submodule, named like the WGSL entry point and taking their arguments in the same
//! order: outputs first, then inputs, then the uniform. The kernel table that ties entry
//! points to files and bindings is [`crate::kernels::Kernel`]; scheduling whole steps is the
//! plan's and the executors' job, not this module's.
//!
//! | family | shader | ops |
//! | --- | --- | --- |
//! | [`matmul`] | `matmul.wgsl`, generated tiles | the three products, fused dense layers |
//! | [`activation`] | `activation.wgsl` | bias + activation, activation derivatives |
//! | [`reduce`] | `reduce.wgsl` | column sums, sums, argmax, correct counts |
//! | [`loss`] | `loss.wgsl` | softmax, MSE, softmax cross-entropy, binary cross-entropy |
//! | [`optim`] | `optim.wgsl` | one update kernel per [`optim::UpdateRule`] |
//! | [`data`] | `data.wgsl` | row and label gathers |
//! | [`perceptron`] | `perceptron.wgsl` | Rosenblatt's rule |
//! | [`fused_mlp`] | generated | the fully fused small-MLP training pass |

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::{DType, GpuTensor};

pub mod activation;
pub mod data;
pub mod fused_mlp;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod perceptron;
pub mod reduce;

pub use activation::{activation_backward, bias_activation_forward, Activation};
pub use data::{gather_labels, gather_rows, gather_rows_u8};
pub use fused_mlp::{fused_mlp, fused_mlp_fits};
pub use loss::{binary_cross_entropy, loss, mse_loss, softmax, softmax_cross_entropy, Loss};
pub use matmul::{
    dense_backward, dense_forward, matmul_nn, matmul_nt, matmul_tn, relu_delta, MatmulChoice,
    MatmulVariant,
};
pub use optim::{update, UpdateRule};
pub use perceptron::perceptron_epoch;
pub use reduce::{argmax, column_sum, correct_count, reduce_sum};

/// Every family's uniform struct, for code that fills them by hand (tests, tools).
pub mod uniforms {
    pub use super::activation::ActivationParams;
    pub use super::data::GatherParams;
    pub use super::fused_mlp::FusedMlpParams;
    pub use super::loss::LossParams;
    pub use super::matmul::{BlockedMatmulParams, DenseParams, MatmulParams};
    pub use super::optim::OptimParams;
    pub use super::perceptron::PerceptronParams;
    pub use super::reduce::{ReduceParams, RowsParams};
}

// ---------------------------------------------------------------------------------------
// Grids

const WG_1D: u32 = 256;

/// A 1-D grid of 256-wide workgroups covering `len` invocations, folded into y when it
/// exceeds the per-dimension limit (the shaders index with `gid.x + gid.y * groups.x * 256`).
pub(crate) fn grid_1d(gpu: &Gpu, len: usize) -> [u32; 3] {
    let groups = (len as u64).div_ceil(WG_1D as u64);
    let max = gpu.limits().max_compute_workgroups_per_dimension as u64;
    if groups <= max {
        [groups as u32, 1, 1]
    } else {
        [max as u32, groups.div_ceil(max) as u32, 1]
    }
}

/// A grid of 64-wide workgroups, one invocation per row (or column).
pub(crate) fn grid_rows(rows: usize) -> [u32; 3] {
    [(rows as u32).div_ceil(64), 1, 1]
}

// ---------------------------------------------------------------------------------------
// Shape checks

pub(crate) fn matrix(op: &str, t: &GpuTensor) -> Result<(usize, usize)> {
    match *t.shape() {
        [r, c] => Ok((r, c)),
        [n] => Ok((1, n)),
        _ => Err(Error::shape(
            op,
            format!("'{}' as a matrix", t.label()),
            format!("shape {:?}", t.shape()),
        )),
    }
}

pub(crate) fn expect_shape(op: &str, t: &GpuTensor, want: (usize, usize)) -> Result<()> {
    let got = matrix(op, t)?;
    if got != want {
        return Err(Error::shape(
            op,
            format!("'{}' of {} x {}", t.label(), want.0, want.1),
            format!("{} x {}", got.0, got.1),
        ));
    }
    Ok(())
}

pub(crate) fn expect_len(op: &str, t: &GpuTensor, len: usize) -> Result<()> {
    if t.len() != len {
        return Err(Error::shape(
            op,
            format!("'{}' of {len} elements", t.label()),
            format!("{} elements (shape {:?})", t.len(), t.shape()),
        ));
    }
    Ok(())
}

pub(crate) fn expect_dtype(op: &str, t: &GpuTensor, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::shape(
            op,
            format!("'{}' of {dtype:?}", t.label()),
            format!("{:?}", t.dtype()),
        ));
    }
    Ok(())
}

pub(crate) fn u32_of(op: &str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge {
        what: format!("{op}: {what}"),
        bytes: v as u64,
        limit: u32::MAX as u64,
        limit_name: "u32 index range",
    })
}

/// Whether a matmul or reduction overwrites its output or adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    Overwrite,
    Add,
}

impl Accumulate {
    pub(crate) fn flag(self) -> u32 {
        (self == Accumulate::Add) as u32
    }
}
