//! Losses (`shaders/loss.wgsl`): which loss, its mean-reduction scale and what targets it
//! takes; softmax; and each loss with its gradient in one kernel.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::{DType, GpuTensor};

use super::reduce::{RowsParams, SumForm};
use super::{dispatch, expect_dtype, expect_len, expect_shape, grid_rows, matrix, Kernel, Kernels};

/// The loss functions soma trains with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Mean squared error over every output element (PyTorch's `MSELoss`).
    Mse,
    /// Softmax cross-entropy from logits and class labels (PyTorch's `CrossEntropyLoss`).
    SoftmaxCrossEntropy,
    /// Binary cross-entropy from logits and 0/1 targets (PyTorch's `BCEWithLogitsLoss`).
    BinaryCrossEntropy,
}

impl Loss {
    /// The parameters for `rows` live rows of width `cols` in a buffer of `batch_rows` rows.
    pub fn params(self, rows: usize, cols: usize, batch_rows: usize) -> LossParams {
        self.params_of_share(rows, cols, batch_rows, rows)
    }

    /// The parameters for `rows` live rows that are one replica's share of a global batch of
    /// `mean_rows` live rows: the gradient carries the global batch's mean factor, so that
    /// the replicas' gradients sum to the global batch's.
    pub fn params_of_share(
        self,
        rows: usize,
        cols: usize,
        batch_rows: usize,
        mean_rows: usize,
    ) -> LossParams {
        let n = match self {
            Loss::SoftmaxCrossEntropy => mean_rows,
            Loss::Mse | Loss::BinaryCrossEntropy => mean_rows * cols,
        };
        LossParams {
            rows: rows as u32,
            cols: cols as u32,
            batch_rows: batch_rows as u32,
            scale: if n == 0 { 0.0 } else { 1.0 / n as f32 },
        }
    }

    /// Whether the targets are class labels (u32) rather than values (f32).
    pub fn takes_labels(self) -> bool {
        self == Loss::SoftmaxCrossEntropy
    }
}

impl FromStr for Loss {
    type Err = Error;
    /// `mse`, `cross_entropy` (softmax cross-entropy), `bce` (binary cross-entropy).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "mse" => Ok(Loss::Mse),
            "cross_entropy" | "softmax_cross_entropy" | "ce" | "xent" => {
                Ok(Loss::SoftmaxCrossEntropy)
            }
            "bce" | "binary_cross_entropy" => Ok(Loss::BinaryCrossEntropy),
            _ => Err(Error::Config(format!(
                "unknown loss '{s}' (known: mse, cross_entropy, bce)"
            ))),
        }
    }
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::Mse => "mse",
            Loss::SoftmaxCrossEntropy => "cross_entropy",
            Loss::BinaryCrossEntropy => "bce",
        })
    }
}

params_struct! {
    /// A loss over a batch buffer of `batch_rows` rows of which the first `rows` are live.
    /// Rows at or past `rows` get a zero gradient and a zero loss (the padded tail of a
    /// partial last batch).
    LossParams {
        /// Live rows.
        rows: u32,
        /// Columns of the prediction (classes or outputs).
        cols: u32,
        /// Rows in the buffers (>= rows).
        batch_rows: u32,
        /// The factor the gradient carries for a mean reduction: 1/rows for softmax
        /// cross-entropy, 1/(rows*cols) for MSE and binary cross-entropy.
        scale: f32,
    }
}

/// `out = softmax(logits)` row by row, in the form that suits the device
/// ([`SumForm::for_kernels`]).
pub fn softmax(k: &Kernels, out: &GpuTensor, logits: &GpuTensor) -> Result<Dispatch> {
    softmax_as(k, SumForm::for_kernels(k), out, logits)
}

