//! Rosenblatt's perceptron (1958), trained exactly as the lecture gives it: one neuron,
//! `net = wᵀx − θ`, `y = sign(net) ∈ {−1, 1}` (sign(0) = 1), error `e = target − y`, and the
//! online rule `w ← w + η·x·e`, `θ ← θ − η·e` (θ is learned as a weight on a constant −1
//! input). One epoch is the `perceptron_epoch` kernel (`shaders/perceptron.wgsl`) on the GPU
//! or its twin `cpu::perceptron_epoch`; this module owns the loop around it: checking the
//! inputs, stopping at the first epoch without a mistake, and reporting what happened.
//!
//! The perceptron convergence theorem promises a separating line in finitely many epochs for
//! linearly separable classes (AND, OR, iris setosa against versicolor); for XOR no line
//! exists, so the run ends at its epoch budget with `converged: false`, which is a result,
//! not an error. Backprop training of multi-layer networks is `trainer.rs`'s job.

use crate::cpu;
use crate::error::{Error, Result};
use crate::exec::Device;
use crate::kernels;
use crate::ops::{self, perceptron::PerceptronParams};
use crate::tensor::GpuTensor;

/// What a perceptron run did.
#[derive(Clone, Debug, PartialEq)]
pub struct PerceptronRun {
    /// The final weights: `w_0 .. w_{cols-1}`, then θ (`cols + 1` values).
    pub weights: Vec<f32>,
    /// Epochs run (the last one is the first error-free epoch when `converged`).
    pub epochs: usize,
    /// Whether an epoch went by without a single mistake.
    pub converged: bool,
    /// Mistakes made during each epoch, in order (`epochs` entries).
    pub errors_per_epoch: Vec<u32>,
}

/// Trains a perceptron on `x` (`rows x cols`, row-major; `rows = targets.len()`) with
/// targets in {−1, 1}, learning rate `lr`, starting from `initial` (`w` then θ, `cols + 1`
/// values), for at most `max_epochs` epochs; it stops after the first epoch with no mistake.
/// Samples are visited in their given order every epoch, as in the lecture's rule.
///
/// Errors: `Error::Data` for empty or mismatched data, non-finite values, or a target that is
/// not −1 or 1; `Error::Config` for a bad learning rate, `max_epochs == 0` or initial
/// weights of the wrong length; GPU errors as they come.
pub fn train(
    device: Device<'_>,
    x: &[f32],
    cols: usize,
    targets: &[f32],
    lr: f32,
    max_epochs: usize,
    initial: &[f32],
) -> Result<PerceptronRun> {
    let rows = targets.len();
    check(x, cols, targets, lr, max_epochs, initial)?;
    let params = PerceptronParams {
        rows: rows as u32,
        cols: cols as u32,
        lr,
        ..Default::default()
    };
    let mut errors_per_epoch = Vec::new();
    let weights =
        match device {
            Device::Gpus(_) | Device::Parallel(_) => {
                return Err(Error::Config(
                    "the perceptron rule trains on one device: its epoch is one sequential pass over the rows, which does not split across replicas".into(),
                ))
            }
            Device::Cpu | Device::CpuReference => {
                let mut weights = initial.to_vec();
                let mut errors = [0u32];
                for _ in 0..max_epochs {
                    cpu::perceptron_epoch(&mut weights, &mut errors, x, targets, &params);
                    errors_per_epoch.push(errors[0]);
                    if errors[0] == 0 {
                        break;
                    }
                }
                weights
            }
            Device::Gpu(_) | Device::Tuned(_) => device
                .with_kernels(|k| -> Result<Vec<f32>> {
                    let gpu = k.gpu();
                    let w = GpuTensor::upload(gpu, "perceptron weights", &[cols + 1], initial)?;
                    let errors = GpuTensor::zeros_u32(gpu, "perceptron errors", &[1])?;
                    let xt = GpuTensor::upload(gpu, "perceptron x", &[rows, cols], x)?;
                    let t = GpuTensor::upload(gpu, "perceptron targets", &[rows], targets)?;
                    let epoch = ops::perceptron_epoch(k, &w, &errors, &xt, &t, lr)?;
                    // One submission and one 4-byte read per epoch: the stopping test needs the
                    // count, and these data sets are small enough that the read is the cost.
                    for _ in 0..max_epochs {
                        kernels::run(gpu, &[&epoch])?;
                        let wrong = errors.read_u32(gpu)?.first().copied().ok_or_else(|| {
                            Error::Readback {
                                label: "perceptron errors".into(),
                                message: "no value came back".into(),
                            }
                        })?;
                        errors_per_epoch.push(wrong);
                        if wrong == 0 {
                            break;
                        }
                    }
                    w.read(gpu)
                })
                .unwrap_or_else(|| Err(Error::Config("no GPU".into())))?,
        };
    let converged = errors_per_epoch.last() == Some(&0);
    Ok(PerceptronRun {
        weights,
        epochs: errors_per_epoch.len(),
        converged,
        errors_per_epoch,
    })
}

