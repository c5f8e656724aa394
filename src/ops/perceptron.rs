//! Rosenblatt's perceptron rule (`shaders/perceptron.wgsl`): one epoch over the samples in
//! order, in one invocation, as the lecture runs it. `crate::perceptron` owns the loop
//! around it.

use crate::error::Result;
use crate::kernels::Dispatch;
use crate::params::params_struct;
use crate::tensor::{DType, GpuTensor};

use super::{dispatch, expect_dtype, expect_len, matrix, Kernel, Kernels};

params_struct! {
    /// One Rosenblatt perceptron step over a batch of `rows` samples of width `cols`.
    PerceptronParams {
        rows: u32,
        cols: u32,
        /// Learning rate eta.
        lr: f32,
        _pad0: u32,
    }
}

/// One epoch of Rosenblatt's rule: `weights (cols + 1)` = (w, theta), `errors` u32 (1),
/// `x (rows, cols)`, `targets (rows)` in {-1, 1}.
pub fn perceptron_epoch(
    k: &Kernels,
    weights: &GpuTensor,
    errors: &GpuTensor,
    x: &GpuTensor,
    targets: &GpuTensor,
    lr: f32,
) -> Result<Dispatch> {
    let op = "perceptron_epoch";
    let (rows, cols) = matrix(op, x)?;
    expect_len(op, weights, cols + 1)?;
    expect_len(op, targets, rows)?;
    expect_dtype(op, errors, DType::U32)?;
    let p = PerceptronParams {
        rows: rows as u32,
        cols: cols as u32,
        lr,
        ..Default::default()
    };
    dispatch(
        k,
        Kernel::PerceptronEpoch,
        &[weights, errors, x, targets],
        &[p],
        [1, 1, 1],
    )
}

/// The twin: the same loop on the host.
pub mod cpu {
    use super::*;

    /// One epoch of Rosenblatt's online rule; `weights` = (w, theta); `errors[0]` = mistakes.
    pub fn perceptron_epoch(
        weights: &mut [f32],
        errors: &mut [u32],
        x: &[f32],
        targets: &[f32],
        p: &PerceptronParams,
    ) {
        let (rows, cols) = (p.rows as usize, p.cols as usize);
        let mut wrong = 0;
        for s in 0..rows {
            let mut net = 0.0f32;
            for c in 0..cols {
                net += weights[c] * x[s * cols + c];
            }
            net -= weights[cols];
            let y = if net >= 0.0 { 1.0 } else { -1.0 };
            let e = targets[s] - y;
            if e != 0.0 {
                wrong += 1;
                for c in 0..cols {
                    weights[c] += p.lr * x[s * cols + c] * e;
                }
                weights[cols] -= p.lr * e;
            }
        }
        errors[0] = wrong;
    }
}