/// `out = softmax(logits)` row by row, max-subtracted, the sum of the exponentials in
/// `form`'s order: [`SumForm::Serial`], one invocation per row, columns in order (twin
/// `cpu::softmax`); [`SumForm::Split`], 32 lanes per row, each summing columns j, j+32, ...
/// in order, then a pairwise tree with ascending offsets (twin `cpu::softmax_split`, for
/// its workgroup and subgroup forms alike).
pub fn softmax_as(
    k: &Kernels,
    form: SumForm,
    out: &GpuTensor,
    logits: &GpuTensor,
) -> Result<Dispatch> {
    let (rows, cols) = matrix("softmax", logits)?;
    expect_shape("softmax", out, (rows, cols))?;
    let p = RowsParams {
        rows: rows as u32,
        cols: cols as u32,
        ..Default::default()
    };
    let split_groups = (rows as u32).div_ceil(8);
    let fits = split_groups <= k.gpu().limits().max_compute_workgroups_per_dimension;
    match form {
        SumForm::Split if fits => {
            let kernel = if k.subgroups() {
                Kernel::SoftmaxSplitSubgroup
            } else {
                Kernel::SoftmaxSplit
            };
            dispatch(k, kernel, &[out, logits], &[p], [split_groups, 1, 1])
        }
        SumForm::Split | SumForm::Serial => {
            dispatch(k, Kernel::Softmax, &[out, logits], &[p], grid_rows(rows))
        }
    }
}

fn loss_kernel(kind: Loss) -> Kernel {
    match kind {
        Loss::Mse => Kernel::MseLoss,
        Loss::SoftmaxCrossEntropy => Kernel::SoftmaxCrossEntropy,
        Loss::BinaryCrossEntropy => Kernel::BinaryCrossEntropy,
    }
}

/// A loss and its gradient over `pred (batch_rows, cols)`, the first `rows` live:
/// `grad` (same shape), `row_loss (batch_rows)`. `target` is u32 labels `(batch_rows)` for
/// softmax cross-entropy and f32 `(batch_rows, cols)` otherwise. The batch loss is
/// `Σ row_loss / rows`. Softmax cross-entropy sums its exponentials in the form that suits
/// the device ([`SumForm::for_kernels`]), as [`softmax`] does.
pub fn loss(
    k: &Kernels,
    kind: Loss,
    grad: &GpuTensor,
    row_loss: &GpuTensor,
    pred: &GpuTensor,
    target: &GpuTensor,
    rows: usize,
) -> Result<Dispatch> {
    let form = SumForm::for_kernels(k);
    loss_as(k, kind, form, grad, row_loss, pred, target, rows)
}

/// [`loss`] with softmax cross-entropy's sum of exponentials in `form`'s order (the other
/// losses ignore it): [`SumForm::Serial`], one invocation per row, columns in order (twin
/// `cpu::softmax_cross_entropy`); [`SumForm::Split`], 32 lanes per row, each summing
/// columns j, j+32, ... in order, then a pairwise tree with ascending offsets (twin
/// `cpu::softmax_cross_entropy_split`, for its workgroup and subgroup forms alike).
#[allow(clippy::too_many_arguments)]
pub fn loss_as(
    k: &Kernels,
    kind: Loss,
    form: SumForm,
    grad: &GpuTensor,
    row_loss: &GpuTensor,
    pred: &GpuTensor,
    target: &GpuTensor,
    rows: usize,
) -> Result<Dispatch> {
    let op = loss_kernel(kind).entry_point();
    let (batch_rows, cols) = matrix(op, pred)?;
    expect_shape(op, grad, (batch_rows, cols))?;
    expect_len(op, row_loss, batch_rows)?;
    if kind.takes_labels() {
        expect_dtype(op, target, DType::U32)?;
        expect_len(op, target, batch_rows)?;
    } else {
        expect_dtype(op, target, DType::F32)?;
        expect_shape(op, target, (batch_rows, cols))?;
    }
    if rows > batch_rows {
        return Err(Error::shape(
            op,
            format!("at most {batch_rows} live rows"),
            rows,
        ));
    }
    let p = kind.params(rows, cols, batch_rows);
    let split_groups = (batch_rows as u32).div_ceil(8);
    let fits = split_groups <= k.gpu().limits().max_compute_workgroups_per_dimension;
    let (kernel, grid) = if kind == Loss::SoftmaxCrossEntropy && form == SumForm::Split && fits {
        let kernel = if k.subgroups() {
            Kernel::SoftmaxCrossEntropySplitSubgroup
        } else {
            Kernel::SoftmaxCrossEntropySplit
        };
        (kernel, [split_groups, 1, 1])
    } else {
        (loss_kernel(kind), grid_rows(batch_rows))
    };
    dispatch(k, kernel, &[grad, row_loss, pred, target], &[p], grid)
}