/// The perceptron's output for each row of `x`: sign(wᵀx − θ) ∈ {−1, 1}, on the host.
/// Errors: `Error::Data`/`Error::Config` when the lengths do not fit together.
pub fn predict(weights: &[f32], x: &[f32], cols: usize) -> Result<Vec<f32>> {
    if cols == 0 || weights.len() != cols + 1 {
        return Err(Error::Config(format!(
            "perceptron weights: expected {} values (w then theta) for {cols} inputs, got {}",
            cols + 1,
            weights.len()
        )));
    }
    if !x.len().is_multiple_of(cols) {
        return Err(Error::Data(format!(
            "perceptron inputs: {} values are not whole rows of {cols}",
            x.len()
        )));
    }
    Ok(x.chunks(cols)
        .map(|row| {
            let net: f32 = row.iter().zip(weights).map(|(a, w)| a * w).sum::<f32>() - weights[cols];
            if net >= 0.0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect())
}

fn check(
    x: &[f32],
    cols: usize,
    targets: &[f32],
    lr: f32,
    max_epochs: usize,
    initial: &[f32],
) -> Result<()> {
    let rows = targets.len();
    if cols == 0 {
        return Err(Error::Data(
            "perceptron: samples need at least one feature (cols = 0)".into(),
        ));
    }
    if rows == 0 {
        return Err(Error::Data(
            "perceptron: no samples (targets is empty)".into(),
        ));
    }
    if rows.checked_mul(cols) != Some(x.len()) {
        return Err(Error::Data(format!(
            "perceptron: {} input values for {rows} targets of {cols} features (want {rows} x {cols})",
            x.len()
        )));
    }
    if u32::try_from(x.len()).is_err() {
        return Err(Error::Data(format!(
            "perceptron: {} input values exceed the kernel's u32 index range",
            x.len()
        )));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::Data(format!(
            "perceptron: input at row {}, column {} is {} (0-based)",
            i / cols,
            i % cols,
            x[i]
        )));
    }
    if let Some(i) = targets.iter().position(|&t| t != 1.0 && t != -1.0) {
        return Err(Error::Data(format!(
            "perceptron: target at row {i} (0-based) is {}; targets must be -1 or 1",
            targets[i]
        )));
    }
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::Config(format!(
            "perceptron: learning rate {lr} must be finite and above 0"
        )));
    }
    if max_epochs == 0 {
        return Err(Error::Config(
            "perceptron: max_epochs must be at least 1".into(),
        ));
    }
    if initial.len() != cols + 1 {
        return Err(Error::Config(format!(
            "perceptron: initial weights need {} values (w for {cols} inputs, then theta), got {}",
            cols + 1,
            initial.len()
        )));
    }
    if let Some(i) = initial.iter().position(|v| !v.is_finite()) {
        return Err(Error::Config(format!(
            "perceptron: initial weight {i} is {}",
            initial[i]
        )));
    }
    Ok(())
}
