//! The loss functions: which one, its mean-reduction scale, and what targets it takes. The
//! kernels are in `shaders/loss.wgsl` and their twins in `cpu.rs`; this module is the
//! host-side description both paths share.

use std::str::FromStr;

use crate::error::{Error, Result};
use crate::params::LossParams;

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
        let n = match self {
            Loss::SoftmaxCrossEntropy => rows,
            Loss::Mse | Loss::BinaryCrossEntropy => rows * cols,
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