/// MSE: see [`loss`].
pub fn mse_loss(
    k: &Kernels,
    grad: &GpuTensor,
    row_loss: &GpuTensor,
    pred: &GpuTensor,
    target: &GpuTensor,
    rows: usize,
) -> Result<Dispatch> {
    loss(k, Loss::Mse, grad, row_loss, pred, target, rows)
}

/// Softmax cross-entropy from logits: see [`loss`].
pub fn softmax_cross_entropy(
    k: &Kernels,
    grad: &GpuTensor,
    row_loss: &GpuTensor,
    logits: &GpuTensor,
    labels: &GpuTensor,
    rows: usize,
) -> Result<Dispatch> {
    loss(
        k,
        Loss::SoftmaxCrossEntropy,
        grad,
        row_loss,
        logits,
        labels,
        rows,
    )
}

/// Binary cross-entropy from logits: see [`loss`].
pub fn binary_cross_entropy(
    k: &Kernels,
    grad: &GpuTensor,
    row_loss: &GpuTensor,
    logits: &GpuTensor,
    targets: &GpuTensor,
    rows: usize,
) -> Result<Dispatch> {
    loss(
        k,
        Loss::BinaryCrossEntropy,
        grad,
        row_loss,
        logits,
        targets,
        rows,
    )
}

/// The twins: plain loops in the kernels' order of operations.
pub mod cpu {
    use super::*;
    use crate::math::Math;
    use crate::ops::activation::cpu::sigmoid;

    /// A row's max and sum of exp(z - max) in the serial kernels' order: the max from z[0]
    /// on, the sum over the columns in order.
    fn serial_max_sum(z: &[f32], math: Math) -> (f32, f32) {
        let m = z.iter().skip(1).fold(z[0], |m, &v| m.max(v));
        let mut s = 0.0f32;
        for &v in z {
            s += math.exp(v - m);
        }
        (m, s)
    }

    /// A row's max and sum of exp(z - max) in the split kernels' order: 32 lanes each sum
    /// their columns j, j+32, ... in order, then a pairwise tree over the 32 with ascending
    /// offsets (the max is the same in any order).
    fn split_max_sum(z: &[f32], math: Math) -> (f32, f32) {
        let m = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut partial = [0.0f32; 32];
        for (lane, slot) in partial.iter_mut().enumerate() {
            for &v in z.iter().skip(lane).step_by(32) {
                *slot += math.exp(v - m);
            }
        }
        let mut offset = 1;
        while offset < 32 {
            for lane in (0..32).step_by(2 * offset) {
                partial[lane] += partial[lane + offset];
            }
            offset <<= 1;
        }
        (m, partial[0])
    }

    /// Softmax cross-entropy over every row of the batch, each row's max and sum from
    /// `max_sum`: the gradient (prob - onehot) * scale and the loss m + log(s) - z[label]
    /// (NaN for a label past the outputs; zeros past `rows`).
    fn cross_entropy_rows(
        grad: &mut [f32],
        row_loss: &mut [f32],
        logits: &[f32],
        labels: &[u32],
        p: &LossParams,
        math: Math,
        max_sum: fn(&[f32], Math) -> (f32, f32),
    ) {
        let cols = p.cols as usize;
        for row in 0..p.batch_rows as usize {
            if row >= p.rows as usize {
                zero_tail(grad, row_loss, row, cols);
                continue;
            }
            let z = &logits[row * cols..row * cols + cols];
            let label = labels[row] as usize;
            let (m, s) = max_sum(z, math);
            for c in 0..cols {
                let prob = math.div(math.exp(z[c] - m), s);
                let target = if c == label { 1.0 } else { 0.0 };
                grad[row * cols + c] = (prob - target) * p.scale;
            }
            row_loss[row] = if label >= cols {
                f32::NAN
            } else {
                m + math.log(s) - z[label]
            };
        }
    }

