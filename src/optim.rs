//! Learning-rate schedules, evaluated on the host once per epoch. The optimizers themselves
//! (their hyper-parameters, update rules, kernels and twins) are the optim op family,
//! [`crate::ops::optim`], re-exported here.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::ops::optim::{Optimizer, UpdateRule, UpdateRule as OptimizerKind};

/// A learning-rate schedule, evaluated once per epoch (as PyTorch's `StepLR` and
/// `CosineAnnealingLR` are when stepped per epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Constant,
    /// lr * gamma^(epoch / every).
    Step { every: usize, gamma: f32 },
    /// min_lr + (lr - min_lr) (1 + cos(pi epoch / epochs)) / 2.
    Cosine { min_lr: f32 },
}

impl Schedule {
    /// The learning rate of 0-based `epoch` out of `epochs`.
    pub fn lr(&self, base: f32, epoch: usize, epochs: usize) -> f32 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { every, gamma } => {
                base * gamma.powi((epoch / every.max(1)).min(i32::MAX as usize) as i32)
            }
            Schedule::Cosine { min_lr } => {
                let x = std::f64::consts::PI * epoch as f64 / epochs.max(1) as f64;
                (min_lr as f64 + (base - min_lr) as f64 * (1.0 + x.cos()) / 2.0) as f32
            }
        }
    }
}

impl FromStr for Schedule {
    type Err = Error;
    /// `constant`, `step:EVERY:GAMMA` (e.g. `step:10:0.5`), `cosine` or `cosine:MIN_LR`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |v: &str| -> Result<f32> {
            v.parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| Error::Config(format!("schedule '{s}': '{v}' is not a number")))
        };
        match parts.as_slice() {
            ["constant"] | ["none"] => Ok(Schedule::Constant),
            ["step", every, gamma] => Ok(Schedule::Step {
                every: every
                    .parse()
                    .ok()
                    .filter(|&e: &usize| e > 0)
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "schedule '{s}': step every must be a positive integer"
                        ))
                    })?,
                gamma: Some(num(gamma)?).filter(|g| *g > 0.0).ok_or_else(|| {
                    Error::Config(format!(
                        "schedule '{s}': the factor GAMMA must be above 0 (0.5 halves the rate)"
                    ))
                })?,
            }),
            ["cosine"] => Ok(Schedule::Cosine { min_lr: 0.0 }),
            ["cosine", min] => Ok(Schedule::Cosine {
                min_lr: Some(num(min)?).filter(|m| *m >= 0.0).ok_or_else(|| {
                    Error::Config(format!(
                        "schedule '{s}': the final rate MIN_LR must be 0 or more"
                    ))
                })?,
            }),
            _ => Err(Error::Config(format!(
                "unknown schedule '{s}' (known: constant, step:EVERY:GAMMA, cosine[:MIN_LR])"
            ))),
        }
    }
}
