//! Optimizers and learning-rate schedules on the host: the hyper-parameters (mirrored
//! field-for-field by `SgdParams`/`AdamParams` in WGSL) and the per-step values the update
//! kernels receive (learning rate, Adam's bias corrections). The update math itself is in
//! `shaders/optim.wgsl` and `cpu.rs`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::params::{AdamParams, SgdParams};

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    /// SGD with momentum, PyTorch's form.
    Momentum,
    Adam,
    /// Adam with decoupled weight decay.
    AdamW,
}

impl FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerKind::Sgd),
            "momentum" => Ok(OptimizerKind::Momentum),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            _ => Err(Error::Config(format!(
                "unknown optimizer '{s}' (known: sgd, momentum, adam, adamw)"
            ))),
        }
    }
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Momentum => "momentum",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        })
    }
}

/// An optimizer and its hyper-parameters (PyTorch's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    pub lr: f32,
    /// Momentum factor (momentum only).
    pub momentum: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// L2 penalty (SGD, momentum, Adam) or decoupled decay (AdamW).
    pub weight_decay: f32,
}

impl Optimizer {
    /// The kind with PyTorch's defaults (SGD and momentum have no default lr in PyTorch;
    /// 0.01 here). AdamW's default weight decay is 0.01, the others' 0.
    pub fn new(kind: OptimizerKind) -> Optimizer {
        let lr = match kind {
            OptimizerKind::Sgd | OptimizerKind::Momentum => 0.01,
            OptimizerKind::Adam | OptimizerKind::AdamW => 1e-3,
        };
        Optimizer {
            kind,
            lr,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: if kind == OptimizerKind::AdamW {
                0.01
            } else {
                0.0
            },
        }
    }

    pub fn sgd(lr: f32) -> Optimizer {
        Optimizer {
            lr,
            ..Optimizer::new(OptimizerKind::Sgd)
        }
    }

    pub fn momentum(lr: f32, momentum: f32) -> Optimizer {
        Optimizer {
            lr,
            momentum,
            ..Optimizer::new(OptimizerKind::Momentum)
        }
    }

    pub fn adam(lr: f32) -> Optimizer {
        Optimizer {
            lr,
            ..Optimizer::new(OptimizerKind::Adam)
        }
    }

    pub fn adamw(lr: f32, weight_decay: f32) -> Optimizer {
        Optimizer {
            lr,
            weight_decay,
            ..Optimizer::new(OptimizerKind::AdamW)
        }
    }

    pub fn with_weight_decay(self, weight_decay: f32) -> Optimizer {
        Optimizer {
            weight_decay,
            ..self
        }
    }

    /// Rejects values that cannot train (non-finite or negative rates, betas outside [0, 1)).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32| Err(Error::Config(format!("{what} = {v} is out of range")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("learning rate", self.lr);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay", self.weight_decay);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum", self.momentum);
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad(
                "beta1/beta2",
                if (0.0..1.0).contains(&self.beta1) {
                    self.beta2
                } else {
                    self.beta1
                },
            );
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", self.eps);
        }
        Ok(())
    }

    /// Number of state tensors per parameter tensor (velocity; Adam's m and v).
    pub fn state_slots(&self) -> usize {
        match self.kind {
            OptimizerKind::Sgd => 0,
            OptimizerKind::Momentum => 1,
            OptimizerKind::Adam | OptimizerKind::AdamW => 2,
        }
    }

    /// The uniform of an SGD or momentum update at learning rate `lr` (len filled in later).
    pub fn sgd_params(&self, lr: f32) -> SgdParams {
        SgdParams {
            len: 0,
            lr,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
        }
    }

    /// The uniform of an Adam(W) update for step `t` (1-based) at learning rate `lr`.
    /// The bias corrections are computed in f64 and rounded once, as PyTorch does in Python.
    pub fn adam_params(&self, lr: f32, t: u64) -> AdamParams {
        let t = t.min(i32::MAX as u64) as i32;
        AdamParams {
            len: 0,
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            bias_correction1: (1.0 - (self.beta1 as f64).powi(t)) as f32,
            bias_correction2: (1.0 - (self.beta2 as f64).powi(t)) as f32,
            decoupled: (self.kind == OptimizerKind::AdamW) as u32,
            ..Default::default()
        }
    }
}

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
                gamma: num(gamma)?,
            }),
            ["cosine"] => Ok(Schedule::Cosine { min_lr: 0.0 }),
            ["cosine", min] => Ok(Schedule::Cosine { min_lr: num(min)? }),
            _ => Err(Error::Config(format!(
                "unknown schedule '{s}' (known: constant, step:EVERY:GAMMA, cosine[:MIN_LR])"
            ))),
        }
    }
}