    /// Row-wise softmax, max-subtracted.
    pub fn softmax(out: &mut [f32], logits: &[f32], p: &RowsParams, math: Math) {
        let cols = p.cols as usize;
        for r in 0..p.rows as usize {
            let z = &logits[r * cols..r * cols + cols];
            let (m, s) = serial_max_sum(z, math);
            for c in 0..cols {
                out[r * cols + c] = math.div(math.exp(z[c] - m), s);
            }
        }
    }

    /// Twin of `softmax_split` (and its subgroup form): per row the max, then 32 lanes sum
    /// exp(z - max) over columns j, j+32, ... in order, a pairwise tree over the 32 with
    /// ascending offsets, and each output exp(z - max) / sum.
    pub fn softmax_split(out: &mut [f32], logits: &[f32], p: &RowsParams, math: Math) {
        let cols = p.cols as usize;
        for r in 0..p.rows as usize {
            let z = &logits[r * cols..r * cols + cols];
            let (m, s) = split_max_sum(z, math);
            for c in 0..cols {
                out[r * cols + c] = math.div(math.exp(z[c] - m), s);
            }
        }
    }

    fn zero_tail(grad: &mut [f32], row_loss: &mut [f32], row: usize, cols: usize) {
        grad[row * cols..row * cols + cols].fill(0.0);
        row_loss[row] = 0.0;
    }

    /// Mean squared error and its gradient (see `LossParams`).
    pub fn mse_loss(
        grad: &mut [f32],
        row_loss: &mut [f32],
        pred: &[f32],
        target: &[f32],
        p: &LossParams,
        math: Math,
    ) {
        let cols = p.cols as usize;
        for row in 0..p.batch_rows as usize {
            if row >= p.rows as usize {
                zero_tail(grad, row_loss, row, cols);
                continue;
            }
            let mut sum = 0.0f32;
            for c in 0..cols {
                let i = row * cols + c;
                let d = pred[i] - target[i];
                grad[i] = 2.0 * d * p.scale;
                sum += d * d;
            }
            row_loss[row] = math.div(sum, cols as f32);
        }
    }

    /// Softmax cross-entropy from logits and class labels, and its gradient.
    pub fn softmax_cross_entropy(
        grad: &mut [f32],
        row_loss: &mut [f32],
        logits: &[f32],
        labels: &[u32],
        p: &LossParams,
        math: Math,
    ) {
        cross_entropy_rows(grad, row_loss, logits, labels, p, math, serial_max_sum)
    }

    /// Twin of `softmax_cross_entropy_split` (and its subgroup form): per row the max, then
    /// 32 lanes sum exp(z - max) over columns j, j+32, ... in order, a pairwise tree over the
    /// 32 with ascending offsets, then the gradient and the loss by the serial formulas.
    pub fn softmax_cross_entropy_split(
        grad: &mut [f32],
        row_loss: &mut [f32],
        logits: &[f32],
        labels: &[u32],
        p: &LossParams,
        math: Math,
    ) {
        cross_entropy_rows(grad, row_loss, logits, labels, p, math, split_max_sum)
    }

    /// Binary cross-entropy from logits and 0/1 targets, and its gradient.
    pub fn binary_cross_entropy(
        grad: &mut [f32],
        row_loss: &mut [f32],
        logits: &[f32],
        target: &[f32],
        p: &LossParams,
        math: Math,
    ) {
        let cols = p.cols as usize;
        for row in 0..p.batch_rows as usize {
            if row >= p.rows as usize {
                zero_tail(grad, row_loss, row, cols);
                continue;
            }
            let mut sum = 0.0f32;
            for c in 0..cols {
                let i = row * cols + c;
                let (z, t) = (logits[i], target[i]);
                grad[i] = (sigmoid(z, math) - t) * p.scale;
                sum += z.max(0.0) - z * t + math.log(1.0 + math.exp(-z.abs()));
            }
            row_loss[row] = math.div(sum, cols as f32);
        }
    }
}
